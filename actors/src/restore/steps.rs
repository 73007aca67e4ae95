//! The steps of a restore job: effects, run by the job's runner, each idempotent.
//!
//! - [`ensure_target`]: the target collection exists in `Restoring` (same schema, shards,
//!   the chosen partitions, the snapshot's indexes) and the catalog points its name at it.
//! - [`prepare`]: lease the snapshot, reserve the id block, plan every copy task, start.
//! - [`commit`]: stage every restored segment into the target, complete the target (Ready,
//!   all segments live in one event), release the lease, complete the job.
//! - [`rollback`]: delete everything under the target's prefix, drop the target, free the
//!   name, release the lease, finish the rollback.
//!
//! Each step reads what is recorded and does only what is missing, so running a step again
//! after a crash anywhere inside it repeats no visible effect.

use crate::catalog::{Catalog, CatalogCommand};
use crate::collection::{Collection, CollectionState};
use crate::crash_points::crash_point;
use crate::restore::context::RestoreContext;
use crate::restore::copy_task::{CopyTask, CopyTaskState};
use crate::restore::job::{RestoreJob, RestoreJobState};
use crate::restore::plan::{PlanContext, PlannedTask, Planner};
use crate::snapshot::manifest::{self, SnapshotMetadata};
use crate::snapshot::worker::{get_recorded, relocate};
use crate::snapshot::{Snapshot, SnapshotState};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use snapvault_events::domain::catalog::CATALOG_STREAM;
use snapvault_events::domain::collection::{
    CollectionCommand, CollectionStatus, CreateCollection, DEFAULT_PARTITION, NewIndex,
    SegmentRecord,
};
use snapvault_events::domain::collection_stream;
use snapvault_events::domain::restore::{
    CopyTaskCommand, CopyTaskStatus, MAX_TASKS_PER_EVENT, RestoreCommand, RestoreRequest,
    RestoreTotals, TaskSummary, copy_task_stream, restore_stream,
};
use snapvault_events::domain::snapshot::{SnapshotCommand, SnapshotStatus, snapshot_stream};
use snapvault_events::{Error, ErrorCode};
use std::collections::BTreeMap;

/// Most encoded bytes of segments staged in one append (each segment is one event).
const MAX_STAGE_BATCH_BYTES: usize = 256 * 1024;

pub async fn job_state(ctx: &RestoreContext, job: u64) -> Result<RestoreJobState, Error> {
    ctx.registry
        .inspect_latest::<RestoreJob, _>(&restore_stream(job), |_, s| s.clone())
        .await
}

pub async fn job_command(
    ctx: &RestoreContext,
    job: u64,
    command: RestoreCommand,
) -> Result<(), Error> {
    let command = match ctx.coordinator_epoch {
        Some(epoch) => RestoreCommand::Fenced {
            epoch,
            command: Box::new(command),
        },
        None => command,
    };
    ctx.registry
        .execute::<RestoreJob>(&restore_stream(job), command, job)
        .await
        .map(|_| ())
}

/// The snapshot and its `snapshot.json`.
pub async fn load_snapshot(
    ctx: &RestoreContext,
    snapshot_id: u64,
) -> Result<(SnapshotState, SnapshotMetadata), Error> {
    let s = ctx
        .registry
        .inspect_latest::<Snapshot, _>(&snapshot_stream(snapshot_id), |_, s| s.clone())
        .await?;
    if s.identity.is_none() {
        return Err(Error::not_found(format!(
            "snapshot {snapshot_id} not found"
        )));
    }
    let meta = ctx.snapshots.load_metadata(&s).await?;
    Ok((s, meta))
}

