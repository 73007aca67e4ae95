//! How this node takes part in claimed work (design §10): its id, what it serves, how much
//! it holds at once, and the timings of its claims and of its reconciler.
//!
//! Sizing the timings: a claim lives `claim_ttl_ms` past its last renewal; the holder renews
//! once a third of it is left, so a renewal may fail twice before the claim lapses. A holder
//! whose own clock reads past `deadline - safety_margin_ms` without a renewal stops working,
//! so as long as two nodes' clocks differ by less than the margin, no node works on a claim
//! another node may already hold. After a node dies its work is taken over within
//! `claim_ttl_ms + reconcile_ms` (plus `placement_delay_ms` for a copy task of a shard the
//! taker does not serve). A short TTL fails over fast but costs an append per renewal.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Which units this node's reconciler looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every unclaimed or expired unit (a long-running node: `serve`, the simulator, an
    /// embedding host that asked for it).
    All,
    /// Only units this process started or was asked to wait for (a one-shot CLI command).
    Own,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkConfig {
    /// This node's id in claims (stable for the life of the process).
    pub node_id: String,
    pub scope: Scope,
    /// On a log one process opens at a time (sled), a claim of this node id that the running
    /// process does not hold is from a dead earlier process: take it over at once.
    pub take_over_own: bool,
    /// Shards this node serves first; `None`: every shard.
    pub shards: Option<BTreeSet<u32>>,
    /// Most copy tasks this node runs at once (over every job).
    pub max_tasks: usize,
    /// Most file copies in flight on this node at once (over every task).
    pub max_copies_in_flight: usize,
    /// Upper bound on the bytes this node copies per second (over every job).
    pub max_bytes_per_sec: Option<u64>,
    pub claim_ttl_ms: u64,
    pub safety_margin_ms: u64,
    /// How often the reconciler looks for work and renews what it holds.
    pub reconcile_ms: u64,
    /// How long a copy task of a shard this node does not serve must have been free before
    /// this node takes it (the shard's own nodes get it first).
    pub placement_delay_ms: u64,
}

/// Default claim lifetime.
pub const DEFAULT_CLAIM_TTL_MS: u64 = 15_000;

impl Default for WorkConfig {
    fn default() -> Self {
        WorkConfig {
            node_id: "embedded".to_string(),
            scope: Scope::Own,
            take_over_own: true,
            shards: None,
            max_tasks: 8,
            max_copies_in_flight: 16,
            max_bytes_per_sec: None,
            claim_ttl_ms: DEFAULT_CLAIM_TTL_MS,
            safety_margin_ms: 2_000,
            reconcile_ms: 1_000,
            placement_delay_ms: 2_000,
        }
    }
}

impl WorkConfig {
    /// Does this node serve `shard` first?
    pub fn serves(&self, shard: u32) -> bool {
        self.shards.as_ref().is_none_or(|s| s.contains(&shard))
    }

    /// Renew a claim once less than this is left of it.
    pub fn renew_below_ms(&self) -> u64 {
        self.claim_ttl_ms.saturating_mul(2) / 3
    }

    /// Stop working on a claim once less than this is left without a renewal: the safety
    /// margin, but at most a sixth of the TTL, so a renewal due at two thirds and late by a
    /// reconcile tick (at most a third, `serve` checks) still comes before it.
    pub fn stop_below_ms(&self) -> u64 {
        self.safety_margin_ms.min(self.claim_ttl_ms / 6)
    }

    /// A deterministic jitter in `0..reconcile_ms/4` for tick `n`, so nodes started together
    /// do not reconcile in lock step (no thread RNG: the node id and tick number decide it).
    pub fn jitter_ms(&self, n: u64) -> u64 {
        let span = (self.reconcile_ms / 4).max(1);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.node_id.bytes().chain(n.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h % span
    }
}
