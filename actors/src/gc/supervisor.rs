//! The GC supervisor: a ractor supervisor owning the ref-index projection and the sweeper.
//!
//! ractor's default is to stop a supervisor when a child ends; this one overrides it: a child
//! that fails (a panic, an event it cannot apply) is restarted after a backoff that doubles up
//! to `MAX_RESTART_BACKOFF_MS` (and starts over only once a child ran for
//! `STABLE_CHILD_MS`), and GC keeps answering (`unavailable` while the sweeper is down, "not
//! loaded" while the index rebuilds). A restarted index starts empty and replays the log, so a
//! half-applied event can never leave it wrong.
//!
//! A record the log cannot give (corrupt, foreign, of a newer build) stops the index *at* it
//! ([`LogStop`]): the status names the position and the reason, the warning is logged once
//! (then at most every [`STOPPED_WARN_EVERY`]), GC reclaims nothing, and the record is read
//! again every [`STOPPED_RETRY`] — no replay, no restart loop.

use crate::gc::ref_index::RefIndex;
use crate::gc::singleton::{self, Attempt, CycleClaim};
use crate::gc::sweeper::{GcReport, GcRunOptions, SweepContext, SweepState};
use crate::projection::{LogStop, STOPPED_RETRY, STOPPED_WARN_EVERY, StopWarnings};
use crate::snapshot::worker::{get_object, put_object};
use object_store::ObjectStore;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{Deserialize, Serialize};
use snapvault_events::domain::gc::{Amount, GcCategory};
use snapvault_events::{Error, ErrorCode, EventLog};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// How often a GC run a user asked for tries again for the claim while another node's cycle
/// runs.
const CLAIM_RETRY_MS: u64 = 500;

/// Events applied per read of the log.
const INDEX_PAGE_EVENTS: usize = 4096;
/// A checkpoint is written after this many events applied since the last one.
const CHECKPOINT_EVERY_EVENTS: u64 = 100_000;
/// Where the checkpoint lives: outside every prefix GC sweeps.
pub const CHECKPOINT_KEY: &str = "gc/ref-index.checkpoint";
/// Pause before reading the log again after a transient error.
const READ_RETRY_MS: u64 = 200;
const FIRST_RESTART_BACKOFF_MS: u64 = 100;
const MAX_RESTART_BACKOFF_MS: u64 = 10_000;
/// A child that ran this long before it ended is restarted after the first backoff again.
const STABLE_CHILD_MS: u64 = 30_000;

/// GC as the rest of the node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcStatus {
    pub loaded: bool,
    /// Log position the ref index has applied.
    pub applied: u64,
    /// Log head seen when the index (re)started: loaded once applied reaches it.
    pub target_head: u64,
    pub not_loaded_reason: Option<String>,
    pub last_cycle: Option<GcReport>,
    /// Reclaimed by this process since it started, per category.
    pub totals: BTreeMap<GcCategory, Amount>,
    /// When the next cycle runs on its own (clock ms), if on an interval.
    pub next_run_ms: Option<u64>,
    /// How often a GC child was restarted after failing.
    pub child_restarts: u64,
    pub files_indexed: u64,
    /// The log position the ref index stopped at: a record it cannot read or apply
    /// (corrupt, foreign, written by a newer build). Read again every 30 s.
    #[serde(default)]
    pub stopped_at: Option<u64>,
    /// Why it stopped there.
    #[serde(default)]
    pub stopped_reason: Option<String>,
}

struct Shared {
    index: Mutex<RefIndex>,
    applied_tx: watch::Sender<u64>,
    target_head: AtomicU64,
    restarts: AtomicU64,
    status: Mutex<GcStatus>,
    /// Set by `Gc::stop`: children that end now are not restarted.
    stopping: std::sync::atomic::AtomicBool,
    /// Where the index stopped at a record it cannot read or apply, until it gets past it.
    stop: Mutex<Option<LogStop>>,
    warnings: Mutex<StopWarnings>,
}

