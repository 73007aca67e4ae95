//! Restore jobs and their copy tasks (design §4).
//!
//! - [`job`]: the job decider (`RestoreJob`): Pending → Running → Committing → Completed, or
//!   → RollingBack → Failed | Cancelled.
//! - [`copy_task`]: the copy task decider (`CopyTask`): a bounded batch of whole segments.
//! - [`plan`]: the pure, deterministic planner (segments → tasks, new ids, destination keys).
//! - [`steps`]: the job's effects, each idempotent: target, lease, plan, commit, rollback.
//! - [`copier`]: one file's checked copy, and the copy-task actor.
//! - [`runner`]: the job runner actor, parent of its copy-task actors.
//! - [`manager`]: the supervisor of this node's runners; [`Restores`] is the node's handle.
//! - [`index`]: the projection of every job and its progress, for status from anywhere.
//! - [`throttle`]: the job's bandwidth limit.

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

use manager::{ManagerMsg, RestoreManager};
use ractor::{Actor, ActorRef};
use snapvault_events::Error;
use snapvault_events::domain::JobId;
use std::time::Duration;
use tokio::sync::oneshot;

/// The node's handle on restore work: the runner supervisor and the index.
#[derive(Clone)]
pub struct Restores {
    manager: ActorRef<ManagerMsg>,
    pub index: RestoreIndex,
    pub ctx: RestoreContext,
}

impl Restores {
    pub async fn start(ctx: RestoreContext) -> Result<Restores, Error> {
        let index = RestoreIndex::start(ctx.log.clone());
        let (manager, _) = Actor::spawn(None, RestoreManager, ctx.clone())
            .await
            .map_err(|e| Error::internal(format!("cannot start the restore manager: {e}")))?;
        Ok(Restores {
            manager,
            index,
            ctx,
        })
    }

    /// Run `job` on this node (a no-op when it already runs here).
    pub fn run(&self, job: JobId, resumed: bool) {
        let _ = self.manager.send_message(ManagerMsg::Run { job, resumed });
    }

    /// The job's cancel is recorded: stop its copies so it rolls back.
    pub fn cancelled(&self, job: JobId) {
        let _ = self.manager.send_message(ManagerMsg::Cancelled { job });
    }

    /// Is `job` being driven by this node?
    pub async fn is_running(&self, job: JobId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .manager
            .send_message(ManagerMsg::IsRunning { job, reply })
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Stop every runner (progress is recorded; the jobs resume at the next start), at most
    /// `wait` long, then the manager and the index.
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
