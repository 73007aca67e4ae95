//! The restore planner: pure, deterministic, streaming.
//!
//! It turns the snapshot's segments (read manifest by manifest, in order) into copy tasks:
//! whole segments of one shard per task, bounded by file count, bytes and the encoded size of
//! the task's `Planned` event. Everything about a restored segment is fixed here:
//! - its new id and its index builds' new ids come from the job's id block by position
//!   (segment `i` of the snapshot gets `first + i·stride`, its build of the `j`-th index
//!   `first + i·stride + 1 + j`), so planning again after a crash gives the same plan;
//! - its partition and index ids are the target's (matched by name);
//! - its destination keys are `data/{target}/{partition}/{segment}/` + each file's path
//!   relative to the directory its source files share, so the original file names survive
//!   and a retried copy lands on the same key.

use serde::Serialize;
use snapvault_events::Error;
use snapvault_events::domain::collection::{IndexFiles, SegmentRecord};
use snapvault_events::domain::restore::{
    MAX_BYTES_PER_TASK, MAX_FILES_PER_TASK, MAX_TASK_PLAN_BYTES, PlannedSegment, TaskSummary,
};
use snapvault_events::domain::{CollectionId, FileRef, IndexId, PartitionId};
use snapvault_events::validate::MAX_OBJECT_KEY_BYTES;
use std::collections::BTreeMap;

/// The largest `Planned` payload a task of one (big) segment may have: under the 64 KiB
/// event limit with room for the envelope's own fields.
pub const MAX_SINGLE_SEGMENT_PLAN_BYTES: usize = 60 * 1024;

/// What the planner needs to know about the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanContext {
    pub target_collection_id: CollectionId,
    /// First id of the job's id block.
    pub ids_first: u64,
    /// Source partition id → target partition id, for the partitions restored.
    pub partitions: BTreeMap<PartitionId, PartitionId>,
    /// Source index id → (position among the snapshot's indexes, target index id).
    pub indexes: BTreeMap<IndexId, (u64, IndexId)>,
    /// How many indexes the snapshot declares (the id stride is one more).
    pub index_count: u64,
}

impl PlanContext {
    /// Ids taken per snapshot segment: its own and one per declared index.
    pub fn stride(&self) -> u64 {
        1 + self.index_count
    }

    /// Size of the id block a snapshot of `segments` segments needs.
    pub fn ids_needed(segments: u64, index_count: u64) -> u64 {
        segments.saturating_mul(1 + index_count).max(1)
    }
}

/// One planned copy task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTask {
    pub task: u32,
    pub segments: Vec<PlannedSegment>,
}

impl PlannedTask {
    pub fn summary(&self) -> TaskSummary {
        let mut files = 0u64;
        let mut bytes = 0u64;
        for p in &self.segments {
            for f in p
                .segment
                .all_files()
                .filter(|f| !p.prewritten.contains(&f.key))
            {
                files += 1;
                bytes += f.size;
            }
        }
        TaskSummary {
            task: self.task,
            segments: self.segments.len() as u32,
            files,
            bytes,
        }
    }
}

