//! A claim this node holds on one unit of work (design §10), kept alive in the background.
//!
//! [`try_claim`] records a claim on the unit's own stream (its fence picks one winner among
//! racing nodes). The returned [`ClaimHolder`] renews it once less than `renew_below_ms` is
//! left, and reports the claim *lost* — [`ClaimHolder::lost`] resolves — when another node
//! took it (a renewal refused) or when no renewal landed before `deadline − stop_below_ms` by
//! this node's own clock: past that point another node may take the unit, so the holder must
//! stop acting (self-fencing; the unit's epoch fence refuses what a late holder still tries).
//!
//! One shell for every claimable unit that is run by one task from start to end: a snapshot
//! create or drop, an external refresh task, the GC cycle. (Restore jobs and copy tasks are
//! claimed by the restore reconciler, which renews many claims per tick.)

use crate::aggregate::Aggregate;
use crate::registry::Registry;
use crate::work::WorkConfig;
use snapvault_events::domain::claim::{ClaimCommand, ClaimEvent};
use snapvault_events::{Error, ErrorCode};
use std::marker::PhantomData;
use std::time::Duration;
use tokio::sync::watch;

/// Shortest pause between two renewal attempts after one failed (the log was unavailable).
const RENEW_RETRY_MIN_MS: u64 = 10;

/// A unit whose decider embeds a [`crate::claim::ClaimState`].
pub trait Claimable: Aggregate {
    fn claim_command(command: ClaimCommand) -> Self::Command;
    fn claim_event(event: &Self::Event) -> Option<&ClaimEvent>;
}

/// How a claim attempt ended.
pub enum Attempt<A: Claimable> {
    Held(ClaimHolder<A>),
    /// The unit refused the claim (`failed_precondition`): another node holds it, or the
    /// unit has ended. The decider's reason.
    Refused(Error),
}

/// Try once to claim the unit of `stream` for this node. A refusal is an [`Attempt`]; an
/// `Err` is a failure to reach the log (nothing is known then).
pub async fn try_claim<A: Claimable>(
    registry: &Registry,
    work: &WorkConfig,
    stream: &str,
    correlation_id: u64,
) -> Result<Attempt<A>, Error> {
    let deadline_ms = registry.clock().now_ms() + work.claim_ttl_ms;
    let claim = A::claim_command(ClaimCommand::Claim {
        node: work.node_id.clone(),
        deadline_ms,
        take_over_own: work.take_over_own,
    });
    match registry.execute::<A>(stream, claim, correlation_id).await {
        Ok(done) => {
            let epoch = done
                .events
                .iter()
                .filter_map(A::claim_event)
                .find_map(|e| match e {
                    ClaimEvent::Claimed { epoch, .. } => Some(*epoch),
                    _ => None,
                })
                .ok_or_else(|| {
                    Error::internal(format!("a granted claim on '{stream}' recorded no claim"))
                })?;
            Ok(Attempt::Held(ClaimHolder::hold(
                registry.clone(),
                work,
                stream.to_string(),
                correlation_id,
                epoch,
                deadline_ms,
            )))
        }
        Err(e) if e.code == ErrorCode::FailedPrecondition => Ok(Attempt::Refused(e)),
        Err(e) => Err(e),
    }
}

/// A claim held by this node; renewed until released or dropped.
pub struct ClaimHolder<A: Claimable> {
    registry: Registry,
    node: String,
    stream: String,
    correlation_id: u64,
    epoch: u64,
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
    unit: PhantomData<fn() -> A>,
}

impl<A: Claimable> ClaimHolder<A> {
    fn hold(
        registry: Registry,
        work: &WorkConfig,
        stream: String,
        correlation_id: u64,
        epoch: u64,
        deadline_ms: u64,
    ) -> ClaimHolder<A> {
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew::<A>(
            registry.clone(),
            work.clone(),
            stream.clone(),
            correlation_id,
            epoch,
            deadline_ms,
            lost_tx,
        ));
        ClaimHolder {
            registry,
            node: work.node_id.clone(),
            stream,
            correlation_id,
            epoch,
            lost,
            renewer,
            unit: PhantomData,
        }
    }

    /// The epoch every step of the unit is recorded under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Resolves once the claim is lost (taken by another node, or not renewed in time).
    pub async fn lost(&mut self) {
        // An error means the renewer ended without a word: treat as lost.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// The work is over (or given up): stop renewing and free the unit at once, so another
    /// node need not wait for the deadline. A failed release only means the claim lapses.
    pub async fn release(self) {
        self.renewer.abort();
        let release = A::claim_command(ClaimCommand::Release {
            node: self.node.clone(),
            epoch: self.epoch,
        });
        if let Err(e) = self
            .registry
            .execute::<A>(&self.stream, release, self.correlation_id)
            .await
        {
            tracing::info!(stream = %self.stream, error = %e, "claim not released; it lapses");
        }
    }
}

impl<A: Claimable> Drop for ClaimHolder<A> {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// The renewal loop of one claim: renew when less than `renew_below_ms` is left; report it
/// lost on a refusal or once less than `stop_below_ms` is left without a renewal.
async fn renew<A: Claimable>(
    registry: Registry,
    work: WorkConfig,
    stream: String,
    correlation_id: u64,
    epoch: u64,
    mut deadline_ms: u64,
    lost: watch::Sender<bool>,
) {
    let retry_ms = (work.claim_ttl_ms / 30).max(RENEW_RETRY_MIN_MS);
    let mut failed = false;
    loop {
        let now_ms = registry.clock().now_ms();
        let renew_at_ms = deadline_ms.saturating_sub(work.renew_below_ms());
        let wait_ms = if failed {
            retry_ms
        } else {
            renew_at_ms.saturating_sub(now_ms)
        };
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        let now_ms = registry.clock().now_ms();
        if now_ms.saturating_add(work.stop_below_ms()) >= deadline_ms {
            tracing::warn!(%stream, epoch, "claim not renewed in time; this node stops its work");
            let _ = lost.send(true);
            return;
        }
        let next_deadline_ms = now_ms + work.claim_ttl_ms;
        let command = A::claim_command(ClaimCommand::Renew {
            node: work.node_id.clone(),
            epoch,
            deadline_ms: next_deadline_ms,
        });
        match registry
            .execute::<A>(&stream, command, correlation_id)
            .await
        {
            Ok(done) => {
                failed = false;
                // An ended unit renews nothing: its claim ended with it.
                if done.events.is_empty() {
                    return;
                }
                deadline_ms = next_deadline_ms;
            }
            Err(e) if e.code == ErrorCode::FailedPrecondition => {
                tracing::info!(%stream, error = %e, "claim lost; this node stops its work");
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                tracing::debug!(%stream, error = %e, "claim not renewed yet");
                failed = true;
            }
        }
    }
}
