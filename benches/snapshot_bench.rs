//! Snapshot-create benchmark: what a snapshot costs over writing its manifests by hand.
//!
//! For collections of 1k, 10k and 100k segments × 10 files (up to 1M file references) on the
//! embedded default (sled log + local filesystem store), it times `create_snapshot` (pin,
//! start, cut, encode + write every manifest and `snapshot.json`, read everything back and
//! check it, commit) against the baseline measured in the same run: encoding the same Avro
//! records with the same encoder and writing them straight to the same store. Targets: ratio
//! ≤ 1.5× at 10k segments, and cost per segment flat (≤ 1.3× from 1k to 100k). Peak RSS
//! (VmHWM) is printed after each size to show memory stays bounded.
//!
//! Setup (the host flushing N segments) appends `SegmentFlushed` events in batches straight to
//! the log — the same events the collection decider emits — so setup time stays out of the way.
//!
//! `cargo bench --bench snapshot_bench`; `SNAPVAULT_BENCH_QUICK=1` stops at 10k segments.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use snapvault::client::CreateCollectionRequest;
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault::{Node, NodeConfig};
use snapvault_actors::snapshot::manifest::{self, SEGMENTS_PER_MANIFEST};
use snapvault_events::ExpectedVersion;
use snapvault_events::codec;
use snapvault_events::domain::collection::{CollectionEvent, SegmentRecord};
use snapvault_events::domain::{FileRef, collection_stream};
use std::time::{Duration, Instant};

const FILES_PER_SEGMENT: usize = 10;
const SETUP_BATCH: usize = 1_000;
const ROUNDS: usize = 3;

type BoxError = Box<dyn std::error::Error>;

