//! One GC cycle: plan from the ref index, record, delete. The I/O half of GC.
//!
//! Order of a cycle, and why it is safe:
//! 1. Refuse to reclaim anything until the ref index is loaded (caught up to the log head
//!    seen at start): before that, a snapshot's pin may not be known yet.
//! 2. Catch the index up to the current head, then plan. A dropped file can never become
//!    referenced again (a pin captures live files only), so a plan made at head H stays safe.
//! 3. Orphans are re-checked against the index caught up again just before deleting, and only
//!    objects older than the safety window qualify, so a file the host wrote but has not
//!    flushed yet survives.
//! 4. `Reclaiming` (keys, bytes, reason) is appended before the deletes; a crash between the
//!    two is finished by the next cycle.

use crate::gc::ref_index::{Reclaim, RefIndex};
use crate::snapshot::manifest;
use crate::snapshot::worker::{SnapshotWorker, get_object, relocate};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use snapvault_events::codec::encode;
use snapvault_events::domain::SnapshotId;
use snapvault_events::domain::gc::{Amount, GC_STREAM, GcCategory, GcEvent, MAX_KEYS_PER_EVENT};
use snapvault_events::domain::snapshot::SnapshotStatus;
use snapvault_events::{Error, ErrorCode, EventLog, ExpectedVersion, LogError, SharedClock};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// GC limits and windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// A cycle runs this often on its own (0: only on demand).
    pub interval_ms: u64,
    /// Files of dropped segments are kept this long after the drop.
    pub dropped_retention_ms: u64,
    /// An object nothing knows is deleted only when older than this.
    pub orphan_safety_window_ms: u64,
    /// At most this many objects are reclaimed by one cycle.
    pub max_objects_per_cycle: usize,
    /// Prefixes scanned for orphans. Host data outside them is never touched as an orphan.
    pub orphan_prefixes: Vec<String>,
    /// The local store's root directory, when the store is a local filesystem: its staging
    /// files (`<key>#<n>`, which listing the store never shows) under the orphan prefixes are
    /// reclaimed once older than the orphan window. On S3 an unfinished multipart upload is
    /// reclaimed by the bucket's `AbortIncompleteMultipartUpload` lifecycle rule.
    pub staging_root: Option<std::path::PathBuf>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_ms: 10 * 60 * 1000,
            dropped_retention_ms: 24 * 3600 * 1000,
            orphan_safety_window_ms: 24 * 3600 * 1000,
            max_objects_per_cycle: 100_000,
            orphan_prefixes: vec!["data/".into(), "snapshots/".into()],
            staging_root: None,
        }
    }
}

/// Per-run overrides (`gc run --dry-run --dropped-retention 0s --orphan-window 0s`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRunOptions {
    pub dry_run: bool,
    pub dropped_retention_ms: Option<u64>,
    pub orphan_window_ms: Option<u64>,
}

/// What a cycle did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub cycle: u64,
    pub dry_run: bool,
    pub loaded: bool,
    /// Why nothing was reclaimed, when the index was not loaded.
    pub not_loaded_reason: Option<String>,
    pub reclaimed: BTreeMap<GcCategory, Amount>,
    /// With `dry_run`: the keys, per category.
    pub keys: BTreeMap<GcCategory, Vec<String>>,
    /// The cycle stopped at `max_objects_per_cycle`; more remains.
    pub truncated: bool,
    pub started_ms: u64,
    pub finished_ms: u64,
}

impl GcReport {
    pub fn total(&self) -> Amount {
        let mut t = Amount::default();
        for a in self.reclaimed.values() {
            t.objects += a.objects;
            t.bytes += a.bytes;
        }
        t
    }
}

/// What the sweeper needs.
#[derive(Clone)]
pub struct SweepContext {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ObjectStore>,
    pub clock: SharedClock,
    pub snapshots: SnapshotWorker,
    pub config: GcConfig,
    /// This node's id and claim timings: a cycle holds the GC singleton claim.
    pub work: crate::work::WorkConfig,
}

