//! The CLI's host-acting helpers as API ops (`host.*`), registered by `snapvault serve
//! --nats` next to the library's ops, so `ingest`, `compact`, `index build` and the demo work
//! in remote mode: the service, which holds the object store, writes the files and records
//! them. Each is one `t.add` line, like every other op group.

use super::compact::{self, CompactReport};
use super::demo::{self, Verified};
use super::index::{self, Built};
use super::ingest::{self, IngestPlan, IngestReport};
use serde::{Deserialize, Serialize};
use snapvault::Client;
use snapvault::nats::OpTable;

/// `host.ingest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostIngest {
    pub collection: String,
    pub segments: u64,
    pub files: usize,
    pub size: u64,
    /// `_default` when missing, as `ingest` without `--partition`.
    #[serde(default = "default_partition")]
    pub partition: String,
    #[serde(default)]
    pub shard: Option<u32>,
}

fn default_partition() -> String {
    snapvault_events::domain::collection::DEFAULT_PARTITION.to_string()
}

impl HostIngest {
    pub fn of(collection: &str, p: &IngestPlan) -> HostIngest {
        HostIngest {
            collection: collection.to_string(),
            segments: p.segments,
            files: p.files,
            size: p.size,
            partition: p.partition.clone(),
            shard: p.shard,
        }
    }
}

/// `host.compact`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostCompact {
    pub collection: String,
    #[serde(default)]
    pub segment_ids: Option<Vec<u64>>,
}

/// `host.index_build`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostIndexBuild {
    pub collection: String,
    pub index: String,
    pub segment: u64,
}

/// `host.verify_files`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyFiles {
    pub collection: String,
}

/// `host.snapshot_segments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotSegments {
    pub collection: String,
    pub name: String,
}

/// `host.compare_restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareRestore {
    pub job: u64,
}

/// `host.count_existing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keys {
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Count {
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentIds {
    pub segment_ids: Vec<u64>,
}

pub fn register(t: &mut OpTable) {
    t.add("host.ingest", |c: Client, r: HostIngest| async move {
        let plan = IngestPlan {
            segments: r.segments,
            files: r.files,
            size: r.size,
            partition: r.partition,
            shard: r.shard,
        };
        let report: IngestReport = ingest::ingest(&c, &r.collection, &plan).await?;
        Ok(report)
    });
    t.add("host.compact", |c: Client, r: HostCompact| async move {
        let report: CompactReport = compact::compact(&c, &r.collection, r.segment_ids).await?;
        Ok(report)
    });
    t.add(
        "host.index_build",
        |c: Client, r: HostIndexBuild| async move {
            let built: Built = index::build(&c, &r.collection, &r.index, r.segment).await?;
            Ok(built)
        },
    );
    t.add(
        "host.verify_files",
        |c: Client, r: VerifyFiles| async move {
            let view = c.describe_collection(&r.collection).await?;
            let v: Verified = demo::verify_files(&c, &view).await?;
            Ok(v)
        },
    );
    t.add(
        "host.compare_restore",
        |c: Client, r: CompareRestore| async move { demo::compare_restore(&c, r.job).await },
    );
    t.add(
        "host.snapshot_only_files",
        |c: Client, r: SnapshotSegments| async move {
            Ok(Keys {
                keys: demo::snapshot_only_files(&c, &r.collection, &r.name).await?,
            })
        },
    );
    t.add("host.count_existing", |c: Client, r: Keys| async move {
        Ok(Count {
            count: demo::count_existing(&c, &r.keys).await?,
        })
    });
    t.add(
        "host.snapshot_segments",
        |c: Client, r: SnapshotSegments| async move {
            let s = c.describe_snapshot(&r.collection, &r.name).await?;
            Ok(SegmentIds {
                segment_ids: demo::snapshot_segments(&c, &s).await?,
            })
        },
    );
}
