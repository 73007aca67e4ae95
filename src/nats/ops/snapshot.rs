//! Ops of snapshots: `snapshot.create | list | describe | drop | verify | import`.
//! (Restore ops — `restore.start | status | list | cancel | wait` — go in their own file,
//! `restore.rs`, registered from `OpTable::standard`.)

use super::OpTable;
use crate::Client;
use crate::snapshots::{CreateSnapshotRequest, ListSnapshotsRequest};
use serde::{Deserialize, Serialize};
use snapvault_events::domain::snapshot::SnapshotStatus;
use std::collections::BTreeMap;

/// `snapshot.create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    pub collection: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `snapshot.list`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSnapshots {
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub status: Option<SnapshotStatus>,
    /// `[key, value]`.
    #[serde(default)]
    pub label: Option<(String, String)>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub page_token: Option<u64>,
}

/// A request naming one snapshot of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub collection: String,
    pub name: String,
}

/// `snapshot.import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    pub prefix: String,
}

pub fn register(t: &mut OpTable) {
    t.add(
        "snapshot.create",
        |c: Client, r: CreateSnapshot| async move {
            c.create_snapshot(CreateSnapshotRequest {
                collection: r.collection,
                name: r.name,
                description: r.description,
                labels: r.labels,
            })
            .await
        },
    );
    t.add("snapshot.list", |c: Client, r: ListSnapshots| async move {
        c.list_snapshots(ListSnapshotsRequest {
            collection: r.collection,
            status: r.status,
            label: r.label,
            limit: r.limit,
            page_token: r.page_token,
        })
        .await
    });
    t.add("snapshot.describe", |c: Client, r: SnapshotRef| async move {
        c.describe_snapshot(&r.collection, &r.name).await
    });
    t.add("snapshot.drop", |c: Client, r: SnapshotRef| async move {
        c.drop_snapshot(&r.collection, &r.name).await
    });
    t.add("snapshot.verify", |c: Client, r: SnapshotRef| async move {
        c.verify_snapshot(&r.collection, &r.name).await
    });
    t.add("snapshot.import", |c: Client, r: Import| async move {
        c.import_snapshot(&r.prefix).await
    });
}
