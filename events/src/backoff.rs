//! Retry delays: doubling from a first delay up to a largest one. One definition for every
//! retry loop that waits between attempts (snapshot creates and drops, copies, progress
//! records, refresh tasks, restore starts).

/// Doubling delays in milliseconds, from `initial_ms` up to `max_ms` (both at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    current_ms: u64,
    max_ms: u64,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        let max_ms = max_ms.max(1);
        Backoff {
            current_ms: initial_ms.clamp(1, max_ms),
            max_ms,
        }
    }

    /// The delay to wait before the next attempt.
    pub fn current_ms(&self) -> u64 {
        self.current_ms
    }

    /// After a wait: the next delay doubles, up to the largest.
    pub fn grow(&mut self) {
        self.current_ms = self.current_ms.saturating_mul(2).min(self.max_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_largest_and_never_waits_zero() {
        let mut b = Backoff::new(100, 350);
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(b.current_ms());
            b.grow();
        }
        assert_eq!(seen, [100, 200, 350, 350]);
        assert_eq!(Backoff::new(0, 0).current_ms(), 1);
        assert_eq!(Backoff::new(5_000, 1_000).current_ms(), 1_000);
    }
}
