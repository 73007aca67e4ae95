//! The domain vocabulary: ids, file references, and per entity its commands and events.
//! One file per entity; the deciders that give them meaning live in `snapvault-actors`.

pub mod catalog;
pub mod claim;
pub mod collection;
pub mod external;
pub mod gc;
pub mod restore;
pub mod snapshot;

use serde::{Deserialize, Serialize};

pub type CollectionId = u64;
pub type PartitionId = u64;
pub type SegmentId = u64;
pub type IndexId = u64;
pub type BuildId = u64;
pub type SnapshotId = u64;
pub type JobId = u64;

/// One object in the object store, as the host reported it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileRef {
    pub key: String,
    pub size: u64,
    pub crc32c: u32,
}

/// Stream names: one stream per entity, `<kind>-<id>`.
/// The object prefix every file of collection `id` lives under (`data/<id>/`): its segments,
/// its fragment lists, a restore's copies into it. A rollback or GC of the collection deletes
/// by it.
pub fn data_prefix(id: CollectionId) -> String {
    format!("data/{id}/")
}

pub fn collection_stream(id: CollectionId) -> String {
    format!("collection-{id}")
}
