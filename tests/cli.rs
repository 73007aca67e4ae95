//! The `snapvault` binary end to end on a real data directory (sled log + local object store):
//! what a newcomer and a script see. Every invocation is a fresh process, so each step also
//! proves that state survives a restart.

use serde_json::Value;
use snapvault_events::{EventLog, SledLog, SystemClock};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");

fn snapvault(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SNAPVAULT_DATA")
        .output()
        .expect("run snapvault")
}

/// Run and require success; returns stdout.
fn ok(data: &Path, args: &[&str]) -> String {
    let out = snapvault(data, args);
    assert!(
        out.status.success(),
        "snapvault {args:?} failed: {}\n{}",
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

/// The position of the last event in the data directory's log.
fn log_head(data: &Path) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let log = SledLog::open(&data.join("log"), Arc::new(SystemClock)).expect("open log");
        log.head().await.expect("head")
    })
}

/// Every data and index file of a described collection must be on disk with the recorded size
/// and crc32c. Returns how many files were checked.
fn check_files_on_disk(data: &Path, view: &Value) -> usize {
    let mut n = 0;
    for seg in view["segments"].as_array().expect("segments") {
        let index_files = seg["indexes"]
            .as_array()
            .expect("indexes")
            .iter()
            .flat_map(|i| i["files"].as_array().expect("files").iter());
        for f in seg["files"]
            .as_array()
            .expect("files")
            .iter()
            .chain(index_files)
        {
            let key = f["key"].as_str().expect("key");
            let bytes = std::fs::read(data.join("objects").join(key))
                .unwrap_or_else(|e| panic!("object {key}: {e}"));
            assert_eq!(
                bytes.len() as u64,
                f["size"].as_u64().expect("size"),
                "{key}"
            );
            assert_eq!(
                u64::from(crc32c::crc32c(&bytes)),
                f["crc32c"].as_u64().expect("crc32c"),
                "{key}"
            );
            n += 1;
        }
    }
    n
}

#[test]
fn ingest_then_describe_matches_the_objects_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ok(d, &["collection", "create", "c1"]);
    ok(
        d,
        &[
            "ingest",
            "c1",
            "--segments",
            "50",
            "--files",
            "4",
            "--size",
            "65536",
        ],
    );

    let view = json(d, &["collection", "describe", "c1"]);
    assert_eq!(view["segments"].as_array().map(Vec::len), Some(50));
    assert_eq!(view["totals"]["segments"], 50);
    assert_eq!(view["totals"]["files"], 200);
    assert_eq!(view["totals"]["bytes"], 200 * 65536);
    for seg in view["segments"].as_array().expect("segments") {
        assert_eq!(seg["files"].as_array().map(Vec::len), Some(4));
        assert_eq!(seg["level"], 0);
    }
    assert_eq!(check_files_on_disk(d, &view), 200);

    // A new process rebuilds the same state from the log.
    let again = json(d, &["collection", "describe", "c1"]);
    assert_eq!(view, again);

    // Compaction: all 50 live segments of the one (partition, shard) merge into one.
    let report = json(d, &["compact", "c1"]);
    assert_eq!(report["compactions"].as_array().map(Vec::len), Some(1));
    let into = report["compactions"][0]["into"].as_u64().expect("into");
    let after = json(d, &["collection", "describe", "c1"]);
    let segments = after["segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0]["id"].as_u64(), Some(into));
    assert_eq!(segments[0]["level"], 1);
    assert_eq!(after["totals"]["files"], 4);
    assert_eq!(after["totals"]["bytes"], 200 * 65536);
    assert_eq!(after["totals"]["rows"], view["totals"]["rows"]);
    assert_eq!(check_files_on_disk(d, &after), 4);
}

