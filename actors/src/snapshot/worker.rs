//! The snapshot effect interpreter: the I/O a snapshot needs, run outside the decider.
//!
//! Every step is idempotent — manifests are deterministic bytes at deterministic keys, the
//! decider ignores a repeated commit — so "resume after a crash" is simply "run it again".
//! The worker never holds an entity's state across an await on the store: it reads the
//! state, does the I/O, and sends the result back as a command.

use crate::aggregate::Aggregate;
use crate::collection::{Collection, CollectionState};
use crate::crash_points::crash_point;
use crate::registry::Registry;
use crate::snapshot::decider::{Snapshot, SnapshotState};
use crate::snapshot::manifest::{
    self, FORMAT_VERSION, IndexMeta, ManifestRef, PartitionMeta, SEGMENTS_PER_MANIFEST,
    SnapshotMetadata, Totals,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::{CollectionCommand, CollectionEvent, SegmentRecord};
use snapvault_events::domain::snapshot::{
    SnapshotCommand, SnapshotStatus, SnapshotTotals, snapshot_stream,
};
use snapvault_events::domain::{SnapshotId, collection_stream};
use snapvault_events::{Error, ErrorCode, EventLog, SharedClock};
use std::sync::Arc;
use std::time::Duration;

/// Limits and timings of snapshot work.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotConfig {
    /// A create still Pending this long after it started is failed (and its partial
    /// manifests left for GC).
    pub pending_timeout_ms: u64,
    /// First retry delay after a transient error; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Objects checked at once by `verify`.
    pub verify_parallelism: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            pending_timeout_ms: 10 * 60 * 1000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            verify_parallelism: 16,
        }
    }
}

/// What the worker needs.
#[derive(Clone)]
pub struct SnapshotWorker {
    pub registry: Registry,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ObjectStore>,
    pub clock: SharedClock,
    pub config: SnapshotConfig,
}

fn store_error(key: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => {
            Error::not_found(format!("object '{key}' not found"))
        }
        e => Error::unavailable(format!("object store error on '{key}': {e}")),
    }
}

pub async fn put_object(store: &dyn ObjectStore, key: &str, data: Bytes) -> Result<(), Error> {
    store
        .put(&Path::from(key), PutPayload::from_bytes(data))
        .await
        .map(|_| ())
        .map_err(|e| store_error(key, e))
}

pub async fn get_object(store: &dyn ObjectStore, key: &str) -> Result<Bytes, Error> {
    let got = store
        .get(&Path::from(key))
        .await
        .map_err(|e| store_error(key, e))?;
    got.bytes().await.map_err(|e| store_error(key, e))
}

/// Read an object a committed snapshot recorded (its `snapshot.json`, a manifest, a fragment
/// list). A missing one is damaged data (`internal`, naming it), not a request to fix: the
/// snapshot says it exists.
pub async fn get_recorded(store: &dyn ObjectStore, key: &str, what: &str) -> Result<Bytes, Error> {
    get_object(store, key).await.map_err(|e| {
        if e.code == snapvault_events::ErrorCode::NotFound {
            Error::internal(format!(
                "{what} '{key}' is missing: the snapshot is damaged (the object was deleted or lost outside snapvault)"
            ))
        } else {
            e
        }
    })
}

