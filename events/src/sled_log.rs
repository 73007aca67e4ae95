//! The sled backend (embedded default). Written by the sled-backend work item.
