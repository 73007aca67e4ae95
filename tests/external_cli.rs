//! `snapvault collection create --external-source`, `collection alter`, `external refresh |
//! status | cancel` end to end through the binary, with real Parquet files in a real
//! directory; bad input (one coded line, nothing written); and a refresh whose process is
//! aborted mid-task (crash points, like `kill -9`) recovering to exactly one active task that
//! then commits once.

use serde_json::Value;
use snapvault::lake;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");
const SIGABRT: i32 = 6;

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

fn json(data: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(data, &all, None);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn refused(data: &Path, args: &[&str], code: &str, needle: &str) {
    let out = run(data, args, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let line = stderr.lines().last().unwrap_or("");
    assert!(
        line.starts_with(&format!("error[{code}]:")) && line.contains(needle),
        "{args:?}: expected error[{code}] with '{needle}', got: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

fn lake_with(dir: &Path, n: u64, rows: u64) {
    for i in 0..n {
        lake::write_local(&dir.join(format!("part-{i:04}.parquet")), i, rows).unwrap();
    }
}

#[test]
fn create_refresh_status_alter_and_cancel_through_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let lake_dir = tempfile::tempdir().unwrap();
    lake_with(lake_dir.path(), 6, 50);
    let spec = lake_dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"format":"parquet","columns":["id"],"target_rows_per_segment":100}"#,
    )
    .unwrap();
    let source = format!("file://{}", lake_dir.path().display());
    let d = data.path();
    let created = json(
        d,
        &[
            "collection",
            "create",
            "lake",
            "--external-source",
            &source,
            "--external-spec",
            spec.to_str().unwrap(),
        ],
    );
    assert_eq!(created["name"], "lake");

    let t = json(d, &["external", "refresh", "lake", "--wait"]);
    assert_eq!(t["status"], "committed", "{t}");
    assert_eq!(t["counts"]["added"], 3, "300 rows at 100 per segment: {t}");
    assert_eq!(t["counts"]["fragments"], 6);

    let st = json(d, &["external", "status", "lake"]);
    assert_eq!(st["segments"], 3);
    assert_eq!(st["rows"], 300);
    assert_eq!(st["source"], format!("{source}/"));
    assert_eq!(st["last"]["status"], "committed");
    assert!(st["active"].is_null());
    let table = run(d, &["external", "status", "lake"], None);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("TASK") && text.contains("committed"),
        "{text}"
    );

    // A column the fragments do not have: the refresh fails naming the fragment (exit 2).
    let bad_spec = lake_dir.path().join("bad-spec.json");
    std::fs::write(&bad_spec, r#"{"format":"parquet","columns":["nope"]}"#).unwrap();
    let t = json(
        d,
        &[
            "collection",
            "alter",
            "lake",
            "--external-spec",
            bad_spec.to_str().unwrap(),
        ],
    );
    assert_eq!(t["generation"], 2);
    let out = run(d, &["external", "refresh", "lake", "--wait"], None);
    // The alter's task may have been finished by the alter's own process already; then the
    // refresh is a new task that fails the same way.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error[failed_precondition]") && stderr.contains("'nope'"),
        "{stderr}"
    );
    let st = json(d, &["external", "status", "lake"]);
    assert_eq!(st["segments"], 3, "a failed refresh changes nothing");
    assert_eq!(st["last"]["status"], "failed");

    refused(
        d,
        &["external", "cancel", "lake"],
        "failed_precondition",
        "has no refresh running",
    );
    refused(
        d,
        &["external", "status", "nope"],
        "not_found",
        "'nope' not found",
    );
    // Host writes into an external collection are refused.
    refused(
        d,
        &[
            "ingest",
            "lake",
            "--segments",
            "1",
            "--files",
            "1",
            "--size",
            "10",
        ],
        "failed_precondition",
        "external",
    );
}

