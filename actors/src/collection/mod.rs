//! The collection entity: the host database's catalog of one collection and its segments.
//!
//! - [`decider`]: the pure state machine (`Collection`: decide + evolve) and its state.
//! - the actor is the generic [`crate::entity::EntityActor`] over [`Collection`].

pub mod decider;
pub mod external;
#[cfg(test)]
mod tests;

pub use decider::{Collection, CollectionState, IndexState, PartitionState, check_snapshot_labels};
