//! The restore index: every restore job and the progress of its copy tasks, folded from the
//! whole log — so any client on any node can read a job's state, files and bytes done, rate
//! and ETA, during and after the job and after a restart, without asking the node running it.
//!
//! It also finds what a crash can leave between the steps of `restore start` (the target is
//! created and reserved first, the lease taken, then the job recorded): targets in `Restoring`
//! whose job was never recorded, and snapshot leases of jobs that do not exist.
//!
//! Memory: per job its state (task summaries, not file lists), per task a few counters, and
//! a bounded ring of progress samples per job for the rate.

use crate::aggregate::Aggregate;
use crate::projection::{Fold, Projection};
use crate::restore::job::{RestoreJob, RestoreJobState};
use serde::{Deserialize, Serialize};
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::CollectionEvent;
use snapvault_events::domain::restore::{
    CopyTaskEvent, CopyTaskStatus, RestoreEvent, RestoreStatus, parse_copy_task_stream,
};
use snapvault_events::domain::snapshot::SnapshotEvent;
use snapvault_events::domain::{CollectionId, JobId};
use snapvault_events::{Envelope, Error, EventLog, LogError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Progress samples kept per job for the rate.
const MAX_RATE_SAMPLES: usize = 256;
/// The rate is measured over this much recent time.
pub const RATE_WINDOW_MS: u64 = 30_000;

/// A copy task as the index sees it: counters, not file lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub status: Option<CopyTaskStatus>,
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    /// `key: reason` of the file that failed it.
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct JobEntry {
    pub state: RestoreJobState,
    pub tasks: BTreeMap<u32, TaskProgress>,
    pub files_done: u64,
    pub bytes_done: u64,
    /// (time, bytes done so far) at each progress event, oldest first.
    samples: VecDeque<(u64, u64)>,
    /// Global position of the job's first event.
    pub first_position: u64,
}

impl JobEntry {
    /// Bytes per second over the last `RATE_WINDOW_MS` before `now_ms` (0 when idle).
    pub fn rate_bytes_per_sec(&self, now_ms: u64) -> u64 {
        let since = now_ms.saturating_sub(RATE_WINDOW_MS);
        let Some(&(last_ms, last_bytes)) = self.samples.back() else {
            return 0;
        };
        if last_ms < since {
            return 0;
        }
        // The newest sample before the window is the window's baseline (or the first one).
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= since)
            .or_else(|| self.samples.front())
            .copied()
            .unwrap_or((last_ms, last_bytes));
        let span_ms = now_ms.saturating_sub(base.0).max(1);
        let bytes = last_bytes.saturating_sub(base.1);
        bytes.saturating_mul(1000) / span_ms
    }
}

/// A `Restoring` collection seen in the log, with its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoringTarget {
    pub job_id: JobId,
    pub position: u64,
    pub created_ms: u64,
}

#[derive(Default)]
pub struct Tables {
    jobs: BTreeMap<JobId, JobEntry>,
    /// Collections created by a restore and not yet completed or dropped.
    restoring: BTreeMap<CollectionId, RestoringTarget>,
    /// Snapshot leases held, with the position they were taken at.
    leases: BTreeMap<(u64, JobId), u64>,
    /// Task events seen before their job's first event (cannot happen in one log; kept so a
    /// log written by several nodes is still folded exactly).
    orphan_tasks: BTreeMap<JobId, BTreeMap<u32, TaskProgress>>,
}

impl Tables {
    fn apply_task(&mut self, job: JobId, task: u32, env: &Envelope) -> Result<(), LogError> {
        let event: CopyTaskEvent = decode(env)?;
        let entry = self.jobs.get_mut(&job);
        let tasks = match entry {
            Some(e) => &mut e.tasks,
            None => self.orphan_tasks.entry(job).or_default(),
        };
        let t = tasks.entry(task).or_default();
        let mut progressed = None;
        match &event {
            CopyTaskEvent::Planned { segments, .. } => {
                t.status = Some(CopyTaskStatus::Planned);
                let items = crate::restore::copy_task::copy_items(segments);
                t.files_total = items.len() as u64;
                t.bytes_total = items.iter().map(|i| i.dest.size).sum();
            }
            CopyTaskEvent::FilesCopied {
                files,
                bytes,
                at_ms,
            } => {
                t.files_done += files.len() as u64;
                t.bytes_done += bytes;
                progressed = Some((files.len() as u64, *bytes, *at_ms));
            }
            CopyTaskEvent::Completed { .. } => t.status = Some(CopyTaskStatus::Completed),
            CopyTaskEvent::Failed { key, reason, .. } => {
                t.status = Some(CopyTaskStatus::Failed);
                t.failure = Some(format!("{key}: {reason}"));
            }
        }
        if let (Some((files, bytes, at_ms)), Some(e)) = (progressed, self.jobs.get_mut(&job)) {
            e.files_done += files;
            e.bytes_done += bytes;
            e.samples.push_back((at_ms, e.bytes_done));
            if e.samples.len() > MAX_RATE_SAMPLES {
                e.samples.pop_front();
            }
        }
        Ok(())
    }
}

fn stream_id(stream: &str, prefix: &str) -> Option<u64> {
    stream.strip_prefix(prefix)?.parse().ok()
}

