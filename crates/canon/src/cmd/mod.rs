pub mod assets;
pub mod chat;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod sampling;
pub mod tokenize;
pub mod train;
