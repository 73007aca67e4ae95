//! What the workload believes exists, and the durability checks that belief allows.
//!
//! The model is deliberately humble. Faults make outcomes ambiguous (an `unavailable` reply
//! may hide a write that landed; a crash loses every reply in flight), so the model does not
//! try to predict the system. It keeps two kinds of knowledge:
//! - **Live**: the workload saw this collection or segment acknowledged (or observed it in the
//!   log) and has sent nothing since that could remove it. It must still exist: this is the
//!   "acknowledged writes survive faults and crashes" check.
//! - **Doomed**: some operation that may remove it was sent and its outcome is unknown. The
//!   next reconciliation asks the log (the truth) and believes whatever it finds.
//!
//! Plus expectations from acknowledged removals ("this must be gone now"). Everything else is
//! adopted from the truth after each step, so the workload always picks targets that exist.

use crate::invariants::Truth;
use snapvault_events::domain::collection::CollectionStatus;
use snapvault_events::domain::restore::RestoreStatus;
use snapvault_events::domain::snapshot::SnapshotStatus;
use snapvault_events::domain::{CollectionId, FileRef, JobId, PartitionId, SegmentId, SnapshotId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Live,
    Doomed,
}

#[derive(Debug, Clone)]
pub struct MSegment {
    pub partition_id: PartitionId,
    pub shard: u32,
    pub rows: u64,
    pub files: Vec<FileRef>,
    pub fate: Fate,
}

#[derive(Debug, Clone)]
pub struct MCollection {
    pub name: String,
    pub shard_count: u32,
    /// Live partitions, by id.
    pub partitions: BTreeMap<PartitionId, String>,
    /// Live indexes, by name.
    pub indexes: BTreeSet<String>,
    pub segments: BTreeMap<SegmentId, MSegment>,
    pub fate: Fate,
}

/// A snapshot. `Live` means: acknowledged (or seen) committed, no drop sent since — it must
/// stay committed. Anything else the model does not assert (`Doomed`), it only remembers the
/// snapshot as a target for drops.
#[derive(Debug, Clone)]
pub struct MSnapshot {
    pub collection: String,
    pub name: String,
    pub fate: Fate,
}

impl MCollection {
    pub fn live_segments(&self) -> impl Iterator<Item = (&SegmentId, &MSegment)> {
        self.segments.iter().filter(|(_, s)| s.fate == Fate::Live)
    }
}

/// An acknowledged outcome of one operation.
#[derive(Debug, Clone)]
pub enum Effect {
    CollectionCreated {
        id: CollectionId,
        name: String,
        shard_count: u32,
        partitions: BTreeMap<PartitionId, String>,
    },
    CollectionDropped {
        id: CollectionId,
    },
    SegmentAdded {
        collection: CollectionId,
        segment_id: SegmentId,
        segment: MSegment,
    },
    SegmentsRemoved {
        collection: CollectionId,
        segments: Vec<SegmentId>,
    },
    PartitionDropped {
        collection: CollectionId,
        partition_id: PartitionId,
    },
    SnapshotCommitted {
        id: SnapshotId,
        collection: String,
        name: String,
    },
    SnapshotDropped {
        id: SnapshotId,
    },
    /// A restore start returned this job: it must be in the log.
    RestoreStarted {
        job: JobId,
    },
    /// A cancel was acknowledged: the job must roll back as cancelled.
    RestoreCancelled {
        job: JobId,
    },
}

/// A snapshot as the restore planner sees it (from the truth, after every step).
#[derive(Debug, Clone)]
pub struct SnapInfo {
    pub id: SnapshotId,
    pub collection: String,
    pub name: String,
    /// `SnapshotStatus::as_str`.
    pub status: &'static str,
    /// Partitions that had segments in its cut (all exist in it), and `_default`.
    pub partitions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: JobId,
    pub status: RestoreStatus,
    pub target: String,
}

/// What restores can act on: snapshots and jobs, adopted from the truth.
#[derive(Debug, Clone, Default)]
pub struct RestoreWorld {
    pub snapshots: Vec<SnapInfo>,
    pub jobs: Vec<JobInfo>,
}

