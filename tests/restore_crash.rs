//! Restore survives real processes dying: `kill -9` at random moments of a long restore, and
//! an abort at every named crash point of `restore start`, the job runner and the rollback.
//!
//! After each death the next `restore wait` (which takes the job over: the dead process held
//! its claim under the same node id) finishes it. The tests prove that in the end every restored file equals its source byte for byte (read straight from the
//! data directory), that a resumed job did not copy again what it had recorded (the copy
//! audit counts every object a copy wrote, across all processes), and that a failed or
//! cancelled or half-started restore leaves nothing: no target collection, no object under its
//! prefix, no lease, the name free.

use serde_json::Value;
use snapvault_test_support::cluster::{assert_restored_files, files_under};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");
const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

fn command(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SNAPVAULT_DATA")
        .env_remove("SNAPVAULT_CRASH_AT")
        .env_remove("SNAPVAULT_COPY_AUDIT");
    cmd
}

fn run(data: &Path, args: &[&str], crash_at: Option<&str>) -> Output {
    let mut cmd = command(data, args);
    if let Some(point) = crash_at {
        cmd.env("SNAPVAULT_CRASH_AT", point);
    }
    cmd.output().expect("run snapvault")
}

fn ok(data: &Path, args: &[&str]) -> String {
    let out = run(data, args, None);
    assert!(
        out.status.success(),
        "snapvault {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn json(data: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(data, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
}

fn crash(data: &Path, args: &[&str], point: &str) {
    let out = run(data, args, Some(point));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "{args:?} with {point} armed: expected death by SIGABRT, got {:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!("crash point '{point}' reached")),
        "{point}: the process died elsewhere: {stderr}"
    );
}

/// A collection `c1` with `segments` × `files` files of `size` bytes over 2 shards, and a
/// snapshot `s` of it.
fn setup(data: &Path, segments: u64, files: u64, size: u64) {
    ok(data, &["collection", "create", "c1", "--shards", "2"]);
    ok(
        data,
        &[
            "ingest",
            "c1",
            "--segments",
            &segments.to_string(),
            "--files",
            &files.to_string(),
            "--size",
            &size.to_string(),
        ],
    );
    ok(data, &["snapshot", "create", "c1", "s"]);
}

fn objects(data: &Path) -> PathBuf {
    data.join("objects")
}

/// Every live file of `target` equals, byte for byte, a file of the snapshot's source (the
/// host's files are unique pseudo-random bytes, so content identifies the source).
fn assert_restored_byte_for_byte(data: &Path, target: &str, expect_files: usize) {
    let view = json(data, &["collection", "describe", target]);
    assert_eq!(view["status"], "ready", "{view}");
    let snap = json(data, &["snapshot", "describe", "c1", "s"]);
    let cid = snap["collection_id"].as_u64().unwrap();
    let seen = assert_restored_files(&objects(data), &view, cid).len();
    assert_eq!(seen, expect_files);
}

/// After a failed, cancelled or half-started restore into `target` (collection id `tid`):
/// nothing of it is left and the snapshot is free.
fn assert_nothing_left(data: &Path, target: &str, tid: Option<u64>) {
    let out = run(data, &["collection", "describe", target], None);
    assert_eq!(out.status.code(), Some(2), "the target must not exist");
    if let Some(tid) = tid {
        let mut left = Vec::new();
        files_under(
            &objects(data),
            &objects(data).join(format!("data/{tid}")),
            &mut left,
        );
        assert!(left.is_empty(), "objects left under data/{tid}: {left:?}");
    }
    let snap = json(data, &["snapshot", "describe", "c1", "s"]);
    assert_eq!(
        snap["leases"],
        serde_json::json!([]),
        "the lease is released"
    );
}

/// A small xorshift so the kill moments are random but the test reproducible.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_9_at_random_moments_of_a_2000_file_restore_resumes_without_copying_again() {
    const SEGMENTS: u64 = 500;
    const FILES: u64 = 4;
    const TOTAL: u64 = SEGMENTS * FILES;
    const KILLS: usize = 12;
    const BATCH: u64 = 32;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    setup(&data, SEGMENTS, FILES, 2048);
    let audit = dir.path().join("copies.txt");
    // ~4 MiB at 512 KiB/s: about 8 s of copying in all, spread over the processes below.
    let start = {
        let mut cmd = command(
            &data,
            &[
                "--json",
                "restore",
                "start",
                "c1",
                "s",
                "r1",
                "--parallelism",
                "4",
                "--max-bytes-per-sec",
                "512K",
            ],
        );
        cmd.env("SNAPVAULT_COPY_AUDIT", &audit);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let job = start["job_id"].as_u64().unwrap().to_string();
    let mut rng = Rng(0x5eed_cafe);
    let mut kills = 0;
    for _ in 0..KILLS {
        let mut cmd = command(&data, &["restore", "wait", &job]);
        cmd.env("SNAPVAULT_COPY_AUDIT", &audit)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(450)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(SIGKILL));
        kills += 1;
    }
    assert!(
        kills >= 10,
        "only {kills} kills happened before the restore finished"
    );
    // A one-shot status check takes no part in the job (it did not start it or wait for
    // it): it only reads.
    let mut cmd = command(&data, &["--json", "restore", "status", &job]);
    cmd.env("SNAPVAULT_COPY_AUDIT", &audit);
    let mid: Value = serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap();
    assert_ne!(mid["status"], "failed", "{mid}");
    let mut cmd = command(&data, &["--json", "restore", "wait", &job]);
    cmd.env("SNAPVAULT_COPY_AUDIT", &audit);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["files_done"].as_u64(), Some(TOTAL));
    assert_restored_byte_for_byte(&data, "r1", TOTAL as usize);
    let lines = std::fs::read_to_string(&audit).unwrap();
    let copies = lines.lines().count() as u64;
    let distinct: BTreeSet<&str> = lines.lines().collect();
    assert_eq!(
        distinct.len() as u64,
        TOTAL,
        "every file copied at least once"
    );
    eprintln!("{TOTAL} files, {kills} kills, {copies} copies made");
    assert!(
        copies <= TOTAL + kills as u64 * BATCH,
        "{copies} copies for {TOTAL} files and {kills} kills: a resumed job copied again what it had recorded"
    );
}

