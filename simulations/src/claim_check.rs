//! The claim invariants (design §10), checked on every event as the checker ingests the log:
//! - a unit's claims have strictly increasing epochs, one more each time;
//! - claims never overlap in time: a new claim is taken only when the unit is free (released
//!   or ended) or its holder's deadline has passed at the new claim's time — except that a
//!   node may take back its *own* claim (an earlier incarnation on a log one process opens,
//!   allowed only to single-node runs);
//! - a renewal or release names the current epoch (others are refused by the decider, so one
//!   in the log is a bug);
//! - every step a copy task records (files copied, completed, failed), and every progress
//!   of an external refresh task, is recorded while a claim is held — so at most one holder acts per epoch, and a stale holder's late writes
//!   never reach the log.

use snapvault_events::Envelope;
use snapvault_events::codec::decode;
use snapvault_events::domain::claim::{Claim, ClaimEvent};
use snapvault_events::domain::external::ExternalTaskEvent;
use snapvault_events::domain::restore::{CopyTaskEvent, RestoreEvent};
use snapvault_events::domain::snapshot::SnapshotEvent;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
struct Track {
    holder: Option<Claim>,
    last_epoch: u64,
}

#[derive(Debug, Default)]
pub struct ClaimAudit {
    units: BTreeMap<String, Track>,
    /// Claims taken, for the stats.
    pub claims: u64,
    /// Claims taken over after a holder's deadline passed.
    pub takeovers: u64,
}

/// What one event means for its unit's claim.
enum Step {
    Claim(ClaimEvent),
    /// A copy task recorded work (must be under a claim).
    Work,
    /// The unit ended: nobody holds it any more.
    End,
    Other,
}

fn step(env: &Envelope) -> Result<Step, String> {
    let bad = |e: snapvault_events::LogError| format!("cannot decode {}: {e}", env.stream);
    Ok(if env.stream.starts_with("copytask-") {
        match decode::<CopyTaskEvent>(env).map_err(bad)? {
            CopyTaskEvent::Claim(c) => Step::Claim(c),
            CopyTaskEvent::FilesCopied { .. } => Step::Work,
            CopyTaskEvent::Completed { .. } | CopyTaskEvent::Failed { .. } => Step::End,
            CopyTaskEvent::Planned { .. } | CopyTaskEvent::Abandoned { .. } => Step::Other,
        }
    } else if env.stream.starts_with("restore-") {
        match decode::<RestoreEvent>(env).map_err(bad)? {
            RestoreEvent::Claim(c) => Step::Claim(c),
            RestoreEvent::Completed { .. } | RestoreEvent::RolledBack { .. } => Step::End,
            _ => Step::Other,
        }
    } else if env.stream.starts_with("external-") {
        match decode::<ExternalTaskEvent>(env).map_err(bad)? {
            ExternalTaskEvent::Claim(c) => Step::Claim(c),
            ExternalTaskEvent::Progressed { .. } => Step::Work,
            ExternalTaskEvent::Finished { .. } => Step::End,
            ExternalTaskEvent::Started { .. } => Step::Other,
        }
    } else if env.stream == snapvault_events::domain::gc::GC_CLAIM_STREAM {
        Step::Claim(decode::<ClaimEvent>(env).map_err(bad)?)
    } else if env.stream.starts_with("snapshot-") {
        match decode::<SnapshotEvent>(env).map_err(bad)? {
            SnapshotEvent::Claim(c) => Step::Claim(c),
            SnapshotEvent::Committed { .. }
            | SnapshotEvent::Failed { .. }
            | SnapshotEvent::Deleted { .. } => Step::End,
            _ => Step::Other,
        }
    } else {
        Step::Other
    })
}

impl ClaimAudit {
    pub fn apply(&mut self, env: &Envelope) -> Result<(), String> {
        let is_work_stream = env.stream.starts_with("copytask-")
            || env.stream.starts_with("restore-")
            || env.stream.starts_with("snapshot-")
            || env.stream.starts_with("external-")
            || env.stream == snapvault_events::domain::gc::GC_CLAIM_STREAM;
        if !is_work_stream {
            return Ok(());
        }
        let at = format!(
            "claim check: '{}' v{} (position {})",
            env.stream, env.version, env.position
        );
        let step = step(env)?;
        let t = self.units.entry(env.stream.clone()).or_default();
        match step {
            Step::Claim(ClaimEvent::Claimed {
                node,
                epoch,
                deadline_ms,
                at_ms,
            }) => {
                if epoch != t.last_epoch + 1 {
                    return Err(format!(
                        "{at}: claim epoch {epoch} after epoch {}",
                        t.last_epoch
                    ));
                }
                if let Some(h) = &t.holder {
                    let own = h.node == node;
                    if h.deadline_ms > at_ms && !own {
                        return Err(format!(
                            "{at}: node '{node}' claimed it at {at_ms} ms while node '{}' held epoch {} until {} ms",
                            h.node, h.epoch, h.deadline_ms
                        ));
                    }
                    self.takeovers += 1;
                }
                t.holder = Some(Claim {
                    node,
                    epoch,
                    deadline_ms,
                });
                t.last_epoch = epoch;
                self.claims += 1;
            }
            Step::Claim(ClaimEvent::Renewed { epoch, deadline_ms }) => match &mut t.holder {
                Some(h) if h.epoch == epoch => h.deadline_ms = deadline_ms,
                h => {
                    return Err(format!(
                        "{at}: renewal of epoch {epoch} while the claim is {h:?}"
                    ));
                }
            },
            Step::Claim(ClaimEvent::Released { epoch, .. }) => match &t.holder {
                Some(h) if h.epoch == epoch => t.holder = None,
                h => {
                    return Err(format!(
                        "{at}: release of epoch {epoch} while the claim is {h:?}"
                    ));
                }
            },
            Step::Work => {
                if t.holder.is_none() {
                    return Err(format!(
                        "{at}: a copy task or refresh task recorded progress while nobody held its claim"
                    ));
                }
            }
            Step::End => {
                if env.stream.starts_with("copytask-") && t.holder.is_none() {
                    return Err(format!(
                        "{at}: a copy task ended while nobody held its claim"
                    ));
                }
                t.holder = None;
            }
            Step::Other => {}
        }
        Ok(())
    }
}
