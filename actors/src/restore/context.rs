//! What restore work needs: the parts of the node, and the limits and timings it runs by.

use crate::registry::Registry;
use crate::restore::copier::CopyLimits;
use crate::snapshot::worker::SnapshotWorker;
use object_store::ObjectStore;
use snapvault_events::ids::IdAllocator;
use snapvault_events::{EventLog, SharedClock};
use std::sync::Arc;

/// Limits and timings of restore work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreConfig {
    /// First retry delay after a transient error; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts at one file (and at recording progress) before the task is retried later.
    pub max_attempts_per_file: u32,
    /// Times a task is run again after transient failures before the job fails.
    pub max_task_retries: u32,
    /// Progress is recorded after this many files…
    pub progress_batch_files: usize,
    /// …or this long after the last record, whichever comes first.
    pub progress_batch_ms: u64,
    /// Files up to this size are copied with one `put`; bigger ones by multipart upload.
    pub single_put_max_bytes: u64,
    pub part_bytes: usize,
    pub parts_in_flight: usize,
    /// A job's coordinator looks at its tasks this often.
    pub status_poll_ms: u64,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            max_attempts_per_file: 8,
            max_task_retries: 5,
            progress_batch_files: 32,
            progress_batch_ms: 1_000,
            single_put_max_bytes: 16 << 20,
            part_bytes: 8 << 20,
            parts_in_flight: 4,
            status_poll_ms: 500,
        }
    }
}

impl RestoreConfig {
    pub fn copy_limits(&self) -> CopyLimits {
        CopyLimits {
            single_put_max_bytes: self.single_put_max_bytes,
            part_bytes: self.part_bytes.max(5 << 20),
            parts_in_flight: self.parts_in_flight.max(1),
        }
    }
}

/// The parts of the node restore work runs on.
#[derive(Clone)]
pub struct RestoreContext {
    pub registry: Registry,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ObjectStore>,
    pub clock: SharedClock,
    pub ids: Arc<IdAllocator>,
    /// Reads snapshot metadata and manifests.
    pub snapshots: SnapshotWorker,
    pub config: RestoreConfig,
    /// This node's part in claimed work: id, scope, shards, limits, claim timings.
    pub work: crate::work::WorkConfig,
    /// Set in a job runner's copy: the epoch of its claim on the job, which every command
    /// it sends the job carries (`RestoreCommand::Fenced`).
    pub coordinator_epoch: Option<u64>,
}
