//! The restore manager: this node's part in restore work, claimed from the log (design §10).
//!
//! Every node runs one. Its **reconciler** tick (every `reconcile_ms`, with a deterministic
//! jitter) reads the restore index and
//! - claims the coordination of every unfinished job in its scope whose claim is free or past
//!   its deadline, and runs a [`JobRunner`] for it (prepare, commit, rollback);
//! - claims copy tasks of running jobs — a task of a shard this node serves at once, any other
//!   after it has been free for `placement_delay_ms` — up to the node's `max_tasks` and the
//!   job's parallelism (counted over every node's live claims), and runs a [`CopyRunner`] for
//!   each, within the node's file-copy and bandwidth limits and the job's bandwidth limit;
//! - renews the claims it holds once a third of their lifetime is left, and stops the work of
//!   a claim it lost (another node took it) or could not renew in time (it fences itself out);
//! - stops its copies of a job that left Running (a cancel or failure recorded anywhere).
//!
//! The scope is `All` on a long-running node and `Own` in a one-shot CLI process, which
//! takes part only in the jobs it started or waits for. Runners and copy tasks are linked
//! children: one that panics is a supervision event here; a job's runner is started again
//! after a backoff (a bounded number of times), a task is released and retried like a
//! transient failure.

use crate::claim::ClaimState;
use crate::claim_holder::Claimable;
use crate::restore::context::RestoreContext;
use crate::restore::copier::{CopyRunner, CopyRunnerArgs, TaskOutcome};
use crate::restore::index::{JobEntry, RestoreIndex};
use crate::restore::runner::{JobRunner, RunnerArgs, RunnerMsg};
use crate::restore::throttle::{Throttle, Throttles};
use crate::restore::{CopyTask, RestoreJob};
use crate::work::Scope;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use snapvault_events::Error;
use snapvault_events::domain::JobId;
use snapvault_events::domain::claim::{ClaimCommand, ClaimEvent};
use snapvault_events::domain::restore::{
    CopyTaskCommand, CopyTaskEvent, CopyTaskStatus, RestoreCommand, RestoreEvent, RestoreStatus,
    copy_task_stream, restore_stream,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot, watch};

/// Restarts of one job's runner after panics before the manager leaves it to another node
/// (or the next start): it releases the job's claim.
const MAX_RUNNER_RESTARTS: u32 = 5;
const RUNNER_RESTART_BACKOFF_MS: u64 = 500;
/// Most jobs one node coordinates at once (their copy tasks are bounded by `max_tasks`).
const MAX_JOBS_COORDINATED: usize = 64;
/// After this many runner failures a job waits `RUNNER_GIVE_UP_MS` before this node claims
/// it again (another node may take it meanwhile).
const RUNNER_GIVE_UP_MS: u64 = 600_000;
/// Copy tasks of one job a node taking every unit claims per reconcile tick.
const CLAIMS_PER_JOB_PER_TICK: usize = 1;

pub enum ManagerMsg {
    /// Reconcile, renew, and schedule the next tick.
    Tick,
    /// Take part in `job` (this process started it or waits for it), with the claim on its
    /// coordination when the caller already holds one.
    Adopt { job: JobId, claim: Option<Held> },
    /// Something changed (a cancel recorded here): reconcile now.
    Poke,
    /// A copy task ended here.
    TaskFinished {
        job: JobId,
        task: u32,
        epoch: u64,
        outcome: TaskOutcome,
    },
    /// Stop every runner and copy, release what is held, and answer when they are gone.
    Shutdown { done: oneshot::Sender<()> },
}

/// A claim this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub epoch: u64,
    pub deadline_ms: u64,
}

struct JobRun {
    runner: ActorRef<RunnerMsg>,
    claim: Held,
}

struct TaskRun {
    actor: ActorId,
    claim: Held,
    stop: watch::Sender<bool>,
    /// Shared with the copier: it stops by itself when this is about to pass.
    deadline_ms: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Job(JobId),
    Task(JobId, u32),
}

pub struct ManagerArgs {
    pub ctx: RestoreContext,
    pub index: RestoreIndex,
    pub starting: Starting,
}

