//! The checker's part for external collections: the refresh fence and what a committed
//! refresh must match.
//!
//! Checked as each event is ingested (before it is applied to the truth):
//! - a refresh commit (`ExternalRefreshed`) comes from the collection's active task, for the
//!   current generation, and never from a task that had ended (superseded by a change of
//!   source or spec, cancelled, failed): **a superseded task commits nothing**;
//! - its `kept` + `dropped` are exactly the live external segments before it; its added
//!   segment ids were reserved and are used once;
//! - **at most one active task per collection**: a task takes the slot only when it is free
//!   (`ExternalTaskStarted`) or by superseding the holder (`ExternalAltered`);
//! - a task stream ends `committed` only if the collection committed it, and otherwise only
//!   if the collection did not;
//! - GC never announces reclaiming a key under an own-store source prefix.
//!
//! After the liveness phase, [`check_mirror`]: every external collection mirrors its source
//! exactly: the fragments of its segments are the source's Parquet files with their current
//! size and e-tag, each once, with the row count their footer holds (read independently with
//! the `parquet` crate).

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use snapvault_actors::Aggregate;
use snapvault_actors::collection::CollectionState;
use snapvault_actors::external::{ExternalTask, ExternalTaskState};
use snapvault_events::domain::collection::CollectionEvent;
use snapvault_events::domain::external::{
    ExternalTaskEvent, FragmentList, TaskId, TaskOutcome, parse_source,
};
use snapvault_events::domain::{CollectionId, SegmentId};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct ExternalTruth {
    pub tasks: BTreeMap<TaskId, ExternalTaskState>,
    pub committed: BTreeSet<TaskId>,
    /// Tasks the collection ended without a commit.
    pub ended: BTreeSet<TaskId>,
    /// Own-store prefixes that ever were a source.
    pub prefixes: BTreeSet<String>,
    pub segment_ids: BTreeSet<SegmentId>,
    pub commits: u64,
}

