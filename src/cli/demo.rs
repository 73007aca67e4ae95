//! `demo`: the README's main job, end to end on the data directory, as the host database and
//! an operator would do it. Today: create a collection, ingest segments of real files, compact
//! them, verify every live file against the object store, and describe the result. Later issues
//! add snapshot, restore and GC as further steps: each step is one function below, called in
//! order from [`run`], and records what it did in [`DemoReport`].

use super::Ctx;
use super::compact::{self, CompactReport};
use super::ingest::{self, IngestPlan, IngestReport};
use super::output::{bytes, plural};
use serde::Serialize;
use snapvault::client::CreateCollectionRequest;
use snapvault::views::{CollectionView, Totals};
use snapvault::{Client, Error, host};
use snapvault_events::domain::collection::DEFAULT_PARTITION;

/// The demo's workload: 20 segments × 4 files × 64 KiB over 2 shards (5 MiB).
const SHARDS: u32 = 2;
const SEGMENTS: u64 = 20;
const FILES_PER_SEGMENT: usize = 4;
const FILE_BYTES: u64 = 64 * 1024;

/// What the demo did, step by step (the `--json` output).
#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub collection: String,
    pub collection_id: u64,
    pub ingest: IngestReport,
    pub compact: CompactReport,
    pub verified: Verified,
    pub totals: Totals,
}

#[derive(Debug, Clone, Copy, Serialize)]
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

    let compacted = compact::compact(client, &name, None).await?;
    let merged: usize = compacted.compactions.iter().map(|c| c.segments.len()).sum();
    steps.done(&format!(
        "compacted {} into {} (one per shard)",
        plural(merged as u64, "segment"),
        plural(compacted.compactions.len() as u64, "segment")
    ));

    let view = client.describe_collection(&name).await?;
    let verified = verify(client, &view).await?;
    steps.done(&format!(
        "verified {} ({}): sizes and crc32c match the object store",
        plural(verified.files, "file"),
        bytes(verified.bytes)
    ));

    let report = DemoReport {
        collection: name.clone(),
        collection_id: view.id,
        ingest: ingested,
        compact: compacted,
        verified,
        totals: view.totals,
    };
    ctx.out.emit(&report, || {
        format!(
            "\ncollection '{name}' now: {}, {}, {}, {} rows\n\
             data directory: {}\n\
             see it with: {} --data {} collection describe {name}",
            plural(view.totals.segments as u64, "live segment"),
            plural(view.totals.files, "file"),
            bytes(view.totals.bytes),
            view.totals.rows,
            ctx.data.display(),
            program(),
            ctx.data.display(),
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
async fn create(client: &Client) -> Result<CollectionView, Error> {
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

async fn ingest(client: &Client, name: &str) -> Result<IngestReport, Error> {
    let plan = IngestPlan {
        segments: SEGMENTS,
        files: FILES_PER_SEGMENT,
        size: FILE_BYTES,
        partition: DEFAULT_PARTITION.to_string(),
        shard: None,
    };
    ingest::ingest(client, name, &plan).await
}

/// Read back every live file and compare its size and crc32c with what the collection
/// recorded: the check a snapshot relies on.
async fn verify(client: &Client, view: &CollectionView) -> Result<Verified, Error> {
    let mut verified = Verified { files: 0, bytes: 0 };
    let files = view.segments.iter().flat_map(|s| {
        s.files
            .iter()
            .chain(s.indexes.iter().flat_map(|i| i.files.iter()))
    });
    for f in files {
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
