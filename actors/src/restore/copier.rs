//! The copy of one file, and the copy-task actor that copies a task's files.
//!
//! **One file.** With checksum verification (the default) the source is streamed through
//! once: its crc32c is computed on the bytes as they pass and compared with the snapshot's
//! record *before* the destination is published (a single `put`, or a multipart upload that
//! is aborted on a mismatch), then the destination's size is checked with a `head`. So a
//! destination object exists only if it holds exactly the recorded bytes — which is what
//! lets a resumed task trust a destination it finds (see `check_existing`). Without
//! verification a server-side `copy` is used (a hard link on the local store, `CopyObject` on
//! S3) and only sizes are checked: reading the bytes back would double the I/O the copy saved.
//!
//! **One task.** [`CopyRunner`] is a ractor actor spawned (linked) by the node's restore
//! manager once the node holds the task's claim. It rebuilds the task from its stream, copies
//! the files not yet recorded as done (the task's parallelism at once, within the node's
//! copies in flight, shared by all its tasks through one semaphore, and within the node's and
//! the job's bandwidth limits), records progress in bounded batches under its claim's epoch,
//! and tells the manager how it ended. A stop signal (cancel, a lost or lapsing claim,
//! shutdown) stops it between files — and between chunks of a big file — after recording what
//! was done. A record refused because the claim moved on stops it at once (`Lost`).

use crate::copy_audit::record_copy;
use crate::crash_points::crash_point;
use crate::restore::context::RestoreContext;
use crate::restore::copy_task::{CopyItem, CopyTask, copy_items};
use crate::restore::throttle::Throttles;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use snapvault_events::ErrorCode;
use snapvault_events::domain::JobId;
use snapvault_events::domain::restore::{CopyTaskCommand, CopyTaskStatus, copy_task_stream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

/// Why one file's copy did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFailure {
    /// The source is missing or does not match the snapshot: retrying cannot help.
    Permanent(String),
    /// The store could not be reached, or answered oddly: worth retrying.
    Transient(String),
    /// The task was told to stop.
    Stopped,
}

/// How a copy task ended, as its runner reports it to the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Every file is copied, checked and recorded; the task is Completed.
    Done,
    /// A source file is missing or corrupt; the task is Failed.
    Failed { key: String, reason: String },
    /// Stopped on request; progress so far is recorded.
    Stopped,
    /// The task's claim was taken by another node (or it ended): this run recorded what it
    /// could and stopped; nothing is to be released.
    Lost,
    /// Transient errors outlasted the retries; run the task again later.
    Retry(String),
}

fn transient(key: &str, e: object_store::Error) -> CopyFailure {
    CopyFailure::Transient(format!("object store error on '{key}': {e}"))
}