#[test]
fn bad_input_is_one_coded_line_and_writes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path().join("d");
    let dir = tempfile::tempdir().unwrap();
    let not_json = dir.path().join("a.json");
    std::fs::write(&not_json, "format = parquet").unwrap();
    let csv = dir.path().join("b.json");
    std::fs::write(&csv, r#"{"format":"csv"}"#).unwrap();
    let ok_spec = dir.path().join("c.json");
    std::fs::write(&ok_spec, r#"{"format":"parquet"}"#).unwrap();
    let src = format!("file://{}/", dir.path().display());
    let create = |source: &str, spec: &Path| {
        vec![
            "collection".to_string(),
            "create".into(),
            "x".into(),
            "--external-source".into(),
            source.to_string(),
            "--external-spec".into(),
            spec.display().to_string(),
        ]
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (create(&src, &not_json), "not valid JSON"),
        (create(&src, &csv), "unknown; supported formats: parquet"),
        (create("../up/", &ok_spec), "not a clean prefix"),
        (create("lake//x/", &ok_spec), "not a clean prefix"),
        (create("file://relative/", &ok_spec), "absolute"),
        (create("ftp://host/x/", &ok_spec), "unknown scheme"),
        (create("snapshots/1/", &ok_spec), "belongs to snapvault"),
        (
            create(&src, &dir.path().join("missing.json")),
            "cannot read external spec file",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&d, &args, "invalid_argument", needle);
        assert!(!d.exists(), "{args:?} created the data directory");
    }
    refused(
        &d,
        &["collection", "alter", "x"],
        "invalid_argument",
        "needs --external-source",
    );
    refused(
        &d,
        &["external", "refresh", "../x"],
        "invalid_argument",
        "collection name",
    );
    assert!(!d.exists());
}

/// A refresh aborted mid-task at each crash point; the next process resumes it: exactly one
/// active task, which then commits exactly once.
#[test]
fn a_crash_mid_task_recovers_to_one_active_task_that_commits_once() {
    for point in [
        "external.after_begin",
        "external.after_task_start",
        "external.after_list",
        "external.after_footers",
        "external.after_write",
        "external.before_commit",
        "external.after_commit",
    ] {
        let data = tempfile::tempdir().unwrap();
        let lake_dir = tempfile::tempdir().unwrap();
        lake_with(lake_dir.path(), 20, 10);
        let d = data.path();
        let source = format!("file://{}/", lake_dir.path().display());
        json(
            d,
            &["collection", "create", "c", "--external-source", &source],
        );
        let out = run(d, &["external", "refresh", "c", "--wait"], Some(point));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(SIGABRT), "{point}: {stderr}");
        assert!(
            stderr.contains(&format!("crash point '{point}' reached")),
            "{point}: {stderr}"
        );

        // The next process resumes the task; a refresh now returns it (or it already ended).
        let t = json(d, &["external", "refresh", "c", "--wait"]);
        assert_eq!(t["status"], "committed", "{point}: {t}");
        let st = json(d, &["external", "status", "c"]);
        assert!(st["active"].is_null(), "{point}: {st}");
        assert_eq!(st["segments"], 1, "{point}: {st}");
        assert_eq!(st["fragments"], 20, "{point}: {st}");
        // Exactly one commit in the log: the second refresh kept everything or was the
        // resumed task itself.
        let counts = &t["counts"];
        let resumed_itself = t["already_running"] == true;
        if resumed_itself {
            assert_eq!(counts["added"], 1, "{point}: {t}");
        }
        let st2 = json(d, &["external", "status", "c"]);
        assert_eq!(st2["generation"], 1, "{point}");
        // In the log: exactly one commit added segments; every task stream ended.
        let (adding, running) = log_facts(d);
        assert_eq!(adding, 1, "{point}: commits that added segments");
        assert_eq!(running, 0, "{point}: task streams still running");
    }
}

/// (commits that added segments, task streams not finished), read from the sled log.
fn log_facts(data: &Path) -> (usize, usize) {
    use snapvault_events::codec::decode;
    use snapvault_events::domain::collection::CollectionEvent;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let node = snapvault::Node::start(snapvault::NodeConfig::embedded(data))
            .await
            .unwrap();
        let log = node.client().log().clone();
        let all = log.read_all(1, 1_000_000).await.unwrap();
        let mut adding = 0;
        let mut running = std::collections::BTreeSet::new();
        for env in &all {
            if env.stream.starts_with("collection-")
                && let CollectionEvent::ExternalRefreshed { added, .. } = decode(env).unwrap()
                && !added.is_empty()
            {
                adding += 1;
            }
            if env.stream.starts_with("external-") {
                match env.event_type.as_str() {
                    "Started" => {
                        running.insert(env.stream.clone());
                    }
                    "Finished" => {
                        running.remove(&env.stream);
                    }
                    _ => {}
                }
            }
        }
        node.shutdown().await;
        (adding, running.len())
    })
}

/// Ctrl-C (SIGINT) during `external refresh --wait` stops following, not the task: the
/// command says how to see, follow and cancel it, prints the task as last seen (`--json`) and
/// exits 130; the exiting process gives the task its 30 s, and it commits.
#[test]
fn ctrl_c_stops_following_a_refresh_not_the_task() {
    use std::process::Stdio;
    let data = tempfile::tempdir().unwrap();
    let lake_dir = tempfile::tempdir().unwrap();
    lake_with(lake_dir.path(), 5, 10);
    let d = data.path();
    let source = format!("file://{}/", lake_dir.path().display());
    json(
        d,
        &["collection", "create", "c", "--external-source", &source],
    );
    // The task holds still after listing for 2 s: the signal comes while it runs. The pause
    // line comes after the command armed its Ctrl-C listener (before it started the task).
    let child = Command::new(BIN)
        .arg("--data")
        .arg(d)
        .args(["--json", "external", "refresh", "c", "--wait"])
        .env_remove("RUST_LOG")
        .env("SNAPVAULT_PAUSE_AT", "external.after_list:2000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn refresh --wait");
    let snapvault_test_support::Interrupted {
        seen,
        rest,
        stdout,
        exit,
    } = snapvault_test_support::interrupt_after(child, "pause point 'external.after_list' reached");
    assert_eq!(exit.code(), Some(130), "{seen}{rest}");
    let last: Value = serde_json::from_str(&stdout).expect("the task as last seen, as JSON");
    let task = last["task_id"].as_u64().expect("task id");
    for needle in [
        format!("stopped following refresh task {task} of 'c' (Ctrl-C)"),
        "snapvault external status c".to_string(),
        "snapvault external refresh c --wait".to_string(),
        "snapvault external cancel c".to_string(),
    ] {
        assert!(rest.contains(&needle), "{needle}: {rest}");
    }
    // Not cancelled: the exiting process let it finish, and it committed.
    let st = json(d, &["external", "status", "c"]);
    assert!(st["active"].is_null(), "{st}");
    assert_eq!(st["segments"], 1, "{st}");
}
