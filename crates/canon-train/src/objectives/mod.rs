//! Pre-training objectives shared by the encoder families: masked language modelling (BERT,
//! DistilBERT, ERNIE). Span corruption (T5) and the denoising entity auto-encoder (ERNIE) live with
//! their families.

pub mod mlm;
