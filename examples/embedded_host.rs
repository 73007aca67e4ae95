//! An actor-based database host embedding snapvault: the shape our users run it in.
//!
//! The host has its own ractor supervision tree. A `StorageActor` — one of the host's
//! actors, linked under the host's `HostSupervisor` — owns the embedded [`Node`] (sled log +
//! local object store under one data directory) and does what a storage layer does: it
//! writes segment files and records the flushes, compacts segments (writing the merged files
//! itself, then recording the compaction), snapshots the collection and restores the
//! snapshot into a new collection, all through the typed [`snapvault::Client`]. The
//! supervisor restarts the storage actor if it fails; on shutdown the actor shuts the node
//! down gracefully (entities finish, the log closes).
//!
//! ```text
//! cargo run --example embedded_host [DATA_DIR]
//! ```
//!
//! Without a directory it works in a temporary one. It checks what it did — the restored
//! collection has every row and byte-identical files — and exits non-zero otherwise. CI runs
//! it.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, call};
use snapvault::client::CreateCollectionRequest;
use snapvault::restores::{RestoreView, StartRestoreRequest};
use snapvault::snapshots::{CreateSnapshotRequest, SnapshotView};
use snapvault::views::CollectionView;
use snapvault::{Error, Node, NodeConfig, host};
use snapvault_events::domain::collection::{CompactSegments, FlushSegment};
use snapvault_events::domain::restore::{RestoreOptions, RestoreStatus};
use std::path::PathBuf;
use std::time::Duration;

/// The one partition every segment of this example goes to (`_default`, id 1).
const PARTITION: &str = "_default";
const PARTITION_ID: u64 = 1;
const FILES_PER_SEGMENT: usize = 2;
const FILE_BYTES: usize = 4 * 1024;

/// What the host asks its storage layer to do.
enum StorageMsg {
    CreateCollection {
        name: String,
        reply: RpcReplyPort<Result<CollectionView, Error>>,
    },
    /// Write `segments` new segments (their files, then the flush records) into `shard`.
    Flush {
        collection: String,
        shard: u32,
        segments: usize,
        reply: RpcReplyPort<Result<Vec<u64>, Error>>,
    },
    /// Merge every segment of `shard` into one.
    Compact {
        collection: String,
        shard: u32,
        reply: RpcReplyPort<Result<u64, Error>>,
    },
    Snapshot {
        collection: String,
        name: String,
        reply: RpcReplyPort<Result<SnapshotView, Error>>,
    },
    /// Restore and wait for the job to end.
    Restore {
        collection: String,
        snapshot: String,
        target: String,
        reply: RpcReplyPort<Result<RestoreView, Error>>,
    },
    Describe {
        name: String,
        reply: RpcReplyPort<Result<CollectionView, Error>>,
    },
}

/// The host's storage layer: owns the embedded node.
struct StorageActor;

struct StorageState {
    /// `None` once shut down.
    node: Option<Node>,
}

impl StorageState {
    fn client(&self) -> Result<snapvault::Client, Error> {
        self.node
            .as_ref()
            .map(Node::client)
            .ok_or_else(|| Error::unavailable("the storage actor is shutting down"))
    }
}

#[ractor::async_trait]
impl Actor for StorageActor {
    type Msg = StorageMsg;
    type State = StorageState;
    type Arguments = PathBuf;

