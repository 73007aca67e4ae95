//! `compact`: the CLI acting as the host's compactor. It writes the merged segment's files
//! first (file `i` of the new segment is file `i` of every source, concatenated), then records
//! the compaction, which drops the sources and makes the new segment live in one event. Like
//! ingest, files-then-record means a crash in between leaves orphans, never a dangling segment.

use super::output::{bytes, plural};
use super::{CompactArgs, Ctx, parse_segment_ids};
use serde::Serialize;
use snapvault::views::{CollectionView, SegmentView};
use snapvault::{Client, Error, host};
use snapvault_events::domain::collection::{CompactSegments, MAX_SEGMENTS_PER_COMPACTION};
use std::collections::{BTreeMap, BTreeSet};

/// One recorded compaction.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Compaction {
    pub into: u64,
    pub partition: String,
    pub shard: u32,
    pub level: u32,
    pub segments: Vec<u64>,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CompactReport {
    pub collection: String,
    pub compactions: Vec<Compaction>,
}

pub async fn run(ctx: &Ctx, args: CompactArgs) -> Result<(), Error> {
    let ids = args
        .segments
        .as_deref()
        .map(parse_segment_ids)
        .transpose()?;
    let report = ctx.client.host_compact(&args.collection, ids).await?;
    ctx.out.emit(&report, || summary(&report))
}

pub fn summary(r: &CompactReport) -> String {
    if r.compactions.is_empty() {
        return format!(
            "nothing to compact in '{}': no partition and shard has more than one segment",
            r.collection
        );
    }
    r.compactions
        .iter()
        .map(|c| {
            format!(
                "compacted {} of '{}' (partition {}, shard {}) into segment {} (level {}, {}, {})",
                plural(c.segments.len() as u64, "segment"),
                r.collection,
                c.partition,
                c.shard,
                c.into,
                c.level,
                plural(c.files, "file"),
                bytes(c.bytes)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compact `ids` (all in one partition and shard) or, with `None`, every (partition, shard)
/// group of live segments that has more than one, in chunks the log accepts.
pub async fn compact(
    client: &Client,
    collection: &str,
    ids: Option<Vec<u64>>,
) -> Result<CompactReport, Error> {
    let view = client.describe_collection(collection).await?;
    let groups = match ids {
        Some(ids) => vec![explicit_group(client, &view, &ids).await?],
        None => default_groups(&view),
    };
    let mut compactions = Vec::new();
    for group in groups {
        compactions.push(compact_one(client, &view, &group).await?);
    }
    Ok(CompactReport {
        collection: collection.to_string(),
        compactions,
    })
}

/// The segments the user listed, checked like the collection will check them (live, listed
/// once, one partition and shard) so that no merged file is written for a refused compaction.
async fn explicit_group<'v>(
    client: &Client,
    view: &'v CollectionView,
    ids: &[u64],
) -> Result<Vec<&'v SegmentView>, Error> {
    if ids.len() > MAX_SEGMENTS_PER_COMPACTION {
        return Err(Error::invalid_argument(format!(
            "a compaction merges at most {MAX_SEGMENTS_PER_COMPACTION} segments, got {}",
            ids.len()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out: Vec<&SegmentView> = Vec::with_capacity(ids.len());
    for &id in ids {
        if !seen.insert(id) {
            return Err(Error::invalid_argument(format!(
                "segment {id} is listed twice"
            )));
        }
        let Some(seg) = view.segments.iter().find(|s| s.id == id) else {
            let was_live = client
                .inspect_collection(view.id, move |_, s| s.dropped_segments.contains(&id))
                .await?;
            return Err(if was_live {
                Error::failed_precondition(format!(
                    "segment {id} of collection '{}' was already dropped or compacted away",
                    view.name
                ))
            } else {
                Error::not_found(format!(
                    "segment {id} not found in collection '{}'",
                    view.name
                ))
            });
        };
        if let Some(first) = out.first()
            && (first.partition_id, first.shard) != (seg.partition_id, seg.shard)
        {
            return Err(Error::invalid_argument(format!(
                "segments {} and {id} are in different partitions or shards; a compaction merges one partition and shard",
                first.id
            )));
        }
        out.push(seg);
    }
    Ok(out)
}

/// Every (partition, shard) with more than one live segment, split into chunks of at most
/// `MAX_SEGMENTS_PER_COMPACTION`; a lone segment (or a chunk of one) has nothing to merge with.
fn default_groups(view: &CollectionView) -> Vec<Vec<&SegmentView>> {
    let mut by_group: BTreeMap<(u64, u32), Vec<&SegmentView>> = BTreeMap::new();
    for s in &view.segments {
        by_group
            .entry((s.partition_id, s.shard))
            .or_default()
            .push(s);
    }
    by_group
        .into_values()
        .flat_map(|segs| {
            segs.chunks(MAX_SEGMENTS_PER_COMPACTION)
                .map(<[&SegmentView]>::to_vec)
                .collect::<Vec<_>>()
        })
        .filter(|chunk| chunk.len() > 1)
        .collect()
}

async fn compact_one(
    client: &Client,
    view: &CollectionView,
    group: &[&SegmentView],
) -> Result<Compaction, Error> {
    let first = group
        .first()
        .ok_or_else(|| Error::internal("empty compaction group"))?;
    let into = client.allocate_id().await?;
    let sources: Vec<_> = group.iter().map(|s| s.files.clone()).collect();
    let files = host::write_merged_files(
        client.store().as_ref(),
        view.id,
        first.partition_id,
        into,
        &sources,
    )
    .await?;
    let segment_ids: Vec<u64> = group.iter().map(|s| s.id).collect();
    let rows = group.iter().map(|s| s.rows).sum();
    let compaction = Compaction {
        into,
        partition: first.partition.clone(),
        shard: first.shard,
        level: group.iter().map(|s| s.level + 1).max().unwrap_or(1),
        segments: segment_ids.clone(),
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size).sum(),
        rows,
    };
    client
        .compact(
            &view.name,
            CompactSegments {
                segment_ids,
                into_segment_id: into,
                rows,
                files,
            },
        )
        .await?;
    Ok(compaction)
}
