//! GC benchmark: a cycle over 1M objects in the local store against a raw listing of the same
//! objects in the same run, and the ref index's memory per file reference.
//!
//! Setup: one collection with 100k segments × 10 files (1M objects of 16 bytes on disk, their
//! `SegmentFlushed` events appended in batches), then 1% of the segments dropped (10k dead
//! files). The cycle lists the data prefix, judges every object against the ref index, and
//! reclaims the 10k dead files (recording them first). Targets: cycle listing rate ≥ 0.5× the
//! raw listing rate; ≤ 100 bytes of ref index per file reference.
//!
//! `cargo bench --bench gc_bench`; `SNAPVAULT_BENCH_QUICK=1` uses 100k objects.

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;
use snapvault::client::CreateCollectionRequest;
use snapvault::{Node, NodeConfig};
use snapvault_actors::gc::GcRunOptions;
use snapvault_actors::gc::ref_index::RefIndex;
use snapvault_events::ExpectedVersion;
use snapvault_events::codec;
use snapvault_events::domain::collection::{CollectionEvent, SegmentRecord};
use snapvault_events::domain::{FileRef, collection_stream};
use std::time::{Duration, Instant};

/// Counts live heap bytes, so the ref index's memory is measured exactly (RSS moves in pages
/// and keeps what the replay's temporaries freed).
struct CountingAlloc;
static LIVE_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn live_bytes() -> i64 {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

const FILES_PER_SEGMENT: usize = 10;
const BATCH: usize = 1_000;
type BoxError = Box<dyn std::error::Error>;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn key(cid: u64, seg: u64, i: usize) -> String {
    format!("data/{cid}/1/{seg}/insert_log/{i}")
}

/// Write the objects straight to disk with a few threads (setup, not measured).
fn write_files(root: &std::path::Path, cid: u64, segments: &[u64]) -> Result<(), BoxError> {
    let chunks: Vec<Vec<u64>> = segments
        .chunks(segments.len().div_ceil(4).max(1))
        .map(<[_]>::to_vec)
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || -> Result<(), std::io::Error> {
                    for seg in chunk {
                        let dir = root.join(format!("data/{cid}/1/{seg}/insert_log"));
                        std::fs::create_dir_all(&dir)?;
                        for i in 0..FILES_PER_SEGMENT {
                            std::fs::write(dir.join(i.to_string()), b"0123456789abcdef")?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "writer thread panicked")??;
        }
        Ok::<(), BoxError>(())
    })
}

async fn raw_list(store: &dyn ObjectStore) -> Result<(u64, Duration), BoxError> {
    let started = Instant::now();
    let n = store
        .list(Some(&ObjPath::from("data")))
        .try_fold(0u64, |n, _| async move { Ok(n + 1) })
        .await?;
    Ok((n, started.elapsed()))
}

