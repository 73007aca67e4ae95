//! Collection commands and events.
//!
//! One collection actor serializes every change of a collection, so any version of its stream
//! is an exact cut of its segments: that is what a snapshot pins.

use super::external::{ExternalConfig, TaskEnd, TaskId};
use super::{BuildId, CollectionId, FileRef, IndexId, JobId, PartitionId, SegmentId, SnapshotId};
use crate::codec::DomainEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the partition every collection starts with.
pub const DEFAULT_PARTITION: &str = "_default";
/// Most shards a collection may have.
pub const MAX_SHARDS: u32 = 1024;
/// Most partitions a collection may have.
pub const MAX_PARTITIONS: usize = 4096;
/// Most files one segment (or one index build) may list; keeps an event under 64 KiB.
pub const MAX_FILES_PER_SEGMENT: usize = 256;
/// Most segments one compaction may merge; keeps the event under 64 KiB.
pub const MAX_SEGMENTS_PER_COMPACTION: usize = 1024;
/// Largest schema document kept verbatim.
pub const MAX_SCHEMA_BYTES: usize = 32 * 1024;
/// Most properties on a collection.
pub const MAX_PROPERTIES: usize = 64;

/// Lifecycle of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectionStatus {
    /// Serving: the host may flush and compact.
    Ready,
    /// Being filled by a restore job; the host must not write to it yet.
    Restoring,
    /// Dropped: kept in the log for history and for snapshots that outlive it.
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDef {
    pub partition_id: PartitionId,
    pub name: String,
}

/// The files of one index built on one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFiles {
    pub index_id: IndexId,
    pub build_id: BuildId,
    pub files: Vec<FileRef>,
}

/// Everything that describes one immutable segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub segment_id: SegmentId,
    pub partition_id: PartitionId,
    pub shard: u32,
    pub rows: u64,
    /// Compaction level: 0 for flushed, n + 1 for the output of merging level-n segments.
    pub level: u32,
    pub files: Vec<FileRef>,
    pub indexes: Vec<IndexFiles>,
}

impl SegmentRecord {
    /// Every file of the segment: its data files, then the files of each index build.
    pub fn all_files(&self) -> impl Iterator<Item = &FileRef> {
        self.files
            .iter()
            .chain(self.indexes.iter().flat_map(|i| i.files.iter()))
    }
}

/// Create a collection. The id is allocated by the shell before deciding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCollection {
    pub collection_id: CollectionId,
    pub name: String,
    /// Opaque JSON kept verbatim.
    pub schema_json: String,
    pub shard_count: u32,
    pub properties: BTreeMap<String, String>,
    /// Partitions besides `_default`.
    pub partitions: Vec<String>,
    /// Set when a restore job creates the collection: it starts in `Restoring`.
    pub restoring_job: Option<JobId>,
    /// Indexes declared at creation (a restore recreates the snapshot's), in id order.
    #[serde(default)]
    pub indexes: Vec<NewIndex>,
    /// Set for an external collection: its segments mirror this source (`external.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalConfig>,
}

/// An index declared with the collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewIndex {
    pub name: String,
    pub field: String,
    pub params_json: String,
}

/// Most segments one `StageRestoredSegments` command carries (each becomes one event).
pub const MAX_SEGMENTS_PER_STAGE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushSegment {
    pub segment_id: SegmentId,
    pub partition: String,
    pub shard: u32,
    pub rows: u64,
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactSegments {
    pub segment_ids: Vec<SegmentId>,
    pub into_segment_id: SegmentId,
    pub rows: u64,
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildIndex {
    pub segment_id: SegmentId,
    pub index: String,
    pub build_id: BuildId,
    pub files: Vec<FileRef>,
}

/// What may be asked of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollectionCommand {
    Create(CreateCollection),
    Drop,
    CreatePartition {
        name: String,
    },
    DropPartition {
        name: String,
    },
    CreateIndex {
        name: String,
        field: String,
        params_json: String,
    },
    DropIndex {
        name: String,
    },
    FlushSegment(FlushSegment),
    Compact(CompactSegments),
    DropSegment {
        segment_id: SegmentId,
    },
    BuildIndex(BuildIndex),
    /// Pin the current cut for a new snapshot; refused if a live snapshot has the name.
    PinSnapshot {
        snapshot_id: SnapshotId,
        name: String,
        description: String,
        labels: BTreeMap<String, String>,
    },
    /// Release a pin (the snapshot failed or was dropped). Allowed after the collection was
    /// dropped; a no-op when not pinned.
    UnpinSnapshot {
        snapshot_id: SnapshotId,
    },
    /// A restore job records segments it copied into its `Restoring` target. They are
    /// recorded but the collection serves nothing until `CompleteRestore`. A segment already
    /// staged with the same record is skipped (a resumed commit repeats nothing).
    StageRestoredSegments {
        job_id: JobId,
        segments: Vec<SegmentRecord>,
    },
    /// The restore job is done: the collection becomes `Ready`, with every staged segment, in
    /// one event. A repeat after completion is a no-op.
    CompleteRestore {
        job_id: JobId,
    },
    /// The restore job rolled back: the target is dropped. The host cannot drop a `Restoring`
    /// collection (it belongs to its job); only the job can, this way.
    AbandonRestore {
        job_id: JobId,
    },
    // --- external collections (rules in `snapvault_actors::collection::external`) ---
    /// Change the source and/or spec: the running task (if any) is superseded and `task_id`
    /// becomes the active task, atomically.
    AlterExternal {
        config: ExternalConfig,
        task_id: TaskId,
    },
    /// Make `task_id` the active refresh task, unless one is active already (then nothing
    /// happens: the caller reads the active task's id).
    BeginExternalTask {
        task_id: TaskId,
    },
    /// End the active task without a commit (cancel, failure). Allowed after a drop.
    EndExternalTask {
        task_id: TaskId,
        end: TaskEnd,
    },
    /// Commit a refresh: only by the active task, for the current generation.
    CommitExternalRefresh(ExternalCommit),
}

/// A refresh commit: kept segments are every live external segment not in `dropped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalCommit {
    pub task_id: TaskId,
    pub generation: u64,
    pub dropped: Vec<SegmentId>,
    /// New segments: level 0, one file each (their fragment list object).
    pub added: Vec<SegmentRecord>,
    /// Fragments of the collection after the commit.
    pub fragments: u64,
}