#[test]
fn bad_input_is_one_line_with_a_code_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ok(d, &["collection", "create", "c1"]);
    ok(
        d,
        &[
            "ingest",
            "c1",
            "--segments",
            "2",
            "--files",
            "1",
            "--size",
            "1024",
        ],
    );
    let listing = ok(d, &["--json", "collection", "list"]);
    let head = log_head(d);
    let long = "a".repeat(256);

    // (arguments, expected code, words the message must contain)
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["collection", "create", ""],
            "invalid_argument",
            "must not be empty",
        ),
        (
            vec!["collection", "create", "9abc"],
            "invalid_argument",
            "must start with an ASCII letter",
        ),
        (
            vec!["collection", "create", "a/b"],
            "invalid_argument",
            "contains '/'",
        ),
        (
            vec!["collection", "create", "../x"],
            "invalid_argument",
            "'../x'",
        ),
        (
            vec!["collection", "create", &long],
            "invalid_argument",
            "256 characters",
        ),
        (
            vec!["collection", "create", "a b"],
            "invalid_argument",
            "contains ' '",
        ),
        (
            vec!["collection", "create", "c1"],
            "already_exists",
            "'c1' already exists",
        ),
        (
            vec!["collection", "describe", "nope"],
            "not_found",
            "'nope' not found",
        ),
        (
            vec!["collection", "drop", "nope"],
            "not_found",
            "'nope' not found",
        ),
        (
            vec!["ingest", "nope", "--segments", "1", "--size", "10"],
            "not_found",
            "'nope' not found",
        ),
        (
            vec![
                "ingest",
                "c1",
                "--segments",
                "1",
                "--size",
                "10",
                "--partition",
                "p9",
            ],
            "not_found",
            "partition 'p9'",
        ),
        (
            vec!["compact", "c1", "--segments", "1,abc"],
            "invalid_argument",
            "'abc' is not a number",
        ),
        (vec!["compact", "nope"], "not_found", "'nope' not found"),
        (
            vec!["compact", "c1", "--segments", "424242"],
            "not_found",
            "segment 424242",
        ),
        (
            vec!["segment", "drop", "c1", "x1"],
            "invalid_argument",
            "'x1' is not a number",
        ),
        (
            vec!["collection", "frobnicate"],
            "invalid_argument",
            "frobnicate",
        ),
    ];
    for (args, code, words) in &cases {
        let out = snapvault(d, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line expected, got {stderr:?}"
        );
        let prefix = format!("error[{code}]: ");
        assert!(stderr.starts_with(&prefix), "{args:?}: {stderr:?}");
        assert!(
            stderr.contains(words),
            "{args:?}: {stderr:?} should mention {words:?}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: nothing on stdout without --json"
        );

        // With --json the same error is a JSON object on stdout.
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let out = snapvault(d, &with_json);
        assert_eq!(out.status.code(), Some(2), "{with_json:?}");
        let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
        assert_eq!(doc["error"]["code"], *code, "{with_json:?}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(words))
        );
    }

    assert_eq!(
        ok(d, &["--json", "collection", "list"]),
        listing,
        "the listing changed"
    );
    assert_eq!(log_head(d), head, "bad input moved the log head");
}

#[test]
fn index_build_writes_files_and_records_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ok(
        d,
        &[
            "collection",
            "create",
            "c1",
            "--shards",
            "2",
            "--partition",
            "p1",
        ],
    );
    ok(
        d,
        &[
            "ingest",
            "c1",
            "--segments",
            "3",
            "--files",
            "2",
            "--size",
            "4096",
            "--partition",
            "p1",
        ],
    );
    ok(
        d,
        &[
            "index",
            "create",
            "c1",
            "vec",
            "--field",
            "embedding",
            "--params",
            r#"{"m":16}"#,
        ],
    );
    let view = json(d, &["collection", "describe", "c1"]);
    let shards: Vec<u64> = view["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["shard"].as_u64().expect("shard"))
        .collect();
    assert_eq!(shards, vec![0, 1, 0], "round-robin over shards");
    let seg = view["segments"][0]["id"].as_u64().expect("id").to_string();
    let built = json(d, &["index", "build", "c1", "vec", "--segment", &seg]);
    let after = json(d, &["collection", "describe", "c1"]);
    let indexes = &after["segments"][0]["indexes"];
    assert_eq!(indexes[0]["build_id"], built["build_id"]);
    assert_eq!(check_files_on_disk(d, &after), 3 * 2 + 1);
    assert_eq!(after["indexes"][0]["params"]["m"], 16);
}

