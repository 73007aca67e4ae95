//! Collection decider: every rule about what the host may do to a collection.
//!
//! All of a collection's changes go through this one decider, applied by one actor, so the
//! state at any stream version is an exact cut: the set of live segments a snapshot pins.

use crate::aggregate::Aggregate;
use serde::Serialize;
use snapvault_events::Error;
use snapvault_events::domain::collection::*;
use snapvault_events::domain::snapshot::{MAX_DESCRIPTION_BYTES, MAX_LABEL_BYTES, MAX_LABELS};
use snapvault_events::domain::{
    CollectionId, FileRef, IndexId, JobId, PartitionId, SegmentId, SnapshotId,
};
use snapvault_events::validate::{validate_name, validate_object_key};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Longest property key or value.
const MAX_PROPERTY_BYTES: usize = 4096;
/// Longest index parameters document.
const MAX_PARAMS_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionState {
    pub name: String,
    pub dropped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexState {
    pub name: String,
    pub field: String,
    pub params_json: String,
    pub dropped: bool,
}

/// Everything known about one collection, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CollectionState {
    /// False until `Created`; a stream with no events is an unknown collection.
    pub exists: bool,
    pub collection_id: CollectionId,
    pub name: String,
    pub schema_json: String,
    pub shard_count: u32,
    pub properties: BTreeMap<String, String>,
    pub status: Option<CollectionStatus>,
    pub restoring_job: Option<JobId>,
    pub created_ms: u64,
    pub partitions: BTreeMap<PartitionId, PartitionState>,
    pub indexes: BTreeMap<IndexId, IndexState>,
    /// Live segments only. Shared (`Arc`) so a snapshot can take the cut as a cheap copy of
    /// the map instead of replaying the stream.
    pub segments: BTreeMap<SegmentId, Arc<SegmentRecord>>,
    /// Ids of segments that were live once and are gone (compacted away or dropped).
    pub dropped_segments: BTreeSet<SegmentId>,
    pub next_partition_id: PartitionId,
    pub next_index_id: IndexId,
    /// Snapshots pinned on this collection and not released, by id.
    pub pins: BTreeMap<SnapshotId, String>,
    /// Set for an external collection (`external.rs`).
    pub external: Option<super::external::ExternalState>,
}

impl CollectionState {
    pub fn is_live(&self) -> bool {
        self.exists && self.status != Some(CollectionStatus::Dropped)
    }

    pub fn partition_by_name(&self, name: &str) -> Option<(PartitionId, &PartitionState)> {
        self.partitions
            .iter()
            .find(|(_, p)| !p.dropped && p.name == name)
            .map(|(id, p)| (*id, p))
    }

    pub fn index_by_name(&self, name: &str) -> Option<(IndexId, &IndexState)> {
        self.indexes
            .iter()
            .find(|(_, i)| !i.dropped && i.name == name)
            .map(|(id, i)| (*id, i))
    }

    /// Number of files (data + index) of live segments, and their bytes.
    pub fn live_file_totals(&self) -> (u64, u64) {
        let mut files = 0u64;
        let mut bytes = 0u64;
        for s in self.segments.values() {
            for f in s
                .files
                .iter()
                .chain(s.indexes.iter().flat_map(|i| i.files.iter()))
            {
                files += 1;
                bytes += f.size;
            }
        }
        (files, bytes)
    }

    pub(crate) fn require_live(&self) -> Result<(), Error> {
        if !self.exists {
            return Err(Error::not_found("collection not found"));
        }
        if self.status == Some(CollectionStatus::Dropped) {
            return Err(Error::not_found(format!(
                "collection '{}' was dropped",
                self.name
            )));
        }
        Ok(())
    }

    /// The host may write only to a Ready collection (a restoring one belongs to its job).
    fn require_writable(&self) -> Result<(), Error> {
        self.require_live()?;
        if self.status == Some(CollectionStatus::Restoring) {
            return Err(Error::failed_precondition(format!(
                "collection '{}' is being restored by job {}; wait for the restore to finish",
                self.name,
                self.restoring_job.unwrap_or(0)
            )));
        }
        Ok(())
    }

