//! The virtual clock: tokio's paused time, carried across node crashes.
//!
//! A crash is simulated by dropping the whole tokio runtime the node ran on (every task dies
//! where it stood) and starting the node again on a fresh runtime. Each runtime has its own
//! paused clock, anchored to the real instant it was built, so a [`TokioClock`] made on one
//! runtime and read on the next would leak real elapsed time into the run. [`SimClock`]
//! instead makes a fresh `TokioClock` per runtime, starting where the previous one stopped
//! (plus a chosen downtime): virtual time is continuous and never goes backwards, and it
//! depends on nothing but the seed.

use snapvault_events::{Clock, TokioClock};
use std::sync::Mutex;

/// Milliseconds since the Unix epoch at which every run starts: a fixed, plausible date.
pub const EPOCH_MS: u64 = 1_750_000_000_000;

struct Inner {
    /// Virtual milliseconds since [`EPOCH_MS`] when the current runtime was entered (or, while
    /// frozen, the time at which the clock stopped).
    base_ms: u64,
    /// The clock of the current runtime; `None` between runtimes.
    running: Option<TokioClock>,
}

/// A `Clock` that follows tokio's paused time on whichever runtime is current.
pub struct SimClock {
    inner: Mutex<Inner>,
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new()
    }
}

impl SimClock {
    pub fn new() -> SimClock {
        SimClock {
            inner: Mutex::new(Inner {
                base_ms: 0,
                running: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start following the current runtime's clock. Call from inside the new runtime.
    pub fn resume(&self) {
        let mut i = self.lock();
        let now = EPOCH_MS + i.base_ms;
        i.running = Some(TokioClock::new(now));
    }

    /// Stop at the current virtual time. Call from inside the runtime that is about to go.
    pub fn freeze(&self) {
        let mut i = self.lock();
        if let Some(c) = i.running.take() {
            i.base_ms = c.now_ms() - EPOCH_MS;
        }
    }

    /// Let `ms` pass while frozen: the node's downtime.
    pub fn skip(&self, ms: u64) {
        let mut i = self.lock();
        if i.running.is_none() {
            i.base_ms += ms;
        }
    }

    /// Virtual milliseconds since the run started.
    pub fn elapsed_ms(&self) -> u64 {
        self.now_ms() - EPOCH_MS
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let i = self.lock();
        match &i.running {
            Some(c) => c.now_ms(),
            None => EPOCH_MS + i.base_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    }

    #[test]
    fn time_is_continuous_across_runtimes() {
        let clock = SimClock::new();
        runtime().block_on(async {
            clock.resume();
            tokio::time::sleep(Duration::from_secs(5)).await;
            clock.freeze();
        });
        assert_eq!(clock.elapsed_ms(), 5_000);
        clock.skip(1_000);
        // Real time passing between runtimes must not show.
        std::thread::sleep(Duration::from_millis(20));
        runtime().block_on(async {
            clock.resume();
            assert_eq!(clock.elapsed_ms(), 6_000);
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert_eq!(clock.elapsed_ms(), 6_250);
            clock.freeze();
        });
    }
}
