//! Ops of restore jobs: `restore.start | status | list | cancel | wait | segments`.
//!
//! `restore.start` answers at once with the job (Pending); the job runs on the service's node.
//! `restore.wait` blocks at most `timeout_ms` (capped at [`MAX_WAIT_MS`]) and answers the job
//! as it is then: a client that wants to wait longer asks again (the remote CLI does).

use super::OpTable;
use crate::Client;
use crate::restores::StartRestoreRequest;
use serde::{Deserialize, Serialize};
use snapvault_events::domain::restore::RestoreStatus;
use std::time::Duration;

/// Longest one `restore.wait` (or `external.wait`) request blocks.
pub const MAX_WAIT_MS: u64 = 30_000;

/// A request naming one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub job: u64,
}

/// `restore.list`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRestores {
    #[serde(default)]
    pub status: Option<RestoreStatus>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub page_token: Option<u64>,
}

/// `restore.wait`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRestore {
    pub job: u64,
    /// How long to block at most (capped at 30 s; default 10 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

pub fn register(t: &mut OpTable) {
    t.add(
        "restore.start",
        |c: Client, r: StartRestoreRequest| async move { c.start_restore(r).await },
    );
    t.add("restore.status", |c: Client, r: JobRef| async move {
        c.restore_status(r.job).await
    });
    t.add("restore.list", |c: Client, r: ListRestores| async move {
        c.list_restores(r.status, r.limit, r.page_token).await
    });
    t.add("restore.cancel", |c: Client, r: JobRef| async move {
        c.cancel_restore(r.job).await
    });
    t.add("restore.wait", |c: Client, r: WaitRestore| async move {
        let timeout = Duration::from_millis(r.timeout_ms.unwrap_or(10_000).min(MAX_WAIT_MS));
        match c
            .wait_restore(r.job, Duration::from_millis(100), Some(timeout), |_| {})
            .await
        {
            Ok(v) => Ok(v),
            // Still running after the timeout: answer how it stands, not an error.
            Err(e) if e.code == snapvault_events::ErrorCode::Unavailable => {
                c.restore_status(r.job).await
            }
            Err(e) => Err(e),
        }
    });
    t.add("restore.segments", |c: Client, r: JobRef| async move {
        c.restore_segments(r.job).await
    });
}
