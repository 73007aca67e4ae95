//! External collections in the client: create, alter, refresh, status, cancel, wait, and the
//! resume of unfinished refresh tasks at start.
//!
//! A refresh is two steps on two entities, each crash-safe:
//! 1. take the collection's refresh slot on its fence (`BeginExternalTask`, or
//!    `AlterExternal`, which supersedes the running task and takes the slot for a new one
//!    atomically). When a task holds the slot already, `refresh` returns that task's id;
//! 2. start the task's own stream and run the worker ([`ExternalWorker::run`]) in the
//!    background of this node. `--wait` (or [`Client::wait_external_task`]) follows it.
//!
//! A task runs on the node holding its claim (design §10): the node that started it claims
//! it at once and renews the claim while it runs. A crash between 1 and 2 leaves a slot with
//! no task stream; a crash while the worker runs leaves a Running task whose claim lapses.
//! Either is taken by the reconciler of a long-running node (`serve`, every
//! `reconcile_ms`; at start on a log only it opens), or by the next command that refreshes,
//! alters or waits for the task: it runs the task again (the commit is fenced, so it
//! happens at most once), or, when the collection says it already ended, records how.

use crate::client::{Client, CreateCollectionRequest};
use crate::views::CollectionView;
use serde::{Deserialize, Serialize};
use snapvault_actors::claim_holder::{Attempt, try_claim};
use snapvault_actors::collection::Collection;
use snapvault_actors::crash_points::crash_point;
use snapvault_actors::external::index::ExternalIndex;
use snapvault_actors::external::worker::{ExternalWorker, outcome_from_collection};
use snapvault_actors::external::{ExternalTask, ExternalTaskState};
use snapvault_actors::work::WorkConfig;
use snapvault_events::domain::collection::CollectionCommand;
use snapvault_events::domain::external::{
    ExternalConfig, ExternalSpec, RefreshCounts, TaskEnd, TaskId, TaskIdentity, TaskOutcome,
    TaskProgress, external_task_stream, parse_source,
};
use snapvault_events::domain::{CollectionId, collection_stream};
use snapvault_events::{Error, ErrorCode};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often `wait` looks at a task run by another process.
const WAIT_POLL: Duration = Duration::from_millis(5);

/// How long a stopping task has to give its claim back before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The node's running refresh tasks (at most one local run per task), each under its claim.
#[derive(Clone)]
pub struct ExternalRuntime {
    pub(crate) worker: ExternalWorker,
    work: WorkConfig,
    /// Unfinished tasks and their claims, for the reconciler; started on first use (a
    /// one-shot command that touches no external task never reads the log for it).
    index: Arc<OnceLock<ExternalIndex>>,
    tasks: Arc<Mutex<BTreeMap<TaskId, tokio::task::JoinHandle<()>>>>,
    /// Set at shutdown: running tasks stop at once and give their claims back.
    stopping: watch::Sender<bool>,
}

impl ExternalRuntime {
    pub(crate) fn new(worker: ExternalWorker, work: WorkConfig) -> ExternalRuntime {
        ExternalRuntime {
            worker,
            work,
            index: Arc::new(OnceLock::new()),
            tasks: Arc::new(Mutex::new(BTreeMap::new())),
            stopping: watch::channel(false).0,
        }
    }

    fn index(&self) -> ExternalIndex {
        self.index
            .get_or_init(|| ExternalIndex::start(self.worker.registry.log().clone()))
            .clone()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<TaskId, tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run task `id` in the background under its claim, unless this node runs it already.
    /// Whether a run was started (it still gives up quietly when another node holds it).
    fn spawn(&self, id: TaskId) -> bool {
        let mut tasks = self.tasks();
        tasks.retain(|_, h| !h.is_finished());
        if tasks.contains_key(&id) || *self.stopping.borrow() {
            return false;
        }
        let handle = tokio::spawn(run_claimed(
            self.worker.clone(),
            self.work.clone(),
            id,
            self.stopping.subscribe(),
        ));
        tasks.insert(id, handle);
        true
    }

    fn abort(&self, id: TaskId) {
        if let Some(h) = self.tasks().remove(&id) {
            h.abort();
        }
    }

    /// Let the running tasks finish for up to `wait` (a one-shot command's refresh runs to its
    /// end), then stop the rest: each gives its claim back, so another node (or the next
    /// start) takes it at once; one that does not stop within a moment is aborted and its
    /// claim lapses.
    pub(crate) async fn shutdown(&self, wait: Duration) {
        let handles: Vec<tokio::task::JoinHandle<()>> =
            std::mem::take(&mut *self.tasks()).into_values().collect();
        let deadline = tokio::time::Instant::now() + wait;
        let mut left = Vec::new();
        for mut h in handles {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                left.push(h);
            }
        }
        self.stopping.send_replace(true);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for mut h in left {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                h.abort();
                let _ = h.await;
            }
        }
        if let Some(index) = self.index.get() {
            index.stop().await;
        }
    }
}

