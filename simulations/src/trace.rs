//! The trace hash: one number that summarises everything a run did.
//!
//! It folds in every log event in global order (as the checker reads them), every operation
//! and its outcome per step, and at the end the object store listing (sorted, with sizes and
//! checksums). Two runs of one seed must print the same hash: that is the determinism
//! guarantee of design §8, and the test that proves it compares exactly this number.
//! FNV-1a 64: tiny, fixed forever, and plenty for telling runs apart (not for security).

#[derive(Debug, Clone)]
pub struct TraceHash(u64);

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for TraceHash {
    fn default() -> Self {
        TraceHash(OFFSET)
    }
}

impl TraceHash {
    pub fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    /// Length-prefixed, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    pub fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_value_and_framing() {
        let mut h = TraceHash::default();
        h.bytes(b"a");
        assert_eq!(h.value(), 0xaf63_dc4c_8601_ec8c);
        let mut x = TraceHash::default();
        x.str("ab");
        x.str("c");
        let mut y = TraceHash::default();
        y.str("a");
        y.str("bc");
        assert_ne!(x.value(), y.value());
    }
}
