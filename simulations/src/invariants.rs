//! The checker: invariants verified after every step, against the truth.
//!
//! The truth is the log itself, read fault-free (the `MemoryLog` inside the `SimLog`) and
//! replayed through the real deciders' `evolve`. It is maintained incrementally (each step
//! reads only the new events), so checking after every step stays cheap however long the run.
//!
//! Invariants:
//! 1. **Log shape**: positions are 1, 2, 3, … with no gap; each stream's versions are
//!    1, 2, 3, …; every record decodes; event time never goes backwards.
//! 2. **Ids**: id blocks in the `ids` stream strictly grow; every collection, segment and
//!    build id in the log lies inside a reserved block and is unique; every id handed to the
//!    workload is unique and none is also a collection id.
//! 3. **Catalog**: every name points at a collection created under that name, live or
//!    dropped (stale-but-dropped is allowed: the next create of the name replaces it); no two
//!    names share a collection.
//! 4. **Replay equals live state**: each entity actor's state equals the replay of its stream
//!    up to the actor's version; the actor is never ahead of the log; after the liveness
//!    phase it is not behind either.
//! 5. **Protected files exist**: every file the truth says must exist — every file of every
//!    live segment of every live collection, every file of the cut a pending or committed
//!    snapshot pinned (even after its collection was dropped), the `snapshot.json` of every
//!    committed snapshot (later: files leased by restore jobs) — is in the store with the
//!    recorded size and crc32c. This is "GC never deletes a file a snapshot needs".
//! 6. **Deletions are announced**: every object deleted from the store was named by a GC
//!    `Reclaiming` event, or lies under the prefix of a snapshot whose drop was requested,
//!    *before* the delete (the log head at the delete is recorded by the store).
//! 7. **Committed snapshots verify**: the first time a snapshot is seen committed, its
//!    manifests are read back fault-free and every file they list is checked.
//!
//! The model's durability checks ([`crate::model`]) run on the same truth.

use crate::model::IdLedger;
use crate::sim_store::Deletion;
use crate::trace::TraceHash;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use snapvault::Client;
use snapvault_actors::Aggregate;
use snapvault_actors::catalog::{Catalog, CatalogState};
use snapvault_actors::collection::{Collection, CollectionState};
use snapvault_actors::restore::{CopyTask, RestoreJob};
use snapvault_actors::snapshot::worker::{SnapshotConfig, SnapshotWorker};
use snapvault_actors::snapshot::{Snapshot, SnapshotState};
use snapvault_events::codec::decode;
use snapvault_events::domain::catalog::{CATALOG_STREAM, CatalogEvent};
use snapvault_events::domain::collection::{CollectionEvent, SegmentRecord};
use snapvault_events::domain::gc::{GC_STREAM, GcEvent};
use snapvault_events::domain::restore::{
    CopyTaskEvent, RestoreEvent, RestoreStatus, copy_task_stream, parse_copy_task_stream,
    restore_stream,
};
use snapvault_events::domain::snapshot::{SnapshotEvent, SnapshotStatus};
use snapvault_events::domain::{CollectionId, SegmentId, SnapshotId};
use snapvault_events::ids::IDS_STREAM;
use snapvault_events::{Envelope, EventLog, MemoryLog, SharedClock};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const PAGE: usize = 1024;
const COLLECTION_PREFIX: &str = "collection-";
const SNAPSHOT_PREFIX: &str = "snapshot-";
const RESTORE_PREFIX: &str = "restore-";
/// The prefixes GC scans for orphans (its default configuration): after the liveness phase
/// nothing unprotected may remain under them.
pub const ORPHAN_PREFIXES: [&str; 2] = ["data/", "snapshots/"];

/// Mirror of the private `IdBlockReserved` payload of `snapvault_events::ids`: the checker
/// reads the id stream independently of the allocator it checks.
#[derive(Deserialize)]
struct IdBlockReserved {
    end: u64,
}

/// One collection stream, replayed.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    pub version: u64,
    pub state: CollectionState,
}

/// One snapshot stream, replayed.
#[derive(Debug, Clone, Default)]
pub struct ReplayedSnapshot {
    pub version: u64,
    pub state: SnapshotState,
    /// Position of the `DeleteRequested` event: from there on its objects may be deleted.
    pub delete_requested_at: Option<u64>,
}

/// The segments a snapshot pinned: the collection's live segments at the pin.
#[derive(Debug, Clone)]
pub struct Cut {
    pub collection: CollectionId,
    pub segments: BTreeMap<SegmentId, Arc<SegmentRecord>>,
}