    /// Only the restore job that created a `Restoring` collection may fill or finish it.
    fn require_restoring_by(&self, job_id: JobId) -> Result<(), Error> {
        self.require_live()?;
        if self.status != Some(CollectionStatus::Restoring) || self.restoring_job != Some(job_id) {
            return Err(Error::failed_precondition(format!(
                "collection '{}' is not being restored by job {job_id}",
                self.name
            )));
        }
        Ok(())
    }

    /// A restored segment must fit the target: a live partition, a shard it has, clean files,
    /// and builds only of indexes it declares.
    fn check_restored_segment(&self, seg: &SegmentRecord) -> Result<(), Error> {
        let partition_live = self
            .partitions
            .get(&seg.partition_id)
            .is_some_and(|p| !p.dropped);
        if !partition_live {
            return Err(Error::invalid_argument(format!(
                "restored segment {} names partition {}, which collection '{}' does not have",
                seg.segment_id, seg.partition_id, self.name
            )));
        }
        if seg.shard >= self.shard_count {
            return Err(Error::invalid_argument(format!(
                "restored segment {} is on shard {}; collection '{}' has shards 0..{}",
                seg.segment_id, seg.shard, self.name, self.shard_count
            )));
        }
        check_files(&format!("segment {}", seg.segment_id), &seg.files)?;
        for i in &seg.indexes {
            if self.indexes.get(&i.index_id).is_none_or(|x| x.dropped) {
                return Err(Error::invalid_argument(format!(
                    "restored segment {} has a build of index {}, which collection '{}' does not declare",
                    seg.segment_id, i.index_id, self.name
                )));
            }
            check_files(&format!("index build {}", i.build_id), &i.files)?;
        }
        Ok(())
    }

    fn check_new_segment_id(&self, segment_id: SegmentId) -> Result<(), Error> {
        if segment_id == 0 {
            return Err(Error::invalid_argument("segment id must not be 0"));
        }
        if self.segments.contains_key(&segment_id) || self.dropped_segments.contains(&segment_id) {
            return Err(Error::already_exists(format!(
                "segment {segment_id} already exists in collection '{}'",
                self.name
            )));
        }
        Ok(())
    }

    fn check_live_segment(&self, segment_id: SegmentId) -> Result<&SegmentRecord, Error> {
        if let Some(s) = self.segments.get(&segment_id) {
            return Ok(s);
        }
        if self.dropped_segments.contains(&segment_id) {
            return Err(Error::failed_precondition(format!(
                "segment {segment_id} of collection '{}' was already dropped or compacted away",
                self.name
            )));
        }
        Err(Error::not_found(format!(
            "segment {segment_id} not found in collection '{}'",
            self.name
        )))
    }
}

/// Files must be non-empty, bounded, clean relative keys, unique within the list.
fn check_files(what: &str, files: &[FileRef]) -> Result<(), Error> {
    if files.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{what} must list at least one file"
        )));
    }
    if files.len() > MAX_FILES_PER_SEGMENT {
        return Err(Error::invalid_argument(format!(
            "{what} lists {} files; at most {MAX_FILES_PER_SEGMENT} are allowed",
            files.len()
        )));
    }
    let mut keys = BTreeSet::new();
    for f in files {
        validate_object_key("file key", &f.key)?;
        if !keys.insert(f.key.as_str()) {
            return Err(Error::invalid_argument(format!(
                "{what} lists file '{}' twice",
                f.key
            )));
        }
    }
    Ok(())
}

fn check_new_index(name: &str, field: &str, params_json: &str) -> Result<(), Error> {
    validate_name("index name", name)?;
    validate_name("index field", field)?;
    check_json("index parameters", params_json, MAX_PARAMS_BYTES)
}

