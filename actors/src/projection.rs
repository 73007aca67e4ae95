//! A projection: a read model folded from the whole log by a task that tails it.
//!
//! Used by the indexes that answer what no single entity can (list every snapshot, every
//! restore job, unfinished work at start). Queries first wait until the projection applied the
//! log up to the head seen when the query started, so a client always reads its own writes.
//!
//! A transient read error (`Unavailable`) only interrupts the tail: it subscribes again from
//! the next position after a backoff. A record the log cannot give (corrupt, foreign, or of a
//! newer build: [`LogStop`]) stops the tail *at* that record: every query reports the position
//! and why, the warning is logged once (repeated at most every [`STOPPED_WARN_EVERY`]), and the
//! record is read again every [`STOPPED_RETRY`], so a repaired log resumes by itself. An event
//! that is read but cannot be applied stops the projection for good (the model may hold half
//! of it). Never a silent skip, which could hide a snapshot from GC's checks or a job from its
//! resume.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use snapvault_events::{Envelope, Error, EventLog, LogError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// First and largest pause before the tail subscribes again after a transient read error.
const TAIL_RETRY_INITIAL_MS: u64 = 10;
const TAIL_RETRY_MAX_MS: u64 = 5_000;

/// How long a reader stopped at a record it cannot read waits before it reads it again.
pub const STOPPED_RETRY: Duration = Duration::from_secs(30);
/// While a reader stays stopped at one record, its warning is repeated at most this often.
pub const STOPPED_WARN_EVERY: Duration = Duration::from_secs(60);

/// Where a reader of the log stopped, and why: a record it cannot read (corrupt, foreign,
/// written by a newer build). Not a transient error: reading it again gives the same answer
/// until someone repairs the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStop {
    pub position: u64,
    pub reason: String,
}

impl LogStop {
    /// The stop a read error from position `next` on means; `None` for `Unavailable`
    /// (transient: read again soon).
    pub fn of(e: &LogError, next: u64) -> Option<LogStop> {
        let (position, reason) = match e {
            LogError::Unavailable(_) => return None,
            LogError::Corrupt { position, reason } => {
                // Position 0: damage no single record is named for; it stops at `next`.
                (
                    if *position == 0 { next } else { *position },
                    reason.clone(),
                )
            }
            other => (next, other.message()),
        };
        Some(LogStop { position, reason })
    }
}

impl std::fmt::Display for LogStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped at log position {}: {}",
            self.position, self.reason
        )
    }
}

/// Says a stop once: [`StopWarnings::due`] is true for a new stop, then again only after
/// [`STOPPED_WARN_EVERY`] while the same stop lasts.
#[derive(Debug, Default)]
pub struct StopWarnings {
    last: Option<(LogStop, tokio::time::Instant)>,
}

impl StopWarnings {
    /// Should `stop` be logged now? (Remembers that it was.)
    pub fn due(&mut self, stop: &LogStop) -> bool {
        let now = tokio::time::Instant::now();
        match &self.last {
            Some((s, at)) if s == stop && now.duration_since(*at) < STOPPED_WARN_EVERY => false,
            _ => {
                self.last = Some((stop.clone(), now));
                true
            }
        }
    }

    /// The reader got past its stop: forget it (returns it, to log the resume once).
    pub fn clear(&mut self) -> Option<LogStop> {
        self.last.take().map(|(s, _)| s)
    }
}

/// A read model that folds envelopes in global order.
pub trait Fold: Default + Send + 'static {
    /// Apply one event. Events come in global order, each once.
    fn apply(&mut self, env: &Envelope) -> Result<(), LogError>;
}

struct Inner<T> {
    model: T,
    /// Set when the tail stopped on an error: queries report it.
    failure: Option<String>,
}

pub struct Projection<T: Fold> {
    name: &'static str,
    log: Arc<dyn EventLog>,
    inner: Arc<Mutex<Inner<T>>>,
    applied_rx: watch::Receiver<u64>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl<T: Fold> Clone for Projection<T> {
    fn clone(&self) -> Self {
        Projection {
            name: self.name,
            log: self.log.clone(),
            inner: self.inner.clone(),
            applied_rx: self.applied_rx.clone(),
            task: self.task.clone(),
        }
    }
}

impl<T: Fold> Drop for Projection<T> {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1
            && let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            t.abort();
        }
    }
}