/// An object that must exist, and why.
#[derive(Debug, Clone)]
pub struct Protected {
    /// `None` when the log does not record the size (a snapshot's metadata file).
    pub size: Option<u64>,
    pub crc32c: u32,
    pub why: String,
}

/// The state of every entity according to the log.
#[derive(Debug, Default)]
pub struct Truth {
    pub catalog_version: u64,
    pub catalog: CatalogState,
    pub collections: BTreeMap<CollectionId, Replayed>,
    pub snapshots: BTreeMap<SnapshotId, ReplayedSnapshot>,
    pub cuts: BTreeMap<SnapshotId, Cut>,
    /// Keys GC announced it reclaims, with the position of the first announcement.
    pub reclaiming: BTreeMap<String, u64>,
    /// External collections: tasks, commits, source prefixes (`external_check.rs`).
    pub external: crate::external_check::ExternalTruth,
    /// Restore jobs and copy tasks (`restore_check.rs`).
    pub restores: crate::restore_check::RestoreTruth,
}

impl Truth {
    pub fn live_collection(&self, id: CollectionId) -> Option<&CollectionState> {
        self.collections
            .get(&id)
            .map(|r| &r.state)
            .filter(|s| s.is_live())
    }

    pub fn snapshot_status(&self, id: SnapshotId) -> Option<SnapshotStatus> {
        self.snapshots.get(&id).and_then(|s| s.state.status)
    }

    /// Does the cut of snapshot `id` have to stay? While the snapshot is pending or
    /// committed; and between the pin and the snapshot's first event (a crash there leaves a
    /// pin that the next start adopts).
    pub fn cut_protected(&self, id: SnapshotId, cut: &Cut) -> bool {
        match self.snapshot_status(id) {
            Some(SnapshotStatus::Pending | SnapshotStatus::Committed) => true,
            Some(_) => false,
            None => self
                .collections
                .get(&cut.collection)
                .is_some_and(|c| c.state.pins.contains_key(&id)),
        }
    }

    /// Every object that must exist, with why. Restore jobs add their leased files here.
    pub fn protected_files(&self) -> BTreeMap<String, Protected> {
        let mut out = BTreeMap::new();
        let mut protect = |segs: &mut dyn Iterator<Item = &Arc<SegmentRecord>>, why: &str| {
            for seg in segs {
                let index_files = seg.indexes.iter().flat_map(|i| i.files.iter());
                for f in seg.files.iter().chain(index_files) {
                    out.entry(f.key.clone()).or_insert_with(|| Protected {
                        size: Some(f.size),
                        crc32c: f.crc32c,
                        why: format!("segment {} of {why}", seg.segment_id),
                    });
                }
            }
        };
        for (id, r) in &self.collections {
            // A restore target whose job rolls back is being emptied.
            if r.state.is_live() && !self.restores.target_rolling_back(*id) {
                let why = format!("live collection '{}' ({id})", r.state.name);
                protect(&mut r.state.segments.values(), &why);
            }
        }
        for (sid, cut) in &self.cuts {
            if self.cut_protected(*sid, cut) {
                let why = format!(
                    "the cut of snapshot {sid} ({:?})",
                    self.snapshot_status(*sid)
                );
                protect(&mut cut.segments.values(), &why);
            }
        }
        let leased = |sid: u64, job: u64| {
            self.snapshots
                .get(&sid)
                .is_some_and(|s| s.state.leases.contains(&job))
        };
        self.restores
            .protect(&self.cuts, &leased, &mut |key, size, crc32c, why| {
                out.entry(key.to_string()).or_insert_with(|| Protected {
                    size: Some(size),
                    crc32c,
                    why,
                });
            });
        for (sid, s) in &self.snapshots {
            if s.state.status == Some(SnapshotStatus::Committed) && !s.state.imported {
                out.insert(
                    s.state.metadata_key.clone(),
                    Protected {
                        size: None,
                        crc32c: s.state.metadata_crc32c,
                        why: format!("the metadata of committed snapshot {sid}"),
                    },
                );
            }
        }
        out
    }

    /// May `key` be under the objects of a committed snapshot (its manifests)?
    fn under_committed_snapshot(&self, key: &str) -> bool {
        self.snapshots.values().any(|s| {
            s.state.status == Some(SnapshotStatus::Committed)
                && key.starts_with(&format!("{}/", s.state.prefix.trim_end_matches('/')))
        })
    }
}