/// Claim task `id`, run it while the claim holds, and give the claim back if the run stops
/// before the task ended (a task that ended freed its claim with its last event).
async fn run_claimed(
    worker: ExternalWorker,
    work: WorkConfig,
    id: TaskId,
    mut stopping: watch::Receiver<bool>,
) {
    let stream = external_task_stream(id);
    let mut holder = match try_claim::<ExternalTask>(&worker.registry, &work, &stream, id).await {
        Ok(Attempt::Held(holder)) => holder,
        Ok(Attempt::Refused(e)) => {
            tracing::debug!(task = id, reason = %e, "external task runs elsewhere or ended");
            return;
        }
        Err(e) => {
            tracing::info!(task = id, error = %e, "external task not claimed; a reconciler takes it later");
            return;
        }
    };
    let epoch = holder.epoch();
    /// Why the run stopped.
    enum End {
        /// The run returned; with its error, if any.
        Ran(Option<Error>),
        Lost,
        Stopping,
    }
    let end = tokio::select! {
        r = worker.run(id, epoch) => End::Ran(r.err()),
        () = holder.lost() => End::Lost,
        _ = stopping.wait_for(|stop| *stop) => End::Stopping,
    };
    match end {
        End::Ran(None) => {}
        End::Ran(Some(e)) => {
            tracing::warn!(task = id, error = %e, "external task stopped; a reconciler resumes it");
            holder.release().await;
        }
        End::Lost => tracing::warn!(task = id, epoch, "external task's claim lost; stopped here"),
        End::Stopping => holder.release().await,
    }
}

/// One refresh task, as `status`, `refresh` and `cancel` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalTaskView {
    pub task_id: TaskId,
    pub collection: String,
    pub collection_id: CollectionId,
    /// `running`, `committed`, `superseded`, `cancelled` or `failed`.
    pub status: String,
    pub phase: Option<String>,
    pub progress: TaskProgress,
    pub generation: u64,
    pub source: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// What a committed refresh did.
    pub counts: Option<RefreshCounts>,
    /// The failed fragment (or the source) and why.
    pub failed_key: Option<String>,
    pub reason: Option<String>,
    /// `refresh` found this task running already and returned it instead of starting one.
    #[serde(default)]
    pub already_running: bool,
    /// The node holding the running task's claim, and until when (its last renewal).
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub claim_deadline_ms: Option<u64>,
}

impl ExternalTaskView {
    pub fn of(s: &ExternalTaskState) -> Option<ExternalTaskView> {
        let i = s.identity.as_ref()?;
        let (counts, failed_key, reason) = match &s.outcome {
            Some(TaskOutcome::Committed { counts }) => (Some(*counts), None, None),
            Some(TaskOutcome::Failed { key, reason }) => {
                (None, Some(key.clone()), Some(reason.clone()))
            }
            Some(TaskOutcome::Superseded { reason }) => (None, None, Some(reason.clone())),
            _ => (None, None, None),
        };
        Some(ExternalTaskView {
            task_id: i.task_id,
            collection: i.collection_name.clone(),
            collection_id: i.collection_id,
            status: s.status().to_string(),
            phase: s
                .is_running()
                .then(|| s.phase.map(|p| p.as_str().to_string()))
                .flatten(),
            progress: s.progress,
            generation: i.generation,
            source: i.config.source.clone(),
            started_ms: s.started_ms,
            finished_ms: s.finished_ms,
            counts,
            failed_key,
            reason,
            already_running: false,
            node: s.claim.holder.as_ref().map(|c| c.node.clone()),
            claim_deadline_ms: s.claim.holder.as_ref().map(|c| c.deadline_ms),
        })
    }

    pub fn is_finished(&self) -> bool {
        self.status != "running"
    }
}

