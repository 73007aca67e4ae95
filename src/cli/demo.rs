//! `demo`: the README's main job, end to end on the data directory, as the host database and
//! an operator would do it: create a collection, ingest segments of real files, compact them,
//! verify every live file against the object store, snapshot the collection (`nightly`), let
//! the host move on (ingest more, compact again, so the snapshot's segments are no longer
//! live), then describe the snapshot and verify it — its files are all still there with the
//! recorded crc32c. Later issues add restore and GC as further steps: each step is one function
//! below, called in order from [`run`], and records what it did in [`DemoReport`].

use super::Ctx;
use super::backend::Backend;
use super::compact::CompactReport;
use super::ingest::{self, IngestPlan, IngestReport};
use super::output::{bytes, plural};
use serde::Serialize;
use snapvault::client::CreateCollectionRequest;
use snapvault::snapshots::{CreateSnapshotRequest, SnapshotView};
use snapvault::views::{CollectionView, Totals};
use snapvault::{Client, Error, host};
use snapvault_actors::snapshot::manifest;
use snapvault_events::domain::collection::DEFAULT_PARTITION;

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
    pub totals: Totals,
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
             snapshot '{SNAPSHOT}' (id {}): {}, {}, {}, {} rows, verified ok\n\
             {where_label}: {where_value}\n\
             see them with:\n  \
             {prog} {target} collection describe {name}\n  \
             {prog} {target} snapshot describe {name} {SNAPSHOT}",
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