impl Shared {
    fn applied(&self) -> u64 {
        *self.applied_tx.borrow()
    }
    fn stopped(&self) -> Option<LogStop> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn loaded(&self) -> bool {
        self.applied() >= self.target_head.load(Ordering::SeqCst) && self.stopped().is_none()
    }
    fn not_loaded(&self) -> String {
        let mut text = format!(
            "ref index not loaded (at position {} of {})",
            self.applied(),
            self.target_head.load(Ordering::SeqCst)
        );
        if let Some(stop) = self.stopped() {
            text.push_str(&format!(
                ": {stop}; read again every {} s",
                STOPPED_RETRY.as_secs()
            ));
        }
        text
    }
    /// The index stopped at `stop`: record it (the status names it), say so once a minute at
    /// most, and wake whoever waits for the index (they report it instead of waiting).
    fn record_stop(&self, stop: LogStop) {
        if self
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(&stop)
        {
            tracing::warn!(
                position = stop.position,
                reason = %stop.reason,
                retry_s = STOPPED_RETRY.as_secs(),
                repeat_s = STOPPED_WARN_EVERY.as_secs(),
                "GC ref index stopped at a log record it cannot read; GC reclaims nothing until it reads"
            );
        }
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
        self.applied_tx.send_modify(|_| {});
    }
    /// The index applied up to `applied`: a stop at or below it is over.
    fn passed(&self, applied: u64) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if stop.as_ref().is_some_and(|s| s.position <= applied) {
            let s = stop.take();
            drop(stop);
            self.warnings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            if let Some(s) = s {
                tracing::warn!(
                    position = s.position,
                    "GC ref index got past the log record it had stopped at"
                );
            }
        }
    }
}

// ---- the ref-index child -------------------------------------------------------------------

struct RefIndexActor;

enum IndexMsg {
    Pump,
}

struct IndexState {
    log: Arc<dyn EventLog>,
    store: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
    /// Position of the last checkpoint written or loaded.
    checkpointed: u64,
    waiting: bool,
    /// Replaying full pages (not yet tailing).
    replaying: bool,
}

#[ractor::async_trait]
impl Actor for RefIndexActor {
    type Msg = IndexMsg;
    type State = IndexState;
    type Arguments = (Arc<dyn EventLog>, Arc<dyn ObjectStore>, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<IndexMsg>,
        (log, store, shared): Self::Arguments,
    ) -> Result<IndexState, ActorProcessingErr> {
        // Start from the checkpoint if there is a good one for this log, else from nothing
        // (never from what a failed incarnation left in memory: it may be half an event).
        let start = load_checkpoint(&*log, &*store).await;
        let from = start.applied();
        *shared.index.lock().unwrap_or_else(|p| p.into_inner()) = start;
        shared.applied_tx.send_replace(from);
        let head = log.head().await?;
        shared.target_head.store(head, Ordering::SeqCst);
        myself.send_message(IndexMsg::Pump)?;
        Ok(IndexState {
            log,
            store,
            shared,
            checkpointed: from,
            waiting: false,
            replaying: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<IndexMsg>,
        IndexMsg::Pump: IndexMsg,
        s: &mut IndexState,
    ) -> Result<(), ActorProcessingErr> {
        s.waiting = false;
        let from = s.shared.applied() + 1;
        let page = match s.log.read_all(from, INDEX_PAGE_EVENTS).await {
            Ok(page) => page,
            Err(e) => {
                let delay = match LogStop::of(&e, from) {
                    // Transient: read again later rather than rebuild the index from scratch.
                    None => {
                        tracing::info!(error = %e, "GC ref index: log unavailable; retrying");
                        Duration::from_millis(READ_RETRY_MS)
                    }
                    // The same record gives the same answer: stop here (nothing of it was
                    // applied, so no rebuild) and read it again much later.
                    Some(stop) => {
                        s.shared.record_stop(stop);
                        STOPPED_RETRY
                    }
                };
                let me = myself.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = me.send_message(IndexMsg::Pump);
                });
                s.waiting = true;
                return Ok(());
            }
        };
        let n = page.len();
        if let Some(last) = page.last() {
            let checkpoint = {
                let mut ix = s.shared.index.lock().unwrap_or_else(|p| p.into_inner());
                for env in &page {
                    if let Err(e) = ix.apply(env) {
                        // The index may hold part of this event: record why, then fail (the
                        // supervisor rebuilds it, after `STOPPED_RETRY` since it is stopped).
                        drop(ix);
                        let stop = LogStop::of(&e, env.position).unwrap_or(LogStop {
                            position: env.position,
                            reason: e.message(),
                        });
                        s.shared.record_stop(stop);
                        return Err(e.into());
                    }
                }
                (last.position - s.checkpointed >= CHECKPOINT_EVERY_EVENTS)
                    .then(|| ix.to_checkpoint((&last.stream, last.version)))
            };
            s.shared.applied_tx.send_replace(last.position);
            s.shared.passed(last.position);
            if let Some(bytes) = checkpoint {
                match put_object(&*s.store, CHECKPOINT_KEY, bytes::Bytes::from(bytes?)).await {
                    Ok(()) => s.checkpointed = last.position,
                    Err(e) => tracing::warn!(error = %e, "GC ref index: checkpoint not written"),
                }
            }
        }
        if n == INDEX_PAGE_EVENTS {
            myself.send_message(IndexMsg::Pump)?;
            s.replaying = true;
        } else if !s.waiting {
            if std::mem::take(&mut s.replaying) {
                // Caught up after a replay: drop the growth slack once.
                s.shared
                    .index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .shrink();
            }
            // Tail: wake when the head moves past what we applied.
            s.waiting = true;
            let mut head = s.log.watch_head();
            let applied = s.shared.applied();
            let me = myself.clone();
            tokio::spawn(async move {
                loop {
                    if *head.borrow_and_update() > applied {
                        break;
                    }
                    if head.changed().await.is_err() {
                        return;
                    }
                }
                let _ = me.send_message(IndexMsg::Pump);
            });
        }
        Ok(())
    }
}

