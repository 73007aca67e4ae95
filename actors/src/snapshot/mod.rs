//! The snapshot entity.
//!
//! - [`decider`]: the pure life cycle (`Snapshot`).
//! - [`manifest`]: the on-store format (`snapshot.json` + Avro manifests), pure codec.
//! - [`worker`]: the effect interpreter: writes and verifies manifests, deletes them, and
//!   drives the entity to Committed / Failed / Deleted. Idempotent, so a crash anywhere
//!   resumes by running it again.
//! - [`index`]: the projection of every snapshot (list, lookup by name, resume at start).

pub mod decider;
pub mod index;
pub mod manifest;
pub mod worker;

pub use decider::{Snapshot, SnapshotState};
