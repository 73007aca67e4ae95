//! The pure rules of a claim (design §10): who may take, renew and release a unit of work,
//! and the epoch fence every recorded step of the unit passes.
//!
//! A unit's decider embeds a [`ClaimState`] and calls [`ClaimState::decide`] for claim
//! commands and [`ClaimState::fence`] for commands that record work. It runs under the
//! unit's stream fence, so of two nodes racing for one unit exactly one append wins; the
//! other re-decides on the new state and is refused while the winner's claim is live.
//!
//! Time is the deciding node's `Clock` reading, passed in as `now_ms`. Nodes' clocks may
//! disagree by a bounded skew; a claim's holder stops working once its *own* clock passes
//! the deadline minus a margin (see `ClaimConfig::safety_margin_ms` in the restore context),
//! so a skew smaller than the margin never lets two holders act at once.

use serde::{Deserialize, Serialize};
use snapvault_events::Error;
use snapvault_events::domain::claim::{Claim, ClaimCommand, ClaimEvent, validate_node_id};

/// Longest a claim may be taken or renewed for at once.
pub const MAX_CLAIM_TTL_MS: u64 = 24 * 3_600_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimState {
    /// The current claim (possibly past its deadline); `None` when free.
    pub holder: Option<Claim>,
    /// The highest epoch ever granted; the next claim gets one more.
    pub last_epoch: u64,
    /// When the unit last became free by a release (for placement: how long it has waited).
    pub released_ms: u64,
}

impl ClaimState {
    /// The holder, if its deadline has not passed at `now_ms`.
    pub fn live(&self, now_ms: u64) -> Option<&Claim> {
        self.holder.as_ref().filter(|c| c.deadline_ms > now_ms)
    }

    /// Since when anyone may take the unit: its release, or its holder's deadline.
    pub fn free_since_ms(&self) -> u64 {
        match &self.holder {
            Some(c) => c.deadline_ms,
            None => self.released_ms,
        }
    }

    /// Refuse a step recorded under `epoch` unless that is the current claim's epoch.
    pub fn fence(&self, epoch: u64, what: &str) -> Result<(), Error> {
        match &self.holder {
            Some(c) if c.epoch == epoch => Ok(()),
            Some(c) => Err(Error::failed_precondition(format!(
                "claim lost: {what} is held by node '{}' under epoch {}, not epoch {epoch}",
                c.node, c.epoch
            ))),
            None => Err(Error::failed_precondition(format!(
                "claim lost: {what} is not claimed (epoch {epoch} was released)"
            ))),
        }
    }

    pub fn decide(
        &self,
        command: &ClaimCommand,
        now_ms: u64,
        what: &str,
    ) -> Result<Vec<ClaimEvent>, Error> {
        match command {
            ClaimCommand::Claim {
                node,
                deadline_ms,
                take_over_own,
            } => {
                validate_node_id(node)?;
                check_deadline(*deadline_ms, now_ms)?;
                if let Some(c) = self.live(now_ms)
                    && !(*take_over_own && c.node == *node)
                {
                    return Err(Error::failed_precondition(format!(
                        "{what} is claimed by node '{}' (epoch {}) until {} ms",
                        c.node, c.epoch, c.deadline_ms
                    )));
                }
                Ok(vec![ClaimEvent::Claimed {
                    node: node.clone(),
                    epoch: self.last_epoch + 1,
                    deadline_ms: *deadline_ms,
                    at_ms: now_ms,
                }])
            }
            ClaimCommand::Renew {
                node,
                epoch,
                deadline_ms,
            } => {
                self.fence(*epoch, what)?;
                if self.holder.as_ref().is_some_and(|c| c.node != *node) {
                    return Err(Error::failed_precondition(format!(
                        "claim lost: {what} epoch {epoch} is not held by node '{node}'"
                    )));
                }
                check_deadline(*deadline_ms, now_ms)?;
                Ok(vec![ClaimEvent::Renewed {
                    epoch: *epoch,
                    deadline_ms: *deadline_ms,
                }])
            }
            ClaimCommand::Release { node, epoch } => {
                let held = self
                    .holder
                    .as_ref()
                    .is_some_and(|c| c.epoch == *epoch && c.node == *node);
                Ok(if held {
                    vec![ClaimEvent::Released {
                        epoch: *epoch,
                        at_ms: now_ms,
                    }]
                } else {
                    vec![]
                })
            }
        }
    }

    /// The unit ended (completed, failed): whoever held it holds it no more.
    pub fn end(&mut self, at_ms: u64) {
        if self.holder.take().is_some() {
            self.released_ms = at_ms;
        }
    }

