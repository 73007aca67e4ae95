//! Restore operations of the client: start, status, list, cancel, wait.
//!
//! A restore is one workflow owned by its job (design §10). `start_restore` checks
//! everything it can before it writes anything (the snapshot is Committed, the partitions
//! exist in it, the options are sane, the target name is free), then:
//! 1. records the job — `Requested` and this node's claim on its coordination, in one append
//!    to the job's own stream — so from here on every step is driven from that stream by
//!    whichever node holds the claim, and no other node touches the job while it is held;
//! 2. creates the target collection in `Restoring`, reserving its name on the catalog's fence
//!    (two restores into one name: exactly one wins), and takes the job's lease on the
//!    snapshot. A refusal here (the name was taken meanwhile, the snapshot is being dropped)
//!    fails the job, rolls it back at once and returns the refusal's code: the job ends
//!    Failed, nothing else is left;
//! 3. hands the job to this node's restore manager and returns its id.
//!
//! A crash anywhere after 1 leaves a job whose claim lapses; a reconciler (`serve`, or a
//! `restore wait` on a sled directory) takes it and finishes or rolls it back.

use crate::client::Client;
use serde::{Deserialize, Serialize};
use snapvault_actors::crash_points::crash_point;
use snapvault_actors::restore::RestoreJob;
use snapvault_actors::restore::index::{JobEntry, TaskProgress};
use snapvault_actors::restore::job::check_request;
use snapvault_actors::restore::manager::Held;
use snapvault_actors::restore::steps;
use snapvault_events::domain::JobId;
use snapvault_events::domain::claim::{ClaimCommand, ClaimEvent};
use snapvault_events::domain::restore::{
    CopyTaskStatus, RestoreCommand, RestoreEvent, RestoreOptions, RestoreRequest, RestoreStatus,
    RestoreTotals, restore_stream,
};
use snapvault_events::validate::validate_name;
use snapvault_events::{Error, ErrorCode};
use std::time::Duration;

/// Attempts `restore start` makes at reserving the target before it answers `unavailable`.
const START_ATTEMPTS: u32 = 5;

/// Most jobs one list page returns.
pub const MAX_RESTORE_PAGE: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRestoreRequest {
    /// Collection (by name) the snapshot was taken of; it may be dropped by now.
    pub snapshot_collection: String,
    pub snapshot: String,
    /// Name of the new collection.
    pub target: String,
    /// Missing (or any field of it missing): the defaults of [`RestoreOptions`].
    #[serde(default)]
    pub options: RestoreOptions,
}

/// One copy task, as `restore status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub task: u32,
    /// planned, completed, failed (or abandoned, for a task of a rolled back job).
    pub status: String,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The node holding the task's claim (copying it), while one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The claim's epoch and deadline, while it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_deadline_ms: Option<u64>,
    pub shard: u32,
}

/// A node copying for a job, with its recent rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRate {
    pub node: String,
    /// Over the last 30 s.
    pub bytes_per_sec: u64,
    /// Tasks of the job it holds now.
    pub tasks_held: u64,
}

/// A restore job and its progress, derived from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreView {
    pub job_id: JobId,
    pub status: RestoreStatus,
    pub snapshot_id: u64,
    pub snapshot: String,
    pub snapshot_collection: String,
    pub target: String,
    pub target_collection_id: u64,
    pub options: RestoreOptions,
    pub requested_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// What the plan restores (zero until the plan is complete).
    pub totals: RestoreTotals,
    pub tasks_done: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    /// Of bytes (of files when the restore has no bytes); 100 when completed.
    pub percent: f64,
    /// Over the last 30 s.
    pub rate_bytes_per_sec: u64,
    /// At the current rate; `None` when idle or finished.
    pub eta_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Objects a rollback removed.
    pub objects_deleted: u64,
    /// The node coordinating the job (holding its claim), while one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_deadline_ms: Option<u64>,
    /// Only in `restore status`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tasks: Vec<TaskView>,
    /// Only in `restore status`: every node that copied for the job recently or holds a task.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub nodes: Vec<NodeRate>,
}

