//! Restore job and copy task commands and events.
//!
//! A restore job lives in `restore-{job}`:
//! `Pending → Running → Committing → Completed`, and from any non-terminal state
//! `→ RollingBack → Failed | Cancelled`. Its copy tasks live in `copytask-{job}-{n}`, each a
//! bounded batch of whole segments: `Planned → Completed | Failed`, with `FilesCopied`
//! progress in between.
//!
//! Everything a job does is decided up front and recorded, so a resumed job repeats nothing:
//! the target collection id and a block of ids for the new segments and index builds are in
//! `Requested` / `IdsReserved`; each task's segments (new ids, destination keys) are in its
//! `Planned` event; which files are already copied is in its `FilesCopied` events.

use super::claim::{ClaimCommand, ClaimEvent};
use super::collection::SegmentRecord;
use super::{CollectionId, JobId, SegmentId, SnapshotId};
use crate::codec::DomainEvent;
use serde::{Deserialize, Serialize};

/// Most copy tasks in flight for one job.
pub const MAX_PARALLELISM: u32 = 256;
/// Copy tasks in flight when the request does not say.
pub const DEFAULT_PARALLELISM: u32 = 4;
/// Most files one copy task covers (a segment with more gets a task of its own). Small
/// enough that a restore of a few thousand files makes tens of tasks, so several nodes share
/// it evenly (each task is claimed by one node).
pub const MAX_FILES_PER_TASK: usize = 64;
/// Most bytes one copy task covers (a segment with more gets a task of its own).
pub const MAX_BYTES_PER_TASK: u64 = 1 << 30;
/// Most files one `Planned` event may list (a single segment with many index builds can
/// exceed `MAX_FILES_PER_TASK`; the 64 KiB event limit bounds it in practice).
pub const MAX_FILES_PER_PLAN: usize = 4096;
/// Largest encoded `Planned` event of a task; keeps it under the 64 KiB event limit.
pub const MAX_TASK_PLAN_BYTES: usize = 48 * 1024;
/// Most task summaries in one `TasksPlanned` event (each is a few dozen bytes).
pub const MAX_TASKS_PER_EVENT: usize = 512;
/// Most partitions one restore request may name.
pub const MAX_REQUESTED_PARTITIONS: usize = 4096;
/// Longest failure reason kept in an event.
pub const MAX_REASON_BYTES: usize = 2048;

pub fn restore_stream(job: JobId) -> String {
    format!("restore-{job}")
}

pub fn copy_task_stream(job: JobId, task: u32) -> String {
    format!("copytask-{job}-{task}")
}

/// `(job, task)` of a `copytask-{job}-{task}` stream name.
pub fn parse_copy_task_stream(stream: &str) -> Option<(JobId, u32)> {
    let rest = stream.strip_prefix("copytask-")?;
    let (job, task) = rest.split_once('-')?;
    Some((job.parse().ok()?, task.parse().ok()?))
}

/// Cut a failure reason to the event limit (on a char boundary).
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_string();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStatus {
    Pending,
    Running,
    Committing,
    Completed,
    RollingBack,
    Failed,
    Cancelled,
}

impl RestoreStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreStatus::Pending => "pending",
            RestoreStatus::Running => "running",
            RestoreStatus::Committing => "committing",
            RestoreStatus::Completed => "completed",
            RestoreStatus::RollingBack => "rolling_back",
            RestoreStatus::Failed => "failed",
            RestoreStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RestoreStatus> {
        Some(match s {
            "pending" => RestoreStatus::Pending,
            "running" => RestoreStatus::Running,
            "committing" => RestoreStatus::Committing,
            "completed" => RestoreStatus::Completed,
            "rolling_back" | "rolling-back" => RestoreStatus::RollingBack,
            "failed" => RestoreStatus::Failed,
            "cancelled" => RestoreStatus::Cancelled,
            _ => return None,
        })
    }

    /// Completed, Failed or Cancelled: nothing more happens to the job.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RestoreStatus::Completed | RestoreStatus::Failed | RestoreStatus::Cancelled
        )
    }
}

