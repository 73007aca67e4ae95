//! Restore jobs and copy tasks in the checker: their streams replayed, and the restore
//! invariants checked at every event and after every step.
//!
//! At every event:
//! - a job's `Requested` names reserved ids (job, target collection), each job id once; its
//!   `IdsReserved` block lies inside reserved ids; every segment staged into its target comes
//!   from that block and is used once;
//! - a copy task's stream belongs to a requested job and names it and its own number;
//! - **a job starts committing (and completes) only when every one of its copy tasks is
//!   Completed in the task's own stream**, and completes only once its target is Ready;
//! - **a snapshot with a live lease is never Deleting** (`DeleteRequested` while a lease is
//!   held);
//! - a terminal job holds no lease (commit and rollback release it before they end the job);
//! - a job whose target recorded `RestoreCompleted` never rolls back.
//!
//! After every step:
//! - the files a non-terminal job leases (the cut of its snapshot) and the files its copy
//!   tasks recorded as copied are protected (`Truth::protected_files`);
//! - **a Completed job's target, as it was when the restore completed, equals its snapshot**:
//!   the same segments (restricted to the requested partitions) with the same shards, rows,
//!   levels, partition names, index builds (by index name) and files (size, crc32c), and every
//!   restored file read back from the store equals its source file byte for byte;
//! - **a Failed or Cancelled job left nothing**: its target is not live and no object is
//!   under `data/{target}/` (checked when it is first seen terminal and again after liveness).

use crate::invariants::{Cut, Truth};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use snapvault_actors::Aggregate;
use snapvault_actors::collection::CollectionState;
use snapvault_actors::restore::{CopyTask, CopyTaskState, RestoreJob, RestoreJobState};
use snapvault_events::domain::collection::SegmentRecord;
use snapvault_events::domain::restore::{
    CopyTaskEvent, CopyTaskStatus, RestoreEvent, RestoreStatus,
};
use snapvault_events::domain::{CollectionId, JobId, SegmentId};
use std::collections::{BTreeMap, BTreeSet};

/// One restore job stream, replayed.
#[derive(Debug, Clone, Default)]
pub struct ReplayedJob {
    pub version: u64,
    pub state: RestoreJobState,
    /// Position of `RollbackStarted`: from there on the target's objects may be deleted.
    pub rollback_at: Option<u64>,
}

impl ReplayedJob {
    pub fn status(&self) -> Option<RestoreStatus> {
        self.state.status
    }

    /// Pending, Running or Committing: it still needs its snapshot.
    pub fn active(&self) -> bool {
        matches!(
            self.state.status,
            Some(RestoreStatus::Pending | RestoreStatus::Running | RestoreStatus::Committing)
        )
    }

    pub fn rolled_back(&self) -> bool {
        matches!(
            self.state.status,
            Some(RestoreStatus::RollingBack | RestoreStatus::Failed | RestoreStatus::Cancelled)
        )
    }

