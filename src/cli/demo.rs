//! `demo`: the README's main job, end to end on the data directory, as the host database and
//! an operator would do it: create a collection, ingest segments of real files, compact them,
//! verify every live file against the object store, snapshot the collection (`nightly`), let
//! the host move on (ingest more, compact again, so the snapshot's segments are no longer
//! live), then describe the snapshot and verify it — its files are all still there with the
//! recorded crc32c. Then it restores the snapshot into a new collection as a tracked job
//! (progress lines while it copies), checks every restored file byte for byte against the
//! snapshot's source file, and runs GC twice: while the snapshot exists GC keeps the files
//! the host compacted away (the snapshot needs them); after the snapshot is dropped GC
//! reclaims them, the restored collection still verifies, and a dry run finds nothing left.
//! Each step is one function below, called in order from [`run`], and records what it did in
//! [`DemoReport`].

use super::Ctx;
use super::backend::Backend;
use super::compact::CompactReport;
use super::ingest::{self, IngestPlan, IngestReport};
use super::output::{bytes, plural};
use serde::Serialize;
use snapvault::client::CreateCollectionRequest;
use snapvault::restores::{RestoreView, StartRestoreRequest};
use snapvault::snapshots::{CreateSnapshotRequest, SnapshotView};
use snapvault::views::{CollectionView, Totals};
use snapvault::{Client, Error, host};
use snapvault_actors::gc::{GcReport, GcRunOptions};
use snapvault_actors::snapshot::manifest;
use snapvault_events::domain::collection::DEFAULT_PARTITION;
use snapvault_events::domain::restore::{RestoreOptions, RestoreStatus};
use std::time::Duration;

/// The demo's workload: 20 segments × 4 files × 64 KiB over 2 shards (5 MiB).
const SHARDS: u32 = 2;
const SEGMENTS: u64 = 20;
const FILES_PER_SEGMENT: usize = 4;
const FILE_BYTES: u64 = 64 * 1024;
/// The snapshot the demo takes after the first compaction.
const SNAPSHOT: &str = "nightly";
/// Segments the host writes after the snapshot, before it compacts again.
const SEGMENTS_AFTER_SNAPSHOT: u64 = 4;

/// What the demo did, step by step (the `--json` output).
#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub collection: String,
    pub collection_id: u64,
    pub ingest: IngestReport,
    pub compact: CompactReport,
    pub verified: Verified,
    pub snapshot: DemoSnapshot,
    /// What the host did after the snapshot: the live collection no longer matches it.
    pub after_snapshot: AfterSnapshot,
    pub restore: DemoRestore,
    pub gc: DemoGc,
    pub totals: Totals,
}

/// The restore of the snapshot and its byte-for-byte check.
#[derive(Debug, Serialize)]
pub struct DemoRestore {
    pub job: RestoreView,
    pub collection: String,
    pub files_compared: u64,
    pub bytes_compared: u64,
}

/// GC with the snapshot (keeps its files), after dropping it (reclaims them), and a dry run.
#[derive(Debug, Serialize)]
pub struct DemoGc {
    /// Files the snapshot holds that are no longer live (compacted away): GC must keep them.
    pub snapshot_only_files: u64,
    pub with_snapshot: GcReport,
    pub after_drop: GcReport,
    pub dry_run_after: GcReport,
    pub restored_files_verified: u64,
}

/// The snapshot as `describe` and `verify` saw it, after the collection moved on.
#[derive(Debug, Serialize)]
pub struct DemoSnapshot {
    pub name: String,
    pub id: u64,
    pub location: String,
    pub manifests: u32,
    pub segments: u64,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
    /// Segment ids the snapshot holds; none of them is live any more.
    pub segment_ids: Vec<u64>,
    pub verified_files: u64,
    pub verified_ok: bool,
}

#[derive(Debug, Serialize)]
pub struct AfterSnapshot {
    pub ingest: IngestReport,
    pub compact: CompactReport,
}

#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Verified {
    pub files: u64,
    pub bytes: u64,
}

