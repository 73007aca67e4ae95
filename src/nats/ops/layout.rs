//! Ops of a collection's layout, as the host reports it: partitions, indexes, segment
//! flushes, compactions, index builds, segment drops, and id allocation for new segments and
//! builds.

use super::{Empty, OpTable};
use crate::Client;
use serde::{Deserialize, Serialize};
use snapvault_events::domain::FileRef;
use snapvault_events::domain::collection::{BuildIndex, CompactSegments, FlushSegment};

/// `partition.create` / `partition.drop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRef {
    pub collection: String,
    pub name: String,
}

/// `index.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateIndex {
    pub collection: String,
    pub name: String,
    pub field: String,
    /// Index parameters as JSON text (default `{}`).
    #[serde(default)]
    pub params_json: String,
}

/// `index.drop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    pub collection: String,
    pub name: String,
}

/// `segment.flush`: the host wrote the files; record the segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flush {
    pub collection: String,
    pub segment_id: u64,
    #[serde(default = "default_partition")]
    pub partition: String,
    #[serde(default)]
    pub shard: u32,
    #[serde(default)]
    pub rows: u64,
    pub files: Vec<FileRef>,
}

fn default_partition() -> String {
    snapvault_events::domain::collection::DEFAULT_PARTITION.to_string()
}

/// `segment.compact`: the host wrote the merged files; drop the sources, add the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compact {
    pub collection: String,
    pub segment_ids: Vec<u64>,
    pub into_segment_id: u64,
    #[serde(default)]
    pub rows: u64,
    pub files: Vec<FileRef>,
}

/// `segment.drop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub collection: String,
    pub segment_id: u64,
}

/// `index.record_build`: the host wrote an index's files for a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBuild {
    pub collection: String,
    pub segment_id: u64,
    pub index: String,
    pub build_id: u64,
    pub files: Vec<FileRef>,
}

/// The answer of the layout ops that only change the collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub collection: String,
    pub action: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocated {
    pub id: u64,
}

fn done(collection: String, action: &str) -> Done {
    Done {
        collection,
        action: action.to_string(),
    }
}

pub fn register(t: &mut OpTable) {
    t.add(
        "partition.create",
        |c: Client, r: PartitionRef| async move {
            c.create_partition(&r.collection, &r.name).await?;
            Ok(done(r.collection, "created"))
        },
    );
    t.add("partition.drop", |c: Client, r: PartitionRef| async move {
        c.drop_partition(&r.collection, &r.name).await?;
        Ok(done(r.collection, "dropped"))
    });
    t.add("index.create", |c: Client, r: CreateIndex| async move {
        c.create_index(&r.collection, &r.name, &r.field, &r.params_json)
            .await?;
        Ok(done(r.collection, "created"))
    });
    t.add("index.drop", |c: Client, r: IndexRef| async move {
        c.drop_index(&r.collection, &r.name).await?;
        Ok(done(r.collection, "dropped"))
    });
    t.add(
        "index.record_build",
        |c: Client, r: RecordBuild| async move {
            c.build_index(
                &r.collection,
                BuildIndex {
                    segment_id: r.segment_id,
                    index: r.index,
                    build_id: r.build_id,
                    files: r.files,
                },
            )
            .await?;
            Ok(done(r.collection, "built"))
        },
    );
    t.add("segment.flush", |c: Client, r: Flush| async move {
        c.flush_segment(
            &r.collection,
            FlushSegment {
                segment_id: r.segment_id,
                partition: r.partition,
                shard: r.shard,
                rows: r.rows,
                files: r.files,
            },
        )
        .await?;
        Ok(done(r.collection, "flushed"))
    });
    t.add("segment.compact", |c: Client, r: Compact| async move {
        c.compact(
            &r.collection,
            CompactSegments {
                segment_ids: r.segment_ids,
                into_segment_id: r.into_segment_id,
                rows: r.rows,
                files: r.files,
            },
        )
        .await?;
        Ok(done(r.collection, "compacted"))
    });
    t.add("segment.drop", |c: Client, r: SegmentRef| async move {
        c.drop_segment(&r.collection, r.segment_id).await?;
        Ok(done(r.collection, "dropped"))
    });
    t.add("id.allocate", |c: Client, _: Empty| async move {
        Ok(Allocated {
            id: c.allocate_id().await?,
        })
    });
}
