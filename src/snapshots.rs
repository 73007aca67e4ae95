//! Snapshot operations of the client: create, drop, list, describe, verify, import, and the
//! resume of unfinished snapshot work at start.
//!
//! Create is two steps on two entities, each crash-safe:
//! 1. pin the cut in the collection's stream (`SnapshotPinned`): the name is taken and the
//!    files are protected from this event on;
//! 2. start the snapshot entity at that version, then the worker writes and verifies the
//!    manifests and commits (or fails after the pending timeout, releasing the pin).
//!
//! A crash between 1 and 2 leaves an orphan pin, which the resume at the next start turns into
//! a snapshot and finishes, so no name is ever taken forever.

use crate::client::Client;
use serde::{Deserialize, Serialize};
use snapvault_actors::claim_holder::{Attempt, ClaimHolder, try_claim};
use snapvault_actors::collection::{Collection, check_snapshot_labels};
use snapvault_actors::crash_points::crash_point;
use snapvault_actors::snapshot::manifest::{self, IndexMeta, PartitionMeta};
use snapvault_actors::snapshot::worker::VerifyReport;
use snapvault_actors::snapshot::{Snapshot, SnapshotState};
use snapvault_events::domain::collection::CollectionCommand;
use snapvault_events::domain::snapshot::{
    SnapshotCommand, SnapshotIdentity, SnapshotStatus, SnapshotTotals, snapshot_stream,
};
use snapvault_events::domain::{SnapshotId, collection_stream};
use snapvault_events::validate::{validate_name, validate_object_key};
use snapvault_events::{Error, ErrorCode};
use std::collections::BTreeMap;

/// Most snapshots one list page returns.
pub const MAX_LIST_PAGE: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshotRequest {
    pub collection: String,
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSnapshotsRequest {
    /// Only snapshots of the collection with this name.
    pub collection: Option<String>,
    /// Only snapshots in this state; without it, Deleting and Deleted ones are hidden.
    pub status: Option<SnapshotStatus>,
    /// Only snapshots carrying this label (key, value).
    pub label: Option<(String, String)>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Continue after this token (from the previous page's `next_page_token`).
    pub page_token: Option<u64>,
}

/// One snapshot, as `describe` and `list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub id: SnapshotId,
    pub name: String,
    pub collection_name: String,
    pub collection_id: u64,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub status: SnapshotStatus,
    pub created_ms: u64,
    pub committed_ms: Option<u64>,
    pub failure: Option<String>,
    pub imported: bool,
    /// Restore jobs holding the snapshot.
    pub leases: Vec<u64>,
    pub totals: SnapshotTotals,
    /// Where `snapshot.json` and the manifests are.
    pub location: String,
    pub manifests: u32,
    pub pinned_version: u64,
    /// Only in `describe` of a committed snapshot (read from `snapshot.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionMeta>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexes: Option<Vec<IndexMeta>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPage {
    pub snapshots: Vec<SnapshotView>,
    pub next_page_token: Option<u64>,
}

/// What the resume at start did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeReport {
    pub creates_resumed: usize,
    pub drops_resumed: usize,
    pub pins_released: usize,
    pub orphan_pins_adopted: usize,
}

impl SnapshotView {
    pub fn of(s: &SnapshotState) -> Option<SnapshotView> {
        let i = s.identity.as_ref()?;
        Some(SnapshotView {
            id: i.snapshot_id,
            name: i.name.clone(),
            collection_name: i.collection_name.clone(),
            collection_id: i.collection_id,
            description: i.description.clone(),
            labels: i.labels.clone(),
            status: s.status?,
            created_ms: s.created_ms,
            committed_ms: s.committed_ms,
            failure: s.failure.clone(),
            imported: s.imported,
            leases: s.leases.iter().copied().collect(),
            totals: s.totals,
            location: s.prefix.clone(),
            manifests: s.manifests,
            pinned_version: s.pinned_version,
            format_version: None,
            partitions: None,
            indexes: None,
        })
    }
}