impl<T: Fold> Projection<T> {
    /// Start tailing the log from its beginning. `name` appears in errors and logs.
    pub fn start(name: &'static str, log: Arc<dyn EventLog>) -> Projection<T> {
        let inner = Arc::new(Mutex::new(Inner {
            model: T::default(),
            failure: None,
        }));
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let shared = inner.clone();
        let l = log.clone();
        let task = tokio::spawn(async move {
            let mut next_position = 1;
            let mut backoff_ms = TAIL_RETRY_INITIAL_MS;
            let mut warnings = StopWarnings::default();
            loop {
                let mut sub = l.clone().subscribe(next_position);
                let mut retry_after = None;
                while let Some(next) = sub.next().await {
                    match next {
                        Ok(env) => {
                            let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = g.model.apply(&env) {
                                tracing::warn!(
                                    projection = name,
                                    position = env.position,
                                    error = %e,
                                    "projection stopped for good: an event cannot be applied; its queries fail"
                                );
                                g.failure = Some(format!(
                                    "stopped for good at log position {}: {e}",
                                    env.position
                                ));
                                return;
                            }
                            let resumed = g.failure.take().is_some();
                            drop(g);
                            if resumed && let Some(stop) = warnings.clear() {
                                tracing::warn!(
                                    projection = name,
                                    position = stop.position,
                                    "projection resumed: the record it stopped at reads now"
                                );
                            }
                            next_position = env.position + 1;
                            backoff_ms = TAIL_RETRY_INITIAL_MS;
                            applied_tx.send_replace(env.position);
                        }
                        Err(LogError::Unavailable(e)) => {
                            tracing::debug!(projection = name, error = %e, backoff_ms, "tail interrupted; retrying");
                            retry_after = Some(Duration::from_millis(backoff_ms));
                            backoff_ms = (backoff_ms * 2).min(TAIL_RETRY_MAX_MS);
                            break;
                        }
                        Err(e) => {
                            let stop = LogStop::of(&e, next_position).unwrap_or(LogStop {
                                position: next_position,
                                reason: e.message(),
                            });
                            if warnings.due(&stop) {
                                tracing::warn!(
                                    projection = name,
                                    position = stop.position,
                                    reason = %stop.reason,
                                    retry_s = STOPPED_RETRY.as_secs(),
                                    "projection stopped at a log record it cannot read; its queries fail until the record reads"
                                );
                            }
                            shared.lock().unwrap_or_else(|p| p.into_inner()).failure = Some(
                                format!("{stop}; read again every {} s", STOPPED_RETRY.as_secs()),
                            );
                            // Wake the queries waiting for a position: they report the stop.
                            applied_tx.send_modify(|_| {});
                            retry_after = Some(STOPPED_RETRY);
                            break;
                        }
                    }
                }
                let Some(delay) = retry_after else {
                    // The log went away (its head channel closed): nothing more will come.
                    return;
                };
                drop(sub);
                tokio::time::sleep(delay).await;
            }
        });
        Projection {
            name,
            log,
            inner,
            applied_rx,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Stop tailing (node shutdown) and wait until the task let go of the log.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position applied so far.
    pub fn applied(&self) -> u64 {
        *self.applied_rx.borrow()
    }

    /// Wait until everything in the log now is applied.
    pub async fn sync(&self) -> Result<(), Error> {
        let head = self.log.head().await?;
        self.sync_to(head).await
    }

    /// Wait until position `head` is applied.
    pub async fn sync_to(&self, head: u64) -> Result<(), Error> {
        let mut rx = self.applied_rx.clone();
        loop {
            if let Some(f) = &self.lock().failure {
                return Err(Error::internal(format!("{} {f}", self.name)));
            }
            if *rx.borrow_and_update() >= head {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Error::internal(format!("{} stopped", self.name)));
            }
        }
    }

    /// Run `f` over the model after syncing.
    pub async fn read<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, Error> {
        self.sync().await?;
        Ok(f(&self.lock().model))
    }

    /// Run `f` over the model as it is now, without syncing (diagnostics).
    pub fn peek<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock().model)
    }
}