fn check_json(what: &str, text: &str, max_bytes: usize) -> Result<(), Error> {
    if text.len() > max_bytes {
        return Err(Error::invalid_argument(format!(
            "{what} is {} bytes; at most {max_bytes} are allowed",
            text.len()
        )));
    }
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| ())
        .map_err(|e| Error::invalid_argument(format!("{what} is not valid JSON: {e}")))
}

/// Snapshot description and labels are bounded so the pin event stays small.
pub fn check_snapshot_labels(
    description: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), Error> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(Error::invalid_argument(format!(
            "description is {} bytes; at most {MAX_DESCRIPTION_BYTES} are allowed",
            description.len()
        )));
    }
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid_argument(format!(
            "at most {MAX_LABELS} labels are allowed, got {}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        validate_name("label key", k)?;
        if v.len() > MAX_LABEL_BYTES || v.chars().any(char::is_control) {
            return Err(Error::invalid_argument(format!(
                "label '{k}' value must be at most {MAX_LABEL_BYTES} bytes without control characters"
            )));
        }
    }
    Ok(())
}

fn check_create(c: &CreateCollection) -> Result<Vec<PartitionDef>, Error> {
    if c.collection_id == 0 {
        return Err(Error::invalid_argument("collection id must not be 0"));
    }
    validate_name("collection name", &c.name)?;
    check_json("schema", &c.schema_json, MAX_SCHEMA_BYTES)?;
    if c.shard_count == 0 || c.shard_count > MAX_SHARDS {
        return Err(Error::invalid_argument(format!(
            "shard count must be 1..={MAX_SHARDS}, got {}",
            c.shard_count
        )));
    }
    if c.properties.len() > MAX_PROPERTIES {
        return Err(Error::invalid_argument(format!(
            "at most {MAX_PROPERTIES} properties are allowed, got {}",
            c.properties.len()
        )));
    }
    for (k, v) in &c.properties {
        if k.is_empty() || k.len() > MAX_PROPERTY_BYTES || v.len() > MAX_PROPERTY_BYTES {
            return Err(Error::invalid_argument(format!(
                "property keys must be 1..={MAX_PROPERTY_BYTES} bytes and values at most {MAX_PROPERTY_BYTES}"
            )));
        }
    }
    if c.partitions.len() + 1 > MAX_PARTITIONS {
        return Err(Error::invalid_argument(format!(
            "at most {MAX_PARTITIONS} partitions are allowed"
        )));
    }
    let mut defs = vec![PartitionDef {
        partition_id: 1,
        name: DEFAULT_PARTITION.to_string(),
    }];
    for p in &c.partitions {
        validate_name("partition name", p)?;
        if defs.iter().any(|d| &d.name == p) {
            return Err(Error::invalid_argument(format!(
                "partition '{p}' is listed twice (or is the default partition)"
            )));
        }
        defs.push(PartitionDef {
            partition_id: defs.len() as u64 + 1,
            name: p.clone(),
        });
    }
    Ok(defs)
}

/// The collection decider.
pub struct Collection;

impl Aggregate for Collection {
    type State = CollectionState;
    type Command = CollectionCommand;
    type Event = CollectionEvent;
    const KIND: &'static str = "collection";