/// The checkpoint, if there is one, it is sound, and it belongs to this log.
async fn load_checkpoint(log: &dyn EventLog, store: &dyn ObjectStore) -> RefIndex {
    let bytes = match get_object(store, CHECKPOINT_KEY).await {
        Ok(b) => b,
        Err(e) => {
            if e.code != ErrorCode::NotFound {
                tracing::warn!(error = %e, "GC ref index: checkpoint unreadable; replaying the log");
            }
            return RefIndex::default();
        }
    };
    let (index, stream, version) = match RefIndex::from_checkpoint(&bytes) {
        Ok(x) => x,
        Err(reason) => {
            tracing::warn!(%reason, "GC ref index: checkpoint refused; replaying the log");
            return RefIndex::default();
        }
    };
    let at = index.applied();
    match log.read_all(at, 1).await {
        Ok(page)
            if page.first().is_some_and(|e| {
                e.position == at && e.stream == stream && e.version == version
            }) =>
        {
            tracing::info!(position = at, "GC ref index: starting from checkpoint");
            index
        }
        _ => {
            tracing::warn!(
                position = at,
                "GC ref index: checkpoint does not match this log; replaying"
            );
            RefIndex::default()
        }
    }
}

// ---- the sweeper child ---------------------------------------------------------------------

struct SweeperActor;

enum SweepMsg {
    Run {
        options: GcRunOptions,
        reply: oneshot::Sender<Result<GcReport, Error>>,
    },
    Tick,
}

struct SweeperState {
    ctx: SweepContext,
    shared: Arc<Shared>,
    memory: SweepState,
}

impl SweeperState {
    /// Claim the GC singleton for one cycle. `Ok(Err(holder))` when another node runs one: a
    /// periodic cycle then skips; one a user asked for waits (bounded) for it to end.
    async fn claim(&self, periodic: bool) -> Result<Result<CycleClaim, String>, Error> {
        let registry = &self.ctx.snapshots.registry;
        let work = &self.ctx.work;
        let give_up_ms = self.ctx.clock.now_ms() + work.claim_ttl_ms + 2 * work.reconcile_ms;
        loop {
            match singleton::try_claim(registry, work).await? {
                Attempt::Held(c) => return Ok(Ok(c)),
                Attempt::Busy(holder) if periodic => return Ok(Err(holder)),
                Attempt::Busy(holder) if self.ctx.clock.now_ms() >= give_up_ms => {
                    return Err(Error::unavailable(format!(
                        "a GC cycle is running on node '{holder}'; try again when it is done"
                    )));
                }
                Attempt::Busy(_) => tokio::time::sleep(Duration::from_millis(CLAIM_RETRY_MS)).await,
            }
        }
    }

