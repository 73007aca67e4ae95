//! The job runner: the ractor actor that coordinates one restore job on the node holding the
//! job's claim (design §10).
//!
//! It is a thin loop around the job's recorded state. On every `Advance` it reads the job
//! (caught up with the log) and does the one thing that state calls for — prepare, watch the
//! copy tasks, commit, roll back — then asks itself to advance again. It does not copy: copy
//! tasks are claimed and run by the restore manager of any node (this one included), so a
//! job's files are copied by every node that serves.
//!
//! While the job runs, the runner reads the restore index every `status_poll_ms`: a task
//! recorded Completed is recorded in the job (its node normally does that itself), a task
//! recorded Failed fails the job, and once every task is complete the job commits.
//!
//! Transient errors (the log or the store unreachable) are retried with capped exponential
//! backoff, forever: a job never fails because the network blinked; only a permanent error
//! (a missing or corrupt source, a name taken) fails it, and a failed job rolls back.
//!
//! Rollback first closes every unfinished copy task (`Abandon`: no new claim, no record, no
//! renewal), then waits until no task of the job has a live claim on any node — each copier
//! sees the job leave Running (or its record refused) and stops, or its claim lapses — so no
//! copy lands after the rollback listed the target's prefix. (A copier cut off past its
//! deadline that still writes lands on a deterministic key under the rolled-back target's
//! prefix, which GC reclaims as the leftover of a rolled-back restore.)

use crate::restore::CopyTask;
use crate::restore::context::RestoreContext;
use crate::restore::index::RestoreIndex;
use crate::restore::steps;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use snapvault_events::domain::JobId;
use snapvault_events::domain::restore::{
    CopyTaskCommand, CopyTaskStatus, RestoreCommand, RestoreStatus, copy_task_stream,
};
use snapvault_events::{Error, ErrorCode};
use std::time::Duration;
use tracing::Instrument;

pub enum RunnerMsg {
    /// Look at the job and do the next step.
    Advance,
    /// Stop: the node shuts down or lost the job's claim (leave the job as it is for whoever
    /// claims it next). With `shutdown: false`, advance at once (a cancel recorded here).
    Stop { shutdown: bool },
}

pub struct RunnerArgs {
    pub ctx: RestoreContext,
    pub index: RestoreIndex,
    pub job_id: JobId,
    /// The epoch of this node's claim on the job: every step it records is fenced by it.
    pub epoch: u64,
}

pub struct RunnerState {
    ctx: RestoreContext,
    index: RestoreIndex,
    job_id: JobId,
    stopped: bool,
    backoff_ms: u64,
}

pub struct JobRunner;

/// Another node coordinates the job now (this runner's epoch was fenced out).
fn is_claim_lost(e: &Error) -> bool {
    e.code == ErrorCode::FailedPrecondition && e.message.starts_with("claim lost")
}

impl RunnerState {
    fn schedule_advance(&mut self, myself: &ActorRef<RunnerMsg>) {
        let delay = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(self.ctx.config.retry_max_ms.max(1));
        myself.send_after(Duration::from_millis(delay), || RunnerMsg::Advance);
    }

    fn poll_later(&self, myself: &ActorRef<RunnerMsg>) {
        let delay = self.ctx.config.status_poll_ms.max(10);
        myself.send_after(Duration::from_millis(delay), || RunnerMsg::Advance);
    }

    fn advanced_ok(&mut self) {
        self.backoff_ms = self.ctx.config.retry_initial_ms.max(1);
    }

    /// Record a permanent failure (retrying the append until the log takes it).
    async fn fail(&mut self, myself: &ActorRef<RunnerMsg>, reason: String) {
        tracing::warn!(job = self.job_id, %reason, "restore job fails; rolling back");
        match steps::job_command(&self.ctx, self.job_id, RestoreCommand::Fail { reason }).await {
            Ok(()) => {
                self.advanced_ok();
                let _ = myself.send_message(RunnerMsg::Advance);
            }
            Err(e) if is_claim_lost(&e) => {
                self.stopped = true;
                myself.stop(None);
            }
            Err(e) => {
                tracing::info!(job = self.job_id, error = %e, "cannot record the failure yet");
                self.schedule_advance(myself);
            }
        }
    }

    /// Handle a step's result: on to the next, retry later, stop (the claim is gone), or fail.
    async fn after_step(&mut self, myself: &ActorRef<RunnerMsg>, r: Result<(), Error>) {
        match r {
            Ok(()) => {
                self.advanced_ok();
                let _ = myself.send_message(RunnerMsg::Advance);
            }
            Err(e) if is_claim_lost(&e) => {
                tracing::info!(job = self.job_id, error = %e, "another node coordinates the job; this runner stops");
                self.stopped = true;
                myself.stop(None);
            }
            Err(e) if e.is_transient() => {
                tracing::info!(job = self.job_id, error = %e, "restore step will retry");
                self.schedule_advance(myself);
            }
            Err(e) => self.fail(myself, e.to_string()).await,
        }
    }

