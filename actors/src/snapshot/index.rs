//! The snapshot index: a projection of every snapshot, built by tailing the whole log.
//!
//! It answers what no single entity can: list all snapshots (of every collection, also of
//! dropped ones), find a snapshot by (collection name, snapshot name), and tell the node at
//! start which snapshots have unfinished work (Pending, Deleting) and which pins have no
//! snapshot yet (a crash between the pin and the snapshot's first event).
//!
//! Queries first wait until the projection has applied the log up to the head seen when the
//! query started, so a client always reads its own writes.

use crate::aggregate::Aggregate;
use crate::snapshot::decider::{Snapshot, SnapshotState};
use futures::StreamExt;
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::CollectionEvent;
use snapvault_events::domain::snapshot::{SnapshotEvent, SnapshotStatus};
use snapvault_events::domain::{CollectionId, SnapshotId};
use snapvault_events::{Error, EventLog, LogError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// First and largest pause before the tail subscribes again after a transient read error.
const TAIL_RETRY_INITIAL_MS: u64 = 10;
const TAIL_RETRY_MAX_MS: u64 = 5_000;

/// A pin seen in a collection stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub collection_id: CollectionId,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    /// Version of the collection stream at the pin: the cut.
    pub pinned_version: u64,
}

#[derive(Default)]
struct Tables {
    snapshots: BTreeMap<SnapshotId, SnapshotState>,
    /// Pins not yet released.
    pins: BTreeMap<SnapshotId, Pin>,
    /// Set when the tail stopped on an error (a corrupt record): queries report it.
    failure: Option<String>,
}

#[derive(Clone)]
pub struct SnapshotIndex {
    log: Arc<dyn EventLog>,
    tables: Arc<Mutex<Tables>>,
    applied_rx: watch::Receiver<u64>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Drop for SnapshotIndex {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1
            && let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            t.abort();
        }
    }
}

fn stream_id(stream: &str, prefix: &str) -> Option<u64> {
    stream.strip_prefix(prefix)?.parse().ok()
}

