//! The job runner: the ractor actor that drives one restore job to its end.
//!
//! It is a thin loop around the job's recorded state. On every `Advance` it reads the job
//! (caught up with the log) and does the one thing that state calls for — prepare, start copy
//! tasks, commit, roll back — then asks itself to advance again. Copy tasks run as
//! [`CopyRunner`] children linked to it: a child that panics is a supervision event here, and
//! its task runs again after a backoff (a bounded number of times, then the job fails).
//!
//! Transient errors (the log or the store unreachable) are retried with capped exponential
//! backoff, forever: a job never fails because the network blinked; only a permanent error
//! (a missing or corrupt source, a name taken) fails it, and a failed job rolls back.
//!
//! Stopping: a cancel (or a node shutdown) raises the job's stop signal; copiers stop between
//! files after recording their progress and report `Stopped`. Only when no copier is left
//! does a rollback start, so no copy can land after the rollback listed the target's prefix.

use crate::restore::context::RestoreContext;
use crate::restore::copier::{CopyRunner, CopyRunnerArgs, TaskOutcome};
use crate::restore::steps;
use crate::restore::throttle::Throttle;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use snapvault_events::domain::JobId;
use snapvault_events::domain::restore::{RestoreCommand, RestoreStatus};
use snapvault_events::{Error, ErrorCode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

pub enum RunnerMsg {
    /// Look at the job and do the next step.
    Advance,
    /// A copy task ended.
    TaskFinished { task: u32, outcome: TaskOutcome },
    /// Stop copying: the job was cancelled (roll back next), or the node shuts down (leave
    /// the job as it is for the next start).
    Stop { shutdown: bool },
    /// Re-read the job while copies run (a cancel recorded by another node).
    Poll,
}

pub struct RunnerArgs {
    pub ctx: RestoreContext,
    pub job_id: JobId,
    /// Started by the resume at node start: destinations that exist may be from before.
    pub resumed: bool,
}

pub struct RunnerState {
    ctx: RestoreContext,
    job_id: JobId,
    resumed: bool,
    stop_tx: watch::Sender<bool>,
    shutting_down: bool,
    in_flight: BTreeMap<u32, ActorId>,
    /// Tasks that failed transiently, with how often, and the time before which they wait.
    retries: BTreeMap<u32, u32>,
    waiting: BTreeSet<u32>,
    permits: Option<Arc<Semaphore>>,
    throttle: Option<Arc<Throttle>>,
    backoff_ms: u64,
    polling: bool,
}

pub struct JobRunner;

fn is_transient(e: &Error) -> bool {
    matches!(e.code, ErrorCode::Unavailable | ErrorCode::Conflict)
}

impl RunnerState {
    fn schedule_advance(&mut self, myself: &ActorRef<RunnerMsg>) {
        let delay = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(self.ctx.config.retry_max_ms.max(1));
        myself.send_after(Duration::from_millis(delay), || RunnerMsg::Advance);
    }

    fn advanced_ok(&mut self) {
        self.backoff_ms = self.ctx.config.retry_initial_ms.max(1);
    }

    /// Record a permanent failure (retrying the append until the log takes it).
    async fn fail(&mut self, myself: &ActorRef<RunnerMsg>, reason: String) {
        tracing::warn!(job = self.job_id, %reason, "restore job fails; rolling back");
        let _ = self.stop_tx.send(true);
        match steps::job_command(&self.ctx, self.job_id, RestoreCommand::Fail { reason }).await {
            Ok(()) => {
                self.advanced_ok();
                let _ = myself.send_message(RunnerMsg::Advance);
            }
            Err(e) => {
                tracing::info!(job = self.job_id, error = %e, "cannot record the failure yet");
                self.schedule_advance(myself);
            }
        }
    }

    /// Handle a step's result: on to the next, retry later, or fail.
    async fn after_step(&mut self, myself: &ActorRef<RunnerMsg>, r: Result<(), Error>) {
        match r {
            Ok(()) => {
                self.advanced_ok();
                let _ = myself.send_message(RunnerMsg::Advance);
            }
            Err(e) if is_transient(&e) => {
                tracing::info!(job = self.job_id, error = %e, "restore step will retry");
                self.schedule_advance(myself);
            }
            Err(e) => self.fail(myself, e.to_string()).await,
        }
    }

    fn job_limits(&mut self, job: &crate::restore::job::RestoreJobState) -> (usize, bool) {
        let opts = job
            .request
            .as_ref()
            .map(|r| r.options.clone())
            .unwrap_or_default();
        let parallelism = opts.parallelism.max(1) as usize;
        if self.permits.is_none() {
            self.permits = Some(Arc::new(Semaphore::new(parallelism)));
            self.throttle = Throttle::new(opts.max_bytes_per_sec).map(Arc::new);
        }
        (parallelism, opts.verify_checksums)
    }

    async fn run_tasks(
        &mut self,
        myself: &ActorRef<RunnerMsg>,
        job: &crate::restore::job::RestoreJobState,
    ) {
        let (parallelism, verify) = self.job_limits(job);
        if job.completed_tasks.len() == job.tasks.len() {
            if self.in_flight.is_empty() {
                let r =
                    steps::job_command(&self.ctx, self.job_id, RestoreCommand::BeginCommit).await;
                self.after_step(myself, r).await;
            }
            return;
        }
        let Some(permits) = self.permits.clone() else {
            return;
        };
        for t in &job.tasks {
            if self.in_flight.len() >= parallelism {
                break;
            }
            if job.completed_tasks.contains(&t.task)
                || self.in_flight.contains_key(&t.task)
                || self.waiting.contains(&t.task)
            {
                continue;
            }
            let args = CopyRunnerArgs {
                ctx: self.ctx.clone(),
                job_id: self.job_id,
                task: t.task,
                verify,
                permits: permits.clone(),
                parallelism,
                throttle: self.throttle.clone(),
                stop: self.stop_tx.subscribe(),
                check_existing: self.resumed || self.retries.contains_key(&t.task),
                report: myself.clone(),
            };
            match Actor::spawn_linked(None, CopyRunner, args, myself.get_cell()).await {
                Ok((child, _)) => {
                    self.in_flight.insert(t.task, child.get_id());
                }
                Err(e) => {
                    tracing::warn!(job = self.job_id, task = t.task, error = %e, "cannot start a copy task");
                    self.schedule_advance(myself);
                    break;
                }
            }
        }
        if !self.polling {
            self.polling = true;
            myself.send_after(
                Duration::from_millis(self.ctx.config.status_poll_ms.max(10)),
                || RunnerMsg::Poll,
            );
        }
    }

    async fn advance(&mut self, myself: &ActorRef<RunnerMsg>) {
        if self.shutting_down {
            if self.in_flight.is_empty() {
                myself.stop(None);
            }
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
            Some(RestoreStatus::Running) => self.run_tasks(myself, &job).await,
            Some(RestoreStatus::Committing) => {
                let r = steps::commit(&self.ctx, &job).await;
                self.after_step(myself, r).await;
            }
            Some(RestoreStatus::RollingBack) => {
                let _ = self.stop_tx.send(true);
                if !self.in_flight.is_empty() {
                    // The copiers stop and report; the last report advances again.
                    return;
                }
                let r = steps::rollback(&self.ctx, &job).await;
                match r {
                    Ok(()) => {
                        self.advanced_ok();
                        let _ = myself.send_message(RunnerMsg::Advance);
                    }
                    Err(e) if is_transient(&e) => {
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
            Some(s) if s.is_terminal() => myself.stop(None),
            Some(_) => myself.stop(None),
        }
    }

    async fn task_finished(
        &mut self,
        myself: &ActorRef<RunnerMsg>,
        task: u32,
        outcome: TaskOutcome,
    ) {
        self.in_flight.remove(&task);
        if self.shutting_down {
            if self.in_flight.is_empty() {
                myself.stop(None);
            }
            return;
        }
        match outcome {
            TaskOutcome::Done => {
                match steps::job_command(
                    &self.ctx,
                    self.job_id,
                    RestoreCommand::CompleteTask { task },
                )
                .await
                {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) => {
                        // The task is Completed in its stream; the next run of it finds that
                        // at once and reports Done again.
                        self.schedule_advance(myself);
                        return;
                    }
                    // The job moved on (a cancel): the next advance sees it.
                    Err(_) => {}
                }
            }
            TaskOutcome::Failed { key, reason } => {
                self.fail(
                    myself,
                    format!("source file '{key}' cannot be restored: {reason}"),
                )
                .await;
                return;
            }
            TaskOutcome::Stopped => {}
            TaskOutcome::Retry(reason) => {
                let n = {
                    let n = self.retries.entry(task).or_insert(0);
                    *n += 1;
                    *n
                };
                if n > self.ctx.config.max_task_retries {
                    self.fail(
                        myself,
                        format!("copy task {task} gave up after {n} attempts: {reason}"),
                    )
                    .await;
                    return;
                }
                let delay = (self.ctx.config.retry_initial_ms.max(1) << n.min(16))
                    .min(self.ctx.config.retry_max_ms.max(1));
                tracing::info!(job = self.job_id, task, %reason, delay_ms = delay, "copy task will run again");
                self.waiting.insert(task);
                myself.send_after(Duration::from_millis(delay), move || {
                    RunnerMsg::TaskFinished {
                        task,
                        outcome: TaskOutcome::Stopped,
                    }
                });
                return;
            }
        }
        let _ = myself.send_message(RunnerMsg::Advance);
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
        let (stop_tx, _) = watch::channel(false);
        myself.send_message(RunnerMsg::Advance)?;
        let backoff_ms = args.ctx.config.retry_initial_ms.max(1);
        Ok(RunnerState {
            ctx: args.ctx,
            job_id: args.job_id,
            resumed: args.resumed,
            stop_tx,
            shutting_down: false,
            in_flight: BTreeMap::new(),
            retries: BTreeMap::new(),
            waiting: BTreeSet::new(),
            permits: None,
            throttle: None,
            backoff_ms,
            polling: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RunnerMsg>,
        msg: RunnerMsg,
        s: &mut RunnerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RunnerMsg::Advance => s.advance(&myself).await,
            RunnerMsg::TaskFinished { task, outcome } => {
                if outcome == TaskOutcome::Stopped && s.waiting.remove(&task) {
                    // The end of a retry's wait: run the task again.
                    if !s.shutting_down {
                        let _ = myself.send_message(RunnerMsg::Advance);
                    } else if s.in_flight.is_empty() {
                        myself.stop(None);
                    }
                } else {
                    s.task_finished(&myself, task, outcome).await;
                }
            }
            RunnerMsg::Stop { shutdown } => {
                let _ = s.stop_tx.send(true);
                if shutdown {
                    s.shutting_down = true;
                    if s.in_flight.is_empty() {
                        myself.stop(None);
                    }
                } else {
                    let _ = myself.send_message(RunnerMsg::Advance);
                }
            }
            RunnerMsg::Poll => {
                s.polling = false;
                if s.shutting_down || s.in_flight.is_empty() {
                    return Ok(());
                }
                if let Ok(job) = steps::job_state(&s.ctx, s.job_id).await
                    && job.status != Some(RestoreStatus::Running)
                {
                    let _ = s.stop_tx.send(true);
                }
                s.polling = true;
                myself.send_after(
                    Duration::from_millis(s.ctx.config.status_poll_ms.max(10)),
                    || RunnerMsg::Poll,
                );
            }
        }
        Ok(())
    }

    /// A copy task actor that panicked is run again later, like a transient failure.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RunnerMsg>,
        event: SupervisionEvent,
        s: &mut RunnerState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = event {
            let task = s
                .in_flight
                .iter()
                .find(|(_, id)| **id == who.get_id())
                .map(|(t, _)| *t);
            if let Some(task) = task {
                tracing::warn!(job = s.job_id, task, error = %err, "copy task actor failed");
                s.task_finished(
                    &myself,
                    task,
                    TaskOutcome::Retry(format!("copy task actor failed: {err}")),
                )
                .await;
            }
        }
        Ok(())
    }
}