    pub fn target(&self) -> Option<CollectionId> {
        self.state.request.as_ref().map(|r| r.target_collection_id)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReplayedTask {
    pub version: u64,
    pub state: CopyTaskState,
}

/// What the log says about restores.
#[derive(Debug, Default)]
pub struct RestoreTruth {
    pub jobs: BTreeMap<JobId, ReplayedJob>,
    pub tasks: BTreeMap<(JobId, u32), ReplayedTask>,
    /// Restore targets: collection id → job.
    pub targets: BTreeMap<CollectionId, JobId>,
    /// Segment ids staged into restore targets (drawn from their job's block, not from the
    /// workload's allocations).
    pub restored_segment_ids: BTreeSet<SegmentId>,
    /// Each completed target as it was at its `RestoreCompleted`, by job.
    pub completed_targets: BTreeMap<JobId, CollectionState>,
    /// Completed jobs whose target still has to be compared with the snapshot.
    pub to_verify: BTreeSet<JobId>,
    /// Rolled back jobs whose leftovers were checked.
    pub checked_clean: BTreeSet<JobId>,
    /// Jobs verified equal to their snapshot (for the stats).
    pub verified: u64,
}

impl RestoreTruth {
    /// A job's stream event.
    pub fn on_job_event(
        &mut self,
        at: &str,
        job: JobId,
        e: &RestoreEvent,
        position: u64,
        ids_end: u64,
    ) -> Result<(), String> {
        let before = self.jobs.get(&job).cloned().unwrap_or_default();
        match e {
            RestoreEvent::Requested { request, .. } => {
                if before.state.request.is_some() {
                    return Err(format!("{at}: restore job {job} requested twice"));
                }
                if request.job_id != job {
                    return Err(format!(
                        "{at}: stream of job {job} requests job {}",
                        request.job_id
                    ));
                }
                for (what, id) in [
                    ("job id", job),
                    ("target collection id", request.target_collection_id),
                ] {
                    if id == 0 || id >= ids_end {
                        return Err(format!(
                            "{at}: {what} {id} was never reserved (reserved ids end at {ids_end})"
                        ));
                    }
                }
                if let Some(other) = self.targets.insert(request.target_collection_id, job) {
                    return Err(format!(
                        "{at}: jobs {other} and {job} both restore into collection {}",
                        request.target_collection_id
                    ));
                }
            }
            RestoreEvent::IdsReserved { first, count }
                if *first == 0 || first.saturating_add(*count) > ids_end =>
            {
                return Err(format!(
                    "{at}: job {job} reserves ids {first}..+{count}, not all reserved (end {ids_end})"
                ));
            }
            RestoreEvent::CommitStarted { .. } | RestoreEvent::Completed { .. } => {
                let s = &before.state;
                if s.completed_tasks.len() != s.tasks.len() {
                    return Err(format!(
                        "{at}: restore job {job} commits with {} of {} tasks complete",
                        s.completed_tasks.len(),
                        s.tasks.len()
                    ));
                }
                for t in &s.tasks {
                    let status = self
                        .tasks
                        .get(&(job, t.task))
                        .and_then(|r| r.state.status.clone());
                    if status != Some(CopyTaskStatus::Completed) {
                        return Err(format!(
                            "{at}: restore job {job} commits while its copy task {} is {status:?}",
                            t.task
                        ));
                    }
                }
                if matches!(e, RestoreEvent::Completed { .. }) {
                    let target = before.target().unwrap_or(0);
                    if !self.completed_targets.contains_key(&job) {
                        return Err(format!(
                            "{at}: restore job {job} completes but its target {target} is not Ready"
                        ));
                    }
                    self.to_verify.insert(job);
                }
            }
            _ => {}
        }
        let r = self.jobs.entry(job).or_default();
        RestoreJob::evolve(&mut r.state, e);
        r.version += 1;
        if matches!(e, RestoreEvent::RollbackStarted { .. }) && r.rollback_at.is_none() {
            r.rollback_at = Some(position);
        }
        Ok(())
    }

    pub fn on_task_event(
        &mut self,
        at: &str,
        job: JobId,
        task: u32,
        e: &CopyTaskEvent,
    ) -> Result<(), String> {
        if let CopyTaskEvent::Planned {
            job_id, task: t, ..
        } = e
        {
            if *job_id != job || *t != task {
                return Err(format!(
                    "{at}: stream of task {task} of job {job} plans task {t} of job {job_id}"
                ));
            }
            if self
                .jobs
                .get(&job)
                .is_none_or(|j| j.state.request.is_none())
            {
                return Err(format!("{at}: copy task of unknown restore job {job}"));
            }
        }
        let r = self.tasks.entry((job, task)).or_default();
        if matches!(e, CopyTaskEvent::Completed { .. }) && r.state.files_done != r.state.files_total
        {
            return Err(format!(
                "{at}: copy task {task} of job {job} completes with {} of {} files copied",
                r.state.files_done, r.state.files_total
            ));
        }
        CopyTask::evolve(&mut r.state, e);
        r.version += 1;
        Ok(())
    }

    /// A segment flushed (staged) into collection `target`: from its job's id block, once.
    pub fn on_staged(
        &mut self,
        at: &str,
        target: CollectionId,
        segment: SegmentId,
    ) -> Result<bool, String> {
        let Some(job) = self.targets.get(&target) else {
            return Ok(false);
        };
        let ids = self.jobs.get(job).and_then(|j| j.state.ids);
        let Some((first, count)) = ids else {
            return Err(format!(
                "{at}: segment {segment} staged into the target of job {job} before it reserved ids"
            ));
        };
        if segment < first || segment >= first + count {
            return Err(format!(
                "{at}: segment {segment} staged by job {job} is outside its ids {first}..+{count}"
            ));
        }
        if !self.restored_segment_ids.insert(segment) {
            return Err(format!("{at}: restored segment id {segment} used twice"));
        }
        Ok(true)
    }

    /// Files that must exist for restores: the cut a non-terminal job leases, and what its
    /// copy tasks recorded as copied (until it rolls back). `leased(snapshot, job)`: does the
    /// snapshot hold the job's lease? A job is recorded before it asks for the lease, so a
    /// job whose snapshot was dropped first never holds one, and fails without its cut.
    pub fn protect(
        &self,
        cuts: &BTreeMap<u64, Cut>,
        leased: &dyn Fn(u64, JobId) -> bool,
        out: &mut dyn FnMut(&str, u64, u32, String),
    ) {
        for (job, j) in &self.jobs {
            if !j.active() {
                continue;
            }
            let Some(r) = &j.state.request else { continue };
            if !leased(r.snapshot_id, *job) {
                continue;
            }
            if let Some(cut) = cuts.get(&r.snapshot_id) {
                for seg in cut.segments.values() {
                    for f in seg.all_files() {
                        out(
                            &f.key,
                            f.size,
                            f.crc32c,
                            format!(
                                "snapshot {} leased by restore job {job} (segment {})",
                                r.snapshot_id, seg.segment_id
                            ),
                        );
                    }
                }
            }
            for t in &j.state.tasks {
                let Some(task) = self.tasks.get(&(*job, t.task)) else {
                    continue;
                };
                let items = snapvault_actors::restore::copy_task::copy_items(&task.state.segments);
                for i in items {
                    if task.state.is_done(i.ordinal) {
                        out(
                            &i.dest.key,
                            i.dest.size,
                            i.dest.crc32c,
                            format!("copy task {} of restore job {job} (copied)", t.task),
                        );
                    }
                }
            }
        }
    }

    /// Is `target` a restore target whose job is rolling back (or rolled back)? Its staged
    /// segments are then being deleted.
    pub fn target_rolling_back(&self, target: CollectionId) -> bool {
        self.targets
            .get(&target)
            .and_then(|j| self.jobs.get(j))
            .is_some_and(ReplayedJob::rolled_back)
    }

    /// May `key` be deleted at log head `head` by a rollback?
    pub fn deleted_by_rollback(&self, key: &str, head: u64) -> bool {
        self.jobs.values().any(|j| {
            j.rollback_at.is_some_and(|p| p <= head)
                && j.target()
                    .is_some_and(|t| key.starts_with(&format!("data/{t}/")))
        })
    }
}

/// Invariants over the whole truth (no I/O), after every step.
pub fn check_state(truth: &Truth) -> Result<(), String> {
    // A snapshot lease held by a job that ended (commit and rollback release it first).
    for (sid, s) in &truth.snapshots {
        for job in &s.state.leases {
            if let Some(j) = truth.restores.jobs.get(job)
                && j.status().is_some_and(RestoreStatus::is_terminal)
            {
                return Err(format!(
                    "snapshot {sid} is still leased by restore job {job}, which is {:?}",
                    j.status()
                ));
            }
        }
    }
    for (job, j) in &truth.restores.jobs {
        if j.rolled_back() && truth.restores.completed_targets.contains_key(job) {
            return Err(format!(
                "restore job {job} completed its target (RestoreCompleted) but then rolled back: {:?}",
                j.state.failure
            ));
        }
        if matches!(
            j.status(),
            Some(RestoreStatus::Failed | RestoreStatus::Cancelled)
        ) && let Some(t) = j.target()
            && truth.live_collection(t).is_some()
        {
            return Err(format!(
                "restore job {job} is {:?} but its target collection {t} is still live",
                j.status()
            ));
        }
    }
    Ok(())
}

async fn read(store: &InMemory, key: &str) -> Result<Option<bytes::Bytes>, String> {
    match store.get(&Path::from(key)).await {
        Ok(r) => r.bytes().await.map(Some).map_err(|e| e.to_string()),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("cannot read '{key}': {e}")),
    }
}

/// Objects under `data/{target}/`.
pub async fn leftovers(store: &InMemory, target: CollectionId) -> Result<Vec<String>, String> {
    use futures::TryStreamExt;
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&Path::from(format!("data/{target}"))))
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
}

