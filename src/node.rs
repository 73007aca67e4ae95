//! The node: opens the log and the store, starts the entity registry, and hands out clients.

use crate::client::Client;
use crate::config::{LogConfig, NodeConfig, StoreConfig};
use object_store::ObjectStore;
use snapvault_actors::gc::Gc;
use snapvault_actors::gc::sweeper::{GcConfig, SweepContext};
use snapvault_actors::restore::{RestoreConfig, RestoreContext, Restores};
use snapvault_actors::snapshot::index::SnapshotIndex;
use snapvault_actors::snapshot::worker::{SnapshotConfig, SnapshotWorker};
use snapvault_actors::work::WorkConfig;
use snapvault_actors::{Registry, RegistryConfig};
use snapvault_events::ids::IdAllocator;
use snapvault_events::{Error, EventLog, MemoryLog, SharedClock, SledLog, SystemClock};
use std::sync::Arc;

/// The parts a node runs on. Production opens them from a [`NodeConfig`]; the simulator
/// passes its fault-injecting log, store and virtual clock.
#[derive(Clone)]
pub struct NodeParts {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ObjectStore>,
    pub clock: SharedClock,
}

/// A running snapvault node.
pub struct Node {
    client: Client,
    registry: Registry,
    resume: tokio::task::JoinHandle<()>,
    /// The snapshot and external reconciler of a node that takes every unit (`Scope::All`).
    reconciler_task: Option<tokio::task::JoinHandle<()>>,
}

/// The snapshot and external reconciler looks for unclaimed or lapsed creates, drops and
/// refresh tasks at most this often.
pub const MIN_RECONCILE_MS: u64 = 1_000;

/// How long `shutdown` waits for the resume of unfinished work before it leaves the rest to
/// the next start.
const RESUME_WAIT_ON_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(30);

/// How long `shutdown` waits for restore copies to record their progress and stop.
const RESTORE_STOP_WAIT_ON_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// The limits and timings of the node's work.
#[derive(Debug, Clone, Default)]
pub struct NodeLimits {
    pub snapshot: SnapshotConfig,
    pub gc: GcConfig,
    pub restore: RestoreConfig,
    pub work: WorkConfig,
}

