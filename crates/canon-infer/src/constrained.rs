//! The constrained-decoding seam: a per-sequence object that says which tokens may come next and
//! follows the tokens actually chosen. Structured output (JSON objects, JSON schemas, tool-call
//! arguments) and agents' action syntax implement it; the generation loops (single-sequence and
//! batched) apply it before sampling, so a constrained sequence can only emit allowed tokens.

/// Which tokens may come next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// No restriction at this step.
    All,
    /// Only the tokens whose bit is set (`bits[id / 64] >> (id % 64) & 1`); ids beyond the mask are
    /// not allowed.
    Mask(Vec<u64>),
    /// The constraint is complete: generation must end here (finish reason `stop`).
    End,
}

impl Allowed {
    /// Whether `token` may be sampled.
    pub fn allows(&self, token: u32) -> bool {
        match self {
            Allowed::All => true,
            Allowed::End => false,
            Allowed::Mask(bits) => {
                let i = token as usize;
                bits.get(i / 64).is_some_and(|w| (w >> (i % 64)) & 1 == 1)
            }
        }
    }
}

/// A per-sequence constraint on generated tokens. Implementations hold their own parser state.
pub trait TokenConstraint: Send {
    /// The tokens allowed at the next step, given every token committed so far.
    fn allowed(&mut self) -> Result<Allowed, String>;
    /// Records the token that was chosen (always one `allowed` permitted).
    fn commit(&mut self, token: u32) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_select_tokens() {
        let mut bits = vec![0u64; 2];
        bits[0] |= 1 << 3;
        bits[1] |= 1 << 1; // token 65
        let a = Allowed::Mask(bits);
        assert!(a.allows(3) && a.allows(65));
        assert!(!a.allows(4) && !a.allows(64) && !a.allows(1_000));
        assert!(Allowed::All.allows(7) && !Allowed::End.allows(7));
    }
}