/// Check what is due: completed jobs against their snapshots, rolled back jobs for leftovers.
pub async fn check_jobs(truth: &mut Truth, store: &InMemory) -> Result<(), String> {
    let due: Vec<JobId> = std::mem::take(&mut truth.restores.to_verify)
        .into_iter()
        .collect();
    for job in due {
        verify_completed(truth, store, job).await?;
        truth.restores.verified += 1;
    }
    let rolled: Vec<(JobId, CollectionId)> = truth
        .restores
        .jobs
        .iter()
        .filter(|(id, j)| {
            matches!(
                j.status(),
                Some(RestoreStatus::Failed | RestoreStatus::Cancelled)
            ) && !truth.restores.checked_clean.contains(id)
        })
        .filter_map(|(id, j)| Some((*id, j.target()?)))
        .collect();
    for (job, target) in rolled {
        check_clean(store, job, target).await?;
        truth.restores.checked_clean.insert(job);
    }
    Ok(())
}

/// A rolled back job left nothing under its target's prefix.
pub async fn check_clean(store: &InMemory, job: JobId, target: CollectionId) -> Result<(), String> {
    let left = leftovers(store, target).await?;
    if let Some(k) = left.first() {
        return Err(format!(
            "restore job {job} rolled back but left {} object(s) under data/{target}/, e.g. '{k}'",
            left.len()
        ));
    }
    Ok(())
}

