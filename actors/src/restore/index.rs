//! The restore index: every restore job and the progress of its copy tasks, folded from the
//! whole log — so any client on any node can read a job's state, files and bytes done, rate
//! and ETA, during and after the job and after a restart, without asking the node running it.
//!
//! It is also what every node's reconciler reads to find work (design §10): each job's and
//! each task's claim (holder, epoch, deadline), each task's shard, and per node the bytes it
//! copied recently.
//!
//! Memory: per job its state (task summaries, not file lists), per task a few counters and
//! its claim, and bounded rings of progress samples per job and per node for the rates.

use crate::aggregate::Aggregate;
use crate::claim::ClaimState;
use crate::projection::{Fold, Projection};
use crate::restore::job::{RestoreJob, RestoreJobState};
use serde::{Deserialize, Serialize};
use snapvault_events::codec::decode;
use snapvault_events::domain::JobId;
use snapvault_events::domain::restore::{
    CopyTaskEvent, CopyTaskStatus, RestoreEvent, RestoreStatus, parse_copy_task_stream,
};
use snapvault_events::{Envelope, Error, EventLog, LogError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Progress samples kept per job for the rate.
const MAX_RATE_SAMPLES: usize = 256;
/// Progress samples kept per node of a job for its rate.
const MAX_NODE_RATE_SAMPLES: usize = 64;
/// Nodes whose rates one job keeps (the newest to copy for it).
const MAX_NODES_PER_JOB: usize = 64;
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
    /// The shard of the task's segments (one shard per task).
    pub shard: u32,
    /// Which node copies it.
    pub claim: ClaimState,
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
    /// Per node that copied for the job: (time, bytes it copied so far) samples.
    node_samples: BTreeMap<String, VecDeque<(u64, u64)>>,
}

impl JobEntry {
    /// Bytes per second over the last `RATE_WINDOW_MS` before `now_ms` (0 when idle).
    pub fn rate_bytes_per_sec(&self, now_ms: u64) -> u64 {
        rate_of(&self.samples, now_ms)
    }

    /// Each node that copied for the job recently, with its bytes per second.
    pub fn node_rates(&self, now_ms: u64) -> BTreeMap<String, u64> {
        self.node_samples
            .iter()
            .map(|(n, s)| (n.clone(), rate_of(s, now_ms)))
            .collect()
    }

    fn sample_node(&mut self, node: &str, at_ms: u64, bytes: u64) {
        if !self.node_samples.contains_key(node) && self.node_samples.len() >= MAX_NODES_PER_JOB {
            // Forget the node that copied least recently.
            let oldest = self
                .node_samples
                .iter()
                .min_by_key(|(_, s)| s.back().map_or(0, |x| x.0))
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                self.node_samples.remove(&n);
            }
        }
        let samples = self.node_samples.entry(node.to_string()).or_default();
        let total = samples.back().map_or(0, |x| x.1) + bytes;
        samples.push_back((at_ms, total));
        if samples.len() > MAX_NODE_RATE_SAMPLES {
            samples.pop_front();
        }
    }
}

/// Bytes per second over the last `RATE_WINDOW_MS` of (time, cumulative bytes) samples.
fn rate_of(samples: &VecDeque<(u64, u64)>, now_ms: u64) -> u64 {
    let since = now_ms.saturating_sub(RATE_WINDOW_MS);
    let Some(&(last_ms, last_bytes)) = samples.back() else {
        return 0;
    };
    if last_ms < since {
        return 0;
    }
    // The newest sample before the window is the window's baseline (or the first one).
    let base = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= since)
        .or_else(|| samples.front())
        .copied()
        .unwrap_or((last_ms, last_bytes));
    let span_ms = now_ms.saturating_sub(base.0).max(1);
    let bytes = last_bytes.saturating_sub(base.1);
    bytes.saturating_mul(1000) / span_ms
}

#[derive(Default)]
pub struct Tables {
    jobs: BTreeMap<JobId, JobEntry>,
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
                t.shard = segments.first().map_or(0, |p| p.segment.shard);
            }
            CopyTaskEvent::Claim(c) => t.claim.evolve(c),
            CopyTaskEvent::FilesCopied {
                files,
                bytes,
                at_ms,
            } => {
                t.files_done += files.len() as u64;
                t.bytes_done += bytes;
                let node = t.claim.holder.as_ref().map(|c| c.node.clone());
                progressed = Some((files.len() as u64, *bytes, *at_ms, node));
            }
            CopyTaskEvent::Completed { at_ms } => {
                t.status = Some(CopyTaskStatus::Completed);
                t.claim.end(*at_ms);
            }
            CopyTaskEvent::Failed { key, reason, at_ms } => {
                t.status = Some(CopyTaskStatus::Failed);
                t.failure = Some(format!("{key}: {reason}"));
                t.claim.end(*at_ms);
            }
            CopyTaskEvent::Abandoned { .. } => t.status = Some(CopyTaskStatus::Abandoned),
        }
        if let (Some((files, bytes, at_ms, node)), Some(e)) = (progressed, self.jobs.get_mut(&job))
        {
            e.files_done += files;
            e.bytes_done += bytes;
            e.samples.push_back((at_ms, e.bytes_done));
            if e.samples.len() > MAX_RATE_SAMPLES {
                e.samples.pop_front();
            }
            if let Some(node) = node {
                e.sample_node(&node, at_ms, bytes);
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
        }
        Ok(())
    }
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

    /// Every job not yet Completed, Failed or Cancelled, with its tasks and claims: what a
    /// reconciler looks at.
    pub async fn unfinished(&self) -> Result<Vec<JobEntry>, Error> {
        self.projection
            .read(|t| {
                t.jobs
                    .values()
                    .filter(|e| !e.state.status.is_some_and(RestoreStatus::is_terminal))
                    .cloned()
                    .collect()
            })
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
