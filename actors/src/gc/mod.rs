//! Garbage collection (design §5).
//!
//! - [`ref_index`]: the pure projection "which object is needed by what", folded from the log.
//! - [`sweeper`]: one cycle: plan, record (`Reclaiming` events), delete.
//! - [`singleton`]: the GC cycle's claim: one cycle at a time over every node on the log.
//! - [`supervisor`]: the ractor supervisor owning the index and the sweeper, restarting them
//!   with backoff; [`Gc`] is the node's handle.

pub mod ref_index;
pub mod singleton;
pub mod supervisor;
pub mod sweeper;

pub use supervisor::{Gc, GcStatus};
pub use sweeper::{GcConfig, GcReport, GcRunOptions};