/// Copy one file, checking it as described in the module docs.
pub async fn copy_file(
    store: &dyn ObjectStore,
    item: &CopyItem,
    verify: bool,
    throttle: &Throttles,
    limits: CopyLimits,
    stop: &StopFlag,
) -> Result<(), CopyFailure> {
    let src = Path::from(item.source_key.as_str());
    let dst = Path::from(item.dest.key.as_str());
    let want = &item.dest;
    if !verify {
        throttle.take(want.size).await;
        record_copy(&want.key);
        match store.copy(&src, &dst).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(CopyFailure::Permanent("the source file is missing".into()));
            }
            Err(e) => return Err(transient(&item.source_key, e)),
        }
        return check_size(store, &dst, &want.key, want.size, true).await;
    }
    let got = match store.get(&src).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(CopyFailure::Permanent("the source file is missing".into()));
        }
        Err(e) => return Err(transient(&item.source_key, e)),
    };
    if got.meta.size != want.size {
        return Err(CopyFailure::Permanent(format!(
            "the source file is {} bytes; the snapshot recorded {}",
            got.meta.size, want.size
        )));
    }
    // Under a bandwidth limit a single put moves at most one burst at once; bigger files
    // stream and pay per chunk, which holds the rate to ±10% over any 5 s (`throttle.rs`).
    let single_put_max_bytes = throttle
        .largest_single_move()
        .map_or(limits.single_put_max_bytes, |b| {
            limits.single_put_max_bytes.min(b)
        });
    if want.size <= single_put_max_bytes {
        // One read of the whole object (the local store reads it in one go; a stream would
        // be many small blocking reads), then the checksum over it, then one put.
        throttle.take(want.size).await;
        if stop.is_set() {
            return Err(CopyFailure::Stopped);
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| transient(&item.source_key, e))?;
        check_source(bytes.len() as u64, crc32c::crc32c(&bytes), want)?;
        record_copy(&want.key);
        store
            .put(&dst, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| transient(&want.key, e))?;
    } else {
        let mut stream = got.into_stream();
        let mut crc = 0u32;
        let mut seen = 0u64;
        record_copy(&want.key);
        let upload = store
            .put_multipart(&dst)
            .await
            .map_err(|e| transient(&want.key, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, limits.part_bytes);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) if !stop.is_set() => c,
                Ok(_) => {
                    let _ = w.abort().await;
                    return Err(CopyFailure::Stopped);
                }
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(transient(&item.source_key, e));
                }
            };
            throttle.take(chunk.len() as u64).await;
            crc = crc32c::crc32c_append(crc, &chunk);
            seen += chunk.len() as u64;
            if let Err(e) = w.wait_for_capacity(limits.parts_in_flight).await {
                let _ = w.abort().await;
                return Err(transient(&want.key, e));
            }
            w.put(chunk);
        }
        if let Err(f) = check_source(seen, crc, want) {
            let _ = w.abort().await;
            return Err(f);
        }
        w.finish().await.map_err(|e| transient(&want.key, e))?;
    }
    check_size(store, &dst, &want.key, want.size, false).await
}

fn check_source(
    seen: u64,
    crc: u32,
    want: &snapvault_events::domain::FileRef,
) -> Result<(), CopyFailure> {
    if seen != want.size {
        return Err(CopyFailure::Permanent(format!(
            "the source file read as {seen} bytes; the snapshot recorded {}",
            want.size
        )));
    }
    if crc != want.crc32c {
        return Err(CopyFailure::Permanent(format!(
            "the source file's crc32c is {crc:#010x}; the snapshot recorded {:#010x}",
            want.crc32c
        )));
    }
    Ok(())
}

/// The destination must have the size it was given. After a server-side copy a wrong size
/// means the source was wrong (`source_is_suspect`); after a streamed put it means the store
/// misbehaved, which a retry may fix.
async fn check_size(
    store: &dyn ObjectStore,
    dst: &Path,
    key: &str,
    size: u64,
    source_is_suspect: bool,
) -> Result<(), CopyFailure> {
    let meta = store.head(dst).await.map_err(|e| transient(key, e))?;
    if meta.size == size {
        return Ok(());
    }
    let why = format!("the copy of '{key}' is {} bytes, not {size}", meta.size);
    if source_is_suspect {
        Err(CopyFailure::Permanent(why))
    } else {
        Err(CopyFailure::Transient(why))
    }
}

/// Sizes that shape a copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyLimits {
    /// Files up to this size are buffered and published with one `put`.
    pub single_put_max_bytes: u64,
    /// Part size of a multipart upload (S3 needs ≥ 5 MiB).
    pub part_bytes: usize,
    /// Parts of one upload in flight at once.
    pub parts_in_flight: usize,
}

/// Set when a task must stop: the job's signal (cancel, shutdown) or the task's own failure.
#[derive(Clone)]
pub struct StopFlag {
    job: watch::Receiver<bool>,
    local: Arc<AtomicBool>,
}