#[test]
fn demo_runs_on_a_fresh_directory_and_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let human = ok(d, &["demo"]);
    assert!(human.contains("verified"), "{human}");
    let report = json(d, &["demo"]);
    assert_eq!(
        report["ingest"]["segment_ids"].as_array().map(Vec::len),
        Some(20)
    );
    assert_eq!(report["verified"]["files"], 8);
    assert_eq!(report["restore"]["job"]["status"], "completed");
    assert_eq!(report["restore"]["files_compared"], 8);
    assert_eq!(report["gc"]["snapshot_only_files"], 8);
    assert_eq!(
        report["gc"]["after_drop"]["reclaimed"]["dropped_files"]["objects"],
        8
    );
    assert_eq!(report["gc"]["restored_files_verified"], 8);
    let list = json(d, &["collection", "list"]);
    assert_eq!(
        list["collections"].as_array().map(Vec::len),
        Some(4),
        "each run makes its own collection and its restored copy"
    );
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(dir.path())
        .args(["--json", "serve", "--metrics-addr", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    // The readiness announcement is one pretty-printed JSON object; read until it closes.
    let mut reader = std::io::BufReader::new(stdout);
    while !line.trim_end().ends_with('}') {
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        assert!(n > 0, "serve exited before announcing itself: {line}");
    }
    let status: Value = serde_json::from_str(&line).expect("status JSON");
    assert_eq!(status["status"], "serving");
    // The metrics endpoint it announced answers a scrape.
    let url = status["metrics"]
        .as_str()
        .expect("metrics address announced");
    let addr = url
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .expect("http://ADDR/metrics");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to metrics");
    std::io::Write::write_all(&mut conn, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut scraped = String::new();
    std::io::Read::read_to_string(&mut conn, &mut scraped).expect("read metrics");
    assert!(scraped.starts_with("HTTP/1.1 200 OK"), "{scraped}");
    assert!(
        scraped.contains("# TYPE snapvault_log_head_position gauge"),
        "{scraped}"
    );
    assert!(scraped.ends_with("# EOF\n"), "{scraped}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "serve exited with {exit:?}");
    // The node released the data directory: the next command opens it.
    ok(dir.path(), &["collection", "list"]);
}

/// A restore that fails (a source file vanished after the snapshot) ends `restore start
/// --wait` with exactly one line on stderr — no progress (stderr is not a terminal here), no
/// log lines — and the job's failure in it.
#[test]
fn a_failing_restore_wait_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["collection", "create", "c1"]);
    ok(
        d,
        &[
            "ingest",
            "c1",
            "--segments",
            "3",
            "--files",
            "2",
            "--size",
            "1024",
        ],
    );
    ok(d, &["snapshot", "create", "c1", "s"]);
    let described = json(d, &["collection", "describe", "c1"]);
    let key = described["segments"][0]["files"][0]["key"]
        .as_str()
        .expect("a file key")
        .to_string();
    std::fs::remove_file(d.join("objects").join(&key)).unwrap();
    let out = snapvault(d, &["restore", "start", "c1", "s", "r1", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
    assert!(stderr.starts_with("error["), "{stderr}");
    assert!(stderr.contains(&key), "the failure names the key: {stderr}");
}

/// `RUST_LOG=info restore start --wait` logs the job's lifecycle — a few lines, no colour
/// codes in a file, each naming the job — and none of sled's; `--log-format json` gives the
/// same lines as JSON objects.
#[test]
fn an_info_log_of_a_restore_is_a_few_lines_each_with_the_job_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["collection", "create", "c1"]);
    ok(
        d,
        &[
            "ingest",
            "c1",
            "--segments",
            "12",
            "--files",
            "2",
            "--size",
            "500",
        ],
    );
    ok(d, &["snapshot", "create", "c1", "s1"]);
    for (target, format) in [("r1", "text"), ("r2", "json")] {
        let out = Command::new(BIN)
            .arg("--data")
            .arg(d)
            .args(["--log-format", format, "--json"])
            .args(["restore", "start", "c1", "s1", target, "--wait"])
            .env("RUST_LOG", "info")
            .output()
            .expect("run snapvault");
        assert!(out.status.success(), "{out:?}");
        let result: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
        let job = result["job_id"].as_u64().expect("job id");
        let log = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            (2..=10).contains(&lines.len()),
            "{} lines:\n{log}",
            lines.len()
        );
        assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
        assert!(!log.contains("sled"), "sled's lines at info:\n{log}");
        for line in &lines {
            match format {
                "json" => {
                    let v: Value = serde_json::from_str(line).expect("one JSON object per line");
                    assert_eq!(v["fields"]["job"].as_u64(), Some(job), "{line}");
                }
                _ => assert!(line.contains(&format!("job={job}")), "{line}"),
            }
        }
        assert!(log.contains("restore completed"), "{log}");
    }
}

/// Ctrl-C (SIGINT) during `restore start --wait` stops following, not the job: the command
/// says how to follow it again and how to stop it, prints the job as last seen (`--json`),
/// and exits 130; the job is still running afterwards.
#[test]
fn ctrl_c_stops_following_a_restore_not_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["collection", "create", "c1"]);
    ok(
        d,
        &[
            "ingest",
            "c1",
            "--segments",
            "4",
            "--files",
            "2",
            "--size",
            "65536",
        ],
    );
    ok(d, &["snapshot", "create", "c1", "s1"]);
    // 512 KiB at 64 KiB/s: still copying when the signal comes.
    let child = Command::new(BIN)
        .arg("--data")
        .arg(d)
        .args(["--json", "restore", "start", "c1", "s1", "r1"])
        .args(["--max-bytes-per-sec", "64K", "--wait"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn restore --wait");
    // The job's first log line comes after the command armed its Ctrl-C listener (it listens
    // before it starts the job), so the signal below is never the default "die".
    let snapvault_test_support::Interrupted {
        seen,
        rest,
        stdout,
        exit,
    } = snapvault_test_support::interrupt_after(child, "restore started");
    assert_eq!(exit.code(), Some(130), "{seen}{rest}");
    let last: Value = serde_json::from_str(&stdout).expect("the job as last seen, as JSON");
    let job = last["job_id"].as_u64().expect("job id");
    assert!(
        rest.contains(&format!("stopped following restore job {job} (Ctrl-C)")),
        "{rest}"
    );
    assert!(
        rest.contains(&format!("snapvault restore wait {job}")),
        "{rest}"
    );
    assert!(
        rest.contains(&format!("snapvault restore cancel {job}")),
        "{rest}"
    );
    // The job was not cancelled: it is still running (nothing drives it until a process
    // holds the data directory again).
    let status = json(d, &["restore", "status", &job.to_string()]);
    assert_eq!(status["status"], "running", "{status}");
}