fn main() -> Result<(), BoxError> {
    let quick = std::env::var("SNAPVAULT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let segments_count: u64 = if quick { 10_000 } else { 100_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir()?;
        let mut config = NodeConfig::embedded(dir.path());
        config.gc.interval_ms = 0;
        config.gc.max_objects_per_cycle = 10_000_000;
        let node = Node::start(config.clone()).await?;
        let c = node.client();
        let view = c
            .create_collection(CreateCollectionRequest {
                name: "gcbench".into(),
                shard_count: 1,
                ..Default::default()
            })
            .await?;
        let first = c.allocate_id().await? * 10_000_000;
        let segs: Vec<u64> = (0..segments_count).map(|i| first + i).collect();
        let stream = collection_stream(view.id);
        let mut version = c.log().stream_version(&stream).await?;
        for chunk in segs.chunks(BATCH) {
            let batch = chunk
                .iter()
                .map(|&s| {
                    codec::encode(&CollectionEvent::SegmentFlushed {
                        segment: SegmentRecord {
                            segment_id: s,
                            partition_id: 1,
                            shard: 0,
                            rows: 1,
                            level: 0,
                            files: (0..FILES_PER_SEGMENT)
                                .map(|i| FileRef {
                                    key: key(view.id, s, i),
                                    size: 16,
                                    crc32c: 0,
                                })
                                .collect(),
                            indexes: vec![],
                        },
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let n = batch.len() as u64;
            c.log().append(&stream, ExpectedVersion::Exact(version), batch).await?;
            version += n;
        }
        let dead: Vec<u64> = segs.iter().copied().step_by(100).collect();
        for chunk in dead.chunks(BATCH) {
            let batch = chunk
                .iter()
                .map(|&s| codec::encode(&CollectionEvent::SegmentDropped { segment_id: s }))
                .collect::<Result<Vec<_>, _>>()?;
            let n = batch.len() as u64;
            c.log().append(&stream, ExpectedVersion::Exact(version), batch).await?;
            version += n;
        }
        let objects_root = dir.path().join("objects");
        let setup = Instant::now();
        write_files(&objects_root, view.id, &segs)?;
        eprintln!("setup: wrote {} objects in {:.1} s", segs.len() * FILES_PER_SEGMENT, setup.elapsed().as_secs_f64());

        // Memory of the projection alone: fold the whole log into a fresh RefIndex.
        let before_kib = rss_kib("VmRSS:");
        let before_heap = live_bytes();
        let mut index = RefIndex::default();
        let mut next = 1;
        loop {
            let page = c.log().read_all(next, 4096).await?;
            if page.is_empty() {
                break;
            }
            for env in &page {
                index.apply(env)?;
                next = env.position + 1;
            }
        }
        index.shrink();
        let after_kib = rss_kib("VmRSS:");
        let index_heap = (live_bytes() - before_heap).max(0) as f64;
        let refs = index.reference_count().max(1);
        let files = index.file_count().max(1);
        let bytes_per_ref = (after_kib.saturating_sub(before_kib) * 1024) as f64 / refs as f64;
        drop(index);

        c.gc_wait_loaded(Duration::from_secs(600)).await?;
        let store = c.store().clone();
        let mut raw_times = Vec::new();
        let mut listed = 0;
        for _ in 0..3 {
            let (n, t) = raw_list(&*store).await?;
            listed = n;
            raw_times.push(t.as_secs_f64());
        }
        raw_times.sort_by(f64::total_cmp);
        let raw = raw_times[1];
        let started = Instant::now();
        let report = c
            .gc_run(GcRunOptions {
                dry_run: false,
                dropped_retention_ms: Some(0),
                orphan_window_ms: Some(3_600_000),
            })
            .await?;
        let cycle = started.elapsed().as_secs_f64();
        let reclaimed = report.total().objects;
        // A second, steady-state cycle: nothing to reclaim, everything to judge.
        let started = Instant::now();
        let steady = c
            .gc_run(GcRunOptions {
                dry_run: false,
                dropped_retention_ms: Some(0),
                orphan_window_ms: Some(3_600_000),
            })
            .await?;
        let steady_s = started.elapsed().as_secs_f64();
        node.shutdown().await;

        println!("GC cycle vs raw listing of the same objects (same run)");
        println!("{:>10} {:>12} {:>14} {:>12} {:>14}", "objects", "raw list s", "raw obj/s", "cycle s", "ratio (≥0.5)");
        println!(
            "{:>10} {:>12.2} {:>14.0} {:>12.2} {:>13.2}x   (reclaimed {reclaimed})",
            listed,
            raw,
            listed as f64 / raw,
            cycle,
            raw / cycle
        );
        println!(
            "{:>10} {:>12.2} {:>14.0} {:>12.2} {:>13.2}x   (steady state, reclaimed {})",
            listed,
            raw,
            listed as f64 / raw,
            steady_s,
            raw / steady_s,
            steady.total().objects
        );
        println!(
            "ref index: {refs} references to {files} files: heap {:.1} bytes per reference, {:.1} per file (target ≤ 100); RSS +{} KiB ({:.1} bytes per reference)",
            index_heap / refs as f64,
            index_heap / files as f64,
            after_kib.saturating_sub(before_kib),
            bytes_per_ref
        );
        Ok::<(), BoxError>(())
    })
}
