//! Garbage collection (design §5).
//!
//! - [`ref_index`]: the pure projection "which object is needed by what", folded from the log.
//! - [`sweeper`]: one cycle: plan, record (`Reclaiming` events), delete.
//! - [`supervisor`]: the ractor supervisor owning the index and the sweeper, restarting them
//!   with backoff; [`Gc`] is the node's handle.

pub mod ref_index;
pub mod supervisor;
pub mod sweeper;

pub use supervisor::{Gc, GcStatus};
pub use sweeper::{GcConfig, GcReport, GcRunOptions};