/// Where manifest `key` (as recorded in `snapshot.json`) is for a snapshot stored under
/// `prefix`: manifests are found next to their `snapshot.json`, so a snapshot copied to
/// another bucket or prefix stays readable.
pub fn relocate(prefix: &str, key: &str) -> Result<String, Error> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let valid = name
        .strip_prefix("manifest-")
        .and_then(|r| r.strip_suffix(".avro"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !valid {
        return Err(Error::invalid_argument(format!(
            "manifest key '{key}' in snapshot.json is not of the form manifest-<n>.avro"
        )));
    }
    Ok(format!("{}/{name}", prefix.trim_end_matches('/')))
}

/// Manifests written at once by one snapshot create.
const MANIFEST_WRITE_PARALLELISM: usize = 4;

/// `n` of `.../manifest-{n}.avro`, for ordering.
fn manifest_number(key: &str) -> u64 {
    key.rsplit('/')
        .next()
        .and_then(|f| f.strip_prefix("manifest-"))
        .and_then(|f| f.strip_suffix(".avro"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Encode manifest `n`, write it, read it back and check it. Returns its reference and the
/// rows it covers.
async fn write_manifest(
    store: &dyn ObjectStore,
    collection_id: u64,
    snapshot_id: SnapshotId,
    n: u32,
    chunk: &[Arc<SegmentRecord>],
) -> Result<(ManifestRef, u64), Error> {
    let bytes = manifest::encode_manifest(snapshot_id, n, chunk.iter().map(|s| &**s))?;
    let key = manifest::manifest_key(collection_id, snapshot_id, n);
    let mut r = ManifestRef {
        key: key.clone(),
        segments: 0,
        files: 0,
        bytes: 0,
        size: bytes.len() as u64,
        crc32c: crc32c::crc32c(&bytes),
    };
    let mut rows = 0;
    for seg in chunk {
        r.segments += 1;
        rows += seg.rows;
        for f in seg.all_files() {
            r.files += 1;
            r.bytes += f.size;
        }
    }
    put_object(store, &key, Bytes::from(bytes)).await?;
    crash_point("snapshot.after_manifest");
    // Read it back: a commit promises the bucket alone can restore the snapshot.
    let back = get_object(store, &key).await?;
    if back.len() as u64 != r.size || crc32c::crc32c(&back) != r.crc32c {
        return Err(Error::unavailable(format!(
            "manifest '{key}' read back differs from what was written"
        )));
    }
    Ok((r, rows))
}

/// The state of a collection at `version` of its stream: the cut a snapshot pinned.
pub async fn collection_at(
    log: &dyn EventLog,
    collection_id: u64,
    version: u64,
) -> Result<CollectionState, Error> {
    const PAGE: usize = 1024;
    let stream = collection_stream(collection_id);
    let mut state = CollectionState::default();
    let mut next = 1u64;
    while next <= version {
        let want = ((version - next + 1) as usize).min(PAGE);
        let page = log.read_stream(&stream, next, want).await?;
        if page.is_empty() {
            return Err(Error::internal(format!(
                "collection stream '{stream}' ends at version {} before the pinned version {version}",
                next - 1
            )));
        }
        for env in page {
            let event: CollectionEvent = decode(&env)?;
            Collection::evolve(&mut state, &event);
            next = env.version + 1;
        }
    }
    Ok(state)
}

impl SnapshotWorker {
    async fn state(&self, id: SnapshotId) -> Result<SnapshotState, Error> {
        self.registry
            .inspect::<Snapshot, _>(&snapshot_stream(id), |_, s| s.clone())
            .await
    }

    async fn command(&self, id: SnapshotId, command: SnapshotCommand) -> Result<(), Error> {
        self.registry
            .execute::<Snapshot>(&snapshot_stream(id), command, id)
            .await
            .map(|_| ())
    }

    /// The collection as it was at `version`: taken from the live actor when nothing happened
    /// since (the usual case: the pin was the last event), otherwise replayed from the log.
    async fn cut(&self, collection_id: u64, version: u64) -> Result<CollectionState, Error> {
        let current = self
            .registry
            .inspect::<Collection, _>(&collection_stream(collection_id), move |v, s| {
                (v == version).then(|| s.clone())
            })
            .await?;
        match current {
            Some(state) => Ok(state),
            None => collection_at(&*self.log, collection_id, version).await,
        }
    }

    /// Release the snapshot's pin on its collection (no-op when there is none, or when the
    /// collection is not in this log, as for an imported snapshot).
    async fn unpin(&self, s: &SnapshotState) -> Result<(), Error> {
        let Some(identity) = &s.identity else {
            return Ok(());
        };
        if s.imported {
            return Ok(());
        }
        match self
            .registry
            .execute::<Collection>(
                &collection_stream(identity.collection_id),
                CollectionCommand::UnpinSnapshot {
                    snapshot_id: identity.snapshot_id,
                },
                identity.snapshot_id,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Drive a create to its end: Committed, or Failed after a permanent error or the pending
    /// timeout. Safe to run again, and to run twice at once.
    pub async fn run_create(&self, id: SnapshotId) -> Result<SnapshotState, Error> {
        let mut backoff =
            snapvault_events::Backoff::new(self.config.retry_initial_ms, self.config.retry_max_ms);
        let started = tokio::time::Instant::now();
        let metrics = self.registry.metrics().clone();
        loop {
            let s = self.state(id).await?;
            match s.status {
                Some(SnapshotStatus::Pending) => {}
                Some(SnapshotStatus::Failed) => {
                    self.unpin(&s).await?;
                    return Ok(s);
                }
                Some(_) => return Ok(s),
                None => return Err(Error::not_found(format!("snapshot {id} not found"))),
            }
            let outcome = self.write_and_verify(&s).await;
            let now_ms = self.clock.now_ms();
            match outcome {
                Ok(commit) => {
                    crash_point("snapshot.before_commit");
                    self.command(id, commit).await?;
                    metrics.snapshot_op("create", "committed", started.elapsed());
                    let (collection, name) = s
                        .identity
                        .as_ref()
                        .map(|i| (i.collection_name.as_str(), i.name.as_str()))
                        .unwrap_or_default();
                    tracing::info!(
                        snapshot = id,
                        collection,
                        name,
                        took_ms = started.elapsed().as_millis() as u64,
                        "snapshot committed"
                    );
                }
                Err(e) if !e.is_transient() || now_ms >= s.deadline_ms => {
                    let reason = if e.is_transient() {
                        format!("gave up after the pending timeout: {e}")
                    } else {
                        e.to_string()
                    };
                    tracing::warn!(snapshot = id, %reason, "snapshot create failed");
                    self.command(id, SnapshotCommand::Fail { reason }).await?;
                    metrics.snapshot_op("create", "failed", started.elapsed());
                }
                Err(e) => {
                    tracing::info!(snapshot = id, error = %e, delay_ms = backoff.current_ms(), "snapshot create will retry");
                    tokio::time::sleep(Duration::from_millis(backoff.current_ms())).await;
                    backoff.grow();
                }
            }
        }
    }

    /// Write `manifest-{n}.avro` in batches and `snapshot.json`, read every object back and
    /// check its checksum, and return the commit command.
    async fn write_and_verify(&self, s: &SnapshotState) -> Result<SnapshotCommand, Error> {
        let identity = s
            .identity
            .as_ref()
            .ok_or_else(|| Error::internal("pending snapshot without identity"))?;
        let cut = self.cut(identity.collection_id, s.pinned_version).await?;
        // Encode, write and read back the manifests in parallel (bounded): each is independent
        // and deterministic, so the order they land in does not matter.
        let chunks: Vec<Vec<Arc<SegmentRecord>>> = cut
            .segments
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .chunks(SEGMENTS_PER_MANIFEST)
            .map(<[_]>::to_vec)
            .collect();
        let snapshot_id = identity.snapshot_id;
        let collection_id = identity.collection_id;
        let mut manifests: Vec<(ManifestRef, u64)> =
            futures::stream::iter(chunks.into_iter().enumerate())
                .map(|(n, chunk)| {
                    let store = self.store.clone();
                    tokio::spawn(async move {
                        write_manifest(&*store, collection_id, snapshot_id, n as u32, &chunk).await
                    })
                })
                .buffer_unordered(MANIFEST_WRITE_PARALLELISM)
                .map(|joined| {
                    joined
                        .map_err(|e| Error::internal(format!("manifest writer task failed: {e}")))?
                })
                .try_collect()
                .await?;
        manifests.sort_by_key(|(r, _)| manifest_number(&r.key));
        let mut totals = Totals::default();
        for (r, rows) in &manifests {
            totals.segments += r.segments;
            totals.files += r.files;
            totals.bytes += r.bytes;
            totals.rows += rows;
        }
        let manifests: Vec<ManifestRef> = manifests.into_iter().map(|(r, _)| r).collect();
        let metadata = SnapshotMetadata {
            format_version: if cut.external.is_some() {
                FORMAT_VERSION
            } else {
                manifest::PLAIN_FORMAT_VERSION
            },
            external: cut.external.as_ref().map(|e| manifest::ExternalMeta {
                source: e.config.source.clone(),
                spec: e.config.spec.clone(),
                generation: e.generation,
                fragments: e.fragments,
            }),
            snapshot_id: identity.snapshot_id,
            name: identity.name.clone(),
            description: identity.description.clone(),
            labels: identity.labels.clone(),
            collection_id: identity.collection_id,
            collection_name: identity.collection_name.clone(),
            schema_json: cut.schema_json.clone(),
            shard_count: cut.shard_count,
            properties: cut.properties.clone(),
            partitions: cut
                .partitions
                .iter()
                .filter(|(_, p)| !p.dropped)
                .map(|(id, p)| PartitionMeta {
                    id: *id,
                    name: p.name.clone(),
                })
                .collect(),
            indexes: cut
                .indexes
                .iter()
                .filter(|(_, i)| !i.dropped)
                .map(|(id, i)| IndexMeta {
                    id: *id,
                    name: i.name.clone(),
                    field: i.field.clone(),
                    params_json: i.params_json.clone(),
                })
                .collect(),
            pinned_version: s.pinned_version,
            created_ms: s.created_ms,
            manifests: manifests.clone(),
            totals,
        };
        let json = manifest::encode_metadata(&metadata)?;
        let metadata_crc32c = crc32c::crc32c(&json);
        let metadata_key = manifest::metadata_key(identity.collection_id, identity.snapshot_id);
        put_object(&*self.store, &metadata_key, Bytes::from(json)).await?;
        crash_point("snapshot.after_metadata");
        // Read everything back: a commit promises the bucket alone can restore it.
        let back = get_object(&*self.store, &metadata_key).await?;
        if crc32c::crc32c(&back) != metadata_crc32c {
            return Err(Error::unavailable(format!(
                "'{metadata_key}' read back differs from what was written"
            )));
        }
        Ok(SnapshotCommand::Commit {
            metadata_key,
            metadata_crc32c,
            manifests: manifests.len() as u32,
            totals: SnapshotTotals {
                segments: totals.segments,
                files: totals.files,
                bytes: totals.bytes,
                rows: totals.rows,
            },
        })
    }

    /// Finish a drop: release the pin, delete the manifests, mark Deleted. Safe to repeat.
    pub async fn run_delete(&self, id: SnapshotId) -> Result<SnapshotState, Error> {
        let mut backoff =
            snapvault_events::Backoff::new(self.config.retry_initial_ms, self.config.retry_max_ms);
        let started = tokio::time::Instant::now();
        loop {
            let s = self.state(id).await?;
            match s.status {
                Some(SnapshotStatus::Deleting) => {}
                Some(_) => return Ok(s),
                None => return Err(Error::not_found(format!("snapshot {id} not found"))),
            }
            match self.delete_objects(&s).await {
                Ok(()) => {
                    self.command(id, SnapshotCommand::MarkDeleted).await?;
                    self.registry
                        .metrics()
                        .snapshot_op("drop", "deleted", started.elapsed());
                    tracing::info!(
                        snapshot = id,
                        took_ms = started.elapsed().as_millis() as u64,
                        "snapshot dropped"
                    );
                }
                Err(e) if e.is_transient() => {
                    tracing::info!(snapshot = id, error = %e, delay_ms = backoff.current_ms(), "snapshot delete will retry");
                    tokio::time::sleep(Duration::from_millis(backoff.current_ms())).await;
                    backoff.grow();
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn delete_objects(&self, s: &SnapshotState) -> Result<(), Error> {
        self.unpin(s).await?;
        crash_point("snapshot.after_unpin");
        if s.imported {
            return self.delete_imported(s).await;
        }
        let prefix = Path::from(s.prefix.as_str());
        let keys: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| store_error(&s.prefix, e))?;
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(key.as_ref(), e)),
            }
            crash_point("snapshot.after_first_delete");
        }
        Ok(())
    }

    /// An imported snapshot's prefix was filled by a person and may hold other objects: delete
    /// exactly what the import registered — its manifests, then `snapshot.json` last, so a
    /// retry after a crash still finds the list.
    async fn delete_imported(&self, s: &SnapshotState) -> Result<(), Error> {
        let meta = match get_object(&*self.store, &s.metadata_key).await {
            Ok(bytes) => Some(manifest::decode_metadata(&bytes)?),
            Err(e) if e.code == snapvault_events::ErrorCode::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut keys = Vec::new();
        for m in meta.iter().flat_map(|m| m.manifests.iter()) {
            keys.push(relocate(&s.prefix, &m.key)?);
        }
        keys.push(s.metadata_key.clone());
        for key in keys {
            match self.store.delete(&Path::from(key.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(&key, e)),
            }
            crash_point("snapshot.after_first_delete");
        }
        Ok(())
    }

    /// Read the manifests of a committed snapshot and check every referenced object exists
    /// with the right size and crc32c.
    pub async fn verify(&self, s: &SnapshotState) -> Result<VerifyReport, Error> {
        let metadata = self.load_metadata(s).await?;
        let mut report = VerifyReport::default();
        for m in &metadata.manifests {
            let key = relocate(&s.prefix, &m.key)?;
            let bytes = match get_object(&*self.store, &key).await {
                Ok(b) => b,
                Err(e) if e.code == ErrorCode::NotFound => {
                    report.corrupt_manifests.push(format!("{key}: missing"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if bytes.len() as u64 != m.size || crc32c::crc32c(&bytes) != m.crc32c {
                report
                    .corrupt_manifests
                    .push(format!("{key}: size or crc32c mismatch"));
                continue;
            }
            let segments = manifest::decode_manifest(&bytes)?;
            let files: Vec<_> = segments
                .iter()
                .flat_map(|seg| seg.all_files().cloned().collect::<Vec<_>>())
                .collect();
            let store = self.store.clone();
            let results: Vec<(String, Result<Option<String>, Error>)> =
                futures::stream::iter(files)
                    .map(|f| {
                        let store = store.clone();
                        async move {
                            let r = match get_object(&*store, &f.key).await {
                                Ok(b) if b.len() as u64 != f.size => {
                                    Ok(Some(format!("size {} != {}", b.len(), f.size)))
                                }
                                Ok(b) if crc32c::crc32c(&b) != f.crc32c => {
                                    Ok(Some("crc32c mismatch".to_string()))
                                }
                                Ok(b) => {
                                    drop(b);
                                    Ok(None)
                                }
                                Err(e) if e.code == ErrorCode::NotFound => {
                                    Ok(Some("missing".to_string()))
                                }
                                Err(e) => Err(e),
                            };
                            (f.key, r)
                        }
                    })
                    .buffer_unordered(self.config.verify_parallelism.max(1))
                    .collect()
                    .await;
            for (key, r) in results {
                report.checked_files += 1;
                match r? {
                    None => {}
                    Some(reason) if reason == "missing" => report.missing.push(key),
                    Some(reason) => report.corrupt.push(format!("{key}: {reason}")),
                }
            }
        }
        report.missing.sort();
        report.corrupt.sort();
        report.ok = report.missing.is_empty()
            && report.corrupt.is_empty()
            && report.corrupt_manifests.is_empty();
        Ok(report)
    }

    /// Why `snapshot.json` of `s` is missing: a drop that began since `s` was read deleted it
    /// (`failed_precondition`, the request raced a drop), or it was lost (`internal`: the
    /// snapshot is damaged).
    async fn missing_metadata(&self, s: &SnapshotState) -> Error {
        let now = self
            .registry
            .inspect::<Snapshot, _>(&snapshot_stream(s.snapshot_id()), |_, x| x.status)
            .await;
        match now {
            Ok(Some(status @ (SnapshotStatus::Deleting | SnapshotStatus::Deleted))) => {
                Error::failed_precondition(format!(
                    "snapshot {} is {}: it was dropped meanwhile",
                    s.snapshot_id(),
                    status.as_str()
                ))
            }
            _ => Error::internal(format!(
                "snapshot.json '{}' is missing: the snapshot is damaged (the object was deleted or lost outside snapvault)",
                s.metadata_key
            )),
        }
    }

    /// Read and check `snapshot.json` of a snapshot.
    pub async fn load_metadata(&self, s: &SnapshotState) -> Result<SnapshotMetadata, Error> {
        let bytes = match get_object(&*self.store, &s.metadata_key).await {
            Ok(bytes) => bytes,
            Err(e) if e.code == snapvault_events::ErrorCode::NotFound => {
                return Err(self.missing_metadata(s).await);
            }
            Err(e) => return Err(e),
        };
        if crc32c::crc32c(&bytes) != s.metadata_crc32c {
            return Err(Error::internal(format!(
                "'{}' does not match the checksum recorded at commit: the object was changed or damaged",
                s.metadata_key
            )));
        }
        manifest::decode_metadata(&bytes)
    }
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub checked_files: u64,
    pub missing: Vec<String>,
    pub corrupt: Vec<String>,
    pub corrupt_manifests: Vec<String>,
}