/// Numbered step lines for people, so the demo reads like the procedure it shows.
struct Steps<'a> {
    ctx: &'a Ctx,
    n: usize,
}

impl Steps<'_> {
    fn done(&mut self, what: &str) {
        self.n += 1;
        self.ctx.out.say(&format!("[{}] {what}", self.n));
    }
}

pub async fn run(ctx: &Ctx) -> Result<(), Error> {
    let client = &ctx.client;
    let mut steps = Steps { ctx, n: 0 };

    let view = create(client).await?;
    let name = view.name.clone();
    steps.done(&format!(
        "created collection '{name}' (id {}, {})",
        view.id,
        plural(u64::from(view.shards), "shard")
    ));

    let ingested = ingest(client, &name).await?;
    steps.done(&ingest::summary(&ingested));

    let compacted = client.host_compact(&name, None).await?;
    let merged: usize = compacted.compactions.iter().map(|c| c.segments.len()).sum();
    steps.done(&format!(
        "compacted {} into {} (one per shard)",
        plural(merged as u64, "segment"),
        plural(compacted.compactions.len() as u64, "segment")
    ));

    let verified = client.verify_live_files(&name).await?;
    steps.done(&format!(
        "verified {} ({}): sizes and crc32c match the object store",
        plural(verified.files, "file"),
        bytes(verified.bytes)
    ));

    let taken = snapshot(client, &name).await?;
    steps.done(&format!(
        "created snapshot '{SNAPSHOT}' (id {}): {}, {}, {}",
        taken.id,
        plural(taken.totals.segments, "segment"),
        plural(taken.totals.files, "file"),
        bytes(taken.totals.bytes)
    ));

    let after = move_on(client, &name).await?;
    steps.done(&format!(
        "the host moved on: {}, then compacted into {}; the snapshot's segments are no longer live",
        ingest::summary(&after.ingest),
        plural(after.compact.compactions.len() as u64, "segment")
    ));

    let described = client.describe_snapshot(&name, SNAPSHOT).await?;
    let view = client.describe_collection(&name).await?;
    let held = client.snapshot_segments(&described).await?;
    let still_live = held
        .iter()
        .filter(|id| view.segments.iter().any(|s| s.id == **id))
        .count();
    steps.done(&format!(
        "described snapshot '{SNAPSHOT}': {}, {}, {}, {} rows in {} under {} ({} of its segments live now)",
        plural(described.totals.segments, "segment"),
        plural(described.totals.files, "file"),
        bytes(described.totals.bytes),
        described.totals.rows,
        plural(u64::from(described.manifests), "manifest"),
        described.location,
        still_live
    ));

    let checked = client.verify_snapshot(&name, SNAPSHOT).await?;
    if let Some(e) = super::snapshot::verify_failure(&name, SNAPSHOT, &checked) {
        return Err(e);
    }
    steps.done(&format!(
        "verified snapshot '{SNAPSHOT}': all {} present, sizes and crc32c match",
        plural(checked.checked_files, "file")
    ));

    let restore = restore(client, &name, &mut steps).await?;
    steps.done(&format!(
        "restored snapshot '{SNAPSHOT}' into '{}' (job {}): {} copied, every one byte for byte equal to its source",
        restore.collection,
        restore.job.job_id,
        plural(restore.files_compared, "file"),
    ));

    let gc = gc(client, &name, &restore.collection, &mut steps).await?;

    let snapshot = DemoSnapshot {
        name: described.name.clone(),
        id: described.id,
        location: described.location.clone(),
        manifests: described.manifests,
        segments: described.totals.segments,
        files: described.totals.files,
        bytes: described.totals.bytes,
        rows: described.totals.rows,
        segment_ids: held,
        verified_files: checked.checked_files,
        verified_ok: checked.ok,
    };
    let report = DemoReport {
        collection: name.clone(),
        collection_id: view.id,
        ingest: ingested,
        compact: compacted,
        verified,
        snapshot,
        after_snapshot: after,
        restore,
        gc,
        totals: view.totals,
    };
    // Embedded: the data directory; remote: the service the demo ran on.
    let (where_label, where_value, target) = match &ctx.client {
        Backend::Local(_) => (
            "data directory",
            ctx.data.display().to_string(),
            format!("--data {}", ctx.data.display()),
        ),
        Backend::Remote(r) => (
            "service",
            r.api().to_string(),
            format!("--nats {}", r.url()),
        ),
    };
    ctx.out.emit(&report, || {
        let s = &report.snapshot;
        format!(
            "\ncollection '{name}' now: {}, {}, {}, {} rows\n\
             snapshot '{SNAPSHOT}' (id {}): {}, {}, {}, {} rows, verified ok, restored, then dropped\n\
             restored collection '{restored}': restore job {job}; GC reclaimed {reclaimed} after the drop\n\
             {where_label}: {where_value}\n\
             see them with:\n  \
             {prog} {target} collection describe {name}\n  \
             {prog} {target} collection describe {restored}\n  \
             {prog} {target} restore status {job}\n  \
             {prog} {target} gc status",
            plural(view.totals.segments as u64, "live segment"),
            plural(view.totals.files, "file"),
            bytes(view.totals.bytes),
            view.totals.rows,
            s.id,
            plural(s.segments, "segment"),
            plural(s.files, "file"),
            bytes(s.bytes),
            s.rows,
            prog = program(),
            restored = report.restore.collection,
            job = report.restore.job.job_id,
            reclaimed = plural(report.gc.after_drop.total().objects, "object"),
            where_label = where_label,
            where_value = where_value,
            target = target,
        )
    })
}

