//! Time as an injected dependency (design §8): the core never reads the wall clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Source of "now", in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The wall clock. Only the production wiring creates one.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock moved only by hand: decider tests and replay.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now_ms: AtomicU64::new(start_ms),
        }
    }
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// A clock that follows tokio's time, which the simulator pauses and advances: `epoch_ms`
/// plus the tokio time elapsed since the clock was made. Deterministic under `time::pause()`.
#[derive(Debug, Clone)]
pub struct TokioClock {
    epoch_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(epoch_ms: u64) -> Self {
        TokioClock {
            epoch_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.epoch_ms + self.start.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_by_hand() {
        let c = ManualClock::new(1000);
        assert_eq!(c.now_ms(), 1000);
        c.advance_ms(5);
        assert_eq!(c.now_ms(), 1005);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new(10_000);
        assert_eq!(c.now_ms(), 10_000);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert_eq!(c.now_ms(), 13_000);
    }
}
