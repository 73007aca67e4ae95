//! Ops of garbage collection: `gc.run`, `gc.status`.

use super::OpTable;
use crate::Client;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The longest an op waits for the GC ref index to load.
pub const MAX_LOAD_WAIT_MS: u64 = 600_000;

/// `gc.run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub dropped_retention_ms: Option<u64>,
    #[serde(default)]
    pub orphan_window_ms: Option<u64>,
    /// Wait up to this long for the ref index to load first (default 0: report "not
    /// loaded" at once).
    #[serde(default)]
    pub wait_loaded_ms: u64,
}

/// `gc.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub wait_loaded_ms: u64,
}

fn wait(ms: u64) -> Duration {
    Duration::from_millis(ms.min(MAX_LOAD_WAIT_MS))
}

pub fn register(t: &mut OpTable) {
    t.add("gc.run", |c: Client, r: Run| async move {
        if r.wait_loaded_ms > 0 {
            let _ = c.gc_wait_loaded(wait(r.wait_loaded_ms)).await;
        }
        c.gc_run(snapvault_actors::gc::GcRunOptions {
            dry_run: r.dry_run,
            dropped_retention_ms: r.dropped_retention_ms,
            orphan_window_ms: r.orphan_window_ms,
        })
        .await
    });
    t.add("gc.status", |c: Client, r: Status| async move {
        if r.wait_loaded_ms > 0 {
            let _ = c.gc_wait_loaded(wait(r.wait_loaded_ms)).await;
        }
        Ok(c.gc_status())
    });
}
