//! Given events / when command / then events (or rejection) for the restore job and copy task
//! deciders.

use crate::aggregate::{Aggregate, given_when};
use crate::restore::copy_task::{CopyTask, copy_items};
use crate::restore::job::RestoreJob;
use snapvault_events::ErrorCode;
use snapvault_events::domain::FileRef;
use snapvault_events::domain::claim::{ClaimCommand, ClaimEvent};
use snapvault_events::domain::collection::SegmentRecord;
use snapvault_events::domain::restore::*;

fn request() -> RestoreRequest {
    RestoreRequest {
        job_id: 5,
        snapshot_id: 3,
        snapshot_name: "s".into(),
        source_collection_id: 2,
        source_collection_name: "c".into(),
        target_name: "r".into(),
        target_collection_id: 9,
        options: RestoreOptions::default(),
    }
}

fn summary(task: u32) -> TaskSummary {
    TaskSummary {
        task,
        segments: 1,
        files: 2,
        bytes: 200,
    }
}

fn run(given: &mut Vec<RestoreEvent>, cmd: RestoreCommand) {
    let (out, _) = given_when::<RestoreJob>(given, cmd.clone(), 1_000);
    match out {
        Ok(events) => given.extend(events),
        Err(e) => panic!("{cmd:?} refused: {e}"),
    }
}

fn job_code(given: &[RestoreEvent], cmd: RestoreCommand) -> ErrorCode {
    given_when::<RestoreJob>(given, cmd, 0).0.unwrap_err().code
}

fn totals(n: u32) -> RestoreTotals {
    RestoreTotals {
        tasks: n,
        segments: u64::from(n),
        files: 2 * u64::from(n),
        bytes: 200 * u64::from(n),
    }
}

/// A job planned with `n` tasks and started.
fn running(n: u32) -> Vec<RestoreEvent> {
    let mut g = Vec::new();
    run(
        &mut g,
        RestoreCommand::Request {
            request: request(),
            claim: None,
        },
    );
    run(
        &mut g,
        RestoreCommand::ReserveIds {
            first: 100,
            count: 10,
        },
    );
    run(
        &mut g,
        RestoreCommand::RecordTasks {
            tasks: (0..n).map(summary).collect(),
        },
    );
    run(&mut g, RestoreCommand::Start { totals: totals(n) });
    g
}

