//! The workload's restores: starts from committed snapshots into fresh names (sometimes a
//! subset of partitions, parallelism 1..8, sometimes a bandwidth limit so copies take virtual
//! time; waiting or not), two concurrent starts into one name, cancels of running jobs,
//! waits, status and list, and bad input that must be refused with the right code.
//!
//! Right after a start returns, a follow-up may try what the lease forbids: dropping the
//! snapshot (refused with `failed_precondition` while the job holds its lease) or dropping the
//! target while it is Restoring (refused too). The checker holds the log to the same rules
//! (`restore_check.rs`), so a guard that fails on another path is caught there.

use crate::model::{Effect, Model};
use crate::prng::Prng;
use snapvault::Client;
use snapvault::restores::{RestoreView, StartRestoreRequest};
use snapvault_actors::snapshot::Snapshot;
use snapvault_events::domain::JobId;
use snapvault_events::domain::restore::{RestoreOptions, RestoreStatus};
use snapvault_events::domain::snapshot::{SnapshotStatus, snapshot_stream};
use snapvault_events::{Error, ErrorCode};
use std::time::Duration;

/// How long a waiting restore follows its job (virtual time).
pub const WAIT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(500);

/// What a start does right after it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Nothing,
    Wait,
    Cancel,
    /// Try to drop the snapshot the job leases.
    DropSnapshot,
    /// Try to drop the target while it is Restoring.
    DropTarget,
}

/// Input a restore start must refuse, and with which code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    UnknownSnapshot,
    /// A Failed, Deleting or Deleted snapshot.
    NotCommitted,
    ExistingTarget,
    InvalidName,
    Parallelism,
    UnknownPartition,
}

#[derive(Debug, Clone)]
pub struct Start {
    pub collection: String,
    pub snapshot: String,
    pub target: String,
    pub options: RestoreOptions,
}