/// The partitions (by name, in the snapshot's order) a request restores; `_default` first.
pub fn selected_partitions(
    request: &RestoreRequest,
    meta: &SnapshotMetadata,
) -> Result<Vec<String>, Error> {
    let known: Vec<&str> = meta.partitions.iter().map(|p| p.name.as_str()).collect();
    for p in &request.options.partitions {
        if !known.contains(&p.as_str()) {
            return Err(Error::not_found(format!(
                "partition '{p}' is not in snapshot '{}' of collection '{}' (it has: {})",
                request.snapshot_name,
                request.source_collection_name,
                known.join(", ")
            )));
        }
    }
    let chosen = |name: &str| {
        request.options.partitions.is_empty()
            || request.options.partitions.iter().any(|p| p == name)
    };
    let mut out: Vec<String> = Vec::new();
    if chosen(DEFAULT_PARTITION) {
        out.push(DEFAULT_PARTITION.to_string());
    }
    for p in &meta.partitions {
        if p.name != DEFAULT_PARTITION && chosen(&p.name) {
            out.push(p.name.clone());
        }
    }
    Ok(out)
}

async fn target_state(ctx: &RestoreContext, id: u64) -> Result<CollectionState, Error> {
    ctx.registry
        .inspect_latest::<Collection, _>(&collection_stream(id), |_, s| s.clone())
        .await
}

