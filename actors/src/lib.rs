//! snapvault's deciders and actors (design §4).
//!
//! - [`aggregate`]: the pure decider contract (`decide`, `evolve`).
//! - [`entity`]: the generic ractor shell that runs a decider against the log.
//! - [`registry`]: spawns entities on demand, supervises them, evicts idle ones.
//! - one folder per entity: [`collection`], [`catalog`].

pub mod aggregate;
pub mod catalog;
pub mod collection;
pub mod entity;
// Temporary, until snapshot/mod.rs is wired in (it declares `pub mod manifest;`).
#[path = "snapshot/manifest.rs"]
pub mod manifest;
pub mod registry;

pub use aggregate::Aggregate;
pub use entity::Executed;
pub use registry::{Registry, RegistryConfig};
