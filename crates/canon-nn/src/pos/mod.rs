//! Position encodings that are not RoPE (which lives in `rope`): the Transformer's fixed sinusoids.

pub mod sinusoidal;