/// How this binary was invoked (`target/release/snapvault` after `cargo run`), so the hint
/// printed at the end can be pasted as is.
fn program() -> String {
    std::env::args()
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "snapvault".to_string())
}

/// A collection with a name no earlier run used (`demo_<id>`, the id from the log's
/// allocator), so the demo can run again and again on one data directory.
async fn create(client: &Backend) -> Result<CollectionView, Error> {
    let name = format!("demo_{}", client.allocate_id().await?);
    client
        .create_collection(CreateCollectionRequest {
            name,
            schema_json: r#"{"fields":[{"name":"id","type":"int64","primary_key":true},{"name":"embedding","type":"float_vector","dim":128}]}"#.to_string(),
            shard_count: SHARDS,
            properties: [("owner".to_string(), "demo".to_string())].into(),
            partitions: Vec::new(),
        })
        .await
}

async fn ingest(client: &Backend, name: &str) -> Result<IngestReport, Error> {
    let plan = IngestPlan {
        segments: SEGMENTS,
        files: FILES_PER_SEGMENT,
        size: FILE_BYTES,
        partition: DEFAULT_PARTITION.to_string(),
        shard: None,
    };
    client.host_ingest(name, &plan).await
}

/// Read back every live file and compare its size and crc32c with what the collection
/// recorded: the check a snapshot relies on.
pub async fn verify_files(client: &Client, view: &CollectionView) -> Result<Verified, Error> {
    let mut verified = Verified { files: 0, bytes: 0 };
    // Owned, so the future holds no borrowing iterator across an await (it must be `Send`
    // to run as an API op).
    let mut files = Vec::new();
    for s in &view.segments {
        files.extend(s.files.iter().cloned());
        for i in &s.indexes {
            files.extend(i.files.iter().cloned());
        }
    }
    for f in &files {
        let data = host::read_file(client.store().as_ref(), &f.key).await?;
        let crc = crc32c::crc32c(&data);
        if data.len() as u64 != f.size || crc != f.crc32c {
            return Err(Error::internal(format!(
                "object '{}' does not match its record: {} bytes crc32c {crc:08x}, recorded {} bytes crc32c {:08x}",
                f.key,
                data.len(),
                f.size,
                f.crc32c
            )));
        }
        verified.files += 1;
        verified.bytes += f.size;
    }
    Ok(verified)
}