impl Start {
    fn request(&self) -> StartRestoreRequest {
        StartRestoreRequest {
            snapshot_collection: self.collection.clone(),
            snapshot: self.snapshot.clone(),
            target: self.target.clone(),
            options: self.options.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RestoreOp {
    Start { start: Start, then: Follow },
    Twin { start: Start },
    Cancel { job: JobId },
    Wait { job: JobId },
    Status { job: JobId },
    List,
    Bad { start: Start, bad: Bad },
}

impl RestoreOp {
    pub fn label(&self) -> String {
        let s = |s: &Start| {
            format!(
                "{}/{} -> {} parts={:?} par={} bps={:?}",
                s.collection,
                s.snapshot,
                s.target,
                s.options.partitions,
                s.options.parallelism,
                s.options.max_bytes_per_sec
            )
        };
        match self {
            RestoreOp::Start { start, then } => format!("restore-start {} then={then:?}", s(start)),
            RestoreOp::Twin { start } => format!("restore-twin {}", s(start)),
            RestoreOp::Cancel { job } => format!("restore-cancel {job}"),
            RestoreOp::Wait { job } => format!("restore-wait {job}"),
            RestoreOp::Status { job } => format!("restore-status {job}"),
            RestoreOp::List => "restore-list".to_string(),
            RestoreOp::Bad { start, bad } => format!("restore-bad {bad:?} {}", s(start)),
        }
    }

    /// The collection name it addresses (for the "moving names" excuse).
    pub fn collection_name(&self) -> Option<&str> {
        match self {
            RestoreOp::Start { start, .. }
            | RestoreOp::Twin { start }
            | RestoreOp::Bad { start, .. } => Some(&start.collection),
            _ => None,
        }
    }

    /// A follow-up may drop the snapshot (if the job is already done) or the target (if
    /// the restore already completed).
    pub fn threat(&self) -> Option<crate::model::Threat> {
        use crate::model::Threat;
        match self {
            RestoreOp::Start {
                start,
                then: Follow::DropSnapshot,
            } => Some(Threat::Snapshot {
                collection: start.collection.clone(),
                name: start.snapshot.clone(),
            }),
            RestoreOp::Start {
                start,
                then: Follow::DropTarget,
            } => Some(Threat::Collection {
                id: 0,
                name: start.target.clone(),
            }),
            _ => None,
        }
    }

    /// Does a refusal with `invalid_argument` belong to this op's input?
    pub fn expects_invalid(&self) -> bool {
        matches!(
            self,
            RestoreOp::Bad {
                bad: Bad::InvalidName | Bad::Parallelism,
                ..
            }
        )
    }
}

/// The kinds, in `workload::OpKind` order: start, twin, cancel, wait/status, bad input.
pub fn plan(rng: &mut Prng, model: &Model, names: u64, kind: u32) -> Option<Vec<RestoreOp>> {
    let w = &model.restore_world;
    let committed: Vec<&crate::model::SnapInfo> = w
        .snapshots
        .iter()
        .filter(|s| s.status == "committed")
        .collect();
    // Mostly a name nothing holds (the catalog's view from the last step), sometimes any.
    let taken = |n: &str| {
        model.live_collections().iter().any(|(_, c)| c.name == n)
            || w.jobs
                .iter()
                .any(|j| !j.status.is_terminal() && j.target == n)
    };
    // Few names: restored collections are real ones the workload then uses, and each
    // holds a copy of a snapshot's files; keep their number (and the checker's work) bounded.
    let pool = names.max(1) + 1;
    let free: Vec<String> = (0..pool)
        .map(|i| format!("r{i}"))
        .filter(|n| !taken(n))
        .collect();
    let target = match rng.pick(&free) {
        Some(n) if rng.below(5) != 0 => n.clone(),
        _ => format!("r{}", rng.below(pool)),
    };
    let options = |rng: &mut Prng, parts: &[String]| {
        let mut partitions = Vec::new();
        if rng.below(3) == 0 && !parts.is_empty() {
            for p in parts {
                if rng.coin() {
                    partitions.push(p.clone());
                }
            }
        }
        RestoreOptions {
            partitions,
            parallelism: rng.range(1, 8) as u32,
            max_bytes_per_sec: if rng.below(3) == 0 {
                rng.pick(&[4_096, 65_536]).copied()
            } else {
                None
            },
            verify_checksums: rng.below(8) != 0,
        }
    };
    match kind {
        0 | 1 => {
            let s = *rng.pick(&committed)?;
            let start = Start {
                collection: s.collection.clone(),
                snapshot: s.name.clone(),
                target,
                options: options(rng, &s.partitions),
            };
            if kind == 1 {
                return Some(vec![RestoreOp::Twin { start }]);
            }
            let then = *rng.pick(&[
                Follow::Nothing,
                Follow::Nothing,
                Follow::Wait,
                Follow::Wait,
                Follow::Cancel,
                Follow::DropSnapshot,
                Follow::DropTarget,
            ])?;
            Some(vec![RestoreOp::Start { start, then }])
        }
        2 => {
            let running: Vec<JobId> = w
                .jobs
                .iter()
                .filter(|j| matches!(j.status, RestoreStatus::Pending | RestoreStatus::Running))
                .map(|j| j.id)
                .collect();
            let job = *rng.pick(&running)?;
            Some(vec![RestoreOp::Cancel { job }])
        }
        3 => {
            if rng.below(4) == 0 {
                return Some(vec![RestoreOp::List]);
            }
            let jobs: Vec<JobId> = w.jobs.iter().map(|j| j.id).collect();
            let job = *rng.pick(&jobs)?;
            Some(vec![if rng.coin() {
                RestoreOp::Wait { job }
            } else {
                RestoreOp::Status { job }
            }])
        }
        _ => {
            let bad = *rng.pick(&[
                Bad::UnknownSnapshot,
                Bad::NotCommitted,
                Bad::ExistingTarget,
                Bad::InvalidName,
                Bad::Parallelism,
                Bad::UnknownPartition,
            ])?;
            let mut start = match rng.pick(&committed) {
                Some(s) => Start {
                    collection: s.collection.clone(),
                    snapshot: s.name.clone(),
                    target,
                    options: RestoreOptions::default(),
                },
                None => Start {
                    collection: "c0".to_string(),
                    snapshot: "nosuch".to_string(),
                    target,
                    options: RestoreOptions::default(),
                },
            };
            match bad {
                Bad::UnknownSnapshot => start.snapshot = "nosuch".to_string(),
                Bad::NotCommitted => {
                    // Only a name no committed (or pending) snapshot also carries.
                    let taken = |c: &str, n: &str| {
                        w.snapshots.iter().any(|s| {
                            s.collection == c
                                && s.name == n
                                && matches!(s.status, "committed" | "pending")
                        })
                    };
                    let gone: Vec<&crate::model::SnapInfo> = w
                        .snapshots
                        .iter()
                        .filter(|s| {
                            matches!(s.status, "failed" | "deleting" | "deleted")
                                && !taken(&s.collection, &s.name)
                        })
                        .collect();
                    let s = *rng.pick(&gone)?;
                    start.collection = s.collection.clone();
                    start.snapshot = s.name.clone();
                }
                Bad::ExistingTarget => {
                    let live = model.live_collections();
                    let (_, c) = *rng.pick(&live)?;
                    start.target = c.name.clone();
                }
                Bad::InvalidName => {
                    start.target = rng
                        .pick(&["", "../up", "a b", "9lives", "x/y"])
                        .copied()
                        .unwrap_or("")
                        .to_string();
                }
                Bad::Parallelism => {
                    start.options.parallelism = *rng.pick(&[0, 1_000])?;
                }
                Bad::UnknownPartition => start.options.partitions = vec!["nopart".to_string()],
            }
            Some(vec![RestoreOp::Bad { start, bad }])
        }
    }
}

fn broken(what: String) -> Error {
    Error::internal(format!("restore guard: {what}"))
}

async fn status_now(client: &Client, job: JobId) -> Option<RestoreStatus> {
    client.restore_status(job).await.ok().map(|v| v.status)
}

fn check_view(v: &RestoreView, job: JobId) -> Result<(), Error> {
    if v.job_id != job {
        return Err(broken(format!(
            "status of job {job} names job {}",
            v.job_id
        )));
    }
    if v.status == RestoreStatus::Completed && v.percent < 100.0 {
        return Err(broken(format!("job {job} is completed at {}%", v.percent)));
    }
    Ok(())
}

/// Run one restore operation; `Ok` carries its acknowledged effects. A broken promise is an
/// `internal` error, which fails the seed.
pub async fn execute(client: &Client, op: &RestoreOp) -> Result<Vec<Effect>, Error> {
    match op {
        RestoreOp::Start { start, then } => {
            let view = client.start_restore(start.request()).await?;
            let job = view.job_id;
            let mut effects = vec![Effect::RestoreStarted { job }];
            match then {
                Follow::Nothing => {}
                Follow::Wait => {
                    let done = client.wait_restore(job, POLL, Some(WAIT), |_| {}).await?;
                    check_view(&done, job)?;
                    if !done.status.is_terminal() {
                        return Err(broken(format!(
                            "wait on job {job} returned it {:?}",
                            done.status
                        )));
                    }
                }
                Follow::Cancel => {
                    client.cancel_restore(job).await?;
                    effects.push(Effect::RestoreCancelled { job });
                }
                Follow::DropSnapshot => {
                    match client
                        .drop_snapshot(&start.collection, &start.snapshot)
                        .await
                    {
                        Err(e) if e.code == ErrorCode::FailedPrecondition => {}
                        Err(e) => return Err(e),
                        Ok(_) => {
                            // The name may have resolved to another snapshot (of a newer
                            // collection of that name); the job's own may go only once the
                            // job let go of its lease (it ended, or commits).
                            let stream = snapshot_stream(view.snapshot_id);
                            let gone = client
                                .registry()
                                .inspect_latest::<Snapshot, _>(&stream, |_, s| {
                                    matches!(
                                        s.status,
                                        Some(SnapshotStatus::Deleting | SnapshotStatus::Deleted)
                                    )
                                })
                                .await?;
                            let s = status_now(client, job).await;
                            if gone
                                && matches!(
                                    s,
                                    Some(RestoreStatus::Pending | RestoreStatus::Running)
                                )
                            {
                                return Err(broken(format!(
                                    "snapshot '{}' was dropped while restore job {job} ({s:?}) holds its lease",
                                    start.snapshot
                                )));
                            }
                        }
                    }
                }
                Follow::DropTarget => match client.drop_collection(&start.target).await {
                    Err(e) if e.code == ErrorCode::FailedPrecondition => {}
                    Err(e) => return Err(e),
                    Ok(_) => {
                        let s = status_now(client, job).await;
                        if matches!(s, Some(RestoreStatus::Pending | RestoreStatus::Running)) {
                            return Err(broken(format!(
                                "target '{}' was dropped while restore job {job} ({s:?}) restores it",
                                start.target
                            )));
                        }
                    }
                },
            }
            Ok(effects)
        }
        RestoreOp::Twin { start } => {
            let (a, b) = tokio::join!(
                client.start_restore(start.request()),
                client.start_restore(start.request())
            );
            if let (Ok(a), Ok(b)) = (&a, &b) {
                return Err(broken(format!(
                    "two restores into '{}' both won (jobs {} and {})",
                    start.target, a.job_id, b.job_id
                )));
            }
            let mut effects = Vec::new();
            let mut err = None;
            for r in [a, b] {
                match r {
                    Ok(v) => effects.push(Effect::RestoreStarted { job: v.job_id }),
                    Err(e) if e.code == ErrorCode::AlreadyExists => {}
                    Err(e) => err = Some(e),
                }
            }
            match err {
                // The loser of the race for the name gets `already_exists`; other errors are
                // the faults'.
                Some(e) if effects.is_empty() => Err(e),
                _ => Ok(effects),
            }
        }
        RestoreOp::Cancel { job } => {
            client.cancel_restore(*job).await?;
            Ok(vec![Effect::RestoreCancelled { job: *job }])
        }
        RestoreOp::Wait { job } => {
            let v = client.wait_restore(*job, POLL, Some(WAIT), |_| {}).await?;
            check_view(&v, *job)?;
            if !v.status.is_terminal() {
                return Err(broken(format!(
                    "wait on job {job} returned it {:?}",
                    v.status
                )));
            }
            Ok(vec![])
        }
        RestoreOp::Status { job } => {
            let v = client.restore_status(*job).await?;
            check_view(&v, *job)?;
            Ok(vec![])
        }
        RestoreOp::List => {
            let page = client.list_restores(None, Some(50), None).await?;
            let mut last = u64::MAX;
            for j in &page.jobs {
                if j.job_id >= last {
                    return Err(broken("restore list is not newest first".to_string()));
                }
                last = j.job_id;
            }
            Ok(vec![])
        }
        RestoreOp::Bad { start, bad } => {
            let outcome = client.start_restore(start.request()).await;
            let (expected, also): (ErrorCode, &[ErrorCode]) = match bad {
                Bad::UnknownSnapshot => (ErrorCode::NotFound, &[]),
                // Deleting may become Deleted (and then unknown) while we ask.
                Bad::NotCommitted => (ErrorCode::FailedPrecondition, &[ErrorCode::NotFound]),
                // The snapshot is looked up first: a drop racing us changes the answer.
                Bad::ExistingTarget => (
                    ErrorCode::AlreadyExists,
                    &[ErrorCode::NotFound, ErrorCode::FailedPrecondition],
                ),
                // Validated before any I/O.
                Bad::InvalidName => (ErrorCode::InvalidArgument, &[]),
                Bad::Parallelism => (
                    ErrorCode::InvalidArgument,
                    &[ErrorCode::NotFound, ErrorCode::FailedPrecondition],
                ),
                Bad::UnknownPartition => (ErrorCode::NotFound, &[ErrorCode::FailedPrecondition]),
            };
            match outcome {
                // A snapshot of that name may have been committed since the step was planned
                // (a create lost with its node, finished by another node's reconciler): then
                // the name resolves to it, and the restore is right to go ahead.
                Ok(v)
                    if *bad == Bad::NotCommitted
                        && client
                            .find_snapshot(&start.collection, &start.snapshot)
                            .await
                            .is_ok_and(|s| {
                                s.snapshot_id() == v.snapshot_id
                                    && s.status == Some(SnapshotStatus::Committed)
                            }) =>
                {
                    Ok(vec![Effect::RestoreStarted { job: v.job_id }])
                }
                Ok(v) => Err(broken(format!(
                    "bad restore input ({bad:?}) was accepted as job {}",
                    v.job_id
                ))),
                Err(e) if e.code == expected || also.contains(&e.code) => Err(e),
                Err(e)
                    if *bad != Bad::InvalidName
                        && matches!(e.code, ErrorCode::Unavailable | ErrorCode::Conflict) =>
                {
                    Err(e)
                }
                Err(e) => Err(broken(format!(
                    "bad restore input ({bad:?}) refused with {e}; expected {}",
                    expected.as_str()
                ))),
            }
        }
    }
}
