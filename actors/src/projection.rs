//! A projection: a read model folded from the whole log by a task that tails it.
//!
//! Used by the indexes that answer what no single entity can (list every snapshot, every
//! restore job, unfinished work at start). Queries first wait until the projection applied the
//! log up to the head seen when the query started, so a client always reads its own writes.
//!
//! A transient read error (`Unavailable`) only interrupts the tail: it subscribes again from
//! the next position after a backoff. A record that cannot be applied (corrupt, or written by
//! a newer build) stops the projection for good and every query reports why — never a silent
//! skip, which could hide a snapshot from GC's checks or a job from its resume.

use futures::StreamExt;
use snapvault_events::{Envelope, Error, EventLog, LogError};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// First and largest pause before the tail subscribes again after a transient read error.
const TAIL_RETRY_INITIAL_MS: u64 = 10;
const TAIL_RETRY_MAX_MS: u64 = 5_000;

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
            loop {
                let mut sub = l.clone().subscribe(next_position);
                let mut interrupted = false;
                while let Some(next) = sub.next().await {
                    match next {
                        Ok(env) => {
                            let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = g.model.apply(&env) {
                                g.failure = Some(e.to_string());
                                return;
                            }
                            drop(g);
                            next_position = env.position + 1;
                            backoff_ms = TAIL_RETRY_INITIAL_MS;
                            applied_tx.send_replace(env.position);
                        }
                        Err(LogError::Unavailable(e)) => {
                            tracing::debug!(projection = name, error = %e, backoff_ms, "tail interrupted; retrying");
                            interrupted = true;
                            break;
                        }
                        Err(e) => {
                            shared.lock().unwrap_or_else(|p| p.into_inner()).failure =
                                Some(e.to_string());
                            return;
                        }
                    }
                }
                if !interrupted {
                    // The log went away (its head channel closed): nothing more will come.
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(TAIL_RETRY_MAX_MS);
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
                return Err(Error::internal(format!("{} stopped: {f}", self.name)));
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
