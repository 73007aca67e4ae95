//! The reference index: which object is needed by what, folded from the whole log.
//!
//! Pure (no I/O): `apply` folds one envelope, the `plan_*` and `classify` functions answer
//! "may this object go?". The GC supervisor feeds it from the log and acts on its answers.
//!
//! What protects an object:
//! - a live segment (data or index file) of any collection that lists it;
//! - a snapshot that pinned it: from its `SnapshotPinned` event (so a Pending snapshot whose
//!   create crashed protects its files) until the pin is released (`SnapshotUnpinned`, or the
//!   snapshot Failed / DeleteRequested);
//! - a restore in flight: everything under the data prefix of a collection in `Restoring`;
//! - a snapshot's own prefix while it is Pending or Committed (its manifests);
//! - the source prefix of every external collection whose source is a prefix of the node's
//!   own store, forever (the fragments belong to the user, even after the collection is
//!   dropped or re-pointed). Source fragments never appear as segment files in the log (an
//!   external segment's one file is its fragment list, which is ours), so they are never
//!   dropped files either.
//!
//! A file no live segment lists any more (dropped, compacted away, index rebuilt) is
//! *dropped*: it may go once it has been dropped longer than the retention and no snapshot
//! holds it. Memory: each distinct key is stored once; segments and snapshots hold 4-byte
//! file numbers.

use crate::aggregate::Aggregate;
use crate::snapshot::decider::{Snapshot, SnapshotState};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::{CollectionEvent, CollectionStatus, SegmentRecord};
use snapvault_events::domain::gc::{GcCategory, GcEvent};
use snapvault_events::domain::snapshot::{SnapshotEvent, SnapshotStatus};
use snapvault_events::domain::{CollectionId, IndexId, SegmentId, SnapshotId};
use snapvault_events::{Envelope, LogError};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

type FileNo = u32;

/// One distinct object key. 24 bytes: the key text lives in one shared arena.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FileEntry {
    size: u64,
    /// Where the key starts in the arena; it ends where the next file's key starts.
    key_start: u32,
    /// Snapshots holding this key.
    snapshot_refs: u32,
    /// When the last live reference went away, in seconds (rounded up, so a file is kept a
    /// little longer, never shorter, than the retention); 0 while live.
    dropped_at_s: u32,
    /// Live segments listing this key.
    live_refs: u16,
    /// A `Reclaiming` event named it; it is gone (or about to be).
    reclaimed: bool,
}