impl Fold for Tables {
    fn apply(&mut self, env: &Envelope) -> Result<(), LogError> {
        if let Some(job) = stream_id(&env.stream, "restore-") {
            let event: RestoreEvent = decode(env)?;
            let entry = self.jobs.entry(job).or_insert_with(|| JobEntry {
                first_position: env.position,
                ..JobEntry::default()
            });
            if let Some(tasks) = self.orphan_tasks.remove(&job) {
                for (n, t) in tasks {
                    entry.files_done += t.files_done;
                    entry.bytes_done += t.bytes_done;
                    entry.tasks.insert(n, t);
                }
            }
            RestoreJob::evolve(&mut entry.state, &event);
        } else if let Some((job, task)) = parse_copy_task_stream(&env.stream) {
            self.apply_task(job, task, env)?;
        } else if let Some(sid) = stream_id(&env.stream, "snapshot-")
            && matches!(env.event_type.as_str(), "LeaseTaken" | "LeaseReleased")
        {
            match decode::<SnapshotEvent>(env)? {
                SnapshotEvent::LeaseTaken { job_id } => {
                    self.leases.insert((sid, job_id), env.position);
                }
                SnapshotEvent::LeaseReleased { job_id } => {
                    self.leases.remove(&(sid, job_id));
                }
                _ => {}
            }
        } else if let Some(cid) = stream_id(&env.stream, "collection-")
            && matches!(
                env.event_type.as_str(),
                "Created" | "RestoreCompleted" | "Dropped"
            )
        {
            match decode::<CollectionEvent>(env)? {
                CollectionEvent::Created {
                    restoring_job: Some(job_id),
                    status: snapvault_events::domain::collection::CollectionStatus::Restoring,
                    created_ms,
                    ..
                } => {
                    self.restoring.insert(
                        cid,
                        RestoringTarget {
                            job_id,
                            position: env.position,
                            created_ms,
                        },
                    );
                }
                CollectionEvent::RestoreCompleted { .. } | CollectionEvent::Dropped => {
                    self.restoring.remove(&cid);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a crash can leave for the resume at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreUnfinished {
    /// Jobs not Completed, Failed or Cancelled.
    pub jobs: Vec<JobId>,
    /// `Restoring` targets whose job was never recorded: (collection, job, position, time).
    pub orphan_targets: Vec<(CollectionId, RestoringTarget)>,
}

#[derive(Clone)]
pub struct RestoreIndex {
    projection: Projection<Tables>,
}

impl RestoreIndex {
    pub fn start(log: Arc<dyn EventLog>) -> RestoreIndex {
        RestoreIndex {
            projection: Projection::start("restore index", log),
        }
    }

    pub async fn stop(&self) {
        self.projection.stop().await
    }

    pub async fn sync(&self) -> Result<(), Error> {
        self.projection.sync().await
    }

    /// One job, with its tasks' progress.
    pub async fn get(&self, job: JobId) -> Result<Option<JobEntry>, Error> {
        self.projection.read(|t| t.jobs.get(&job).cloned()).await
    }

    /// Jobs, newest first, optionally only in `status`, at most `limit` after `before` (a page
    /// token: the last job id of the previous page).
    pub async fn list(
        &self,
        status: Option<RestoreStatus>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<(Vec<JobEntry>, Option<JobId>), Error> {
        self.projection
            .read(|t| {
                let mut out = Vec::new();
                let mut next = None;
                let upper = before.unwrap_or(u64::MAX);
                for (id, e) in t.jobs.range(..upper).rev() {
                    if status.is_some_and(|s| e.state.status != Some(s)) {
                        continue;
                    }
                    if out.len() == limit {
                        next = out.last().map(|x: &JobEntry| x.state.job_id());
                        break;
                    }
                    let _ = id;
                    out.push(e.clone());
                }
                (out, next)
            })
            .await
    }

    /// Unfinished jobs and orphan targets.
    pub async fn unfinished(&self) -> Result<RestoreUnfinished, Error> {
        self.projection
            .read(|t| {
                let mut u = RestoreUnfinished::default();
                for (id, e) in &t.jobs {
                    if !e.state.status.is_some_and(RestoreStatus::is_terminal) {
                        u.jobs.push(*id);
                    }
                }
                for (cid, target) in &t.restoring {
                    if !t.jobs.contains_key(&target.job_id) {
                        u.orphan_targets.push((*cid, *target));
                    }
                }
                u
            })
            .await
    }

    /// Where the lease of `job` on `snapshot` was taken (`u64::MAX` when it is not held).
    pub async fn lease_position(&self, snapshot: u64, job: JobId) -> Result<u64, Error> {
        self.projection
            .read(|t| t.leases.get(&(snapshot, job)).copied().unwrap_or(u64::MAX))
            .await
    }

    /// Is there a record of job `job` (in any state)?
    pub async fn exists(&self, job: JobId) -> Result<bool, Error> {
        self.projection.read(|t| t.jobs.contains_key(&job)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_measured_over_the_recent_window() {
        let mut e = JobEntry::default();
        assert_eq!(e.rate_bytes_per_sec(1_000), 0);
        for i in 0..=10u64 {
            e.samples.push_back((i * 1_000, i * 1_000_000));
        }
        // 1 MB per second for the last 10 s.
        assert_eq!(e.rate_bytes_per_sec(10_000), 1_000_000);
        // Idle for longer than the window: no rate.
        assert_eq!(e.rate_bytes_per_sec(10_000 + RATE_WINDOW_MS + 1), 0);
    }
}
