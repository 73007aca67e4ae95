//! The typed in-process client: one method per operation.
//!
//! The client resolves names through the catalog entity and sends commands to entity actors
//! through the registry. It orchestrates operations that touch more than one entity (create
//! and drop of a collection) so that every crash point leaves a state the next call repairs.

use crate::views::{CollectionSummary, CollectionView};
use object_store::ObjectStore;
use snapvault_actors::catalog::{Catalog, CatalogCommand};
use snapvault_actors::collection::{Collection, CollectionState};
use snapvault_actors::gc::Gc;
use snapvault_actors::restore::Restores;
use snapvault_actors::snapshot::index::SnapshotIndex;
use snapvault_actors::snapshot::worker::SnapshotWorker;
use snapvault_actors::{Executed, Registry};
use snapvault_events::domain::catalog::CATALOG_STREAM;
use snapvault_events::domain::collection::{
    BuildIndex, CollectionCommand, CollectionEvent, CompactSegments, CreateCollection, FlushSegment,
};
use snapvault_events::domain::{CollectionId, SegmentId, collection_stream};
use snapvault_events::ids::IdAllocator;
use snapvault_events::validate::validate_name;
use snapvault_events::{Error, EventLog};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the host gives to create a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreateCollectionRequest {
    pub name: String,
    /// Opaque JSON kept verbatim; `{}` when empty.
    #[serde(default)]
    pub schema_json: String,
    /// 1 when missing from a request body (`external.create` embeds this struct), as for
    /// `collection.create`.
    #[serde(default = "one_shard")]
    pub shard_count: u32,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Partitions besides `_default`.
    #[serde(default)]
    pub partitions: Vec<String>,
}

fn one_shard() -> u32 {
    1
}

/// Built by `Node::start_with` from the parts it started.
#[derive(Clone)]
pub struct Client {
    pub(crate) registry: Registry,
    pub(crate) ids: Arc<IdAllocator>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) snapshots: SnapshotIndex,
    pub(crate) snapshot_worker: SnapshotWorker,
    pub(crate) gc: Gc,
    pub(crate) restores: Restores,
    pub(crate) external: crate::external::ExternalRuntime,
}

impl Client {
    /// The node's object store (the host writes segment files into it).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The node's event log (read-only uses: projections, tests, tools).
    pub fn log(&self) -> &Arc<dyn EventLog> {
        self.registry.log()
    }

    /// The entity registry (diagnostics and tests).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// This node's metrics registry (a host exposes [`Client::metrics_text`] itself, or
    /// reads the counters directly).
    pub fn metrics(&self) -> &Arc<snapvault_actors::metrics::Metrics> {
        self.registry.metrics()
    }

    /// The OpenMetrics text of this node's metrics, with the gauges read at this moment
    /// (GC's reference-index lag and loaded flag, the log head) refreshed first.
    pub async fn metrics_text(&self) -> String {
        let metrics = self.metrics();
        let status = self.gc_status();
        if let Ok(head) = self.log().head().await {
            metrics
                .gc_ref_index_lag_events
                .set(i64::try_from(head.saturating_sub(status.applied)).unwrap_or(i64::MAX));
        }
        metrics.gc_ref_index_loaded.set(i64::from(status.loaded));
        metrics.encode()
    }

    /// A new id, unique across restarts (segment ids, build ids).
    pub async fn allocate_id(&self) -> Result<u64, Error> {
        Ok(self.ids.next_id().await?)
    }

    /// The collection id `name` points at, if any (live or not).
    async fn catalog_entry(&self, name: &str) -> Result<Option<CollectionId>, Error> {
        let name = name.to_string();
        self.registry
            .inspect::<Catalog, _>(CATALOG_STREAM, move |_, s| s.names.get(&name).copied())
            .await
    }

    /// Resolve a live collection by name.
    pub async fn collection_id(&self, name: &str) -> Result<CollectionId, Error> {
        validate_name("collection name", name)?;
        let not_found = || Error::not_found(format!("collection '{name}' not found"));
        let id = self.catalog_entry(name).await?.ok_or_else(not_found)?;
        let live = self
            .registry
            .inspect::<Collection, _>(&collection_stream(id), |_, s| s.is_live())
            .await?;
        if live { Ok(id) } else { Err(not_found()) }
    }

