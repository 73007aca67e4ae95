//! The external update task's life cycle: Running → Committed | Superseded | Cancelled |
//! Failed. Pure.
//!
//! A running task is run by the node holding its claim (design §10, `crate::claim`): its
//! progress is recorded under the claim's epoch, so a holder that lost the task to another
//! node is refused at its next step and stops. The end (`Finish`) is not fenced: the
//! collection decided it already, and any node may record it.
//!
//! The task stream *follows* the collection stream, which decides every outcome (see
//! `snapvault_events::domain::external`): the worker writes `Finish` here after the
//! collection recorded the end, and the resume at start reconciles a task whose stream a
//! crash left Running. So `Finish` is idempotent, and a second, different outcome is refused.

use crate::aggregate::Aggregate;
use crate::claim::ClaimState;
use serde::Serialize;
use snapvault_events::Error;
use snapvault_events::domain::claim::ClaimCommand;
use snapvault_events::domain::external::{
    ExternalTaskCommand, ExternalTaskEvent, TaskIdentity, TaskOutcome, TaskPhase, TaskProgress,
    clip_reason,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExternalTaskState {
    pub identity: Option<TaskIdentity>,
    pub started_ms: u64,
    pub phase: Option<TaskPhase>,
    pub progress: TaskProgress,
    pub progress_ms: u64,
    pub outcome: Option<TaskOutcome>,
    pub finished_ms: Option<u64>,
    /// Which node runs it, until when (design §10). Free once the task ended.
    pub claim: ClaimState,
}

impl ExternalTaskState {
    pub fn is_running(&self) -> bool {
        self.identity.is_some() && self.outcome.is_none()
    }

    /// `running`, or the outcome's name.
    pub fn status(&self) -> &'static str {
        match (&self.identity, &self.outcome) {
            (None, _) => "unknown",
            (Some(_), None) => "running",
            (Some(_), Some(o)) => o.as_str(),
        }
    }
}

pub struct ExternalTask;

impl crate::claim_holder::Claimable for ExternalTask {
    fn claim_command(command: ClaimCommand) -> ExternalTaskCommand {
        ExternalTaskCommand::Claim(command)
    }
    fn claim_event(
        event: &ExternalTaskEvent,
    ) -> Option<&snapvault_events::domain::claim::ClaimEvent> {
        match event {
            ExternalTaskEvent::Claim(c) => Some(c),
            _ => None,
        }
    }
}

impl Aggregate for ExternalTask {
    type State = ExternalTaskState;
    type Command = ExternalTaskCommand;
    type Event = ExternalTaskEvent;
    const KIND: &'static str = "external task";

    fn decide(
        s: &ExternalTaskState,
        command: &ExternalTaskCommand,
        now_ms: u64,
    ) -> Result<Vec<ExternalTaskEvent>, Error> {
        use ExternalTaskCommand as C;
        use ExternalTaskEvent as E;
        match command {
            C::Start { identity } => match &s.identity {
                Some(existing) if existing == identity => Ok(vec![]),
                Some(existing) => Err(Error::already_exists(format!(
                    "task {} already started for collection {}",
                    existing.task_id, existing.collection_id
                ))),
                None => {
                    if identity.task_id == 0 || identity.collection_id == 0 {
                        return Err(Error::invalid_argument(
                            "task and collection ids must not be 0",
                        ));
                    }
                    identity.config.check()?;
                    Ok(vec![E::Started {
                        identity: identity.clone(),
                        started_ms: now_ms,
                    }])
                }
            },
            C::Progress {
                epoch,
                phase,
                progress,
            } => {
                let Some(identity) = &s.identity else {
                    return Err(Error::not_found("external task not found"));
                };
                // Late progress of a finished task changes nothing.
                if s.outcome.is_some() {
                    return Ok(vec![]);
                }
                // Checked before the repeat test, so a repeat doubles as "do I still hold it?".
                s.claim
                    .fence(*epoch, &format!("external task {}", identity.task_id))?;
                if s.phase == Some(*phase) && s.progress == *progress {
                    return Ok(vec![]);
                }
                Ok(vec![E::Progressed {
                    phase: *phase,
                    progress: *progress,
                    at_ms: now_ms,
                }])
            }
            C::Finish { outcome } => {
                if s.identity.is_none() {
                    return Err(Error::not_found("external task not found"));
                }
                match &s.outcome {
                    Some(o) if o == outcome => Ok(vec![]),
                    Some(o) => Err(Error::failed_precondition(format!(
                        "the task already ended {}",
                        o.as_str()
                    ))),
                    None => {
                        let outcome = match outcome {
                            TaskOutcome::Failed { key, reason } => TaskOutcome::Failed {
                                key: clip_reason(key),
                                reason: clip_reason(reason),
                            },
                            TaskOutcome::Superseded { reason } => TaskOutcome::Superseded {
                                reason: clip_reason(reason),
                            },
                            other => other.clone(),
                        };
                        Ok(vec![E::Finished {
                            outcome,
                            finished_ms: now_ms,
                        }])
                    }
                }
            }
            // Only a running task is claimed; renewing or releasing an ended one is a no-op.
            C::Claim(claim) => match (&s.identity, &s.outcome) {
                (None, _) => Err(Error::not_found("external task not found")),
                (Some(identity), None) => Ok(s
                    .claim
                    .decide(
                        claim,
                        now_ms,
                        &format!("external task {}", identity.task_id),
                    )?
                    .into_iter()
                    .map(E::Claim)
                    .collect()),
                (Some(identity), Some(outcome)) if matches!(claim, ClaimCommand::Claim { .. }) => {
                    Err(Error::failed_precondition(format!(
                        "external task {} ended {}; only a running task is claimed",
                        identity.task_id,
                        outcome.as_str()
                    )))
                }
                (Some(_), Some(_)) => Ok(vec![]),
            },
        }
    }