/// Jobs a `restore start` of this process is between recording and handing over: their
/// claim is this node's, yet no runner holds it; the reconciler must not take them over as
/// if an earlier process had left them.
#[derive(Clone, Default)]
pub struct Starting(Arc<std::sync::Mutex<BTreeSet<JobId>>>);

impl Starting {
    /// Mark `job` as starting until the guard is dropped.
    pub fn guard(&self, job: JobId) -> StartingGuard {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(job);
        StartingGuard {
            set: self.clone(),
            job,
        }
    }

    fn contains(&self, job: JobId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&job)
    }
}

pub struct StartingGuard {
    set: Starting,
    job: JobId,
}

impl Drop for StartingGuard {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.job);
    }
}

pub struct ManagerState {
    ctx: RestoreContext,
    index: RestoreIndex,
    starting: Starting,
    own: BTreeSet<JobId>,
    jobs: BTreeMap<JobId, JobRun>,
    tasks: BTreeMap<(JobId, u32), TaskRun>,
    by_actor: BTreeMap<ActorId, Unit>,
    /// Transient failures of a task on this node, and the time before which it is not
    /// taken again here.
    retries: BTreeMap<(JobId, u32), u32>,
    not_before_ms: BTreeMap<(JobId, u32), u64>,
    restarts: BTreeMap<JobId, u32>,
    /// A job whose runner failed here is not claimed again here before this time.
    job_not_before_ms: BTreeMap<JobId, u64>,
    /// File copies in flight on this node, over every task.
    permits: Arc<Semaphore>,
    node_throttle: Option<Arc<Throttle>>,
    job_throttles: BTreeMap<JobId, Arc<Throttle>>,
    ticks: u64,
    shutting_down: Option<Vec<oneshot::Sender<()>>>,
}

pub struct RestoreManager;

fn claimed_epoch(events: impl IntoIterator<Item = Option<ClaimEvent>>) -> Option<Held> {
    events.into_iter().flatten().find_map(|e| match e {
        ClaimEvent::Claimed {
            epoch, deadline_ms, ..
        } => Some(Held { epoch, deadline_ms }),
        _ => None,
    })
}

/// May work under `held` go on after a renewal that answered `r`? Yes once recorded; after a
/// transient error only while more than the stop margin of the claim is left; never once the
/// claim is lost (another node holds it, or the unit ended).
fn still_holds(
    r: &Result<(), Error>,
    held: &Held,
    now_ms: u64,
    work: &crate::work::WorkConfig,
    what: &str,
) -> bool {
    match r {
        Ok(()) => true,
        Err(e) if e.is_transient() => {
            held.deadline_ms.saturating_sub(now_ms) > work.stop_below_ms()
        }
        Err(e) => {
            tracing::info!(unit = what, error = %e, "claim lost");
            false
        }
    }
}

/// This node's share of `entry`'s bandwidth limit: the limit divided among the nodes holding
/// its tasks now, this one included. `None` when the job has no limit.
fn job_share(entry: &JobEntry, node: &str, now_ms: u64) -> Option<u64> {
    let limit = entry.state.request.as_ref()?.options.max_bytes_per_sec?;
    let mut holders: BTreeSet<&str> = entry
        .tasks
        .values()
        .filter_map(|t| t.claim.live(now_ms).map(|c| c.node.as_str()))
        .collect();
    holders.insert(node);
    Some((limit / holders.len() as u64).max(1))
}

impl ManagerState {
    fn now_ms(&self) -> u64 {
        self.ctx.clock.now_ms()
    }

    fn node(&self) -> &str {
        &self.ctx.work.node_id
    }

    fn claim_command(&self, now_ms: u64) -> ClaimCommand {
        ClaimCommand::Claim {
            node: self.node().to_string(),
            deadline_ms: now_ms + self.ctx.work.claim_ttl_ms,
            take_over_own: self.ctx.work.take_over_own,
        }
    }

    /// May this node claim a unit whose claim state is `c` now?
    fn claimable(&self, c: &ClaimState, now_ms: u64) -> bool {
        match c.live(now_ms) {
            None => true,
            Some(h) => self.ctx.work.take_over_own && h.node == self.node(),
        }
    }