/// What an operation may remove. Registered before it runs, so a crash mid-flight still
/// leaves the model knowing what might be gone.
///
/// The host API addresses collections and partitions by **name**, and a name can move to a
/// new collection (or partition) within one step (drop, then create again). So a threat also
/// covers everything that carries the name, not just the id the planner saw.
#[derive(Debug, Clone)]
pub enum Threat {
    Collection {
        id: CollectionId,
        name: String,
    },
    Segments(CollectionId, Vec<SegmentId>),
    Partition {
        id: CollectionId,
        name: String,
        partition_id: PartitionId,
        partition: String,
    },
    /// Snapshots are dropped by (collection name, snapshot name).
    Snapshot {
        collection: String,
        name: String,
    },
}

#[derive(Debug, Default)]
pub struct Model {
    pub collections: BTreeMap<CollectionId, MCollection>,
    pub snapshots: BTreeMap<SnapshotId, MSnapshot>,
    /// Acknowledged snapshot drops: (planned id, collection name, snapshot name).
    expect_snapshot_gone: BTreeSet<(SnapshotId, String, String)>,
    expect_dropped: BTreeSet<CollectionId>,
    expect_gone: BTreeSet<(CollectionId, SegmentId)>,
    expect_partition_dropped: BTreeSet<(CollectionId, PartitionId)>,
    /// External collections (seen in the log): their segments come and go with refreshes,
    /// so the model asserts nothing about them.
    pub external: BTreeSet<CollectionId>,
    pub restore_world: RestoreWorld,
    expect_jobs: BTreeSet<JobId>,
    expect_cancelled: BTreeSet<JobId>,
}

impl Model {
    /// Live collections, in id order (deterministic choice for the workload).
    pub fn live_collections(&self) -> Vec<(CollectionId, &MCollection)> {
        self.collections
            .iter()
            .filter(|(_, c)| c.fate == Fate::Live)
            .map(|(id, c)| (*id, c))
            .collect()
    }

    /// Mark what `threat` may remove as doomed.
    pub fn threaten(&mut self, threat: &Threat) {
        match threat {
            Threat::Collection { id, name } => {
                for (cid, c) in self.collections.iter_mut() {
                    if cid == id || c.name == *name {
                        c.fate = Fate::Doomed;
                    }
                }
            }
            Threat::Segments(id, segs) => {
                if let Some(c) = self.collections.get_mut(id) {
                    for s in segs {
                        if let Some(seg) = c.segments.get_mut(s) {
                            seg.fate = Fate::Doomed;
                        }
                    }
                }
            }
            Threat::Partition {
                id,
                name,
                partition_id,
                partition,
            } => {
                for (cid, c) in self.collections.iter_mut() {
                    if cid != id && c.name != *name {
                        continue;
                    }
                    for seg in c.segments.values_mut() {
                        let named = c.partitions.get(&seg.partition_id) == Some(partition);
                        if named || (cid == id && seg.partition_id == *partition_id) {
                            seg.fate = Fate::Doomed;
                        }
                    }
                }
            }
            Threat::Snapshot { collection, name } => {
                for s in self.snapshots.values_mut() {
                    if s.collection == *collection && s.name == *name {
                        s.fate = Fate::Doomed;
                    }
                }
            }
        }
    }