    fn decide(
        s: &CollectionState,
        command: &CollectionCommand,
        now_ms: u64,
    ) -> Result<Vec<CollectionEvent>, Error> {
        use CollectionCommand as C;
        use CollectionEvent as E;
        if let Some(out) = super::external::decide(s, command, now_ms) {
            return out;
        }
        super::external::refuse_host_write(s, command)?;
        match command {
            C::Create(c) => {
                if s.exists {
                    return Err(Error::already_exists(format!(
                        "collection {} already exists",
                        s.collection_id
                    )));
                }
                let partitions = check_create(c)?;
                super::external::check_create(c)?;
                let mut events = vec![E::Created {
                    collection_id: c.collection_id,
                    name: c.name.clone(),
                    schema_json: c.schema_json.clone(),
                    shard_count: c.shard_count,
                    properties: c.properties.clone(),
                    partitions,
                    status: if c.restoring_job.is_some() {
                        CollectionStatus::Restoring
                    } else {
                        CollectionStatus::Ready
                    },
                    restoring_job: c.restoring_job,
                    created_ms: now_ms,
                    external: c.external.clone(),
                }];
                let mut names = BTreeSet::new();
                for (n, i) in c.indexes.iter().enumerate() {
                    check_new_index(&i.name, &i.field, &i.params_json)?;
                    if !names.insert(i.name.as_str()) {
                        return Err(Error::invalid_argument(format!(
                            "index '{}' is declared twice",
                            i.name
                        )));
                    }
                    events.push(E::IndexCreated {
                        index_id: n as IndexId + 1,
                        name: i.name.clone(),
                        field: i.field.clone(),
                        params_json: i.params_json.clone(),
                    });
                }
                Ok(events)
            }
            C::Drop => {
                s.require_live()?;
                if s.status == Some(CollectionStatus::Restoring) {
                    return Err(Error::failed_precondition(format!(
                        "collection '{}' is being restored by job {}; cancel the restore instead",
                        s.name,
                        s.restoring_job.unwrap_or(0)
                    )));
                }
                Ok(vec![E::Dropped])
            }
            C::CreatePartition { name } => {
                s.require_writable()?;
                validate_name("partition name", name)?;
                if s.partition_by_name(name).is_some() {
                    return Err(Error::already_exists(format!(
                        "partition '{name}' already exists in collection '{}'",
                        s.name
                    )));
                }
                let live = s.partitions.values().filter(|p| !p.dropped).count();
                if live >= MAX_PARTITIONS {
                    return Err(Error::failed_precondition(format!(
                        "collection '{}' already has {MAX_PARTITIONS} partitions",
                        s.name
                    )));
                }
                Ok(vec![E::PartitionCreated {
                    partition: PartitionDef {
                        partition_id: s.next_partition_id,
                        name: name.clone(),
                    },
                }])
            }
            C::DropPartition { name } => {
                s.require_writable()?;
                let (id, _) = s.partition_by_name(name).ok_or_else(|| {
                    Error::not_found(format!(
                        "partition '{name}' not found in collection '{}'",
                        s.name
                    ))
                })?;
                if name == DEFAULT_PARTITION {
                    return Err(Error::failed_precondition(
                        "the default partition cannot be dropped",
                    ));
                }
                Ok(vec![E::PartitionDropped { partition_id: id }])
            }
            C::CreateIndex {
                name,
                field,
                params_json,
            } => {
                s.require_writable()?;
                check_new_index(name, field, params_json)?;
                if s.index_by_name(name).is_some() {
                    return Err(Error::already_exists(format!(
                        "index '{name}' already exists in collection '{}'",
                        s.name
                    )));
                }
                Ok(vec![E::IndexCreated {
                    index_id: s.next_index_id,
                    name: name.clone(),
                    field: field.clone(),
                    params_json: params_json.clone(),
                }])
            }
            C::DropIndex { name } => {
                s.require_writable()?;
                let (id, _) = s.index_by_name(name).ok_or_else(|| {
                    Error::not_found(format!(
                        "index '{name}' not found in collection '{}'",
                        s.name
                    ))
                })?;
                Ok(vec![E::IndexDropped { index_id: id }])
            }
            C::FlushSegment(f) => {
                s.require_writable()?;
                s.check_new_segment_id(f.segment_id)?;
                let (partition_id, _) = s.partition_by_name(&f.partition).ok_or_else(|| {
                    Error::not_found(format!(
                        "partition '{}' not found in collection '{}'",
                        f.partition, s.name
                    ))
                })?;
                if f.shard >= s.shard_count {
                    return Err(Error::invalid_argument(format!(
                        "shard {} does not exist; collection '{}' has shards 0..{}",
                        f.shard, s.name, s.shard_count
                    )));
                }
                check_files(&format!("segment {}", f.segment_id), &f.files)?;
                Ok(vec![E::SegmentFlushed {
                    segment: SegmentRecord {
                        segment_id: f.segment_id,
                        partition_id,
                        shard: f.shard,
                        rows: f.rows,
                        level: 0,
                        files: f.files.clone(),
                        indexes: Vec::new(),
                    },
                }])
            }
            C::Compact(c) => {
                s.require_writable()?;
                if c.segment_ids.is_empty() {
                    return Err(Error::invalid_argument(
                        "compaction needs at least one segment",
                    ));
                }
                if c.segment_ids.len() > MAX_SEGMENTS_PER_COMPACTION {
                    return Err(Error::invalid_argument(format!(
                        "a compaction merges at most {MAX_SEGMENTS_PER_COMPACTION} segments, got {}",
                        c.segment_ids.len()
                    )));
                }
                let mut seen = BTreeSet::new();
                let mut first: Option<&SegmentRecord> = None;
                let mut level = 0;
                for id in &c.segment_ids {
                    if !seen.insert(*id) {
                        return Err(Error::invalid_argument(format!(
                            "segment {id} is listed twice in the compaction"
                        )));
                    }
                    let seg = s.check_live_segment(*id)?;
                    if let Some(f) = first {
                        if (f.partition_id, f.shard) != (seg.partition_id, seg.shard) {
                            return Err(Error::invalid_argument(format!(
                                "segments {} and {id} are in different partitions or shards; a compaction merges one partition and shard",
                                f.segment_id
                            )));
                        }
                    } else {
                        first = Some(seg);
                    }
                    level = level.max(seg.level + 1);
                }
                s.check_new_segment_id(c.into_segment_id)?;
                check_files(&format!("segment {}", c.into_segment_id), &c.files)?;
                let first = first.ok_or_else(|| Error::internal("empty compaction"))?;
                Ok(vec![E::SegmentsCompacted {
                    compacted: c.segment_ids.clone(),
                    into: SegmentRecord {
                        segment_id: c.into_segment_id,
                        partition_id: first.partition_id,
                        shard: first.shard,
                        rows: c.rows,
                        level,
                        files: c.files.clone(),
                        indexes: Vec::new(),
                    },
                }])
            }
            C::DropSegment { segment_id } => {
                s.require_writable()?;
                s.check_live_segment(*segment_id)?;
                Ok(vec![E::SegmentDropped {
                    segment_id: *segment_id,
                }])
            }
            C::BuildIndex(b) => {
                s.require_writable()?;
                let seg = s.check_live_segment(b.segment_id)?;
                let (index_id, _) = s.index_by_name(&b.index).ok_or_else(|| {
                    Error::not_found(format!(
                        "index '{}' not found in collection '{}'",
                        b.index, s.name
                    ))
                })?;
                if b.build_id == 0 {
                    return Err(Error::invalid_argument("build id must not be 0"));
                }
                if seg
                    .indexes
                    .iter()
                    .any(|i| i.index_id == index_id && i.build_id == b.build_id)
                {
                    return Err(Error::already_exists(format!(
                        "build {} of index '{}' on segment {} is already recorded",
                        b.build_id, b.index, b.segment_id
                    )));
                }
                check_files(&format!("index build {}", b.build_id), &b.files)?;
                Ok(vec![E::IndexBuilt {
                    segment_id: b.segment_id,
                    index_files: IndexFiles {
                        index_id,
                        build_id: b.build_id,
                        files: b.files.clone(),
                    },
                }])
            }
            C::PinSnapshot {
                snapshot_id,
                name,
                description,
                labels,
            } => {
                s.require_writable()?;
                validate_name("snapshot name", name)?;
                check_snapshot_labels(description, labels)?;
                if *snapshot_id == 0 {
                    return Err(Error::invalid_argument("snapshot id must not be 0"));
                }
                if let Some(existing) = s.pins.get(snapshot_id) {
                    if existing == name {
                        return Ok(vec![]);
                    }
                    return Err(Error::already_exists(format!(
                        "snapshot {snapshot_id} is already pinned as '{existing}'"
                    )));
                }
                if s.pins.values().any(|n| n == name) {
                    return Err(Error::already_exists(format!(
                        "snapshot '{name}' already exists in collection '{}'",
                        s.name
                    )));
                }
                Ok(vec![E::SnapshotPinned {
                    snapshot_id: *snapshot_id,
                    name: name.clone(),
                    description: description.clone(),
                    labels: labels.clone(),
                    pinned_ms: now_ms,
                }])
            }
            C::StageRestoredSegments { job_id, segments } => {
                s.require_restoring_by(*job_id)?;
                if segments.len() > MAX_SEGMENTS_PER_STAGE {
                    return Err(Error::invalid_argument(format!(
                        "at most {MAX_SEGMENTS_PER_STAGE} segments are staged at once, got {}",
                        segments.len()
                    )));
                }
                let mut events = Vec::new();
                for seg in segments {
                    if let Some(existing) = s.segments.get(&seg.segment_id) {
                        if **existing == *seg {
                            continue;
                        }
                        return Err(Error::already_exists(format!(
                            "segment {} is already staged in collection '{}' with other contents",
                            seg.segment_id, s.name
                        )));
                    }
                    s.check_new_segment_id(seg.segment_id)?;
                    s.check_restored_segment(seg)?;
                    events.push(E::SegmentFlushed {
                        segment: seg.clone(),
                    });
                }
                Ok(events)
            }
            C::CompleteRestore { job_id } => {
                if s.status == Some(CollectionStatus::Ready) && s.restoring_job == Some(*job_id) {
                    return Ok(vec![]);
                }
                s.require_restoring_by(*job_id)?;
                Ok(vec![E::RestoreCompleted {
                    job_id: *job_id,
                    completed_ms: now_ms,
                }])
            }
            C::AbandonRestore { job_id } => {
                if !s.exists {
                    return Ok(vec![]);
                }
                if s.restoring_job != Some(*job_id) {
                    return Err(Error::failed_precondition(format!(
                        "collection '{}' was not created by restore job {job_id}",
                        s.name
                    )));
                }
                match s.status {
                    Some(CollectionStatus::Restoring) => Ok(vec![E::Dropped]),
                    Some(CollectionStatus::Dropped) => Ok(vec![]),
                    _ => Err(Error::failed_precondition(format!(
                        "collection '{}' finished its restore; it is no longer the job's to drop",
                        s.name
                    ))),
                }
            }
            C::UnpinSnapshot { snapshot_id } => {
                if !s.exists {
                    return Err(Error::not_found("collection not found"));
                }
                if s.pins.contains_key(snapshot_id) {
                    Ok(vec![E::SnapshotUnpinned {
                        snapshot_id: *snapshot_id,
                    }])
                } else {
                    Ok(vec![])
                }
            }
            C::AlterExternal { .. }
            | C::BeginExternalTask { .. }
            | C::EndExternalTask { .. }
            | C::CommitExternalRefresh(_) => Err(Error::internal(
                "external commands are decided in collection::external",
            )),
        }
    }

