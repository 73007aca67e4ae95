//! Ops of external collections: `external.create | alter | refresh | task | wait | status |
//! cancel`. A refresh runs on the service's node; `external.wait` blocks at most
//! `timeout_ms` (capped at 30 s) and answers the task as it is then.

use super::OpTable;
use super::restore::MAX_WAIT_MS;
use crate::Client;
use crate::client::CreateCollectionRequest;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `external.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateExternal {
    pub collection: CreateCollectionRequest,
    pub source: String,
    /// The spec's defaults when missing (as the CLI without `--external-spec`).
    #[serde(default = "default_spec")]
    pub spec_json: String,
}

/// The spec of every default: Parquet, all columns, the default segment size.
pub fn default_spec() -> String {
    r#"{"format":"parquet"}"#.to_string()
}

/// `external.alter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterExternal {
    pub collection: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub spec_json: Option<String>,
}

/// A request naming one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionRef {
    pub collection: String,
}

/// A request naming one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    pub task: u64,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

pub fn register(t: &mut OpTable) {
    t.add(
        "external.create",
        |c: Client, r: CreateExternal| async move {
            c.create_external_collection(r.collection, &r.source, &r.spec_json)
                .await
        },
    );
    t.add("external.alter", |c: Client, r: AlterExternal| async move {
        c.alter_external(&r.collection, r.source.as_deref(), r.spec_json.as_deref())
            .await
    });
    t.add(
        "external.refresh",
        |c: Client, r: CollectionRef| async move { c.refresh_external(&r.collection).await },
    );
    t.add("external.task", |c: Client, r: TaskRef| async move {
        c.external_task(r.task).await
    });
    t.add("external.wait", |c: Client, r: TaskRef| async move {
        let timeout = Duration::from_millis(r.timeout_ms.unwrap_or(10_000).min(MAX_WAIT_MS));
        match c.wait_external_task(r.task, timeout).await {
            Ok(v) => Ok(v),
            // Still running after the timeout: answer how it stands, not an error.
            Err(e) if e.code == snapvault_events::ErrorCode::Unavailable => {
                c.external_task(r.task).await
            }
            Err(e) => Err(e),
        }
    });
    t.add(
        "external.status",
        |c: Client, r: CollectionRef| async move { c.external_status(&r.collection).await },
    );
    t.add(
        "external.cancel",
        |c: Client, r: CollectionRef| async move { c.cancel_external(&r.collection).await },
    );
}
