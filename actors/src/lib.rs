//! snapvault's deciders and actors (design §4).
//!
//! - [`aggregate`]: the pure decider contract (`decide`, `evolve`).
//! - [`entity`]: the generic ractor shell that runs a decider against the log.
//! - [`registry`]: spawns entities on demand, supervises them, evicts idle ones.
//! - one folder per entity: [`collection`], [`catalog`].

pub mod aggregate;
pub mod catalog;
pub mod claim;
pub mod claim_holder;
pub mod collection;
pub mod copy_audit;
pub mod crash_points;
pub mod entity;
pub mod external;
pub mod gc;
pub mod metrics;
pub mod projection;
pub mod registry;
pub mod restore;
pub mod snapshot;
pub mod work;

pub use aggregate::Aggregate;
pub use entity::Executed;
pub use registry::{Registry, RegistryConfig};