/// Create the target in `Restoring` and reserve its name, unless already done.
/// `already_exists` when the name belongs to another live collection.
pub async fn ensure_target(
    ctx: &RestoreContext,
    request: &RestoreRequest,
    meta: &SnapshotMetadata,
) -> Result<(), Error> {
    let id = request.target_collection_id;
    let state = target_state(ctx, id).await?;
    if !state.exists {
        let partitions = selected_partitions(request, meta)?
            .into_iter()
            .filter(|p| p != DEFAULT_PARTITION)
            .collect();
        let create = CreateCollection {
            collection_id: id,
            name: request.target_name.clone(),
            schema_json: meta.schema_json.clone(),
            shard_count: meta.shard_count,
            properties: meta.properties.clone(),
            partitions,
            restoring_job: Some(request.job_id),
            external: crate::external::restore::snapshot_external_config(meta),
            indexes: meta
                .indexes
                .iter()
                .map(|i| NewIndex {
                    name: i.name.clone(),
                    field: i.field.clone(),
                    params_json: i.params_json.clone(),
                })
                .collect(),
        };
        match ctx
            .registry
            .execute::<Collection>(
                &collection_stream(id),
                CollectionCommand::Create(create),
                request.job_id,
            )
            .await
        {
            Ok(_) => {}
            // Created by a twin of this step in the meantime: checked below.
            Err(e) if e.code == ErrorCode::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let state = target_state(ctx, id).await?;
    if state.restoring_job != Some(request.job_id) {
        return Err(Error::internal(format!(
            "collection {id} was not created by restore job {}",
            request.job_id
        )));
    }
    if state.status == Some(CollectionStatus::Dropped) {
        return Err(Error::failed_precondition(format!(
            "the target collection '{}' of restore job {} was dropped",
            request.target_name, request.job_id
        )));
    }
    crash_point("restore.after_target_created");
    let name = request.target_name.clone();
    let holder = ctx
        .registry
        .inspect_latest::<Catalog, _>(CATALOG_STREAM, move |_, s| s.names.get(&name).copied())
        .await?;
    let reserve = match holder {
        Some(h) if h == id => return Ok(()),
        None => CatalogCommand::Reserve {
            name: request.target_name.clone(),
            collection_id: id,
        },
        Some(other) => {
            let live = target_state(ctx, other).await?.is_live();
            if live {
                return Err(Error::already_exists(format!(
                    "collection '{}' already exists",
                    request.target_name
                )));
            }
            CatalogCommand::Replace {
                name: request.target_name.clone(),
                stale_collection_id: other,
                collection_id: id,
            }
        }
    };
    ctx.registry
        .execute::<Catalog>(CATALOG_STREAM, reserve, request.job_id)
        .await
        .map(|_| ())
}

/// Take the restore job's lease on its snapshot (refused unless the snapshot is Committed).
pub async fn take_lease(ctx: &RestoreContext, request: &RestoreRequest) -> Result<(), Error> {
    ctx.registry
        .execute::<Snapshot>(
            &snapshot_stream(request.snapshot_id),
            SnapshotCommand::TakeLease {
                job_id: request.job_id,
            },
            request.job_id,
        )
        .await
        .map(|_| ())
}

pub async fn release_lease(
    ctx: &RestoreContext,
    snapshot_id: u64,
    job_id: u64,
) -> Result<(), Error> {
    match ctx
        .registry
        .execute::<Snapshot>(
            &snapshot_stream(snapshot_id),
            SnapshotCommand::ReleaseLease { job_id },
            job_id,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == ErrorCode::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Drop a target the job created and free its name (nothing to do when it never existed).
pub async fn abandon_target(
    ctx: &RestoreContext,
    target_collection_id: u64,
    target_name: &str,
    job_id: u64,
) -> Result<(), Error> {
    let state = target_state(ctx, target_collection_id).await?;
    if state.exists {
        if state.status == Some(CollectionStatus::Ready) {
            return Err(Error::internal(format!(
                "restore job {job_id} would drop its target '{target_name}', which it already completed"
            )));
        }
        ctx.registry
            .execute::<Collection>(
                &collection_stream(target_collection_id),
                CollectionCommand::AbandonRestore { job_id },
                job_id,
            )
            .await?;
    }
    ctx.registry
        .execute::<Catalog>(
            CATALOG_STREAM,
            CatalogCommand::Release {
                name: target_name.to_string(),
                collection_id: target_collection_id,
            },
            job_id,
        )
        .await
        .map(|_| ())
}

fn request_of(job: &RestoreJobState) -> Result<&RestoreRequest, Error> {
    job.request
        .as_ref()
        .ok_or_else(|| Error::internal("restore job without a request"))
}

/// The plan's mapping from the snapshot's ids to the target's.
fn plan_context(
    request: &RestoreRequest,
    meta: &SnapshotMetadata,
    target: &CollectionState,
    ids_first: u64,
) -> Result<PlanContext, Error> {
    let mut partitions = BTreeMap::new();
    for name in selected_partitions(request, meta)? {
        let Some(src) = meta.partitions.iter().find(|p| p.name == name) else {
            continue;
        };
        let (dst, _) = target.partition_by_name(&name).ok_or_else(|| {
            Error::internal(format!("the restore target lacks partition '{name}'"))
        })?;
        partitions.insert(src.id, dst);
    }
    let mut indexes = BTreeMap::new();
    for (position, i) in meta.indexes.iter().enumerate() {
        let (dst, _) = target.index_by_name(&i.name).ok_or_else(|| {
            Error::internal(format!("the restore target lacks index '{}'", i.name))
        })?;
        indexes.insert(i.id, (position as u64, dst));
    }
    Ok(PlanContext {
        target_collection_id: request.target_collection_id,
        ids_first,
        partitions,
        indexes,
        index_count: meta.indexes.len() as u64,
    })
}

/// Records planned tasks: each task's stream, then the job's summaries in bounded events.
struct TaskRecorder<'a> {
    ctx: &'a RestoreContext,
    job_id: u64,
    target_collection_id: u64,
    /// The snapshot is of an external collection: rewrite fragment lists instead of copying.
    external: bool,
    known: usize,
    pending: Vec<TaskSummary>,
    totals: RestoreTotals,
}

impl TaskRecorder<'_> {
    /// An external segment's one data file is its fragment list, which names its collection
    /// and segment: write the target's own list (same fragments, new ids) now, and mark it
    /// prewritten so the copy task does not copy the source's. Deterministic bytes at a
    /// deterministic key, so planning again after a crash writes the same object.
    async fn rewrite_fragment_lists(&self, task: &mut PlannedTask) -> Result<(), Error> {
        use crate::external::restore::{relocate_fragment_list, snapshot_fragment_lists};
        for p in &mut task.segments {
            let source = SegmentRecord {
                files: p
                    .segment
                    .files
                    .iter()
                    .map(|f| snapvault_events::domain::FileRef {
                        key: format!(
                            "{}{}",
                            p.source_prefix,
                            f.key.strip_prefix(&p.dest_prefix).unwrap_or(&f.key)
                        ),
                        ..f.clone()
                    })
                    .collect(),
                ..p.segment.clone()
            };
            let lists =
                snapshot_fragment_lists(&*self.ctx.store, std::slice::from_ref(&source)).await?;
            let Some((_, list)) = lists.first() else {
                continue;
            };
            let (bytes, file) =
                relocate_fragment_list(list, self.target_collection_id, p.segment.segment_id)?;
            crate::snapshot::worker::put_object(&*self.ctx.store, &file.key, bytes.into()).await?;
            p.prewritten = vec![file.key.clone()];
            p.segment.files = vec![file];
        }
        Ok(())
    }

    async fn add(&mut self, mut task: PlannedTask) -> Result<(), Error> {
        if self.external && (task.task as usize) >= self.known {
            self.rewrite_fragment_lists(&mut task).await?;
        }
        let summary = task.summary();
        self.totals.tasks += 1;
        self.totals.segments += u64::from(summary.segments);
        self.totals.files += summary.files;
        self.totals.bytes += summary.bytes;
        if (task.task as usize) < self.known {
            return Ok(());
        }
        let stream = copy_task_stream(self.job_id, task.task);
        self.ctx
            .registry
            .execute::<CopyTask>(
                &stream,
                CopyTaskCommand::Plan {
                    job_id: self.job_id,
                    task: task.task,
                    segments: task.segments,
                },
                self.job_id,
            )
            .await?;
        // The plan is in the log; the task's actor is not needed until its copy starts.
        self.ctx.registry.release(&stream);
        crash_point("restore.after_task_planned");
        self.pending.push(summary);
        if self.pending.len() >= MAX_TASKS_PER_EVENT {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tasks = std::mem::take(&mut self.pending);
        job_command(self.ctx, self.job_id, RestoreCommand::RecordTasks { tasks }).await
    }
}

/// From Pending to Running: target, lease, ids, plan, start.
pub async fn prepare(ctx: &RestoreContext, job: &RestoreJobState) -> Result<(), Error> {
    let request = request_of(job)?;
    let (snapshot, meta) = load_snapshot(ctx, request.snapshot_id).await?;
    ensure_target(ctx, request, &meta).await?;
    take_lease(ctx, request).await?;
    let ids_first = match job.ids {
        Some((first, _)) => first,
        None => {
            let count = PlanContext::ids_needed(meta.totals.segments, meta.indexes.len() as u64);
            let first = ctx.ids.next_range(count).await?;
            job_command(
                ctx,
                request.job_id,
                RestoreCommand::ReserveIds { first, count },
            )
            .await?;
            first
        }
    };
    let target = target_state(ctx, request.target_collection_id).await?;
    let mut planner = Planner::new(plan_context(request, &meta, &target, ids_first)?);
    let mut recorder = TaskRecorder {
        ctx,
        job_id: request.job_id,
        target_collection_id: request.target_collection_id,
        external: meta.external.is_some(),
        known: job.tasks.len(),
        pending: Vec::new(),
        totals: RestoreTotals::default(),
    };
    let mut ordinal = 0u64;
    for m in &meta.manifests {
        let key = relocate(&snapshot.prefix, &m.key)?;
        let bytes = get_recorded(&*ctx.store, &key, "manifest").await?;
        if bytes.len() as u64 != m.size || crc32c::crc32c(&bytes) != m.crc32c {
            return Err(Error::internal(format!(
                "manifest '{key}' does not match the size and crc32c in snapshot.json: the snapshot is damaged"
            )));
        }
        for seg in manifest::decode_manifest(&bytes)? {
            if ordinal >= meta.totals.segments {
                return Err(Error::internal(format!(
                    "the manifests of snapshot {} list more segments than snapshot.json says ({})",
                    request.snapshot_id, meta.totals.segments
                )));
            }
            if let Some(task) = planner.push(ordinal, &seg)? {
                recorder.add(task).await?;
            }
            ordinal += 1;
        }
    }
    for task in planner.finish() {
        recorder.add(task).await?;
    }
    recorder.flush().await?;
    let totals = recorder.totals;
    job_command(ctx, request.job_id, RestoreCommand::Start { totals }).await?;
    tracing::info!(
        job = request.job_id,
        target = %request.target_name,
        tasks = totals.tasks,
        files = totals.files,
        bytes = totals.bytes,
        "restore planned; copying"
    );
    Ok(())
}

/// Count and log a job this node ended.
fn job_ended(ctx: &RestoreContext, job: &RestoreJobState, outcome: &str, objects_deleted: u64) {
    ctx.registry
        .metrics()
        .restore_jobs
        .get_or_create(&crate::metrics::label("outcome", outcome))
        .inc();
    let totals = job.totals.unwrap_or_default();
    let took_ms = ctx.clock.now_ms().saturating_sub(job.requested_ms);
    let target = job
        .request
        .as_ref()
        .map(|r| r.target_name.clone())
        .unwrap_or_default();
    match outcome {
        "completed" => tracing::info!(
            job = job.job_id(),
            %target,
            files = totals.files,
            bytes = totals.bytes,
            took_ms,
            "restore completed"
        ),
        _ => tracing::info!(
            job = job.job_id(),
            %target,
            outcome,
            reason = job.failure.as_deref().unwrap_or(""),
            objects_deleted,
            took_ms,
            "restore rolled back"
        ),
    }
}

async fn task_state(ctx: &RestoreContext, job: u64, task: u32) -> Result<CopyTaskState, Error> {
    ctx.registry
        .inspect_latest::<CopyTask, _>(&copy_task_stream(job, task), |_, s| s.clone())
        .await
}

/// Has the restore of `job` already completed `target` (a committing job's view)?
///
/// Ready and created by the job; or created by the job and Dropped: while Restoring a target
/// cannot be dropped by the user, and only a rollback (not this job: it is committing) or the
/// clean-up of a job that was never recorded abandons one — so a dropped target of a
/// committing job was completed first and then dropped by the user.
pub fn target_completed(target: &CollectionState, job: u64) -> bool {
    target.restoring_job == Some(job)
        && matches!(
            target.status,
            Some(CollectionStatus::Ready | CollectionStatus::Dropped)
        )
}

/// From Committing to Completed.
pub async fn commit(ctx: &RestoreContext, job: &RestoreJobState) -> Result<(), Error> {
    let request = request_of(job)?;
    let target = collection_stream(request.target_collection_id);
    let state = target_state(ctx, request.target_collection_id).await?;
    if target_completed(&state, request.job_id) {
        // A crash (or a transient error) after the target became Ready: only the lease and
        // the job's end are left. The user may even have dropped the target since.
        release_lease(ctx, request.snapshot_id, request.job_id).await?;
        job_command(ctx, request.job_id, RestoreCommand::Complete).await?;
        job_ended(ctx, job, "completed", 0);
        return Ok(());
    }
    for summary in &job.tasks {
        let task = task_state(ctx, request.job_id, summary.task).await?;
        if task.status != Some(CopyTaskStatus::Completed) {
            return Err(Error::internal(format!(
                "copy task {} of restore job {} is not complete at commit",
                summary.task, request.job_id
            )));
        }
        let segments: Vec<SegmentRecord> = task.segments.into_iter().map(|p| p.segment).collect();
        let mut batch: Vec<SegmentRecord> = Vec::new();
        let mut batch_bytes = 0usize;
        for seg in segments {
            let size = rmp_serde::to_vec_named(&seg).map(|v| v.len()).unwrap_or(0);
            if !batch.is_empty()
                && (batch_bytes + size > MAX_STAGE_BATCH_BYTES
                    || batch.len() >= snapvault_events::domain::collection::MAX_SEGMENTS_PER_STAGE)
            {
                stage(ctx, &target, request.job_id, std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(seg);
        }
        stage(ctx, &target, request.job_id, batch).await?;
        ctx.registry
            .release(&copy_task_stream(request.job_id, summary.task));
    }
    crash_point("restore.before_complete");
    ctx.registry
        .execute::<Collection>(
            &target,
            CollectionCommand::CompleteRestore {
                job_id: request.job_id,
            },
            request.job_id,
        )
        .await?;
    crash_point("restore.after_target_ready");
    release_lease(ctx, request.snapshot_id, request.job_id).await?;
    job_command(ctx, request.job_id, RestoreCommand::Complete).await?;
    job_ended(ctx, job, "completed", 0);
    Ok(())
}

async fn stage(
    ctx: &RestoreContext,
    target: &str,
    job_id: u64,
    segments: Vec<SegmentRecord>,
) -> Result<(), Error> {
    if segments.is_empty() {
        return Ok(());
    }
    ctx.registry
        .execute::<Collection>(
            target,
            CollectionCommand::StageRestoredSegments { job_id, segments },
            job_id,
        )
        .await?;
    crash_point("restore.after_stage");
    Ok(())
}

/// From RollingBack to Failed or Cancelled. Every copier of the job must have stopped.
pub async fn rollback(ctx: &RestoreContext, job: &RestoreJobState) -> Result<(), Error> {
    let request = request_of(job)?;
    let target = target_state(ctx, request.target_collection_id).await?;
    if target.status == Some(CollectionStatus::Ready)
        && target.restoring_job == Some(request.job_id)
    {
        return Err(Error::internal(format!(
            "restore job {} is rolling back, but its target '{}' is already complete; refusing to delete it",
            request.job_id, request.target_name
        )));
    }
    let prefix = snapvault_events::domain::data_prefix(request.target_collection_id);
    let keys: Vec<Path> = ctx
        .store
        .list(Some(&Path::from(prefix.trim_end_matches('/'))))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| Error::unavailable(format!("cannot list '{prefix}': {e}")))?;
    let mut deleted = job.objects_deleted;
    for key in keys {
        match ctx.store.delete(&key).await {
            Ok(()) => deleted += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::unavailable(format!("cannot delete '{key}': {e}"))),
        }
        crash_point("restore.after_rollback_delete");
    }
    abandon_target(
        ctx,
        request.target_collection_id,
        &request.target_name,
        request.job_id,
    )
    .await?;
    release_lease(ctx, request.snapshot_id, request.job_id).await?;
    job_command(
        ctx,
        request.job_id,
        RestoreCommand::FinishRollback {
            objects_deleted: deleted,
        },
    )
    .await?;
    let outcome = if job.cancelled { "cancelled" } else { "failed" };
    job_ended(ctx, job, outcome, deleted);
    Ok(())
}

/// Is the snapshot still restorable (Committed)? For a clear error before anything is done.
pub fn check_restorable(s: &SnapshotState, collection: &str, name: &str) -> Result<(), Error> {
    match s.status {
        Some(SnapshotStatus::Committed) => Ok(()),
        Some(other) => Err(Error::failed_precondition(format!(
            "snapshot '{name}' of collection '{collection}' is {}; only a committed snapshot can be restored",
            other.as_str()
        ))),
        None => Err(Error::not_found(format!(
            "snapshot '{name}' of collection '{collection}' not found"
        ))),
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    #[test]
    fn a_target_dropped_after_its_restore_completed_is_completed() {
        let mut t = CollectionState {
            exists: true,
            restoring_job: Some(7),
            status: Some(CollectionStatus::Restoring),
            ..CollectionState::default()
        };
        assert!(!target_completed(&t, 7));
        t.status = Some(CollectionStatus::Ready);
        assert!(target_completed(&t, 7));
        assert!(!target_completed(&t, 8));
        // Completed, then dropped by the user before the job recorded its end: the commit
        // finishes (lease, Completed) instead of failing and rolling back.
        t.status = Some(CollectionStatus::Dropped);
        assert!(target_completed(&t, 7));
    }
}