/// The first line where two pretty-printed values differ, to keep failure reports short.
fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!(
                "line {i}: actor has `{}`, log replay has `{}`",
                x.trim(),
                y.trim()
            );
        }
    }
    format!(
        "one is a prefix of the other ({} vs {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}

#[derive(Default)]
pub struct Checker {
    next_position: u64,
    versions: BTreeMap<String, u64>,
    truth: Truth,
    /// Exclusive end of every id reserved so far.
    ids_end: u64,
    collection_ids: BTreeSet<CollectionId>,
    segment_ids: BTreeSet<SegmentId>,
    build_ids: BTreeSet<u64>,
    last_time_ms: u64,
    /// Objects whose checksum was verified, by key, with the e_tag seen then: objects are
    /// immutable, so one verification per version is enough.
    verified: BTreeMap<String, Option<String>>,
    /// Actors seen behind the log (legitimate after an ambiguous append; reported in stats).
    pub lagging_reads: u64,
    /// Snapshots whose manifests were verified once committed.
    verified_snapshots: BTreeSet<SnapshotId>,
    /// Objects deleted so far (GC and snapshot drops), for the stats.
    pub deletions: u64,
    /// Print every event as it is ingested (the runner's `--verbose`).
    pub verbose: bool,
    /// The claim invariants, event by event.
    pub claims: crate::claim_check::ClaimAudit,
}

impl Checker {
    /// `verbose` prints every event as it is ingested.
    pub fn new(verbose: bool) -> Checker {
        Checker {
            verbose,
            ..Checker::default()
        }
    }

    pub fn truth(&self) -> &Truth {
        &self.truth
    }

    pub fn events(&self) -> u64 {
        self.next_position.saturating_sub(1)
    }

    /// Read the events appended since the last call, check their shape, fold them into the
    /// truth and into the trace hash.
    pub async fn ingest(&mut self, log: &MemoryLog, trace: &mut TraceHash) -> Result<(), String> {
        if self.next_position == 0 {
            self.next_position = 1;
            self.ids_end = 1;
        }
        loop {
            let page = log
                .read_all(self.next_position, PAGE)
                .await
                .map_err(|e| format!("the memory log itself failed: {e}"))?;
            let n = page.len();
            for env in page {
                self.ingest_one(&env)?;
                trace.str(&env.stream);
                trace.u64(env.version);
                trace.u64(env.position);
                trace.str(&env.event_type);
                trace.u64(env.time_ms);
                trace.bytes(&env.payload);
            }
            if n < PAGE {
                break;
            }
        }
        let head = log.head().await.map_err(|e| e.to_string())?;
        if head != self.events() {
            return Err(format!(
                "read_all stopped at position {} but the head is {head}",
                self.events()
            ));
        }
        Ok(())
    }

    fn ingest_one(&mut self, env: &Envelope) -> Result<(), String> {
        let at = format!(
            "event at position {} ('{}' v{})",
            env.position, env.stream, env.version
        );
        if env.position != self.next_position {
            return Err(format!(
                "{at}: positions must be contiguous; expected position {}",
                self.next_position
            ));
        }
        self.next_position += 1;
        self.claims.apply(env)?;
        let v = self.versions.entry(env.stream.clone()).or_default();
        if env.version != *v + 1 {
            return Err(format!(
                "{at}: stream versions must be contiguous; expected version {}",
                *v + 1
            ));
        }
        *v = env.version;
        if env.time_ms < self.last_time_ms {
            return Err(format!(
                "{at}: time went backwards ({} after {})",
                env.time_ms, self.last_time_ms
            ));
        }
        self.last_time_ms = env.time_ms;

        if env.stream == IDS_STREAM {
            let r: IdBlockReserved = rmp_serde::from_slice(&env.payload)
                .map_err(|e| format!("{at}: undecodable id block: {e}"))?;
            if r.end <= self.ids_end {
                return Err(format!(
                    "{at}: id block end {} does not grow past {}: ids would repeat",
                    r.end, self.ids_end
                ));
            }
            self.ids_end = r.end;
        } else if env.stream == CATALOG_STREAM {
            let e: CatalogEvent = decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
            Catalog::evolve(&mut self.truth.catalog, &e);
            self.truth.catalog_version = env.version;
        } else if let Some(id) = env.stream.strip_prefix(COLLECTION_PREFIX) {
            let id: CollectionId = id
                .parse()
                .map_err(|_| format!("{at}: malformed collection stream name"))?;
            let e: CollectionEvent = decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
            self.check_collection_ids(&at, id, &e)?;
            {
                let before = self
                    .truth
                    .collections
                    .get(&id)
                    .map(|r| r.state.clone())
                    .unwrap_or_default();
                self.truth.external.on_collection_event(
                    &at,
                    &before,
                    &e,
                    self.ids_end,
                    &self.segment_ids,
                )?;
            }
            if matches!(e, CollectionEvent::Dropped)
                && self.truth.collections.get(&id).is_some_and(|r| {
                    r.state.status
                        == Some(snapvault_events::domain::collection::CollectionStatus::Restoring)
                })
                && let Some(job) = self.truth.restores.targets.get(&id)
                && self
                    .truth
                    .restores
                    .jobs
                    .get(job)
                    .is_some_and(|j| j.active())
            {
                return Err(format!(
                    "{at}: collection {id} is dropped while restore job {job} restores it ({:?})",
                    self.truth.restores.jobs.get(job).and_then(|j| j.status())
                ));
            }
            let r = self.truth.collections.entry(id).or_default();
            Collection::evolve(&mut r.state, &e);
            r.version = env.version;
            if let CollectionEvent::RestoreCompleted { job_id, .. } = &e {
                let state = r.state.clone();
                self.truth.restores.completed_targets.insert(*job_id, state);
            }
            if let CollectionEvent::SnapshotPinned { snapshot_id, .. } = &e {
                let cut = Cut {
                    collection: id,
                    segments: r.state.segments.clone(),
                };
                self.check_id(&at, "snapshot id", *snapshot_id)?;
                if self.truth.cuts.insert(*snapshot_id, cut).is_some() {
                    return Err(format!("{at}: snapshot {snapshot_id} pinned twice"));
                }
            }
        } else if let Some(id) = env.stream.strip_prefix(SNAPSHOT_PREFIX) {
            let id: SnapshotId = id
                .parse()
                .map_err(|_| format!("{at}: malformed snapshot stream name"))?;
            let e: SnapshotEvent = decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
            let r = self.truth.snapshots.entry(id).or_default();
            if matches!(e, SnapshotEvent::DeleteRequested { .. }) && !r.state.leases.is_empty() {
                return Err(format!(
                    "{at}: snapshot {id} is being deleted while restore job(s) {:?} hold a lease on it",
                    r.state.leases
                ));
            }
            Snapshot::evolve(&mut r.state, &e);
            r.version = env.version;
            if matches!(e, SnapshotEvent::DeleteRequested { .. }) && r.delete_requested_at.is_none()
            {
                r.delete_requested_at = Some(env.position);
            }
        } else if env.stream == GC_STREAM {
            let e: GcEvent = decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
            if let GcEvent::Reclaiming { keys, .. } = e {
                // GC may only ever announce what nothing needs at that point of the log.
                let protected = self.truth.protected_files();
                for k in keys {
                    if self.truth.external.under_source(&k) {
                        return Err(format!(
                            "{at}: GC announces reclaiming '{k}', a fragment of an external source (the user's)"
                        ));
                    }
                    if let Some(p) = protected.get(&k) {
                        return Err(format!(
                            "{at}: GC announces reclaiming '{k}', which {} still needs",
                            p.why
                        ));
                    }
                    self.truth.reclaiming.entry(k).or_insert(env.position);
                }
            }
        } else if let Some(id) = env.stream.strip_prefix("external-") {
            let id: u64 = id
                .parse()
                .map_err(|_| format!("{at}: malformed external task stream name"))?;
            let e: snapvault_events::domain::external::ExternalTaskEvent =
                decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
            self.truth.external.on_task_event(&at, id, &e)?;
        } else if let Some(id) = env.stream.strip_prefix(RESTORE_PREFIX) {
            let job: u64 = id
                .parse()
                .map_err(|_| format!("{at}: malformed restore job stream name"))?;
            let e: RestoreEvent = decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
            let ids_end = self.ids_end;
            self.truth
                .restores
                .on_job_event(&at, job, &e, env.position, ids_end)?;
        } else if env.stream.starts_with("copytask-") {
            let (job, task) = parse_copy_task_stream(&env.stream)
                .ok_or_else(|| format!("{at}: malformed copy task stream name"))?;
            let e: CopyTaskEvent = decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
            self.truth.restores.on_task_event(&at, job, task, &e)?;
        } else if env.stream == snapvault_events::domain::gc::GC_CLAIM_STREAM {
            // The GC singleton's claims: checked by `claim_check` like every claim.
            let e: snapvault_events::domain::claim::ClaimEvent =
                decode(env).map_err(|e| format!("{at}: {e}"))?;
            self.show(env, &e);
        } else {
            return Err(format!("{at}: unknown stream kind"));
        }
        Ok(())
    }

    /// With `verbose`, print an event as it is ingested (shortened).
    fn show(&self, env: &Envelope, e: &impl std::fmt::Debug) {
        if self.verbose {
            let mut text = format!("{e:?}");
            if text.len() > 240 {
                let mut cut = 240;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            eprintln!(
                "    log #{} {} v{}: {text}",
                env.position, env.stream, env.version
            );
        }
    }

    fn check_id(&self, at: &str, what: &str, id: u64) -> Result<(), String> {
        if id == 0 || id >= self.ids_end {
            return Err(format!(
                "{at}: {what} {id} was never reserved (reserved ids end at {})",
                self.ids_end
            ));
        }
        Ok(())
    }

    fn check_collection_ids(
        &mut self,
        at: &str,
        stream_id: CollectionId,
        e: &CollectionEvent,
    ) -> Result<(), String> {
        match e {
            CollectionEvent::Created { collection_id, .. } => {
                if *collection_id != stream_id {
                    return Err(format!(
                        "{at}: stream of collection {stream_id} creates collection {collection_id}"
                    ));
                }
                self.check_id(at, "collection id", stream_id)?;
                if !self.collection_ids.insert(stream_id) {
                    return Err(format!("{at}: collection {stream_id} created twice"));
                }
            }
            CollectionEvent::SegmentFlushed { segment } => {
                self.check_id(at, "segment id", segment.segment_id)?;
                if self.segment_ids.contains(&segment.segment_id) {
                    return Err(format!(
                        "{at}: segment id {} used twice",
                        segment.segment_id
                    ));
                }
                // Staged by a restore: from the job's id block, not the workload's.
                let restoring = self.truth.collections.get(&stream_id).is_some_and(|r| {
                    r.state.status
                        == Some(snapvault_events::domain::collection::CollectionStatus::Restoring)
                });
                if restoring
                    && self
                        .truth
                        .restores
                        .on_staged(at, stream_id, segment.segment_id)?
                {
                    return Ok(());
                }
                if self
                    .truth
                    .restores
                    .restored_segment_ids
                    .contains(&segment.segment_id)
                    || !self.segment_ids.insert(segment.segment_id)
                {
                    return Err(format!(
                        "{at}: segment id {} used twice",
                        segment.segment_id
                    ));
                }
            }
            CollectionEvent::SegmentsCompacted { into, .. } => {
                self.check_id(at, "segment id", into.segment_id)?;
                if self
                    .truth
                    .restores
                    .restored_segment_ids
                    .contains(&into.segment_id)
                    || !self.segment_ids.insert(into.segment_id)
                {
                    return Err(format!("{at}: segment id {} used twice", into.segment_id));
                }
            }
            CollectionEvent::IndexBuilt { index_files, .. } => {
                self.check_id(at, "build id", index_files.build_id)?;
                if !self.build_ids.insert(index_files.build_id) {
                    return Err(format!(
                        "{at}: build id {} used twice",
                        index_files.build_id
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Ids handed to the workload: unique, reserved, and never also a collection id.
    pub fn check_ids(&self, ledger: &IdLedger) -> Result<(), String> {
        let dups = ledger.duplicates();
        if !dups.is_empty() {
            return Err(format!("ids handed out more than once: {dups:?}"));
        }
        let ids = ledger.ids();
        if let Some(id) = ids.iter().find(|id| **id == 0 || **id >= self.ids_end) {
            return Err(format!(
                "id {id} was handed out but never reserved (reserved ids end at {})",
                self.ids_end
            ));
        }
        if let Some(id) = ids.intersection(&self.collection_ids).next() {
            return Err(format!(
                "id {id} was handed out and is also a collection id"
            ));
        }
        for s in &self.segment_ids {
            if !ids.contains(s) {
                return Err(format!(
                    "segment id {s} is in the log but the allocator never handed it out"
                ));
            }
        }
        Ok(())
    }

    /// Catalog names point at collections created under that name, live or dropped.
    pub fn check_catalog(&self) -> Result<(), String> {
        let mut owners: BTreeMap<CollectionId, &str> = BTreeMap::new();
        for (name, id) in &self.truth.catalog.names {
            let Some(r) = self.truth.collections.get(id) else {
                return Err(format!(
                    "catalog name '{name}' points at collection {id}, whose stream is empty"
                ));
            };
            if !r.state.exists || r.state.name != *name {
                return Err(format!(
                    "catalog name '{name}' points at collection {id}, which was created as '{}'",
                    r.state.name
                ));
            }
            if let Some(other) = owners.insert(*id, name) {
                return Err(format!(
                    "catalog names '{other}' and '{name}' both point at collection {id}"
                ));
            }
        }
        Ok(())
    }

    /// Replay of `stream` up to `version`, straight from the log.
    async fn replay_prefix<A: Aggregate>(
        log: &MemoryLog,
        stream: &str,
        version: u64,
    ) -> Result<A::State, String> {
        let mut state = A::State::default();
        let mut next = 1;
        while next <= version {
            let page = log
                .read_stream(stream, next, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            if page.is_empty() {
                break;
            }
            for env in page {
                if env.version > version {
                    break;
                }
                let e: A::Event = decode(&env).map_err(|e| e.to_string())?;
                A::evolve(&mut state, &e);
                next = env.version + 1;
            }
        }
        Ok(state)
    }

    /// Compare one actor's `(version, state)` with the log. The log is read again here, not
    /// only the truth ingested before: background work (the start-time resume, periodic GC)
    /// may append while the checker looks.
    async fn compare_actor<A: Aggregate>(
        &mut self,
        log: &MemoryLog,
        stream: &str,
        actor: (u64, A::State),
        known: Option<(u64, &A::State)>,
        strict: bool,
    ) -> Result<(), String>
    where
        A::State: PartialEq,
    {
        let (v, state) = actor;
        let log_version = log
            .stream_version(stream)
            .await
            .map_err(|e| e.to_string())?;
        if v > log_version {
            return Err(format!(
                "{stream}: actor at version {v} is ahead of the log (version {log_version})"
            ));
        }
        if strict && v != log_version {
            return Err(format!(
                "{stream}: actor still at version {v} after settling; the log is at {log_version}"
            ));
        }
        if v < log_version {
            self.lagging_reads += 1;
        }
        let equal = match known {
            Some((kv, ks)) if kv == v => state == *ks,
            _ => state == Self::replay_prefix::<A>(log, stream, v).await?,
        };
        if !equal {
            let expected = Self::replay_prefix::<A>(log, stream, v).await?;
            return Err(format!(
                "{stream}: actor state at version {v} differs from the log replay: {}",
                first_difference(&format!("{state:#?}"), &format!("{expected:#?}"))
            ));
        }
        Ok(())
    }

    /// Each actor's state equals the replay of its stream at the actor's version. With
    /// `all` every stream is checked (else only live collections and unfinished snapshots);
    /// with `strict` the actor must also be at the log's version (after the liveness phase
    /// made every entity catch up).
    pub async fn check_actors(
        &mut self,
        client: &Client,
        log: &MemoryLog,
        all: bool,
        strict: bool,
    ) -> Result<(), String> {
        let actor = client
            .registry()
            .inspect::<Catalog, _>(CATALOG_STREAM, |v, s| (v, s.clone()))
            .await
            .map_err(|e| format!("cannot read the catalog through its actor: {e}"))?;
        let known = self.truth.catalog.clone();
        let kv = self.truth.catalog_version;
        self.compare_actor::<Catalog>(log, CATALOG_STREAM, actor, Some((kv, &known)), strict)
            .await?;

        let ids: Vec<CollectionId> = self
            .truth
            .collections
            .iter()
            .filter(|(_, r)| all || r.state.is_live())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let actor = client
                .inspect_collection(id, |v, s| (v, s.clone()))
                .await
                .map_err(|e| format!("cannot read collection {id} through its actor: {e}"))?;
            let stream = snapvault_events::domain::collection_stream(id);
            let known = self.truth.collections.get(&id).cloned().unwrap_or_default();
            self.compare_actor::<Collection>(
                log,
                &stream,
                actor,
                Some((known.version, &known.state)),
                strict,
            )
            .await?;
        }

        let snapshot_ids: Vec<SnapshotId> = self
            .truth
            .snapshots
            .iter()
            .filter(|(_, r)| {
                all || !matches!(
                    r.state.status,
                    Some(SnapshotStatus::Deleted | SnapshotStatus::Failed)
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in snapshot_ids {
            let stream = snapvault_events::domain::snapshot::snapshot_stream(id);
            let actor = client
                .registry()
                .inspect::<Snapshot, _>(&stream, |v, s| (v, s.clone()))
                .await
                .map_err(|e| format!("cannot read snapshot {id} through its actor: {e}"))?;
            let known = self.truth.snapshots.get(&id).cloned().unwrap_or_default();
            self.compare_actor::<Snapshot>(
                log,
                &stream,
                actor,
                Some((known.version, &known.state)),
                strict,
            )
            .await?;
        }

        // Restore jobs (unfinished ones, or all) and their copy tasks. After settling they
        // are read caught up: nothing probes them otherwise.
        let jobs: Vec<u64> = self
            .truth
            .restores
            .jobs
            .iter()
            .filter(|(_, j)| all || !j.status().is_some_and(RestoreStatus::is_terminal))
            .map(|(id, _)| *id)
            .collect();
        for job in jobs {
            let stream = restore_stream(job);
            let actor = client
                .registry()
                .inspect_with::<RestoreJob, _>(&stream, strict, |v, s| (v, s.clone()))
                .await
                .map_err(|e| format!("cannot read restore job {job} through its actor: {e}"))?;
            let known = self
                .truth
                .restores
                .jobs
                .get(&job)
                .cloned()
                .unwrap_or_default();
            self.compare_actor::<RestoreJob>(
                log,
                &stream,
                actor,
                Some((known.version, &known.state)),
                strict,
            )
            .await?;
            for t in &known.state.tasks {
                let stream = copy_task_stream(job, t.task);
                let actor = client
                    .registry()
                    .inspect_with::<CopyTask, _>(&stream, strict, |v, s| (v, s.clone()))
                    .await
                    .map_err(|e| format!("cannot read {stream} through its actor: {e}"))?;
                let known = self
                    .truth
                    .restores
                    .tasks
                    .get(&(job, t.task))
                    .cloned()
                    .unwrap_or_default();
                self.compare_actor::<CopyTask>(
                    log,
                    &stream,
                    actor,
                    Some((known.version, &known.state)),
                    strict,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Every deletion was announced in the log before it happened.
    pub fn check_deletions(&mut self, deletions: &[Deletion]) -> Result<(), String> {
        for d in deletions {
            self.deletions += 1;
            let by_gc = self
                .truth
                .reclaiming
                .get(&d.key)
                .is_some_and(|p| *p <= d.log_head);
            let by_rollback = self.truth.restores.deleted_by_rollback(&d.key, d.log_head);
            let by_drop = self.truth.snapshots.values().any(|s| {
                s.delete_requested_at.is_some_and(|p| p <= d.log_head)
                    && d.key
                        .starts_with(&format!("{}/", s.state.prefix.trim_end_matches('/')))
            });
            if !(by_gc || by_drop || by_rollback) {
                return Err(format!(
                    "object '{}' was deleted (log head {}) without being announced in the log first",
                    d.key, d.log_head
                ));
            }
        }
        Ok(())
    }

    /// Read back, fault-free, the manifests of every snapshot newly seen committed and check
    /// every file they list (the node's own verifier, over the store without faults).
    pub async fn check_new_commits(
        &mut self,
        client: &Client,
        log: &MemoryLog,
        store: &Arc<InMemory>,
        clock: SharedClock,
    ) -> Result<(), String> {
        let fresh: Vec<SnapshotId> = self
            .truth
            .snapshots
            .iter()
            .filter(|(id, s)| {
                s.state.status == Some(SnapshotStatus::Committed)
                    && !self.verified_snapshots.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        self.verify_snapshots(client, log, store, clock, &fresh)
            .await
    }

    /// Verify the given snapshots' manifests and files, fault-free.
    pub async fn verify_snapshots(
        &mut self,
        client: &Client,
        log: &MemoryLog,
        store: &Arc<InMemory>,
        clock: SharedClock,
        ids: &[SnapshotId],
    ) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        let verifier = SnapshotWorker {
            registry: client.registry().clone(),
            log: Arc::new(log.clone()),
            store: store.clone(),
            clock,
            config: SnapshotConfig::default(),
        };
        for id in ids {
            let Some(s) = self.truth.snapshots.get(id) else {
                continue;
            };
            let report = verifier
                .verify(&s.state)
                .await
                .map_err(|e| format!("committed snapshot {id} cannot be verified: {e}"))?;
            if !report.ok {
                return Err(format!(
                    "committed snapshot {id} does not verify: missing {:?}, corrupt {:?}, corrupt manifests {:?}",
                    report.missing, report.corrupt, report.corrupt_manifests
                ));
            }
            self.verified_snapshots.insert(*id);
        }
        Ok(())
    }

    /// After liveness: every job ended, no lease is left, and every rolled back job left
    /// nothing (listed again: nothing may have landed since it was first checked).
    pub async fn check_restores_settled(&self, store: &InMemory) -> Result<(), String> {
        for (job, j) in &self.truth.restores.jobs {
            if !j.status().is_some_and(RestoreStatus::is_terminal) {
                return Err(format!(
                    "liveness: restore job {job} is still {:?} after healing",
                    j.status()
                ));
            }
            if j.rolled_back()
                && let Some(t) = j.target()
            {
                crate::restore_check::check_clean(store, *job, t).await?;
            }
        }
        for (sid, s) in &self.truth.snapshots {
            if !s.state.leases.is_empty() {
                return Err(format!(
                    "liveness: snapshot {sid} is still leased by {:?} after every restore ended",
                    s.state.leases
                ));
            }
        }
        Ok(())
    }

    /// Jobs by final status, for the summary line.
    pub fn restore_counts(&self) -> (u64, u64, u64) {
        let mut c = (0, 0, 0);
        for j in self.truth.restores.jobs.values() {
            match j.status() {
                Some(RestoreStatus::Completed) => c.0 += 1,
                Some(RestoreStatus::Failed) => c.1 += 1,
                Some(RestoreStatus::Cancelled) => c.2 += 1,
                _ => {}
            }
        }
        c
    }

    /// The restore invariants after a step (`restore_check.rs`).
    pub async fn check_restores(&mut self, store: &InMemory) -> Result<(), String> {
        crate::restore_check::check_state(&self.truth)?;
        crate::restore_check::check_jobs(&mut self.truth, store).await
    }

    /// After a full GC with no window: nothing unprotected is left under GC's prefixes.
    pub async fn check_converged(&self, store: &InMemory) -> Result<(), String> {
        use futures::TryStreamExt;
        let protected = self.truth.protected_files();
        for prefix in ORPHAN_PREFIXES {
            let p = Path::from(prefix.trim_end_matches('/'));
            let listed: Vec<object_store::ObjectMeta> = store
                .list(Some(&p))
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            for m in listed {
                let key = m.location.to_string();
                if !protected.contains_key(&key)
                    && !self.truth.under_committed_snapshot(&key)
                    && !self.truth.external.under_source(&key)
                {
                    return Err(format!(
                        "GC converged but '{key}' is still in the store and nothing needs it"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every protected file exists with its recorded size and crc32c (read fault-free).
    pub async fn check_files(&mut self, store: &InMemory) -> Result<(), String> {
        for (key, p) in self.truth.protected_files() {
            let why = &p.why;
            let path = Path::from(key.as_str());
            let meta = match store.head(&path).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(format!("object '{key}' of {why} is missing from the store"));
                }
                Err(e) => return Err(format!("cannot head '{key}': {e}")),
            };
            if let Some(size) = p.size
                && meta.size != size
            {
                return Err(format!(
                    "object '{key}' of {why} is {} bytes; the log says {size}",
                    meta.size
                ));
            }
            if self.verified.get(&key) == Some(&meta.e_tag) {
                continue;
            }
            let bytes = store
                .get_opts(&path, GetOptions::default())
                .await
                .map_err(|e| format!("cannot read '{key}': {e}"))?
                .bytes()
                .await
                .map_err(|e| format!("cannot read '{key}': {e}"))?;
            let crc = crc32c::crc32c(&bytes);
            if crc != p.crc32c {
                return Err(format!(
                    "object '{key}' of {why} has crc32c {crc:#010x}; the log says {:#010x}",
                    p.crc32c
                ));
            }
            self.verified.insert(key, meta.e_tag);
        }
        Ok(())
    }
}

/// Fold the store's final listing (sorted, with sizes and checksums) into the trace.
pub async fn hash_store(store: &InMemory, trace: &mut TraceHash) -> Result<usize, String> {
    use futures::TryStreamExt;
    let mut listed: Vec<object_store::ObjectMeta> = store
        .list(None)
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    listed.sort_by(|a, b| a.location.cmp(&b.location));
    for m in &listed {
        let bytes = store
            .get(&m.location)
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        trace.str(m.location.as_ref());
        trace.u64(m.size);
        trace.u64(crc32c::crc32c(&bytes) as u64);
    }
    Ok(listed.len())
}
