//! snapvault's deterministic simulator (design §8; TigerBeetle VOPR / FoundationDB style).
//!
//! The real actors run on a tokio current_thread runtime with paused time, over simulated
//! parts that implement the production traits and inject faults. One seed decides everything:
//! which faults are on and how often (swarm), the workload, every fault roll, tokio's RNG.
//! After every step the checker verifies the invariants against the log replayed fault-free;
//! at the end a liveness phase heals every fault and requires everything to settle. The same
//! seed always produces the same trace hash.
//!
//! One concept per file:
//! - [`prng`]: the seeded PRNG (the only randomness);
//! - [`faults`]: the swarm's fault configuration and the injector the log and store share;
//! - [`sim_clock`]: virtual time that survives node crashes;
//! - [`sim_log`]: `MemoryLog` behind faults (including ambiguous acks);
//! - [`sim_store`]: `InMemory` object store behind faults, latency and listing reorders;
//! - [`node_link`]: one node's link to the shared log and store in multi-node mode, cut by a crash;
//! - [`workload`]: the host's operations, planned from the seed and run concurrently;
//! - [`model`]: what the workload believes exists, and the durability checks it allows;
//! - [`invariants`]: the checker and the truth it replays from the log;
//! - [`claim_check`]: the claim invariants (epochs, no overlapping holders, work only under a claim);
//! - [`restore_ops`]: restores in the workload: starts (twins too), cancels, waits, bad input;
//! - [`restore_check`]: the restore invariants;
//! - [`trace`]: the trace hash;
//! - [`runner`]: one seed — setup, steps with crashes, liveness, final check.

pub mod claim_check;
pub mod external_check;
pub mod external_ops;
pub mod faults;
pub mod invariants;
pub mod model;
pub mod node_link;
pub mod prng;
pub mod restore_check;
pub mod restore_ops;
pub mod runner;
pub mod sim_clock;
pub mod sim_log;
pub mod sim_store;
pub mod trace;
pub mod workload;

pub use runner::{Failure, Plant, RunConfig, RunReport, run_seed};