/// The directory (ending in `/`, or empty) every key shares.
pub fn common_dir<'a>(mut keys: impl Iterator<Item = &'a str>) -> String {
    let Some(first) = keys.next() else {
        return String::new();
    };
    let mut len = first.rfind('/').map_or(0, |i| i + 1);
    for k in keys {
        let shared = first
            .bytes()
            .zip(k.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
        len = first[..shared].rfind('/').map_or(0, |i| i + 1);
        if len == 0 {
            break;
        }
    }
    first[..len].to_string()
}

fn encoded_len<T: Serialize>(value: &T) -> Result<usize, Error> {
    rmp_serde::to_vec_named(value)
        .map(|v| v.len())
        .map_err(|e| Error::internal(format!("cannot encode a planned segment: {e}")))
}

#[derive(Default)]
struct OpenTask {
    segments: Vec<PlannedSegment>,
    files: usize,
    bytes: u64,
    encoded: usize,
}

/// Streams segments in, tasks out.
pub struct Planner {
    ctx: PlanContext,
    open: BTreeMap<u32, OpenTask>,
    next_task: u32,
}

impl Planner {
    pub fn new(ctx: PlanContext) -> Planner {
        Planner {
            ctx,
            open: BTreeMap::new(),
            next_task: 0,
        }
    }

    /// The restored form of snapshot segment number `ordinal`, or `None` when its partition
    /// is not restored.
    pub fn plan_segment(
        &self,
        ordinal: u64,
        seg: &SegmentRecord,
    ) -> Result<Option<PlannedSegment>, Error> {
        let Some(&partition_id) = self.ctx.partitions.get(&seg.partition_id) else {
            return Ok(None);
        };
        let base = self
            .ctx
            .ids_first
            .checked_add(ordinal.saturating_mul(self.ctx.stride()))
            .ok_or_else(|| Error::internal("restore id block overflows"))?;
        let segment_id = base;
        let source_prefix = common_dir(seg.all_files().map(|f| f.key.as_str()));
        let dest_prefix = format!(
            "data/{}/{partition_id}/{segment_id}/",
            self.ctx.target_collection_id
        );
        let relocate = |f: &FileRef| -> Result<FileRef, Error> {
            let rel = &f.key[source_prefix.len()..];
            let key = format!("{dest_prefix}{rel}");
            if key.len() > MAX_OBJECT_KEY_BYTES {
                return Err(Error::failed_precondition(format!(
                    "the restored key for '{}' would be {} bytes, over the {MAX_OBJECT_KEY_BYTES}-byte limit",
                    f.key,
                    key.len()
                )));
            }
            Ok(FileRef {
                key,
                size: f.size,
                crc32c: f.crc32c,
            })
        };
        let files = seg.files.iter().map(relocate).collect::<Result<_, _>>()?;
        let mut indexes = Vec::with_capacity(seg.indexes.len());
        for i in &seg.indexes {
            let Some(&(position, target_index)) = self.ctx.indexes.get(&i.index_id) else {
                return Err(Error::internal(format!(
                    "segment {} of the snapshot has a build of index {}, which the snapshot does not declare",
                    seg.segment_id, i.index_id
                )));
            };
            indexes.push(IndexFiles {
                index_id: target_index,
                build_id: base + 1 + position,
                files: i.files.iter().map(relocate).collect::<Result<_, _>>()?,
            });
        }
        indexes.sort_by_key(|i| i.index_id);
        Ok(Some(PlannedSegment {
            source_segment_id: seg.segment_id,
            source_prefix,
            dest_prefix,
            segment: SegmentRecord {
                segment_id,
                partition_id,
                shard: seg.shard,
                rows: seg.rows,
                level: seg.level,
                files,
                indexes,
            },
            prewritten: Vec::new(),
        }))
    }

    /// Add snapshot segment number `ordinal`; returns a task when one filled up.
    pub fn push(
        &mut self,
        ordinal: u64,
        seg: &SegmentRecord,
    ) -> Result<Option<PlannedTask>, Error> {
        let Some(planned) = self.plan_segment(ordinal, seg)? else {
            return Ok(None);
        };
        let encoded = encoded_len(&planned)?;
        if encoded > MAX_SINGLE_SEGMENT_PLAN_BYTES {
            return Err(Error::failed_precondition(format!(
                "segment {} of the snapshot is too large to plan ({encoded} bytes of keys and ids)",
                seg.segment_id
            )));
        }
        let files = planned.segment.all_files().count();
        let bytes: u64 = planned.segment.all_files().map(|f| f.size).sum();
        let open = self.open.entry(seg.shard).or_default();
        let full = !open.segments.is_empty()
            && (open.files + files > MAX_FILES_PER_TASK
                || open.bytes.saturating_add(bytes) > MAX_BYTES_PER_TASK
                || open.encoded + encoded > MAX_TASK_PLAN_BYTES);
        let emitted = if full {
            let done = std::mem::take(open);
            let task = PlannedTask {
                task: self.next_task,
                segments: done.segments,
            };
            self.next_task += 1;
            Some(task)
        } else {
            None
        };
        let open = self.open.entry(seg.shard).or_default();
        open.segments.push(planned);
        open.files += files;
        open.bytes = open.bytes.saturating_add(bytes);
        open.encoded += encoded;
        Ok(emitted)
    }

    /// The tasks still open, in shard order.
    pub fn finish(mut self) -> Vec<PlannedTask> {
        let mut out = Vec::new();
        for (_, open) in std::mem::take(&mut self.open) {
            if open.segments.is_empty() {
                continue;
            }
            out.push(PlannedTask {
                task: self.next_task,
                segments: open.segments,
            });
            self.next_task += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::copy_task::copy_items;

    fn file(key: &str, size: u64) -> FileRef {
        FileRef {
            key: key.into(),
            size,
            crc32c: size as u32,
        }
    }

    fn seg(id: u64, partition: u64, shard: u32, files: &[&str]) -> SegmentRecord {
        SegmentRecord {
            segment_id: id,
            partition_id: partition,
            shard,
            rows: 10,
            level: 0,
            files: files.iter().map(|k| file(k, 100)).collect(),
            indexes: vec![],
        }
    }

    fn ctx() -> PlanContext {
        PlanContext {
            target_collection_id: 9,
            ids_first: 1000,
            partitions: BTreeMap::from([(1, 1), (3, 2)]),
            indexes: BTreeMap::from([(4, (0, 1))]),
            index_count: 1,
        }
    }

    #[test]
    fn common_dir_keeps_whole_components() {
        assert_eq!(
            common_dir(["data/5/1/17/insert/0", "data/5/1/17/delta/0"].into_iter()),
            "data/5/1/17/"
        );
        assert_eq!(common_dir(["data/5/1/17/a"].into_iter()), "data/5/1/17/");
        assert_eq!(common_dir(["ab/x", "ac/y"].into_iter()), "");
        assert_eq!(common_dir(["x"].into_iter()), "");
        assert_eq!(common_dir(["d/ab1", "d/ab2"].into_iter()), "d/");
    }

    #[test]
    fn segments_get_ids_from_their_position_and_keys_keep_their_names() {
        let p = Planner::new(ctx());
        let mut s = seg(17, 3, 0, &["data/5/3/17/insert/0", "data/5/3/17/delta/0"]);
        s.indexes.push(IndexFiles {
            index_id: 4,
            build_id: 77,
            files: vec![file("data/5/3/17/index/4/0", 5)],
        });
        let planned = p.plan_segment(2, &s).unwrap().unwrap();
        assert_eq!(planned.segment.segment_id, 1004);
        assert_eq!(planned.segment.partition_id, 2);
        assert_eq!(planned.segment.indexes[0].index_id, 1);
        assert_eq!(planned.segment.indexes[0].build_id, 1005);
        assert_eq!(planned.dest_prefix, "data/9/2/1004/");
        assert_eq!(planned.segment.files[0].key, "data/9/2/1004/insert/0");
        assert_eq!(
            planned.segment.indexes[0].files[0].key,
            "data/9/2/1004/index/4/0"
        );
        let items = copy_items(std::slice::from_ref(&planned));
        assert_eq!(items[2].source_key, "data/5/3/17/index/4/0");
        assert_eq!(items[2].dest.key, "data/9/2/1004/index/4/0");
    }

    #[test]
    fn unrestored_partitions_are_skipped() {
        let p = Planner::new(ctx());
        assert_eq!(p.plan_segment(0, &seg(1, 2, 0, &["a/b"])).unwrap(), None);
    }

    #[test]
    fn tasks_group_one_shard_and_respect_the_file_bound() {
        let mut p = Planner::new(ctx());
        let mut tasks = Vec::new();
        let keys: Vec<String> = (0..30).map(|i| format!("d/{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        for i in 0..10u64 {
            let shard = (i % 2) as u32;
            tasks.extend(p.push(i, &seg(i + 1, 1, shard, &refs)).unwrap());
        }
        tasks.extend(p.finish());
        let total: usize = tasks.iter().map(|t| t.segments.len()).sum();
        assert_eq!(total, 10);
        for (n, t) in tasks.iter().enumerate() {
            assert_eq!(t.task as usize, n, "tasks are numbered in emission order");
            let shards: std::collections::BTreeSet<u32> =
                t.segments.iter().map(|s| s.segment.shard).collect();
            assert_eq!(shards.len(), 1, "a task holds one shard");
            assert!(t.summary().files as usize <= MAX_FILES_PER_TASK);
            let encoded = rmp_serde::to_vec_named(&t.segments).unwrap().len();
            assert!(encoded <= MAX_TASK_PLAN_BYTES + 1024);
        }
    }

    #[test]
    fn planning_twice_gives_the_same_plan() {
        let run = || {
            let mut p = Planner::new(ctx());
            let mut tasks = Vec::new();
            for i in 0..50u64 {
                let key = format!("data/5/1/{i}/x");
                tasks.extend(p.push(i, &seg(i + 1, 1, (i % 3) as u32, &[&key])).unwrap());
            }
            tasks.extend(p.finish());
            tasks
        };
        assert_eq!(run(), run());
    }
}