    /// Apply one step's outcomes: acknowledged additions first, then acknowledged removals,
    /// then `threats` again: those of every removal sent this step, acknowledged or not. This
    /// order never claims too much: concurrent operations may have run in any order, so a
    /// removal (even an acknowledged one, through a name that moved) may have struck something
    /// added in the same step. Only what was threatened when the step was planned (and so
    /// is doomed now) is expected gone after an acknowledged removal.
    pub fn apply(&mut self, acked: &[Effect], threats: &[Threat]) {
        for e in acked {
            match e {
                Effect::CollectionCreated {
                    id,
                    name,
                    shard_count,
                    partitions,
                } => {
                    self.collections.insert(
                        *id,
                        MCollection {
                            name: name.clone(),
                            shard_count: *shard_count,
                            partitions: partitions.clone(),
                            indexes: BTreeSet::new(),
                            segments: BTreeMap::new(),
                            fate: Fate::Live,
                        },
                    );
                }
                Effect::SegmentAdded {
                    collection,
                    segment_id,
                    segment,
                } => {
                    if let Some(c) = self.collections.get_mut(collection) {
                        c.segments.insert(*segment_id, segment.clone());
                    }
                }
                Effect::SnapshotCommitted {
                    id,
                    collection,
                    name,
                } => {
                    self.snapshots.insert(
                        *id,
                        MSnapshot {
                            collection: collection.clone(),
                            name: name.clone(),
                            fate: Fate::Live,
                        },
                    );
                }
                _ => {}
            }
        }
        for e in acked {
            match e {
                Effect::CollectionDropped { id } => {
                    self.collections.remove(id);
                    self.expect_dropped.insert(*id);
                }
                Effect::SegmentsRemoved {
                    collection,
                    segments,
                } => {
                    if let Some(c) = self.collections.get_mut(collection) {
                        for s in segments {
                            c.segments.remove(s);
                        }
                    }
                    for s in segments {
                        self.expect_gone.insert((*collection, *s));
                    }
                }
                Effect::PartitionDropped {
                    collection,
                    partition_id,
                } => {
                    if let Some(c) = self.collections.get_mut(collection) {
                        let gone: Vec<SegmentId> = c
                            .segments
                            .iter()
                            .filter(|(_, s)| {
                                s.partition_id == *partition_id && s.fate == Fate::Doomed
                            })
                            .map(|(id, _)| *id)
                            .collect();
                        for s in gone {
                            c.segments.remove(&s);
                            self.expect_gone.insert((*collection, s));
                        }
                        c.partitions.remove(partition_id);
                    }
                    self.expect_partition_dropped
                        .insert((*collection, *partition_id));
                }
                Effect::RestoreStarted { job } => {
                    self.expect_jobs.insert(*job);
                }
                Effect::RestoreCancelled { job } => {
                    self.expect_cancelled.insert(*job);
                }
                Effect::SnapshotDropped { id } => {
                    if let Some(s) = self.snapshots.remove(id) {
                        self.expect_snapshot_gone
                            .insert((*id, s.collection, s.name));
                    }
                }
                _ => {}
            }
        }
        for t in threats {
            self.threaten(t);
        }
    }

