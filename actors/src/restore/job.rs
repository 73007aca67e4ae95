//! Restore job decider: the life cycle of one restore.
//!
//! `Pending → Running → Committing → Completed`; from Pending, Running or Committing a failure
//! goes to `RollingBack → Failed`, and from Pending or Running a cancel goes to
//! `RollingBack → Cancelled`. Committing cannot be cancelled: by then every byte is copied
//! and checked, and the commit is a few idempotent appends; cancelling it would only race them.
//!
//! Every command is idempotent when repeated with the same content, because the runner that
//! sends them resumes after crashes and may ask twice.

use crate::aggregate::Aggregate;
use crate::claim::ClaimState;
use serde::{Deserialize, Serialize};
use snapvault_events::Error;
use snapvault_events::domain::JobId;
use snapvault_events::domain::claim::ClaimCommand;
use snapvault_events::domain::restore::{
    MAX_PARALLELISM, MAX_REQUESTED_PARTITIONS, MAX_TASKS_PER_EVENT, RestoreCommand, RestoreEvent,
    RestoreRequest, RestoreStatus, RestoreTotals, TaskSummary, bounded_reason,
};
use snapvault_events::validate::validate_name;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJobState {
    pub request: Option<RestoreRequest>,
    pub status: Option<RestoreStatus>,
    pub requested_ms: u64,
    /// The id block new segment and build ids are drawn from: (first, count).
    pub ids: Option<(u64, u64)>,
    /// Tasks planned so far; task `n` is at index `n`.
    pub tasks: Vec<TaskSummary>,
    /// Set by `Started`: the plan is complete.
    pub totals: Option<RestoreTotals>,
    pub started_ms: Option<u64>,
    pub completed_tasks: BTreeSet<u32>,
    pub commit_started_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub failure: Option<String>,
    pub cancelled: bool,
    pub rollback_started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub objects_deleted: u64,
    /// Which node coordinates the job (design §10).
    pub claim: ClaimState,
}

impl RestoreJobState {
    pub fn job_id(&self) -> JobId {
        self.request.as_ref().map_or(0, |r| r.job_id)
    }

    fn label(&self) -> String {
        match &self.request {
            Some(r) => format!("restore job {} (into '{}')", r.job_id, r.target_name),
            None => "restore job".to_string(),
        }
    }

    fn status_str(&self) -> &'static str {
        self.status.map_or("unknown", RestoreStatus::as_str)
    }

    fn refuse(&self, what: &str) -> Error {
        Error::failed_precondition(format!("{} is {}; {what}", self.label(), self.status_str()))
    }
}

