//! Restore jobs and their copy tasks (design §4).
//!
//! - [`job`]: the job decider (`RestoreJob`): Pending → Running → Committing → Completed, or
//!   → RollingBack → Failed | Cancelled.
//! - [`copy_task`]: the copy task decider (`CopyTask`): a bounded batch of whole segments.
//! - [`plan`]: the pure, deterministic planner (segments → tasks, new ids, destination keys).
//! - [`steps`]: the job's effects, each idempotent: target, lease, plan, commit, rollback.
//! - [`copier`]: one file's checked copy, and the copy-task actor.
//! - [`runner`]: the job runner actor: coordinates one job on the node holding its claim.
//! - [`manager`]: this node's reconciler and the supervisor of its runners and copy tasks,
//!   claimed from the log (design §10); [`Restores`] is the node's handle.
//! - [`index`]: the projection of every job, its progress and its claims, for status from
//!   anywhere and for every node's reconciler.
//! - [`throttle`]: bandwidth limits (per node, per job).

pub mod context;
pub mod copier;
pub mod copy_task;
pub mod index;
pub mod job;
pub mod manager;
pub mod plan;
pub mod runner;
pub mod steps;
pub mod throttle;

#[cfg(test)]
mod tests;

pub use context::{RestoreConfig, RestoreContext};
pub use copy_task::{CopyTask, CopyTaskState};
pub use index::RestoreIndex;
pub use job::{RestoreJob, RestoreJobState};

use manager::{Held, ManagerArgs, ManagerMsg, RestoreManager, Starting, StartingGuard};
use ractor::{Actor, ActorRef};
use snapvault_events::Error;
use snapvault_events::domain::JobId;
use std::time::Duration;
use tokio::sync::oneshot;

/// The node's handle on restore work: its manager (reconciler, runners, copies) and the index.
#[derive(Clone)]
pub struct Restores {
    manager: ActorRef<ManagerMsg>,
    starting: Starting,
    pub index: RestoreIndex,
    pub ctx: RestoreContext,
}

impl Restores {
    pub async fn start(ctx: RestoreContext) -> Result<Restores, Error> {
        let index = RestoreIndex::start(ctx.log.clone());
        let starting = Starting::default();
        let args = ManagerArgs {
            ctx: ctx.clone(),
            index: index.clone(),
            starting: starting.clone(),
        };
        let (manager, _) = Actor::spawn(None, RestoreManager, args)
            .await
            .map_err(|e| Error::internal(format!("cannot start the restore manager: {e}")))?;
        Ok(Restores {
            manager,
            starting,
            index,
            ctx,
        })
    }

    /// This node's id in claims.
    pub fn node_id(&self) -> &str {
        &self.ctx.work.node_id
    }

    /// Take part in `job` on this node even in a one-shot process (it started the job, or
    /// waits for it); with `claim`, the caller already holds the job's coordination.
    pub fn adopt(&self, job: JobId, claim: Option<Held>) {
        let _ = self.manager.send_message(ManagerMsg::Adopt { job, claim });
    }

    /// Keep this node's reconciler off `job` while a `restore start` here records it and
    /// reserves its target (until the guard drops, after `adopt`).
    pub fn starting(&self, job: JobId) -> StartingGuard {
        self.starting.guard(job)
    }

    /// Something was recorded here that this node's copies must react to (a cancel).
    pub fn poke(&self) {
        let _ = self.manager.send_message(ManagerMsg::Poke);
    }

    /// Stop every runner and copy (progress is recorded; their claims are released or lapse,
    /// and another node — or the next process — takes the work over), at most `wait` long,
    /// then the manager and the index.
    pub async fn shutdown(&self, wait: Duration) {
        let (done, rx) = oneshot::channel();
        if self
            .manager
            .send_message(ManagerMsg::Shutdown { done })
            .is_ok()
        {
            let _ = tokio::time::timeout(wait, rx).await;
        }
        let _ = self.manager.stop_and_wait(None, Some(wait)).await;
        self.index.stop().await;
    }
}
