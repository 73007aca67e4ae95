//! GC events: the audit trail of every reclaimed object, written *before* the delete.
//!
//! A cycle appends `Reclaiming` (category, keys, bytes, reason) and then deletes those keys.
//! If the process dies in between, the keys stay marked as reclaiming in the ref index and the
//! next cycle deletes them again (deleting a missing object is not an error), so a crash
//! mid-sweep never leaves a reclaimed object behind and never loses the record of one.

use crate::codec::DomainEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GC_STREAM: &str = "gc";
/// Who runs the GC cycle now (design §10): a singleton claim, one cycle at a time over every
/// node on the log.
pub const GC_CLAIM_STREAM: &str = "gc-claim";
/// Most keys in one `Reclaiming` event (keeps it far below the 64 KiB event limit).
pub const MAX_KEYS_PER_EVENT: usize = 200;

/// Why an object is reclaimed. Stable names: they appear in reports and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcCategory {
    /// Files of segments dropped (compacted away, dropped, index rebuilt) longer ago than the
    /// retention and referenced by no snapshot.
    DroppedFiles,
    /// Manifests of snapshots being dropped.
    SnapshotManifests,
    /// Partial manifests of snapshots whose create failed.
    FailedSnapshotManifests,
    /// Objects of restores that failed or were cancelled.
    RestoreLeftovers,
    /// Objects under a data prefix that nothing knows, older than the safety window.
    Orphans,
    /// Staging files of the local store (`<key>#<n>`: a write a crash cut short), older than
    /// the safety window. No object key names them; they are never read.
    Staging,
}

impl GcCategory {
    pub const ALL: [GcCategory; 6] = [
        GcCategory::DroppedFiles,
        GcCategory::SnapshotManifests,
        GcCategory::FailedSnapshotManifests,
        GcCategory::RestoreLeftovers,
        GcCategory::Orphans,
        GcCategory::Staging,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GcCategory::DroppedFiles => "dropped_files",
            GcCategory::SnapshotManifests => "snapshot_manifests",
            GcCategory::FailedSnapshotManifests => "failed_snapshot_manifests",
            GcCategory::RestoreLeftovers => "restore_leftovers",
            GcCategory::Orphans => "orphans",
            GcCategory::Staging => "staging",
        }
    }
}

/// Objects and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcEvent {
    CycleStarted {
        cycle: u64,
        /// Log head the ref index had applied when the cycle planned.
        head: u64,
    },
    /// These keys are about to be deleted.
    Reclaiming {
        cycle: u64,
        category: GcCategory,
        keys: Vec<String>,
        bytes: u64,
        reason: String,
    },
    CycleFinished {
        cycle: u64,
        reclaimed: BTreeMap<GcCategory, Amount>,
    },
}

impl DomainEvent for GcEvent {
    const SCHEMA_VERSION: u16 = 1;
    fn event_type(&self) -> &'static str {
        match self {
            GcEvent::CycleStarted { .. } => "CycleStarted",
            GcEvent::Reclaiming { .. } => "Reclaiming",
            GcEvent::CycleFinished { .. } => "CycleFinished",
        }
    }
}
