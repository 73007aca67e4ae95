//! The external update task's life cycle: Running → Committed | Superseded | Cancelled |
//! Failed. Pure.
//!
//! The task stream *follows* the collection stream, which decides every outcome (see
//! `snapvault_events::domain::external`): the worker writes `Finish` here after the
//! collection recorded the end, and the resume at start reconciles a task whose stream a
//! crash left Running. So `Finish` is idempotent, and a second, different outcome is refused.

use crate::aggregate::Aggregate;
use serde::Serialize;
use snapvault_events::Error;
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
            C::Progress { phase, progress } => {
                if s.identity.is_none() {
                    return Err(Error::not_found("external task not found"));
                }
                // Late progress of a finished task, or a repeat, changes nothing.
                if s.outcome.is_some() || (s.phase == Some(*phase) && s.progress == *progress) {
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
            }
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
                phase: TaskPhase::ReadingFooters,
                progress: TaskProgress::default(),
            },
            10,
        );
        assert!(out.unwrap().is_empty(), "late progress is ignored");
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
