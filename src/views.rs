//! What the client returns: plain serialisable views of entity state, shaped for people
//! (tables) and scripts (`--json`, NATS replies). Views are read models; they never go back
//! into the log.

use serde::{Deserialize, Serialize};
use snapvault_actors::collection::CollectionState;
use snapvault_events::domain::FileRef;
use snapvault_events::domain::collection::CollectionStatus;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexView {
    pub id: u64,
    pub name: String,
    pub field: String,
    pub params: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndexView {
    pub index_id: u64,
    pub build_id: u64,
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentView {
    pub id: u64,
    pub partition_id: u64,
    pub partition: String,
    pub shard: u32,
    pub rows: u64,
    pub level: u32,
    pub files: Vec<FileRef>,
    pub indexes: Vec<SegmentIndexView>,
}

/// One line of `collection list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSummary {
    pub id: u64,
    pub name: String,
    pub status: CollectionStatus,
    pub shards: u32,
    pub partitions: usize,
    pub segments: usize,
    pub files: u64,
    pub bytes: u64,
    pub created_ms: u64,
}

/// `collection describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionView {
    pub id: u64,
    pub name: String,
    pub status: CollectionStatus,
    pub restoring_job: Option<u64>,
    pub shards: u32,
    /// The schema exactly as the host gave it.
    pub schema: String,
    pub properties: BTreeMap<String, String>,
    pub created_ms: u64,
    /// Stream version of the collection this view was read at.
    pub version: u64,
    pub partitions: Vec<PartitionView>,
    pub indexes: Vec<IndexView>,
    pub segments: Vec<SegmentView>,
    pub totals: Totals,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub segments: usize,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
}

impl CollectionSummary {
    pub fn of(s: &CollectionState) -> CollectionSummary {
        let (files, bytes) = s.live_file_totals();
        CollectionSummary {
            id: s.collection_id,
            name: s.name.clone(),
            status: s.status.unwrap_or(CollectionStatus::Ready),
            shards: s.shard_count,
            partitions: s.partitions.values().filter(|p| !p.dropped).count(),
            segments: s.segments.len(),
            files,
            bytes,
            created_ms: s.created_ms,
        }
    }
}

impl CollectionView {
    pub fn of(version: u64, s: &CollectionState) -> CollectionView {
        let (files, bytes) = s.live_file_totals();
        let partition_name = |id: u64| {
            s.partitions
                .get(&id)
                .map(|p| p.name.clone())
                .unwrap_or_default()
        };
        CollectionView {
            id: s.collection_id,
            name: s.name.clone(),
            status: s.status.unwrap_or(CollectionStatus::Ready),
            restoring_job: s.restoring_job,
            shards: s.shard_count,
            schema: s.schema_json.clone(),
            properties: s.properties.clone(),
            created_ms: s.created_ms,
            version,
            partitions: s
                .partitions
                .iter()
                .filter(|(_, p)| !p.dropped)
                .map(|(id, p)| PartitionView {
                    id: *id,
                    name: p.name.clone(),
                })
                .collect(),
            indexes: s
                .indexes
                .iter()
                .filter(|(_, i)| !i.dropped)
                .map(|(id, i)| IndexView {
                    id: *id,
                    name: i.name.clone(),
                    field: i.field.clone(),
                    params: serde_json::from_str(&i.params_json).unwrap_or(serde_json::Value::Null),
                })
                .collect(),
            segments: s
                .segments
                .values()
                .map(|seg| SegmentView {
                    id: seg.segment_id,
                    partition_id: seg.partition_id,
                    partition: partition_name(seg.partition_id),
                    shard: seg.shard,
                    rows: seg.rows,
                    level: seg.level,
                    files: seg.files.clone(),
                    indexes: seg
                        .indexes
                        .iter()
                        .map(|i| SegmentIndexView {
                            index_id: i.index_id,
                            build_id: i.build_id,
                            files: i.files.clone(),
                        })
                        .collect(),
                })
                .collect(),
            totals: Totals {
                segments: s.segments.len(),
                files,
                bytes,
                rows: s.segments.values().map(|x| x.rows).sum(),
            },
        }
    }
}

/// Seconds since the Unix epoch as UTC `(year, month, day, hour, minute, second)`, without a
/// date library (Howard Hinnant's days-to-civil conversion). One definition for every place
/// that prints a time (CLI tables, the micro service's `started`).
pub fn civil_utc(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod civil_tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::civil_utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(super::civil_utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(super::civil_utc(1_796_299_199), (2026, 12, 3, 11, 59, 59));
    }
}