    async fn run(&mut self, options: &GcRunOptions, periodic: bool) -> Result<GcReport, Error> {
        if !self.shared.loaded() {
            let reason = self.shared.not_loaded();
            return Ok(GcReport {
                dry_run: options.dry_run,
                loaded: false,
                not_loaded_reason: Some(reason),
                ..GcReport::default()
            });
        }
        // A dry run deletes nothing: it needs no claim.
        let claim = if options.dry_run {
            None
        } else {
            match self.claim(periodic).await? {
                Ok(c) => Some(c),
                Err(holder) => {
                    return Ok(GcReport {
                        dry_run: options.dry_run,
                        loaded: false,
                        not_loaded_reason: Some(format!(
                            "a GC cycle is running on node '{holder}'"
                        )),
                        ..GcReport::default()
                    });
                }
            }
        };
        let mut rx = self.shared.applied_tx.subscribe();
        let shared = self.shared.clone();
        let stopped = move || shared.stopped().map(|s| s.to_string());
        let started = tokio::time::Instant::now();
        let report = self
            .ctx
            .cycle(
                &self.shared.index,
                &mut rx,
                &mut self.memory,
                options,
                &stopped,
            )
            .await;
        if let Some(c) = claim {
            c.release().await;
        }
        let metrics = self.ctx.snapshots.registry.metrics().clone();
        let outcome = if report.is_ok() { "ok" } else { "failed" };
        metrics
            .gc_cycles
            .get_or_create(&crate::metrics::label("outcome", outcome))
            .inc();
        metrics
            .gc_cycle_seconds
            .observe(started.elapsed().as_secs_f64());
        let report = report?;
        if !report.dry_run {
            for (c, a) in &report.reclaimed {
                let category = crate::metrics::label("category", c.as_str());
                metrics
                    .gc_reclaimed_objects
                    .get_or_create(&category)
                    .inc_by(a.objects);
                metrics
                    .gc_reclaimed_bytes
                    .get_or_create(&category)
                    .inc_by(a.bytes);
            }
            if report.reclaimed.values().any(|a| a.objects > 0) {
                tracing::info!(
                    objects = report.reclaimed.values().map(|a| a.objects).sum::<u64>(),
                    bytes = report.reclaimed.values().map(|a| a.bytes).sum::<u64>(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "gc cycle reclaimed"
                );
            }
        }
        let mut st = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        if !report.dry_run {
            for (c, a) in &report.reclaimed {
                let t = st.totals.entry(*c).or_default();
                t.objects += a.objects;
                t.bytes += a.bytes;
            }
        }
        st.last_cycle = Some(report.clone());
        Ok(report)
    }
}

#[ractor::async_trait]
impl Actor for SweeperActor {
    type Msg = SweepMsg;
    type State = SweeperState;
    type Arguments = (SweepContext, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<SweepMsg>,
        (ctx, shared): Self::Arguments,
    ) -> Result<SweeperState, ActorProcessingErr> {
        if ctx.config.interval_ms > 0 {
            let every = Duration::from_millis(ctx.config.interval_ms);
            myself.send_interval(every, || SweepMsg::Tick);
            let next = ctx.clock.now_ms() + ctx.config.interval_ms;
            shared
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .next_run_ms = Some(next);
        }
        Ok(SweeperState {
            ctx,
            shared,
            memory: SweepState::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SweepMsg>,
        msg: SweepMsg,
        s: &mut SweeperState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SweepMsg::Run { options, reply } => {
                let out = s.run(&options, false).await;
                let _ = reply.send(out);
            }
            SweepMsg::Tick => {
                match s.run(&GcRunOptions::default(), true).await {
                    Ok(r) if !r.loaded => tracing::info!(
                        reason = r.not_loaded_reason.as_deref().unwrap_or(""),
                        "GC cycle skipped"
                    ),
                    Ok(r) => tracing::info!(
                        cycle = r.cycle,
                        objects = r.total().objects,
                        bytes = r.total().bytes,
                        "GC cycle done"
                    ),
                    Err(e) => tracing::warn!(error = %e, "GC cycle failed; the next one retries"),
                }
                let next = s.ctx.clock.now_ms() + s.ctx.config.interval_ms;
                s.shared
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next_run_ms = Some(next);
            }
        }
        Ok(())
    }
}

// ---- the supervisor ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Index,
    Sweeper,
}

enum GcMsg {
    Run {
        options: GcRunOptions,
        reply: oneshot::Sender<Result<GcReport, Error>>,
    },
    Restart(Child),
}

struct GcSupervisor;

struct SupState {
    log: Arc<dyn EventLog>,
    ctx: SweepContext,
    shared: Arc<Shared>,
    index: Option<ActorRef<IndexMsg>>,
    sweeper: Option<ActorRef<SweepMsg>>,
    backoff_ms: u64,
    /// When each child last started.
    index_started: Option<tokio::time::Instant>,
    sweeper_started: Option<tokio::time::Instant>,
}

impl SupState {
    async fn start(
        &mut self,
        myself: &ActorRef<GcMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        match child {
            Child::Index => {
                let (r, _) = Actor::spawn_linked(
                    None,
                    RefIndexActor,
                    (
                        self.log.clone(),
                        self.ctx.store.clone(),
                        self.shared.clone(),
                    ),
                    myself.get_cell(),
                )
                .await?;
                self.index = Some(r);
                self.index_started = Some(tokio::time::Instant::now());
            }
            Child::Sweeper => {
                let (r, _) = Actor::spawn_linked(
                    None,
                    SweeperActor,
                    (self.ctx.clone(), self.shared.clone()),
                    myself.get_cell(),
                )
                .await?;
                self.sweeper = Some(r);
                self.sweeper_started = Some(tokio::time::Instant::now());
            }
        }
        Ok(())
    }
}

#[ractor::async_trait]
impl Actor for GcSupervisor {
    type Msg = GcMsg;
    type State = SupState;
    type Arguments = (SweepContext, Arc<Shared>);