impl ExternalTruth {
    pub fn under_source(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn note_source(&mut self, source: &str) {
        if let Ok((_, loc)) = parse_source(source)
            && let Some(p) = loc.own_store_prefix()
        {
            self.prefixes.insert(p);
        }
    }

    /// Check a collection event against the state before it.
    pub fn on_collection_event(
        &mut self,
        at: &str,
        before: &CollectionState,
        e: &CollectionEvent,
        reserved_end: u64,
        host_segments: &BTreeSet<SegmentId>,
    ) -> Result<(), String> {
        match e {
            CollectionEvent::Created {
                external: Some(c), ..
            } => self.note_source(&c.source),
            CollectionEvent::ExternalAltered {
                config, superseded, ..
            } => {
                self.note_source(&config.source);
                let active = before
                    .external
                    .as_ref()
                    .and_then(|x| x.active.as_ref())
                    .map(|a| a.task_id);
                if *superseded != active {
                    return Err(format!(
                        "{at}: alter supersedes {superseded:?} but the active task was {active:?}"
                    ));
                }
                if let Some(t) = superseded {
                    self.ended.insert(*t);
                }
            }
            CollectionEvent::ExternalTaskStarted { task_id, .. } => {
                let active = before.external.as_ref().and_then(|x| x.active.as_ref());
                if let Some(a) = active {
                    return Err(format!(
                        "{at}: task {task_id} started while task {} is active: two active tasks",
                        a.task_id
                    ));
                }
            }
            CollectionEvent::ExternalTaskEnded { task_id, .. } => {
                if self.committed.contains(task_id) {
                    return Err(format!("{at}: task {task_id} ended after it committed"));
                }
                self.ended.insert(*task_id);
            }
            CollectionEvent::ExternalRefreshed {
                task_id,
                generation,
                kept,
                dropped,
                added,
                ..
            } => {
                let Some(ext) = before.external.as_ref() else {
                    return Err(format!(
                        "{at}: a refresh of a collection that is not external"
                    ));
                };
                if self.ended.contains(task_id) {
                    return Err(format!(
                        "{at}: task {task_id} committed after it was superseded, cancelled or failed"
                    ));
                }
                if ext.active.as_ref().map(|a| a.task_id) != Some(*task_id)
                    || *generation != ext.generation
                {
                    return Err(format!(
                        "{at}: task {task_id} (generation {generation}) committed without holding the slot (active {:?}, generation {})",
                        ext.active, ext.generation
                    ));
                }
                if !self.committed.insert(*task_id) {
                    return Err(format!("{at}: task {task_id} committed twice"));
                }
                let dropped_set: BTreeSet<SegmentId> = dropped.iter().copied().collect();
                if !dropped_set.is_subset(&ext.segments)
                    || dropped_set.len() != dropped.len()
                    || *kept != (ext.segments.len() - dropped_set.len()) as u64
                {
                    return Err(format!(
                        "{at}: kept {kept} + dropped {dropped:?} are not the live external segments {:?}",
                        ext.segments
                    ));
                }
                for s in added {
                    if s.segment_id == 0 || s.segment_id >= reserved_end {
                        return Err(format!("{at}: segment {} was never reserved", s.segment_id));
                    }
                    if host_segments.contains(&s.segment_id)
                        || !self.segment_ids.insert(s.segment_id)
                    {
                        return Err(format!("{at}: segment id {} used twice", s.segment_id));
                    }
                }
                self.commits += 1;
            }
            _ => {}
        }
        Ok(())
    }

    pub fn on_task_event(
        &mut self,
        at: &str,
        id: TaskId,
        e: &ExternalTaskEvent,
    ) -> Result<(), String> {
        if let ExternalTaskEvent::Finished { outcome, .. } = e {
            let committed = self.committed.contains(&id);
            match outcome {
                TaskOutcome::Committed { .. } if !committed => {
                    return Err(format!(
                        "{at}: task {id} says committed but its collection never committed it"
                    ));
                }
                TaskOutcome::Committed { .. } => {}
                other if committed => {
                    return Err(format!(
                        "{at}: task {id} says {} but its collection committed it",
                        other.as_str()
                    ));
                }
                _ => {}
            }
        }
        ExternalTask::evolve(self.tasks.entry(id).or_default(), e);
        Ok(())
    }
}

/// Every external collection mirrors its source exactly (after a final refresh with nothing
/// else running).
pub async fn check_mirror(
    collections: &BTreeMap<CollectionId, &CollectionState>,
    store: &InMemory,
) -> Result<(), String> {
    use futures::TryStreamExt;
    for (id, c) in collections {
        let Some(ext) = &c.external else { continue };
        if let Some(a) = &ext.active {
            return Err(format!(
                "collection {id} still has active task {} after settling",
                a.task_id
            ));
        }
        let Ok((_, loc)) = parse_source(&ext.config.source) else {
            return Err(format!("collection {id} has an unparsable source"));
        };
        let Some(prefix) = loc.own_store_prefix() else {
            continue;
        };
        let listed: Vec<object_store::ObjectMeta> = store
            .list(Some(&Path::from(prefix.trim_end_matches('/'))))
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut source: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
        for m in listed {
            let key = m.location.to_string();
            let rel = key[prefix.len()..].to_string();
            if rel.ends_with(".parquet") {
                source.insert(rel, (m.size, m.e_tag));
            }
        }
        let mut mirrored: BTreeMap<String, (u64, Option<String>, u64)> = BTreeMap::new();
        for sid in &ext.segments {
            let seg = c
                .segments
                .get(sid)
                .ok_or_else(|| format!("external segment {sid} of {id} is not live"))?;
            let file = &seg.files[0];
            let bytes = store
                .get(&Path::from(file.key.as_str()))
                .await
                .map_err(|e| format!("fragment list '{}' of live segment {sid}: {e}", file.key))?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            let list = FragmentList::decode(&file.key, &bytes).map_err(|e| e.to_string())?;
            let rows: u64 = list.fragments.iter().map(|f| f.rows).sum();
            if rows != seg.rows {
                return Err(format!(
                    "segment {sid} says {} rows, its fragments {rows}",
                    seg.rows
                ));
            }
            for f in list.fragments {
                if mirrored
                    .insert(f.key.clone(), (f.size, f.e_tag.clone(), f.rows))
                    .is_some()
                {
                    return Err(format!("fragment '{}' is in two segments of {id}", f.key));
                }
            }
        }
        if source.is_empty() {
            // An empty source fails its refresh and changes nothing: no check of contents.
            continue;
        }
        let want: BTreeSet<&String> = source.keys().collect();
        let have: BTreeSet<&String> = mirrored.keys().collect();
        if want != have {
            return Err(format!(
                "collection {id} mirrors {have:?} but its source holds {want:?}"
            ));
        }
        for (key, (size, e_tag, rows)) in &mirrored {
            let (s_size, s_tag) = &source[key];
            if size != s_size || e_tag != s_tag {
                return Err(format!(
                    "collection {id}: fragment '{key}' is an old version"
                ));
            }
            let bytes = store
                .get(&Path::from(format!("{prefix}{key}")))
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            let reader = parquet::file::reader::SerializedFileReader::new(bytes)
                .map_err(|e| format!("'{key}' is not Parquet: {e}"))?;
            use parquet::file::reader::FileReader;
            let real = reader.metadata().file_metadata().num_rows() as u64;
            if real != *rows {
                return Err(format!(
                    "collection {id}: fragment '{key}' has {real} rows, the mapping says {rows}"
                ));
            }
        }
    }
    Ok(())
}
