//! Snapshot create and drop survive a real process dying at every crash point (design §4: "a
//! crash in Pending resumes"; drop is "Deleting until the manifests are removed").
//!
//! Each test runs the `snapvault` binary on a fresh data directory with
//! `SNAPVAULT_CRASH_AT=<point>`: the process aborts at that line (SIGABRT: no destructors, no
//! flush, like `kill -9`). The next process — any command — resumes the unfinished work at
//! start, and its `Node::shutdown` waits for that resume. The tests then prove, each with fresh
//! processes, that the snapshot reached its final state, that its objects are exactly what
//! that state promises, and that its name behaves (taken after a create, free after a drop).

use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");
/// `SIGABRT`, what `std::process::abort` dies of on Linux and macOS.
const SIGABRT: i32 = 6;
/// The collection every test snapshots: 30 segments × 2 files × 1 KiB over 2 shards (one
/// manifest: `snapshot.after_manifest` fires after the first and only one).
const SEGMENTS: u64 = 30;
const FILES: u64 = 2;
const FILE_BYTES: u64 = 1024;

fn run(data: &Path, args: &[&str], crash_at: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SNAPVAULT_DATA")
        .env_remove("SNAPVAULT_CRASH_AT");
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

/// Run a command with the crash point armed and require that the process died there.
fn crash(data: &Path, args: &[&str], point: &str) {
    let out = run(data, args, Some(point));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} with {point} armed succeeded: {stderr}"
    );
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
    assert!(
        out.stdout.is_empty(),
        "{point}: a crashed command printed a result"
    );
}

/// A collection `c` of [`SEGMENTS`] segments on a fresh data directory.
fn setup(data: &Path) {
    ok(data, &["collection", "create", "c", "--shards", "2"]);
    ok(
        data,
        &[
            "ingest",
            "c",
            "--segments",
            &SEGMENTS.to_string(),
            "--files",
            &FILES.to_string(),
            "--size",
            &FILE_BYTES.to_string(),
        ],
    );
}

