//! Copy task decider: one bounded batch of whole segments of a restore job.
//!
//! `Planned → Completed | Failed`. The plan lists the restored segments exactly as they will be
//! committed (destination keys, new ids) and, per segment, where the sources are. Progress is
//! recorded in batches as `FilesCopied` with file ordinals; a file recorded once is never
//! recorded (or copied, by a resumed worker) again.

use crate::aggregate::Aggregate;
use crate::claim::ClaimState;
use serde::{Deserialize, Serialize};
use snapvault_events::Error;
use snapvault_events::domain::FileRef;
use snapvault_events::domain::claim::ClaimCommand;
use snapvault_events::domain::restore::{
    CopyTaskCommand, CopyTaskEvent, CopyTaskStatus, MAX_FILES_PER_PLAN, PlannedSegment,
    bounded_reason,
};
use snapvault_events::domain::{JobId, SegmentId};
use snapvault_events::validate::validate_object_key;

/// One file to copy: where from, where to, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyItem {
    /// Position in the task's file order (what `FilesCopied` records).
    pub ordinal: u32,
    pub segment_id: SegmentId,
    pub source_key: String,
    /// Destination key, size and crc32c (the source must match them too).
    pub dest: FileRef,
}

/// Every file of `segments` in the task's order: per segment its data files, then the files
/// of each index build.
pub fn copy_items(segments: &[PlannedSegment]) -> Vec<CopyItem> {
    let mut out = Vec::new();
    for p in segments {
        let files = p.segment.all_files();
        for f in files.filter(|f| !p.prewritten.contains(&f.key)) {
            let rel = f.key.strip_prefix(&p.dest_prefix).unwrap_or(&f.key);
            out.push(CopyItem {
                ordinal: out.len() as u32,
                segment_id: p.segment.segment_id,
                source_key: format!("{}{rel}", p.source_prefix),
                dest: f.clone(),
            });
        }
    }
    out
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyTaskState {
    pub job_id: JobId,
    pub task: u32,
    pub status: Option<CopyTaskStatus>,
    pub segments: Vec<PlannedSegment>,
    /// Size of each file, by ordinal.
    pub sizes: Vec<u64>,
    /// Which ordinals are copied and checked.
    pub done: Vec<bool>,
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_total: u64,
    pub bytes_total: u64,
    pub failure: Option<(String, String)>,
    pub last_progress_ms: u64,
    /// Which node copies the task's files (design §10).
    pub claim: ClaimState,
}

impl CopyTaskState {
    pub fn is_done(&self, ordinal: u32) -> bool {
        self.done.get(ordinal as usize).copied().unwrap_or(false)
    }

    fn label(&self) -> String {
        format!("copy task {} of restore job {}", self.task, self.job_id)
    }
}

fn check_plan(segments: &[PlannedSegment]) -> Result<(), Error> {
    if segments.is_empty() {
        return Err(Error::invalid_argument(
            "a copy task needs at least one segment",
        ));
    }
    let items = copy_items(segments);
    if items.len() > MAX_FILES_PER_PLAN {
        return Err(Error::invalid_argument(format!(
            "a copy task lists {} files; too many for one task",
            items.len()
        )));
    }
    for p in segments {
        for f in p.segment.all_files() {
            if !f.key.starts_with(&p.dest_prefix) && !p.prewritten.contains(&f.key) {
                return Err(Error::invalid_argument(format!(
                    "planned key '{}' is not under its destination prefix '{}'",
                    f.key, p.dest_prefix
                )));
            }
        }
    }
    for p in segments {
        for key in &p.prewritten {
            validate_object_key("prewritten key", key)?;
            let listed = p.segment.all_files().any(|f| &f.key == key);
            if !listed {
                return Err(Error::invalid_argument(format!(
                    "prewritten key '{key}' is not a file of segment {}",
                    p.segment.segment_id
                )));
            }
        }
    }
    for i in &items {
        validate_object_key("destination key", &i.dest.key)?;
        validate_object_key("source key", &i.source_key)?;
    }
    Ok(())
}

pub struct CopyTask;

impl crate::claim_holder::Claimable for CopyTask {
    fn claim_command(command: snapvault_events::domain::claim::ClaimCommand) -> CopyTaskCommand {
        CopyTaskCommand::Claim(command)
    }
    fn claim_event(event: &CopyTaskEvent) -> Option<&snapvault_events::domain::claim::ClaimEvent> {
        match event {
            CopyTaskEvent::Claim(c) => Some(c),
            _ => None,
        }
    }
}

impl Aggregate for CopyTask {
    type State = CopyTaskState;
    type Command = CopyTaskCommand;
    type Event = CopyTaskEvent;
    const KIND: &'static str = "copy task";

    fn decide(
        s: &CopyTaskState,
        command: &CopyTaskCommand,
        now_ms: u64,
    ) -> Result<Vec<CopyTaskEvent>, Error> {
        use CopyTaskCommand as C;
        use CopyTaskEvent as E;
        use CopyTaskStatus as S;
        match command {
            C::Plan {
                job_id,
                task,
                segments,
            } => {
                if s.status.is_some() {
                    return if s.job_id == *job_id && s.task == *task && &s.segments == segments {
                        Ok(vec![])
                    } else {
                        Err(Error::already_exists(format!(
                            "{} was planned differently",
                            s.label()
                        )))
                    };
                }
                check_plan(segments)?;
                Ok(vec![E::Planned {
                    job_id: *job_id,
                    task: *task,
                    segments: segments.clone(),
                }])
            }
            C::Claim(claim) => match s.status {
                Some(S::Planned) => Ok(s
                    .claim
                    .decide(claim, now_ms, &s.label())?
                    .into_iter()
                    .map(E::Claim)
                    .collect()),
                None => Err(Error::not_found("copy task not found")),
                // An ended task is not claimed; an abandoned one is not renewed either (its
                // holder must stop); releasing, or renewing a finished task, changes nothing.
                Some(_) if matches!(claim, ClaimCommand::Claim { .. }) => Err(
                    Error::failed_precondition(format!("{} has ended", s.label())),
                ),
                Some(S::Abandoned) if matches!(claim, ClaimCommand::Renew { .. }) => {
                    Err(Error::failed_precondition(format!(
                        "claim lost: {} was abandoned by its job's rollback",
                        s.label()
                    )))
                }
                Some(_) => Ok(s
                    .claim
                    .decide(claim, now_ms, &s.label())
                    .map(|e| e.into_iter().map(E::Claim).collect())
                    .unwrap_or_default()),
            },
            C::RecordCopied { files, epoch } => {
                match s.status {
                    Some(S::Planned) => {}
                    None => return Err(Error::not_found("copy task not found")),
                    Some(S::Abandoned) => {
                        return Err(Error::failed_precondition(format!(
                            "claim lost: {} was abandoned by its job's rollback",
                            s.label()
                        )));
                    }
                    // Late progress after the end changes nothing.
                    Some(_) => return Ok(vec![]),
                }
                s.claim.fence(*epoch, &s.label())?;
                if files.len() > s.done.len() {
                    return Err(Error::invalid_argument(format!(
                        "{} has {} files; {} recorded at once",
                        s.label(),
                        s.done.len(),
                        files.len()
                    )));
                }
                let mut new = Vec::new();
                let mut bytes = 0;
                let mut seen = std::collections::BTreeSet::new();
                for f in files {
                    let Some(size) = s.sizes.get(*f as usize) else {
                        return Err(Error::invalid_argument(format!(
                            "{} has no file {f}",
                            s.label()
                        )));
                    };
                    if !s.is_done(*f) && seen.insert(*f) {
                        new.push(*f);
                        bytes += size;
                    }
                }
                Ok(if new.is_empty() {
                    vec![]
                } else {
                    vec![E::FilesCopied {
                        files: new,
                        bytes,
                        at_ms: now_ms,
                    }]
                })
            }
            C::Complete { epoch } => match s.status {
                Some(S::Planned) => {
                    s.claim.fence(*epoch, &s.label())?;
                    if s.files_done == s.files_total {
                        Ok(vec![E::Completed { at_ms: now_ms }])
                    } else {
                        Err(Error::failed_precondition(format!(
                            "{} has copied {} of {} files",
                            s.label(),
                            s.files_done,
                            s.files_total
                        )))
                    }
                }
                Some(S::Completed) => Ok(vec![]),
                Some(S::Failed) => Err(Error::failed_precondition(format!(
                    "{} failed; it cannot complete",
                    s.label()
                ))),
                Some(S::Abandoned) => Err(Error::failed_precondition(format!(
                    "claim lost: {} was abandoned by its job's rollback",
                    s.label()
                ))),
                None => Err(Error::not_found("copy task not found")),
            },
            C::Abandon => match s.status {
                Some(S::Planned) => Ok(vec![E::Abandoned { at_ms: now_ms }]),
                Some(_) => Ok(vec![]),
                None => Err(Error::not_found("copy task not found")),
            },
            C::Fail { key, reason, epoch } => match s.status {
                Some(S::Planned) => {
                    s.claim.fence(*epoch, &s.label())?;
                    Ok(vec![E::Failed {
                        key: key.clone(),
                        reason: bounded_reason(reason),
                        at_ms: now_ms,
                    }])
                }
                Some(S::Failed) => Ok(vec![]),
                Some(S::Completed) => Err(Error::failed_precondition(format!(
                    "{} completed; it cannot fail",
                    s.label()
                ))),
                Some(S::Abandoned) => Err(Error::failed_precondition(format!(
                    "claim lost: {} was abandoned by its job's rollback",
                    s.label()
                ))),
                None => Err(Error::not_found("copy task not found")),
            },
        }
    }

    fn evolve(s: &mut CopyTaskState, event: &CopyTaskEvent) {
        use CopyTaskEvent as E;
        match event {
            E::Planned {
                job_id,
                task,
                segments,
            } => {
                s.job_id = *job_id;
                s.task = *task;
                s.status = Some(CopyTaskStatus::Planned);
                s.segments = segments.clone();
                s.sizes = copy_items(segments).iter().map(|i| i.dest.size).collect();
                s.done = vec![false; s.sizes.len()];
                s.files_total = s.sizes.len() as u64;
                s.bytes_total = s.sizes.iter().sum();
            }
            E::FilesCopied {
                files,
                bytes: _,
                at_ms,
            } => {
                for f in files {
                    if let Some(d) = s.done.get_mut(*f as usize)
                        && !*d
                    {
                        *d = true;
                        s.files_done += 1;
                        s.bytes_done += s.sizes[*f as usize];
                    }
                }
                s.last_progress_ms = *at_ms;
            }
            E::Completed { at_ms } => {
                s.status = Some(CopyTaskStatus::Completed);
                s.last_progress_ms = *at_ms;
                s.claim.end(*at_ms);
            }
            E::Failed { key, reason, at_ms } => {
                s.status = Some(CopyTaskStatus::Failed);
                s.failure = Some((key.clone(), reason.clone()));
                s.last_progress_ms = *at_ms;
                s.claim.end(*at_ms);
            }
            E::Claim(c) => s.claim.evolve(c),
            // The holder keeps its claim until it releases or it lapses: the rollback waits
            // for that, then nothing can land any more.
            E::Abandoned { at_ms } => {
                s.status = Some(CopyTaskStatus::Abandoned);
                s.last_progress_ms = *at_ms;
            }
        }
    }
}