impl SnapshotIndex {
    /// Start tailing the log from its beginning.
    pub fn start(log: Arc<dyn EventLog>) -> SnapshotIndex {
        let tables = Arc::new(Mutex::new(Tables::default()));
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let t = tables.clone();
        let l = log.clone();
        let task = tokio::spawn(async move {
            // A transient read error (`Unavailable`) only interrupts the tail: subscribe again
            // from the next position after a backoff. Only a record that cannot be applied
            // (corrupt, or from a newer build) stops the index for good.
            let mut next_position = 1;
            let mut backoff_ms = TAIL_RETRY_INITIAL_MS;
            loop {
                let mut sub = l.clone().subscribe(next_position);
                let mut interrupted = false;
                while let Some(next) = sub.next().await {
                    match next {
                        Ok(env) => {
                            let mut tables = t.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = apply(&mut tables, &env) {
                                tables.failure = Some(e.to_string());
                                return;
                            }
                            drop(tables);
                            next_position = env.position + 1;
                            backoff_ms = TAIL_RETRY_INITIAL_MS;
                            applied_tx.send_replace(env.position);
                        }
                        Err(LogError::Unavailable(e)) => {
                            tracing::debug!(error = %e, backoff_ms, "snapshot index tail interrupted; retrying");
                            interrupted = true;
                            break;
                        }
                        Err(e) => {
                            t.lock().unwrap_or_else(|p| p.into_inner()).failure =
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
        SnapshotIndex {
            log,
            tables,
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

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until everything in the log now is applied.
    pub async fn sync(&self) -> Result<(), Error> {
        let head = self.log.head().await?;
        let mut rx = self.applied_rx.clone();
        loop {
            if let Some(f) = &self.tables().failure {
                return Err(Error::internal(format!("snapshot index stopped: {f}")));
            }
            if *rx.borrow_and_update() >= head {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(Error::internal("snapshot index stopped"));
            }
        }
    }

    /// Run `f` over the tables after syncing.
    async fn read<R>(
        &self,
        f: impl FnOnce(&BTreeMap<SnapshotId, SnapshotState>, &BTreeMap<SnapshotId, Pin>) -> R,
    ) -> Result<R, Error> {
        self.sync().await?;
        let t = self.tables();
        Ok(f(&t.snapshots, &t.pins))
    }

    /// Every snapshot, newest first (by id, which grows with time).
    pub async fn all(&self) -> Result<Vec<SnapshotState>, Error> {
        self.read(|s, _| s.values().rev().cloned().collect()).await
    }

    /// The live (not Deleting/Deleted) snapshot named `name` of the collection named
    /// `collection`. If several collections had that name over time (one dropped and a new
    /// one created), the snapshot of the newest collection wins.
    pub async fn find(&self, collection: &str, name: &str) -> Result<Option<SnapshotState>, Error> {
        self.read(|s, _| {
            s.values()
                .filter(|x| {
                    x.identity
                        .as_ref()
                        .is_some_and(|i| i.collection_name == collection && i.name == name)
                        && !matches!(
                            x.status,
                            Some(SnapshotStatus::Deleting) | Some(SnapshotStatus::Deleted)
                        )
                })
                .max_by_key(|x| x.identity.as_ref().map_or(0, |i| i.collection_id))
                .cloned()
        })
        .await
    }

    pub async fn get(&self, id: SnapshotId) -> Result<Option<SnapshotState>, Error> {
        self.read(|s, _| s.get(&id).cloned()).await
    }

    /// Snapshots with unfinished work, and pins that never became a snapshot.
    pub async fn unfinished(&self) -> Result<Unfinished, Error> {
        self.read(|s, pins| {
            let mut u = Unfinished::default();
            for (id, x) in s {
                match x.status {
                    Some(SnapshotStatus::Pending) => u.pending.push(*id),
                    Some(SnapshotStatus::Deleting) => u.deleting.push(*id),
                    Some(SnapshotStatus::Failed) | Some(SnapshotStatus::Deleted)
                        if pins.contains_key(id) =>
                    {
                        u.stale_pins.push((*id, pins[id].collection_id))
                    }
                    _ => {}
                }
            }
            for (id, pin) in pins {
                if !s.contains_key(id) {
                    u.orphan_pins.push((*id, pin.clone()));
                }
            }
            u
        })
        .await
    }
}

/// What the node must finish after a restart.
#[derive(Debug, Default, Clone)]
pub struct Unfinished {
    pub pending: Vec<SnapshotId>,
    pub deleting: Vec<SnapshotId>,
    /// Failed or deleted snapshots whose pin was not released yet.
    pub stale_pins: Vec<(SnapshotId, CollectionId)>,
    /// Pins with no snapshot stream (crash between pin and start).
    pub orphan_pins: Vec<(SnapshotId, Pin)>,
}

fn apply(
    t: &mut Tables,
    env: &snapvault_events::Envelope,
) -> Result<(), snapvault_events::LogError> {
    if let Some(id) = stream_id(&env.stream, "snapshot-") {
        let event: SnapshotEvent = decode(env)?;
        Snapshot::evolve(t.snapshots.entry(id).or_default(), &event);
    } else if let Some(collection_id) = stream_id(&env.stream, "collection-") {
        // Only pins matter here; skip decoding every other collection event.
        if env.event_type == "SnapshotPinned" || env.event_type == "SnapshotUnpinned" {
            match decode::<CollectionEvent>(env)? {
                CollectionEvent::SnapshotPinned {
                    snapshot_id,
                    name,
                    description,
                    labels,
                    ..
                } => {
                    t.pins.insert(
                        snapshot_id,
                        Pin {
                            collection_id,
                            name,
                            description,
                            labels,
                            pinned_version: env.version,
                        },
                    );
                }
                CollectionEvent::SnapshotUnpinned { snapshot_id } => {
                    t.pins.remove(&snapshot_id);
                }
                _ => {}
            }
        }
    }
    Ok(())
}