impl Node {
    /// Open the parts named by `config` and start.
    pub async fn start(config: NodeConfig) -> Result<Node, Error> {
        let clock: SharedClock = Arc::new(SystemClock);
        let log: Arc<dyn EventLog> = match &config.log {
            LogConfig::Sled { path } => Arc::new(SledLog::open(path, clock.clone())?),
            LogConfig::Memory => Arc::new(MemoryLog::new(clock.clone())),
            LogConfig::JetStream { nats, config } => Arc::new(
                snapvault_events::JetStreamLog::open(
                    crate::nats::connect(nats).await?,
                    (**config).clone(),
                    clock.clone(),
                )
                .await?,
            ),
        };
        let store: Arc<dyn ObjectStore> = match &config.store {
            StoreConfig::Local { root } => {
                std::fs::create_dir_all(root).map_err(|e| {
                    Error::unavailable(format!(
                        "cannot create object store directory {}: {e}",
                        root.display()
                    ))
                })?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(root)
                        .map_err(|e| {
                            Error::unavailable(format!(
                                "cannot open object store at {}: {e}",
                                root.display()
                            ))
                        })?
                        .with_automatic_cleanup(true),
                )
            }
            StoreConfig::Memory => Arc::new(object_store::memory::InMemory::new()),
            StoreConfig::S3(s3) => crate::s3::open(s3)?,
        };
        let mut gc = config.gc;
        if let StoreConfig::Local { root } = &config.store {
            gc.staging_root = Some(root.clone());
        }
        let mut registry = config.registry;
        let mut work = config.work;
        // The JetStream log is shared by every node on it: entities check for other nodes'
        // writes before deciding or answering, and a claim of this node id is never taken
        // for a dead earlier process's (another process may use the same id right now).
        let shared = matches!(config.log, LogConfig::JetStream { .. });
        registry.shared_log |= shared;
        work.take_over_own &= !shared;
        snapvault_events::domain::claim::validate_node_id(&work.node_id)?;
        Self::start_with(
            NodeParts { log, store, clock },
            registry,
            config.id_block_size,
            NodeLimits {
                snapshot: config.snapshot,
                gc,
                restore: config.restore,
                work,
            },
        )
        .await
    }

    /// Start on parts made elsewhere (the simulator, tests).
    pub async fn start_with(
        parts: NodeParts,
        registry: RegistryConfig,
        id_block_size: u64,
        limits: NodeLimits,
    ) -> Result<Node, Error> {
        let NodeLimits {
            snapshot,
            gc,
            restore,
            work,
        } = limits;
        let registry_shared = registry.shared_log;
        let registry = Registry::start(parts.log.clone(), parts.clock.clone(), registry).await?;
        let ids = Arc::new(IdAllocator::new(parts.log.clone(), id_block_size));
        let snapshots = SnapshotIndex::start(parts.log.clone());
        let worker = SnapshotWorker {
            registry: registry.clone(),
            log: parts.log.clone(),
            store: parts.store.clone(),
            clock: parts.clock.clone(),
            config: snapshot,
        };
        let gc = Gc::start(SweepContext {
            log: parts.log.clone(),
            store: parts.store.clone(),
            clock: parts.clock.clone(),
            snapshots: worker.clone(),
            config: gc,
            work: work.clone(),
        })
        .await?;
        let take_all = work.scope == snapvault_actors::work::Scope::All;
        let reconcile_ms = work.reconcile_ms.max(MIN_RECONCILE_MS);
        let restores = Restores::start(RestoreContext {
            registry: registry.clone(),
            log: parts.log.clone(),
            store: parts.store.clone(),
            clock: parts.clock.clone(),
            ids: ids.clone(),
            snapshots: worker.clone(),
            config: restore,
            work: work.clone(),
            coordinator_epoch: None,
        })
        .await?;
        // External refresh tasks: sources are local directories or prefixes of this store.
        let external = crate::external::ExternalRuntime::new(
            snapvault_actors::external::worker::ExternalWorker {
                registry: registry.clone(),
                store: parts.store.clone(),
                sources: Arc::new(snapvault_actors::external::source::DefaultSources {
                    own: parts.store.clone(),
                }),
                ids: ids.clone(),
                clock: parts.clock.clone(),
                config: Default::default(),
            },
            work.clone(),
        );
        let client = Client {
            registry: registry.clone(),
            ids,
            store: parts.store.clone(),
            snapshots,
            snapshot_worker: worker,
            gc,
            restores,
            external,
        };
        // Finish what a previous process left unfinished (pending creates, drops, pins).
        let resumer = client.clone();
        // On a shared log another node may be running any of that work right now: there the
        // snapshot reconciler, which respects claims, finishes it instead.
        let shared = registry_shared;
        let resume = tokio::spawn(async move {
            if shared {
                // Nothing to resume here.
            } else if let Err(e) = resumer.resume_unfinished().await {
                tracing::warn!(error = %e, "resuming unfinished work failed; it is retried at the next start");
            }
            // Unfinished external refresh tasks: a node that takes every unit runs them; on
            // a log only it opens at once (they are a dead incarnation's), on a shared one
            // once their claims lapsed. A one-shot command runs only the tasks it refreshes,
            // alters or waits for.
            if take_all && let Err(e) = resumer.reconcile_external(None).await {
                tracing::warn!(error = %e, "resuming external tasks failed; the reconciler tries again");
            }
        });
        let reconciler_task = take_all.then(|| {
            let reconciler = client.clone();
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(std::time::Duration::from_millis(reconcile_ms));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = reconciler.reconcile_snapshots().await {
                        tracing::debug!(error = %e, "snapshot reconcile pass failed; trying again");
                    }
                    if let Err(e) = reconciler.reconcile_external(None).await {
                        tracing::debug!(error = %e, "external reconcile pass failed; trying again");
                    }
                }
            })
        });
        Ok(Node {
            client,
            registry,
            resume,
            reconciler_task,
        })
    }

    /// A typed client; cheap to clone, usable from any task.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Stop every actor after it finished what it was doing.
    pub async fn shutdown(self) {
        if let Some(r) = &self.reconciler_task {
            r.abort();
        }
        let mut resume = self.resume;
        if tokio::time::timeout(RESUME_WAIT_ON_SHUTDOWN, &mut resume)
            .await
            .is_err()
        {
            resume.abort();
        }
        self.client
            .restores
            .shutdown(RESTORE_STOP_WAIT_ON_SHUTDOWN)
            .await;
        self.client.external.shutdown(RESUME_WAIT_ON_SHUTDOWN).await;
        self.client.snapshots.stop().await;
        self.client.gc.stop().await;
        self.registry.shutdown().await;
    }

    /// Wait until the work found unfinished at start is done (tests, `serve`).
    pub async fn resumed(&mut self) {
        let _ = (&mut self.resume).await;
    }
}