/// How a restore runs. A missing field takes its documented default (`Default` below), so a
/// request with `options: {}` (or only some options) means what docs/nats-api.md says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreOptions {
    /// Partitions (by name) to restore; empty means all of the snapshot's.
    pub partitions: Vec<String>,
    /// Copy tasks in flight at once (1..=`MAX_PARALLELISM`).
    pub parallelism: u32,
    /// Upper bound on the bytes copied per second by the whole job; `None`: unlimited.
    pub max_bytes_per_sec: Option<u64>,
    /// Check each source file's size and crc32c while copying it (default on).
    pub verify_checksums: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            partitions: Vec::new(),
            parallelism: DEFAULT_PARALLELISM,
            max_bytes_per_sec: None,
            verify_checksums: true,
        }
    }
}

/// Everything that names a restore job, fixed when it is requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub job_id: JobId,
    pub snapshot_id: SnapshotId,
    pub snapshot_name: String,
    /// The collection the snapshot was taken of (it may be dropped by now).
    pub source_collection_id: CollectionId,
    pub source_collection_name: String,
    pub target_name: String,
    /// Allocated before the request is recorded, so creating the target is idempotent.
    pub target_collection_id: CollectionId,
    pub options: RestoreOptions,
}

/// One copy task as the job sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task: u32,
    pub segments: u32,
    pub files: u64,
    pub bytes: u64,
}