impl FileEntry {
    fn dropped_at_ms(&self) -> u64 {
        u64::from(self.dropped_at_s) * 1000
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SegmentFiles {
    data: Box<[FileNo]>,
    indexes: Vec<(IndexId, Vec<FileNo>)>,
}

impl SegmentFiles {
    fn all(&self) -> impl Iterator<Item = FileNo> + '_ {
        self.data
            .iter()
            .copied()
            .chain(self.indexes.iter().flat_map(|(_, f)| f.iter().copied()))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CollectionRefs {
    status: Option<CollectionStatus>,
    /// Was Restoring when it was dropped: a failed or cancelled restore.
    dropped_while_restoring: bool,
    segments: BTreeMap<SegmentId, SegmentFiles>,
    /// partition id per live segment, for partition drops.
    partition_of: BTreeMap<SegmentId, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SnapshotRefs {
    state: SnapshotState,
    /// Files pinned, held while `holding`.
    files: Vec<FileNo>,
    holding: bool,
}

/// Where the projection stands against the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub applied: u64,
}

#[derive(Default)]
pub struct RefIndex {
    applied: u64,
    /// Every distinct key, back to back; `FileEntry::key_start` points in.
    arena: String,
    /// Key → file number, hashed by the key text in the arena (no second copy of the key).
    table: HashTable<FileNo>,
    files: Vec<FileEntry>,
    collections: BTreeMap<CollectionId, CollectionRefs>,
    snapshots: BTreeMap<SnapshotId, SnapshotRefs>,
    last_cycle: u64,
    /// Keys named by `Reclaiming` of cycles that have not finished: a crash may have left
    /// some of them undeleted, so the next cycle deletes them again.
    unfinished: BTreeMap<u64, Vec<String>>,
    /// Own-store prefixes that ever were an external collection's source (with `/`).
    external_prefixes: std::collections::BTreeSet<String>,
}

/// One object GC decided to reclaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim {
    pub category: GcCategory,
    pub key: String,
    pub bytes: u64,
    pub reason: String,
}

impl RefIndex {
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Number of (snapshot, file) and (segment, file) references held.
    pub fn reference_count(&self) -> u64 {
        let seg: u64 = self
            .collections
            .values()
            .flat_map(|c| c.segments.values())
            .map(|s| s.all().count() as u64)
            .sum();
        let snap: u64 = self.snapshots.values().map(|s| s.files.len() as u64).sum();
        seg + snap
    }

    /// The last GC cycle number seen in the log.
    pub fn last_cycle(&self) -> u64 {
        self.last_cycle
    }

    fn hash(key: &str) -> u64 {
        // SipHash with fixed keys: deterministic across runs (iteration order never leaks
        // anyway; plans walk `files` in number order).
        BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
    }

    fn key(&self, n: FileNo) -> &str {
        let start = self.files[n as usize].key_start as usize;
        let end = self
            .files
            .get(n as usize + 1)
            .map_or(self.arena.len(), |f| f.key_start as usize);
        &self.arena[start..end]
    }

    fn lookup(&self, key: &str) -> Option<FileNo> {
        self.table
            .find(Self::hash(key), |n| self.key(*n) == key)
            .copied()
    }

    fn intern(&mut self, key: &str, size: u64) -> Result<FileNo, LogError> {
        if let Some(n) = self.lookup(key) {
            return Ok(n);
        }
        let key_start = u32::try_from(self.arena.len())
            .ok()
            .filter(|s| (*s as usize) + key.len() <= u32::MAX as usize)
            .ok_or_else(|| LogError::Corrupt {
                position: self.applied + 1,
                reason: "the GC ref index holds 4 GiB of keys, its limit".into(),
            })?;
        let n = self.files.len() as FileNo;
        self.arena.push_str(key);
        self.files.push(FileEntry {
            size,
            key_start,
            ..FileEntry::default()
        });
        let hash = Self::hash(key);
        let files = &self.files;
        let arena = &self.arena;
        self.table.insert_unique(hash, n, |m| {
            let start = files[*m as usize].key_start as usize;
            let end = files
                .get(*m as usize + 1)
                .map_or(arena.len(), |f| f.key_start as usize);
            Self::hash(&arena[start..end])
        });
        Ok(n)
    }

    fn add_live(
        &mut self,
        files: &[snapvault_events::domain::FileRef],
    ) -> Result<Vec<FileNo>, LogError> {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let n = self.intern(&f.key, f.size)?;
            let e = &mut self.files[n as usize];
            e.live_refs = e.live_refs.saturating_add(1);
            e.dropped_at_s = 0;
            e.reclaimed = false;
            out.push(n);
        }
        Ok(out)
    }

    fn drop_live(&mut self, files: impl IntoIterator<Item = FileNo>, at_ms: u64) {
        for n in files {
            let e = &mut self.files[n as usize];
            e.live_refs = e.live_refs.saturating_sub(1);
            if e.live_refs == 0 {
                e.dropped_at_s = u32::try_from(at_ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX);
            }
        }
    }

    fn add_segment(
        &mut self,
        collection: CollectionId,
        seg: &SegmentRecord,
    ) -> Result<(), LogError> {
        let data = self.add_live(&seg.files)?;
        let mut indexes = Vec::with_capacity(seg.indexes.len());
        for i in &seg.indexes {
            indexes.push((i.index_id, self.add_live(&i.files)?));
        }
        let c = self.collections.entry(collection).or_default();
        c.segments.insert(
            seg.segment_id,
            SegmentFiles {
                data: data.into_boxed_slice(),
                indexes,
            },
        );
        c.partition_of.insert(seg.segment_id, seg.partition_id);
        Ok(())
    }

    fn drop_segment(&mut self, collection: CollectionId, segment: SegmentId, at_ms: u64) {
        let Some(c) = self.collections.get_mut(&collection) else {
            return;
        };
        c.partition_of.remove(&segment);
        if let Some(files) = c.segments.remove(&segment) {
            let all: Vec<FileNo> = files.all().collect();
            self.drop_live(all, at_ms);
        }
    }

    fn release_snapshot(&mut self, id: SnapshotId) {
        if let Some(s) = self.snapshots.get_mut(&id)
            && s.holding
        {
            s.holding = false;
            let files = std::mem::take(&mut s.files);
            for n in files {
                let e = &mut self.files[n as usize];
                e.snapshot_refs = e.snapshot_refs.saturating_sub(1);
            }
        }
    }

    /// Fold one event of the log. Events must come in global order, each once.
    pub fn apply(&mut self, env: &Envelope) -> Result<(), LogError> {
        if env.position <= self.applied {
            return Ok(());
        }
        if let Some(id) = stream_id(&env.stream, "collection-") {
            self.apply_collection(id, env)?;
        } else if let Some(id) = stream_id(&env.stream, "snapshot-") {
            let event: SnapshotEvent = decode(env)?;
            let entry = self.snapshots.entry(id).or_default();
            Snapshot::evolve(&mut entry.state, &event);
            if matches!(
                event,
                SnapshotEvent::Failed { .. } | SnapshotEvent::DeleteRequested { .. }
            ) {
                self.release_snapshot(id);
            }
        } else if env.stream == snapvault_events::domain::gc::GC_STREAM {
            match decode::<GcEvent>(env)? {
                GcEvent::Reclaiming { keys, cycle, .. } => {
                    self.last_cycle = self.last_cycle.max(cycle);
                    for k in &keys {
                        if let Some(n) = self.lookup(k) {
                            self.files[n as usize].reclaimed = true;
                        }
                    }
                    self.unfinished.entry(cycle).or_default().extend(keys);
                }
                GcEvent::CycleStarted { cycle, .. } => self.last_cycle = self.last_cycle.max(cycle),
                GcEvent::CycleFinished { cycle, .. } => {
                    self.unfinished.remove(&cycle);
                }
            }
        }
        self.applied = env.position;
        Ok(())
    }

    fn apply_collection(&mut self, id: CollectionId, env: &Envelope) -> Result<(), LogError> {
        use CollectionEvent as E;
        let at = env.time_ms;
        match decode::<CollectionEvent>(env)? {
            E::Created {
                status, external, ..
            } => {
                self.collections.entry(id).or_default().status = Some(status);
                if let Some(config) = external {
                    self.protect_source(&config.source);
                }
            }
            E::ExternalAltered { config, .. } => self.protect_source(&config.source),
            E::ExternalRefreshed { dropped, added, .. } => {
                // Like a compaction: add first, then drop. The files are fragment lists
                // (ours); the source fragments are not in the log at all.
                for seg in &added {
                    self.add_segment(id, seg)?;
                }
                for s in dropped {
                    self.drop_segment(id, s, at);
                }
            }
            E::ExternalTaskStarted { .. } | E::ExternalTaskEnded { .. } => {}
            E::Dropped => {
                let c = self.collections.entry(id).or_default();
                c.dropped_while_restoring = c.status == Some(CollectionStatus::Restoring);
                c.status = Some(CollectionStatus::Dropped);
                let segments: Vec<SegmentId> = c.segments.keys().copied().collect();
                for s in segments {
                    self.drop_segment(id, s, at);
                }
            }
            E::PartitionDropped { partition_id } => {
                let gone: Vec<SegmentId> = self
                    .collections
                    .get(&id)
                    .map(|c| {
                        c.partition_of
                            .iter()
                            .filter(|(_, p)| **p == partition_id)
                            .map(|(s, _)| *s)
                            .collect()
                    })
                    .unwrap_or_default();
                for s in gone {
                    self.drop_segment(id, s, at);
                }
            }
            E::IndexDropped { index_id } => {
                let mut dropped = Vec::new();
                if let Some(c) = self.collections.get_mut(&id) {
                    for seg in c.segments.values_mut() {
                        seg.indexes.retain(|(i, files)| {
                            if *i == index_id {
                                dropped.extend(files.iter().copied());
                                false
                            } else {
                                true
                            }
                        });
                    }
                }
                self.drop_live(dropped, at);
            }
            E::SegmentFlushed { segment } => self.add_segment(id, &segment)?,
            E::SegmentsCompacted { compacted, into } => {
                // Add first: a key that moves into the new segment is never seen as dropped.
                self.add_segment(id, &into)?;
                for s in compacted {
                    self.drop_segment(id, s, at);
                }
            }
            E::SegmentDropped { segment_id } => self.drop_segment(id, segment_id, at),
            E::IndexBuilt {
                segment_id,
                index_files,
            } => {
                let new = self.add_live(&index_files.files)?;
                let mut old = Vec::new();
                if let Some(seg) = self
                    .collections
                    .get_mut(&id)
                    .and_then(|c| c.segments.get_mut(&segment_id))
                {
                    seg.indexes.retain(|(i, files)| {
                        if *i == index_files.index_id {
                            old.extend(files.iter().copied());
                            false
                        } else {
                            true
                        }
                    });
                    seg.indexes.push((index_files.index_id, new));
                } else {
                    // A build on an unknown segment protects nothing; undo the references.
                    old.extend(new);
                }
                self.drop_live(old, at);
            }
            E::SnapshotPinned { snapshot_id, .. } => {
                let files: Vec<FileNo> = self
                    .collections
                    .get(&id)
                    .map(|c| c.segments.values().flat_map(|s| s.all()).collect())
                    .unwrap_or_default();
                for n in &files {
                    self.files[*n as usize].snapshot_refs += 1;
                }
                let s = self.snapshots.entry(snapshot_id).or_default();
                s.files = files;
                s.holding = true;
            }
            E::SnapshotUnpinned { snapshot_id } => self.release_snapshot(snapshot_id),
            // The restore finished: the prefix is no longer protected wholesale; its files are
            // now protected as the live segments staged into it.
            E::RestoreCompleted { .. } => {
                self.collections.entry(id).or_default().status = Some(CollectionStatus::Ready);
            }
            // Names and declarations hold no objects.
            E::PartitionCreated { .. } | E::IndexCreated { .. } => {}
        }
        Ok(())
    }

    /// Protect an own-store source as the log recorded it. Not re-parsed: a source under
    /// `data/` that an older build accepted (today's refuse it) must stay protected too.
    fn protect_source(&mut self, source: &str) {
        let prefix = source.trim_end_matches('/');
        if !prefix.is_empty() && !source.contains("://") {
            self.external_prefixes.insert(format!("{prefix}/"));
        }
    }

    /// Give back the slack of the growing tables (called when the index has caught up, so
    /// the memory held is what the references need, not what the replay's growth left).
    pub fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        self.files.shrink_to_fit();
        let files = &self.files;
        let arena = &self.arena;
        self.table.shrink_to_fit(|m| {
            let start = files[*m as usize].key_start as usize;
            let end = files
                .get(*m as usize + 1)
                .map_or(arena.len(), |f| f.key_start as usize);
            Self::hash(&arena[start..end])
        });
    }

