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
use crate::claim::ClaimState;
use crate::projection::{Fold, Projection};
use crate::snapshot::decider::{Snapshot, SnapshotState};
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::CollectionEvent;
use snapvault_events::domain::snapshot::{SnapshotEvent, SnapshotStatus};
use snapvault_events::domain::{CollectionId, JobId, SnapshotId};
use snapvault_events::{Error, EventLog, LogError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A pin seen in a collection stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub collection_id: CollectionId,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    /// Version of the collection stream at the pin: the cut.
    pub pinned_version: u64,
    pub pinned_ms: u64,
}

#[derive(Default)]
pub struct Tables {
    snapshots: BTreeMap<SnapshotId, SnapshotState>,
    /// Pins not yet released.
    pins: BTreeMap<SnapshotId, Pin>,
}

#[derive(Clone)]
pub struct SnapshotIndex {
    projection: Projection<Tables>,
}

fn stream_id(stream: &str, prefix: &str) -> Option<u64> {
    stream.strip_prefix(prefix)?.parse().ok()
}

impl SnapshotIndex {
    /// Start tailing the log from its beginning.
    pub fn start(log: Arc<dyn EventLog>) -> SnapshotIndex {
        SnapshotIndex {
            projection: Projection::start("snapshot index", log),
        }
    }

    /// Stop tailing (node shutdown) and wait until the task let go of the log.
    pub async fn stop(&self) {
        self.projection.stop().await
    }

    /// Wait until everything in the log now is applied.
    pub async fn sync(&self) -> Result<(), Error> {
        self.projection.sync().await
    }

    /// Run `f` over the tables after syncing.
    async fn read<R>(
        &self,
        f: impl FnOnce(&BTreeMap<SnapshotId, SnapshotState>, &BTreeMap<SnapshotId, Pin>) -> R,
    ) -> Result<R, Error> {
        self.projection.read(|t| f(&t.snapshots, &t.pins)).await
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

    /// Every (snapshot, restore job) lease held.
    pub async fn leases(&self) -> Result<Vec<(SnapshotId, JobId)>, Error> {
        self.read(|s, _| {
            s.iter()
                .flat_map(|(id, x)| x.leases.iter().map(move |j| (*id, *j)))
                .collect()
        })
        .await
    }

    /// Snapshots with unfinished work, and pins that never became a snapshot.
    pub async fn unfinished(&self) -> Result<Unfinished, Error> {
        self.read(|s, pins| {
            let mut u = Unfinished::default();
            for (id, x) in s {
                match x.status {
                    Some(SnapshotStatus::Pending) => {
                        u.pending.push(*id);
                        u.claims.insert(*id, (x.claim.clone(), x.created_ms));
                    }
                    Some(SnapshotStatus::Deleting) => {
                        u.deleting.push(*id);
                        let since = x.delete_requested_ms.unwrap_or(x.created_ms);
                        u.claims.insert(*id, (x.claim.clone(), since));
                    }
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
    /// Of each pending or deleting snapshot: who finishes it (design §10), and since when
    /// it is in that state (its create's start or its drop's request).
    pub claims: BTreeMap<SnapshotId, (ClaimState, u64)>,
    /// Failed or deleted snapshots whose pin was not released yet.
    pub stale_pins: Vec<(SnapshotId, CollectionId)>,
    /// Pins with no snapshot stream (crash between pin and start).
    pub orphan_pins: Vec<(SnapshotId, Pin)>,
}

impl Fold for Tables {
    fn apply(&mut self, env: &snapvault_events::Envelope) -> Result<(), LogError> {
        apply(self, env)
    }
}

fn apply(t: &mut Tables, env: &snapvault_events::Envelope) -> Result<(), LogError> {
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
                    pinned_ms,
                } => {
                    t.pins.insert(
                        snapshot_id,
                        Pin {
                            collection_id,
                            name,
                            description,
                            labels,
                            pinned_version: env.version,
                            pinned_ms,
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
