//! The workload: the host database, driving snapvault through its real client.
//!
//! Each step the runner asks for a handful of operations ([`plan_step`]), runs them
//! concurrently as tokio tasks, and feeds their acknowledged outcomes to the model. The
//! operations are what a host does: create collections (including two concurrent creates of
//! one name), add and drop partitions, flush segments with real bytes written to the store,
//! compact (read the sources, write the merged files, record the compaction), drop segments,
//! create indexes and (re)build them with files, drop indexes and collections, read back, and
//! send bad input that must be refused.
//!
//! Errors that faults and races legitimately cause (`unavailable`, `conflict`, `not_found`,
//! `already_exists`, `failed_precondition`) are expected; [`judge`] fails the seed on
//! `internal`, on `invalid_argument` for valid input, and on accepted invalid input.
//!
//! Snapshots are created (including two concurrent creates of one name) and dropped, and GC
//! cycles run on demand with short windows (besides the node's own periodic cycles).
//! Restores (starts, twins, cancels, waits, bad input) are [`OpKind`]s too, planned and run
//! in [`crate::restore_ops`], with their threats and effects in [`crate::model`].

use crate::model::{Effect, Fate, IdLedger, MSegment, MSnapshot, Model, Threat};
use crate::prng::Prng;
use bytes::Bytes;
use snapvault::Client;
use snapvault::client::CreateCollectionRequest;
use snapvault::host::{file_bytes, put_file, write_merged_files, write_segment_files};
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault_actors::gc::GcRunOptions;
use snapvault_events::domain::collection::{BuildIndex, CompactSegments, FlushSegment};
use snapvault_events::domain::snapshot::SnapshotStatus;
use snapvault_events::domain::{CollectionId, FileRef, PartitionId, SegmentId, SnapshotId};
use snapvault_events::{Error, ErrorCode};
use std::collections::{BTreeMap, BTreeSet};

/// The kinds of operation, in a fixed order (weights are indexed by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Create,
    CreateTwin,
    Drop,
    CreatePartition,
    DropPartition,
    Flush,
    Compact,
    DropSegment,
    CreateIndex,
    BuildIndex,
    DropIndex,
    Read,
    BadInput,
    CreateSnapshot,
    CreateSnapshotTwin,
    DropSnapshot,
    Gc,
    // external collections (`external_ops.rs`)
    LakeWrite,
    ExternalCreate,
    ExternalRefresh,
    ExternalAlter,
    ExternalCancel,
    // restores (`restore_ops.rs`)
    RestoreStart,
    RestoreTwin,
    RestoreCancel,
    RestoreWait,
    RestoreBad,
}

pub const ALL_KINDS: [OpKind; 27] = [
    OpKind::Create,
    OpKind::CreateTwin,
    OpKind::Drop,
    OpKind::CreatePartition,
    OpKind::DropPartition,
    OpKind::Flush,
    OpKind::Compact,
    OpKind::DropSegment,
    OpKind::CreateIndex,
    OpKind::BuildIndex,
    OpKind::DropIndex,
    OpKind::Read,
    OpKind::BadInput,
    OpKind::CreateSnapshot,
    OpKind::CreateSnapshotTwin,
    OpKind::DropSnapshot,
    OpKind::Gc,
    OpKind::LakeWrite,
    OpKind::ExternalCreate,
    OpKind::ExternalRefresh,
    OpKind::ExternalAlter,
    OpKind::ExternalCancel,
    OpKind::RestoreStart,
    OpKind::RestoreTwin,
    OpKind::RestoreCancel,
    OpKind::RestoreWait,
    OpKind::RestoreBad,
];

impl OpKind {
    /// The weight before the swarm scales it: flushes dominate, as they do in a real host.
    fn base_weight(self) -> u64 {
        match self {
            OpKind::Create => 4,
            OpKind::CreateTwin => 1,
            OpKind::Drop => 1,
            OpKind::CreatePartition => 1,
            OpKind::DropPartition => 1,
            OpKind::Flush => 12,
            OpKind::Compact => 4,
            OpKind::DropSegment => 2,
            OpKind::CreateIndex => 2,
            OpKind::BuildIndex => 4,
            OpKind::DropIndex => 1,
            OpKind::Read => 2,
            OpKind::BadInput => 1,
            OpKind::CreateSnapshot => 2,
            OpKind::CreateSnapshotTwin => 1,
            OpKind::DropSnapshot => 1,
            OpKind::Gc => 2,
            OpKind::LakeWrite => 3,
            OpKind::ExternalCreate => 1,
            OpKind::ExternalRefresh => 3,
            OpKind::ExternalAlter => 1,
            OpKind::ExternalCancel => 1,
            OpKind::RestoreStart => 2,
            OpKind::RestoreTwin => 1,
            OpKind::RestoreCancel => 1,
            OpKind::RestoreWait => 1,
            OpKind::RestoreBad => 1,
        }
    }