    async fn pre_start(
        &self,
        _myself: ActorRef<StorageMsg>,
        data_dir: PathBuf,
    ) -> Result<StorageState, ActorProcessingErr> {
        // The embedded default: sled log + local object store, no server. The node runs its
        // own actors (entities, restore manager, GC) on this runtime, under its own
        // supervisor; this actor is their owner in the host's tree.
        let node = Node::start(NodeConfig::embedded(&data_dir)).await?;
        Ok(StorageState { node: Some(node) })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StorageMsg>,
        state: &mut StorageState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(node) = state.node.take() {
            node.shutdown().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<StorageMsg>,
        msg: StorageMsg,
        state: &mut StorageState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StorageMsg::CreateCollection { name, reply } => {
                let r = match state.client() {
                    Ok(c) => {
                        c.create_collection(CreateCollectionRequest {
                            name,
                            shard_count: 2,
                            schema_json:
                                r#"{"fields":[{"name":"embedding","type":"float_vector"}]}"#.into(),
                            ..Default::default()
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            StorageMsg::Flush {
                collection,
                shard,
                segments,
                reply,
            } => {
                let _ = reply.send(flush(state, &collection, shard, segments).await);
            }
            StorageMsg::Compact {
                collection,
                shard,
                reply,
            } => {
                let _ = reply.send(compact(state, &collection, shard).await);
            }
            StorageMsg::Snapshot {
                collection,
                name,
                reply,
            } => {
                let r = match state.client() {
                    Ok(c) => {
                        c.create_snapshot(CreateSnapshotRequest {
                            collection,
                            name,
                            ..Default::default()
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            StorageMsg::Restore {
                collection,
                snapshot,
                target,
                reply,
            } => {
                let _ = reply.send(restore(state, collection, snapshot, target).await);
            }
            StorageMsg::Describe { name, reply } => {
                let r = match state.client() {
                    Ok(c) => c.describe_collection(&name).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

/// Write the files of `segments` new segments, then record each flush.
async fn flush(
    state: &StorageState,
    collection: &str,
    shard: u32,
    segments: usize,
) -> Result<Vec<u64>, Error> {
    let c = state.client()?;
    let view = c.describe_collection(collection).await?;
    let mut ids = Vec::with_capacity(segments);
    for _ in 0..segments {
        let segment_id = c.allocate_id().await?;
        let files = host::write_segment_files(
            &**c.store(),
            view.id,
            PARTITION_ID,
            segment_id,
            FILES_PER_SEGMENT,
            FILE_BYTES,
        )
        .await?;
        c.flush_segment(
            collection,
            FlushSegment {
                segment_id,
                partition: PARTITION.into(),
                shard,
                rows: 1_000,
                files,
            },
        )
        .await?;
        ids.push(segment_id);
    }
    Ok(ids)
}

/// Merge every live segment of `shard`: the host writes the merged files, snapvault records
/// the compaction (the sources stay readable by snapshots until GC may reclaim them).
async fn compact(state: &StorageState, collection: &str, shard: u32) -> Result<u64, Error> {
    let c = state.client()?;
    let view = c.describe_collection(collection).await?;
    let sources: Vec<_> = view.segments.iter().filter(|s| s.shard == shard).collect();
    let into_segment_id = c.allocate_id().await?;
    let files = host::write_merged_files(
        &**c.store(),
        view.id,
        PARTITION_ID,
        into_segment_id,
        &sources.iter().map(|s| s.files.clone()).collect::<Vec<_>>(),
    )
    .await?;
    c.compact(
        collection,
        CompactSegments {
            segment_ids: sources.iter().map(|s| s.id).collect(),
            into_segment_id,
            rows: sources.iter().map(|s| s.rows).sum(),
            files,
        },
    )
    .await?;
    Ok(into_segment_id)
}

/// Start a restore (the job id comes back at once) and wait for it to end.
async fn restore(
    state: &StorageState,
    collection: String,
    snapshot: String,
    target: String,
) -> Result<RestoreView, Error> {
    let c = state.client()?;
    let started = c
        .start_restore(StartRestoreRequest {
            snapshot_collection: collection,
            snapshot,
            target,
            options: RestoreOptions::default(),
        })
        .await?;
    c.wait_restore(
        started.job_id,
        Duration::from_millis(50),
        Some(Duration::from_secs(120)),
        |_| {},
    )
    .await
}

/// The host's root: starts the storage actor linked to itself and restarts it (a bounded
/// number of times) if it fails.
struct HostSupervisor;

struct SupervisorState {
    data_dir: PathBuf,
    storage: Option<ActorRef<StorageMsg>>,
    restarts: u32,
}

enum SupervisorMsg {
    Storage(RpcReplyPort<Option<ActorRef<StorageMsg>>>),
}

const MAX_STORAGE_RESTARTS: u32 = 3;

#[ractor::async_trait]
impl Actor for HostSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = PathBuf;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        data_dir: PathBuf,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let (storage, _) = Actor::spawn_linked(
            Some("storage".into()),
            StorageActor,
            data_dir.clone(),
            myself.get_cell(),
        )
        .await?;
        Ok(SupervisorState {
            data_dir,
            storage: Some(storage),
            restarts: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Storage(reply) => {
                let _ = reply.send(state.storage.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, why) = event {
            eprintln!("host: storage actor {who:?} failed: {why}");
            state.storage = None;
            if state.restarts < MAX_STORAGE_RESTARTS {
                state.restarts += 1;
                let (storage, _) = Actor::spawn_linked(
                    Some("storage".into()),
                    StorageActor,
                    state.data_dir.clone(),
                    myself.get_cell(),
                )
                .await?;
                state.storage = Some(storage);
            }
        }
        Ok(())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let temp;
    let data_dir = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let (supervisor, supervisor_done) =
        Actor::spawn(Some("host".into()), HostSupervisor, data_dir.clone()).await?;
    let storage =
        call!(supervisor, SupervisorMsg::Storage)?.ok_or("the storage actor did not start")?;

    let collection = "orders".to_string();
    call!(storage, |reply| StorageMsg::CreateCollection {
        name: collection.clone(),
        reply
    })??;
    for shard in 0..2 {
        call!(storage, |reply| StorageMsg::Flush {
            collection: collection.clone(),
            shard,
            segments: 4,
            reply
        })??;
    }
    let merged = call!(storage, |reply| StorageMsg::Compact {
        collection: collection.clone(),
        shard: 0,
        reply
    })??;
    let before = call!(storage, |reply| StorageMsg::Describe {
        name: collection.clone(),
        reply
    })??;
    let snapshot = call!(storage, |reply| StorageMsg::Snapshot {
        collection: collection.clone(),
        name: "nightly".into(),
        reply
    })??;
    let restored = call!(storage, |reply| StorageMsg::Restore {
        collection: collection.clone(),
        snapshot: "nightly".into(),
        target: "orders_restored".into(),
        reply
    })??;
    if restored.status != RestoreStatus::Completed {
        return Err(format!("restore ended {:?}", restored.status).into());
    }
    let after = call!(storage, |reply| StorageMsg::Describe {
        name: "orders_restored".into(),
        reply
    })??;

    // Check: the same rows, the same number of segments and files, every file identical.
    let rows = |v: &CollectionView| v.segments.iter().map(|s| s.rows).sum::<u64>();
    if rows(&after) != rows(&before) || after.segments.len() != before.segments.len() {
        return Err(format!(
            "restored {} rows in {} segments, expected {} in {}",
            rows(&after),
            after.segments.len(),
            rows(&before),
            before.segments.len()
        )
        .into());
    }
    let mut source_crcs: Vec<(u64, u32)> = before
        .segments
        .iter()
        .flat_map(|s| s.files.iter().map(|f| (f.size, f.crc32c)))
        .collect();
    let mut restored_crcs: Vec<(u64, u32)> = after
        .segments
        .iter()
        .flat_map(|s| s.files.iter().map(|f| (f.size, f.crc32c)))
        .collect();
    source_crcs.sort_unstable();
    restored_crcs.sort_unstable();
    if source_crcs != restored_crcs {
        return Err("the restored files differ from the snapshot's".into());
    }
    println!(
        "host: collection '{collection}' flushed 8 segments, compacted shard 0 into segment {merged}; \
         snapshot '{}' ({} segments, {} files); restore job {} into 'orders_restored' completed: \
         {} rows, {} files identical",
        snapshot.name,
        before.segments.len(),
        source_crcs.len(),
        restored.job_id,
        rows(&after),
        restored_crcs.len()
    );

    // Shut down through the host's tree: the supervisor stops its children, the storage
    // actor shuts the node down.
    supervisor.stop(None);
    supervisor_done.await?;
    Ok(())
}
