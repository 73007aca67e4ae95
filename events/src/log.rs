//! The `EventLog` contract (design §3). It is the only way state changes.
//!
//! Semantics every backend must keep, checked by [`crate::conformance`]:
//! - `append` is all-or-nothing and durable when it returns `Ok`.
//! - `append` with `ExpectedVersion::Exact(v)` succeeds only if the stream is at version `v`
//!   (0 = the stream has no events); otherwise it fails with `LogError::Conflict { actual }`
//!   and writes nothing. This is the fence that keeps two writers of one entity from both
//!   winning.
//! - Versions within a stream start at 1 and are contiguous. Positions in the global order
//!   start at 1 and strictly increase; an event becomes visible to readers only after every
//!   event with a smaller position is visible (so a tailing reader never skips one).
//! - `read_*` return at most `max_count` events: callers page, so memory never grows with the
//!   log.
//! - An `Err(LogError::Unavailable)` from `append` is ambiguous: the batch may or may not be
//!   durable. Callers re-read the stream before they retry.

use crate::envelope::{Envelope, NewEvent};
use crate::error::LogError;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Arc;
use tokio::sync::watch;

/// What the appender believes the stream's version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No fence: append at whatever version the stream is. Only for streams with one writer
    /// by construction (none of the entity streams).
    Any,
    /// The stream must be at exactly this version (0 = must be empty).
    Exact(u64),
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first event of the batch in the global order.
    pub first_position: u64,
    /// Position of the last event of the batch.
    pub last_position: u64,
    /// The stream's version after the append (version of the last event).
    pub stream_version: u64,
}

/// A tailing reader: every event from a position on, in global order, no gap, no duplicate.
pub type Subscription = BoxStream<'static, Result<Envelope, LogError>>;

/// Largest page a reader asks for at once when tailing.
pub const SUBSCRIBE_PAGE_EVENTS: usize = 512;

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Append `events` to `stream` atomically and durably. See the module docs.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError>;

    /// Events of `stream` with version ≥ `from_version` (1-based), at most `max_count`.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError>;

    /// The stream's current version (0 when it has no events).
    async fn stream_version(&self, stream: &str) -> Result<u64, LogError>;

    /// Events with position ≥ `from_position` in global order, at most `max_count`.
    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError>;

    /// Position of the last event in the log (0 when empty).
    async fn head(&self) -> Result<u64, LogError>;

    /// A receiver that changes whenever the head moves; used to tail without polling.
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// Catch up from `from_position`, then tail. Backends may override with a native
    /// consumer; the default pages `read_all` and waits on `watch_head`.
    fn subscribe(self: Arc<Self>, from_position: u64) -> Subscription {
        tail(self, from_position)
    }
}

/// The generic catch-up-then-tail subscription over `read_all` + `watch_head`.
pub fn tail<L: EventLog + ?Sized>(log: Arc<L>, from_position: u64) -> Subscription {
    struct Tail<L: ?Sized> {
        log: Arc<L>,
        next_position: u64,
        buffer: std::collections::VecDeque<Envelope>,
        head_rx: watch::Receiver<u64>,
        failed: bool,
    }
    let head_rx = log.watch_head();
    let start = Tail {
        log,
        next_position: from_position.max(1),
        buffer: std::collections::VecDeque::new(),
        head_rx,
        failed: false,
    };
    Box::pin(futures::stream::unfold(start, |mut t| async move {
        if t.failed {
            return None;
        }
        loop {
            if let Some(env) = t.buffer.pop_front() {
                t.next_position = env.position + 1;
                return Some((Ok(env), t));
            }
            // Mark the current head as seen *before* reading, so an append that lands after
            // the read still wakes us.
            t.head_rx.borrow_and_update();
            match t.log.read_all(t.next_position, SUBSCRIBE_PAGE_EVENTS).await {
                Ok(page) if !page.is_empty() => t.buffer.extend(page),
                Ok(_) => {
                    if t.head_rx.changed().await.is_err() {
                        return None;
                    }
                }
                Err(e) => {
                    t.failed = true;
                    return Some((Err(e), t));
                }
            }
        }
    }))
}

/// Read a whole stream by pages and hand each event to `visit`. Memory stays at one page.
pub async fn for_each_in_stream<L, F>(
    log: &L,
    stream: &str,
    from_version: u64,
    mut visit: F,
) -> Result<u64, LogError>
where
    L: EventLog + ?Sized,
    F: FnMut(Envelope) -> Result<(), LogError>,
{
    const PAGE: usize = 1024;
    let mut next = from_version.max(1);
    let mut last = from_version.saturating_sub(1);
    loop {
        let page = log.read_stream(stream, next, PAGE).await?;
        let n = page.len();
        for env in page {
            if env.version != next {
                return Err(LogError::Corrupt {
                    position: env.position,
                    reason: format!(
                        "stream '{stream}' skips from version {} to {}",
                        next - 1,
                        env.version
                    ),
                });
            }
            next = env.version + 1;
            last = env.version;
            visit(env)?;
        }
        if n < PAGE {
            return Ok(last);
        }
    }
}