    /// Without these nothing happens at all, so the swarm never turns them off.
    fn essential(self) -> bool {
        matches!(self, OpKind::Create | OpKind::Flush)
    }
}

/// The shape of a seed's workload, drawn from the seed (swarm).
#[derive(Debug, Clone)]
pub struct WorkloadMix {
    pub weights: [u32; 27],
    /// Most operations run concurrently in one step.
    pub max_concurrency: u64,
    /// Collection names are drawn from `c0..c{names}`: few names, so they collide.
    pub names: u64,
    /// Longest virtual pause between steps (lets idle entities be evicted).
    pub max_gap_ms: u64,
    /// Longest virtual delay before an operation of a step starts.
    pub max_jitter_ms: u64,
    pub max_files: u64,
    pub max_file_bytes: u64,
}

impl WorkloadMix {
    pub fn draw(rng: &mut Prng) -> WorkloadMix {
        let mut weights = [0u32; 27];
        for (w, kind) in weights.iter_mut().zip(ALL_KINDS) {
            let off = !kind.essential() && rng.below(4) == 0;
            *w = if off {
                0
            } else {
                rng.range(1, 2 * kind.base_weight()) as u32
            };
        }
        WorkloadMix {
            weights,
            max_concurrency: *rng.pick(&[1, 2, 4, 8]).unwrap_or(&4),
            names: rng.range(2, 6),
            max_gap_ms: *rng.pick(&[0, 100, 2_000, 30_000]).unwrap_or(&100),
            max_jitter_ms: *rng.pick(&[0, 5, 50]).unwrap_or(&0),
            max_files: rng.range(1, 4),
            max_file_bytes: *rng.pick(&[16, 256, 2_048]).unwrap_or(&256),
        }
    }
}

/// Invalid input the node must refuse with `invalid_argument`, changing nothing.
#[derive(Debug, Clone)]
pub enum BadInput {
    CollectionName(String),
    FileKey {
        collection: String,
        partition: String,
        key: String,
    },
}

/// One planned operation, with everything it needs chosen up front (from the seed).
#[derive(Debug, Clone)]
pub enum Op {
    Create {
        name: String,
        shard_count: u32,
        partitions: Vec<String>,
    },
    Drop {
        id: CollectionId,
        name: String,
    },
    CreatePartition {
        name: String,
        partition: String,
    },
    DropPartition {
        id: CollectionId,
        name: String,
        partition_id: PartitionId,
        partition: String,
    },
    Flush {
        id: CollectionId,
        name: String,
        partition_id: PartitionId,
        partition: String,
        shard: u32,
        files: usize,
        size: usize,
        rows: u64,
    },
    Compact {
        id: CollectionId,
        name: String,
        partition_id: PartitionId,
        shard: u32,
        sources: Vec<(SegmentId, Vec<FileRef>, u64)>,
    },
    DropSegment {
        id: CollectionId,
        name: String,
        segment: SegmentId,
    },
    CreateIndex {
        name: String,
        index: String,
    },
    BuildIndex {
        id: CollectionId,
        name: String,
        index: String,
        segment: SegmentId,
        files: usize,
        size: usize,
    },
    DropIndex {
        name: String,
        index: String,
    },
    Describe {
        name: String,
    },
    List,
    BadInput(BadInput),
    CreateSnapshot {
        name: String,
        snapshot: String,
    },
    DropSnapshot {
        id: SnapshotId,
        collection: String,
        snapshot: String,
    },
    /// A GC cycle on demand; `None` keeps the node's configured window.
    /// External collections and their lakes (`external_ops.rs`).
    External(crate::external_ops::ExternalOp),
    /// Restores (`restore_ops.rs`).
    Restore(crate::restore_ops::RestoreOp),
    Gc {
        dry_run: bool,
        dropped_retention_ms: Option<u64>,
        orphan_window_ms: Option<u64>,
    },
}

