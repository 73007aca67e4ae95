//! `ingest`: the CLI acting as the host database. For each segment it allocates an id from
//! the node, writes the segment's files (deterministic pseudo-random bytes, so tests can
//! regenerate them) into the object store, then flushes the segment into the collection. This
//! is the order a real host follows: files first, then the record that makes them part of the
//! collection, so a crash in between leaves only orphans that GC reclaims, never a segment that
//! points at missing files.

use super::output::{Progress, bytes, duration, plural};
use super::{Ctx, IngestArgs};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use snapvault::{Client, Error, host};
use snapvault_events::domain::collection::{FlushSegment, MAX_FILES_PER_SEGMENT};
use std::time::Instant;

/// Largest file `ingest` writes; each file is built in memory before it is written.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Segments written at once; each writes its files with the host's own parallelism.
const SEGMENTS_IN_FLIGHT: usize = 4;
/// Nominal row size: `ingest` reports one row per this many bytes of a segment.
const BYTES_PER_ROW: u64 = 128;

/// What to ingest (the CLI's flags, and the demo's fixed plan).
#[derive(Debug, Clone)]
pub struct IngestPlan {
    pub segments: u64,
    pub files: usize,
    pub size: u64,
    pub partition: String,
    /// `None`: round-robin over the collection's shards.
    pub shard: Option<u32>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct IngestReport {
    pub collection: String,
    pub collection_id: u64,
    pub partition: String,
    /// Ids of the new segments, in the order they were planned.
    pub segment_ids: Vec<u64>,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
    pub elapsed_ms: u64,
}

/// Files per segment: at least one, at most what one flush event may list.
pub fn check_files(files: usize) -> Result<(), Error> {
    if files == 0 || files > MAX_FILES_PER_SEGMENT {
        return Err(Error::invalid_argument(format!(
            "--files must be 1..={MAX_FILES_PER_SEGMENT}, got {files}"
        )));
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, args: IngestArgs) -> Result<(), Error> {
    let plan = IngestPlan {
        segments: args.segments,
        files: args.files,
        size: args.size,
        partition: args.partition,
        shard: args.shard,
    };
    let report = ctx.client.host_ingest(&args.collection, &plan).await?;
    ctx.out.emit(&report, || summary(&report))
}

/// One line for people.
pub fn summary(r: &IngestReport) -> String {
    format!(
        "ingested {} ({}, {}) into '{}' partition {} in {}",
        plural(r.segment_ids.len() as u64, "segment"),
        plural(r.files, "file"),
        bytes(r.bytes),
        r.collection,
        r.partition,
        duration(r.elapsed_ms)
    )
}

/// Write and flush `plan.segments` segments into `collection`.
///
/// Everything that can be checked is checked before the first id is allocated or the first
/// byte written, so a refused ingest leaves no trace.
pub async fn ingest(
    client: &Client,
    collection: &str,
    plan: &IngestPlan,
) -> Result<IngestReport, Error> {
    check_files(plan.files)?;
    if plan.size == 0 || plan.size > MAX_FILE_BYTES {
        return Err(Error::invalid_argument(format!(
            "--size must be 1..={MAX_FILE_BYTES} bytes, got {}",
            plan.size
        )));
    }
    let view = client.describe_collection(collection).await?;
    let partition = view
        .partitions
        .iter()
        .find(|p| p.name == plan.partition)
        .ok_or_else(|| {
            Error::not_found(format!(
                "partition '{}' not found in collection '{collection}'",
                plan.partition
            ))
        })?;
    if let Some(shard) = plan.shard
        && shard >= view.shards
    {
        return Err(Error::invalid_argument(format!(
            "shard {shard} does not exist; collection '{collection}' has shards 0..{}",
            view.shards
        )));
    }
    if view.status != snapvault_events::domain::collection::CollectionStatus::Ready {
        return Err(Error::failed_precondition(format!(
            "collection '{collection}' is not ready for writes (it is being restored)"
        )));
    }

    let started = Instant::now();
    let (collection_id, partition_id) = (view.id, partition.id);
    let size = usize::try_from(plan.size)
        .map_err(|_| Error::invalid_argument("--size does not fit in memory"))?;
    let segment_bytes = plan.size * plan.files as u64;
    let rows = (segment_bytes / BYTES_PER_ROW).max(1);
    let progress = Progress::new(format!("ingest {collection}"), plan.segments);
    let shards = view.shards.max(1);

    let written: Vec<(u64, u64)> = futures::stream::iter(0..plan.segments)
        .map(|i| {
            let shard = plan.shard.unwrap_or((i % u64::from(shards)) as u32);
            async move {
                let segment_id = client.allocate_id().await?;
                let files = host::write_segment_files(
                    client.store().as_ref(),
                    collection_id,
                    partition_id,
                    segment_id,
                    plan.files,
                    size,
                )
                .await?;
                client
                    .flush_segment(
                        collection,
                        FlushSegment {
                            segment_id,
                            partition: plan.partition.clone(),
                            shard,
                            rows,
                            files,
                        },
                    )
                    .await?;
                Ok::<_, Error>((i, segment_id))
            }
        })
        .buffer_unordered(SEGMENTS_IN_FLIGHT)
        .enumerate()
        .map(|(done, r)| {
            if r.is_ok() {
                progress.update(done as u64 + 1, (done as u64 + 1) * segment_bytes);
            }
            r
        })
        .try_collect()
        .await
        .inspect_err(|_| progress.finish())?;
    progress.finish();

    let mut written = written;
    written.sort_unstable();
    let n = written.len() as u64;
    Ok(IngestReport {
        collection: collection.to_string(),
        collection_id,
        partition: plan.partition.clone(),
        segment_ids: written.into_iter().map(|(_, id)| id).collect(),
        files: n * plan.files as u64,
        bytes: n * segment_bytes,
        rows: n * rows,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}
