//! A damaged embedded log is never served short, never panics, never hangs (issue: "never
//! silent"). Real processes on a real sled directory:
//!
//! - **crash, then flip**: `ingest` is `kill -9`ed mid-way; the directory is copied; then one
//!   byte is flipped at 24 offsets spread over sled's `db` file, each on a fresh copy, and
//!   `collection list` runs on it. Every run either shows every segment the intact copy shows
//!   (exit 0) or fails with one `error[internal]` line that names a position (exit 1) — never
//!   fewer segments, never a panic (exit 101), never a hang. sled can roll back records and
//!   its head together; the watermark beside it is what catches that (`sled_watermark.rs`).
//! - **verify and repair**: on a copy that lost acknowledged events, `log verify` names the
//!   first missing position; `log repair --truncate-after` without `--yes` changes nothing,
//!   with it the log opens again with what was left.
//! - **leftovers**: an empty `snap.*.generating` (what a full disk leaves) is removed at open;
//!   a foreign `snap.*` file is refused by name at once instead of hanging the open.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");
const OFFSETS: u64 = 24;
/// Longest one command may take on a damaged copy (the log's open is bounded to 5 s here).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

fn snapvault(data: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        // A flip can make sled spin at open: give up after 5 s instead of the 60 s default.
        .env(snapvault_events::sled_log::OPEN_TIMEOUT_ENV, "5000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run snapvault");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("poll snapvault").is_some() {
            return child.wait_with_output().expect("snapvault output");
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("snapvault output");
            panic!(
                "snapvault {args:?} hung for {COMMAND_TIMEOUT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn segments(data: &Path) -> Result<u64, (Option<i32>, String)> {
    let out = snapvault(data, &["--json", "collection", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err((out.status.code(), stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("collection list JSON");
    let list = v["collections"].as_array().cloned().unwrap_or_default();
    Ok(list
        .iter()
        .map(|c| c["segments"].as_u64().unwrap_or(0))
        .sum())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn flip(file: &Path, offset: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[offset as usize] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

/// A data directory whose `ingest` was killed mid-way, and the segments its intact copy shows.
fn killed_ingest(root: &Path) -> (std::path::PathBuf, u64) {
    let data = root.join("data");
    let created = snapvault(&data, &["collection", "create", "c1"]);
    assert!(created.status.success(), "{created:?}");
    let mut ingest = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args([
            "ingest",
            "c1",
            "--segments",
            "100000",
            "--files",
            "1",
            "--size",
            "64",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ingest");
    // Until the log holds a few hundred segments' events.
    let db = data.join("log").join("db");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    while std::fs::metadata(&db).map_or(0, |m| m.len()) < 1 << 20
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    ingest.kill().expect("kill -9 ingest");
    let _ = ingest.wait();
    let pristine = root.join("pristine");
    copy_dir(&data, &pristine);
    let count = segments(&data).expect("the intact copy opens");
    assert!(count > 0, "ingest wrote nothing before the kill");
    (pristine, count)
}

#[test]
fn a_flipped_byte_never_serves_fewer_segments_never_panics_never_hangs() {
    let root = tempfile::tempdir().unwrap();
    let (pristine, acknowledged) = killed_ingest(root.path());
    let size = std::fs::metadata(pristine.join("log").join("db"))
        .unwrap()
        .len();
    let (mut intact, mut refused) = (0, 0);
    for i in 1..=OFFSETS {
        let offset = (size - 1) * i / (OFFSETS + 1);
        let copy = root.path().join(format!("flip-{i}"));
        copy_dir(&pristine, &copy);
        flip(&copy.join("log").join("db"), offset);
        match segments(&copy) {
            Ok(n) => {
                assert_eq!(
                    n, acknowledged,
                    "offset {offset}: exit 0 with {n} segments; {acknowledged} were acknowledged"
                );
                intact += 1;
            }
            Err((code, stderr)) => {
                assert_eq!(code, Some(1), "offset {offset}: {stderr}");
                let lines: Vec<&str> = stderr.lines().collect();
                assert_eq!(lines.len(), 1, "offset {offset}: one line, got: {stderr}");
                assert!(
                    lines[0].starts_with("error[internal]: "),
                    "offset {offset}: {stderr}"
                );
                let names_position = lines[0]
                    .split("position ")
                    .skip(1)
                    .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
                assert!(
                    names_position,
                    "offset {offset}: no position named: {stderr}"
                );
                refused += 1;
            }
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
    eprintln!("{acknowledged} segments acknowledged; {intact} flips harmless, {refused} refused");
}

#[test]
fn verify_names_the_loss_and_repair_drops_only_with_yes() {
    let root = tempfile::tempdir().unwrap();
    let (pristine, acknowledged) = killed_ingest(root.path());
    let size = std::fs::metadata(pristine.join("log").join("db"))
        .unwrap()
        .len();
    // Find a flip that loses acknowledged events (sled rolls back to an earlier point): the
    // node refuses to open it, naming the watermark.
    let mut found = None;
    for i in 1..=OFFSETS {
        let copy = root.path().join(format!("loss-{i}"));
        copy_dir(&pristine, &copy);
        flip(&copy.join("log").join("db"), (size - 1) * i / (OFFSETS + 1));
        if let Err((_, stderr)) = segments(&copy)
            && stderr.contains("were acknowledged (its watermark)")
        {
            let out = snapvault(&copy, &["--json", "log", "verify"]);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let report: Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
            found = Some((copy, report));
            break;
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
    let Some((copy, report)) = found else {
        eprintln!("no flip lost acknowledged events on this run; nothing to repair");
        return;
    };
    let kept = report["records"].as_u64().unwrap();
    assert_eq!(report["first_bad_position"], kept + 1, "{report}");
    let cut = kept.to_string();
    let dry = snapvault(&copy, &["log", "repair", "--truncate-after", &cut]);
    assert_eq!(dry.status.code(), Some(2), "{dry:?}");
    assert!(segments(&copy).is_err(), "a dry run changed nothing");
    let done = snapvault(&copy, &["log", "repair", "--truncate-after", &cut, "--yes"]);
    assert!(done.status.success(), "{done:?}");
    let left = segments(&copy).expect("the repaired log opens");
    assert!(left < acknowledged, "{left} of {acknowledged}");
    let verified = snapvault(&copy, &["--json", "log", "verify"]);
    assert!(verified.status.success(), "{verified:?}");
}

#[test]
fn leftover_and_foreign_snapshot_files_are_handled_at_open() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    assert!(
        snapvault(&data, &["collection", "create", "c1"])
            .status
            .success()
    );
    let log = data.join("log");
    // What a full disk leaves: sled's unfinished snapshot file, empty.
    let leftover = log.join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&leftover, b"").unwrap();
    assert_eq!(segments(&data), Ok(0));
    assert!(
        !leftover.exists(),
        "the unfinished snapshot file is removed"
    );
    // A foreign file sled would read as its snapshot.
    std::fs::write(log.join("snap.backup"), b"not sled's").unwrap();
    let started = Instant::now();
    let out = snapvault(&data, &["collection", "list"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error[internal]: ") && stderr.contains("snap.backup"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    std::fs::remove_file(log.join("snap.backup")).unwrap();
    assert_eq!(segments(&data), Ok(0));
}