    fn evolve(s: &mut ExternalTaskState, event: &ExternalTaskEvent) {
        match event {
            ExternalTaskEvent::Started {
                identity,
                started_ms,
            } => {
                s.identity = Some(identity.clone());
                s.started_ms = *started_ms;
                s.phase = Some(TaskPhase::Listing);
            }
            ExternalTaskEvent::Progressed {
                phase,
                progress,
                at_ms,
            } => {
                s.phase = Some(*phase);
                s.progress = *progress;
                s.progress_ms = *at_ms;
            }
            ExternalTaskEvent::Finished {
                outcome,
                finished_ms,
            } => {
                s.outcome = Some(outcome.clone());
                s.finished_ms = Some(*finished_ms);
                s.claim.end(*finished_ms);
            }
            ExternalTaskEvent::Claim(c) => s.claim.evolve(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given_when;
    use snapvault_events::ErrorCode;
    use snapvault_events::domain::external::{ExternalConfig, ExternalSpec, RefreshCounts};

    fn identity() -> TaskIdentity {
        TaskIdentity {
            task_id: 7,
            collection_id: 3,
            collection_name: "t".into(),
            generation: 1,
            config: ExternalConfig {
                source: "lake/t/".into(),
                spec: ExternalSpec::parse_json(r#"{"format":"parquet"}"#).unwrap(),
            },
        }
    }

    fn started() -> ExternalTaskEvent {
        ExternalTaskEvent::Started {
            identity: identity(),
            started_ms: 1,
        }
    }

    #[test]
    fn start_is_idempotent_and_unique() {
        let (out, state) = given_when::<ExternalTask>(
            &[],
            ExternalTaskCommand::Start {
                identity: identity(),
            },
            5,
        );
        assert_eq!(out.unwrap().len(), 1);
        assert!(state.is_running());
        let (out, _) = given_when::<ExternalTask>(
            &[started()],
            ExternalTaskCommand::Start {
                identity: identity(),
            },
            5,
        );
        assert!(out.unwrap().is_empty(), "a repeated start changes nothing");
        let mut other = identity();
        other.generation = 2;
        let (out, _) = given_when::<ExternalTask>(
            &[started()],
            ExternalTaskCommand::Start { identity: other },
            5,
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::AlreadyExists);
    }

    #[test]
    fn finish_once_then_only_the_same_outcome() {
        let done = TaskOutcome::Committed {
            counts: RefreshCounts {
                kept: 1,
                dropped: 2,
                added: 3,
                fragments: 4,
                rows: 5,
            },
        };
        let (out, state) = given_when::<ExternalTask>(
            &[started()],
            ExternalTaskCommand::Finish {
                outcome: done.clone(),
            },
            9,
        );
        assert_eq!(out.unwrap().len(), 1);
        assert_eq!(state.status(), "committed");
        let finished = ExternalTaskEvent::Finished {
            outcome: done.clone(),
            finished_ms: 9,
        };
        let (out, _) = given_when::<ExternalTask>(
            &[started(), finished.clone()],
            ExternalTaskCommand::Finish { outcome: done },
            10,
        );
        assert!(out.unwrap().is_empty());
        let (out, _) = given_when::<ExternalTask>(
            &[started(), finished.clone()],
            ExternalTaskCommand::Finish {
                outcome: TaskOutcome::Cancelled,
            },
            10,
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::FailedPrecondition);
        let (out, _) = given_when::<ExternalTask>(
            &[started(), finished],
            ExternalTaskCommand::Progress {
                epoch: 0,
                phase: TaskPhase::ReadingFooters,
                progress: TaskProgress::default(),
            },
            10,
        );
        assert!(out.unwrap().is_empty(), "late progress is ignored");
    }

    fn claimed(node: &str, epoch: u64, deadline_ms: u64) -> ExternalTaskEvent {
        ExternalTaskEvent::Claim(snapvault_events::domain::claim::ClaimEvent::Claimed {
            node: node.into(),
            epoch,
            deadline_ms,
            at_ms: 0,
        })
    }

    fn progress(epoch: u64, listed: u64) -> ExternalTaskCommand {
        ExternalTaskCommand::Progress {
            epoch,
            phase: TaskPhase::Listing,
            progress: TaskProgress {
                fragments_listed: listed,
                ..TaskProgress::default()
            },
        }
    }

    #[test]
    fn progress_is_recorded_only_under_the_current_claim() {
        // Unclaimed: refused.
        let (out, _) = given_when::<ExternalTask>(&[started()], progress(1, 5), 2);
        assert_eq!(out.unwrap_err().code, ErrorCode::FailedPrecondition);
        // Claimed by epoch 1: epoch 1 records, a repeat is a no-op that still checks.
        let given = [started(), claimed("a", 1, 100)];
        let (out, _) = given_when::<ExternalTask>(&given, progress(1, 5), 2);
        assert_eq!(out.unwrap().len(), 1);
        // Taken over by epoch 2 after the deadline: the stale holder is refused, even for
        // a repeat of what it recorded.
        let given = [started(), claimed("a", 1, 100), claimed("b", 2, 300)];
        let (out, _) = given_when::<ExternalTask>(&given, progress(1, 0), 150);
        let e = out.unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert!(e.message.contains("claim lost"), "{e}");
    }

    #[test]
    fn a_live_claim_excludes_others_and_the_end_frees_it() {
        let given = [started(), claimed("a", 1, 100)];
        let claim = |node: &str| {
            ExternalTaskCommand::Claim(ClaimCommand::Claim {
                node: node.into(),
                deadline_ms: 500,
                take_over_own: false,
            })
        };
        let (out, _) = given_when::<ExternalTask>(&given, claim("b"), 50);
        assert_eq!(out.unwrap_err().code, ErrorCode::FailedPrecondition);
        let (out, state) = given_when::<ExternalTask>(&given, claim("b"), 100);
        assert_eq!(out.unwrap().len(), 1, "a lapsed claim is taken");
        assert_eq!(
            state.claim.holder.map(|c| (c.node, c.epoch)),
            Some(("b".into(), 2))
        );
        let finished = ExternalTaskEvent::Finished {
            outcome: TaskOutcome::Cancelled,
            finished_ms: 60,
        };
        let given = [started(), claimed("a", 1, 100), finished];
        let (out, state) = given_when::<ExternalTask>(&given, claim("b"), 70);
        assert_eq!(out.unwrap_err().code, ErrorCode::FailedPrecondition);
        assert!(state.claim.holder.is_none(), "the end frees the claim");
        let renew = ExternalTaskCommand::Claim(ClaimCommand::Renew {
            node: "a".into(),
            epoch: 1,
            deadline_ms: 900,
        });
        let (out, _) = given_when::<ExternalTask>(&given, renew, 70);
        assert!(out.unwrap().is_empty(), "renewing an ended task is a no-op");
    }

    #[test]
    fn unknown_task_refuses_progress_and_finish() {
        let (out, _) = given_when::<ExternalTask>(
            &[],
            ExternalTaskCommand::Finish {
                outcome: TaskOutcome::Cancelled,
            },
            1,
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn long_failure_reasons_are_clipped() {
        let (out, state) = given_when::<ExternalTask>(
            &[started()],
            ExternalTaskCommand::Finish {
                outcome: TaskOutcome::Failed {
                    key: "k".into(),
                    reason: "x".repeat(10_000),
                },
            },
            1,
        );
        assert!(out.is_ok());
        match state.outcome {
            Some(TaskOutcome::Failed { reason, .. }) => assert!(reason.len() <= 1024),
            other => panic!("{other:?}"),
        }
    }
}
