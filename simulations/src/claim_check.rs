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
//!
//! And one timed invariant, checked once every fault is healed ([`ClaimAudit::overdue`]):
//! **no work stays unclaimed past its deadline plus the reconcile interval.** A unit that
//! needs a holder (a pending snapshot create or drop, an unfinished restore job's
//! coordination, a running refresh task) and has none — never claimed, released, or its
//! holder's deadline passed — must be claimed again within two reconcile intervals and a
//! fixed allowance for the pass that reaches it. Copy tasks wait for capacity (a node's
//! `max_tasks`, the job's parallelism) and retry backoffs by design, so for them the bound
//! holds only while it is unambiguous: a free task of a running job may not wait past the
//! bound while no live node holds any copy task at all.

use snapvault_events::Envelope;
use snapvault_events::codec::decode;
use snapvault_events::domain::claim::{Claim, ClaimEvent};
use snapvault_events::domain::external::ExternalTaskEvent;
use snapvault_events::domain::restore::{CopyTaskEvent, RestoreEvent};
use snapvault_events::domain::restore::{CopyTaskStatus, RestoreStatus, parse_copy_task_stream};
use snapvault_events::domain::snapshot::SnapshotEvent;
use snapvault_events::domain::snapshot::SnapshotStatus;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
struct Track {
    holder: Option<Claim>,
    last_epoch: u64,
    /// Time of the unit's first event.
    first_ms: u64,
    /// Time of the unit's last release or end (its first event's until then).
    released_ms: u64,
    /// The last holder's node, and until when it held the unit (its deadline, or the time
    /// it released or ended the unit).
    last_holder: Option<(String, u64)>,
}

impl Track {
    /// Since when the unit has had no live holder at `now_ms`, or `None` while one holds it.
    /// A snapshot or refresh task nobody ever claimed is left to its creator for one claim
    /// lifetime (the reconcilers do the same).
    fn free_since_ms(&self, now_ms: u64, grace_ms: u64) -> Option<u64> {
        match &self.holder {
            Some(h) if h.deadline_ms > now_ms => None,
            Some(h) => Some(h.deadline_ms),
            None if self.last_epoch == 0 => Some(self.first_ms.saturating_add(grace_ms)),
            None => Some(self.released_ms),
        }
    }
}

/// The bounds of the timed claim invariant, from the run's configuration.
#[derive(Debug, Clone, Copy)]
pub struct ClaimBounds {
    pub claim_ttl_ms: u64,
    /// The restore manager's reconcile interval (`WorkConfig::reconcile_ms`).
    pub restore_reconcile_ms: u64,
    /// The snapshot and external reconciler's interval (at least one second).
    pub node_reconcile_ms: u64,
    pub placement_delay_ms: u64,
    /// The longest a node waits before it retries a copy task that failed transiently.
    pub retry_max_ms: u64,
}

/// What a reconcile pass may take on top of its interval to reach a unit (it runs the
/// units it finds one after another).
const PASS_ALLOWANCE_MS: u64 = 2_000;

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
        let t = self
            .units
            .entry(env.stream.clone())
            .or_insert_with(|| Track {
                first_ms: env.time_ms,
                released_ms: env.time_ms,
                ..Track::default()
            });
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
                t.last_holder = Some((node.clone(), deadline_ms));
                t.holder = Some(Claim {
                    node,
                    epoch,
                    deadline_ms,
                });
                t.last_epoch = epoch;
                self.claims += 1;
            }
            Step::Claim(ClaimEvent::Renewed { epoch, deadline_ms }) => match &mut t.holder {
                Some(h) if h.epoch == epoch => {
                    h.deadline_ms = deadline_ms;
                    if let Some(last) = &mut t.last_holder {
                        last.1 = deadline_ms;
                    }
                }
                h => {
                    return Err(format!(
                        "{at}: renewal of epoch {epoch} while the claim is {h:?}"
                    ));
                }
            },
            Step::Claim(ClaimEvent::Released { epoch, .. }) => match &t.holder {
                Some(h) if h.epoch == epoch => {
                    t.holder = None;
                    t.released_ms = env.time_ms;
                    if let Some(last) = &mut t.last_holder {
                        last.1 = last.1.min(env.time_ms);
                    }
                }
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
                if let (Some(h), Some(last)) = (t.holder.take(), &mut t.last_holder) {
                    last.1 = h.deadline_ms.min(env.time_ms);
                }
                t.released_ms = env.time_ms;
            }
            Step::Other => {}
        }
        Ok(())
    }
}