impl StopFlag {
    pub fn new(job: watch::Receiver<bool>) -> StopFlag {
        StopFlag {
            job,
            local: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_set(&self) -> bool {
        *self.job.borrow() || self.local.load(Ordering::Relaxed)
    }

    fn set_local(&self) {
        self.local.store(true, Ordering::Relaxed);
    }

    /// Sleep `ms`, waking early when the stop is set. Returns whether it was.
    async fn sleep(&self, ms: u64) -> bool {
        let mut job = self.job.clone();
        tokio::select! {
            biased;
            _ = job.wait_for(|s| *s) => true,
            _ = tokio::time::sleep(Duration::from_millis(ms)) => self.is_set(),
        }
    }
}

/// What a copy-task actor needs.
#[derive(Clone)]
pub struct CopyRunnerArgs {
    pub ctx: RestoreContext,
    pub job_id: JobId,
    pub task: u32,
    /// The epoch of this node's claim on the task: every record carries it.
    pub epoch: u64,
    /// The claim's deadline, moved on by the manager at each renewal. The copier stops by
    /// itself before copying a file once less than `stop_below_ms` of it is left (by this
    /// node's clock), even if the manager is too busy to tell it: it fences itself out.
    pub claim_deadline_ms: Arc<std::sync::atomic::AtomicU64>,
    pub stop_below_ms: u64,
    pub verify: bool,
    /// The node's file copies in flight, shared by every task it runs.
    pub permits: Arc<Semaphore>,
    /// File copies of this task in flight at once.
    pub parallelism: usize,
    /// The node's and the job's bandwidth limits.
    pub throttle: Throttles,
    pub stop: watch::Receiver<bool>,
    /// Trust a destination that exists with the right size (a resumed task: the previous
    /// run may have copied files it did not get to record).
    pub check_existing: bool,
    pub report: ractor::ActorRef<crate::restore::manager::ManagerMsg>,
}

pub enum CopyRunnerMsg {
    Run,
}

pub struct CopyRunner;

#[ractor::async_trait]
impl Actor for CopyRunner {
    type Msg = CopyRunnerMsg;
    type State = CopyRunnerArgs;
    type Arguments = CopyRunnerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CopyRunnerMsg>,
        args: CopyRunnerArgs,
    ) -> Result<CopyRunnerArgs, ActorProcessingErr> {
        myself.send_message(CopyRunnerMsg::Run)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<CopyRunnerMsg>,
        _msg: CopyRunnerMsg,
        args: &mut CopyRunnerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let outcome = run_task(args)
            .instrument(tracing::info_span!(
                "copy_task",
                job = args.job_id,
                task = args.task,
                epoch = args.epoch
            ))
            .await;
        let _ = args
            .report
            .send_message(crate::restore::manager::ManagerMsg::TaskFinished {
                job: args.job_id,
                task: args.task,
                epoch: args.epoch,
                outcome,
            });
        myself.stop(None);
        Ok(())
    }
}

/// Why a progress record did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RecordFailure {
    /// The log kept failing: run the task again later.
    Retry(String),
    /// The claim is gone (another node holds the task, or it ended): stop at once.
    Lost(String),
}

/// A progress record in flight (see [`run_task`]).
type RecordFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RecordFailure>> + Send + 'a>>;

/// Record `files` as copied, retrying transient log errors a bounded number of times.
async fn record(args: &CopyRunnerArgs, stream: &str, files: Vec<u32>) -> Result<(), RecordFailure> {
    if files.is_empty() {
        return Ok(());
    }
    let cfg = &args.ctx.config;
    let mut backoff = snapvault_events::Backoff::new(cfg.retry_initial_ms, cfg.retry_max_ms);
    for attempt in 1..=cfg.max_attempts_per_file.max(1) {
        match args
            .ctx
            .registry
            .execute::<CopyTask>(
                stream,
                CopyTaskCommand::RecordCopied {
                    files: files.clone(),
                    epoch: args.epoch,
                },
                args.job_id,
            )
            .await
        {
            Ok(_) => {
                crash_point("restore.after_progress");
                return Ok(());
            }
            Err(e) if e.is_transient() && attempt < cfg.max_attempts_per_file => {
                tokio::time::sleep(Duration::from_millis(backoff.current_ms())).await;
                backoff.grow();
            }
            Err(e) if e.code == ErrorCode::FailedPrecondition => {
                return Err(RecordFailure::Lost(e.message));
            }
            Err(e) => return Err(RecordFailure::Retry(format!("cannot record progress: {e}"))),
        }
    }
    Err(RecordFailure::Retry("cannot record progress".into()))
}