/// The names of the snapshots a `--json snapshot list` page holds.
fn names(page: &Value) -> Vec<String> {
    page["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_string())
        .collect()
}

/// Describe `name` until `done(view)` holds (a few tries: the resume runs while the first
/// process after the crash does its own command, and that process's shutdown waits for it, so
/// one more process is normally enough).
fn describe_until(data: &Path, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = String::new();
    for _ in 0..10 {
        let out = run(data, &["--json", "snapshot", "describe", "c", name], None);
        last = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            let view: Value = serde_json::from_str(&last).expect("describe JSON");
            if done(&view) {
                return view;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("snapshot '{name}' did not reach the expected state: {last}");
}

/// Every file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let path = e.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Where a snapshot's `snapshot.json` and manifests are on disk.
fn snapshot_dir(data: &Path, view: &Value) -> PathBuf {
    data.join("objects")
        .join(view["location"].as_str().expect("location"))
}

/// A committed snapshot of all of `c`: the totals, the objects on disk, and `verify`.
fn assert_committed_and_sound(data: &Path, view: &Value) {
    assert_eq!(view["status"], "committed", "{view}");
    assert_eq!(view["failure"], Value::Null, "{view}");
    assert_eq!(view["totals"]["segments"], SEGMENTS);
    assert_eq!(view["totals"]["files"], SEGMENTS * FILES);
    assert_eq!(view["totals"]["bytes"], SEGMENTS * FILES * FILE_BYTES);
    assert_eq!(view["manifests"], 1);
    assert_eq!(view["format_version"], 1);
    let dir = snapshot_dir(data, view);
    let on_disk: Vec<String> = files_under(&dir)
        .iter()
        .map(|p| p.strip_prefix(&dir).expect("under").display().to_string())
        .collect();
    assert_eq!(on_disk, vec!["manifest-0.avro", "snapshot.json"]);
    let name = view["name"].as_str().expect("name");
    let report = json(data, &["snapshot", "verify", "c", name]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checked_files"], SEGMENTS * FILES);
}

/// Crash `snapshot create c s1` at `point`; the next processes must finish it.
fn create_survives(point: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup(d);
    crash(d, &["snapshot", "create", "c", "s1"], point);

    // The first process after the crash: it resumes the create while it lists, and waits for
    // the resume before it exits.
    json(d, &["snapshot", "list", "--state", "committed"]);
    let view = describe_until(d, "s1", |v| v["status"] == "committed");
    assert_committed_and_sound(d, &view);
    let committed = json(d, &["snapshot", "list", "--state", "committed"]);
    assert_eq!(names(&committed), vec!["s1"], "exactly one s1: {committed}");
    for state in ["pending", "failed", "deleting", "deleted"] {
        let page = json(d, &["snapshot", "list", "--state", state]);
        assert!(
            names(&page).is_empty(),
            "{point}: a {state} leftover: {page}"
        );
    }

    // The name is taken; another name works.
    let out = run(d, &["snapshot", "create", "c", "s1"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error[already_exists]: "), "{stderr}");
    assert!(stderr.contains("'s1'"), "{stderr}");
    let s2 = json(d, &["snapshot", "create", "c", "s2"]);
    assert_eq!(s2["status"], "committed");
    assert_ne!(s2["id"], view["id"]);
}

#[test]
fn create_crash_after_pin_is_adopted_and_committed() {
    create_survives("snapshot.after_pin");
}

#[test]
fn create_crash_after_start_resumes_and_commits() {
    create_survives("snapshot.after_start");
}

#[test]
fn create_crash_after_manifest_resumes_and_commits() {
    create_survives("snapshot.after_manifest");
}

#[test]
fn create_crash_after_metadata_resumes_and_commits() {
    create_survives("snapshot.after_metadata");
}

#[test]
fn create_crash_before_commit_resumes_and_commits() {
    create_survives("snapshot.before_commit");
}

/// Crash `snapshot drop c s1` at `point`; the next processes must finish the drop.
fn drop_survives(point: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup(d);
    let created = json(d, &["snapshot", "create", "c", "s1"]);
    let described = json(d, &["snapshot", "describe", "c", "s1"]);
    assert_committed_and_sound(d, &described);
    let objects = snapshot_dir(d, &created);
    let live_before = json(d, &["collection", "describe", "c"]);
    crash(d, &["snapshot", "drop", "c", "s1"], point);

    // The first process after the crash resumes the drop and waits for it before exiting.
    json(d, &["snapshot", "list", "--state", "deleted"]);
    let mut deleted = Value::Null;
    for _ in 0..10 {
        deleted = json(d, &["snapshot", "list", "--state", "deleted"]);
        if names(&deleted) == ["s1"] {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names(&deleted), vec!["s1"], "{point}: {deleted}");
    assert_eq!(deleted["snapshots"][0]["id"], created["id"]);
    for state in ["pending", "committed", "failed", "deleting"] {
        let page = json(d, &["snapshot", "list", "--state", state]);
        assert!(
            names(&page).is_empty(),
            "{point}: a {state} leftover: {page}"
        );
    }
    assert_eq!(
        files_under(&objects),
        Vec::<PathBuf>::new(),
        "{point}: objects of the dropped snapshot are left"
    );
    let out = run(d, &["snapshot", "describe", "c", "s1"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error[not_found]: "));

    // Dropping a snapshot never touches the collection's own files, and frees the name.
    let live_after = json(d, &["collection", "describe", "c"]);
    assert_eq!(live_after["segments"], live_before["segments"]);
    assert_eq!(live_after["totals"], live_before["totals"]);
    let again = json(d, &["snapshot", "create", "c", "s1"]);
    assert_ne!(again["id"], created["id"]);
    let again = json(d, &["snapshot", "describe", "c", "s1"]);
    assert_committed_and_sound(d, &again);
}

#[test]
fn drop_crash_after_drop_requested_resumes_and_deletes() {
    drop_survives("snapshot.after_drop_requested");
}

#[test]
fn drop_crash_after_unpin_resumes_and_deletes() {
    drop_survives("snapshot.after_unpin");
}

#[test]
fn drop_crash_after_first_delete_resumes_and_deletes() {
    drop_survives("snapshot.after_first_delete");
}
