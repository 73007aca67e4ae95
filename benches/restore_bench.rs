//! Restore benchmark: what a restore job costs over copying the same files by hand.
//!
//! 1. **Throughput.** About 2 GiB in 2,000 files of 1 MiB (500 segments × 4 files) on the
//!    embedded default (sled log + local filesystem store). The baseline, measured in the same
//!    run: a raw parallel copy of the same files with the same parallelism (4), through the
//!    same store — read each object, write it under another key. The restore does the same
//!    reads and writes plus a crc32c of every byte, a size check of every copy, the job and
//!    task events, progress batches, and the commit. Target: restore throughput ≥ 0.8× the
//!    raw copy's.
//! 2. **Memory.** Restores of 10k and then 100k small files (1 KiB): peak RSS (VmHWM) around
//!    each. Every collection's catalog state is held in memory by design, so the restored
//!    collection itself costs memory linear in its files. The baseline, measured in the same
//!    run: how much the peak rose while the source collection of the same size was set up.
//!    Target: the restore raises the peak by no more than that (ratio ≤ 1.0) — the job holds
//!    one task's plan at a time per copy in flight, never the whole file list.
//!
//! `cargo bench --bench restore_bench`; `SNAPVAULT_BENCH_QUICK=1` shrinks both parts.

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use snapvault::client::CreateCollectionRequest;
use snapvault::restores::StartRestoreRequest;
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault::{Client, Node, NodeConfig, host};
use snapvault_events::ExpectedVersion;
use snapvault_events::codec;
use snapvault_events::domain::collection::{CollectionEvent, SegmentRecord};
use snapvault_events::domain::restore::{RestoreOptions, RestoreStatus};
use snapvault_events::domain::{FileRef, collection_stream};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error>;

const PARALLELISM: usize = 4;
const FILES_PER_SEGMENT: usize = 4;