    /// While Running: record tasks that ended, commit when all are complete.
    async fn watch_tasks(
        &mut self,
        myself: &ActorRef<RunnerMsg>,
        job: &crate::restore::job::RestoreJobState,
    ) {
        if job.completed_tasks.len() == job.tasks.len() {
            let r = steps::job_command(&self.ctx, self.job_id, RestoreCommand::BeginCommit).await;
            self.after_step(myself, r).await;
            return;
        }
        let entry = match self.index.get(self.job_id).await {
            Ok(Some(e)) => e,
            _ => {
                self.poll_later(myself);
                return;
            }
        };
        for (n, t) in &entry.tasks {
            match t.status {
                Some(CopyTaskStatus::Completed) if !job.completed_tasks.contains(n) => {
                    let r = steps::job_command(
                        &self.ctx,
                        self.job_id,
                        RestoreCommand::CompleteTask { task: *n },
                    )
                    .await;
                    if let Err(e) = r
                        && e.is_transient()
                    {
                        self.schedule_advance(myself);
                        return;
                    }
                }
                Some(CopyTaskStatus::Failed) => {
                    let failure = t.failure.clone().unwrap_or_default();
                    self.fail(
                        myself,
                        format!("copy task {n} failed: source file {failure}"),
                    )
                    .await;
                    return;
                }
                _ => {}
            }
        }
        let completed = entry
            .tasks
            .values()
            .filter(|t| t.status == Some(CopyTaskStatus::Completed))
            .count();
        if completed == job.tasks.len() {
            let _ = myself.send_message(RunnerMsg::Advance);
        } else {
            self.poll_later(myself);
        }
    }

    /// May the rollback delete now? First every unfinished task is closed (`Abandon`: from
    /// then on no node can claim it or record anything for it), then the index is caught up
    /// with the log — so every claim taken before the close is in it — and no task may have
    /// a live claim. After that, nothing can land under the target any more.
    async fn copies_stopped(&self, job: &crate::restore::job::RestoreJobState) -> bool {
        for t in &job.tasks {
            if job.completed_tasks.contains(&t.task) {
                continue;
            }
            let stream = copy_task_stream(self.job_id, t.task);
            match self
                .ctx
                .registry
                .execute::<CopyTask>(&stream, CopyTaskCommand::Abandon, self.job_id)
                .await
            {
                Ok(_) => {}
                // Never planned (a crash mid-plan): nothing can run it.
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(_) => return false,
            }
        }
        if self.index.sync().await.is_err() {
            return false;
        }
        let now_ms = self.ctx.clock.now_ms();
        match self.index.get(self.job_id).await {
            Ok(Some(e)) => e.tasks.values().all(|t| t.claim.live(now_ms).is_none()),
            _ => false,
        }
    }

    async fn advance(&mut self, myself: &ActorRef<RunnerMsg>) {
        if self.stopped {
            return;
        }
        let job = match steps::job_state(&self.ctx, self.job_id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::info!(job = self.job_id, error = %e, "cannot read the restore job; retrying");
                self.schedule_advance(myself);
                return;
            }
        };
        match job.status {
            None => {
                tracing::warn!(job = self.job_id, "no such restore job; the runner stops");
                myself.stop(None);
            }
            Some(RestoreStatus::Pending) => {
                let r = steps::prepare(&self.ctx, &job).await;
                self.after_step(myself, r).await;
            }
            Some(RestoreStatus::Running) => self.watch_tasks(myself, &job).await,
            Some(RestoreStatus::Committing) => {
                let r = steps::commit(&self.ctx, &job).await;
                self.after_step(myself, r).await;
            }
            Some(RestoreStatus::RollingBack) => {
                if !self.copies_stopped(&job).await {
                    // Copiers stop at their node's next reconcile, or their claims lapse.
                    self.poll_later(myself);
                    return;
                }
                match steps::rollback(&self.ctx, &job).await {
                    Ok(()) => {
                        self.advanced_ok();
                        let _ = myself.send_message(RunnerMsg::Advance);
                    }
                    Err(e) if is_claim_lost(&e) => {
                        self.stopped = true;
                        myself.stop(None);
                    }
                    Err(e) if e.is_transient() => {
                        // A rollback never gives up: it is what leaves nothing behind.
                        tracing::info!(job = self.job_id, error = %e, "rollback will retry");
                        self.schedule_advance(myself);
                    }
                    Err(e) => {
                        // Not something time fixes (a bug guard fired): say so loudly, keep
                        // the job as it is for an operator, and try again much later.
                        tracing::error!(job = self.job_id, error = %e, "restore rollback refused");
                        self.backoff_ms = self.ctx.config.retry_max_ms.max(1);
                        self.schedule_advance(myself);
                    }
                }
            }
            Some(_) => myself.stop(None),
        }
    }
}

#[ractor::async_trait]
impl Actor for JobRunner {
    type Msg = RunnerMsg;
    type State = RunnerState;
    type Arguments = RunnerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunnerMsg>,
        args: RunnerArgs,
    ) -> Result<RunnerState, ActorProcessingErr> {
        myself.send_message(RunnerMsg::Advance)?;
        // The job's first coordinator starts it; any later one took it over (a node died or
        // gave it up): one line either way, with the node, so a failover shows in the logs.
        tracing::info!(
            job = args.job_id,
            node = %args.ctx.work.node_id,
            epoch = args.epoch,
            "{}",
            if args.epoch <= 1 {
                "restore started"
            } else {
                "restore taken over by this node"
            }
        );
        let backoff_ms = args.ctx.config.retry_initial_ms.max(1);
        let ctx = RestoreContext {
            coordinator_epoch: Some(args.epoch),
            ..args.ctx
        };
        Ok(RunnerState {
            ctx,
            index: args.index,
            job_id: args.job_id,
            stopped: false,
            backoff_ms,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RunnerMsg>,
        msg: RunnerMsg,
        s: &mut RunnerState,
    ) -> Result<(), ActorProcessingErr> {
        // Every line a step logs carries the job (and the coordinating epoch).
        let span = tracing::info_span!(
            "restore_job",
            job = s.job_id,
            epoch = s.ctx.coordinator_epoch
        );
        match msg {
            RunnerMsg::Advance | RunnerMsg::Stop { shutdown: false } => {
                s.advance(&myself).instrument(span).await
            }
            RunnerMsg::Stop { shutdown: true } => {
                s.stopped = true;
                myself.stop(None);
            }
        }
        Ok(())
    }
}
