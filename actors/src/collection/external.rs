//! The collection's rules for external collections (kept out of `decider.rs` so the two grow
//! apart without conflicts).
//!
//! The collection stream is the fence for refresh tasks: `active` holds at most one task, set
//! by `ExternalTaskStarted` or `ExternalAltered`, and cleared only by the task's end
//! (`ExternalRefreshed`, `ExternalTaskEnded`, or the next `ExternalAltered`, which supersedes
//! it). A commit is accepted only from the active task for the current generation, so a
//! superseded or cancelled task can never commit, however late it comes.

use serde::Serialize;
use snapvault_events::Error;
use snapvault_events::domain::SegmentId;
use snapvault_events::domain::collection::{
    CollectionCommand, CollectionEvent, CreateCollection, DEFAULT_PARTITION, ExternalCommit,
    SegmentRecord,
};
use snapvault_events::domain::external::{
    ExternalConfig, MAX_ADDED_SEGMENTS_PER_REFRESH, MAX_EXTERNAL_SEGMENTS, RECENT_TASK_OUTCOMES,
    RefreshCounts, TaskEnd, TaskId, clip_reason, fragment_list_key,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::decider::CollectionState;

/// The task that holds the collection's refresh slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveTask {
    pub task_id: TaskId,
    pub generation: u64,
    pub started_ms: u64,
}

/// Everything external about a collection, folded from its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalState {
    pub config: ExternalConfig,
    /// Bumped by every `ExternalAltered`.
    pub generation: u64,
    pub active: Option<ActiveTask>,
    /// Outcomes of the last [`RECENT_TASK_OUTCOMES`] finished tasks, by id.
    pub recent: BTreeMap<TaskId, TaskEnd>,
    /// Live segments that came from refreshes.
    pub segments: BTreeSet<SegmentId>,
    /// Fragments behind them (as the last commit counted).
    pub fragments: u64,
    pub last_refresh_ms: Option<u64>,
    pub last_task: Option<TaskId>,
    /// The last commit and what it did.
    pub last_commit: Option<(TaskId, RefreshCounts)>,
}

impl ExternalState {
    fn remember(&mut self, task_id: TaskId, end: TaskEnd) {
        self.recent.insert(task_id, end);
        while self.recent.len() > RECENT_TASK_OUTCOMES {
            let Some(first) = self.recent.keys().next().copied() else {
                break;
            };
            self.recent.remove(&first);
        }
        self.last_task = Some(self.last_task.map_or(task_id, |t| t.max(task_id)));
    }

    /// How `task_id` ended, if the collection remembers; `None` while it is active or when it
    /// is older than what is remembered.
    pub fn outcome_of(&self, task_id: TaskId) -> Option<&TaskEnd> {
        self.recent.get(&task_id)
    }
}

/// Checks of the external part of a create.
pub fn check_create(c: &CreateCollection) -> Result<(), Error> {
    if let Some(config) = &c.external {
        config.check()?;
        if c.restoring_job.is_some() {
            // A restore recreates an external collection with its config; that is fine.
        }
    }
    Ok(())
}

fn require_external(s: &CollectionState) -> Result<&ExternalState, Error> {
    s.external.as_ref().ok_or_else(|| {
        Error::failed_precondition(format!(
            "collection '{}' is not external; create it with --external-source",
            s.name
        ))
    })
}

/// The host writes segments of ordinary collections only: an external collection's segments
/// come from refreshes of its source. (Index builds on external segments are the host's.)
pub fn refuse_host_write(s: &CollectionState, command: &CollectionCommand) -> Result<(), Error> {
    if s.external.is_none() {
        return Ok(());
    }
    let what = match command {
        CollectionCommand::FlushSegment(_) => "flush segments into",
        CollectionCommand::Compact(_) => "compact",
        CollectionCommand::DropSegment { .. } => "drop segments of",
        _ => return Ok(()),
    };
    Err(Error::failed_precondition(format!(
        "cannot {what} external collection '{}': its segments mirror its source; run 'external refresh'",
        s.name
    )))
}