/// What a job restores in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTotals {
    pub tasks: u32,
    pub segments: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreCommand {
    /// Record the request (the client validated it and allocated the ids), and with it,
    /// atomically, the starting node's claim on the job's coordination.
    Request {
        request: RestoreRequest,
        claim: Option<ClaimCommand>,
    },
    /// Claim, renew or release the job's coordination (design §10).
    Claim(ClaimCommand),
    /// `command`, sent by the coordinator holding claim `epoch`: refused ("claim lost")
    /// while the job runs unless that is the current claim, so a coordinator whose claim
    /// lapsed cannot move the job on.
    Fenced {
        epoch: u64,
        command: Box<RestoreCommand>,
    },
    /// Record the id block the plan draws new segment and build ids from.
    ReserveIds { first: u64, count: u64 },
    /// Record the next planned tasks; `tasks[0].task` must be the number planned so far.
    RecordTasks { tasks: Vec<TaskSummary> },
    /// Every task is planned: start copying.
    Start { totals: RestoreTotals },
    /// A task finished copying and checking its files.
    CompleteTask { task: u32 },
    /// Every task is complete: commit the restored segments into the target.
    BeginCommit,
    /// The target is Ready and the lease released.
    Complete,
    /// Something went wrong that cannot be retried: roll back.
    Fail { reason: String },
    /// The user cancelled: roll back.
    Cancel,
    /// The rollback removed everything the job made.
    FinishRollback { objects_deleted: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreEvent {
    Requested {
        request: RestoreRequest,
        requested_ms: u64,
    },
    IdsReserved {
        first: u64,
        count: u64,
    },
    TasksPlanned {
        tasks: Vec<TaskSummary>,
    },
    Started {
        totals: RestoreTotals,
        started_ms: u64,
    },
    TaskCompleted {
        task: u32,
    },
    CommitStarted {
        at_ms: u64,
    },
    Completed {
        completed_ms: u64,
    },
    RollbackStarted {
        reason: String,
        cancelled: bool,
        at_ms: u64,
    },
    RolledBack {
        objects_deleted: u64,
        at_ms: u64,
    },
    /// Who coordinates the job (claimed, renewed, released).
    Claim(ClaimEvent),
}

impl DomainEvent for RestoreEvent {
    const SCHEMA_VERSION: u16 = 1;
    fn event_type(&self) -> &'static str {
        match self {
            RestoreEvent::Requested { .. } => "Requested",
            RestoreEvent::IdsReserved { .. } => "IdsReserved",
            RestoreEvent::TasksPlanned { .. } => "TasksPlanned",
            RestoreEvent::Started { .. } => "Started",
            RestoreEvent::TaskCompleted { .. } => "TaskCompleted",
            RestoreEvent::CommitStarted { .. } => "CommitStarted",
            RestoreEvent::Completed { .. } => "Completed",
            RestoreEvent::RollbackStarted { .. } => "RollbackStarted",
            RestoreEvent::RolledBack { .. } => "RolledBack",
            RestoreEvent::Claim(c) => c.event_type(),
        }
    }
}

/// One segment a copy task restores.
///
/// `segment` is the restored segment exactly as it will be committed into the target: new
/// segment and build ids, the target's partition and index ids, and destination keys. Each
/// destination key is `dest_prefix` + a relative path, and the file's source key is
/// `source_prefix` + the same relative path, so the plan stores every key once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSegment {
    pub source_segment_id: SegmentId,
    pub source_prefix: String,
    pub dest_prefix: String,
    pub segment: SegmentRecord,
    /// Destination keys written when the task was planned, not copied: the fragment list of
    /// a segment of an external collection (it names the target's ids, so it is rewritten,
    /// not copied; the fragments themselves stay in the user's source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prewritten: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyTaskStatus {
    Planned,
    Completed,
    Failed,
    /// Its job is rolling back: nothing more may be claimed or recorded for it.
    Abandoned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyTaskCommand {
    /// Record the task's segments (idempotent: the same plan again is a no-op).
    Plan {
        job_id: JobId,
        task: u32,
        segments: Vec<PlannedSegment>,
    },
    /// Files (by ordinal in the task's file order) copied and checked, by the holder of
    /// claim `epoch`.
    RecordCopied {
        files: Vec<u32>,
        epoch: u64,
    },
    Complete {
        epoch: u64,
    },
    /// A file cannot be copied (missing or corrupt source): the job must roll back.
    Fail {
        key: String,
        reason: String,
        epoch: u64,
    },
    /// Claim, renew or release the task (design §10).
    Claim(ClaimCommand),
    /// The job rolls back: close the task to new claims and records, so that once its last
    /// claim ended nothing can land under the target any more.
    Abandon,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyTaskEvent {
    Planned {
        job_id: JobId,
        task: u32,
        segments: Vec<PlannedSegment>,
    },
    /// Newly copied files (never one recorded before) and their bytes.
    FilesCopied {
        files: Vec<u32>,
        bytes: u64,
        at_ms: u64,
    },
    Completed {
        at_ms: u64,
    },
    Failed {
        key: String,
        reason: String,
        at_ms: u64,
    },
    /// Which node copies the task's files (claimed, renewed, released).
    Claim(ClaimEvent),
    /// Closed by its job's rollback.
    Abandoned {
        at_ms: u64,
    },
}

impl DomainEvent for CopyTaskEvent {
    const SCHEMA_VERSION: u16 = 1;
    fn event_type(&self) -> &'static str {
        match self {
            CopyTaskEvent::Planned { .. } => "Planned",
            CopyTaskEvent::FilesCopied { .. } => "FilesCopied",
            CopyTaskEvent::Completed { .. } => "Completed",
            CopyTaskEvent::Failed { .. } => "Failed",
            CopyTaskEvent::Claim(c) => c.event_type(),
            CopyTaskEvent::Abandoned { .. } => "Abandoned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_task_stream_names_round_trip() {
        assert_eq!(copy_task_stream(12, 3), "copytask-12-3");
        assert_eq!(parse_copy_task_stream("copytask-12-3"), Some((12, 3)));
        assert_eq!(parse_copy_task_stream("copytask-12"), None);
        assert_eq!(parse_copy_task_stream("restore-12"), None);
    }

    #[test]
    fn reasons_are_bounded_on_char_boundaries() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let r = bounded_reason(&long);
        assert!(r.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert_eq!(bounded_reason("short"), "short");
    }
}