fn segment(collection_id: u64, segment_id: u64) -> SegmentRecord {
    SegmentRecord {
        segment_id,
        partition_id: 1,
        shard: (segment_id % 4) as u32,
        rows: 10_000,
        level: 0,
        files: (0..FILES_PER_SEGMENT)
            .map(|i| FileRef {
                key: format!("data/{collection_id}/1/{segment_id}/insert_log/{i}"),
                size: 1 << 20,
                crc32c: (segment_id as u32).wrapping_mul(31).wrapping_add(i as u32),
            })
            .collect(),
        indexes: Vec::new(),
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The baseline: encode the same records with the same encoder, write them straight to the
/// store.
async fn raw_write(
    store: &dyn ObjectStore,
    prefix: &str,
    segments: &[SegmentRecord],
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    for (n, chunk) in segments.chunks(SEGMENTS_PER_MANIFEST).enumerate() {
        let bytes = manifest::encode_manifest(1, n as u32, chunk.iter())?;
        store
            .put(
                &Path::from(format!("{prefix}/manifest-{n}.avro")),
                PutPayload::from_bytes(Bytes::from(bytes)),
            )
            .await?;
    }
    Ok(started.elapsed())
}

/// The baseline with the same write parallelism as the snapshot worker (4 manifests at once),
/// so the ratio shows snapvault's overhead, not a difference in parallelism.
async fn raw_write_parallel(
    store: std::sync::Arc<dyn ObjectStore>,
    prefix: &str,
    segments: &[SegmentRecord],
) -> Result<Duration, BoxError> {
    use futures::StreamExt;
    let started = Instant::now();
    let chunks: Vec<Vec<SegmentRecord>> = segments
        .chunks(SEGMENTS_PER_MANIFEST)
        .map(<[_]>::to_vec)
        .collect();
    let results: Vec<Result<(), String>> = futures::stream::iter(chunks.into_iter().enumerate())
        .map(|(n, chunk)| {
            let store = store.clone();
            let key = format!("{prefix}/manifest-{n}.avro");
            tokio::spawn(async move {
                let bytes = manifest::encode_manifest(1, n as u32, chunk.iter())
                    .map_err(|e| e.to_string())?;
                store
                    .put(&Path::from(key), PutPayload::from_bytes(Bytes::from(bytes)))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .buffer_unordered(4)
        .map(|j| j.map_err(|e| e.to_string()).and_then(|r| r))
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed())
}

async fn one_size(segments_count: usize) -> Result<(f64, f64, f64, f64), BoxError> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(NodeConfig::embedded(dir.path())).await?;
    let client = node.client();
    let name = format!("bench_{segments_count}");
    let view = client
        .create_collection(CreateCollectionRequest {
            name: name.clone(),
            shard_count: 4,
            ..Default::default()
        })
        .await?;
    let log = client.log().clone();
    let stream = collection_stream(view.id);
    let mut version = log.stream_version(&stream).await?;
    let mut records = Vec::with_capacity(segments_count);
    let first_id = client.allocate_id().await? * 1_000_000;
    for chunk_start in (0..segments_count).step_by(SETUP_BATCH) {
        let mut batch = Vec::new();
        for i in chunk_start..(chunk_start + SETUP_BATCH).min(segments_count) {
            let seg = segment(view.id, first_id + i as u64);
            batch.push(codec::encode(&CollectionEvent::SegmentFlushed {
                segment: seg.clone(),
            })?);
            records.push(seg);
        }
        let n = batch.len() as u64;
        log.append(&stream, ExpectedVersion::Exact(version), batch)
            .await?;
        version += n;
    }
    // The collection actor loaded before the bulk setup; evict it so it reloads the stream.
    client.registry().evict_now();
    let _ = client.describe_collection(&name).await?;
    let store = client.store().clone();
    let mut create_times = Vec::new();
    let mut raw_times = Vec::new();
    let mut par_times = Vec::new();
    for round in 0..ROUNDS {
        let raw = raw_write(&*store, &format!("raw/{round}"), &records).await?;
        let par = raw_write_parallel(store.clone(), &format!("par/{round}"), &records).await?;
        par_times.push(par.as_secs_f64());
        let started = Instant::now();
        let snap = client
            .create_snapshot(CreateSnapshotRequest {
                collection: name.clone(),
                name: format!("s{round}"),
                ..Default::default()
            })
            .await?;
        let create = started.elapsed();
        assert_eq!(snap.totals.segments as usize, segments_count);
        assert_eq!(
            snap.totals.files as usize,
            segments_count * FILES_PER_SEGMENT
        );
        create_times.push(create.as_secs_f64());
        raw_times.push(raw.as_secs_f64());
    }
    node.shutdown().await;
    create_times.sort_by(f64::total_cmp);
    raw_times.sort_by(f64::total_cmp);
    par_times.sort_by(f64::total_cmp);
    let create = create_times[ROUNDS / 2];
    let raw = raw_times[ROUNDS / 2];
    let par = par_times[ROUNDS / 2];
    Ok((create, raw, par, peak_rss_kib() as f64 / 1024.0))
}

fn main() -> Result<(), BoxError> {
    let quick = std::env::var("SNAPVAULT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "snapshot create vs raw Avro encode + write (median of {ROUNDS}), {FILES_PER_SEGMENT} files/segment"
    );
    println!("raw1: one manifest at a time; raw4: 4 at once, as the snapshot worker writes");
    println!(
        "{:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>13} {:>11} {:>9}",
        "segments",
        "file refs",
        "create ms",
        "raw1 ms",
        "ratio1",
        "raw4 ms",
        "ratio4 ≤1.5",
        "µs/segment",
        "RSS MiB"
    );
    let mut per_segment = Vec::new();
    for &n in sizes {
        let (create, raw, par, rss) = runtime.block_on(one_size(n))?;
        let us_per_segment = create * 1e6 / n as f64;
        per_segment.push(us_per_segment);
        println!(
            "{:>9} {:>10} {:>10.1} {:>10.1} {:>9.2}x {:>10.1} {:>12.2}x {:>11.2} {:>9.0}",
            n,
            n * FILES_PER_SEGMENT,
            create * 1e3,
            raw * 1e3,
            create / raw,
            par * 1e3,
            create / par,
            us_per_segment,
            rss
        );
    }
    if let (Some(first), Some(last)) = (per_segment.first(), per_segment.last()) {
        println!(
            "cost per segment, largest vs smallest: {:.2}x (target ≤ 1.3x)",
            last / first
        );
    }
    Ok(())
}
