//! snapvault, the node: configuration, wiring of log + store + actors, and the typed client the
//! embedding database calls in-process.
//!
//! - [`config`]: what a node is made of (log backend, object store, limits).
//! - [`node`]: `Node::start(config)`: opens the parts, starts the entity registry.
//! - [`client`]: the typed API over the actors; one method per operation.
//! - [`snapshots`], [`restores`], [`gc`]: the client's operations on snapshots, restore jobs
//!   and garbage collection.
//! - [`nats`]: the JetStream log's connection, the NATS service, published events, the
//!   remote client.
//! - [`s3`]: the S3 object store.
//! - [`host`]: what the host database does to the object store (write segment files, merge
//!   them); the CLI's `ingest`/`compact`, the tests, benches and simulator use it as the host.

pub mod client;
pub mod config;
pub mod external;
pub mod gc;
pub mod host;
pub mod lake;
pub mod metrics_http;
pub mod nats;
pub mod node;
pub mod restores;
pub mod s3;
pub mod snapshots;
pub mod views;

pub use client::Client;
pub use config::{LogConfig, NodeConfig, StoreConfig};
pub use node::{Node, NodeParts};
pub use snapvault_events::{Error, ErrorCode};
