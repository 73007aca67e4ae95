//! The restore manager: the ractor supervisor of this node's job runners.
//!
//! One runner per job at most. It overrides the default supervision (which would stop the
//! manager when a child fails): a runner that panics is started again after a backoff, up to a
//! limit; past it the job is left as recorded for the next start, and says so in the log.
//! Shutdown stops every runner (their copiers record progress and stop) and waits for them.

use crate::restore::context::RestoreContext;
use crate::restore::runner::{JobRunner, RunnerArgs, RunnerMsg};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use snapvault_events::domain::JobId;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::oneshot;

/// Restarts of one job's runner after panics before the manager leaves it to the next start.
const MAX_RUNNER_RESTARTS: u32 = 5;
const RUNNER_RESTART_BACKOFF_MS: u64 = 500;

pub enum ManagerMsg {
    /// Run `job` here unless it already runs.
    Run { job: JobId, resumed: bool },
    /// The job was cancelled: stop its copies so its rollback can start.
    Cancelled { job: JobId },
    /// Stop every runner and answer when they are gone.
    Shutdown { done: oneshot::Sender<()> },
    /// Is `job` running here?
    IsRunning {
        job: JobId,
        reply: oneshot::Sender<bool>,
    },
}

pub struct ManagerState {
    ctx: RestoreContext,
    runners: BTreeMap<JobId, ActorRef<RunnerMsg>>,
    by_actor: BTreeMap<ActorId, JobId>,
    restarts: BTreeMap<JobId, u32>,
    shutting_down: Option<Vec<oneshot::Sender<()>>>,
}

pub struct RestoreManager;

impl ManagerState {
    async fn start_runner(&mut self, myself: &ActorRef<ManagerMsg>, job: JobId, resumed: bool) {
        if self.shutting_down.is_some() || self.runners.contains_key(&job) {
            return;
        }
        let args = RunnerArgs {
            ctx: self.ctx.clone(),
            job_id: job,
            resumed,
        };
        match Actor::spawn_linked(None, JobRunner, args, myself.get_cell()).await {
            Ok((runner, _)) => {
                self.by_actor.insert(runner.get_id(), job);
                self.runners.insert(job, runner);
            }
            Err(e) => tracing::warn!(job, error = %e, "cannot start the restore job runner"),
        }
    }

    fn forget(&mut self, actor: ActorId) -> Option<JobId> {
        let job = self.by_actor.remove(&actor)?;
        self.runners.remove(&job);
        if self.runners.is_empty()
            && let Some(waiters) = self.shutting_down.as_mut()
        {
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
        Some(job)
    }
}

#[ractor::async_trait]
impl Actor for RestoreManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = RestoreContext;

    async fn pre_start(
        &self,
        _myself: ActorRef<ManagerMsg>,
        ctx: RestoreContext,
    ) -> Result<ManagerState, ActorProcessingErr> {
        Ok(ManagerState {
            ctx,
            runners: BTreeMap::new(),
            by_actor: BTreeMap::new(),
            restarts: BTreeMap::new(),
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
            ManagerMsg::Run { job, resumed } => s.start_runner(&myself, job, resumed).await,
            ManagerMsg::Cancelled { job } => match s.runners.get(&job) {
                Some(r) => {
                    let _ = r.send_message(RunnerMsg::Stop { shutdown: false });
                }
                // Not running here (a crash, another node): run it, so the rollback happens.
                None => s.start_runner(&myself, job, true).await,
            },
            ManagerMsg::Shutdown { done } => {
                let waiters = s.shutting_down.get_or_insert_with(Vec::new);
                waiters.push(done);
                if s.runners.is_empty() {
                    for w in waiters.drain(..) {
                        let _ = w.send(());
                    }
                } else {
                    for r in s.runners.values() {
                        let _ = r.send_message(RunnerMsg::Stop { shutdown: true });
                    }
                }
            }
            ManagerMsg::IsRunning { job, reply } => {
                let _ = reply.send(s.runners.contains_key(&job));
            }
        }
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
                s.forget(who.get_id());
            }
            SupervisionEvent::ActorFailed(who, err) => {
                if let Some(job) = s.forget(who.get_id()) {
                    let n = s.restarts.entry(job).or_insert(0);
                    *n += 1;
                    if s.shutting_down.is_none() && *n <= MAX_RUNNER_RESTARTS {
                        tracing::warn!(job, error = %err, restart = *n, "restore job runner failed; starting it again");
                        let delay = RUNNER_RESTART_BACKOFF_MS << (*n).min(8);
                        myself.send_after(Duration::from_millis(delay), move || ManagerMsg::Run {
                            job,
                            resumed: true,
                        });
                    } else {
                        tracing::error!(job, error = %err, "restore job runner keeps failing; the job resumes at the next start");
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
