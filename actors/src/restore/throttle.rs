//! Token buckets for bandwidth limits: one per node (over every job it copies for) and one per
//! job on each node, shared by every copy the node makes for it.
//!
//! Tokens are bytes. A copy takes what it is about to move; the bucket may go into debt by one
//! take, and the next taker waits until the debt is paid back at the configured rate. A take
//! larger than the burst is paid in burst-sized pieces, so the debt never exceeds one burst.
//! The burst is a tenth of a second's worth (at least 64 KiB), and a throttled copy moves at
//! most a burst at once (bigger files stream through the multipart path, paid per chunk;
//! [`Throttles::largest_single_move`]): so over any 5 s window the rate stays within ±10% of
//! the limit (the test below holds it to that), and the long-run rate never exceeds it. A
//! server-side copy (no verification) moves no bytes through the node; it is paid whole.
//! Time is tokio time: virtual in the simulator and in paused-time tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Smallest burst the bucket holds, whatever the rate.
const MIN_BURST_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
pub struct Throttle {
    /// May change while copies run (a job's limit is shared by the nodes copying for it).
    bytes_per_sec: AtomicU64,
    burst_bytes: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may move now; negative is debt.
    tokens: i128,
    refilled_at: Instant,
}

impl Throttle {
    /// `None` or 0: no limit.
    pub fn new(bytes_per_sec: Option<u64>) -> Option<Throttle> {
        let rate = bytes_per_sec.filter(|r| *r > 0)?;
        let burst = (rate / 10).max(MIN_BURST_BYTES);
        Some(Throttle {
            bytes_per_sec: AtomicU64::new(rate),
            burst_bytes: burst,
            state: Mutex::new(Bucket {
                tokens: i128::from(burst),
                refilled_at: Instant::now(),
            }),
        })
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec.load(Ordering::Relaxed)
    }

    /// Change the rate (at least 1 byte per second); the burst stays as it was.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.bytes_per_sec
            .store(bytes_per_sec.max(1), Ordering::Relaxed);
    }

    /// The bucket's burst: the most bytes that may move at once without waiting.
    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    /// Wait until `bytes` may move: in burst-sized pieces, so the debt stays within a burst.
    pub async fn take(&self, bytes: u64) {
        let mut left = bytes;
        while left > 0 {
            let piece = left.min(self.burst_bytes);
            self.take_piece(piece).await;
            left -= piece;
        }
    }

    async fn take_piece(&self, bytes: u64) {
        loop {
            let wait_ms = {
                let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let elapsed_us = now.saturating_duration_since(b.refilled_at).as_micros() as i128;
                let rate = i128::from(self.bytes_per_sec());
                b.tokens =
                    (b.tokens + elapsed_us * rate / 1_000_000).min(i128::from(self.burst_bytes));
                b.refilled_at = now;
                if b.tokens > 0 {
                    b.tokens -= i128::from(bytes);
                    return;
                }
                // Time until the debt is paid and one byte is available.
                let need = 1 - b.tokens;
                ((need * 1000 + rate - 1) / rate).max(1) as u64
            };
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_long_run_rate_stays_under_the_limit() {
        let t = Throttle::new(Some(1_000_000)).unwrap();
        let start = Instant::now();
        for _ in 0..100 {
            t.take(100_000).await;
        }
        // 10 MB at 1 MB/s: about 10 s (a tenth of a second's budget is there at once).
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(9_700), "took {took:?}");
        assert!(took <= Duration::from_secs(11), "took {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_rate_takes_effect() {
        let t = Throttle::new(Some(1_000_000)).unwrap();
        t.set_rate(500_000);
        let start = Instant::now();
        for _ in 0..50 {
            t.take(100_000).await;
        }
        // 5 MB at 0.5 MB/s: about 10 s, less the burst held at the start and the debt the
        // last take leaves (0.1 MB each: 0.4 s).
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(9_500), "took {took:?}");
        assert!(took <= Duration::from_secs(11), "took {took:?}");
    }

    /// Copies of mixed sizes through a 20 MB/s limit, as the copier makes them (a file of at
    /// most a burst at once, bigger ones in chunks): every 5 s window after the first second
    /// moves within ±10% of 100 MB.
    #[tokio::test(start_paused = true)]
    async fn any_five_second_window_is_within_ten_percent() {
        const RATE: u64 = 20_000_000;
        let t = Arc::new(Throttle::new(Some(RATE)).unwrap());
        let throttles = Throttles(vec![t.clone()]);
        let largest = throttles.largest_single_move().unwrap();
        assert_eq!(largest, RATE / 10);
        let start = Instant::now();
        let mut moved: Vec<(Duration, u64)> = Vec::new();
        // Sizes cycle through small files, files of exactly a burst, and big files streamed
        // in 1 MiB chunks.
        let sizes = [4_096u64, 300_000, largest, 7_000_000, 50_000, 33_000_000];
        let mut i = 0;
        while start.elapsed() < Duration::from_secs(30) {
            let size = sizes[i % sizes.len()];
            i += 1;
            if size <= largest {
                throttles.take(size).await;
                moved.push((start.elapsed(), size));
            } else {
                let mut left = size;
                while left > 0 {
                    let chunk = left.min(1 << 20);
                    throttles.take(chunk).await;
                    moved.push((start.elapsed(), chunk));
                    left -= chunk;
                }
            }
        }
        let window = Duration::from_secs(5);
        let want = (RATE * 5) as f64;
        let mut from = Duration::from_secs(1);
        while from + window <= Duration::from_secs(29) {
            let bytes: u64 = moved
                .iter()
                .filter(|(at, _)| *at >= from && *at < from + window)
                .map(|(_, b)| b)
                .sum();
            let ratio = bytes as f64 / want;
            assert!(
                (0.9..=1.1).contains(&ratio),
                "{bytes} bytes in the 5 s from {from:?}: {ratio:.3} of the limit"
            );
            from += Duration::from_millis(250);
        }
    }

    #[test]
    fn no_limit_is_no_throttle() {
        assert!(Throttle::new(None).is_none());
        assert!(Throttle::new(Some(0)).is_none());
    }
}

/// The limits one copy obeys together (the node's and the job's): each is paid in turn.
#[derive(Debug, Clone, Default)]
pub struct Throttles(pub Vec<Arc<Throttle>>);

impl Throttles {
    /// The most bytes a throttled copy may move at once (the smallest burst); `None` without
    /// a limit. Bigger files stream, paid chunk by chunk.
    pub fn largest_single_move(&self) -> Option<u64> {
        self.0.iter().map(|t| t.burst_bytes()).min()
    }

    /// Wait until `bytes` may move under every limit.
    pub async fn take(&self, bytes: u64) {
        for t in &self.0 {
            t.take(bytes).await;
        }
    }
}
