//! Restore operations of the client: start, status, list, cancel, wait, and the resume of
//! restore work at start.
//!
//! `start_restore` checks everything before it writes anything (the snapshot is Committed,
//! the partitions exist in it, the options are sane, the target name is free), then, in this
//! order, each step crash-safe:
//! 1. creates the target collection in `Restoring` and reserves its name on the catalog's
//!    fence — two restores into one name: exactly one wins, the other gets `already_exists`
//!    and leaves nothing;
//! 2. takes the job's lease on the snapshot (from here on the snapshot cannot be dropped);
//! 3. records the job (`Requested`), hands it to this node's runner and returns its id.
//!
//! A crash between 1 and 3 leaves a `Restoring` target (and maybe a lease) with no job; the
//! resume at the next start drops the target, frees the name and releases the lease.

use crate::client::Client;
use serde::{Deserialize, Serialize};
use snapvault_actors::crash_points::crash_point;
use snapvault_actors::restore::index::{JobEntry, TaskProgress};
use snapvault_actors::restore::job::check_request;
use snapvault_actors::restore::steps;
use snapvault_events::domain::JobId;
use snapvault_events::domain::restore::{
    CopyTaskStatus, RestoreCommand, RestoreOptions, RestoreRequest, RestoreStatus, RestoreTotals,
    restore_stream,
};
use snapvault_events::validate::validate_name;
use snapvault_events::{Error, ErrorCode};
use std::time::Duration;

/// Most jobs one list page returns.
pub const MAX_RESTORE_PAGE: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRestoreRequest {
    /// Collection (by name) the snapshot was taken of; it may be dropped by now.
    pub snapshot_collection: String,
    pub snapshot: String,
    /// Name of the new collection.
    pub target: String,
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
    /// Only in `restore status`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tasks: Vec<TaskView>,
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
        let tasks = if with_tasks {
            e.tasks
                .iter()
                .map(|(n, t)| task_view(*n, t, rolled_back))
                .collect()
        } else {
            Vec::new()
        };
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
            tasks,
        })
    }
}

fn task_view(task: u32, t: &TaskProgress, rolled_back: bool) -> TaskView {
    let status = match t.status {
        Some(CopyTaskStatus::Completed) => "completed",
        Some(CopyTaskStatus::Failed) => "failed",
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
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestorePage {
    pub jobs: Vec<RestoreView>,
    pub next_page_token: Option<u64>,
}

/// What the resume at start did about restores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResumeReport {
    pub jobs_resumed: usize,
    pub orphan_targets_dropped: usize,
    pub orphan_leases_released: usize,
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
        if let Err(e) = steps::ensure_target(ctx, &request, &meta).await {
            // Lost the name (or the log failed): retire what this call made.
            let _ = steps::abandon_target(
                ctx,
                request.target_collection_id,
                &request.target_name,
                request.job_id,
            )
            .await;
            return Err(e);
        }
        crash_point("restore.after_target");
        if let Err(e) = steps::take_lease(ctx, &request).await {
            let _ = steps::abandon_target(
                ctx,
                request.target_collection_id,
                &request.target_name,
                request.job_id,
            )
            .await;
            return Err(match e.code {
                ErrorCode::FailedPrecondition | ErrorCode::NotFound => {
                    Error::failed_precondition(format!(
                        "snapshot '{}' of collection '{}' can no longer be restored: {}",
                        req.snapshot, req.snapshot_collection, e.message
                    ))
                }
                _ => e,
            });
        }
        crash_point("restore.after_lease");
        let job = request.job_id;
        self.registry
            .execute::<snapvault_actors::restore::RestoreJob>(
                &restore_stream(job),
                RestoreCommand::Request { request },
                job,
            )
            .await?;
        crash_point("restore.after_request");
        self.restores.run(job, false);
        self.restore_status(job).await
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
        self.restores.cancelled(job);
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
        // Make sure something drives it (it may have been left by a crashed process).
        let first = self.restore_status(job).await?;
        if !first.status.is_terminal() {
            self.restores.run(job, true);
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

    /// Resume unfinished jobs and clean what a crash inside `start_restore` left. Only
    /// leftovers recorded at or before `head_at_start` and older than the grace period are
    /// touched, so a `start_restore` running right now is never mistaken for one.
    pub async fn resume_restores(&self, head_at_start: u64) -> Result<RestoreResumeReport, Error> {
        let mut report = RestoreResumeReport::default();
        let u = self.restores.index.unfinished().await?;
        for job in u.jobs {
            self.restores.run(job, true);
            report.jobs_resumed += 1;
        }
        let ctx = &self.restores.ctx;
        let now = self.clock_ms();
        let grace = ctx.config.orphan_grace_ms;
        for (cid, target) in u.orphan_targets {
            let old_enough = target.position <= head_at_start
                && now.saturating_sub(target.created_ms) >= grace.min(now);
            if !old_enough {
                continue;
            }
            let name = self.inspect_collection(cid, |_, s| s.name.clone()).await?;
            steps::abandon_target(ctx, cid, &name, target.job_id).await?;
            report.orphan_targets_dropped += 1;
        }
        for (snapshot_id, job) in self.snapshots.leases().await? {
            let state = self.restores.index.get(job).await?;
            let orphan = match &state {
                None => {
                    self.restores.index.lease_position(snapshot_id, job).await? <= head_at_start
                }
                Some(e) => e.state.status.is_some_and(RestoreStatus::is_terminal),
            };
            if orphan {
                steps::release_lease(ctx, snapshot_id, job).await?;
                report.orphan_leases_released += 1;
            }
        }
        Ok(report)
    }
}