fn quick() -> bool {
    std::env::var_os("SNAPVAULT_BENCH_QUICK").is_some()
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

/// A collection of `segments` × 4 files of `file_bytes` (real objects), and a snapshot `s`.
/// The files are written directly and recorded with `SegmentFlushed` events appended in
/// batches — the events the collection decider emits — so setup stays out of the way.
async fn setup(c: &Client, name: &str, segments: u64, file_bytes: usize) -> Result<u64, BoxError> {
    let view = c
        .create_collection(CreateCollectionRequest {
            name: name.into(),
            shard_count: 4,
            ..Default::default()
        })
        .await?;
    let cid = view.id;
    let stream = collection_stream(cid);
    let mut version = c.log().stream_version(&stream).await?;
    let first = c.allocate_id().await?;
    let base = first * 1_000_000;
    let mut batch = Vec::new();
    let store = c.store().clone();
    for s in 0..segments {
        let sid = base + s;
        let files: Vec<FileRef> = futures::stream::iter(0..FILES_PER_SEGMENT)
            .map(|i| {
                let store = store.clone();
                async move {
                    let key = host::segment_file_key(cid, 1, sid, "insert_log", i);
                    let data = Bytes::from(host::file_bytes(sid * 8 + i as u64, file_bytes));
                    host::put_file(&*store, &key, data).await
                }
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        batch.push(codec::encode(&CollectionEvent::SegmentFlushed {
            segment: SegmentRecord {
                segment_id: sid,
                partition_id: 1,
                shard: (s % 4) as u32,
                rows: 1000,
                level: 0,
                files,
                indexes: Vec::new(),
            },
        })?);
        if batch.len() == 500 || s + 1 == segments {
            let appended = c
                .log()
                .append(
                    &stream,
                    ExpectedVersion::Exact(version),
                    std::mem::take(&mut batch),
                )
                .await?;
            version = appended.stream_version;
        }
    }
    // The collection actor must see the appended events before the snapshot pins.
    c.registry().evict_now();
    c.create_snapshot(CreateSnapshotRequest {
        collection: name.into(),
        name: "s".into(),
        ..Default::default()
    })
    .await?;
    Ok(cid)
}

/// Every file of the collection, as the snapshot holds it.
async fn files_of(c: &Client, name: &str) -> Result<Vec<FileRef>, BoxError> {
    let view = c.describe_collection(name).await?;
    Ok(view
        .segments
        .into_iter()
        .flat_map(|s| s.files.into_iter())
        .collect())
}

/// The baseline: read each object and write it under another key, `PARALLELISM` at once.
async fn raw_copy(
    store: &dyn ObjectStore,
    files: &[FileRef],
    prefix: &str,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let results: Vec<Result<(), object_store::Error>> = futures::stream::iter(files)
        .map(|f| async move {
            let bytes = store
                .get(&Path::from(f.key.as_str()))
                .await?
                .bytes()
                .await?;
            store
                .put(
                    &Path::from(format!("{prefix}/{}", f.key)),
                    PutPayload::from_bytes(bytes),
                )
                .await?;
            Ok(())
        })
        .buffer_unordered(PARALLELISM)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed())
}

async fn restore(c: &Client, source: &str, target: &str) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let job = c
        .start_restore(StartRestoreRequest {
            snapshot_collection: source.into(),
            snapshot: "s".into(),
            target: target.into(),
            options: RestoreOptions {
                parallelism: PARALLELISM as u32,
                ..RestoreOptions::default()
            },
        })
        .await?;
    let job_started = started.elapsed();
    let end = c
        .wait_restore(job.job_id, Duration::from_millis(5), None, |_| {})
        .await?;
    let took = started.elapsed();
    if std::env::var_os("SNAPVAULT_BENCH_PHASES").is_some() {
        eprintln!(
            "phases: start call {:?}, requested→running {} ms, running→finished {} ms",
            job_started,
            end.started_ms.unwrap_or(0).saturating_sub(end.requested_ms),
            end.finished_ms
                .unwrap_or(0)
                .saturating_sub(end.started_ms.unwrap_or(0))
        );
    }
    if end.status != RestoreStatus::Completed {
        return Err(format!("restore ended {:?}: {:?}", end.status, end.failure).into());
    }
    Ok(took)
}

/// Write back every dirty page, so the next case starts from the same state.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// Reset VmHWM to the current RSS (Linux `clear_refs` 5), so a later read is the peak of what
/// ran in between.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

async fn throughput(dir: &std::path::Path) -> Result<(), BoxError> {
    let segments: u64 = if quick() { 50 } else { 500 };
    let file_bytes = 1 << 20;
    let node = Node::start(NodeConfig::embedded(dir)).await?;
    let c = node.client();
    setup(&c, "big", segments, file_bytes).await?;
    let files = files_of(&c, "big").await?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    println!(
        "throughput: {} files, {:.1} MiB, parallelism {PARALLELISM}, local filesystem store",
        files.len(),
        total as f64 / (1 << 20) as f64
    );
    println!(
        "{:<44} {:>10} {:>10} {:>7}",
        "case", "time", "MiB/s", "ratio"
    );
    let mut best_raw = Duration::MAX;
    let mut best_restore = Duration::MAX;
    // Best of 5 each, alternating which goes first, and each starting with no dirty pages
    // (`sync`): the kernel throttles a writer that finds the page cache full of the other
    // case's unwritten data, which would charge one case for the other's writes.
    for round in 0..5 {
        for case in [round % 2, 1 - round % 2] {
            settle();
            if case == 0 {
                let raw = raw_copy(&**c.store(), &files, &format!("raw{round}")).await?;
                best_raw = best_raw.min(raw);
            } else {
                let r = restore(&c, "big", &format!("restored{round}")).await?;
                best_restore = best_restore.min(r);
            }
        }
    }
    let raw_rate = mib_per_s(total, best_raw);
    let restore_rate = mib_per_s(total, best_restore);
    println!(
        "{:<44} {:>9.0}ms {:>10.1} {:>7.2}",
        "raw parallel copy (get + put, same store)",
        best_raw.as_secs_f64() * 1e3,
        raw_rate,
        1.0
    );
    println!(
        "{:<44} {:>9.0}ms {:>10.1} {:>7.2}",
        "restore job (crc32c checked, recorded)",
        best_restore.as_secs_f64() * 1e3,
        restore_rate,
        restore_rate / raw_rate
    );
    println!("target: restore throughput >= 0.80x the raw copy");
    drop(c);
    node.shutdown().await;
    Ok(())
}

async fn memory(dir: &std::path::Path) -> Result<(), BoxError> {
    let sizes: &[u64] = if quick() {
        &[1_000, 5_000]
    } else {
        &[10_000, 100_000]
    };
    let node = Node::start(NodeConfig::embedded(dir)).await?;
    let c = node.client();
    println!("\nmemory: restores of small files (1 KiB), peak RSS (VmHWM) around each");
    println!(
        "{:<10} {:>10} {:>12} {:>16} {:>18} {:>8}",
        "files", "time", "peak MiB", "setup rise MiB", "restore rise MiB", "ratio"
    );
    for (n, files) in sizes.iter().enumerate() {
        let name = format!("small{n}");
        // Peaks are measured from here on: the throughput part's buffers must not hide them.
        reset_peak_rss();
        let start = peak_rss_kib();
        setup(&c, &name, files / FILES_PER_SEGMENT as u64, 1024).await?;
        settle();
        let before = peak_rss_kib();
        let took = restore(&c, &name, &format!("small{n}_restored")).await?;
        let after = peak_rss_kib();
        // The baseline is what holding a collection of this many files costs this process
        // (its catalog state lives in memory by design): the rise of the peak while the
        // source collection was set up and snapshotted. A restore creates one more such
        // collection; its job must add nothing on top that grows with the file count.
        let setup_rise = before.saturating_sub(start) as f64 / 1024.0;
        let restore_rise = after.saturating_sub(before) as f64 / 1024.0;
        println!(
            "{:<10} {:>9.0}ms {:>12.1} {:>16.1} {:>18.1} {:>8.2}",
            files,
            took.as_secs_f64() * 1e3,
            after as f64 / 1024.0,
            setup_rise,
            restore_rise,
            restore_rise / setup_rise.max(0.1)
        );
    }
    println!(
        "target: the restore raises the peak by no more than the collection it creates costs \
         (ratio <= 1.0): the job itself holds one task's plan per copy in flight, never the file list"
    );
    drop(c);
    node.shutdown().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let a = tempfile::tempdir()?;
        throughput(a.path()).await?;
        drop(a);
        let b = tempfile::tempdir()?;
        memory(b.path()).await?;
        Ok::<(), BoxError>(())
    })
}