/// Decide the external commands; `None` for every other command.
pub fn decide(
    s: &CollectionState,
    command: &CollectionCommand,
    now_ms: u64,
) -> Option<Result<Vec<CollectionEvent>, Error>> {
    use CollectionCommand as C;
    use CollectionEvent as E;
    let out = match command {
        C::AlterExternal { config, task_id } => (|| {
            s.require_live()?;
            let ext = require_external(s)?;
            config.check()?;
            if *task_id == 0 {
                return Err(Error::invalid_argument("task id must not be 0"));
            }
            if ext.active.as_ref().is_some_and(|a| a.task_id == *task_id) && ext.config == *config {
                return Ok(vec![]); // a repeat of this very alter
            }
            if ext.recent.contains_key(task_id) {
                return Err(Error::already_exists(format!("task {task_id} already ran")));
            }
            Ok(vec![E::ExternalAltered {
                config: config.clone(),
                generation: ext.generation + 1,
                superseded: ext.active.as_ref().map(|a| a.task_id),
                task_id: *task_id,
                altered_ms: now_ms,
            }])
        })(),
        C::BeginExternalTask { task_id } => (|| {
            s.require_live()?;
            let ext = require_external(s)?;
            if *task_id == 0 {
                return Err(Error::invalid_argument("task id must not be 0"));
            }
            if ext.active.is_some() || ext.recent.contains_key(task_id) {
                return Ok(vec![]);
            }
            Ok(vec![E::ExternalTaskStarted {
                task_id: *task_id,
                generation: ext.generation,
                started_ms: now_ms,
            }])
        })(),
        C::EndExternalTask { task_id, end } => (|| {
            if !s.exists {
                return Err(Error::not_found("collection not found"));
            }
            let ext = require_external(s)?;
            if let Some(previous) = ext.recent.get(task_id) {
                if previous == end {
                    return Ok(vec![]);
                }
                return Err(Error::failed_precondition(format!(
                    "task {task_id} already ended: {}",
                    previous.as_str()
                )));
            }
            if ext.active.as_ref().map(|a| a.task_id) != Some(*task_id) {
                return Err(Error::failed_precondition(format!(
                    "task {task_id} is not the active task of collection '{}'",
                    s.name
                )));
            }
            let end = match end {
                TaskEnd::Failed { key, reason } => TaskEnd::Failed {
                    key: clip_reason(key),
                    reason: clip_reason(reason),
                },
                TaskEnd::Committed => {
                    return Err(Error::invalid_argument(
                        "a task ends committed only by its commit",
                    ));
                }
                other => other.clone(),
            };
            Ok(vec![E::ExternalTaskEnded {
                task_id: *task_id,
                end,
                ended_ms: now_ms,
            }])
        })(),
        C::CommitExternalRefresh(c) => decide_commit(s, c, now_ms),
        _ => return None,
    };
    Some(out)
}

fn decide_commit(
    s: &CollectionState,
    c: &ExternalCommit,
    now_ms: u64,
) -> Result<Vec<CollectionEvent>, Error> {
    s.require_live()?;
    let ext = require_external(s)?;
    if ext.recent.get(&c.task_id) == Some(&TaskEnd::Committed) {
        return Ok(vec![]); // a repeat of this commit (an ambiguous append that landed)
    }
    match &ext.active {
        Some(a) if a.task_id == c.task_id => {}
        _ => {
            let why = match ext.recent.get(&c.task_id) {
                Some(end) => format!("it already ended ({})", end.as_str()),
                None => "it is not the collection's active task".to_string(),
            };
            return Err(Error::failed_precondition(format!(
                "task {} may not commit to collection '{}': {why}",
                c.task_id, s.name
            )));
        }
    }
    if c.generation != ext.generation {
        return Err(Error::failed_precondition(format!(
            "task {} ran for generation {} of the source, the collection is at {}",
            c.task_id, c.generation, ext.generation
        )));
    }
    if c.added.len() > MAX_ADDED_SEGMENTS_PER_REFRESH {
        return Err(Error::invalid_argument(format!(
            "a refresh adds at most {MAX_ADDED_SEGMENTS_PER_REFRESH} segments, got {}",
            c.added.len()
        )));
    }
    let mut dropped = BTreeSet::new();
    for id in &c.dropped {
        if !ext.segments.contains(id) {
            return Err(Error::failed_precondition(format!(
                "segment {id} is not a live external segment of collection '{}'",
                s.name
            )));
        }
        if !dropped.insert(*id) {
            return Err(Error::invalid_argument(format!(
                "segment {id} is dropped twice"
            )));
        }
    }
    let kept = ext.segments.len() - dropped.len();
    if kept + c.added.len() > MAX_EXTERNAL_SEGMENTS {
        return Err(Error::failed_precondition(format!(
            "collection '{}' would have {} external segments; at most {MAX_EXTERNAL_SEGMENTS} are allowed: raise target_rows_per_segment",
            s.name,
            kept + c.added.len()
        )));
    }
    let (default_partition, _) = s
        .partition_by_name(DEFAULT_PARTITION)
        .ok_or_else(|| Error::internal("the default partition is missing"))?;
    let mut added_ids = BTreeSet::new();
    for seg in &c.added {
        if seg.segment_id == 0
            || s.segments.contains_key(&seg.segment_id)
            || s.dropped_segments.contains(&seg.segment_id)
            || !added_ids.insert(seg.segment_id)
        {
            return Err(Error::already_exists(format!(
                "segment {} already exists in collection '{}'",
                seg.segment_id, s.name
            )));
        }
        let expected_key = fragment_list_key(s.collection_id, seg.segment_id);
        let shape_ok = seg.partition_id == default_partition
            && seg.shard < s.shard_count
            && seg.level == 0
            && seg.indexes.is_empty()
            && seg.files.len() == 1
            && seg.files[0].key == expected_key;
        if !shape_ok {
            return Err(Error::invalid_argument(format!(
                "external segment {} must be in the default partition, a valid shard, level 0, with one file '{expected_key}'",
                seg.segment_id
            )));
        }
    }
    Ok(vec![CollectionEvent::ExternalRefreshed {
        task_id: c.task_id,
        generation: c.generation,
        kept: kept as u64,
        dropped: c.dropped.clone(),
        added: c.added.clone(),
        fragments: c.fragments,
        refreshed_ms: now_ms,
    }])
}