/// Copy one item with retries; `Ok(true)` when it was already there.
async fn copy_with_retries(
    args: &CopyRunnerArgs,
    item: &CopyItem,
    stop: &StopFlag,
) -> Result<bool, CopyFailure> {
    let cfg = &args.ctx.config;
    let store = &*args.ctx.store;
    if args.check_existing {
        match store.head(&Path::from(item.dest.key.as_str())).await {
            Ok(m) if m.size == item.dest.size => {
                args.ctx.registry.metrics().restore_files_skipped.inc();
                return Ok(true);
            }
            _ => {}
        }
    }
    let mut backoff = snapvault_events::Backoff::new(cfg.retry_initial_ms, cfg.retry_max_ms);
    let mut attempt = 1;
    loop {
        let deadline_ms = args.claim_deadline_ms.load(Ordering::SeqCst);
        if deadline_ms <= args.ctx.clock.now_ms().saturating_add(args.stop_below_ms) {
            tracing::info!(
                job = args.job_id,
                task = args.task,
                "copy task claim about to lapse unrenewed; stopping"
            );
            stop.set_local();
        }
        if stop.is_set() {
            return Err(CopyFailure::Stopped);
        }
        match copy_file(
            store,
            item,
            args.verify,
            &args.throttle,
            cfg.copy_limits(),
            stop,
        )
        .await
        {
            Ok(()) => {
                let metrics = args.ctx.registry.metrics();
                metrics.restore_bytes.inc_by(item.dest.size);
                metrics.restore_files.inc();
                return Ok(false);
            }
            Err(CopyFailure::Transient(e)) if attempt < cfg.max_attempts_per_file => {
                args.ctx.registry.metrics().restore_copy_retries.inc();
                tracing::debug!(job = args.job_id, key = %item.source_key, attempt, error = %e, "copy will retry");
                if stop.sleep(backoff.current_ms()).await {
                    return Err(CopyFailure::Stopped);
                }
                backoff.grow();
                attempt += 1;
            }
            Err(f) => return Err(f),
        }
    }
}