    pub fn evolve(&mut self, event: &ClaimEvent) {
        match event {
            ClaimEvent::Claimed {
                node,
                epoch,
                deadline_ms,
                ..
            } => {
                self.holder = Some(Claim {
                    node: node.clone(),
                    epoch: *epoch,
                    deadline_ms: *deadline_ms,
                });
                self.last_epoch = self.last_epoch.max(*epoch);
            }
            ClaimEvent::Renewed { epoch, deadline_ms } => {
                if let Some(c) = self.holder.as_mut().filter(|c| c.epoch == *epoch) {
                    c.deadline_ms = *deadline_ms;
                }
            }
            ClaimEvent::Released { epoch, at_ms } => {
                if self.holder.as_ref().is_some_and(|c| c.epoch == *epoch) {
                    self.holder = None;
                    self.released_ms = *at_ms;
                }
            }
        }
    }
}

fn check_deadline(deadline_ms: u64, now_ms: u64) -> Result<(), Error> {
    if deadline_ms <= now_ms || deadline_ms - now_ms > MAX_CLAIM_TTL_MS {
        return Err(Error::invalid_argument(format!(
            "a claim's deadline must be in the next {MAX_CLAIM_TTL_MS} ms, got {deadline_ms} at {now_ms}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapvault_events::ErrorCode;

    fn claim(node: &str, deadline_ms: u64) -> ClaimCommand {
        ClaimCommand::Claim {
            node: node.into(),
            deadline_ms,
            take_over_own: false,
        }
    }

    fn apply(s: &mut ClaimState, c: &ClaimCommand, now: u64) -> Result<(), Error> {
        for e in s.decide(c, now, "unit")? {
            s.evolve(&e);
        }
        Ok(())
    }

    #[test]
    fn one_holder_until_its_deadline_then_a_higher_epoch() {
        let mut s = ClaimState::default();
        apply(&mut s, &claim("a", 1_000), 0).unwrap();
        assert_eq!(
            s.live(10).map(|c| (c.node.as_str(), c.epoch)),
            Some(("a", 1))
        );
        // b is refused while a's claim is live, and takes it once the deadline passed.
        let e = apply(&mut s, &claim("b", 2_000), 999).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        apply(&mut s, &claim("b", 2_000), 1_000).unwrap();
        assert_eq!(
            s.holder.as_ref().map(|c| (c.node.as_str(), c.epoch)),
            Some(("b", 2))
        );
        // a's late steps and renewals are fenced out.
        assert!(s.fence(1, "unit").is_err());
        assert!(s.fence(2, "unit").is_ok());
        let renew = ClaimCommand::Renew {
            node: "a".into(),
            epoch: 1,
            deadline_ms: 3_000,
        };
        assert!(s.message_of(&renew, 1_500).contains("claim lost"));
    }

    #[test]
    fn renew_extends_release_frees_and_stale_release_is_a_no_op() {
        let mut s = ClaimState::default();
        apply(&mut s, &claim("a", 1_000), 0).unwrap();
        let renew = ClaimCommand::Renew {
            node: "a".into(),
            epoch: 1,
            deadline_ms: 5_000,
        };
        apply(&mut s, &renew, 900).unwrap();
        assert!(s.live(4_000).is_some());
        let stale = ClaimCommand::Release {
            node: "a".into(),
            epoch: 7,
        };
        assert!(s.decide(&stale, 10, "unit").unwrap().is_empty());
        let release = ClaimCommand::Release {
            node: "a".into(),
            epoch: 1,
        };
        apply(&mut s, &release, 1_200).unwrap();
        assert!(s.holder.is_none());
        assert_eq!(s.free_since_ms(), 1_200);
        // The next claim still gets a higher epoch than any before.
        apply(&mut s, &claim("c", 3_000), 1_300).unwrap();
        assert_eq!(s.holder.as_ref().map(|c| c.epoch), Some(2));
    }

    #[test]
    fn own_takeover_only_when_asked_and_bad_claims_refused() {
        let mut s = ClaimState::default();
        apply(&mut s, &claim("a", 1_000), 0).unwrap();
        assert!(apply(&mut s, &claim("a", 2_000), 10).is_err());
        let own = ClaimCommand::Claim {
            node: "a".into(),
            deadline_ms: 2_000,
            take_over_own: true,
        };
        apply(&mut s, &own, 10).unwrap();
        assert_eq!(s.holder.as_ref().map(|c| c.epoch), Some(2));
        // A deadline in the past, too far ahead, or a bad node id: invalid_argument.
        for bad in [
            claim("z", 5),
            claim("z", MAX_CLAIM_TTL_MS + 100),
            claim("a b", 9_000),
        ] {
            let e = ClaimState::default().decide(&bad, 10, "unit").unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad:?}");
        }
    }

    impl ClaimState {
        fn message_of(&self, c: &ClaimCommand, now: u64) -> String {
            self.decide(c, now, "unit")
                .err()
                .map(|e| e.message)
                .unwrap_or_default()
        }
    }
}
