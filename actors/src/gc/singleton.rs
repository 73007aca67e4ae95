//! GC as a singleton (design §10): one cycle at a time over every node sharing the log.
//!
//! A cycle that deletes (not a dry run) first claims `gc-claim`, renews it while it runs and
//! releases it when done. A node whose periodic cycle finds the claim held skips that cycle; a
//! cycle asked for by a user waits for the holder to finish (bounded) and then runs. A node
//! that dies mid-cycle leaves its `Reclaiming` record, and the next cycle on any node — once
//! the claim lapsed — finishes those deletes. Two cycles that overlapped anyway (a holder cut
//! off past its deadline) are still safe: every delete was announced in the log first and is
//! re-checked against the reference index, so neither deletes what the other needs.

use crate::aggregate::Aggregate;
use crate::claim::ClaimState;
use crate::registry::Registry;
use crate::work::WorkConfig;
use snapvault_events::domain::claim::{ClaimCommand, ClaimEvent};
use snapvault_events::domain::gc::GC_CLAIM_STREAM;
use snapvault_events::{Error, ErrorCode};
use std::time::Duration;

/// The GC cycle's claim, as an entity of its own stream.
pub struct GcClaim;

impl Aggregate for GcClaim {
    type State = ClaimState;
    type Command = ClaimCommand;
    type Event = ClaimEvent;
    const KIND: &'static str = "gc claim";

    fn decide(s: &ClaimState, c: &ClaimCommand, now_ms: u64) -> Result<Vec<ClaimEvent>, Error> {
        s.decide(c, now_ms, "the GC cycle")
    }

    fn evolve(s: &mut ClaimState, e: &ClaimEvent) {
        s.evolve(e)
    }
}

/// The claim a running cycle holds; renewed in the background until dropped or released.
pub struct CycleClaim {
    registry: Registry,
    node: String,
    epoch: u64,
    renewer: tokio::task::JoinHandle<()>,
}

/// How a claim attempt ended.
pub enum Attempt {
    Held(CycleClaim),
    /// Another node runs a cycle: its id.
    Busy(String),
}

/// Try once to claim the GC cycle for this node.
pub async fn try_claim(registry: &Registry, work: &WorkConfig) -> Result<Attempt, Error> {
    let now_ms = registry.clock().now_ms();
    let claim = ClaimCommand::Claim {
        node: work.node_id.clone(),
        deadline_ms: now_ms + work.claim_ttl_ms,
        take_over_own: work.take_over_own,
    };
    match registry.execute::<GcClaim>(GC_CLAIM_STREAM, claim, 0).await {
        Ok(done) => {
            let epoch = done.events.iter().find_map(|e| match e {
                ClaimEvent::Claimed { epoch, .. } => Some(*epoch),
                _ => None,
            });
            let Some(epoch) = epoch else {
                return Err(Error::internal("a granted GC claim recorded no claim"));
            };
            Ok(Attempt::Held(CycleClaim::hold(
                registry.clone(),
                work,
                epoch,
            )))
        }
        Err(e) if e.code == ErrorCode::FailedPrecondition => {
            let holder = registry
                .inspect_latest::<GcClaim, _>(GC_CLAIM_STREAM, |_, s| {
                    s.holder.as_ref().map(|c| c.node.clone())
                })
                .await?
                .unwrap_or_default();
            Ok(Attempt::Busy(holder))
        }
        Err(e) => Err(e),
    }
}

impl CycleClaim {
    fn hold(registry: Registry, work: &WorkConfig, epoch: u64) -> CycleClaim {
        let node = work.node_id.clone();
        let ttl_ms = work.claim_ttl_ms;
        let r = registry.clone();
        let n = node.clone();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis((ttl_ms / 3).max(1))).await;
                let renew = ClaimCommand::Renew {
                    node: n.clone(),
                    epoch,
                    deadline_ms: r.clock().now_ms() + ttl_ms,
                };
                if let Err(e) = r.execute::<GcClaim>(GC_CLAIM_STREAM, renew, 0).await
                    && e.code == ErrorCode::FailedPrecondition
                {
                    tracing::warn!(error = %e, "the GC cycle's claim was lost; the cycle finishes its announced deletes");
                    return;
                }
            }
        });
        CycleClaim {
            registry,
            node,
            epoch,
            renewer,
        }
    }

    /// The cycle is over: stop renewing and give the claim back.
    pub async fn release(self) {
        self.renewer.abort();
        let release = ClaimCommand::Release {
            node: self.node.clone(),
            epoch: self.epoch,
        };
        if let Err(e) = self
            .registry
            .execute::<GcClaim>(GC_CLAIM_STREAM, release, 0)
            .await
        {
            tracing::info!(error = %e, "the GC claim was not released; it lapses");
        }
    }
}

impl Drop for CycleClaim {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