    fn evolve(s: &mut CollectionState, event: &CollectionEvent) {
        use CollectionEvent as E;
        match event {
            E::Created {
                collection_id,
                name,
                schema_json,
                shard_count,
                properties,
                partitions,
                status,
                restoring_job,
                created_ms,
                external,
            } => {
                s.exists = true;
                s.external = super::external::created(external);
                s.created_ms = *created_ms;
                s.collection_id = *collection_id;
                s.name = name.clone();
                s.schema_json = schema_json.clone();
                s.shard_count = *shard_count;
                s.properties = properties.clone();
                s.status = Some(*status);
                s.restoring_job = *restoring_job;
                for p in partitions {
                    s.partitions.insert(
                        p.partition_id,
                        PartitionState {
                            name: p.name.clone(),
                            dropped: false,
                        },
                    );
                }
                s.next_partition_id =
                    partitions.iter().map(|p| p.partition_id).max().unwrap_or(0) + 1;
                s.next_index_id = 1;
            }
            E::Dropped => s.status = Some(CollectionStatus::Dropped),
            E::PartitionCreated { partition } => {
                s.partitions.insert(
                    partition.partition_id,
                    PartitionState {
                        name: partition.name.clone(),
                        dropped: false,
                    },
                );
                s.next_partition_id = s.next_partition_id.max(partition.partition_id + 1);
            }
            E::PartitionDropped { partition_id } => {
                if let Some(p) = s.partitions.get_mut(partition_id) {
                    p.dropped = true;
                }
                let gone: Vec<SegmentId> = s
                    .segments
                    .values()
                    .filter(|seg| seg.partition_id == *partition_id)
                    .map(|seg| seg.segment_id)
                    .collect();
                for id in gone {
                    s.segments.remove(&id);
                    s.dropped_segments.insert(id);
                }
            }
            E::IndexCreated {
                index_id,
                name,
                field,
                params_json,
            } => {
                s.indexes.insert(
                    *index_id,
                    IndexState {
                        name: name.clone(),
                        field: field.clone(),
                        params_json: params_json.clone(),
                        dropped: false,
                    },
                );
                s.next_index_id = s.next_index_id.max(index_id + 1);
            }
            E::IndexDropped { index_id } => {
                if let Some(i) = s.indexes.get_mut(index_id) {
                    i.dropped = true;
                }
                for seg in s.segments.values_mut() {
                    if seg.indexes.iter().any(|i| i.index_id == *index_id) {
                        Arc::make_mut(seg)
                            .indexes
                            .retain(|i| i.index_id != *index_id);
                    }
                }
            }
            E::SegmentFlushed { segment } => {
                s.segments
                    .insert(segment.segment_id, Arc::new(segment.clone()));
                // The host cannot flush into an external collection; a restore stages its
                // segments this way, and they mirror the source like refreshed ones.
                if let Some(ext) = s.external.as_mut() {
                    ext.segments.insert(segment.segment_id);
                }
            }
            E::SegmentsCompacted { compacted, into } => {
                for id in compacted {
                    s.segments.remove(id);
                    s.dropped_segments.insert(*id);
                }
                s.segments.insert(into.segment_id, Arc::new(into.clone()));
            }
            E::SegmentDropped { segment_id } => {
                s.segments.remove(segment_id);
                s.dropped_segments.insert(*segment_id);
            }
            E::IndexBuilt {
                segment_id,
                index_files,
            } => {
                if let Some(seg) = s.segments.get_mut(segment_id) {
                    // A rebuild replaces the previous build of the same index. Copy on write:
                    // a snapshot's cut keeps the segment as it was.
                    let seg = Arc::make_mut(seg);
                    seg.indexes.retain(|i| i.index_id != index_files.index_id);
                    seg.indexes.push(index_files.clone());
                }
            }
            E::SnapshotPinned {
                snapshot_id, name, ..
            } => {
                s.pins.insert(*snapshot_id, name.clone());
            }
            E::SnapshotUnpinned { snapshot_id } => {
                s.pins.remove(snapshot_id);
            }
            E::RestoreCompleted { .. } => s.status = Some(CollectionStatus::Ready),
            E::ExternalAltered { .. }
            | E::ExternalTaskStarted { .. }
            | E::ExternalTaskEnded { .. }
            | E::ExternalRefreshed { .. } => {
                super::external::evolve(s, event);
            }
        }
    }
}