impl RestoreView {
    pub fn of(e: &JobEntry, now_ms: u64, with_tasks: bool) -> Option<RestoreView> {
        let r = e.state.request.as_ref()?;
        let status = e.state.status?;
        let totals = e.state.totals.unwrap_or_default();
        let percent = if status == RestoreStatus::Completed {
            100.0
        } else if totals.bytes > 0 {
            (e.bytes_done as f64 * 100.0 / totals.bytes as f64).min(100.0)
        } else if totals.files > 0 {
            (e.files_done as f64 * 100.0 / totals.files as f64).min(100.0)
        } else {
            0.0
        };
        let active = matches!(status, RestoreStatus::Running);
        let rate = if active {
            e.rate_bytes_per_sec(now_ms)
        } else {
            0
        };
        let eta_ms = (active && rate > 0).then(|| {
            totals
                .bytes
                .saturating_sub(e.bytes_done)
                .saturating_mul(1000)
                / rate
        });
        let rolled_back = matches!(status, RestoreStatus::Failed | RestoreStatus::Cancelled);
        let tasks: Vec<TaskView> = if with_tasks {
            e.tasks
                .iter()
                .map(|(n, t)| task_view(*n, t, rolled_back, now_ms))
                .collect()
        } else {
            Vec::new()
        };
        let nodes = if with_tasks {
            let mut rates: std::collections::BTreeMap<String, NodeRate> = e
                .node_rates(now_ms)
                .into_iter()
                .map(|(node, bytes_per_sec)| {
                    let rate = NodeRate {
                        node: node.clone(),
                        bytes_per_sec: if active { bytes_per_sec } else { 0 },
                        tasks_held: 0,
                    };
                    (node, rate)
                })
                .collect();
            for t in &tasks {
                if let Some(n) = &t.node {
                    rates
                        .entry(n.clone())
                        .or_insert_with(|| NodeRate {
                            node: n.clone(),
                            bytes_per_sec: 0,
                            tasks_held: 0,
                        })
                        .tasks_held += 1;
                }
            }
            rates.into_values().collect()
        } else {
            Vec::new()
        };
        let coordinator = e.state.claim.live(now_ms);
        Some(RestoreView {
            job_id: r.job_id,
            status,
            snapshot_id: r.snapshot_id,
            snapshot: r.snapshot_name.clone(),
            snapshot_collection: r.source_collection_name.clone(),
            target: r.target_name.clone(),
            target_collection_id: r.target_collection_id,
            options: r.options.clone(),
            requested_ms: e.state.requested_ms,
            started_ms: e.state.started_ms,
            finished_ms: e.state.finished_ms,
            totals,
            tasks_done: e.state.completed_tasks.len() as u64,
            files_done: e.files_done,
            bytes_done: e.bytes_done,
            percent,
            rate_bytes_per_sec: rate,
            eta_ms,
            failure: e.state.failure.clone(),
            objects_deleted: e.state.objects_deleted,
            node: coordinator.map(|c| c.node.clone()),
            claim_deadline_ms: coordinator.map(|c| c.deadline_ms),
            tasks,
            nodes,
        })
    }
}