/// Check a request's own fields (the client checks what needs the snapshot and the catalog).
pub fn check_request(r: &RestoreRequest) -> Result<(), Error> {
    if r.job_id == 0 || r.target_collection_id == 0 || r.snapshot_id == 0 {
        return Err(Error::invalid_argument(
            "job, snapshot and target collection ids must not be 0",
        ));
    }
    validate_name("target collection name", &r.target_name)?;
    let o = &r.options;
    if o.parallelism == 0 || o.parallelism > MAX_PARALLELISM {
        return Err(Error::invalid_argument(format!(
            "parallelism must be 1..={MAX_PARALLELISM}, got {}",
            o.parallelism
        )));
    }
    if o.max_bytes_per_sec == Some(0) {
        return Err(Error::invalid_argument(
            "the bandwidth limit must be a positive number of bytes per second",
        ));
    }
    if o.partitions.len() > MAX_REQUESTED_PARTITIONS {
        return Err(Error::invalid_argument(format!(
            "at most {MAX_REQUESTED_PARTITIONS} partitions may be named, got {}",
            o.partitions.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for p in &o.partitions {
        validate_name("partition name", p)?;
        if !seen.insert(p.as_str()) {
            return Err(Error::invalid_argument(format!(
                "partition '{p}' is named twice"
            )));
        }
    }
    Ok(())
}

pub struct RestoreJob;

impl crate::claim_holder::Claimable for RestoreJob {
    fn claim_command(command: snapvault_events::domain::claim::ClaimCommand) -> RestoreCommand {
        RestoreCommand::Claim(command)
    }
    fn claim_event(event: &RestoreEvent) -> Option<&snapvault_events::domain::claim::ClaimEvent> {
        match event {
            RestoreEvent::Claim(c) => Some(c),
            _ => None,
        }
    }
}

impl Aggregate for RestoreJob {
    type State = RestoreJobState;
    type Command = RestoreCommand;
    type Event = RestoreEvent;
    const KIND: &'static str = "restore job";

    fn decide(
        s: &RestoreJobState,
        command: &RestoreCommand,
        now_ms: u64,
    ) -> Result<Vec<RestoreEvent>, Error> {
        use RestoreCommand as C;
        use RestoreEvent as E;
        use RestoreStatus as S;
        if s.request.is_none() && !matches!(command, C::Request { .. }) {
            return Err(Error::not_found("restore job not found"));
        }
        match command {
            C::Request { request, claim } => {
                if let Some(existing) = &s.request {
                    return if existing == request {
                        Ok(vec![])
                    } else {
                        Err(Error::already_exists(format!(
                            "restore job {} already exists",
                            existing.job_id
                        )))
                    };
                }
                check_request(request)?;
                let mut out = vec![E::Requested {
                    request: request.clone(),
                    requested_ms: now_ms,
                }];
                if let Some(claim) = claim {
                    let label = format!("restore job {}", request.job_id);
                    out.extend(
                        s.claim
                            .decide(claim, now_ms, &label)?
                            .into_iter()
                            .map(E::Claim),
                    );
                }
                Ok(out)
            }
            C::Fenced { epoch, command } => {
                // An ended job holds no claim; repeats of its last steps stay no-ops.
                if !s.status.is_some_and(RestoreStatus::is_terminal) {
                    s.claim.fence(*epoch, &s.label())?;
                }
                Self::decide(s, command, now_ms)
            }
            C::Claim(claim) => {
                let ended = s.status.is_some_and(RestoreStatus::is_terminal);
                if ended && matches!(claim, ClaimCommand::Claim { .. }) {
                    return Err(s.refuse("an ended job is not claimed"));
                }
                Ok(s
                    .claim
                    .decide(claim, now_ms, &s.label())?
                    .into_iter()
                    .map(E::Claim)
                    .collect())
            }
            C::ReserveIds { first, count } => match (s.status, s.ids) {
                (_, Some(ids)) if ids == (*first, *count) => Ok(vec![]),
                (_, Some(_)) => Err(Error::failed_precondition(format!(
                    "{} already reserved other ids",
                    s.label()
                ))),
                (Some(S::Pending), None) if *first > 0 => Ok(vec![E::IdsReserved {
                    first: *first,
                    count: *count,
                }]),
                (Some(S::Pending), None) => Err(Error::invalid_argument("id 0 is never allocated")),
                _ => Err(s.refuse("ids are reserved while it is pending")),
            },
            C::RecordTasks { tasks } => {
                if s.status != Some(S::Pending) || s.totals.is_some() {
                    // A repeat after the plan completed is a no-op when it matches.
                    let all_known = tasks
                        .iter()
                        .all(|t| s.tasks.get(t.task as usize) == Some(t));
                    return if all_known {
                        Ok(vec![])
                    } else {
                        Err(s.refuse("tasks are planned while it is pending"))
                    };
                }
                if s.ids.is_none() {
                    return Err(s.refuse("its ids must be reserved before tasks are planned"));
                }
                if tasks.len() > MAX_TASKS_PER_EVENT {
                    return Err(Error::invalid_argument(format!(
                        "at most {MAX_TASKS_PER_EVENT} tasks are recorded at once"
                    )));
                }
                let mut next = s.tasks.len() as u64;
                let mut new = Vec::new();
                for t in tasks {
                    match s.tasks.get(t.task as usize) {
                        Some(known) if known == t => continue,
                        Some(_) => {
                            return Err(Error::failed_precondition(format!(
                                "task {} of {} was planned differently before",
                                t.task,
                                s.label()
                            )));
                        }
                        None if u64::from(t.task) == next => {
                            new.push(*t);
                            next += 1;
                        }
                        None => {
                            return Err(Error::invalid_argument(format!(
                                "task {} is out of order; {} tasks are planned",
                                t.task, next
                            )));
                        }
                    }
                }
                Ok(if new.is_empty() {
                    vec![]
                } else {
                    vec![E::TasksPlanned { tasks: new }]
                })
            }
            C::Start { totals } => match s.status {
                Some(S::Pending) => {
                    let mut sum = RestoreTotals {
                        tasks: s.tasks.len() as u32,
                        ..RestoreTotals::default()
                    };
                    for t in &s.tasks {
                        sum.segments += u64::from(t.segments);
                        sum.files += t.files;
                        sum.bytes += t.bytes;
                    }
                    if sum != *totals {
                        return Err(Error::failed_precondition(format!(
                            "{} plans {sum:?}, not {totals:?}",
                            s.label()
                        )));
                    }
                    Ok(vec![E::Started {
                        totals: *totals,
                        started_ms: now_ms,
                    }])
                }
                _ if s.totals == Some(*totals) => Ok(vec![]),
                _ => Err(s.refuse("only a pending job starts")),
            },
            C::CompleteTask { task } => match s.status {
                Some(S::Running) if (*task as usize) < s.tasks.len() => {
                    if s.completed_tasks.contains(task) {
                        Ok(vec![])
                    } else {
                        Ok(vec![E::TaskCompleted { task: *task }])
                    }
                }
                Some(S::Running) => Err(Error::invalid_argument(format!(
                    "{} has no task {task}",
                    s.label()
                ))),
                _ if s.completed_tasks.contains(task) => Ok(vec![]),
                _ => Err(s.refuse("tasks complete while it is running")),
            },
            C::BeginCommit => match s.status {
                Some(S::Running) if s.completed_tasks.len() == s.tasks.len() => {
                    Ok(vec![E::CommitStarted { at_ms: now_ms }])
                }
                Some(S::Running) => Err(Error::failed_precondition(format!(
                    "{} has {} of {} tasks complete; it commits when all are",
                    s.label(),
                    s.completed_tasks.len(),
                    s.tasks.len()
                ))),
                Some(S::Committing) | Some(S::Completed) => Ok(vec![]),
                _ => Err(s.refuse("only a running job commits")),
            },
            C::Complete => match s.status {
                Some(S::Committing) => Ok(vec![E::Completed {
                    completed_ms: now_ms,
                }]),
                Some(S::Completed) => Ok(vec![]),
                _ => Err(s.refuse("only a committing job completes")),
            },
            C::Fail { reason } => match s.status {
                Some(S::Pending) | Some(S::Running) | Some(S::Committing) => {
                    Ok(vec![E::RollbackStarted {
                        reason: bounded_reason(reason),
                        cancelled: false,
                        at_ms: now_ms,
                    }])
                }
                Some(S::RollingBack) | Some(S::Failed) | Some(S::Cancelled) => Ok(vec![]),
                _ => Err(s.refuse("a completed job cannot fail")),
            },
            C::Cancel => match s.status {
                Some(S::Pending) | Some(S::Running) => Ok(vec![E::RollbackStarted {
                    reason: "cancelled".to_string(),
                    cancelled: true,
                    at_ms: now_ms,
                }]),
                Some(S::RollingBack) | Some(S::Cancelled) if s.cancelled => Ok(vec![]),
                Some(S::Committing) => Err(s.refuse(
                    "every file is copied and the commit is under way; it can no longer be cancelled",
                )),
                _ => Err(s.refuse("only a pending or running job can be cancelled")),
            },
            C::FinishRollback { objects_deleted } => match s.status {
                Some(S::RollingBack) => Ok(vec![E::RolledBack {
                    objects_deleted: *objects_deleted,
                    at_ms: now_ms,
                }]),
                Some(S::Failed) | Some(S::Cancelled) => Ok(vec![]),
                _ => Err(s.refuse("only a rolling back job finishes its rollback")),
            },
        }
    }

    fn evolve(s: &mut RestoreJobState, event: &RestoreEvent) {
        use RestoreEvent as E;
        use RestoreStatus as S;
        match event {
            E::Requested {
                request,
                requested_ms,
            } => {
                s.request = Some(request.clone());
                s.status = Some(S::Pending);
                s.requested_ms = *requested_ms;
            }
            E::IdsReserved { first, count } => s.ids = Some((*first, *count)),
            E::TasksPlanned { tasks } => s.tasks.extend(tasks.iter().copied()),
            E::Started { totals, started_ms } => {
                s.status = Some(S::Running);
                s.totals = Some(*totals);
                s.started_ms = Some(*started_ms);
            }
            E::TaskCompleted { task } => {
                s.completed_tasks.insert(*task);
            }
            E::CommitStarted { at_ms } => {
                s.status = Some(S::Committing);
                s.commit_started_ms = Some(*at_ms);
            }
            E::Completed { completed_ms } => {
                s.status = Some(S::Completed);
                s.completed_ms = Some(*completed_ms);
                s.finished_ms = Some(*completed_ms);
                s.claim.end(*completed_ms);
            }
            E::RollbackStarted {
                reason,
                cancelled,
                at_ms,
            } => {
                s.status = Some(S::RollingBack);
                s.failure = Some(reason.clone());
                s.cancelled = *cancelled;
                s.rollback_started_ms = Some(*at_ms);
            }
            E::RolledBack {
                objects_deleted,
                at_ms,
            } => {
                s.status = Some(if s.cancelled { S::Cancelled } else { S::Failed });
                s.objects_deleted = *objects_deleted;
                s.finished_ms = Some(*at_ms);
                s.claim.end(*at_ms);
            }
            E::Claim(c) => s.claim.evolve(c),
        }
    }
}
