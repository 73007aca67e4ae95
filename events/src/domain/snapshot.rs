//! Snapshot commands and events.
//!
//! A snapshot is born by a pin in its collection's stream (`SnapshotPinned`, which also makes
//! the name unique among the collection's live snapshots and protects the files from that
//! moment on) and then lives in its own stream `snapshot-{id}`:
//! `Pending → Committed → Deleting → Deleted`, or `Pending → Failed → Deleting → Deleted`.

use super::{CollectionId, JobId, SnapshotId};
use crate::codec::DomainEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most labels on one snapshot.
pub const MAX_LABELS: usize = 32;
/// Longest description.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Longest label key or value.
pub const MAX_LABEL_BYTES: usize = 256;

pub fn snapshot_stream(id: SnapshotId) -> String {
    format!("snapshot-{id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    Pending,
    Committed,
    Failed,
    Deleting,
    Deleted,
}

impl SnapshotStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotStatus::Pending => "pending",
            SnapshotStatus::Committed => "committed",
            SnapshotStatus::Failed => "failed",
            SnapshotStatus::Deleting => "deleting",
            SnapshotStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<SnapshotStatus> {
        Some(match s {
            "pending" => SnapshotStatus::Pending,
            "committed" => SnapshotStatus::Committed,
            "failed" => SnapshotStatus::Failed,
            "deleting" => SnapshotStatus::Deleting,
            "deleted" => SnapshotStatus::Deleted,
            _ => return None,
        })
    }
}

/// Sizes of what a snapshot references.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTotals {
    pub segments: u64,
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
}

/// Everything that names a snapshot, kept from the pin to the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotIdentity {
    pub snapshot_id: SnapshotId,
    pub collection_id: CollectionId,
    pub collection_name: String,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotCommand {
    /// Begin the create after the pin at `pinned_version` of the collection stream.
    Start {
        identity: SnapshotIdentity,
        pinned_version: u64,
        pending_timeout_ms: u64,
    },
    /// The manifests are written and verified.
    Commit {
        metadata_key: String,
        metadata_crc32c: u32,
        manifests: u32,
        totals: SnapshotTotals,
    },
    /// The create gave up (timeout or a permanent error).
    Fail {
        reason: String,
    },
    /// Register a snapshot found in the store (copied from another cluster).
    Import {
        identity: SnapshotIdentity,
        prefix: String,
        metadata_key: String,
        metadata_crc32c: u32,
        manifests: u32,
        totals: SnapshotTotals,
        original_created_ms: u64,
    },
    /// Drop: becomes Deleting at once; its manifests are removed next.
    Drop,
    /// The manifests are gone.
    MarkDeleted,
    /// A restore job holds the snapshot (drop refused until released).
    TakeLease {
        job_id: JobId,
    },
    ReleaseLease {
        job_id: JobId,
    },
    /// Claim, renew or release the unfinished create or drop (design §10).
    Claim(super::claim::ClaimCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotEvent {
    Started {
        identity: SnapshotIdentity,
        pinned_version: u64,
        prefix: String,
        created_ms: u64,
        deadline_ms: u64,
    },
    Committed {
        metadata_key: String,
        metadata_crc32c: u32,
        manifests: u32,
        totals: SnapshotTotals,
        committed_ms: u64,
    },
    Failed {
        reason: String,
        failed_ms: u64,
    },
    Imported {
        identity: SnapshotIdentity,
        prefix: String,
        metadata_key: String,
        metadata_crc32c: u32,
        manifests: u32,
        totals: SnapshotTotals,
        created_ms: u64,
        imported_ms: u64,
    },
    DeleteRequested {
        requested_ms: u64,
    },
    Deleted {
        deleted_ms: u64,
    },
    LeaseTaken {
        job_id: JobId,
    },
    LeaseReleased {
        job_id: JobId,
    },
    /// Which node finishes the unfinished create or drop.
    Claim(super::claim::ClaimEvent),
}

impl DomainEvent for SnapshotEvent {
    const SCHEMA_VERSION: u16 = 1;
    fn event_type(&self) -> &'static str {
        match self {
            SnapshotEvent::Started { .. } => "Started",
            SnapshotEvent::Committed { .. } => "Committed",
            SnapshotEvent::Failed { .. } => "Failed",
            SnapshotEvent::Imported { .. } => "Imported",
            SnapshotEvent::DeleteRequested { .. } => "DeleteRequested",
            SnapshotEvent::Deleted { .. } => "Deleted",
            SnapshotEvent::LeaseTaken { .. } => "LeaseTaken",
            SnapshotEvent::LeaseReleased { .. } => "LeaseReleased",
            SnapshotEvent::Claim(c) => c.event_type(),
        }
    }
}