    /// Is `key` protected right now (live, held by a snapshot, or inside a protected prefix)?
    pub fn is_protected(&self, key: &str) -> bool {
        if let Some(n) = self.lookup(key) {
            let e = &self.files[n as usize];
            if e.live_refs > 0 || e.snapshot_refs > 0 {
                return true;
            }
        }
        self.protecting_prefix(key).is_some()
    }

    /// The prefix that protects `key`, if any: the data prefix of a collection being restored,
    /// or the manifests of a snapshot that is Pending or Committed.
    fn protecting_prefix(&self, key: &str) -> Option<String> {
        if let Some(p) = self
            .external_prefixes
            .iter()
            .find(|p| key.starts_with(p.as_str()))
        {
            return Some(p.clone());
        }
        let mut parts = key.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("data"), Some(cid), _) => {
                let cid: CollectionId = cid.parse().ok()?;
                let c = self.collections.get(&cid)?;
                (c.status == Some(CollectionStatus::Restoring))
                    .then(|| snapvault_events::domain::data_prefix(cid))
            }
            (Some("snapshots"), Some(_), Some(sid)) => {
                let sid: SnapshotId = sid.parse().ok()?;
                let s = self.snapshots.get(&sid)?;
                let pinned_only = s.holding && s.state.status.is_none();
                let live = matches!(
                    s.state.status,
                    Some(SnapshotStatus::Pending) | Some(SnapshotStatus::Committed)
                );
                (live || pinned_only).then(|| format!("snapshots/{sid}"))
            }
            _ => None,
        }
    }

    /// Is the key known to the log at all (live, dropped but not yet reclaimed, or held)?
    /// Objects that are not known are orphan candidates.
    pub fn is_known(&self, key: &str) -> bool {
        match self.lookup(key) {
            Some(n) => {
                let e = &self.files[n as usize];
                e.live_refs > 0 || e.snapshot_refs > 0 || !e.reclaimed
            }
            None => false,
        }
    }

    /// Dropped files whose retention has passed and that nothing holds.
    pub fn plan_dropped(&self, now_ms: u64, retention_ms: u64, limit: usize) -> Vec<Reclaim> {
        let mut out = Vec::new();
        for (n, e) in self.files.iter().enumerate() {
            if out.len() >= limit {
                break;
            }
            if e.live_refs == 0
                && e.snapshot_refs == 0
                && !e.reclaimed
                && e.dropped_at_s > 0
                && now_ms.saturating_sub(e.dropped_at_ms()) >= retention_ms
            {
                let key = self.key(n as FileNo);
                if self.protecting_prefix(key).is_some() {
                    continue;
                }
                out.push(Reclaim {
                    category: GcCategory::DroppedFiles,
                    key: key.to_string(),
                    bytes: e.size,
                    reason: format!(
                        "dropped {} s ago, retention {} s, held by no snapshot",
                        now_ms.saturating_sub(e.dropped_at_ms()) / 1000,
                        retention_ms / 1000
                    ),
                });
            }
        }
        out
    }

    /// Keys named by `Reclaiming` events of cycles that never finished (the process died
    /// mid-sweep): delete them again. Never one that became protected since.
    pub fn reclaimed_keys(&self) -> impl Iterator<Item = &str> {
        self.unfinished
            .values()
            .flatten()
            .map(String::as_str)
            .filter(|k| !self.is_protected(k))
    }

    /// Cycles with a `Reclaiming` record but no `CycleFinished`.
    pub fn unfinished_cycles(&self) -> Vec<u64> {
        self.unfinished.keys().copied().collect()
    }

    /// Snapshots whose manifests must go: Deleting ones, and Failed ones (partial manifests).
    pub fn snapshots_to_clean(&self) -> Vec<(SnapshotId, SnapshotStatus, String, bool)> {
        self.snapshots
            .iter()
            .filter_map(|(id, s)| match s.state.status {
                Some(st @ (SnapshotStatus::Deleting | SnapshotStatus::Failed)) => {
                    Some((*id, st, s.state.prefix.clone(), s.state.imported))
                }
                _ => None,
            })
            .collect()
    }

    /// Collections dropped while a restore was filling them: their data prefixes.
    pub fn failed_restore_prefixes(&self) -> Vec<String> {
        self.collections
            .iter()
            .filter(|(_, c)| c.dropped_while_restoring)
            .map(|(id, _)| snapvault_events::domain::data_prefix(*id))
            .collect()
    }

    /// Imported snapshots that are live: their files are protected through their manifests,
    /// which the sweeper reads (the log does not list them).
    pub fn live_imported_snapshots(&self) -> Vec<SnapshotState> {
        self.snapshots
            .values()
            .filter(|s| s.state.imported && s.state.status == Some(SnapshotStatus::Committed))
            .map(|s| s.state.clone())
            .collect()
    }
}