/// A completed job's target (at completion) equals its snapshot.
async fn verify_completed(truth: &Truth, store: &InMemory, job: JobId) -> Result<(), String> {
    let j = &truth.restores.jobs[&job];
    let Some(request) = &j.state.request else {
        return Err(format!("completed restore job {job} has no request"));
    };
    let Some(cut) = truth.cuts.get(&request.snapshot_id) else {
        // An imported snapshot has no pin in this log: nothing to compare with.
        return Ok(());
    };
    let Some(source) = truth.collections.get(&cut.collection).map(|r| &r.state) else {
        return Err(format!(
            "snapshot {} of job {job} pinned an unknown collection",
            request.snapshot_id
        ));
    };
    let Some(target) = truth.restores.completed_targets.get(&job) else {
        return Err(format!(
            "restore job {job} completed but its target never recorded RestoreCompleted"
        ));
    };
    let fail = |why: String| {
        Err(format!(
            "restore job {job} ('{}' of '{}' → '{}', partitions {:?}) completed, but {why}",
            request.snapshot_name,
            request.source_collection_name,
            request.target_name,
            request.options.partitions
        ))
    };
    let pname = |c: &CollectionState, id| c.partitions.get(&id).map(|p| p.name.clone());
    let iname = |c: &CollectionState, id| c.indexes.get(&id).map(|i| i.name.clone());
    let wanted = |name: &Option<String>| {
        request.options.partitions.is_empty()
            || name
                .as_ref()
                .is_some_and(|n| request.options.partitions.contains(n))
    };
    let expected: BTreeMap<SegmentId, &SegmentRecord> = cut
        .segments
        .iter()
        .filter(|(_, s)| wanted(&pname(source, s.partition_id)))
        .map(|(id, s)| (*id, &**s))
        .collect();
    // Which restored segment came from which source segment: the copy tasks' plans.
    let mut mapping: BTreeMap<SegmentId, SegmentId> = BTreeMap::new();
    for t in &j.state.tasks {
        let Some(task) = truth.restores.tasks.get(&(job, t.task)) else {
            return fail(format!("its copy task {} has no stream", t.task));
        };
        for p in &task.state.segments {
            if mapping
                .insert(p.source_segment_id, p.segment.segment_id)
                .is_some()
            {
                return fail(format!(
                    "source segment {} is planned twice",
                    p.source_segment_id
                ));
            }
        }
    }
    let planned: BTreeSet<SegmentId> = mapping.keys().copied().collect();
    let want: BTreeSet<SegmentId> = expected.keys().copied().collect();
    if planned != want {
        return fail(format!(
            "it restored source segments {planned:?}; the snapshot has {want:?} in those partitions"
        ));
    }
    let restored: BTreeSet<SegmentId> = mapping.values().copied().collect();
    let have: BTreeSet<SegmentId> = target.segments.keys().copied().collect();
    if restored != have {
        return fail(format!(
            "its target has segments {have:?}, the plan restores {restored:?}"
        ));
    }
    // Partitions: every selected one, and nothing else but `_default`.
    let target_parts: BTreeSet<String> = target
        .partitions
        .values()
        .filter(|p| !p.dropped)
        .map(|p| p.name.clone())
        .collect();
    for s in expected.values() {
        let Some(n) = pname(source, s.partition_id) else {
            continue;
        };
        if !target_parts.contains(&n) {
            return fail(format!("its target lacks partition '{n}'"));
        }
    }
    for n in &target_parts {
        if n != "_default"
            && !request.options.partitions.is_empty()
            && !request.options.partitions.contains(n)
        {
            return fail(format!("its target has partition '{n}', not requested"));
        }
    }
    let external = source.external.is_some();
    for (src_id, dst_id) in &mapping {
        let src = expected[src_id];
        let dst = &target.segments[dst_id];
        let what = format!("restored segment {dst_id} (from {src_id})");
        if (src.shard, src.rows, src.level) != (dst.shard, dst.rows, dst.level) {
            return fail(format!(
                "{what} has shard/rows/level {:?}, the source {:?}",
                (dst.shard, dst.rows, dst.level),
                (src.shard, src.rows, src.level)
            ));
        }
        if pname(source, src.partition_id) != pname(target, dst.partition_id) {
            return fail(format!(
                "{what} is in partition {:?}, the source in {:?}",
                pname(target, dst.partition_id),
                pname(source, src.partition_id)
            ));
        }
        if external {
            // Fragment lists are rewritten for the target (they name its ids): no byte copy.
            continue;
        }
        let mut pairs = Vec::new();
        if src.files.len() != dst.files.len() {
            return fail(format!(
                "{what} has {} files, the source {}",
                dst.files.len(),
                src.files.len()
            ));
        }
        pairs.extend(src.files.iter().zip(dst.files.iter()));
        // Builds of a segment form a set (by index name): the plan lists them in the
        // snapshot's index order, the source in build order.
        let mut src_builds: Vec<(Option<String>, &Vec<_>)> = src
            .indexes
            .iter()
            .map(|i| (iname(source, i.index_id), &i.files))
            .collect();
        let mut dst_builds: Vec<(Option<String>, &Vec<_>)> = dst
            .indexes
            .iter()
            .map(|i| (iname(target, i.index_id), &i.files))
            .collect();
        src_builds.sort_by(|a, b| a.0.cmp(&b.0));
        dst_builds.sort_by(|a, b| a.0.cmp(&b.0));
        let names = |b: &Vec<(Option<String>, &Vec<_>)>| {
            b.iter()
                .map(|(n, f)| (n.clone(), f.len()))
                .collect::<Vec<_>>()
        };
        if names(&src_builds) != names(&dst_builds) {
            return fail(format!(
                "{what} has index builds {:?}, the source {:?}",
                names(&dst_builds),
                names(&src_builds)
            ));
        }
        for ((_, s), (_, d)) in src_builds.iter().zip(dst_builds.iter()) {
            pairs.extend(s.iter().zip(d.iter()));
        }
        for (s, d) in pairs {
            if (s.size, s.crc32c) != (d.size, d.crc32c) {
                return fail(format!(
                    "'{}' is recorded as {} bytes crc {:#010x}; its source '{}' as {} bytes crc {:#010x}",
                    d.key, d.size, d.crc32c, s.key, s.size, s.crc32c
                ));
            }
            let Some(dst_bytes) = read(store, &d.key).await? else {
                // Dropped and reclaimed since (the workload may compact or drop it at once);
                // while it is live, `check_files` requires it.
                continue;
            };
            match read(store, &s.key).await? {
                Some(src_bytes) if src_bytes != dst_bytes => {
                    return fail(format!(
                        "'{}' differs from its source '{}' byte for byte",
                        d.key, s.key
                    ));
                }
                Some(_) => {}
                None if crc32c::crc32c(&dst_bytes) != s.crc32c
                    || dst_bytes.len() as u64 != s.size =>
                {
                    return fail(format!(
                        "'{}' does not match the size and crc32c of its source '{}'",
                        d.key, s.key
                    ));
                }
                None => {}
            }
        }
    }
    Ok(())
}
