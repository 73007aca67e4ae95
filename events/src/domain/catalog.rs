//! The catalog stream: which name points at which collection.
//!
//! Names are reserved here with an exact expected version, so two creates (or two restores)
//! of one name race on a single fence and exactly one wins. The catalog is the truth for
//! "name → id": a collection stream no live reservation points at is not a live collection
//! (it is what a create that lost its race, or crashed before reserving, leaves behind).

use super::CollectionId;
use crate::codec::DomainEvent;
use serde::{Deserialize, Serialize};

pub const CATALOG_STREAM: &str = "catalog";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogEvent {
    /// `name` now points at `collection_id`.
    NameReserved {
        name: String,
        collection_id: CollectionId,
    },
    /// `name` is free again (its collection was dropped, or the reservation was abandoned).
    NameReleased {
        name: String,
        collection_id: CollectionId,
    },
}

impl DomainEvent for CatalogEvent {
    const SCHEMA_VERSION: u16 = 1;
    fn event_type(&self) -> &'static str {
        match self {
            CatalogEvent::NameReserved { .. } => "NameReserved",
            CatalogEvent::NameReleased { .. } => "NameReleased",
        }
    }
}
