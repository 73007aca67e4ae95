//! Claims: which node runs a unit of work, and until when (design §10).
//!
//! A claim is a fact in the unit's own stream — a restore job, a copy task — so the stream's
//! fence decides between two nodes racing for it, and every node reads who holds what from
//! the log. A claim carries the holder's node id, an **epoch** (one more than the last claim
//! of the unit ever had) and a **deadline** (from the holder's `Clock`). The holder renews
//! before the deadline and releases when it stops; past the deadline any node may claim the
//! unit again with a higher epoch. Commands that record work carry the epoch they were
//! decided under, and the unit's decider refuses a stale one: a holder that lost its claim
//! (paused, partitioned) can no longer record anything, it fences itself out.
//!
//! The pure rules over these events live in `snapvault_actors::claim`.

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// Longest node id.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// Check a node id: 1..=64 bytes of ASCII letters, digits, `.`, `_`, `-`, `@`.
pub fn validate_node_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_NODE_ID_BYTES {
        return Err(Error::invalid_argument(format!(
            "node id must be 1..={MAX_NODE_ID_BYTES} bytes, got {}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(Error::invalid_argument(format!(
            "node id '{id}' contains '{c}'; use ASCII letters, digits, '.', '_', '-' or '@'"
        )));
    }
    Ok(())
}

/// Who holds a unit of work, under which epoch, until when.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    pub epoch: u64,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimCommand {
    /// Take the unit: granted when it is free, its claim expired, or (with `take_over_own`)
    /// the holder is this node's own earlier incarnation — only on a log one process opens at
    /// a time (sled), where a claim of this node id not held by the running process is dead.
    Claim {
        node: String,
        deadline_ms: u64,
        take_over_own: bool,
    },
    /// Extend the holder's claim (refused unless `node` holds `epoch`).
    Renew {
        node: String,
        epoch: u64,
        deadline_ms: u64,
    },
    /// Give the unit back (a no-op unless `node` holds `epoch`).
    Release { node: String, epoch: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimEvent {
    Claimed {
        node: String,
        epoch: u64,
        deadline_ms: u64,
        at_ms: u64,
    },
    Renewed {
        epoch: u64,
        deadline_ms: u64,
    },
    Released {
        epoch: u64,
        at_ms: u64,
    },
}

impl ClaimEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            ClaimEvent::Claimed { .. } => "Claimed",
            ClaimEvent::Renewed { .. } => "Renewed",
            ClaimEvent::Released { .. } => "Released",
        }
    }
}

/// A stream of nothing but claims: a singleton unit's (the GC cycle's, `GC_CLAIM_STREAM`).
impl crate::codec::DomainEvent for ClaimEvent {
    const SCHEMA_VERSION: u16 = 1;
    fn event_type(&self) -> &'static str {
        ClaimEvent::event_type(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(validate_node_id("node-1@host.example").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id(&"n".repeat(65)).is_err());
        assert!(validate_node_id("a b").is_err());
        assert!(validate_node_id("nœud").is_err());
    }
}