impl Op {
    /// A short, deterministic description for the trace.
    pub fn label(&self) -> String {
        match self {
            Op::External(e) => e.label(),
            Op::Restore(r) => r.label(),
            Op::Create {
                name, shard_count, ..
            } => format!("create {name} shards={shard_count}"),
            Op::Drop { id, name } => format!("drop {name}#{id}"),
            Op::CreatePartition { name, partition } => {
                format!("create-partition {name}/{partition}")
            }
            Op::DropPartition {
                name, partition, ..
            } => format!("drop-partition {name}/{partition}"),
            Op::Flush {
                name,
                partition,
                shard,
                files,
                size,
                ..
            } => format!("flush {name}/{partition}/{shard} {files}x{size}B"),
            Op::Compact { name, sources, .. } => format!(
                "compact {name} {:?}",
                sources.iter().map(|s| s.0).collect::<Vec<_>>()
            ),
            Op::DropSegment { name, segment, .. } => format!("drop-segment {name} {segment}"),
            Op::CreateIndex { name, index } => format!("create-index {name}/{index}"),
            Op::BuildIndex {
                name,
                index,
                segment,
                ..
            } => format!("build-index {name}/{index} on {segment}"),
            Op::DropIndex { name, index } => format!("drop-index {name}/{index}"),
            Op::Describe { name } => format!("describe {name}"),
            Op::List => "list".to_string(),
            Op::BadInput(b) => format!("bad-input {b:?}"),
            Op::CreateSnapshot { name, snapshot } => format!("create-snapshot {name}/{snapshot}"),
            Op::DropSnapshot {
                collection,
                snapshot,
                ..
            } => format!("drop-snapshot {collection}/{snapshot}"),
            Op::Gc {
                dry_run,
                dropped_retention_ms,
                orphan_window_ms,
            } => format!(
                "gc dry_run={dry_run} retention={dropped_retention_ms:?} window={orphan_window_ms:?}"
            ),
        }
    }

    /// The collection name the operation addresses, if any.
    pub fn collection_name(&self) -> Option<&str> {
        match self {
            Op::External(e) => e.collection_name(),
            Op::Restore(r) => r.collection_name(),
            Op::Create { name, .. }
            | Op::Drop { name, .. }
            | Op::CreatePartition { name, .. }
            | Op::DropPartition { name, .. }
            | Op::Flush { name, .. }
            | Op::Compact { name, .. }
            | Op::DropSegment { name, .. }
            | Op::CreateIndex { name, .. }
            | Op::BuildIndex { name, .. }
            | Op::DropIndex { name, .. }
            | Op::CreateSnapshot { name, .. }
            | Op::Describe { name } => Some(name),
            Op::BadInput(BadInput::FileKey { collection, .. })
            | Op::DropSnapshot { collection, .. } => Some(collection),
            Op::BadInput(BadInput::CollectionName(_)) | Op::List | Op::Gc { .. } => None,
        }
    }

    /// What this operation may remove, registered in the model before it runs.
    pub fn threat(&self) -> Option<Threat> {
        match self {
            Op::Restore(r) => r.threat(),
            Op::Drop { id, name } => Some(Threat::Collection {
                id: *id,
                name: name.clone(),
            }),
            Op::DropPartition {
                id,
                name,
                partition_id,
                partition,
            } => Some(Threat::Partition {
                id: *id,
                name: name.clone(),
                partition_id: *partition_id,
                partition: partition.clone(),
            }),
            Op::Compact { id, sources, .. } => {
                Some(Threat::Segments(*id, sources.iter().map(|s| s.0).collect()))
            }
            Op::DropSegment { id, segment, .. } => Some(Threat::Segments(*id, vec![*segment])),
            Op::DropSnapshot {
                collection,
                snapshot,
                ..
            } => Some(Threat::Snapshot {
                collection: collection.clone(),
                name: snapshot.clone(),
            }),
            _ => None,
        }
    }
}

