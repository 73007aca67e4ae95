//! The remote client's operations on long-running work: restore jobs and external refresh
//! tasks. Waiting is a loop of bounded `*.wait` requests (each blocks at most 30 s on the
//! service), so a wait of any length never holds one request open.

use super::RemoteClient;
use super::ops::external::{AlterExternal, CollectionRef, CreateExternal, TaskRef};
use super::ops::restore::{JobRef, ListRestores, MAX_WAIT_MS, WaitRestore};
use crate::client::CreateCollectionRequest;
use crate::external::{ExternalStatusView, ExternalTaskView};
use crate::restores::{RestorePage, RestoreView, RestoredSegment, StartRestoreRequest};
use crate::views::CollectionView;
use snapvault_events::Error;
use snapvault_events::domain::restore::RestoreStatus;
use std::time::Duration;

impl RemoteClient {
    pub async fn start_restore(&self, r: StartRestoreRequest) -> Result<RestoreView, Error> {
        self.call("restore.start", &r).await
    }

    pub async fn restore_status(&self, job: u64) -> Result<RestoreView, Error> {
        self.call("restore.status", &JobRef { job }).await
    }

    pub async fn list_restores(
        &self,
        status: Option<RestoreStatus>,
        limit: Option<usize>,
        page_token: Option<u64>,
    ) -> Result<RestorePage, Error> {
        self.call(
            "restore.list",
            &ListRestores {
                status,
                limit,
                page_token,
            },
        )
        .await
    }

    pub async fn cancel_restore(&self, job: u64) -> Result<RestoreView, Error> {
        self.call("restore.cancel", &JobRef { job }).await
    }

    pub async fn restore_segments(&self, job: u64) -> Result<Vec<RestoredSegment>, Error> {
        self.call("restore.segments", &JobRef { job }).await
    }

    /// Like `Client::wait_restore`: `progress` sees the job after each answer (at most
    /// `poll` apart while it runs).
    pub async fn wait_restore(
        &self,
        job: u64,
        poll: Duration,
        timeout: Option<Duration>,
        mut progress: impl FnMut(&RestoreView),
    ) -> Result<RestoreView, Error> {
        let started = tokio::time::Instant::now();
        let step_ms = (poll.as_millis() as u64).clamp(1, MAX_WAIT_MS);
        loop {
            let view: RestoreView = self
                .call(
                    "restore.wait",
                    &WaitRestore {
                        job,
                        timeout_ms: Some(step_ms),
                    },
                )
                .await?;
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
        }
    }

    pub async fn create_external_collection(
        &self,
        collection: CreateCollectionRequest,
        source: &str,
        spec_json: &str,
    ) -> Result<CollectionView, Error> {
        self.call(
            "external.create",
            &CreateExternal {
                collection,
                source: source.to_string(),
                spec_json: spec_json.to_string(),
            },
        )
        .await
    }

    pub async fn alter_external(
        &self,
        collection: &str,
        source: Option<&str>,
        spec_json: Option<&str>,
    ) -> Result<ExternalTaskView, Error> {
        self.call(
            "external.alter",
            &AlterExternal {
                collection: collection.to_string(),
                source: source.map(str::to_string),
                spec_json: spec_json.map(str::to_string),
            },
        )
        .await
    }

    pub async fn refresh_external(&self, collection: &str) -> Result<ExternalTaskView, Error> {
        self.call(
            "external.refresh",
            &CollectionRef {
                collection: collection.to_string(),
            },
        )
        .await
    }

    pub async fn external_task(&self, task: u64) -> Result<ExternalTaskView, Error> {
        self.call(
            "external.task",
            &TaskRef {
                task,
                timeout_ms: None,
            },
        )
        .await
    }

    /// Like `Client::wait_external_task`.
    pub async fn wait_external_task(
        &self,
        task: u64,
        timeout: Duration,
    ) -> Result<ExternalTaskView, Error> {
        let started = tokio::time::Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let view: ExternalTaskView = self
                .call(
                    "external.wait",
                    &TaskRef {
                        task,
                        timeout_ms: Some((left.as_millis() as u64).min(MAX_WAIT_MS)),
                    },
                )
                .await?;
            if view.is_finished() {
                return Ok(view);
            }
            if started.elapsed() >= timeout {
                return Err(Error::unavailable(format!(
                    "external task {task} is still {} after {} s; it keeps running",
                    view.phase.as_deref().unwrap_or("running"),
                    timeout.as_secs()
                )));
            }
        }
    }

    pub async fn external_status(&self, collection: &str) -> Result<ExternalStatusView, Error> {
        self.call(
            "external.status",
            &CollectionRef {
                collection: collection.to_string(),
            },
        )
        .await
    }

    pub async fn cancel_external(&self, collection: &str) -> Result<ExternalTaskView, Error> {
        self.call(
            "external.cancel",
            &CollectionRef {
                collection: collection.to_string(),
            },
        )
        .await
    }
}