    fn in_scope(&self, job: JobId) -> bool {
        self.ctx.work.scope == Scope::All || self.own.contains(&job)
    }

    async fn start_runner(&mut self, myself: &ActorRef<ManagerMsg>, job: JobId, claim: Held) {
        if self.shutting_down.is_some() || self.jobs.contains_key(&job) {
            return;
        }
        let args = RunnerArgs {
            ctx: self.ctx.clone(),
            index: self.index.clone(),
            job_id: job,
            epoch: claim.epoch,
        };
        match Actor::spawn_linked(None, JobRunner, args, myself.get_cell()).await {
            Ok((runner, _)) => {
                self.by_actor.insert(runner.get_id(), Unit::Job(job));
                self.jobs.insert(job, JobRun { runner, claim });
            }
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot start the restore job runner");
                self.release_job(job, claim.epoch).await;
            }
        }
    }

    async fn release_job(&self, job: JobId, epoch: u64) {
        let release = RestoreCommand::Claim(ClaimCommand::Release {
            node: self.node().to_string(),
            epoch,
        });
        let _ = self
            .ctx
            .registry
            .execute::<RestoreJob>(&restore_stream(job), release, job)
            .await;
    }

    async fn release_task(&self, job: JobId, task: u32, epoch: u64) {
        let release = CopyTaskCommand::Claim(ClaimCommand::Release {
            node: self.node().to_string(),
            epoch,
        });
        let _ = self
            .ctx
            .registry
            .execute::<CopyTask>(&copy_task_stream(job, task), release, job)
            .await;
    }

    /// Claim the coordination of `job` and run it here.
    async fn take_job(&mut self, myself: &ActorRef<ManagerMsg>, job: JobId, now_ms: u64) {
        let claim = RestoreCommand::Claim(self.claim_command(now_ms));
        match self
            .ctx
            .registry
            .execute::<RestoreJob>(&restore_stream(job), claim, job)
            .await
        {
            Ok(done) => {
                let held = claimed_epoch(done.events.into_iter().map(|e| match e {
                    RestoreEvent::Claim(c) => Some(c),
                    _ => None,
                }));
                if let Some(held) = held {
                    tracing::info!(
                        job,
                        node = self.node(),
                        epoch = held.epoch,
                        "claimed restore job"
                    );
                    self.start_runner(myself, job, held).await;
                }
            }
            Err(e) => tracing::debug!(job, error = %e, "restore job not claimed"),
        }
    }

    /// Claim copy task `task` of `entry` and run it here. `false` when it was not taken.
    async fn take_task(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        entry: &JobEntry,
        task: u32,
        now_ms: u64,
    ) -> bool {
        let job = entry.state.job_id();
        let claim = CopyTaskCommand::Claim(self.claim_command(now_ms));
        let held = match self
            .ctx
            .registry
            .execute::<CopyTask>(&copy_task_stream(job, task), claim, job)
            .await
        {
            Ok(done) => claimed_epoch(done.events.into_iter().map(|e| match e {
                CopyTaskEvent::Claim(c) => Some(c),
                _ => None,
            })),
            Err(e) => {
                tracing::debug!(job, task, error = %e, "copy task not claimed");
                None
            }
        };
        let Some(held) = held else {
            return false;
        };
        let opts = entry
            .state
            .request
            .as_ref()
            .map(|r| r.options.clone())
            .unwrap_or_default();
        let mut throttles = Vec::new();
        if let Some(t) = &self.node_throttle {
            throttles.push(t.clone());
        }
        if !self.job_throttles.contains_key(&job)
            && let Some(t) = Throttle::new(job_share(entry, self.node(), now_ms))
        {
            self.job_throttles.insert(job, Arc::new(t));
        }
        if let Some(t) = self.job_throttles.get(&job) {
            throttles.push(t.clone());
        }
        let (stop, stop_rx) = watch::channel(false);
        let deadline_ms = Arc::new(AtomicU64::new(held.deadline_ms));
        let args = CopyRunnerArgs {
            ctx: self.ctx.clone(),
            job_id: job,
            task,
            epoch: held.epoch,
            claim_deadline_ms: deadline_ms.clone(),
            stop_below_ms: self.ctx.work.stop_below_ms(),
            verify: opts.verify_checksums,
            permits: self.permits.clone(),
            parallelism: (opts.parallelism.max(1) as usize)
                .min(self.ctx.work.max_copies_in_flight.max(1)),
            throttle: Throttles(throttles),
            stop: stop_rx,
            // A claim after an earlier one: its holder may have copied files it did not get
            // to record, so existing destinations are checked.
            check_existing: held.epoch > 1 || self.retries.contains_key(&(job, task)),
            report: myself.clone(),
        };
        match Actor::spawn_linked(None, CopyRunner, args, myself.get_cell()).await {
            Ok((child, _)) => {
                tracing::debug!(
                    job,
                    task,
                    node = self.node(),
                    epoch = held.epoch,
                    "claimed copy task"
                );
                self.by_actor.insert(child.get_id(), Unit::Task(job, task));
                self.tasks.insert(
                    (job, task),
                    TaskRun {
                        actor: child.get_id(),
                        claim: held,
                        stop,
                        deadline_ms,
                    },
                );
                true
            }
            Err(e) => {
                tracing::warn!(job, task, error = %e, "cannot start a copy task");
                self.release_task(job, task, held.epoch).await;
                false
            }
        }
    }

    /// Renew every claim this node holds that is due; stop the work of the ones it lost.
    async fn renew(&mut self, now_ms: u64) {
        let work = self.ctx.work.clone();
        let due = |h: &Held| h.deadline_ms.saturating_sub(now_ms) < work.renew_below_ms();
        let renewed_deadline_ms = now_ms + work.claim_ttl_ms;
        let jobs: Vec<(JobId, Held)> = self
            .jobs
            .iter()
            .filter(|(_, r)| due(&r.claim))
            .map(|(j, r)| (*j, r.claim))
            .collect();
        for (job, held) in jobs {
            let (renewed, holds) = self
                .renew_one::<RestoreJob>(&restore_stream(job), job, &held, now_ms)
                .await;
            let Some(run) = self.jobs.get_mut(&job) else {
                continue;
            };
            if renewed {
                run.claim.deadline_ms = renewed_deadline_ms;
            }
            if !holds {
                tracing::warn!(job, node = %work.node_id, "stopping the coordination of a restore job whose claim lapsed");
                let _ = run.runner.send_message(RunnerMsg::Stop { shutdown: true });
            }
        }
        let tasks: Vec<((JobId, u32), Held)> = self
            .tasks
            .iter()
            .filter(|(_, r)| due(&r.claim))
            .map(|(k, r)| (*k, r.claim))
            .collect();
        for ((job, task), held) in tasks {
            let (renewed, holds) = self
                .renew_one::<CopyTask>(&copy_task_stream(job, task), job, &held, now_ms)
                .await;
            let Some(run) = self.tasks.get_mut(&(job, task)) else {
                continue;
            };
            if renewed {
                run.claim.deadline_ms = renewed_deadline_ms;
                run.deadline_ms
                    .store(renewed_deadline_ms, std::sync::atomic::Ordering::SeqCst);
            }
            if !holds {
                let _ = run.stop.send(true);
            }
        }
    }

    /// Renew one claim this node holds: (renewed, still held — see [`still_holds`]).
    async fn renew_one<A: Claimable>(
        &self,
        stream: &str,
        correlation_id: u64,
        held: &Held,
        now_ms: u64,
    ) -> (bool, bool) {
        let work = &self.ctx.work;
        let renew = A::claim_command(ClaimCommand::Renew {
            node: work.node_id.clone(),
            epoch: held.epoch,
            deadline_ms: now_ms + work.claim_ttl_ms,
        });
        let r = self
            .ctx
            .registry
            .execute::<A>(stream, renew, correlation_id)
            .await
            .map(|_| ());
        (r.is_ok(), still_holds(&r, held, now_ms, work, stream))
    }

    /// What this node runs now, for the metrics (after every message).
    fn publish_gauges(&self) {
        let metrics = self.ctx.registry.metrics();
        metrics
            .restore_jobs_coordinated
            .set(i64::try_from(self.jobs.len()).unwrap_or(i64::MAX));
        metrics
            .restore_tasks_running
            .set(i64::try_from(self.tasks.len()).unwrap_or(i64::MAX));
    }

    /// Find work in the index and claim what this node should run.
    async fn reconcile(&mut self, myself: &ActorRef<ManagerMsg>) {
        if self.shutting_down.is_some() {
            return;
        }
        if let Err(e) = self.index.sync().await {
            tracing::debug!(error = %e, "restore index not caught up; reconciling later");
            return;
        }
        let entries = match self.index.unfinished().await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the restore index");
                return;
            }
        };
        let now_ms = self.now_ms();
        let running: BTreeSet<JobId> = entries
            .iter()
            .filter(|e| e.state.status == Some(RestoreStatus::Running))
            .map(|e| e.state.job_id())
            .collect();
        // Copies of a job that left Running anywhere stop (and release their claims).
        for ((job, _), run) in &self.tasks {
            if !running.contains(job) {
                let _ = run.stop.send(true);
            }
        }
        let unfinished: BTreeSet<JobId> = entries.iter().map(|e| e.state.job_id()).collect();
        self.job_throttles.retain(|j, _| unfinished.contains(j));
        // A job's bandwidth limit is the job's, over every node: each node copying for it
        // gets an equal share (recomputed every tick, as nodes take and finish tasks).
        for entry in &entries {
            if let (Some(t), Some(share)) = (
                self.job_throttles.get(&entry.state.job_id()),
                job_share(entry, self.node(), now_ms),
            ) {
                t.set_rate(share);
            }
        }
        self.own
            .retain(|j| unfinished.contains(j) || self.jobs.contains_key(j));
        for entry in &entries {
            let job = entry.state.job_id();
            if job == 0 || !self.in_scope(job) {
                continue;
            }
            if !self.jobs.contains_key(&job)
                && self.jobs.len() < MAX_JOBS_COORDINATED
                && !self.starting.contains(job)
                && self
                    .job_not_before_ms
                    .get(&job)
                    .is_none_or(|t| *t <= now_ms)
                && self.claimable(&entry.state.claim, now_ms)
            {
                self.take_job(myself, job, now_ms).await;
            }
            if running.contains(&job) {
                self.take_tasks(myself, entry, now_ms).await;
            }
        }
    }

    async fn take_tasks(&mut self, myself: &ActorRef<ManagerMsg>, entry: &JobEntry, now_ms: u64) {
        let job = entry.state.job_id();
        // A node taking every unit claims one task of a job per tick (and one more each time
        // a task of it ends here): nodes pull work as they finish it, so even a job of a few
        // tasks spreads over the nodes. A one-shot process is alone on its job: it claims up
        // to its limits at once.
        let mut budget = match self.ctx.work.scope {
            Scope::All => CLAIMS_PER_JOB_PER_TICK,
            Scope::Own => usize::MAX,
        };
        let parallelism = entry
            .state
            .request
            .as_ref()
            .map_or(1, |r| r.options.parallelism.max(1)) as usize;
        let mut live = entry
            .tasks
            .values()
            .filter(|t| t.claim.live(now_ms).is_some())
            .count();
        let started_ms = entry.state.started_ms.unwrap_or(0);
        for (n, t) in &entry.tasks {
            if self.tasks.len() >= self.ctx.work.max_tasks || live >= parallelism || budget == 0 {
                return;
            }
            let key = (job, *n);
            if t.status != Some(CopyTaskStatus::Planned)
                || self.tasks.contains_key(&key)
                || entry.state.completed_tasks.contains(n)
                || !self.claimable(&t.claim, now_ms)
                || self.not_before_ms.get(&key).is_some_and(|t| *t > now_ms)
            {
                continue;
            }
            let free_since = t.claim.free_since_ms().max(started_ms);
            if !self.ctx.work.serves(t.shard)
                && now_ms < free_since.saturating_add(self.ctx.work.placement_delay_ms)
            {
                continue;
            }
            if self.take_task(myself, entry, *n, now_ms).await {
                live += 1;
                budget -= 1;
            }
        }
    }

    /// What to do when a copy task ended here.
    async fn task_finished(&mut self, job: JobId, task: u32, epoch: u64, outcome: TaskOutcome) {
        if let Some(run) = self.tasks.get(&(job, task))
            && run.claim.epoch == epoch
        {
            let run = self.tasks.remove(&(job, task));
            if let Some(run) = run {
                self.by_actor.remove(&run.actor);
            }
        }
        let registry = &self.ctx.registry;
        match outcome {
            TaskOutcome::Done => {
                self.retries.remove(&(job, task));
                self.not_before_ms.remove(&(job, task));
                // The coordinator also records it from the index; this just saves it a poll.
                let _ = registry
                    .execute::<RestoreJob>(
                        &restore_stream(job),
                        RestoreCommand::CompleteTask { task },
                        job,
                    )
                    .await;
            }
            TaskOutcome::Failed { key, reason } => {
                let reason = format!("source file '{key}' cannot be restored: {reason}");
                tracing::warn!(job, task, %reason, "restore job fails; rolling back");
                let _ = registry
                    .execute::<RestoreJob>(
                        &restore_stream(job),
                        RestoreCommand::Fail { reason },
                        job,
                    )
                    .await;
            }
            TaskOutcome::Stopped => self.release_task(job, task, epoch).await,
            TaskOutcome::Lost => {}
            TaskOutcome::Retry(reason) => {
                registry.metrics().restore_task_retries.inc();
                let n = {
                    let n = self.retries.entry((job, task)).or_insert(0);
                    *n += 1;
                    *n
                };
                let cfg = &self.ctx.config;
                if n > cfg.max_task_retries {
                    let reason = format!("copy task {task} gave up after {n} attempts: {reason}");
                    tracing::warn!(job, task, %reason, "restore job fails; rolling back");
                    let _ = registry
                        .execute::<RestoreJob>(
                            &restore_stream(job),
                            RestoreCommand::Fail { reason },
                            job,
                        )
                        .await;
                } else {
                    let delay =
                        (cfg.retry_initial_ms.max(1) << n.min(16)).min(cfg.retry_max_ms.max(1));
                    tracing::info!(job, task, %reason, delay_ms = delay, "copy task will run again");
                    self.not_before_ms
                        .insert((job, task), self.now_ms() + delay);
                }
                self.release_task(job, task, epoch).await;
            }
        }
        self.maybe_done_shutting_down();
    }

    fn forget(&mut self, actor: ActorId) -> Option<Unit> {
        let unit = self.by_actor.remove(&actor)?;
        match unit {
            Unit::Job(job) => {
                self.jobs.remove(&job);
            }
            Unit::Task(job, task) => {
                self.tasks.remove(&(job, task));
            }
        }
        self.maybe_done_shutting_down();
        Some(unit)
    }

    fn maybe_done_shutting_down(&mut self) {
        if self.jobs.is_empty()
            && self.tasks.is_empty()
            && let Some(waiters) = self.shutting_down.as_mut()
        {
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

#[ractor::async_trait]
impl Actor for RestoreManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = ManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ManagerMsg>,
        args: ManagerArgs,
    ) -> Result<ManagerState, ActorProcessingErr> {
        let work = &args.ctx.work;
        let permits = Arc::new(Semaphore::new(work.max_copies_in_flight.max(1)));
        let node_throttle = Throttle::new(work.max_bytes_per_sec).map(Arc::new);
        myself.send_message(ManagerMsg::Tick)?;
        Ok(ManagerState {
            ctx: args.ctx,
            index: args.index,
            starting: args.starting,
            own: BTreeSet::new(),
            jobs: BTreeMap::new(),
            tasks: BTreeMap::new(),
            by_actor: BTreeMap::new(),
            retries: BTreeMap::new(),
            not_before_ms: BTreeMap::new(),
            restarts: BTreeMap::new(),
            job_not_before_ms: BTreeMap::new(),
            permits,
            node_throttle,
            job_throttles: BTreeMap::new(),
            ticks: 0,
            shutting_down: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMsg>,
        msg: ManagerMsg,
        s: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Tick => {
                if s.shutting_down.is_some() {
                    return Ok(());
                }
                let now_ms = s.now_ms();
                s.renew(now_ms).await;
                s.reconcile(&myself).await;
                s.ticks += 1;
                let delay = s.ctx.work.reconcile_ms.max(10) + s.ctx.work.jitter_ms(s.ticks);
                myself.send_after(Duration::from_millis(delay), || ManagerMsg::Tick);
            }
            ManagerMsg::Adopt { job, claim } => {
                s.own.insert(job);
                match claim {
                    Some(held) => s.start_runner(&myself, job, held).await,
                    None => s.reconcile(&myself).await,
                }
            }
            ManagerMsg::Poke => s.reconcile(&myself).await,
            ManagerMsg::TaskFinished {
                job,
                task,
                epoch,
                outcome,
            } => {
                s.task_finished(job, task, epoch, outcome).await;
                // Pull the next piece of work now rather than at the next tick.
                s.reconcile(&myself).await;
            }
            ManagerMsg::Shutdown { done } => {
                let waiters = s.shutting_down.get_or_insert_with(Vec::new);
                waiters.push(done);
                for r in s.jobs.values() {
                    let _ = r.runner.send_message(RunnerMsg::Stop { shutdown: true });
                }
                for t in s.tasks.values() {
                    let _ = t.stop.send(true);
                }
                s.maybe_done_shutting_down();
            }
        }
        s.publish_gauges();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ManagerMsg>,
        event: SupervisionEvent,
        s: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(who, _, _) => {
                // A runner or copier that stopped gives its claim back, so another node need
                // not wait for the deadline. (Supervision events overtake ordinary messages:
                // a copier's `TaskFinished` may come after this, or never, at shutdown; the
                // release is idempotent either way.)
                let unit = s.by_actor.get(&who.get_id()).copied();
                let epoch = match unit {
                    Some(Unit::Job(job)) => s.jobs.get(&job).map(|r| r.claim.epoch),
                    Some(Unit::Task(job, task)) => s.tasks.get(&(job, task)).map(|r| r.claim.epoch),
                    None => None,
                };
                s.forget(who.get_id());
                match (unit, epoch) {
                    (Some(Unit::Job(job)), Some(epoch)) => s.release_job(job, epoch).await,
                    (Some(Unit::Task(job, task)), Some(epoch)) => {
                        s.release_task(job, task, epoch).await
                    }
                    _ => {}
                }
            }
            SupervisionEvent::ActorFailed(who, err) => match s.by_actor.get(&who.get_id()).copied()
            {
                Some(Unit::Task(job, task)) => {
                    let epoch = s.tasks.get(&(job, task)).map_or(0, |t| t.claim.epoch);
                    tracing::warn!(job, task, error = %err, "copy task actor failed");
                    s.forget(who.get_id());
                    s.task_finished(
                        job,
                        task,
                        epoch,
                        TaskOutcome::Retry(format!("copy task actor failed: {err}")),
                    )
                    .await;
                }
                Some(Unit::Job(job)) => {
                    // Its claim is released now and claimed afresh (a new epoch) after a
                    // backoff — never resumed under the old one, which may have lapsed.
                    let claim = s.jobs.get(&job).map(|r| r.claim);
                    s.forget(who.get_id());
                    if let Some(held) = claim {
                        s.release_job(job, held.epoch).await;
                    }
                    let n = s.restarts.entry(job).or_insert(0);
                    *n += 1;
                    let n = *n;
                    let delay = if n <= MAX_RUNNER_RESTARTS {
                        tracing::warn!(job, error = %err, restart = n, "restore job runner failed; claiming it again after a backoff");
                        RUNNER_RESTART_BACKOFF_MS << n.min(8)
                    } else {
                        tracing::error!(job, error = %err, "restore job runner keeps failing; leaving the job to other nodes for a while");
                        RUNNER_GIVE_UP_MS
                    };
                    let until = s.now_ms() + delay;
                    s.job_not_before_ms.insert(job, until);
                    myself.send_after(Duration::from_millis(delay), || ManagerMsg::Poke);
                }
                None => {}
            },
            _ => {}
        }
        s.publish_gauges();
        Ok(())
    }
}