/// Apply an external event; returns false for every other event.
pub fn evolve(s: &mut CollectionState, event: &CollectionEvent) -> bool {
    use CollectionEvent as E;
    match event {
        E::ExternalAltered {
            config,
            generation,
            superseded,
            task_id,
            altered_ms,
        } => {
            if let Some(ext) = s.external.as_mut() {
                if let Some(old) = superseded {
                    ext.remember(*old, TaskEnd::Superseded);
                }
                ext.config = config.clone();
                ext.generation = *generation;
                ext.active = Some(ActiveTask {
                    task_id: *task_id,
                    generation: *generation,
                    started_ms: *altered_ms,
                });
            }
        }
        E::ExternalTaskStarted {
            task_id,
            generation,
            started_ms,
        } => {
            if let Some(ext) = s.external.as_mut() {
                ext.active = Some(ActiveTask {
                    task_id: *task_id,
                    generation: *generation,
                    started_ms: *started_ms,
                });
            }
        }
        E::ExternalTaskEnded { task_id, end, .. } => {
            if let Some(ext) = s.external.as_mut() {
                if ext.active.as_ref().is_some_and(|a| a.task_id == *task_id) {
                    ext.active = None;
                }
                ext.remember(*task_id, end.clone());
            }
        }
        E::ExternalRefreshed {
            task_id,
            kept,
            dropped,
            added,
            fragments,
            refreshed_ms,
            ..
        } => {
            for id in dropped {
                s.segments.remove(id);
                s.dropped_segments.insert(*id);
            }
            for seg in added {
                s.segments.insert(seg.segment_id, Arc::new(seg.clone()));
            }
            if let Some(ext) = s.external.as_mut() {
                for id in dropped {
                    ext.segments.remove(id);
                }
                ext.segments.extend(added.iter().map(|a| a.segment_id));
                ext.fragments = *fragments;
                ext.last_refresh_ms = Some(*refreshed_ms);
                if ext.active.as_ref().is_some_and(|a| a.task_id == *task_id) {
                    ext.active = None;
                }
                ext.remember(*task_id, TaskEnd::Committed);
                let rows = ext
                    .segments
                    .iter()
                    .filter_map(|id| s.segments.get(id))
                    .map(|seg| seg.rows)
                    .sum();
                ext.last_commit = Some((
                    *task_id,
                    RefreshCounts {
                        kept: *kept,
                        dropped: dropped.len() as u64,
                        added: added.len() as u64,
                        fragments: *fragments,
                        rows,
                    },
                ));
            }
        }
        _ => return false,
    }
    true
}

/// The external state a `Created` event starts with.
pub fn created(config: &Option<ExternalConfig>) -> Option<ExternalState> {
    config.as_ref().map(|config| ExternalState {
        config: config.clone(),
        generation: 1,
        active: None,
        recent: BTreeMap::new(),
        segments: BTreeSet::new(),
        fragments: 0,
        last_refresh_ms: None,
        last_task: None,
        last_commit: None,
    })
}

/// An external segment record, as a refresh adds it.
pub fn segment_record(
    s: &CollectionState,
    segment_id: SegmentId,
    shard: u32,
    rows: u64,
    list: snapvault_events::domain::FileRef,
) -> Option<SegmentRecord> {
    let (partition_id, _) = s.partition_by_name(DEFAULT_PARTITION)?;
    Some(SegmentRecord {
        segment_id,
        partition_id,
        shard,
        rows,
        level: 0,
        files: vec![list],
        indexes: Vec::new(),
    })
}