fn not_found(collection: &str, name: &str) -> Error {
    Error::not_found(format!(
        "snapshot '{name}' of collection '{collection}' not found"
    ))
}

impl Client {
    async fn snapshot_state(&self, id: SnapshotId) -> Result<SnapshotState, Error> {
        self.registry
            .inspect::<Snapshot, _>(&snapshot_stream(id), |_, s| s.clone())
            .await
    }

    /// Find a live snapshot by collection and snapshot name.
    pub async fn find_snapshot(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<SnapshotState, Error> {
        validate_name("collection name", collection)?;
        validate_name("snapshot name", name)?;
        let found = self.snapshots.find(collection, name).await?;
        let id = found
            .map(|s| s.snapshot_id())
            .ok_or_else(|| not_found(collection, name))?;
        // The entity is the truth; the index may be a moment behind another writer.
        self.snapshot_state(id).await
    }

    /// Create a snapshot and wait until it is committed.
    pub async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<SnapshotView, Error> {
        validate_name("collection name", &req.collection)?;
        validate_name("snapshot name", &req.name)?;
        check_snapshot_labels(&req.description, &req.labels)?;
        let collection_id = self.collection_id(&req.collection).await?;
        let snapshot_id = self.ids.next_id().await?;
        let pinned = self
            .run(
                collection_id,
                CollectionCommand::PinSnapshot {
                    snapshot_id,
                    name: req.name.clone(),
                    description: req.description.clone(),
                    labels: req.labels.clone(),
                },
            )
            .await
            .map_err(|e| {
                if e.message == "collection not found" {
                    Error::not_found(format!("collection '{}' not found", req.collection))
                } else {
                    e
                }
            })?;
        crash_point("snapshot.after_pin");
        let identity = SnapshotIdentity {
            snapshot_id,
            collection_id,
            collection_name: req.collection.clone(),
            name: req.name.clone(),
            description: req.description.clone(),
            labels: req.labels.clone(),
        };
        self.start_and_finish(identity, pinned.version).await
    }

    async fn start_and_finish(
        &self,
        identity: SnapshotIdentity,
        pinned_version: u64,
    ) -> Result<SnapshotView, Error> {
        let snapshot_id = identity.snapshot_id;
        self.registry
            .execute::<Snapshot>(
                &snapshot_stream(snapshot_id),
                SnapshotCommand::Start {
                    identity,
                    pinned_version,
                    pending_timeout_ms: self.snapshot_worker.config.pending_timeout_ms,
                },
                snapshot_id,
            )
            .await?;
        crash_point("snapshot.after_start");
        // Claimed (and renewed) while it runs, so no reconciler starts the same create
        // elsewhere; the claim ends with the create (committed or failed) or lapses if this
        // process dies.
        let _claim = self.claim_snapshot(snapshot_id).await?;
        let s = self.snapshot_worker.run_create(snapshot_id).await?;
        if s.status == Some(SnapshotStatus::Failed) {
            return Err(Error::unavailable(format!(
                "snapshot create failed: {}",
                s.failure.unwrap_or_default()
            )));
        }
        SnapshotView::of(&s).ok_or_else(|| Error::internal("snapshot vanished"))
    }

    /// Drop a snapshot: Deleting at once, then its manifests are removed and it is Deleted.
    /// Refused while a restore job holds it.
    pub async fn drop_snapshot(&self, collection: &str, name: &str) -> Result<SnapshotView, Error> {
        let s = self.find_snapshot(collection, name).await?;
        let id = s.snapshot_id();
        self.registry
            .execute::<Snapshot>(&snapshot_stream(id), SnapshotCommand::Drop, id)
            .await?;
        crash_point("snapshot.after_drop_requested");
        let _claim = self.claim_snapshot(id).await?;
        let s = self.snapshot_worker.run_delete(id).await?;
        SnapshotView::of(&s).ok_or_else(|| Error::internal("snapshot vanished"))
    }

    /// Snapshots, newest first, filtered and paged.
    pub async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<SnapshotPage, Error> {
        if let Some(c) = &req.collection {
            validate_name("collection name", c)?;
        }
        let limit = req.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_LIST_PAGE {
            return Err(Error::invalid_argument(format!(
                "page size must be 1..={MAX_LIST_PAGE}, got {limit}"
            )));
        }
        let all = self.snapshots.all().await?;
        let mut out = Vec::new();
        let mut next_page_token = None;
        for s in all {
            let Some(view) = SnapshotView::of(&s) else {
                continue;
            };
            if req.page_token.is_some_and(|t| view.id >= t) {
                continue;
            }
            if req
                .collection
                .as_ref()
                .is_some_and(|c| c != &view.collection_name)
            {
                continue;
            }
            match req.status {
                Some(st) if st != view.status => continue,
                None if matches!(
                    view.status,
                    SnapshotStatus::Deleting | SnapshotStatus::Deleted
                ) =>
                {
                    continue;
                }
                _ => {}
            }
            if let Some((k, v)) = &req.label
                && view.labels.get(k) != Some(v)
            {
                continue;
            }
            if out.len() == limit {
                next_page_token = out.last().map(|v: &SnapshotView| v.id);
                break;
            }
            out.push(view);
        }
        Ok(SnapshotPage {
            snapshots: out,
            next_page_token,
        })
    }

    /// Everything about one snapshot, with its partitions and indexes when committed.
    pub async fn describe_snapshot(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<SnapshotView, Error> {
        let s = self.find_snapshot(collection, name).await?;
        let mut view = SnapshotView::of(&s).ok_or_else(|| not_found(collection, name))?;
        if s.status == Some(SnapshotStatus::Committed) {
            let meta = self.snapshot_worker.load_metadata(&s).await?;
            view.format_version = Some(meta.format_version);
            view.partitions = Some(meta.partitions);
            view.indexes = Some(meta.indexes);
        }
        Ok(view)
    }

    /// Check every object a committed snapshot references: present, right size and crc32c.
    pub async fn verify_snapshot(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<VerifyReport, Error> {
        let s = self.find_snapshot(collection, name).await?;
        if s.status != Some(SnapshotStatus::Committed) {
            return Err(Error::failed_precondition(format!(
                "snapshot '{name}' of collection '{collection}' is {}; only a committed snapshot can be verified",
                s.status.map_or("unknown", |x| x.as_str())
            )));
        }
        self.snapshot_worker.verify(&s).await
    }

    /// Register a snapshot found under `prefix` of the node's store (its `snapshot.json` and
    /// manifests, e.g. copied from another cluster) so it can be described and restored here.
    pub async fn import_snapshot(&self, prefix: &str) -> Result<SnapshotView, Error> {
        let prefix = prefix.trim_end_matches('/');
        validate_object_key("import prefix", prefix)?;
        let metadata_key = format!("{prefix}/snapshot.json");
        let bytes = snapvault_actors::snapshot::worker::get_object(&**self.store(), &metadata_key)
            .await
            .map_err(|e| {
                if e.code == ErrorCode::NotFound {
                    Error::not_found(format!("no snapshot.json under '{prefix}'"))
                } else {
                    e
                }
            })?;
        let meta = manifest::decode_metadata(&bytes)?;
        validate_name("snapshot name", &meta.name)?;
        validate_name("collection name", &meta.collection_name)?;
        let mut totals = SnapshotTotals::default();
        for m in &meta.manifests {
            let key = snapvault_actors::snapshot::worker::relocate(prefix, &m.key)?;
            let data =
                snapvault_actors::snapshot::worker::get_object(&**self.store(), &key).await?;
            if data.len() as u64 != m.size || crc32c::crc32c(&data) != m.crc32c {
                return Err(Error::invalid_argument(format!(
                    "manifest '{key}' does not match the size and checksum in snapshot.json"
                )));
            }
            // The manifest must be this snapshot's, at the index its name says.
            let (header_snapshot, header_index) = manifest::manifest_identity(&data)?;
            let named_index = key
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_prefix("manifest-"))
                .and_then(|n| n.strip_suffix(".avro"))
                .and_then(|n| n.parse::<u64>().ok());
            if header_snapshot != meta.snapshot_id || Some(header_index) != named_index {
                return Err(Error::invalid_argument(format!(
                    "manifest '{key}' belongs to snapshot {header_snapshot} (manifest {header_index}), not to snapshot {} of snapshot.json under '{prefix}'",
                    meta.snapshot_id
                )));
            }
            for seg in manifest::decode_manifest(&data)? {
                totals.segments += 1;
                totals.rows += seg.rows;
                for f in seg.all_files() {
                    // A restore copies from these keys: each must be a clean relative key of
                    // this store, never one that climbs out of it.
                    validate_object_key("file key in manifest", &f.key).map_err(|e| {
                        Error::invalid_argument(format!("manifest '{key}': {}", e.message))
                    })?;
                    totals.files += 1;
                    totals.bytes += f.size;
                }
            }
        }
        if totals.segments != meta.totals.segments || totals.files != meta.totals.files {
            return Err(Error::invalid_argument(format!(
                "snapshot.json under '{prefix}' says {} segments and {} files but its manifests hold {} and {}",
                meta.totals.segments, meta.totals.files, totals.segments, totals.files
            )));
        }
        if self
            .snapshots
            .find(&meta.collection_name, &meta.name)
            .await?
            .is_some()
        {
            return Err(Error::already_exists(format!(
                "snapshot '{}' of collection '{}' already exists",
                meta.name, meta.collection_name
            )));
        }
        let snapshot_id = self.ids.next_id().await?;
        let identity = SnapshotIdentity {
            snapshot_id,
            collection_id: meta.collection_id,
            collection_name: meta.collection_name.clone(),
            name: meta.name.clone(),
            description: meta.description.clone(),
            labels: meta.labels.clone(),
        };
        self.registry
            .execute::<Snapshot>(
                &snapshot_stream(snapshot_id),
                SnapshotCommand::Import {
                    identity,
                    prefix: prefix.to_string(),
                    metadata_key,
                    metadata_crc32c: crc32c::crc32c(&bytes),
                    manifests: meta.manifests.len() as u32,
                    totals,
                    original_created_ms: meta.created_ms,
                },
                snapshot_id,
            )
            .await?;
        let s = self.snapshot_state(snapshot_id).await?;
        SnapshotView::of(&s).ok_or_else(|| Error::internal("imported snapshot vanished"))
    }

    /// Claim snapshot `id`'s unfinished create or drop for this node and keep the claim
    /// renewed while the returned holder lives.
    /// - `Ok(Some(holder))`: this node holds it;
    /// - `Ok(None)`: the claim could not be recorded (the log failed): the work goes on
    ///   unclaimed — a reconciler may run it too after a claim's life; every step is
    ///   idempotent and the commit fenced by the snapshot's own state;
    /// - `Err`: another node holds it (`unavailable`, naming the node): leave it to that node.
    async fn claim_snapshot(&self, id: SnapshotId) -> Result<Option<ClaimHolder<Snapshot>>, Error> {
        let work = &self.restores.ctx.work;
        match try_claim::<Snapshot>(&self.registry, work, &snapshot_stream(id), id).await {
            Ok(Attempt::Held(holder)) => Ok(Some(holder)),
            Ok(Attempt::Refused(e)) => Err(Error::unavailable(format!(
                "snapshot {id}'s work runs elsewhere: {}",
                e.message
            ))),
            Err(e) => {
                tracing::debug!(snapshot = id, error = %e, "snapshot work not claimed");
                Ok(None)
            }
        }
    }

    /// One pass of the snapshot reconciler (every long-running node runs it periodically,
    /// design §10): every Pending create and Deleting drop whose claim is free or lapsed is
    /// claimed and finished here; pins left by a create that died between its pin and its
    /// start are adopted once older than a claim's life; pins of ended snapshots released.
    /// Unclaimed work younger than a claim's life is left alone: it may be a create or drop
    /// in flight on another node, which claims it right after it starts. Returns how many
    /// units it finished.
    pub async fn reconcile_snapshots(&self) -> Result<usize, Error> {
        let work = self.restores.ctx.work.clone();
        self.snapshots.sync().await?;
        let u = self.snapshots.unfinished().await?;
        let now_ms = self.registry.clock().now_ms();
        let mut finished = 0;
        let deleting: std::collections::BTreeSet<SnapshotId> = u.deleting.iter().copied().collect();
        for id in u.pending.iter().chain(u.deleting.iter()) {
            let Some((claim, since_ms)) = u.claims.get(id) else {
                continue;
            };
            // A live claim of this node's own id may be a create or drop running in this very
            // process: only a lapsed claim is taken (a restarted sled node finishes its own
            // at start, `resume_unfinished`).
            let free = claim.live(now_ms).is_none();
            let young_and_never_claimed =
                claim.last_epoch == 0 && now_ms < since_ms.saturating_add(work.claim_ttl_ms);
            if !free || young_and_never_claimed {
                continue;
            }
            let Ok(Some(_claim)) = self.claim_snapshot(*id).await else {
                continue;
            };
            let r = if deleting.contains(id) {
                self.snapshot_worker.run_delete(*id).await
            } else {
                self.snapshot_worker.run_create(*id).await
            };
            match r {
                Ok(_) => finished += 1,
                Err(e) => tracing::info!(snapshot = id, error = %e, "snapshot work goes on later"),
            }
        }
        for (snapshot_id, pin) in u.orphan_pins {
            if now_ms < pin.pinned_ms.saturating_add(work.claim_ttl_ms) {
                continue;
            }
            self.adopt_pin(snapshot_id, pin).await?;
            finished += 1;
        }
        for (snapshot_id, collection_id) in u.stale_pins {
            self.run(
                collection_id,
                CollectionCommand::UnpinSnapshot { snapshot_id },
            )
            .await?;
        }
        Ok(finished)
    }

    /// Start and finish the create a pin without a snapshot stream stands for (its create
    /// died between the pin and the start). A create that then fails is recorded Failed with
    /// its reason; only reading the collection's name is an error here.
    async fn adopt_pin(
        &self,
        snapshot_id: SnapshotId,
        pin: snapvault_actors::snapshot::index::Pin,
    ) -> Result<(), Error> {
        let collection_name = self
            .registry
            .inspect::<Collection, _>(&collection_stream(pin.collection_id), |_, s| s.name.clone())
            .await?;
        let identity = SnapshotIdentity {
            snapshot_id,
            collection_id: pin.collection_id,
            collection_name,
            name: pin.name,
            description: pin.description,
            labels: pin.labels,
        };
        if let Err(e) = self.start_and_finish(identity, pin.pinned_version).await {
            tracing::warn!(snapshot = snapshot_id, error = %e, "adopted pin did not commit");
        }
        Ok(())
    }

    /// Finish snapshot work a previous process left: adopt orphan pins, resume Pending
    /// creates and Deleting drops, release pins of failed or deleted snapshots.
    pub async fn resume_unfinished(&self) -> Result<ResumeReport, Error> {
        let u = self.snapshots.unfinished().await?;
        let mut report = ResumeReport::default();
        for (snapshot_id, pin) in u.orphan_pins {
            self.adopt_pin(snapshot_id, pin).await?;
            report.orphan_pins_adopted += 1;
        }
        for id in u.pending {
            self.snapshot_worker.run_create(id).await?;
            report.creates_resumed += 1;
        }
        for id in u.deleting {
            self.snapshot_worker.run_delete(id).await?;
            report.drops_resumed += 1;
        }
        for (snapshot_id, collection_id) in u.stale_pins {
            self.run(
                collection_id,
                CollectionCommand::UnpinSnapshot { snapshot_id },
            )
            .await?;
            report.pins_released += 1;
        }
        Ok(report)
    }
}
