//! The catalog entity: the one place that says which name points at which collection.
//! See `snapvault_events::domain::catalog` for why names live in their own stream.

pub mod decider;

pub use decider::{Catalog, CatalogCommand, CatalogState};