    async fn pre_start(
        &self,
        myself: ActorRef<GcMsg>,
        (ctx, shared): Self::Arguments,
    ) -> Result<SupState, ActorProcessingErr> {
        let mut s = SupState {
            log: ctx.log.clone(),
            ctx,
            shared,
            index: None,
            sweeper: None,
            backoff_ms: FIRST_RESTART_BACKOFF_MS,
            index_started: None,
            sweeper_started: None,
        };
        // A child that cannot start now (a transient log error while the index reads the
        // head) is retried with backoff like one that failed later: the node still starts,
        // and GC reports "not loaded" until the index is up.
        for child in [Child::Index, Child::Sweeper] {
            if let Err(e) = s.start(&myself, child).await {
                tracing::warn!(?child, error = %e, "GC child failed to start; retrying");
                schedule_restart(&myself, child, &mut s);
            }
        }
        Ok(s)
    }

    async fn handle(
        &self,
        myself: ActorRef<GcMsg>,
        msg: GcMsg,
        s: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GcMsg::Run { options, reply } => match &s.sweeper {
                Some(sweeper) => {
                    if let Err(ractor::MessagingErr::SendErr(SweepMsg::Run { reply, .. })) =
                        sweeper.send_message(SweepMsg::Run { options, reply })
                    {
                        let _ = reply.send(Err(Error::unavailable(
                            "the GC sweeper is restarting; try again",
                        )));
                    }
                }
                None => {
                    let _ = reply.send(Err(Error::unavailable(
                        "the GC sweeper is restarting; try again",
                    )));
                }
            },
            GcMsg::Restart(_) if s.shared.stopping.load(Ordering::SeqCst) => {}
            GcMsg::Restart(child) => {
                // The backoff starts over only once a child ran for a while (in
                // `handle_supervisor_evt`): one that fails right after it started again must
                // not be restarted every `FIRST_RESTART_BACKOFF_MS`.
                if let Err(e) = s.start(&myself, child).await {
                    tracing::warn!(?child, error = %e, "GC child failed to restart; retrying");
                    schedule_restart(&myself, child, s);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<GcMsg>,
        event: SupervisionEvent,
        s: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let (who, why) = match &event {
            SupervisionEvent::ActorFailed(who, err) => (who.get_id(), err.to_string()),
            SupervisionEvent::ActorTerminated(who, _, reason) => (
                who.get_id(),
                reason.clone().unwrap_or_else(|| "stopped".into()),
            ),
            _ => return Ok(()),
        };
        if s.shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (child, started) = if s.index.as_ref().is_some_and(|r| r.get_id() == who) {
            s.index = None;
            (Child::Index, s.index_started.take())
        } else if s.sweeper.as_ref().is_some_and(|r| r.get_id() == who) {
            s.sweeper = None;
            (Child::Sweeper, s.sweeper_started.take())
        } else {
            return Ok(());
        };
        if started.is_some_and(|t| t.elapsed() >= Duration::from_millis(STABLE_CHILD_MS)) {
            s.backoff_ms = FIRST_RESTART_BACKOFF_MS;
        }
        s.shared.restarts.fetch_add(1, Ordering::SeqCst);
        match s.shared.stopped() {
            // The index failed on the record it stopped at: `record_stop` said so already.
            Some(stop) if child == Child::Index && why.contains(&stop.reason) => {
                tracing::debug!(?child, reason = %why, "GC child ended at the record it stopped at; restarting later");
            }
            _ => {
                tracing::warn!(?child, reason = %why, backoff_ms = s.backoff_ms, "GC child ended; restarting")
            }
        }
        schedule_restart(&myself, child, s);
        Ok(())
    }
}

fn schedule_restart(myself: &ActorRef<GcMsg>, child: Child, s: &mut SupState) {
    let mut delay = Duration::from_millis(s.backoff_ms);
    if child == Child::Index && s.shared.stopped().is_some() {
        // Rebuilding stops at the same record until someone repairs the log.
        delay = delay.max(STOPPED_RETRY);
    }
    s.backoff_ms = (s.backoff_ms * 2).min(MAX_RESTART_BACKOFF_MS);
    let me = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = me.send_message(GcMsg::Restart(child));
    });
}

/// The node's handle on GC.
#[derive(Clone)]
pub struct Gc {
    supervisor: ActorRef<GcMsg>,
    shared: Arc<Shared>,
}

impl Gc {
    pub async fn start(ctx: SweepContext) -> Result<Gc, Error> {
        let (applied_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            index: Mutex::new(RefIndex::default()),
            applied_tx,
            target_head: AtomicU64::new(u64::MAX),
            restarts: AtomicU64::new(0),
            status: Mutex::new(GcStatus::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop: Mutex::new(None),
            warnings: Mutex::new(StopWarnings::default()),
        });
        let (supervisor, _) = Actor::spawn(None, GcSupervisor, (ctx, shared.clone()))
            .await
            .map_err(|e| Error::internal(format!("cannot start GC: {e}")))?;
        Ok(Gc { supervisor, shared })
    }