    /// Compare beliefs with the truth (the log replayed), then adopt the truth. An error is a
    /// lost acknowledged write or a removal that did not happen.
    pub fn reconcile(&mut self, truth: &Truth) -> Result<(), String> {
        for id in std::mem::take(&mut self.expect_dropped) {
            if truth.live_collection(id).is_some() {
                return Err(format!(
                    "collection {id} was dropped (acknowledged) but is still live in the log"
                ));
            }
        }
        for (c, s) in std::mem::take(&mut self.expect_gone) {
            if let Some(state) = truth.live_collection(c)
                && state.segments.contains_key(&s)
            {
                return Err(format!(
                    "segment {s} of collection {c} was removed (acknowledged) but is still live in the log"
                ));
            }
        }
        for (c, p) in std::mem::take(&mut self.expect_partition_dropped) {
            if let Some(state) = truth.live_collection(c)
                && state.partitions.get(&p).is_some_and(|x| !x.dropped)
            {
                return Err(format!(
                    "partition {p} of collection {c} was dropped (acknowledged) but is still live"
                ));
            }
        }

        let ids: Vec<CollectionId> = self.collections.keys().copied().collect();
        for id in ids {
            let Some(c) = self.collections.get_mut(&id) else {
                continue;
            };
            let live = truth.live_collection(id);
            let referenced = truth.catalog.names.get(&c.name) == Some(&id);
            let present = live.is_some() && referenced;
            if c.fate == Fate::Live && !present {
                return Err(format!(
                    "collection '{}' ({id}) was acknowledged and nothing that could drop it was sent, but the log says: {}",
                    c.name,
                    match (live.is_some(), truth.catalog.names.get(&c.name)) {
                        (false, _) => "it is not live".to_string(),
                        (true, Some(other)) => format!("its name points at collection {other}"),
                        (true, None) => "no name points at it".to_string(),
                    }
                ));
            }
            let Some(state) = live.filter(|_| present) else {
                self.collections.remove(&id);
                continue;
            };
            c.fate = Fate::Live;
            let segs: Vec<SegmentId> = c.segments.keys().copied().collect();
            for s in segs {
                let Some(seg) = c.segments.get_mut(&s) else {
                    continue;
                };
                match state.segments.get(&s) {
                    Some(real) => {
                        if seg.fate == Fate::Live && real.files != seg.files {
                            return Err(format!(
                                "segment {s} of collection '{}' has files {:?} in the log, but {:?} were acknowledged",
                                c.name, real.files, seg.files
                            ));
                        }
                        seg.fate = Fate::Live;
                        // The planner may have recorded a partition that was re-created
                        // under the same name while the flush ran.
                        seg.partition_id = real.partition_id;
                    }
                    None if seg.fate == Fate::Live => {
                        return Err(format!(
                            "segment {s} of collection '{}' ({id}) was acknowledged and nothing that could remove it was sent, but it is not live in the log",
                            c.name
                        ));
                    }
                    None => {
                        c.segments.remove(&s);
                    }
                }
            }
        }

        // A drop names (collection, snapshot); the node resolves the name to the snapshot of
        // the newest collection of that name, which need not be the one the planner saw (a
        // snapshot of a dropped collection is shadowed by one of a new collection of the same
        // name). So: some snapshot of that name must have been dropped.
        for (id, collection, name) in std::mem::take(&mut self.expect_snapshot_gone) {
            let gone = |s: Option<SnapshotStatus>| {
                matches!(s, Some(SnapshotStatus::Deleting | SnapshotStatus::Deleted))
            };
            let any = truth.snapshots.values().any(|r| {
                gone(r.state.status)
                    && r.state
                        .identity
                        .as_ref()
                        .is_some_and(|i| i.collection_name == collection && i.name == name)
            });
            if !gone(truth.snapshot_status(id)) && !any {
                return Err(format!(
                    "snapshot '{name}' of '{collection}' was dropped (acknowledged) but no snapshot of that name is being deleted or deleted (planned {id}: {:?})",
                    truth.snapshot_status(id)
                ));
            }
        }
        let snapshot_ids: Vec<SnapshotId> = self.snapshots.keys().copied().collect();
        for id in snapshot_ids {
            let status = truth.snapshot_status(id);
            let committed = status == Some(SnapshotStatus::Committed);
            let Some(s) = self.snapshots.get_mut(&id) else {
                continue;
            };
            if s.fate == Fate::Live && !committed {
                return Err(format!(
                    "snapshot '{}' of '{}' ({id}) was committed and no drop of it was sent, but the log says it is {status:?}",
                    s.name, s.collection
                ));
            }
            match status {
                Some(SnapshotStatus::Committed) => s.fate = Fate::Live,
                Some(SnapshotStatus::Pending | SnapshotStatus::Failed) => s.fate = Fate::Doomed,
                _ => {
                    self.snapshots.remove(&id);
                }
            }
        }
        for (id, r) in &truth.snapshots {
            let Some(identity) = &r.state.identity else {
                continue;
            };
            let fate = match r.state.status {
                Some(SnapshotStatus::Committed) => Fate::Live,
                Some(SnapshotStatus::Pending | SnapshotStatus::Failed) => Fate::Doomed,
                _ => continue,
            };
            self.snapshots.entry(*id).or_insert_with(|| MSnapshot {
                collection: identity.collection_name.clone(),
                name: identity.name.clone(),
                fate,
            });
        }

        for job in std::mem::take(&mut self.expect_jobs) {
            if truth
                .restores
                .jobs
                .get(&job)
                .is_none_or(|j| j.state.request.is_none())
            {
                return Err(format!(
                    "restore job {job} was returned by a start but is not in the log"
                ));
            }
        }
        for job in std::mem::take(&mut self.expect_cancelled) {
            let cancelled = truth
                .restores
                .jobs
                .get(&job)
                .is_some_and(|j| j.state.cancelled);
            if !cancelled {
                return Err(format!(
                    "the cancel of restore job {job} was acknowledged but the log does not record it: {:?}",
                    truth.restores.jobs.get(&job).and_then(|j| j.state.status)
                ));
            }
        }
        self.restore_world = RestoreWorld {
            snapshots: truth
                .snapshots
                .iter()
                .filter_map(|(id, r)| {
                    let identity = r.state.identity.as_ref()?;
                    let mut partitions = vec!["_default".to_string()];
                    if let Some(cut) = truth.cuts.get(id)
                        && let Some(c) = truth.collections.get(&cut.collection)
                    {
                        for seg in cut.segments.values() {
                            if let Some(p) = c.state.partitions.get(&seg.partition_id)
                                && !partitions.contains(&p.name)
                            {
                                partitions.push(p.name.clone());
                            }
                        }
                    }
                    Some(SnapInfo {
                        id: *id,
                        collection: identity.collection_name.clone(),
                        name: identity.name.clone(),
                        status: r.state.status?.as_str(),
                        partitions,
                    })
                })
                .collect(),
            jobs: truth
                .restores
                .jobs
                .iter()
                .filter_map(|(id, j)| {
                    Some(JobInfo {
                        id: *id,
                        status: j.state.status?,
                        target: j.state.request.as_ref()?.target_name.clone(),
                    })
                })
                .collect(),
        };

        // Adopt what the truth knows and the model does not (outcomes lost to faults).
        for (name, id) in &truth.catalog.names {
            let Some(state) = truth.live_collection(*id) else {
                continue;
            };
            // A restore target belongs to its job until the restore completes.
            if state.status == Some(CollectionStatus::Restoring) {
                continue;
            }
            if state.external.is_some() {
                self.external.insert(*id);
            }
            let c = self.collections.entry(*id).or_insert_with(|| MCollection {
                name: name.clone(),
                shard_count: state.shard_count,
                partitions: BTreeMap::new(),
                indexes: BTreeSet::new(),
                segments: BTreeMap::new(),
                fate: Fate::Live,
            });
            c.partitions = state
                .partitions
                .iter()
                .filter(|(_, p)| !p.dropped)
                .map(|(pid, p)| (*pid, p.name.clone()))
                .collect();
            c.indexes = state
                .indexes
                .values()
                .filter(|i| !i.dropped)
                .map(|i| i.name.clone())
                .collect();
            if state.external.is_some() {
                c.segments.clear();
                continue;
            }
            for (sid, seg) in &state.segments {
                c.segments.entry(*sid).or_insert_with(|| MSegment {
                    partition_id: seg.partition_id,
                    shard: seg.shard,
                    rows: seg.rows,
                    files: seg.files.clone(),
                    fate: Fate::Live,
                });
            }
        }
        Ok(())
    }
}

/// Every id the allocator handed to the workload, shared with the operation tasks so an id
/// is recorded the moment it is received (even if a crash then loses the operation).
#[derive(Debug, Clone, Default)]
pub struct IdLedger(Arc<Mutex<LedgerInner>>);

#[derive(Debug, Default)]
struct LedgerInner {
    ids: BTreeSet<u64>,
    duplicates: Vec<u64>,
}

impl IdLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, id: u64) {
        let mut l = self.lock();
        if !l.ids.insert(id) {
            l.duplicates.push(id);
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().ids.contains(&id)
    }

    pub fn duplicates(&self) -> Vec<u64> {
        self.lock().duplicates.clone()
    }

    pub fn ids(&self) -> BTreeSet<u64> {
        self.lock().ids.clone()
    }
}