/// What happened to a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollectionEvent {
    Created {
        collection_id: CollectionId,
        name: String,
        schema_json: String,
        shard_count: u32,
        properties: BTreeMap<String, String>,
        partitions: Vec<PartitionDef>,
        status: CollectionStatus,
        restoring_job: Option<JobId>,
        created_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external: Option<ExternalConfig>,
    },
    Dropped,
    PartitionCreated {
        partition: PartitionDef,
    },
    /// The partition and every live segment in it are dropped.
    PartitionDropped {
        partition_id: PartitionId,
    },
    IndexCreated {
        index_id: IndexId,
        name: String,
        field: String,
        params_json: String,
    },
    /// The index and its files on every segment are dropped.
    IndexDropped {
        index_id: IndexId,
    },
    SegmentFlushed {
        segment: SegmentRecord,
    },
    /// `compacted` are dropped and `into` becomes live, atomically.
    SegmentsCompacted {
        compacted: Vec<SegmentId>,
        into: SegmentRecord,
    },
    SegmentDropped {
        segment_id: SegmentId,
    },
    /// A (re)build of an index on a segment; a previous build's files are dropped.
    IndexBuilt {
        segment_id: SegmentId,
        index_files: IndexFiles,
    },
    /// From this event on, the cut (the state at this version) belongs to the snapshot and its
    /// files are protected from GC.
    SnapshotPinned {
        snapshot_id: SnapshotId,
        name: String,
        description: String,
        labels: BTreeMap<String, String>,
        pinned_ms: u64,
    },
    SnapshotUnpinned {
        snapshot_id: SnapshotId,
    },
    /// The restore job `job_id` finished: every segment staged so far becomes live at once and
    /// the collection is `Ready`.
    RestoreCompleted {
        job_id: JobId,
        completed_ms: u64,
    },
    // --- external collections ---
    /// The source or spec changed (generation + 1); `superseded` (if any) committed nothing
    /// and `task_id` is the active task from here on.
    ExternalAltered {
        config: ExternalConfig,
        generation: u64,
        superseded: Option<TaskId>,
        task_id: TaskId,
        altered_ms: u64,
    },
    ExternalTaskStarted {
        task_id: TaskId,
        generation: u64,
        started_ms: u64,
    },
    ExternalTaskEnded {
        task_id: TaskId,
        end: TaskEnd,
        ended_ms: u64,
    },
    /// One refresh, atomically: `dropped` go, `added` come, every other live external
    /// segment (`kept` of them) stays. Ends `task_id` as committed.
    ExternalRefreshed {
        task_id: TaskId,
        generation: u64,
        kept: u64,
        dropped: Vec<SegmentId>,
        added: Vec<SegmentRecord>,
        fragments: u64,
        refreshed_ms: u64,
    },
}

impl DomainEvent for CollectionEvent {
    /// 2 added the external events (and optional `external` fields); a version-1 payload is
    /// a version-2 payload without them, so the upcast is a plain decode.
    const SCHEMA_VERSION: u16 = 2;
    fn upcast(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self, String> {
        if schema_version == 1 {
            return rmp_serde::from_slice(payload)
                .map_err(|e| format!("cannot decode '{event_type}' (schema version 1): {e}"));
        }
        Err(format!(
            "no upcaster for '{event_type}' from schema version {schema_version}"
        ))
    }
    fn event_type(&self) -> &'static str {
        match self {
            CollectionEvent::Created { .. } => "Created",
            CollectionEvent::Dropped => "Dropped",
            CollectionEvent::PartitionCreated { .. } => "PartitionCreated",
            CollectionEvent::PartitionDropped { .. } => "PartitionDropped",
            CollectionEvent::IndexCreated { .. } => "IndexCreated",
            CollectionEvent::IndexDropped { .. } => "IndexDropped",
            CollectionEvent::SegmentFlushed { .. } => "SegmentFlushed",
            CollectionEvent::SegmentsCompacted { .. } => "SegmentsCompacted",
            CollectionEvent::SegmentDropped { .. } => "SegmentDropped",
            CollectionEvent::IndexBuilt { .. } => "IndexBuilt",
            CollectionEvent::SnapshotPinned { .. } => "SnapshotPinned",
            CollectionEvent::SnapshotUnpinned { .. } => "SnapshotUnpinned",
            CollectionEvent::RestoreCompleted { .. } => "RestoreCompleted",
            CollectionEvent::ExternalAltered { .. } => "ExternalAltered",
            CollectionEvent::ExternalTaskStarted { .. } => "ExternalTaskStarted",
            CollectionEvent::ExternalTaskEnded { .. } => "ExternalTaskEnded",
            CollectionEvent::ExternalRefreshed { .. } => "ExternalRefreshed",
        }
    }
}