/// `external status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalStatusView {
    pub collection: String,
    pub collection_id: CollectionId,
    pub source: String,
    pub spec: serde_json::Value,
    pub generation: u64,
    pub segments: usize,
    pub fragments: u64,
    pub rows: u64,
    pub last_refresh_ms: Option<u64>,
    /// The task holding the refresh slot now.
    pub active: Option<ExternalTaskView>,
    /// The most recent task that ended.
    pub last: Option<ExternalTaskView>,
}

/// Parse a source and a spec document into a config, refusing bad input with
/// `invalid_argument`.
pub fn external_config(source: &str, spec_json: &str) -> Result<ExternalConfig, Error> {
    let (source, _) = parse_source(source)?;
    let spec = ExternalSpec::parse_json(spec_json)?;
    Ok(ExternalConfig { source, spec })
}

fn not_external(name: &str) -> Error {
    Error::failed_precondition(format!(
        "collection '{name}' is not external; create it with --external-source and --external-spec"
    ))
}

impl Client {
    /// Create an external collection (empty until its first refresh).
    pub async fn create_external_collection(
        &self,
        request: CreateCollectionRequest,
        source: &str,
        spec_json: &str,
    ) -> Result<CollectionView, Error> {
        let config = external_config(source, spec_json)?;
        self.create_collection_full(request, None, Some(config))
            .await
    }

    /// The external config and active task of a collection.
    async fn external_of(
        &self,
        name: &str,
    ) -> Result<
        (
            CollectionId,
            snapvault_actors::collection::external::ExternalState,
        ),
        Error,
    > {
        let id = self.collection_id(name).await?;
        let ext = self
            .registry
            .inspect::<Collection, _>(&collection_stream(id), |_, s| s.external.clone())
            .await?
            .ok_or_else(|| not_external(name))?;
        Ok((id, ext))
    }

    async fn task_state(&self, id: TaskId) -> Result<ExternalTaskState, Error> {
        self.registry
            .inspect::<ExternalTask, _>(&external_task_stream(id), |_, s| s.clone())
            .await
    }

    /// One task by id.
    pub async fn external_task(&self, id: TaskId) -> Result<ExternalTaskView, Error> {
        let s = self.task_state(id).await?;
        ExternalTaskView::of(&s)
            .ok_or_else(|| Error::not_found(format!("external task {id} not found")))
    }

    /// Start the task stream of a task that holds (or held) the slot, and run it here.
    async fn launch(&self, identity: TaskIdentity) -> Result<ExternalTaskView, Error> {
        let id = identity.task_id;
        self.external.worker.start(identity).await?;
        crash_point("external.after_task_start");
        self.external.spawn(id);
        self.external_task(id).await
    }

    /// Refresh: start a task, or return the one that is running.
    pub async fn refresh_external(&self, collection: &str) -> Result<ExternalTaskView, Error> {
        let (id, _) = self.external_of(collection).await?;
        self.settle_leftovers(id).await;
        let task_id = self.ids.next_id().await?;
        let executed = self
            .run(id, CollectionCommand::BeginExternalTask { task_id })
            .await?;
        let (active, ext) = self
            .registry
            .inspect::<Collection, _>(&collection_stream(id), |_, s| {
                (
                    s.external.as_ref().and_then(|e| e.active.clone()),
                    s.external.clone(),
                )
            })
            .await?;
        let running = if executed.events.is_empty() {
            match active {
                Some(a) => a.task_id,
                None => {
                    // The active task ended between the two reads: start afresh.
                    return Box::pin(self.refresh_external(collection)).await;
                }
            }
        } else {
            task_id
        };
        crash_point("external.after_begin");
        let identity = self
            .external
            .worker
            .identity_from_collection(id, running)
            .await?;
        let mut view = match identity {
            Some(identity) => self.launch(identity).await?,
            // It ended a moment ago: show how.
            None => match self.external_task(running).await {
                Ok(v) => v,
                Err(_) => {
                    let ext = ext.ok_or_else(|| not_external(collection))?;
                    return Err(Error::conflict(format!(
                        "task {running} ended ({}) while the refresh was starting; try again",
                        outcome_from_collection(&ext, running).as_str()
                    )));
                }
            },
        };
        view.already_running = running != task_id;
        Ok(view)
    }