    pub(crate) async fn run(
        &self,
        id: CollectionId,
        command: CollectionCommand,
    ) -> Result<Executed<CollectionEvent>, Error> {
        self.registry
            .execute::<Collection>(&collection_stream(id), command, 0)
            .await
    }

    async fn run_named(
        &self,
        name: &str,
        command: CollectionCommand,
    ) -> Result<Executed<CollectionEvent>, Error> {
        let id = self.collection_id(name).await?;
        self.run(id, command).await.map_err(|e| name_error(e, name))
    }

    /// Create a collection. Exactly one of several concurrent creates of one name wins; the
    /// others get `already_exists`.
    pub async fn create_collection(
        &self,
        request: CreateCollectionRequest,
    ) -> Result<CollectionView, Error> {
        self.create_collection_inner(request, None).await
    }

    pub(crate) async fn create_collection_inner(
        &self,
        request: CreateCollectionRequest,
        restoring_job: Option<u64>,
    ) -> Result<CollectionView, Error> {
        self.create_collection_full(request, restoring_job, None)
            .await
    }

    /// Create a collection, possibly external (`external.rs`) or restoring.
    pub(crate) async fn create_collection_full(
        &self,
        request: CreateCollectionRequest,
        restoring_job: Option<u64>,
        external: Option<snapvault_events::domain::external::ExternalConfig>,
    ) -> Result<CollectionView, Error> {
        validate_name("collection name", &request.name)?;
        // Fast path: a name held by a live collection is refused before anything is written.
        let stale = match self.catalog_entry(&request.name).await? {
            Some(existing) => {
                let live = self
                    .registry
                    .inspect::<Collection, _>(&collection_stream(existing), |_, s| s.is_live())
                    .await?;
                if live {
                    return Err(Error::already_exists(format!(
                        "collection '{}' already exists",
                        request.name
                    )));
                }
                Some(existing)
            }
            None => None,
        };
        let schema_json = if request.schema_json.trim().is_empty() {
            "{}".to_string()
        } else {
            request.schema_json.clone()
        };
        let create = CreateCollection {
            collection_id: 0,
            name: request.name.clone(),
            schema_json,
            shard_count: request.shard_count,
            properties: request.properties.clone(),
            partitions: request.partitions.clone(),
            restoring_job,
            indexes: Vec::new(),
            external,
        };
        // Validate fully before allocating an id or writing anything.
        <Collection as snapvault_actors::Aggregate>::decide(
            &CollectionState::default(),
            &CollectionCommand::Create(CreateCollection {
                collection_id: 1,
                ..create.clone()
            }),
            0,
        )?;
        let id = self.ids.next_id().await?;
        let executed = self
            .run(
                id,
                CollectionCommand::Create(CreateCollection {
                    collection_id: id,
                    ..create
                }),
            )
            .await?;
        // The collection exists in its own stream, but it is not live until the catalog points
        // at it: reserve the name on the catalog's fence.
        let reserve = match stale {
            Some(stale_collection_id) => CatalogCommand::Replace {
                name: request.name.clone(),
                stale_collection_id,
                collection_id: id,
            },
            None => CatalogCommand::Reserve {
                name: request.name.clone(),
                collection_id: id,
            },
        };
        if let Err(e) = self
            .registry
            .execute::<Catalog>(CATALOG_STREAM, reserve, 0)
            .await
        {
            // Lost the race for the name: retire the stream we made so nothing stays half
            // created. (Were we to crash right here, the stream stays unreferenced, which is
            // the same as not existing.)
            let _ = self.run(id, CollectionCommand::Drop).await;
            return Err(e);
        }
        let version = executed.version;
        self.registry
            .inspect::<Collection, _>(&collection_stream(id), move |v, s| {
                CollectionView::of(v.max(version), s)
            })
            .await
    }