fn task_view(task: u32, t: &TaskProgress, rolled_back: bool, now_ms: u64) -> TaskView {
    let claim = t.claim.live(now_ms);
    let status = match t.status {
        Some(CopyTaskStatus::Completed) => "completed",
        Some(CopyTaskStatus::Failed) => "failed",
        Some(CopyTaskStatus::Abandoned) => "abandoned",
        Some(CopyTaskStatus::Planned) if rolled_back => "abandoned",
        Some(CopyTaskStatus::Planned) if t.files_done > 0 => "copying",
        _ => "planned",
    };
    TaskView {
        task,
        status: status.to_string(),
        files_done: t.files_done,
        files_total: t.files_total,
        bytes_done: t.bytes_done,
        bytes_total: t.bytes_total,
        failure: t.failure.clone(),
        node: claim.map(|c| c.node.clone()),
        claim_epoch: claim.map(|c| c.epoch),
        claim_deadline_ms: claim.map(|c| c.deadline_ms),
        shard: t.shard,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestorePage {
    pub jobs: Vec<RestoreView>,
    pub next_page_token: Option<u64>,
}

/// One restored segment and where each of its files came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredSegment {
    pub source_segment_id: u64,
    pub segment_id: u64,
    /// (source key, destination file) for every data and index file.
    pub files: Vec<(String, snapvault_events::domain::FileRef)>,
}

fn job_not_found(job: JobId) -> Error {
    Error::not_found(format!("restore job {job} not found"))
}

impl Client {
    /// Start a restore; returns at once with the job (Pending). Refused, with nothing written,
    /// when any check fails.
    pub async fn start_restore(&self, req: StartRestoreRequest) -> Result<RestoreView, Error> {
        validate_name("collection name", &req.snapshot_collection)?;
        validate_name("snapshot name", &req.snapshot)?;
        validate_name("target collection name", &req.target)?;
        let snapshot = self
            .find_snapshot(&req.snapshot_collection, &req.snapshot)
            .await?;
        steps::check_restorable(&snapshot, &req.snapshot_collection, &req.snapshot)?;
        let identity = snapshot
            .identity
            .clone()
            .ok_or_else(|| Error::internal("committed snapshot without identity"))?;
        let mut request = RestoreRequest {
            job_id: 1,
            snapshot_id: identity.snapshot_id,
            snapshot_name: identity.name.clone(),
            source_collection_id: identity.collection_id,
            source_collection_name: identity.collection_name.clone(),
            target_name: req.target.clone(),
            target_collection_id: 1,
            options: req.options.clone(),
        };
        check_request(&request)?;
        let meta = self.snapshot_worker.load_metadata(&snapshot).await?;
        steps::selected_partitions(&request, &meta)?;
        if self.collection_id(&req.target).await.is_ok() {
            return Err(Error::already_exists(format!(
                "collection '{}' already exists",
                req.target
            )));
        }
        request.job_id = self.ids.next_id().await?;
        request.target_collection_id = self.ids.next_id().await?;
        let ctx = &self.restores.ctx;
        let job = request.job_id;
        let _starting = self.restores.starting(job);
        let now_ms = self.clock_ms();
        let claim = ClaimCommand::Claim {
            node: self.restores.node_id().to_string(),
            deadline_ms: now_ms + ctx.work.claim_ttl_ms,
            take_over_own: false,
        };
        let recorded = self
            .registry
            .execute::<RestoreJob>(
                &restore_stream(job),
                RestoreCommand::Request {
                    request: request.clone(),
                    claim: Some(claim),
                },
                job,
            )
            .await?;
        let held = recorded.events.iter().find_map(|e| match e {
            RestoreEvent::Claim(ClaimEvent::Claimed {
                epoch, deadline_ms, ..
            }) => Some(Held {
                epoch: *epoch,
                deadline_ms: *deadline_ms,
            }),
            _ => None,
        });
        crash_point("restore.after_request");
        // Transient errors are retried here a few times, so that an `Ok` always means the
        // target name is this job's; past them the job goes on in the background (its
        // claim's runner retries the same idempotent steps) and the caller hears so.
        let mut backoff =
            snapvault_events::Backoff::new(ctx.config.retry_initial_ms, ctx.config.retry_max_ms);
        let mut attempt = 1;
        loop {
            match self.reserve_target(&request, &meta).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    if attempt >= START_ATTEMPTS {
                        self.restores.adopt(job, self.still_held(held));
                        return Err(Error::unavailable(format!(
                            "restore job {job} is recorded, but its target could not be reserved yet ({}); it goes on in the background: see `restore status {job}`",
                            e.message
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(backoff.current_ms())).await;
                    backoff.grow();
                    attempt += 1;
                }
                Err(refused) => {
                    // Lost the name, or the snapshot cannot be leased: the job ends Failed
                    // and leaves nothing (its own rollback, run here and now).
                    self.refuse_restore(job, &refused).await;
                    return Err(refused);
                }
            }
        }
        self.restores.adopt(job, self.still_held(held));
        self.restore_status(job).await
    }

    /// The claim `restore start` took, if it is not about to lapse (nothing renews it while
    /// the start reserves the target); otherwise the node's reconciler claims the job afresh.
    fn still_held(&self, held: Option<Held>) -> Option<Held> {
        let safe_until = self.clock_ms() + self.restores.ctx.work.stop_below_ms();
        held.filter(|h| h.deadline_ms > safe_until)
    }

    /// Step 2 of `start_restore`: the target in `Restoring` with its name, then the lease.
    async fn reserve_target(
        &self,
        request: &RestoreRequest,
        meta: &snapvault_actors::snapshot::manifest::SnapshotMetadata,
    ) -> Result<(), Error> {
        let ctx = &self.restores.ctx;
        steps::ensure_target(ctx, request, meta).await?;
        crash_point("restore.after_target");
        steps::take_lease(ctx, request)
            .await
            .map_err(|e| match e.code {
                ErrorCode::FailedPrecondition | ErrorCode::NotFound => {
                    Error::failed_precondition(format!(
                        "snapshot '{}' of collection '{}' can no longer be restored: {}",
                        request.snapshot_name, request.source_collection_name, e.message
                    ))
                }
                _ => e,
            })?;
        crash_point("restore.after_lease");
        Ok(())
    }

    /// Fail a job refused while it started and roll it back now (best effort: if the log
    /// fails meanwhile, the job's claim lapses and a reconciler finishes the rollback).
    async fn refuse_restore(&self, job: JobId, refused: &Error) {
        let ctx = &self.restores.ctx;
        let fail = RestoreCommand::Fail {
            reason: format!("refused at start: {refused}"),
        };
        if steps::job_command(ctx, job, fail).await.is_err() {
            return;
        }
        match steps::job_state(ctx, job).await {
            Ok(state) => {
                if let Err(e) = steps::rollback(ctx, &state).await {
                    tracing::warn!(job, error = %e, "the rollback of a refused restore continues later");
                    return;
                }
            }
            Err(_) => return,
        }
        self.registry.release(&restore_stream(job));
    }

    /// A job's state and progress (per task too), from the log.
    pub async fn restore_status(&self, job: JobId) -> Result<RestoreView, Error> {
        if job == 0 {
            return Err(Error::invalid_argument("job id must not be 0"));
        }
        let entry = self
            .restores
            .index
            .get(job)
            .await?
            .ok_or_else(|| job_not_found(job))?;
        RestoreView::of(&entry, self.clock_ms(), true).ok_or_else(|| job_not_found(job))
    }

    /// Jobs, newest first, optionally in one state, paged.
    pub async fn list_restores(
        &self,
        status: Option<RestoreStatus>,
        limit: Option<usize>,
        page_token: Option<u64>,
    ) -> Result<RestorePage, Error> {
        let limit = limit.unwrap_or(100);
        if limit == 0 || limit > MAX_RESTORE_PAGE {
            return Err(Error::invalid_argument(format!(
                "page size must be 1..={MAX_RESTORE_PAGE}, got {limit}"
            )));
        }
        let (entries, next) = self.restores.index.list(status, page_token, limit).await?;
        let now = self.clock_ms();
        Ok(RestorePage {
            jobs: entries
                .iter()
                .filter_map(|e| RestoreView::of(e, now, false))
                .collect(),
            next_page_token: next,
        })
    }

    /// Cancel a pending or running job: it rolls back (every copied object deleted, the
    /// target dropped, the lease released) and ends Cancelled. Returns once the cancel is
    /// recorded; `wait_restore` waits for the rollback.
    pub async fn cancel_restore(&self, job: JobId) -> Result<RestoreView, Error> {
        if job == 0 {
            return Err(Error::invalid_argument("job id must not be 0"));
        }
        if !self.restores.index.exists(job).await? {
            return Err(job_not_found(job));
        }
        self.registry
            .execute::<snapvault_actors::restore::RestoreJob>(
                &restore_stream(job),
                RestoreCommand::Cancel,
                job,
            )
            .await?;
        self.restores.poke();
        self.restore_status(job).await
    }

    /// Wait until the job is Completed, Failed or Cancelled, calling `progress` with each
    /// view (every `poll`), at most `timeout`.
    pub async fn wait_restore(
        &self,
        job: JobId,
        poll: Duration,
        timeout: Option<Duration>,
        mut progress: impl FnMut(&RestoreView),
    ) -> Result<RestoreView, Error> {
        let started = tokio::time::Instant::now();
        // Take part in it while waiting (it may have been left by a crashed process, and in
        // a one-shot process nothing else would drive it).
        let first = self.restore_status(job).await?;
        if !first.status.is_terminal() {
            self.restores.adopt(job, None);
        }
        loop {
            let view = self.restore_status(job).await?;
            progress(&view);
            if view.status.is_terminal() {
                return Ok(view);
            }
            if timeout.is_some_and(|t| started.elapsed() >= t) {
                return Err(Error::unavailable(format!(
                    "restore job {job} is still {} after {:?}; it goes on in the background",
                    view.status.as_str(),
                    timeout.unwrap_or_default()
                )));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Which snapshot segment each restored segment of `job` came from, file by file (read
    /// from the job's copy tasks). The whole plan is returned, so keep it to jobs of a size
    /// that fits in memory (tests, the demo, audits).
    pub async fn restore_segments(&self, job: JobId) -> Result<Vec<RestoredSegment>, Error> {
        let entry = self
            .restores
            .index
            .get(job)
            .await?
            .ok_or_else(|| job_not_found(job))?;
        let mut out = Vec::new();
        for t in &entry.state.tasks {
            let stream = snapvault_events::domain::restore::copy_task_stream(job, t.task);
            let segments = self
                .registry
                .inspect_latest::<snapvault_actors::restore::CopyTask, _>(&stream, |_, s| {
                    s.segments.clone()
                })
                .await?;
            self.registry.release(&stream);
            for p in &segments {
                let items =
                    snapvault_actors::restore::copy_task::copy_items(std::slice::from_ref(p));
                out.push(RestoredSegment {
                    source_segment_id: p.source_segment_id,
                    segment_id: p.segment.segment_id,
                    files: items.into_iter().map(|i| (i.source_key, i.dest)).collect(),
                });
            }
        }
        Ok(out)
    }

    fn clock_ms(&self) -> u64 {
        self.registry.clock().now_ms()
    }
}