impl ClaimAudit {
    /// The timed invariant (module doc): units that needed a holder and had none for longer
    /// than their bound at `now_ms`, counting from `healed_ms` at the earliest (faults stop
    /// claims legitimately). `live_nodes` are the nodes running now; `truth` says which
    /// units still need a holder. Empty when every unit is claimed in time.
    pub fn overdue(
        &self,
        truth: &crate::invariants::Truth,
        now_ms: u64,
        healed_ms: u64,
        live_nodes: &BTreeSet<String>,
        b: ClaimBounds,
    ) -> Vec<String> {
        let mut late = Vec::new();
        let unit_bound = |reconcile_ms: u64| 2 * reconcile_ms + PASS_ALLOWANCE_MS;
        let copy_bound =
            b.placement_delay_ms + b.retry_max_ms + unit_bound(b.restore_reconcile_ms.max(1));
        // Until when some live node held a copy task (`now_ms` while one does).
        let copies_busy_until_ms = self
            .units
            .iter()
            .filter(|(s, _)| s.starts_with("copytask-"))
            .filter_map(|(_, t)| t.last_holder.as_ref())
            .filter(|(node, _)| live_nodes.contains(node))
            .map(|(_, until)| (*until).min(now_ms))
            .max()
            .unwrap_or(0);
        for (stream, t) in &self.units {
            let needs_holder = if let Some(id) = id_of(stream, "snapshot-") {
                matches!(
                    truth.snapshot_status(id),
                    Some(SnapshotStatus::Pending | SnapshotStatus::Deleting)
                )
            } else if let Some(id) = id_of(stream, "restore-") {
                truth
                    .restores
                    .jobs
                    .get(&id)
                    .is_some_and(|j| !j.status().is_some_and(|s| s.is_terminal()))
            } else if let Some(id) = id_of(stream, "external-") {
                truth
                    .external
                    .tasks
                    .get(&id)
                    .is_some_and(|s| s.is_running())
            } else if let Some((job, task)) = parse_copy_task_stream(stream) {
                truth.restores.jobs.get(&job).and_then(|j| j.status())
                    == Some(RestoreStatus::Running)
                    && truth
                        .restores
                        .tasks
                        .get(&(job, task))
                        .is_some_and(|r| r.state.status == Some(CopyTaskStatus::Planned))
                    && !truth
                        .restores
                        .jobs
                        .get(&job)
                        .is_some_and(|j| j.state.completed_tasks.contains(&task))
            } else {
                false
            };
            if !needs_holder {
                continue;
            }
            let grace_ms = if stream.starts_with("snapshot-") || stream.starts_with("external-") {
                b.claim_ttl_ms
            } else {
                0
            };
            let Some(free_ms) = t.free_since_ms(now_ms, grace_ms) else {
                continue;
            };
            let free_ms = free_ms.max(healed_ms);
            let (bound_ms, since_ms) = if stream.starts_with("copytask-") {
                // Only while no live node has held any copy task since the task was free.
                (copy_bound, free_ms.max(copies_busy_until_ms))
            } else if stream.starts_with("restore-") {
                (unit_bound(b.restore_reconcile_ms.max(1)), free_ms)
            } else {
                (unit_bound(b.node_reconcile_ms), free_ms)
            };
            if now_ms > since_ms.saturating_add(bound_ms) {
                late.push(format!(
                    "'{stream}' has had no holder since {free_ms} ms (last holder {:?}): still unclaimed at {now_ms} ms, past the bound of {bound_ms} ms",
                    t.last_holder
                ));
            }
        }
        late
    }
}