fn store_err(what: &str, e: object_store::Error) -> Error {
    Error::unavailable(format!("object store error while {what}: {e}"))
}

/// Every object under `prefix` with size and age.
async fn list(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<(String, u64, i64)>, Error> {
    let p = Path::from(prefix.trim_end_matches('/'));
    store
        .list(Some(&p))
        .map_ok(|m| {
            (
                m.location.to_string(),
                m.size,
                m.last_modified.timestamp_millis(),
            )
        })
        .try_collect()
        .await
        .map_err(|e| store_err(&format!("listing '{prefix}'"), e))
}

/// Is `name` a staging file name of the local store (`<name>#<digits>`)?
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(base, n)| {
        !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Staging files under `root/prefix`: (key relative to `root`, size, modified ms).
fn staging_files(root: &std::path::Path, prefix: &str) -> Vec<(String, u64, i64)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join(prefix.trim_end_matches('/'))];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_staging_name(&name) {
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            out.push((
                relative.to_string_lossy().into_owned(),
                meta.len(),
                modified_ms,
            ));
        }
    }
    out.sort();
    out
}

/// Read the file keys of a committed imported snapshot from its manifests.
async fn imported_keys(
    store: &dyn ObjectStore,
    s: &crate::snapshot::SnapshotState,
) -> Result<BTreeSet<String>, Error> {
    let bytes = get_object(store, &s.metadata_key).await?;
    let meta = manifest::decode_metadata(&bytes)?;
    let mut keys = BTreeSet::new();
    // The snapshot's own objects are protected too.
    keys.insert(s.metadata_key.clone());
    for m in &meta.manifests {
        let key = relocate(&s.prefix, &m.key)?;
        let data = get_object(store, &key).await?;
        keys.insert(key);
        for seg in manifest::decode_manifest(&data)? {
            for f in seg.all_files() {
                keys.insert(f.key.clone());
            }
        }
    }
    Ok(keys)
}

/// The sweeper's memory between cycles.
#[derive(Default)]
pub struct SweepState {
    /// Keys protected by imported snapshots, by snapshot id (read once).
    imported: BTreeMap<SnapshotId, BTreeSet<String>>,
}

/// Why the ref index stopped short of the log (a record it cannot read), if it did.
pub type StoppedCheck<'a> = &'a (dyn Fn() -> Option<String> + Send + Sync);

/// Wait until `index` has applied the log up to `head`; `unavailable` at once when the index
/// stopped at a record it cannot read (`stopped`): it would never get there.
pub async fn catch_up(
    index: &Mutex<RefIndex>,
    applied_rx: &mut tokio::sync::watch::Receiver<u64>,
    head: u64,
    stopped: StoppedCheck<'_>,
) -> Result<(), Error> {
    loop {
        let applied = index.lock().unwrap_or_else(|p| p.into_inner()).applied();
        if applied >= head {
            return Ok(());
        }
        if let Some(why) = stopped() {
            return Err(Error::unavailable(format!(
                "the GC ref index cannot catch up with the log: {why}"
            )));
        }
        if applied_rx.changed().await.is_err() {
            return Err(Error::unavailable(
                "the GC ref index stopped while catching up; it is being restarted",
            ));
        }
    }
}

