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
use crate::claim_holder::{self, ClaimHolder, Claimable};
use crate::registry::Registry;
use crate::work::WorkConfig;
use snapvault_events::Error;
use snapvault_events::domain::claim::{ClaimCommand, ClaimEvent};
use snapvault_events::domain::gc::GC_CLAIM_STREAM;

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

impl Claimable for GcClaim {
    fn claim_command(command: ClaimCommand) -> ClaimCommand {
        command
    }
    fn claim_event(event: &ClaimEvent) -> Option<&ClaimEvent> {
        Some(event)
    }
}

/// The claim a running cycle holds; renewed in the background until dropped or released.
/// A cycle that loses it finishes the deletes it announced (each re-checked against the
/// reference index), so it does not watch [`ClaimHolder::lost`].
pub type CycleClaim = ClaimHolder<GcClaim>;

/// How a claim attempt ended.
pub enum Attempt {
    Held(CycleClaim),
    /// Another node runs a cycle: its id.
    Busy(String),
}

/// Try once to claim the GC cycle for this node.
pub async fn try_claim(registry: &Registry, work: &WorkConfig) -> Result<Attempt, Error> {
    match claim_holder::try_claim::<GcClaim>(registry, work, GC_CLAIM_STREAM, 0).await? {
        claim_holder::Attempt::Held(c) => Ok(Attempt::Held(c)),
        claim_holder::Attempt::Refused(_) => {
            let holder = registry
                .inspect_latest::<GcClaim, _>(GC_CLAIM_STREAM, |_, s| {
                    s.holder.as_ref().map(|c| c.node.clone())
                })
                .await?
                .unwrap_or_default();
            Ok(Attempt::Busy(holder))
        }
    }
}