/// Draw one step's operations from the current beliefs.
pub fn plan_step(rng: &mut Prng, model: &Model, mix: &WorkloadMix) -> Vec<Op> {
    let n = rng.range(1, mix.max_concurrency) as usize;
    let mut ops = Vec::with_capacity(n + 1);
    while ops.len() < n {
        let kind = rng
            .weighted(&mix.weights)
            .and_then(|i| ALL_KINDS.get(i).copied())
            .unwrap_or(OpKind::Flush);
        match plan_one(rng, model, mix, kind) {
            Some(mut planned) => ops.append(&mut planned),
            // Nothing to act on (no collection yet, no segment to compact): make some.
            None => ops.push(plan_create(rng, mix)),
        }
    }
    // A restore into a name this step drops is no longer bad input (the name may be free),
    // nor one from a snapshot name this step creates again (it may be committed by then).
    let moving = moving_names(&ops);
    let creating: BTreeSet<(String, String)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::CreateSnapshot { name, snapshot } => Some((name.clone(), snapshot.clone())),
            _ => None,
        })
        .collect();
    for op in &mut ops {
        use crate::restore_ops::{Bad, RestoreOp};
        if let Op::Restore(RestoreOp::Bad { start, bad }) = op
            && ((*bad == Bad::ExistingTarget && moving.contains(&start.target))
                || (*bad == Bad::NotCommitted
                    && creating.contains(&(start.collection.clone(), start.snapshot.clone()))))
        {
            *op = Op::Restore(crate::restore_ops::RestoreOp::Start {
                start: start.clone(),
                then: crate::restore_ops::Follow::Nothing,
            });
        }
    }
    ops
}

fn plan_create(rng: &mut Prng, mix: &WorkloadMix) -> Op {
    let partitions = if rng.coin() {
        vec!["p0".to_string()]
    } else {
        Vec::new()
    };
    Op::Create {
        name: format!("c{}", rng.below(mix.names)),
        shard_count: rng.range(1, 3) as u32,
        partitions,
    }
}