/// Snapshot the collection as it is after the first compaction.
async fn snapshot(client: &Backend, name: &str) -> Result<SnapshotView, Error> {
    client
        .create_snapshot(CreateSnapshotRequest {
            collection: name.to_string(),
            name: SNAPSHOT.to_string(),
            description: "taken by the demo after the first compaction".to_string(),
            labels: [("kind".to_string(), "demo".to_string())].into(),
        })
        .await
}

/// The host keeps working after the snapshot: it writes more segments and compacts each shard
/// again, which drops the segments the snapshot holds from the live collection. The snapshot
/// must not change, and its files must stay.
async fn move_on(client: &Backend, name: &str) -> Result<AfterSnapshot, Error> {
    let plan = IngestPlan {
        segments: SEGMENTS_AFTER_SNAPSHOT,
        files: FILES_PER_SEGMENT,
        size: FILE_BYTES,
        partition: DEFAULT_PARTITION.to_string(),
        shard: None,
    };
    let ingest = client.host_ingest(name, &plan).await?;
    let compact = client.host_compact(name, None).await?;
    Ok(AfterSnapshot { ingest, compact })
}

/// The segment ids a committed snapshot lists, read from its manifests.
pub async fn snapshot_segments(client: &Client, s: &SnapshotView) -> Result<Vec<u64>, Error> {
    let mut ids = Vec::new();
    for n in 0..s.manifests {
        let key = manifest::manifest_key(s.collection_id, s.id, n);
        let bytes = host::read_file(client.store().as_ref(), &key).await?;
        for seg in manifest::decode_manifest(&bytes)? {
            ids.push(seg.segment_id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Restore the snapshot into `<name>_restored`, showing progress, then compare every restored
/// file with the snapshot's file it was copied from, byte for byte.
async fn restore(
    client: &Backend,
    name: &str,
    steps: &mut Steps<'_>,
) -> Result<DemoRestore, Error> {
    let target = format!("{name}_restored");
    let started = client
        .start_restore(StartRestoreRequest {
            snapshot_collection: name.to_string(),
            snapshot: SNAPSHOT.to_string(),
            target: target.clone(),
            options: RestoreOptions::default(),
        })
        .await?;
    steps.done(&format!(
        "started restore job {} of '{SNAPSHOT}' into '{target}'",
        started.job_id
    ));
    let mut last_percent = -1.0;
    let out = steps.ctx.out;
    let job = client
        .wait_restore(started.job_id, Duration::from_millis(50), None, |v| {
            if v.percent >= last_percent + 25.0 || v.status.is_terminal() {
                last_percent = v.percent;
                out.say(&format!("    {}", super::restore::progress_line(v)));
            }
        })
        .await?;
    if job.status != RestoreStatus::Completed {
        return Err(Error::internal(format!(
            "the demo's restore job {} ended {}: {}",
            job.job_id,
            job.status.as_str(),
            job.failure.clone().unwrap_or_default()
        )));
    }
    let compared = client.compare_restore(job.job_id).await?;
    if compared.files != job.totals.files {
        return Err(Error::internal(format!(
            "the restore copied {} files but {} were compared",
            job.totals.files, compared.files
        )));
    }
    Ok(DemoRestore {
        job,
        collection: target,
        files_compared: compared.files,
        bytes_compared: compared.bytes,
    })
}

/// Read every file restore job `job` wrote and the source it was copied from, and require
/// them equal byte for byte (and equal to the recorded crc32c).
pub async fn compare_restore(client: &Client, job: u64) -> Result<Verified, Error> {
    let mut compared = Verified { files: 0, bytes: 0 };
    for seg in client.restore_segments(job).await? {
        for (source_key, dest) in &seg.files {
            let restored = host::read_file(client.store().as_ref(), &dest.key).await?;
            let original = host::read_file(client.store().as_ref(), source_key).await?;
            if restored != original || crc32c::crc32c(&restored) != dest.crc32c {
                return Err(Error::internal(format!(
                    "restored '{}' differs from its source '{source_key}'",
                    dest.key
                )));
            }
            compared.files += 1;
            compared.bytes += dest.size;
        }
    }
    Ok(compared)
}

/// The data files a snapshot holds that its collection no longer has live.
pub async fn snapshot_only_files(
    client: &Client,
    collection: &str,
    snapshot: &str,
) -> Result<Vec<String>, Error> {
    let described = client.describe_snapshot(collection, snapshot).await?;
    let live = client.describe_collection(collection).await?;
    let live_keys: std::collections::BTreeSet<String> = live
        .segments
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.key.clone()))
        .collect();
    let mut out = Vec::new();
    for n in 0..described.manifests {
        let key = manifest::manifest_key(described.collection_id, described.id, n);
        let bytes = host::read_file(client.store().as_ref(), &key).await?;
        for seg in manifest::decode_manifest(&bytes)? {
            out.extend(
                seg.files
                    .into_iter()
                    .map(|f| f.key)
                    .filter(|k| !live_keys.contains(k)),
            );
        }
    }
    Ok(out)
}

/// How many of `keys` exist in the store.
pub async fn count_existing(client: &Client, keys: &[String]) -> Result<u64, Error> {
    let mut n = 0;
    for key in keys {
        match host::read_file(client.store().as_ref(), key).await {
            Ok(_) => n += 1,
            Err(e) if e.code == snapvault::ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// GC now (no retention, no orphan window: the demo's data directory has nothing in flight).
fn reclaim_now(dry_run: bool) -> GcRunOptions {
    GcRunOptions {
        dry_run,
        dropped_retention_ms: Some(0),
        orphan_window_ms: Some(0),
    }
}

/// How long the demo waits for GC's ref index to load.
const GC_LOAD_WAIT: Duration = Duration::from_secs(120);

/// GC keeps what the snapshot holds, reclaims it once the snapshot is dropped, and then
/// finds nothing more; the restored collection is untouched throughout.
async fn gc(
    client: &Backend,
    name: &str,
    restored: &str,
    steps: &mut Steps<'_>,
) -> Result<DemoGc, Error> {
    let snapshot_only = client.snapshot_only_files(name, SNAPSHOT).await?;
    let total = snapshot_only.len() as u64;
    let with_snapshot = client.gc_run(reclaim_now(false), GC_LOAD_WAIT).await?;
    let kept = client.count_existing(&snapshot_only).await?;
    if kept != total {
        return Err(Error::internal(format!(
            "GC deleted {} of the {total} files the snapshot holds",
            total - kept
        )));
    }
    steps.done(&format!(
        "GC with the snapshot: reclaimed {}, kept all {} the host compacted away that the snapshot holds",
        plural(with_snapshot.total().objects, "object"),
        plural(total, "file")
    ));
    client.drop_snapshot(name, SNAPSHOT).await?;
    let after_drop = client.gc_run(reclaim_now(false), GC_LOAD_WAIT).await?;
    let left = client.count_existing(&snapshot_only).await?;
    if left != 0 {
        return Err(Error::internal(format!(
            "GC left {left} of the {total} files only the dropped snapshot held"
        )));
    }
    let restored_files_verified = client.verify_live_files(restored).await?.files;
    steps.done(&format!(
        "dropped snapshot '{SNAPSHOT}'; GC reclaimed {} ({}), the restored collection still verifies ({})",
        plural(after_drop.total().objects, "object"),
        bytes(after_drop.total().bytes),
        plural(restored_files_verified, "file")
    ));
    let dry_run_after = client.gc_run(reclaim_now(true), GC_LOAD_WAIT).await?;
    if dry_run_after.total().objects != 0 {
        return Err(Error::internal(format!(
            "a GC dry run after the sweep still finds {} to reclaim",
            plural(dry_run_after.total().objects, "object")
        )));
    }
    steps.done("GC dry run: nothing more to reclaim");
    Ok(DemoGc {
        snapshot_only_files: total,
        with_snapshot,
        after_drop,
        dry_run_after,
        restored_files_verified,
    })
}