    /// Drop a collection. Its snapshots (when they exist) outlive it.
    pub async fn drop_collection(&self, name: &str) -> Result<(), Error> {
        let id = self.collection_id(name).await?;
        self.run(id, CollectionCommand::Drop)
            .await
            .map_err(|e| name_error(e, name))?;
        self.registry
            .execute::<Catalog>(
                CATALOG_STREAM,
                CatalogCommand::Release {
                    name: name.to_string(),
                    collection_id: id,
                },
                0,
            )
            .await?;
        Ok(())
    }

    /// Every live collection, by name.
    pub async fn list_collections(&self) -> Result<Vec<CollectionSummary>, Error> {
        let names: Vec<(String, CollectionId)> = self
            .registry
            .inspect::<Catalog, _>(CATALOG_STREAM, |_, s| {
                s.names.iter().map(|(n, id)| (n.clone(), *id)).collect()
            })
            .await?;
        let mut out = Vec::with_capacity(names.len());
        for (_, id) in names {
            let summary = self
                .registry
                .inspect::<Collection, _>(&collection_stream(id), |_, s| {
                    s.is_live().then(|| CollectionSummary::of(s))
                })
                .await?;
            out.extend(summary);
        }
        Ok(out)
    }

    pub async fn describe_collection(&self, name: &str) -> Result<CollectionView, Error> {
        let id = self.collection_id(name).await?;
        self.describe_collection_by_id(id).await
    }

    pub async fn describe_collection_by_id(
        &self,
        id: CollectionId,
    ) -> Result<CollectionView, Error> {
        let view = self
            .registry
            .inspect::<Collection, _>(&collection_stream(id), |v, s| {
                s.exists.then(|| CollectionView::of(v, s))
            })
            .await?;
        view.ok_or_else(|| Error::not_found(format!("collection {id} not found")))
    }

    /// Run `f` on the raw state of a collection (read models of later features).
    pub async fn inspect_collection<R: Send + 'static>(
        &self,
        id: CollectionId,
        f: impl FnOnce(u64, &CollectionState) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.registry
            .inspect::<Collection, _>(&collection_stream(id), f)
            .await
    }

    pub async fn create_partition(&self, collection: &str, partition: &str) -> Result<(), Error> {
        self.run_named(
            collection,
            CollectionCommand::CreatePartition {
                name: partition.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn drop_partition(&self, collection: &str, partition: &str) -> Result<(), Error> {
        self.run_named(
            collection,
            CollectionCommand::DropPartition {
                name: partition.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn create_index(
        &self,
        collection: &str,
        index: &str,
        field: &str,
        params_json: &str,
    ) -> Result<(), Error> {
        self.run_named(
            collection,
            CollectionCommand::CreateIndex {
                name: index.to_string(),
                field: field.to_string(),
                params_json: if params_json.trim().is_empty() {
                    "{}".to_string()
                } else {
                    params_json.to_string()
                },
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn drop_index(&self, collection: &str, index: &str) -> Result<(), Error> {
        self.run_named(
            collection,
            CollectionCommand::DropIndex {
                name: index.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Record a flushed segment (its files already written by the host).
    pub async fn flush_segment(&self, collection: &str, flush: FlushSegment) -> Result<(), Error> {
        self.run_named(collection, CollectionCommand::FlushSegment(flush))
            .await
            .map(|_| ())
    }

    /// Record a compaction: `segment_ids` dropped and the new segment live, atomically.
    pub async fn compact(&self, collection: &str, compact: CompactSegments) -> Result<(), Error> {
        self.run_named(collection, CollectionCommand::Compact(compact))
            .await
            .map(|_| ())
    }

    pub async fn drop_segment(&self, collection: &str, segment_id: SegmentId) -> Result<(), Error> {
        self.run_named(collection, CollectionCommand::DropSegment { segment_id })
            .await
            .map(|_| ())
    }

    /// Record an index (re)build on a segment; a previous build's files become garbage.
    pub async fn build_index(&self, collection: &str, build: BuildIndex) -> Result<(), Error> {
        self.run_named(collection, CollectionCommand::BuildIndex(build))
            .await
            .map(|_| ())
    }
}

/// Errors from the collection decider say "collection"; put the name the user typed in.
fn name_error(e: Error, name: &str) -> Error {
    if e.message == "collection not found" {
        Error::new(e.code, format!("collection '{name}' not found"))
    } else {
        e
    }
}
