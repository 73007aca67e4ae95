//! The external update task entity (design §4): turns a source's Parquet fragments into an
//! external collection's segments, at most one task active per collection.
//!
//! - [`decider`]: the task's life cycle (`ExternalTask`), following the collection stream.
//! - [`plan`]: pure planning: kept / dropped segments, fragments to read, bin-packing.
//! - [`source`]: opening and listing sources (local directory, own-store prefix, S3 hook).
//! - [`footer`]: row counts from Parquet footers (the `parquet` crate, no arrow).
//! - [`worker`]: the effect interpreter that drives a task to its end under its claim.
//! - [`index`]: unfinished tasks and their claims, folded from the log (for the reconciler).
//!
//! The collection side of the rules (the active-task fence, the commit) is in
//! `crate::collection::external`.

pub mod decider;
pub mod footer;
pub mod index;
pub mod plan;
pub mod restore;
pub mod source;
pub mod worker;

pub use decider::{ExternalTask, ExternalTaskState};