impl SweepContext {
    /// Run one cycle. `index` must be loaded (the caller checks and reports otherwise).
    pub async fn cycle(
        &self,
        index: &Mutex<RefIndex>,
        applied_rx: &mut tokio::sync::watch::Receiver<u64>,
        state: &mut SweepState,
        options: &GcRunOptions,
        stopped: StoppedCheck<'_>,
    ) -> Result<GcReport, Error> {
        let started_ms = self.clock.now_ms();
        let retention = options
            .dropped_retention_ms
            .unwrap_or(self.config.dropped_retention_ms);
        let window = options
            .orphan_window_ms
            .unwrap_or(self.config.orphan_safety_window_ms);
        let limit = self.config.max_objects_per_cycle.max(1);
        let head = self.log.head().await?;
        catch_up(index, applied_rx, head, stopped).await?;

        // Plan from the index (one lock, no I/O under it).
        let (dropped, to_clean, restore_prefixes, imported, redo, redo_cycles, cycle) = {
            let ix = index.lock().unwrap_or_else(|p| p.into_inner());
            (
                ix.plan_dropped(started_ms, retention, limit),
                ix.snapshots_to_clean(),
                ix.failed_restore_prefixes(),
                ix.live_imported_snapshots(),
                ix.reclaimed_keys().map(str::to_string).collect::<Vec<_>>(),
                ix.unfinished_cycles(),
                ix.last_cycle() + 1,
            )
        };
        // Imported snapshots protect what their manifests list.
        let live_imports: BTreeSet<SnapshotId> = imported.iter().map(|s| s.snapshot_id()).collect();
        state.imported.retain(|id, _| live_imports.contains(id));
        for s in &imported {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                state.imported.entry(s.snapshot_id())
            {
                slot.insert(imported_keys(&*self.store, s).await?);
            }
        }
        let import_protected = |key: &str| state.imported.values().any(|k| k.contains(key));

        let mut plan: Vec<Reclaim> = Vec::new();
        let mut claimed: BTreeSet<String> = BTreeSet::new();
        let mut deleting_snapshots = Vec::new();
        for r in dropped {
            if !import_protected(&r.key) && claimed.insert(r.key.clone()) {
                plan.push(r);
            }
        }
        for (id, status, prefix, imported) in to_clean {
            if imported || prefix.is_empty() {
                if status == SnapshotStatus::Deleting {
                    deleting_snapshots.push(id);
                }
                continue;
            }
            let (category, reason) = match status {
                SnapshotStatus::Deleting => {
                    deleting_snapshots.push(id);
                    (
                        GcCategory::SnapshotManifests,
                        format!("snapshot {id} was dropped"),
                    )
                }
                _ => (
                    GcCategory::FailedSnapshotManifests,
                    format!("snapshot {id} failed; partial manifests"),
                ),
            };
            for (key, size, _) in list(&*self.store, &format!("{prefix}/")).await? {
                if claimed.insert(key.clone()) {
                    plan.push(Reclaim {
                        category,
                        key,
                        bytes: size,
                        reason: reason.clone(),
                    });
                }
            }
        }
        for prefix in restore_prefixes {
            for (key, size, _) in list(&*self.store, &prefix).await? {
                let protected = index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_protected(&key);
                if !protected && !import_protected(&key) && claimed.insert(key.clone()) {
                    plan.push(Reclaim {
                        category: GcCategory::RestoreLeftovers,
                        key,
                        bytes: size,
                        reason: format!("left by a failed or cancelled restore into {prefix}"),
                    });
                }
            }
        }
        // Orphans: list, then judge against the index caught up *after* the listing.
        let mut listed = Vec::new();
        for prefix in &self.config.orphan_prefixes {
            listed.extend(list(&*self.store, prefix).await?);
        }
        let head = self.log.head().await?;
        catch_up(index, applied_rx, head, stopped).await?;
        {
            let ix = index.lock().unwrap_or_else(|p| p.into_inner());
            for (key, size, modified_ms) in listed {
                let age_ms = (started_ms as i64).saturating_sub(modified_ms);
                if age_ms >= window as i64
                    && !ix.is_known(&key)
                    && !ix.is_protected(&key)
                    && !import_protected(&key)
                    && claimed.insert(key.clone())
                {
                    plan.push(Reclaim {
                        category: GcCategory::Orphans,
                        key,
                        bytes: size,
                        reason: format!(
                            "known to nothing and {} s old (window {} s)",
                            age_ms / 1000,
                            window / 1000
                        ),
                    });
                }
            }
        }
        // Staging files of the local store: never objects, so only their age matters.
        if let Some(root) = self.config.staging_root.clone() {
            let prefixes = self.config.orphan_prefixes.clone();
            let found = tokio::task::spawn_blocking(move || {
                prefixes
                    .iter()
                    .flat_map(|p| staging_files(&root, p))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| Error::unavailable(format!("listing staging files failed: {e}")))?;
            for (key, size, modified_ms) in found {
                let age_ms = (started_ms as i64).saturating_sub(modified_ms);
                if age_ms >= window as i64 && claimed.insert(key.clone()) {
                    plan.push(Reclaim {
                        category: GcCategory::Staging,
                        key,
                        bytes: size,
                        reason: format!(
                            "a staging file a cut-short write left, {} s old (window {} s)",
                            age_ms / 1000,
                            window / 1000
                        ),
                    });
                }
            }
        }
        let truncated = plan.len() > limit;
        plan.truncate(limit);

        let mut report = GcReport {
            cycle,
            dry_run: options.dry_run,
            loaded: true,
            truncated,
            started_ms,
            ..GcReport::default()
        };
        for r in &plan {
            let a = report.reclaimed.entry(r.category).or_default();
            a.objects += 1;
            a.bytes += r.bytes;
            if options.dry_run {
                report
                    .keys
                    .entry(r.category)
                    .or_default()
                    .push(r.key.clone());
            }
        }
        if options.dry_run {
            report.finished_ms = self.clock.now_ms();
            return Ok(report);
        }

        // Finish a previous cycle that died between its record and its deletes.
        for key in redo {
            self.delete(&key).await?;
        }
        for old in redo_cycles {
            self.record(GcEvent::CycleFinished {
                cycle: old,
                reclaimed: BTreeMap::new(),
            })
            .await?;
        }
        if plan.is_empty() && deleting_snapshots.is_empty() {
            report.finished_ms = self.clock.now_ms();
            return Ok(report);
        }
        self.record(GcEvent::CycleStarted { cycle, head }).await?;
        let mut by_category: BTreeMap<GcCategory, Vec<&Reclaim>> = BTreeMap::new();
        for r in &plan {
            by_category.entry(r.category).or_default().push(r);
        }
        for (category, items) in by_category {
            for chunk in items.chunks(MAX_KEYS_PER_EVENT) {
                self.record(GcEvent::Reclaiming {
                    cycle,
                    category,
                    keys: chunk.iter().map(|r| r.key.clone()).collect(),
                    bytes: chunk.iter().map(|r| r.bytes).sum(),
                    reason: chunk[0].reason.clone(),
                })
                .await?;
                crate::crash_points::crash_point("gc.after_record");
                for r in chunk {
                    self.delete(&r.key).await?;
                }
            }
        }
        // Dropped snapshots become Deleted once their manifests are gone.
        for id in deleting_snapshots {
            self.snapshots.run_delete(id).await?;
        }
        self.record(GcEvent::CycleFinished {
            cycle,
            reclaimed: report.reclaimed.clone(),
        })
        .await?;
        report.finished_ms = self.clock.now_ms();
        Ok(report)
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        // A staging file is not an object: remove it from the filesystem.
        if let Some(root) = &self.config.staging_root
            && key.rsplit('/').next().is_some_and(is_staging_name)
        {
            return match std::fs::remove_file(root.join(key)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::unavailable(format!(
                    "deleting staging file '{key}': {e}"
                ))),
            };
        }
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&format!("deleting '{key}'"), e)),
        }
    }

    /// Append to the GC stream. One sweeper writes it at a time; `Any` is enough, and a
    /// conflict cannot happen. An ambiguous failure is surfaced (the cycle stops; the next one
    /// re-plans from the log).
    async fn record(&self, event: GcEvent) -> Result<(), Error> {
        let new = encode(&event)?;
        match self
            .log
            .append(GC_STREAM, ExpectedVersion::Any, vec![new])
            .await
        {
            Ok(_) => Ok(()),
            Err(LogError::Conflict { .. }) => Err(Error::new(
                ErrorCode::Conflict,
                "another GC wrote the GC stream at the same time",
            )),
            Err(e) => Err(e.into()),
        }
    }
}