/// Copy every file of the task not yet recorded, record progress, and end the task.
pub async fn run_task(args: &CopyRunnerArgs) -> TaskOutcome {
    let stream = copy_task_stream(args.job_id, args.task);
    let registry = &args.ctx.registry;
    let loaded = registry
        .inspect_latest::<CopyTask, _>(&stream, |_, s| {
            (
                s.status.clone(),
                s.failure.clone(),
                copy_items(&s.segments)
                    .into_iter()
                    .filter(|i| !s.is_done(i.ordinal))
                    .collect::<Vec<_>>(),
                s.files_done,
                s.claim.holder.as_ref().map(|c| c.epoch),
            )
        })
        .await;
    let (status, failure, todo, files_done, holder_epoch) = match loaded {
        Ok(x) => x,
        Err(e) => return TaskOutcome::Retry(format!("cannot load copy task {}: {e}", args.task)),
    };
    match status {
        Some(CopyTaskStatus::Planned) if holder_epoch != Some(args.epoch) => {
            return TaskOutcome::Lost;
        }
        Some(CopyTaskStatus::Planned) => {}
        Some(CopyTaskStatus::Completed) => return TaskOutcome::Done,
        Some(CopyTaskStatus::Abandoned) => return TaskOutcome::Lost,
        Some(CopyTaskStatus::Failed) => {
            let (key, reason) = failure.unwrap_or_default();
            return TaskOutcome::Failed { key, reason };
        }
        None => {
            return TaskOutcome::Retry(format!("copy task {} is not planned yet", args.task));
        }
    }
    let stop = StopFlag::new(args.stop.clone());
    let mut me = args.clone();
    me.check_existing |= files_done > 0;
    let cfg = &args.ctx.config;
    let mut batch: Vec<u32> = Vec::new();
    let mut last_record = tokio::time::Instant::now();
    let mut failure: Option<(String, String)> = None;
    let mut retry: Option<String> = None;
    let mut lost = false;
    let mut stopped = false;
    {
        let me = &me;
        let stop_ref = &stop;
        let mut copies = futures::stream::iter(todo)
            .map(|item| async move {
                let Ok(_permit) = me.permits.acquire().await else {
                    return (item, Err(CopyFailure::Stopped));
                };
                let r = copy_with_retries(me, &item, stop_ref).await;
                (item, r)
            })
            .buffer_unordered(args.parallelism.max(1));
        // A progress record runs *beside* the copies, never in front of them: while it waits
        // for the log, the copy stream keeps being polled, so no copy stalls on an append.
        // One record at a time, so records land in order and at most the batch being
        // recorded plus the one filling up are unrecorded at a crash.
        let mut recording: Option<RecordFuture<'_>> = None;
        let mut copies_done = false;
        while !(copies_done && recording.is_none()) {
            tokio::select! {
                biased;
                recorded = async {
                    match recording.as_mut() {
                        Some(in_flight) => in_flight.await,
                        None => std::future::pending().await,
                    }
                }, if recording.is_some() => {
                    recording = None;
                    last_record = tokio::time::Instant::now();
                    match recorded {
                        Ok(()) => {}
                        Err(RecordFailure::Retry(e)) => {
                            stop.set_local();
                            retry.get_or_insert(e);
                        }
                        Err(RecordFailure::Lost(e)) => {
                            tracing::info!(job = args.job_id, task = args.task, reason = %e, "copy task claim lost; stopping");
                            stop.set_local();
                            lost = true;
                        }
                    }
                }
                next = copies.next(), if !copies_done => match next {
                    None => copies_done = true,
                    Some((item, r)) => match r {
                        Ok(_) => batch.push(item.ordinal),
                        Err(CopyFailure::Permanent(reason)) => {
                            stop.set_local();
                            if failure.is_none() {
                                failure = Some((item.source_key.clone(), reason));
                            }
                        }
                        Err(CopyFailure::Transient(e)) => {
                            stop.set_local();
                            retry.get_or_insert(format!("'{}': {e}", item.source_key));
                        }
                        Err(CopyFailure::Stopped) => stopped = true,
                    },
                },
            }
            let due = batch.len() >= cfg.progress_batch_files.max(1)
                || last_record.elapsed() >= Duration::from_millis(cfg.progress_batch_ms);
            if recording.is_none() && due && !batch.is_empty() {
                recording = Some(Box::pin(record(args, &stream, std::mem::take(&mut batch))));
            }
        }
    }
    if !lost {
        match record(args, &stream, batch).await {
            Ok(()) => {}
            Err(RecordFailure::Retry(e)) => {
                retry.get_or_insert(e);
            }
            Err(RecordFailure::Lost(_)) => lost = true,
        }
    }
    if lost {
        return TaskOutcome::Lost;
    }
    if let Some((key, reason)) = failure {
        let failed = registry
            .execute::<CopyTask>(
                &stream,
                CopyTaskCommand::Fail {
                    key: key.clone(),
                    reason: reason.clone(),
                    epoch: args.epoch,
                },
                args.job_id,
            )
            .await;
        return match failed {
            Ok(_) => TaskOutcome::Failed { key, reason },
            Err(e) if e.code == ErrorCode::FailedPrecondition => TaskOutcome::Lost,
            Err(e) => TaskOutcome::Retry(format!("cannot record the failure of '{key}': {e}")),
        };
    }
    if let Some(r) = retry {
        return TaskOutcome::Retry(r);
    }
    if stopped || stop.is_set() {
        return TaskOutcome::Stopped;
    }
    match registry
        .execute::<CopyTask>(
            &stream,
            CopyTaskCommand::Complete { epoch: args.epoch },
            args.job_id,
        )
        .await
    {
        Ok(_) => {
            registry.release(&stream);
            TaskOutcome::Done
        }
        Err(e) if e.code == ErrorCode::FailedPrecondition => TaskOutcome::Lost,
        Err(e) => TaskOutcome::Retry(format!("cannot complete copy task {}: {e}", args.task)),
    }
}
