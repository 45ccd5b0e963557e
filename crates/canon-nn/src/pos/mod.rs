//! Position encodings that are not RoPE (which lives in `rope`): the Transformer's fixed sinusoids
//! and Transformer-XL's relative attention.

pub mod relative;
pub mod sinusoidal;
pub mod t5_bias;