fn plan_one(rng: &mut Prng, model: &Model, mix: &WorkloadMix, kind: OpKind) -> Option<Vec<Op>> {
    if kind == OpKind::Create {
        return Some(vec![plan_create(rng, mix)]);
    }
    if kind == OpKind::CreateTwin {
        let op = plan_create(rng, mix);
        return Some(vec![op.clone(), op]);
    }
    if kind == OpKind::Read && rng.below(4) == 0 {
        return Some(vec![Op::List]);
    }
    if kind == OpKind::Gc {
        return Some(vec![Op::Gc {
            dry_run: rng.below(4) == 0,
            dropped_retention_ms: *rng.pick(&[None, Some(0), Some(1_000)])?,
            // Never below what a host operation can take between writing a file and
            // recording it: see `Swarm::draw`.
            orphan_window_ms: *rng.pick(&[None, Some(120_000)])?,
        }]);
    }
    let external_kind = match kind {
        OpKind::LakeWrite => Some(0),
        OpKind::ExternalCreate => Some(1),
        OpKind::ExternalRefresh => Some(2),
        OpKind::ExternalAlter => Some(3),
        OpKind::ExternalCancel => Some(4),
        _ => None,
    };
    let restore_kind = match kind {
        OpKind::RestoreStart => Some(0),
        OpKind::RestoreTwin => Some(1),
        OpKind::RestoreCancel => Some(2),
        OpKind::RestoreWait => Some(3),
        OpKind::RestoreBad => Some(4),
        _ => None,
    };
    if let Some(k) = restore_kind {
        let ops = crate::restore_ops::plan(rng, model, mix.names, k)?;
        return Some(ops.into_iter().map(Op::Restore).collect());
    }
    if let Some(k) = external_kind {
        let ops = crate::external_ops::plan(rng, model, k)?;
        return Some(ops.into_iter().map(Op::External).collect());
    }
    if kind == OpKind::DropSnapshot {
        let all: Vec<(&SnapshotId, &MSnapshot)> = model.snapshots.iter().collect();
        let (id, s) = *rng.pick(&all)?;
        return Some(vec![Op::DropSnapshot {
            id: *id,
            collection: s.collection.clone(),
            snapshot: s.name.clone(),
        }]);
    }
    if kind == OpKind::BadInput && rng.coin() {
        let bad = ["", "../etc", "a b", "9lives", "x/y", "ü"];
        let name = rng.pick(&bad).copied().unwrap_or("").to_string();
        return Some(vec![Op::BadInput(BadInput::CollectionName(name))]);
    }
    let live = model.live_collections();
    let (id, c) = *rng.pick(&live)?;
    let name = c.name.clone();
    let segments: Vec<(SegmentId, &MSegment)> = c.live_segments().map(|(s, m)| (*s, m)).collect();
    let op = match kind {
        OpKind::Drop => Op::Drop { id, name },
        OpKind::CreatePartition => Op::CreatePartition {
            name,
            partition: format!("p{}", rng.below(3)),
        },
        OpKind::DropPartition => {
            let droppable: Vec<(&PartitionId, &String)> = c
                .partitions
                .iter()
                .filter(|(_, p)| p.as_str() != "_default")
                .collect();
            let (pid, p) = *rng.pick(&droppable)?;
            Op::DropPartition {
                id,
                name,
                partition_id: *pid,
                partition: p.clone(),
            }
        }
        OpKind::Flush => {
            let parts: Vec<(&PartitionId, &String)> = c.partitions.iter().collect();
            let (pid, p) = *rng.pick(&parts)?;
            Op::Flush {
                id,
                name,
                partition_id: *pid,
                partition: p.clone(),
                shard: rng.below(c.shard_count.max(1) as u64) as u32,
                files: rng.range(1, mix.max_files) as usize,
                size: rng.range(1, mix.max_file_bytes) as usize,
                rows: rng.range(1, 10_000),
            }
        }
        OpKind::Compact => {
            let (_, first) = *rng.pick(&segments)?;
            let mut same: Vec<(SegmentId, &MSegment)> = segments
                .iter()
                .filter(|(_, s)| s.partition_id == first.partition_id && s.shard == first.shard)
                .copied()
                .collect();
            if same.len() < 2 {
                return None;
            }
            rng.shuffle(&mut same);
            same.truncate(rng.range(2, 4) as usize);
            Op::Compact {
                id,
                name,
                partition_id: first.partition_id,
                shard: first.shard,
                sources: same
                    .iter()
                    .map(|(s, m)| (*s, m.files.clone(), m.rows))
                    .collect(),
            }
        }
        OpKind::DropSegment => {
            let (segment, _) = *rng.pick(&segments)?;
            Op::DropSegment { id, name, segment }
        }
        OpKind::CreateIndex => Op::CreateIndex {
            name,
            index: format!("idx{}", rng.below(2)),
        },
        OpKind::BuildIndex => {
            let indexes: Vec<&String> = c.indexes.iter().collect();
            let index = (*rng.pick(&indexes)?).clone();
            let (segment, _) = *rng.pick(&segments)?;
            Op::BuildIndex {
                id,
                name,
                index,
                segment,
                files: rng.range(1, 2) as usize,
                size: rng.range(1, mix.max_file_bytes) as usize,
            }
        }
        OpKind::DropIndex => {
            let indexes: Vec<&String> = c.indexes.iter().collect();
            let index = (*rng.pick(&indexes)?).clone();
            Op::DropIndex { name, index }
        }
        OpKind::Read => Op::Describe { name },
        OpKind::CreateSnapshot | OpKind::CreateSnapshotTwin => {
            let op = Op::CreateSnapshot {
                name,
                snapshot: format!("s{}", rng.below(3)),
            };
            if kind == OpKind::CreateSnapshotTwin {
                return Some(vec![op.clone(), op]);
            }
            op
        }
        OpKind::BadInput => {
            let keys = ["../escape", "/absolute", "a//b", "tail/", "back\\slash"];
            let key = rng.pick(&keys).copied().unwrap_or("..").to_string();
            Op::BadInput(BadInput::FileKey {
                collection: name,
                partition: "_default".to_string(),
                key,
            })
        }
        OpKind::Create
        | OpKind::CreateTwin
        | OpKind::DropSnapshot
        | OpKind::Gc
        | OpKind::LakeWrite
        | OpKind::ExternalCreate
        | OpKind::ExternalRefresh
        | OpKind::ExternalAlter
        | OpKind::ExternalCancel
        | OpKind::RestoreStart
        | OpKind::RestoreTwin
        | OpKind::RestoreCancel
        | OpKind::RestoreWait
        | OpKind::RestoreBad => return None,
    };
    Some(vec![op])
}

/// What an operation task needs: the node's client (of the current incarnation) and the
/// ledger every allocated id goes into.
#[derive(Clone)]
pub struct OpCtx {
    pub client: Client,
    pub ledger: IdLedger,
}

impl OpCtx {
    async fn allocate(&self) -> Result<u64, Error> {
        let id = self.client.allocate_id().await?;
        self.ledger.record(id);
        Ok(id)
    }
}