impl ClaimAudit {
    /// A unit whose claim is live at `now_ms`, and its epoch (for a planted bug).
    pub fn live_unit(&self, now_ms: u64) -> Option<(String, u64)> {
        self.units.iter().find_map(|(stream, t)| {
            t.holder
                .as_ref()
                .filter(|h| h.deadline_ms > now_ms)
                .map(|h| (stream.clone(), h.epoch))
        })
    }
}

/// The id of a `{prefix}{id}` stream.
fn id_of(stream: &str, prefix: &str) -> Option<u64> {
    stream.strip_prefix(prefix)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::{ReplayedSnapshot, Truth};
    use snapvault_events::codec::encode;
    use snapvault_events::domain::snapshot::snapshot_stream;

    const BOUNDS: ClaimBounds = ClaimBounds {
        claim_ttl_ms: 15_000,
        restore_reconcile_ms: 1_000,
        node_reconcile_ms: 1_000,
        placement_delay_ms: 0,
        retry_max_ms: 10_000,
    };

    fn claim_env(stream: &str, version: u64, time_ms: u64, event: ClaimEvent) -> Envelope {
        let new = encode(&SnapshotEvent::Claim(event)).expect("encodes");
        Envelope {
            stream: stream.to_string(),
            version,
            position: version,
            event_type: new.event_type,
            schema_version: new.schema_version,
            time_ms,
            correlation_id: 0,
            causation_id: 0,
            payload: new.payload,
            crc32c: 0,
        }
    }

    /// Snapshot 7 is pending; node `a` claimed it at 1 s until 16 s and was never heard of
    /// again.
    fn lapsed_pending_snapshot() -> (ClaimAudit, Truth) {
        let stream = snapshot_stream(7);
        let mut audit = ClaimAudit::default();
        audit
            .apply(&claim_env(
                &stream,
                1,
                1_000,
                ClaimEvent::Claimed {
                    node: "a".to_string(),
                    epoch: 1,
                    deadline_ms: 16_000,
                    at_ms: 1_000,
                },
            ))
            .expect("a first claim is fine");
        let mut truth = Truth::default();
        let mut snapshot = ReplayedSnapshot::default();
        snapshot.state.status = Some(SnapshotStatus::Pending);
        truth.snapshots.insert(7, snapshot);
        (audit, truth)
    }

    #[test]
    fn a_lapsed_claim_is_overdue_only_after_the_reconcile_bound() {
        let (audit, truth) = lapsed_pending_snapshot();
        let live = BTreeSet::from(["b".to_string()]);
        // Held, then within 2 reconcile intervals + the pass allowance of its deadline.
        for now_ms in [10_000, 16_000, 20_000] {
            assert!(audit.overdue(&truth, now_ms, 0, &live, BOUNDS).is_empty());
        }
        let late = audit.overdue(&truth, 20_001, 0, &live, BOUNDS);
        assert_eq!(late.len(), 1, "{late:?}");
        assert!(late[0].contains("'snapshot-7'"), "{late:?}");
        // Faults stop claims: the bound counts from the heal at the earliest.
        assert!(
            audit
                .overdue(&truth, 20_001, 18_000, &live, BOUNDS)
                .is_empty()
        );
    }

    #[test]
    fn a_unit_that_no_longer_needs_a_holder_is_never_overdue() {
        let (audit, mut truth) = lapsed_pending_snapshot();
        let live = BTreeSet::from(["b".to_string()]);
        if let Some(s) = truth.snapshots.get_mut(&7) {
            s.state.status = Some(SnapshotStatus::Committed);
        }
        assert!(audit.overdue(&truth, 60_000, 0, &live, BOUNDS).is_empty());
    }

    #[test]
    fn a_takeover_in_time_clears_it() {
        let (mut audit, truth) = lapsed_pending_snapshot();
        audit
            .apply(&claim_env(
                &snapshot_stream(7),
                2,
                17_000,
                ClaimEvent::Claimed {
                    node: "b".to_string(),
                    epoch: 2,
                    deadline_ms: 32_000,
                    at_ms: 17_000,
                },
            ))
            .expect("a takeover after the deadline is fine");
        let live = BTreeSet::from(["b".to_string()]);
        assert!(audit.overdue(&truth, 30_000, 0, &live, BOUNDS).is_empty());
        assert_eq!(audit.takeovers, 1);
    }
}