    /// Before a refresh or alter: tasks of the collection a dead runner left (a slot without
    /// a stream, a stream still Running after its collection ended it) are taken up here, so
    /// a one-shot command leaves none behind. Best effort: a serve node's reconciler does the
    /// same.
    async fn settle_leftovers(&self, collection_id: CollectionId) {
        if let Err(e) = self.reconcile_external(Some(collection_id)).await {
            tracing::debug!(collection = collection_id, error = %e, "leftover refresh tasks not taken up");
        }
    }

    /// Change the source and/or spec: the running task is superseded (it commits nothing)
    /// and a new task starts for the new config.
    pub async fn alter_external(
        &self,
        collection: &str,
        source: Option<&str>,
        spec_json: Option<&str>,
    ) -> Result<ExternalTaskView, Error> {
        if source.is_none() && spec_json.is_none() {
            return Err(Error::invalid_argument(
                "alter needs --external-source, --external-spec or both",
            ));
        }
        let new_source = source.map(parse_source).transpose()?.map(|(s, _)| s);
        let new_spec = spec_json.map(ExternalSpec::parse_json).transpose()?;
        let (id, ext) = self.external_of(collection).await?;
        self.settle_leftovers(id).await;
        let config = ExternalConfig {
            source: new_source.unwrap_or(ext.config.source.clone()),
            spec: new_spec.unwrap_or(ext.config.spec.clone()),
        };
        let task_id = self.ids.next_id().await?;
        let executed = self
            .run(
                id,
                CollectionCommand::AlterExternal {
                    config: config.clone(),
                    task_id,
                },
            )
            .await?;
        crash_point("external.after_alter");
        for e in &executed.events {
            if let snapvault_events::domain::collection::CollectionEvent::ExternalAltered {
                superseded: Some(old),
                ..
            } = e
            {
                self.external.abort(*old);
                let outcome = TaskOutcome::Superseded {
                    reason: "the source or spec changed while it ran; it committed nothing".into(),
                };
                let r = self
                    .registry
                    .execute::<ExternalTask>(
                        &external_task_stream(*old),
                        snapvault_events::domain::external::ExternalTaskCommand::Finish { outcome },
                        *old,
                    )
                    .await;
                if let Err(e) = r {
                    // The resume reconciles it from the collection; nothing is lost.
                    tracing::debug!(task = old, error = %e, "superseded task not marked yet");
                }
            }
        }
        let identity = self
            .external
            .worker
            .identity_from_collection(id, task_id)
            .await?
            .ok_or_else(|| {
                Error::conflict(format!(
                    "collection '{collection}' changed again while it was being altered; try again"
                ))
            })?;
        self.launch(identity).await
    }

    /// Cancel the running refresh of a collection.
    pub async fn cancel_external(&self, collection: &str) -> Result<ExternalTaskView, Error> {
        let (id, ext) = self.external_of(collection).await?;
        let active = ext.active.ok_or_else(|| {
            Error::failed_precondition(format!("collection '{collection}' has no refresh running"))
        })?;
        let task_id = active.task_id;
        self.run(
            id,
            CollectionCommand::EndExternalTask {
                task_id,
                end: TaskEnd::Cancelled,
            },
        )
        .await?;
        self.external.abort(task_id);
        if self.task_state(task_id).await?.identity.is_none() {
            // Cancelled before its stream started: give it one so status can show it.
            let identity = TaskIdentity {
                task_id,
                collection_id: id,
                collection_name: collection.to_string(),
                generation: active.generation,
                config: ext.config.clone(),
            };
            self.external.worker.start(identity).await?;
        }
        self.registry
            .execute::<ExternalTask>(
                &external_task_stream(task_id),
                snapvault_events::domain::external::ExternalTaskCommand::Finish {
                    outcome: TaskOutcome::Cancelled,
                },
                task_id,
            )
            .await?;
        self.external_task(task_id).await
    }