/// Run one operation against the node. `Ok` carries its acknowledged effects.
pub async fn execute(ctx: &OpCtx, op: &Op) -> Result<Vec<Effect>, Error> {
    let client = &ctx.client;
    let store = &**client.store();
    match op {
        Op::External(e) => crate::external_ops::execute(client, e).await,
        Op::Restore(r) => crate::restore_ops::execute(client, r).await,
        Op::Create {
            name,
            shard_count,
            partitions,
        } => {
            let view = client
                .create_collection(CreateCollectionRequest {
                    name: name.clone(),
                    schema_json: r#"{"fields":[{"name":"vec","type":"float_vector","dim":8}]}"#
                        .to_string(),
                    shard_count: *shard_count,
                    properties: BTreeMap::from([("ttl".to_string(), "0".to_string())]),
                    partitions: partitions.clone(),
                })
                .await?;
            Ok(vec![Effect::CollectionCreated {
                id: view.id,
                name: name.clone(),
                shard_count: view.shards,
                partitions: view
                    .partitions
                    .iter()
                    .map(|p| (p.id, p.name.clone()))
                    .collect(),
            }])
        }
        Op::Drop { id, name } => {
            client.drop_collection(name).await?;
            Ok(vec![Effect::CollectionDropped { id: *id }])
        }
        Op::CreatePartition { name, partition } => {
            client.create_partition(name, partition).await?;
            Ok(vec![])
        }
        Op::DropPartition {
            id,
            name,
            partition_id,
            partition,
        } => {
            client.drop_partition(name, partition).await?;
            Ok(vec![Effect::PartitionDropped {
                collection: *id,
                partition_id: *partition_id,
            }])
        }
        Op::Flush {
            id,
            name,
            partition_id,
            partition,
            shard,
            files,
            size,
            rows,
        } => {
            let segment_id = ctx.allocate().await?;
            let written =
                write_segment_files(store, *id, *partition_id, segment_id, *files, *size).await?;
            client
                .flush_segment(
                    name,
                    FlushSegment {
                        segment_id,
                        partition: partition.clone(),
                        shard: *shard,
                        rows: *rows,
                        files: written.clone(),
                    },
                )
                .await?;
            Ok(vec![Effect::SegmentAdded {
                collection: *id,
                segment_id,
                segment: MSegment {
                    partition_id: *partition_id,
                    shard: *shard,
                    rows: *rows,
                    files: written,
                    fate: Fate::Live,
                },
            }])
        }
        Op::Compact {
            id,
            name,
            partition_id,
            shard,
            sources,
        } => {
            let into = ctx.allocate().await?;
            let source_files: Vec<Vec<FileRef>> = sources.iter().map(|s| s.1.clone()).collect();
            let files = write_merged_files(store, *id, *partition_id, into, &source_files).await?;
            let rows = sources.iter().map(|s| s.2).sum();
            let segment_ids: Vec<SegmentId> = sources.iter().map(|s| s.0).collect();
            client
                .compact(
                    name,
                    CompactSegments {
                        segment_ids: segment_ids.clone(),
                        into_segment_id: into,
                        rows,
                        files: files.clone(),
                    },
                )
                .await?;
            Ok(vec![
                Effect::SegmentAdded {
                    collection: *id,
                    segment_id: into,
                    segment: MSegment {
                        partition_id: *partition_id,
                        shard: *shard,
                        rows,
                        files,
                        fate: Fate::Live,
                    },
                },
                Effect::SegmentsRemoved {
                    collection: *id,
                    segments: segment_ids,
                },
            ])
        }
        Op::DropSegment { id, name, segment } => {
            client.drop_segment(name, *segment).await?;
            Ok(vec![Effect::SegmentsRemoved {
                collection: *id,
                segments: vec![*segment],
            }])
        }
        Op::CreateIndex { name, index } => {
            client
                .create_index(name, index, "vec", r#"{"type":"HNSW","M":16}"#)
                .await?;
            Ok(vec![])
        }
        Op::BuildIndex {
            id,
            name,
            index,
            segment,
            files,
            size,
        } => {
            let build_id = ctx.allocate().await?;
            let mut written = Vec::with_capacity(*files);
            for i in 0..*files {
                // Under `data/`, like the host's segment files, so GC's orphan scan covers
                // the files of builds that were never recorded.
                let key = format!("data/{id}/index/{segment}/{index}/{build_id}/{i}");
                let data = Bytes::from(file_bytes(build_id.wrapping_mul(31) ^ i as u64, *size));
                written.push(put_file(store, &key, data).await?);
            }
            client
                .build_index(
                    name,
                    BuildIndex {
                        segment_id: *segment,
                        index: index.clone(),
                        build_id,
                        files: written,
                    },
                )
                .await?;
            Ok(vec![])
        }
        Op::DropIndex { name, index } => {
            client.drop_index(name, index).await?;
            Ok(vec![])
        }
        Op::Describe { name } => {
            client.describe_collection(name).await?;
            Ok(vec![])
        }
        Op::List => {
            client.list_collections().await?;
            Ok(vec![])
        }
        Op::CreateSnapshot { name, snapshot } => {
            let view = client
                .create_snapshot(CreateSnapshotRequest {
                    collection: name.clone(),
                    name: snapshot.clone(),
                    description: "simulated".to_string(),
                    labels: BTreeMap::from([("by".to_string(), "sim".to_string())]),
                })
                .await?;
            if view.status != SnapshotStatus::Committed {
                return Err(Error::internal(format!(
                    "create_snapshot returned a {} snapshot; it promises a committed one",
                    view.status.as_str()
                )));
            }
            Ok(vec![Effect::SnapshotCommitted {
                id: view.id,
                collection: view.collection_name,
                name: snapshot.clone(),
            }])
        }
        Op::DropSnapshot {
            id,
            collection,
            snapshot,
        } => {
            client.drop_snapshot(collection, snapshot).await?;
            Ok(vec![Effect::SnapshotDropped { id: *id }])
        }
        Op::Gc {
            dry_run,
            dropped_retention_ms,
            orphan_window_ms,
        } => {
            client
                .gc_run(GcRunOptions {
                    dry_run: *dry_run,
                    dropped_retention_ms: *dropped_retention_ms,
                    orphan_window_ms: *orphan_window_ms,
                })
                .await?;
            Ok(vec![])
        }
        Op::BadInput(BadInput::CollectionName(name)) => {
            client
                .create_collection(CreateCollectionRequest {
                    name: name.clone(),
                    schema_json: "{}".to_string(),
                    shard_count: 1,
                    ..Default::default()
                })
                .await?;
            Ok(vec![])
        }
        Op::BadInput(BadInput::FileKey {
            collection,
            partition,
            key,
        }) => {
            let segment_id = ctx.allocate().await?;
            client
                .flush_segment(
                    collection,
                    FlushSegment {
                        segment_id,
                        partition: partition.clone(),
                        shard: 0,
                        rows: 1,
                        files: vec![FileRef {
                            key: key.clone(),
                            size: 1,
                            crc32c: 0,
                        }],
                    },
                )
                .await?;
            Ok(vec![])
        }
    }
}

/// Names of collections a step drops: within that step such a name may come to point at a
/// new collection (created concurrently), with other shards and partitions.
pub fn moving_names(ops: &[Op]) -> BTreeSet<String> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Drop { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Is this outcome acceptable? Faults and races excuse most errors; these never are.
///
/// `moving` are the names that may point at a different collection than the planner saw
/// (see [`moving_names`]): an operation planned for the old collection may legitimately be
/// invalid for the new one (a shard it does not have), so `invalid_argument` is excused there.
pub fn judge(
    op: &Op,
    outcome: &Result<Vec<Effect>, Error>,
    moving: &BTreeSet<String>,
) -> Result<(), String> {
    let bad = |why: String| Err(format!("{}: {why}", op.label()));
    let moved = op.collection_name().is_some_and(|n| moving.contains(n));
    match (op, outcome) {
        (Op::BadInput(_), Ok(_)) => bad("invalid input was accepted".into()),
        // Names are validated before any I/O, so nothing but invalid_argument is right.
        (Op::BadInput(BadInput::CollectionName(_)), Err(e))
            if e.code != ErrorCode::InvalidArgument =>
        {
            bad(format!("expected invalid_argument, got {e}"))
        }
        (_, Err(e)) if e.code == ErrorCode::Internal => bad(format!("internal error: {e}")),
        (op, Err(e))
            if e.code == ErrorCode::InvalidArgument
                && !matches!(op, Op::BadInput(_))
                && !matches!(op, Op::Restore(r) if r.expects_invalid())
                && !moved =>
        {
            bad(format!("valid input refused: {e}"))
        }
        _ => Ok(()),
    }
}

/// The outcome as a short word for the trace and the counters.
pub fn outcome_word(outcome: &Result<Vec<Effect>, Error>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    }
}