/// Version of the checkpoint encoding; a checkpoint of another version is ignored (replay).
const CHECKPOINT_FORMAT: u32 = 2;

/// Everything of the index but the hash table (rebuilt on load from the arena).
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    format: u32,
    applied: u64,
    /// Stream and version of the event at `applied`: a checkpoint of another log is refused.
    applied_stream: String,
    applied_version: u64,
    arena: String,
    files: Vec<FileEntry>,
    collections: BTreeMap<CollectionId, CollectionRefs>,
    snapshots: BTreeMap<SnapshotId, SnapshotRefs>,
    last_cycle: u64,
    unfinished: BTreeMap<u64, Vec<String>>,
    external_prefixes: std::collections::BTreeSet<String>,
}

impl RefIndex {
    /// Encode the index as of `applied`: `crc32c || rmp body`. `at` names the event at
    /// `applied` (stream, version) so a load can check the checkpoint belongs to this log.
    pub fn to_checkpoint(&self, at: (&str, u64)) -> Result<Vec<u8>, LogError> {
        let c = Checkpoint {
            format: CHECKPOINT_FORMAT,
            applied: self.applied,
            applied_stream: at.0.to_string(),
            applied_version: at.1,
            arena: self.arena.clone(),
            files: self.files.clone(),
            collections: self.collections.clone(),
            snapshots: self.snapshots.clone(),
            last_cycle: self.last_cycle,
            unfinished: self.unfinished.clone(),
            external_prefixes: self.external_prefixes.clone(),
        };
        let mut out = vec![0u8; 4];
        rmp_serde::encode::write(&mut out, &c)
            .map_err(|e| LogError::Invalid(format!("cannot encode the GC checkpoint: {e}")))?;
        let crc = crc32c::crc32c(&out[4..]);
        out[..4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Decode a checkpoint. Returns the index and the (stream, version) of its last event.
    pub fn from_checkpoint(bytes: &[u8]) -> Result<(RefIndex, String, u64), String> {
        if bytes.len() < 4 {
            return Err("checkpoint is truncated".into());
        }
        let stored = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if crc32c::crc32c(&bytes[4..]) != stored {
            return Err("checkpoint checksum mismatch".into());
        }
        let c: Checkpoint = rmp_serde::from_slice(&bytes[4..])
            .map_err(|e| format!("undecodable checkpoint: {e}"))?;
        if c.format != CHECKPOINT_FORMAT {
            return Err(format!(
                "checkpoint format {} is not {CHECKPOINT_FORMAT}",
                c.format
            ));
        }
        // The checksum guards against damage; these guard against a bug writing nonsense, so
        // that a bad checkpoint is refused (and the log replayed) instead of panicking later.
        let mut prev = 0usize;
        for f in &c.files {
            let start = f.key_start as usize;
            if start < prev || start > c.arena.len() || !c.arena.is_char_boundary(start) {
                return Err("checkpoint key offsets are out of order".into());
            }
            prev = start;
        }
        let n_files = c.files.len();
        let in_range = |n: &FileNo| (*n as usize) < n_files;
        let refs_ok = c.collections.values().all(|col| {
            col.segments.values().all(|seg| {
                seg.data.iter().all(in_range)
                    && seg.indexes.iter().all(|(_, f)| f.iter().all(in_range))
            })
        }) && c.snapshots.values().all(|s| s.files.iter().all(in_range));
        if !refs_ok {
            return Err("checkpoint refers to files it does not hold".into());
        }
        let mut ix = RefIndex {
            applied: c.applied,
            arena: c.arena,
            table: HashTable::new(),
            files: c.files,
            collections: c.collections,
            snapshots: c.snapshots,
            last_cycle: c.last_cycle,
            unfinished: c.unfinished,
            external_prefixes: c.external_prefixes,
        };
        let mut table = HashTable::with_capacity(ix.files.len());
        for n in 0..ix.files.len() as FileNo {
            let key = ix.key(n);
            if key.is_empty() && !ix.files.is_empty() {
                return Err(format!("checkpoint file {n} has an empty key"));
            }
            let hash = Self::hash(key);
            let files = &ix.files;
            let arena = &ix.arena;
            table.insert_unique(hash, n, |m| {
                let start = files[*m as usize].key_start as usize;
                let end = files
                    .get(*m as usize + 1)
                    .map_or(arena.len(), |f| f.key_start as usize);
                Self::hash(&arena[start..end])
            });
        }
        ix.table = table;
        Ok((ix, c.applied_stream, c.applied_version))
    }
}

fn stream_id(stream: &str, prefix: &str) -> Option<u64> {
    stream.strip_prefix(prefix)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapvault_events::codec::{DomainEvent, encode};
    use snapvault_events::domain::FileRef;
    use snapvault_events::domain::collection::CollectionStatus;

    /// Feeds events with increasing positions and a settable time.
    struct Feed {
        index: RefIndex,
        position: u64,
        versions: BTreeMap<String, u64>,
    }

    impl Feed {
        fn new() -> Feed {
            Feed {
                index: RefIndex::default(),
                position: 0,
                versions: BTreeMap::new(),
            }
        }

        fn push<E: DomainEvent>(&mut self, stream: &str, at_ms: u64, event: E) {
            let new = encode(&event).unwrap();
            self.position += 1;
            let v = self.versions.entry(stream.to_string()).or_default();
            *v += 1;
            let env = Envelope {
                stream: stream.to_string(),
                version: *v,
                position: self.position,
                event_type: new.event_type,
                schema_version: new.schema_version,
                time_ms: at_ms,
                correlation_id: 0,
                causation_id: 0,
                payload: new.payload,
                crc32c: 0,
            };
            self.index.apply(&env).unwrap();
        }

        fn collection(&mut self, at: u64, e: CollectionEvent) {
            self.push("collection-1", at, e);
        }

        fn planned(&self, now_ms: u64, retention_ms: u64) -> Vec<String> {
            self.index
                .plan_dropped(now_ms, retention_ms, 1000)
                .into_iter()
                .map(|r| r.key)
                .collect()
        }
    }

    fn created(status: CollectionStatus) -> CollectionEvent {
        CollectionEvent::Created {
            collection_id: 1,
            name: "c".into(),
            schema_json: "{}".into(),
            shard_count: 1,
            properties: Default::default(),
            partitions: vec![],
            status,
            restoring_job: None,
            created_ms: 0,
            external: None,
        }
    }

    fn segment(id: u64, keys: &[&str]) -> SegmentRecord {
        SegmentRecord {
            segment_id: id,
            partition_id: 1,
            shard: 0,
            rows: 1,
            level: 0,
            files: keys
                .iter()
                .map(|k| FileRef {
                    key: k.to_string(),
                    size: 10,
                    crc32c: 0,
                })
                .collect(),
            indexes: vec![],
        }
    }

    #[test]
    fn dropped_files_wait_for_the_retention() {
        let mut f = Feed::new();
        f.collection(0, created(CollectionStatus::Ready));
        f.collection(
            1_000,
            CollectionEvent::SegmentFlushed {
                segment: segment(5, &["data/1/a", "data/1/b"]),
            },
        );
        assert!(
            f.planned(10_000_000, 0).is_empty(),
            "live files are never planned"
        );
        f.collection(5_000, CollectionEvent::SegmentDropped { segment_id: 5 });
        assert!(f.planned(5_000 + 59_000, 60_000).is_empty());
        assert_eq!(
            f.planned(5_000 + 60_000, 60_000),
            vec!["data/1/a", "data/1/b"]
        );
        assert!(
            f.index.is_known("data/1/a"),
            "dropped but not reclaimed is known"
        );
        assert!(!f.index.is_protected("data/1/a"));
    }

    #[test]
    fn a_pin_holds_files_until_released_even_after_compaction() {
        let mut f = Feed::new();
        f.collection(0, created(CollectionStatus::Ready));
        f.collection(
            0,
            CollectionEvent::SegmentFlushed {
                segment: segment(5, &["data/1/a"]),
            },
        );
        f.collection(
            0,
            CollectionEvent::SnapshotPinned {
                snapshot_id: 9,
                name: "s".into(),
                description: String::new(),
                labels: Default::default(),
                pinned_ms: 0,
            },
        );
        f.collection(
            0,
            CollectionEvent::SegmentsCompacted {
                compacted: vec![5],
                into: segment(6, &["data/1/merged"]),
            },
        );
        assert!(f.planned(u64::MAX / 2, 0).is_empty(), "pinned file planned");
        assert!(f.index.is_protected("data/1/a"));
        assert!(
            f.index.is_protected("snapshots/1/9/manifest-0.avro"),
            "a pending pin protects its prefix"
        );
        f.collection(0, CollectionEvent::SnapshotUnpinned { snapshot_id: 9 });
        assert_eq!(f.planned(u64::MAX / 2, 0), vec!["data/1/a"]);
    }

    #[test]
    fn a_key_carried_into_the_compacted_segment_stays_live() {
        let mut f = Feed::new();
        f.collection(0, created(CollectionStatus::Ready));
        f.collection(
            0,
            CollectionEvent::SegmentFlushed {
                segment: segment(5, &["data/1/shared", "data/1/old"]),
            },
        );
        f.collection(
            0,
            CollectionEvent::SegmentsCompacted {
                compacted: vec![5],
                into: segment(6, &["data/1/shared"]),
            },
        );
        assert_eq!(f.planned(u64::MAX / 2, 0), vec!["data/1/old"]);
    }

    #[test]
    fn a_restoring_collection_protects_its_whole_prefix_and_a_failed_one_is_listed() {
        let mut f = Feed::new();
        f.collection(0, created(CollectionStatus::Restoring));
        assert!(f.index.is_protected("data/1/anything/copied"));
        assert!(!f.index.is_protected("data/2/x"));
        f.collection(0, CollectionEvent::Dropped);
        assert!(!f.index.is_protected("data/1/anything/copied"));
        assert_eq!(
            f.index.failed_restore_prefixes(),
            vec!["data/1/".to_string()]
        );
    }

    #[test]
    fn keys_of_an_unfinished_cycle_are_deleted_again_until_it_finishes() {
        let mut f = Feed::new();
        f.collection(0, created(CollectionStatus::Ready));
        f.collection(
            0,
            CollectionEvent::SegmentFlushed {
                segment: segment(5, &["data/1/a"]),
            },
        );
        f.collection(0, CollectionEvent::SegmentDropped { segment_id: 5 });
        f.push("gc", 0, GcEvent::CycleStarted { cycle: 1, head: 3 });
        f.push(
            "gc",
            0,
            GcEvent::Reclaiming {
                cycle: 1,
                category: GcCategory::DroppedFiles,
                keys: vec!["data/1/a".into()],
                bytes: 10,
                reason: "test".into(),
            },
        );
        assert!(
            f.planned(u64::MAX / 2, 0).is_empty(),
            "reclaimed keys are not planned twice"
        );
        assert!(!f.index.is_known("data/1/a"));
        assert_eq!(
            f.index.reclaimed_keys().collect::<Vec<_>>(),
            vec!["data/1/a"]
        );
        assert_eq!(f.index.last_cycle(), 1);
        f.push(
            "gc",
            0,
            GcEvent::CycleFinished {
                cycle: 1,
                reclaimed: BTreeMap::new(),
            },
        );
        assert_eq!(f.index.reclaimed_keys().count(), 0);
    }

    fn external_created(source: &str) -> CollectionEvent {
        let mut e = created(CollectionStatus::Ready);
        if let CollectionEvent::Created { external, .. } = &mut e {
            *external = Some(snapvault_events::domain::external::ExternalConfig {
                source: source.into(),
                spec: snapvault_events::domain::external::ExternalSpec::parse_json(
                    r#"{"format":"parquet"}"#,
                )
                .unwrap(),
            });
        }
        e
    }

    fn refreshed(task_id: u64, dropped: Vec<u64>, added: Vec<SegmentRecord>) -> CollectionEvent {
        CollectionEvent::ExternalRefreshed {
            task_id,
            generation: 1,
            kept: 0,
            dropped,
            added,
            fragments: 0,
            refreshed_ms: 0,
        }
    }

    #[test]
    fn an_own_store_source_is_never_reclaimed_not_as_orphans_not_after_drop_or_repoint() {
        let mut f = Feed::new();
        f.collection(0, external_created("data/lake/t/"));
        let frag = "data/lake/t/part-0.parquet";
        assert!(f.index.is_protected(frag), "the source prefix is protected");
        assert!(!f.index.is_known(frag), "fragments are not segment files");
        // An external segment's one file is its fragment list (ours); replacing the segment
        // makes the old list a dropped file, never a fragment.
        f.collection(
            0,
            refreshed(
                1,
                vec![],
                vec![segment(5, &["data/1/external/5.fragments.json"])],
            ),
        );
        f.collection(
            10,
            refreshed(
                2,
                vec![5],
                vec![segment(6, &["data/1/external/6.fragments.json"])],
            ),
        );
        assert_eq!(
            f.planned(u64::MAX / 2, 0),
            vec!["data/1/external/5.fragments.json"]
        );
        // Re-pointing and dropping the collection: the old source stays the user's.
        f.collection(
            20,
            CollectionEvent::ExternalAltered {
                config: snapvault_events::domain::external::ExternalConfig {
                    source: "data/lake/other/".into(),
                    spec: snapvault_events::domain::external::ExternalSpec::parse_json(
                        r#"{"format":"parquet"}"#,
                    )
                    .unwrap(),
                },
                generation: 2,
                superseded: None,
                task_id: 3,
                altered_ms: 20,
            },
        );
        f.collection(30, CollectionEvent::Dropped);
        for key in [frag, "data/lake/other/x.parquet"] {
            assert!(f.index.is_protected(key), "{key}");
        }
        assert!(!f.index.is_protected("data/lake/elsewhere.parquet"));
        let planned = f.planned(u64::MAX / 2, 0);
        assert!(
            planned.iter().all(|k| k.ends_with(".fragments.json")),
            "{planned:?}"
        );
        // And it survives a checkpoint.
        let bytes = f.index.to_checkpoint(("collection-1", 5)).unwrap();
        let (back, _, _) = RefIndex::from_checkpoint(&bytes).unwrap();
        assert!(back.is_protected(frag));
    }

    #[test]
    fn a_pinned_external_cut_holds_its_fragment_lists_and_a_local_source_protects_nothing_here() {
        let mut f = Feed::new();
        f.collection(0, external_created("file:///srv/lake/"));
        assert!(!f.index.is_protected("srv/lake/x.parquet"));
        f.collection(
            0,
            refreshed(
                1,
                vec![],
                vec![segment(5, &["data/1/external/5.fragments.json"])],
            ),
        );
        f.collection(
            0,
            CollectionEvent::SnapshotPinned {
                snapshot_id: 9,
                name: "s".into(),
                description: String::new(),
                labels: Default::default(),
                pinned_ms: 0,
            },
        );
        f.collection(0, refreshed(2, vec![5], vec![]));
        assert!(
            f.planned(u64::MAX / 2, 0).is_empty(),
            "the pin holds the list"
        );
        f.collection(0, CollectionEvent::SnapshotUnpinned { snapshot_id: 9 });
        assert_eq!(
            f.planned(u64::MAX / 2, 0),
            vec!["data/1/external/5.fragments.json"]
        );
    }

    #[test]
    fn replaying_twice_is_idempotent_by_position() {
        let mut f = Feed::new();
        f.collection(0, created(CollectionStatus::Ready));
        f.collection(
            0,
            CollectionEvent::SegmentFlushed {
                segment: segment(5, &["data/1/a"]),
            },
        );
        let applied = f.index.applied();
        // Re-applying an old position changes nothing.
        let env = Envelope {
            stream: "collection-1".into(),
            version: 2,
            position: applied,
            event_type: "SegmentDropped".into(),
            schema_version: 1,
            time_ms: 0,
            correlation_id: 0,
            causation_id: 0,
            payload: encode(&CollectionEvent::SegmentDropped { segment_id: 5 })
                .unwrap()
                .payload,
            crc32c: 0,
        };
        f.index.apply(&env).unwrap();
        assert!(f.index.is_protected("data/1/a"));
    }
}