    /// Wait until a task has ended (run here or anywhere else), up to `timeout`. A waiter
    /// takes part: when no node holds the task's claim (its runner died), it runs the task.
    pub async fn wait_external_task(
        &self,
        task_id: TaskId,
        timeout: Duration,
    ) -> Result<ExternalTaskView, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut free_checked_ms = 0u64;
        loop {
            let view = self.external_task(task_id).await?;
            if view.is_finished() {
                return Ok(view);
            }
            let now_ms = self.registry.clock().now_ms();
            if now_ms >= free_checked_ms.saturating_add(self.external.work.reconcile_ms) {
                free_checked_ms = now_ms;
                let state = self.task_state(task_id).await?;
                if state.claim.live(now_ms).is_none() {
                    self.external.spawn(task_id);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "external task {task_id} is still {} after {} s; it keeps running",
                    view.phase.as_deref().unwrap_or("running"),
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// The external side of a collection: config, counts, the active and the last task.
    pub async fn external_status(&self, collection: &str) -> Result<ExternalStatusView, Error> {
        let (id, ext) = self.external_of(collection).await?;
        let (segments, rows) = self
            .registry
            .inspect::<Collection, _>(&collection_stream(id), |_, s| {
                let ext_segments = s
                    .external
                    .as_ref()
                    .map(|e| e.segments.clone())
                    .unwrap_or_default();
                let rows = ext_segments
                    .iter()
                    .filter_map(|sid| s.segments.get(sid))
                    .map(|x| x.rows)
                    .sum::<u64>();
                (ext_segments.len(), rows)
            })
            .await?;
        let active = match &ext.active {
            Some(a) => match self.external_task(a.task_id).await {
                Ok(v) => Some(v),
                Err(e) if e.code == ErrorCode::NotFound => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let last_id = ext
            .recent
            .keys()
            .next_back()
            .copied()
            .filter(|t| ext.active.as_ref().map(|a| a.task_id) != Some(*t));
        let last = match last_id {
            Some(t) => match self.external_task(t).await {
                Ok(mut v) => {
                    // The task stream may lag the collection (a crash): the collection decides.
                    if !v.is_finished() {
                        let o = outcome_from_collection(&ext, t);
                        v.status = o.as_str().to_string();
                        v.phase = None;
                    }
                    Some(v)
                }
                Err(e) if e.code == ErrorCode::NotFound => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(ExternalStatusView {
            collection: collection.to_string(),
            collection_id: id,
            source: ext.config.source.clone(),
            spec: ext.config.spec.to_json(),
            generation: ext.generation,
            segments,
            fragments: ext.fragments,
            rows,
            last_refresh_ms: ext.last_refresh_ms,
            active,
            last,
        })
    }

    /// One pass of the external reconciler (design §10): run here every refresh task no
    /// node runs — a Running task whose claim is free or lapsed, and a collection's active
    /// task whose stream a crash kept from starting — of every collection, or of one. Unclaimed
    /// work younger than a claim's life is left alone: the node that started it claims it a
    /// moment later.
    ///
    /// On a log this process alone opens (sled: `take_over_own`) whatever is unfinished and
    /// not running here is a dead incarnation's, taken at once. Returns how many runs it
    /// started.
    pub async fn reconcile_external(
        &self,
        collection: Option<CollectionId>,
    ) -> Result<usize, Error> {
        let work = &self.external.work;
        let exclusive = work.take_over_own;
        let u = self.external.index().unfinished().await?;
        let now_ms = self.registry.clock().now_ms();
        let mut started = 0;
        let wanted = |c: &CollectionId| collection.is_none_or(|w| w == *c);
        for (task_id, t) in u.running.iter().filter(|(_, t)| wanted(&t.collection_id)) {
            let free = t.claim.live(now_ms).is_none();
            let young_and_never_claimed =
                t.claim.last_epoch == 0 && now_ms < t.started_ms.saturating_add(work.claim_ttl_ms);
            if (exclusive || (free && !young_and_never_claimed)) && self.external.spawn(*task_id) {
                started += 1;
            }
        }
        for (collection_id, slot) in u.streamless.iter().filter(|(c, _)| wanted(c)) {
            if !exclusive && now_ms < slot.since_ms.saturating_add(work.claim_ttl_ms) {
                continue;
            }
            if let Some(identity) = self
                .external
                .worker
                .identity_from_collection(*collection_id, slot.task_id)
                .await?
            {
                self.external.worker.start(identity).await?;
                if self.external.spawn(slot.task_id) {
                    started += 1;
                }
            }
        }
        Ok(started)
    }

    /// Wait until every task this node runs has ended (tests, the simulator).
    pub async fn external_idle(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let busy = {
                let mut t = self.external.tasks();
                t.retain(|_, h| !h.is_finished());
                t.len()
            };
            if busy == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "{busy} external tasks still running after {} s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}