    /// Run a cycle now (or a dry run).
    pub async fn run(&self, options: GcRunOptions) -> Result<GcReport, Error> {
        let (reply, rx) = oneshot::channel();
        self.supervisor
            .send_message(GcMsg::Run { options, reply })
            .map_err(|_| Error::unavailable("GC is not running"))?;
        rx.await
            .map_err(|_| Error::unavailable("the GC sweeper stopped during the cycle; try again"))?
    }

    /// Wait until the ref index is loaded (or `timeout`); `unavailable` at once, naming the
    /// position and why, while it is stopped at a record it cannot read.
    pub async fn wait_loaded(&self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.shared.applied_tx.subscribe();
        let wait = async {
            loop {
                if self.shared.loaded() {
                    return Ok(());
                }
                // Stopped at a record: no use waiting for it.
                if self.shared.stopped().is_some() {
                    return Err(Error::unavailable(self.shared.not_loaded()));
                }
                if rx.changed().await.is_err() {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::unavailable(self.shared.not_loaded()))?
    }

    pub fn status(&self) -> GcStatus {
        let mut st = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        st.applied = self.shared.applied();
        st.target_head = self.shared.target_head.load(Ordering::SeqCst);
        st.loaded = self.shared.loaded();
        st.not_loaded_reason = (!st.loaded).then(|| self.shared.not_loaded());
        let stop = self.shared.stopped();
        st.stopped_at = stop.as_ref().map(|s| s.position);
        st.stopped_reason = stop.map(|s| s.reason);
        st.child_restarts = self.shared.restarts.load(Ordering::SeqCst);
        st.files_indexed = self
            .shared
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file_count() as u64;
        st
    }

    pub async fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.supervisor
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await;
    }
}
