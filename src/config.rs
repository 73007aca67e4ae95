//! Node configuration.

use snapvault_actors::RegistryConfig;
use snapvault_actors::gc::GcConfig;
use snapvault_actors::restore::RestoreConfig;
use snapvault_actors::snapshot::worker::SnapshotConfig;
use snapvault_actors::work::WorkConfig;
use std::path::{Path, PathBuf};

/// Which event log backs the node.
#[derive(Debug, Clone)]
pub enum LogConfig {
    /// sled on local disk: the embedded default, one process.
    Sled { path: PathBuf },
    /// In memory: tests and the simulator. Lost when the node stops.
    Memory,
    /// NATS JetStream (issue 7): shared by every node on the same NATS and prefix.
    JetStream {
        nats: Box<crate::nats::NatsOptions>,
        config: Box<snapvault_events::JetStreamLogConfig>,
    },
}

/// Which object store holds the data and the manifests.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A directory on the local filesystem (the embedded default).
    Local { root: PathBuf },
    /// In memory: tests and the simulator.
    Memory,
    /// An S3 bucket (issue 7).
    S3(crate::s3::S3Config),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub log: LogConfig,
    pub store: StoreConfig,
    pub registry: RegistryConfig,
    /// How many ids one reservation in the log covers.
    pub id_block_size: u64,
    pub snapshot: SnapshotConfig,
    pub gc: GcConfig,
    pub restore: RestoreConfig,
    /// This node's part in claimed work (design §10). The default is a one-shot embedded
    /// process: node id `embedded`, only its own work (`Scope::Own`); `serve` and a host that
    /// wants the node to take any unclaimed work set `Scope::All`.
    pub work: WorkConfig,
}

impl NodeConfig {
    /// The embedded default on a data directory: `DIR/log` (sled) and `DIR/objects`.
    pub fn embedded(data_dir: &Path) -> NodeConfig {
        NodeConfig {
            log: LogConfig::Sled {
                path: data_dir.join("log"),
            },
            store: StoreConfig::Local {
                root: data_dir.join("objects"),
            },
            registry: RegistryConfig::default(),
            id_block_size: 1_000,
            snapshot: SnapshotConfig::default(),
            gc: GcConfig::default(),
            restore: RestoreConfig::default(),
            work: WorkConfig::default(),
        }
    }

    /// Everything in memory.
    pub fn in_memory() -> NodeConfig {
        NodeConfig {
            log: LogConfig::Memory,
            store: StoreConfig::Memory,
            registry: RegistryConfig::default(),
            id_block_size: 1_000,
            snapshot: SnapshotConfig::default(),
            gc: GcConfig::default(),
            restore: RestoreConfig::default(),
            work: WorkConfig::default(),
        }
    }
}