#[test]
fn a_job_runs_from_pending_to_completed() {
    let mut g = running(2);
    assert_eq!(RestoreJob::replay(&g).status, Some(RestoreStatus::Running));
    assert_eq!(
        job_code(&g, RestoreCommand::BeginCommit),
        ErrorCode::FailedPrecondition,
        "not before every task is complete"
    );
    run(&mut g, RestoreCommand::CompleteTask { task: 0 });
    run(&mut g, RestoreCommand::CompleteTask { task: 1 });
    run(&mut g, RestoreCommand::BeginCommit);
    run(&mut g, RestoreCommand::Complete);
    let s = RestoreJob::replay(&g);
    assert_eq!(s.status, Some(RestoreStatus::Completed));
    assert_eq!(s.finished_ms, Some(1_000));
    assert_eq!(
        job_code(&g, RestoreCommand::Cancel),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(
        job_code(&g, RestoreCommand::Fail { reason: "x".into() }),
        ErrorCode::FailedPrecondition
    );
}

#[test]
fn every_step_repeated_is_a_no_op() {
    let mut g = running(1);
    for cmd in [
        RestoreCommand::Request {
            request: request(),
            claim: None,
        },
        RestoreCommand::ReserveIds {
            first: 100,
            count: 10,
        },
        RestoreCommand::RecordTasks {
            tasks: vec![summary(0)],
        },
        RestoreCommand::Start { totals: totals(1) },
    ] {
        let (out, _) = given_when::<RestoreJob>(&g, cmd.clone(), 0);
        assert_eq!(out.unwrap(), vec![], "{cmd:?}");
    }
    run(&mut g, RestoreCommand::CompleteTask { task: 0 });
    let (out, _) = given_when::<RestoreJob>(&g, RestoreCommand::CompleteTask { task: 0 }, 0);
    assert_eq!(out.unwrap(), vec![]);
}

#[test]
fn a_plan_must_be_recorded_in_order_and_the_same_again() {
    let mut g = Vec::new();
    run(
        &mut g,
        RestoreCommand::Request {
            request: request(),
            claim: None,
        },
    );
    assert_eq!(
        job_code(
            &g,
            RestoreCommand::RecordTasks {
                tasks: vec![summary(0)]
            }
        ),
        ErrorCode::FailedPrecondition,
        "ids first"
    );
    run(
        &mut g,
        RestoreCommand::ReserveIds {
            first: 100,
            count: 10,
        },
    );
    assert_eq!(
        job_code(
            &g,
            RestoreCommand::ReserveIds {
                first: 200,
                count: 10
            }
        ),
        ErrorCode::FailedPrecondition,
        "another id block"
    );
    assert_eq!(
        job_code(
            &g,
            RestoreCommand::RecordTasks {
                tasks: vec![summary(1)]
            }
        ),
        ErrorCode::InvalidArgument,
        "out of order"
    );
    run(
        &mut g,
        RestoreCommand::RecordTasks {
            tasks: vec![summary(0)],
        },
    );
    // Overlap with what is known: only the new one is recorded.
    let (out, _) = given_when::<RestoreJob>(
        &g,
        RestoreCommand::RecordTasks {
            tasks: vec![summary(0), summary(1)],
        },
        0,
    );
    assert_eq!(
        out.unwrap(),
        vec![RestoreEvent::TasksPlanned {
            tasks: vec![summary(1)]
        }]
    );
    let mut different = summary(0);
    different.files = 3;
    assert_eq!(
        job_code(
            &g,
            RestoreCommand::RecordTasks {
                tasks: vec![different]
            }
        ),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(
        job_code(&g, RestoreCommand::Start { totals: totals(2) }),
        ErrorCode::FailedPrecondition,
        "totals must match the plan"
    );
}

#[test]
fn cancel_and_fail_roll_back_and_end_in_their_own_state() {
    let mut g = running(1);
    run(&mut g, RestoreCommand::Cancel);
    assert_eq!(
        RestoreJob::replay(&g).status,
        Some(RestoreStatus::RollingBack)
    );
    let (again, _) = given_when::<RestoreJob>(&g, RestoreCommand::Cancel, 0);
    assert_eq!(again.unwrap(), vec![]);
    run(
        &mut g,
        RestoreCommand::FinishRollback { objects_deleted: 4 },
    );
    let s = RestoreJob::replay(&g);
    assert_eq!(s.status, Some(RestoreStatus::Cancelled));
    assert_eq!(s.objects_deleted, 4);

    let mut g = running(1);
    run(
        &mut g,
        RestoreCommand::Fail {
            reason: "source file 'k' is missing".into(),
        },
    );
    assert_eq!(
        job_code(&g, RestoreCommand::Cancel),
        ErrorCode::FailedPrecondition,
        "a failing job is not cancelled"
    );
    run(
        &mut g,
        RestoreCommand::FinishRollback { objects_deleted: 0 },
    );
    let s = RestoreJob::replay(&g);
    assert_eq!(s.status, Some(RestoreStatus::Failed));
    assert_eq!(s.failure.as_deref(), Some("source file 'k' is missing"));
}

#[test]
fn committing_cannot_be_cancelled_but_can_fail() {
    let mut g = running(1);
    run(&mut g, RestoreCommand::CompleteTask { task: 0 });
    run(&mut g, RestoreCommand::BeginCommit);
    assert_eq!(
        job_code(&g, RestoreCommand::Cancel),
        ErrorCode::FailedPrecondition
    );
    run(&mut g, RestoreCommand::Fail { reason: "x".into() });
    assert_eq!(
        RestoreJob::replay(&g).status,
        Some(RestoreStatus::RollingBack)
    );
}

#[test]
fn bad_requests_are_refused() {
    let bad = |f: fn(&mut RestoreRequest)| {
        let mut r = request();
        f(&mut r);
        job_code(
            &[],
            RestoreCommand::Request {
                request: r,
                claim: None,
            },
        )
    };
    assert_eq!(bad(|r| r.job_id = 0), ErrorCode::InvalidArgument);
    assert_eq!(
        bad(|r| r.options.parallelism = 0),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        bad(|r| r.options.parallelism = MAX_PARALLELISM + 1),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        bad(|r| r.options.max_bytes_per_sec = Some(0)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        bad(|r| r.target_name = "a/b".into()),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        bad(|r| r.options.partitions = vec!["p".into(), "p".into()]),
        ErrorCode::InvalidArgument
    );
    assert_eq!(job_code(&[], RestoreCommand::Cancel), ErrorCode::NotFound);
    let mut g = Vec::new();
    run(
        &mut g,
        RestoreCommand::Request {
            request: request(),
            claim: None,
        },
    );
    let mut other = request();
    other.target_name = "other".into();
    assert_eq!(
        job_code(
            &g,
            RestoreCommand::Request {
                request: other,
                claim: None,
            }
        ),
        ErrorCode::AlreadyExists
    );
}

fn planned() -> Vec<PlannedSegment> {
    (0..2u64)
        .map(|s| PlannedSegment {
            source_segment_id: 40 + s,
            source_prefix: format!("data/2/1/{}/", 40 + s),
            dest_prefix: format!("data/9/1/{}/", 100 + s),
            segment: SegmentRecord {
                segment_id: 100 + s,
                partition_id: 1,
                shard: 0,
                rows: 1,
                level: 0,
                files: (0..3)
                    .map(|i| FileRef {
                        key: format!("data/9/1/{}/insert_log/{i}", 100 + s),
                        size: 10 * (i + 1),
                        crc32c: 0,
                    })
                    .collect(),
                indexes: vec![],
            },
            prewritten: vec![],
        })
        .collect()
}

fn claim(node: &str, deadline_ms: u64) -> CopyTaskCommand {
    CopyTaskCommand::Claim(ClaimCommand::Claim {
        node: node.into(),
        deadline_ms,
        take_over_own: false,
    })
}

fn plan() -> CopyTaskCommand {
    CopyTaskCommand::Plan {
        job_id: 5,
        task: 0,
        segments: planned(),
    }
}

fn task_run(given: &mut Vec<CopyTaskEvent>, cmd: CopyTaskCommand) -> Vec<CopyTaskEvent> {
    let (out, _) = given_when::<CopyTask>(given, cmd.clone(), 7);
    let events = out.unwrap_or_else(|e| panic!("{cmd:?} refused: {e}"));
    given.extend(events.clone());
    events
}

#[test]
fn copy_items_map_destinations_back_to_their_sources() {
    let items = copy_items(&planned());
    assert_eq!(items.len(), 6);
    assert_eq!(items[4].ordinal, 4);
    assert_eq!(items[4].source_key, "data/2/1/41/insert_log/1");
    assert_eq!(items[4].dest.key, "data/9/1/101/insert_log/1");
}

#[test]
fn progress_counts_each_file_once_and_completion_needs_them_all() {
    let mut g = Vec::new();
    task_run(&mut g, plan());
    task_run(&mut g, claim("a", 1_000));
    let (again, _) = given_when::<CopyTask>(&g, plan(), 0);
    assert_eq!(again.unwrap(), vec![], "the same plan again is a no-op");
    let first = task_run(
        &mut g,
        CopyTaskCommand::RecordCopied {
            files: vec![0, 1, 1],
            epoch: 1,
        },
    );
    assert_eq!(
        first,
        vec![CopyTaskEvent::FilesCopied {
            files: vec![0, 1],
            bytes: 30,
            at_ms: 7
        }]
    );
    let second = task_run(
        &mut g,
        CopyTaskCommand::RecordCopied {
            files: vec![1, 2],
            epoch: 1,
        },
    );
    assert_eq!(
        second,
        vec![CopyTaskEvent::FilesCopied {
            files: vec![2],
            bytes: 30,
            at_ms: 7
        }]
    );
    assert_eq!(
        given_when::<CopyTask>(&g, CopyTaskCommand::Complete { epoch: 1 }, 0)
            .0
            .unwrap_err()
            .code,
        ErrorCode::FailedPrecondition
    );
    task_run(
        &mut g,
        CopyTaskCommand::RecordCopied {
            files: vec![3, 4, 5],
            epoch: 1,
        },
    );
    task_run(&mut g, CopyTaskCommand::Complete { epoch: 1 });
    let s = CopyTask::replay(&g);
    assert_eq!((s.files_done, s.bytes_done), (6, 120));
    assert_eq!(s.status, Some(CopyTaskStatus::Completed));
    assert_eq!(
        given_when::<CopyTask>(
            &g,
            CopyTaskCommand::Fail {
                key: "k".into(),
                reason: "r".into(),
                epoch: 1,
            },
            0
        )
        .0
        .unwrap_err()
        .code,
        ErrorCode::FailedPrecondition
    );
}

#[test]
fn a_task_refuses_bad_plans_and_unknown_files() {
    let mut other = planned();
    other[0].segment.files[0].key = "elsewhere/x".into();
    let code =
        |given: &[CopyTaskEvent], cmd| given_when::<CopyTask>(given, cmd, 0).0.unwrap_err().code;
    assert_eq!(
        code(
            &[],
            CopyTaskCommand::Plan {
                job_id: 5,
                task: 0,
                segments: other
            }
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            &[],
            CopyTaskCommand::Plan {
                job_id: 5,
                task: 0,
                segments: vec![]
            }
        ),
        ErrorCode::InvalidArgument
    );
    let mut g = Vec::new();
    task_run(&mut g, plan());
    task_run(&mut g, claim("a", 1_000));
    assert_eq!(
        code(
            &g,
            CopyTaskCommand::RecordCopied {
                files: vec![99],
                epoch: 1
            }
        ),
        ErrorCode::InvalidArgument
    );
    let mut moved = planned();
    moved.pop();
    assert_eq!(
        code(
            &g,
            CopyTaskCommand::Plan {
                job_id: 5,
                task: 0,
                segments: moved
            }
        ),
        ErrorCode::AlreadyExists
    );
}

/// Given a task claimed by node a (epoch 1) whose claim lapsed and node b claimed it
/// (epoch 2), when a records progress, completes or fails under epoch 1: refused, and b's
/// records under epoch 2 are taken. An ended task cannot be claimed.
#[test]
fn a_stale_claim_holder_is_fenced_out_of_a_copy_task() {
    let mut g = Vec::new();
    task_run(&mut g, plan());
    // Nothing is recorded without a claim.
    let (unclaimed, _) = given_when::<CopyTask>(
        &g,
        CopyTaskCommand::RecordCopied {
            files: vec![0],
            epoch: 0,
        },
        7,
    );
    assert_eq!(unclaimed.unwrap_err().code, ErrorCode::FailedPrecondition);
    task_run(&mut g, claim("a", 1_000));
    // b is refused while a's claim is live...
    let (early, _) = given_when::<CopyTask>(&g, claim("b", 5_000), 500);
    assert_eq!(early.unwrap_err().code, ErrorCode::FailedPrecondition);
    // ...and wins once it lapsed.
    let (late, _) = given_when::<CopyTask>(&g, claim("b", 5_000), 1_000);
    g.extend(late.unwrap());
    let s = CopyTask::replay(&g);
    assert_eq!(
        s.claim.holder.as_ref().map(|c| (c.node.as_str(), c.epoch)),
        Some(("b", 2))
    );
    for stale in [
        CopyTaskCommand::RecordCopied {
            files: vec![0],
            epoch: 1,
        },
        CopyTaskCommand::Complete { epoch: 1 },
        CopyTaskCommand::Fail {
            key: "k".into(),
            reason: "r".into(),
            epoch: 1,
        },
    ] {
        let (out, _) = given_when::<CopyTask>(&g, stale.clone(), 1_100);
        let e = out.unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition, "{stale:?}");
        assert!(e.message.contains("claim lost"), "{e}");
    }
    task_run(
        &mut g,
        CopyTaskCommand::RecordCopied {
            files: (0..6).collect(),
            epoch: 2,
        },
    );
    task_run(&mut g, CopyTaskCommand::Complete { epoch: 2 });
    let s = CopyTask::replay(&g);
    assert!(s.claim.holder.is_none(), "a completed task holds no claim");
    let (ended, _) = given_when::<CopyTask>(&g, claim("c", 99_000), 2_000);
    assert_eq!(ended.unwrap_err().code, ErrorCode::FailedPrecondition);
}

/// When a job is requested with a claim, Requested and Claimed are one decision; an ended
/// job refuses a claim.
#[test]
fn a_job_is_requested_with_its_coordinators_claim_in_one_decision() {
    let (out, _) = given_when::<RestoreJob>(
        &[],
        RestoreCommand::Request {
            request: request(),
            claim: Some(ClaimCommand::Claim {
                node: "n1".into(),
                deadline_ms: 10_000,
                take_over_own: false,
            }),
        },
        5,
    );
    let events = out.unwrap();
    assert_eq!(events.len(), 2);
    assert!(matches!(
        &events[1],
        RestoreEvent::Claim(ClaimEvent::Claimed { node, epoch: 1, .. }) if node == "n1"
    ));
    let mut g = events;
    g.push(RestoreEvent::RollbackStarted {
        reason: "x".into(),
        cancelled: true,
        at_ms: 6,
    });
    g.push(RestoreEvent::RolledBack {
        objects_deleted: 0,
        at_ms: 7,
    });
    let s = RestoreJob::replay(&g);
    assert!(s.claim.holder.is_none(), "an ended job holds no claim");
    let (again, _) = given_when::<RestoreJob>(
        &g,
        RestoreCommand::Claim(ClaimCommand::Claim {
            node: "n2".into(),
            deadline_ms: 99_000,
            take_over_own: false,
        }),
        20_000,
    );
    assert_eq!(again.unwrap_err().code, ErrorCode::FailedPrecondition);
}

/// Given a job whose coordination moved from n1 (epoch 1) to n2 (epoch 2), when n1 sends a
/// step fenced by epoch 1: refused as "claim lost"; n2's fenced steps go through; once the
/// job ended, fenced repeats are no-ops again.
#[test]
fn a_stale_coordinator_is_fenced_out_of_its_job() {
    let claim = |node: &str, deadline_ms| {
        RestoreCommand::Claim(ClaimCommand::Claim {
            node: node.into(),
            deadline_ms,
            take_over_own: false,
        })
    };
    let mut g = Vec::new();
    run(
        &mut g,
        RestoreCommand::Request {
            request: request(),
            claim: None,
        },
    );
    let (first, _) = given_when::<RestoreJob>(&g, claim("n1", 1_000), 0);
    g.extend(first.unwrap());
    let (second, _) = given_when::<RestoreJob>(&g, claim("n2", 5_000), 1_000);
    g.extend(second.unwrap());
    let fenced = |epoch| RestoreCommand::Fenced {
        epoch,
        command: Box::new(RestoreCommand::Cancel),
    };
    let (stale, _) = given_when::<RestoreJob>(&g, fenced(1), 1_100);
    let e = stale.unwrap_err();
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.starts_with("claim lost"), "{e}");
    let (current, _) = given_when::<RestoreJob>(&g, fenced(2), 1_100);
    g.extend(current.unwrap());
    g.push(RestoreEvent::RolledBack {
        objects_deleted: 0,
        at_ms: 1_200,
    });
    let (after_end, _) = given_when::<RestoreJob>(&g, fenced(1), 1_300);
    assert_eq!(
        after_end.unwrap(),
        vec![],
        "a repeated cancel of an ended job is a no-op"
    );
}