#[test]
fn a_crash_inside_restore_start_is_finished_by_the_next_wait_and_untouched_by_others() {
    for point in [
        "restore.after_request",
        "restore.after_target_created",
        "restore.after_target",
        "restore.after_lease",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        setup(&data, 6, 2, 512);
        crash(&data, &["restore", "start", "c1", "s", "r1"], point);
        // The job was recorded first, with its claim: it is visible, pending, and a one-shot
        // command that did not start it leaves it alone.
        ok(&data, &["collection", "list"]);
        let list = json(&data, &["restore", "list"]);
        let jobs = list["jobs"].as_array().expect("jobs");
        assert_eq!(jobs.len(), 1, "{point}: the job is recorded: {list}");
        assert_eq!(jobs[0]["status"], "pending", "{point}: {list}");
        let job = jobs[0]["job_id"].as_u64().unwrap().to_string();
        // Waiting for it takes it over (the crashed process's claim is this node's own, and
        // on a sled directory no other process can hold it) and finishes it.
        let v = json(&data, &["restore", "wait", &job]);
        assert_eq!(v["status"], "completed", "{point}: {v}");
        assert_restored_byte_for_byte(&data, "r1", 12);
    }
}

#[test]
fn a_crash_at_every_step_of_a_running_job_resumes_to_completed() {
    for point in [
        "restore.after_request",
        "restore.after_task_planned",
        "restore.after_progress",
        "restore.after_stage",
        "restore.before_complete",
        "restore.after_target_ready",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        setup(&data, 40, 2, 512);
        crash(
            &data,
            &["restore", "start", "c1", "s", "r1", "--wait"],
            point,
        );
        let list = json(&data, &["restore", "list"]);
        let job = list["jobs"][0]["job_id"]
            .as_u64()
            .expect("the job is recorded");
        let v = json(&data, &["restore", "wait", &job.to_string()]);
        assert_eq!(v["status"], "completed", "{point}: {v}");
        assert_restored_byte_for_byte(&data, "r1", 80);
        let snap = json(&data, &["snapshot", "describe", "c1", "s"]);
        assert_eq!(
            snap["leases"],
            serde_json::json!([]),
            "{point}: lease released"
        );
    }
}

#[test]
fn a_crash_during_the_rollback_of_a_cancel_finishes_it_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    setup(&data, 200, 2, 4096);
    let v = json(
        &data,
        &[
            "restore",
            "start",
            "c1",
            "s",
            "r1",
            "--max-bytes-per-sec",
            "256K",
        ],
    );
    let job = v["job_id"].as_u64().unwrap().to_string();
    let tid = v["target_collection_id"].as_u64().unwrap();
    // Let it copy a little (this process resumes the job, then is stopped by the timeout).
    let out = run(&data, &["restore", "wait", &job, "--timeout", "1s"], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crash(
        &data,
        &["restore", "cancel", &job, "--wait"],
        "restore.after_rollback_delete",
    );
    // Cancelling again is a no-op on the recorded cancel; --wait drives the rollback to its end.
    let end = json(&data, &["restore", "cancel", &job, "--wait"]);
    assert_eq!(end["status"], "cancelled", "{end}");
    assert_nothing_left(&data, "r1", Some(tid));
    let status = json(&data, &["restore", "status", &job]);
    assert_eq!(status["status"], "cancelled");
}

/// A crash after the target became Ready but before the job recorded its end, then the user
/// drops the (complete) target before anything resumed the job: the job must still end
/// Completed with its lease released — never roll back a restore that completed (found by
/// the simulator). The drop is a one-shot command that takes no part in the job; the
/// `restore wait` after it finishes the job.
#[test]
fn a_target_dropped_between_ready_and_the_job_end_leaves_the_job_completed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, 4, 2, 4096);
    crash(
        d,
        &["restore", "start", "c1", "s", "t", "--wait"],
        "restore.after_target_ready",
    );
    ok(d, &["collection", "drop", "t"]);
    let list = json(d, &["restore", "list"]);
    let jobs = list["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{list}");
    let job = jobs[0]["job_id"].as_u64().unwrap().to_string();
    let end = json(d, &["restore", "wait", &job]);
    assert_eq!(end["status"], "completed", "{end}");
    // The lease is gone: the snapshot can be dropped.
    ok(d, &["snapshot", "drop", "c1", "s"]);
}
