//! The `snapvault snapshot` commands end to end on a real data directory: what a person and a
//! script see. Every invocation is a fresh process.

use serde_json::Value;
use snapvault_events::{EventLog, SledLog, SystemClock};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");

fn snapvault(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SNAPVAULT_DATA")
        .env_remove("SNAPVAULT_CRASH_AT")
        .output()
        .expect("run snapvault")
}

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

fn names(page: &Value) -> Vec<&str> {
    page["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect()
}

/// `args` is refused as bad input: exit 2, one line `error[<code>]: …` on stderr that
/// contains `words`, nothing on stdout; with `--json`, the same code in the JSON error.
fn assert_refused(d: &Path, args: &[&str], code: &str, words: &str) {
    let out = snapvault(d, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line expected, got {stderr:?}"
    );
    assert!(
        stderr.starts_with(&format!("error[{code}]: ")),
        "{args:?}: {stderr:?}"
    );
    assert!(
        stderr.contains(words),
        "{args:?}: {stderr:?} should mention {words:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");

    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let out = snapvault(d, &with_json);
    assert_eq!(out.status.code(), Some(2), "{with_json:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
    assert_eq!(doc["error"]["code"], code, "{with_json:?}");
}

fn log_head(data: &Path) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let log = SledLog::open(&data.join("log"), Arc::new(SystemClock)).expect("open log");
        log.head().await.expect("head")
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// `c1`: partitions `_default` and `p1`, 6 segments × 2 files × 4 KiB in `p1` over 2 shards,
/// and one index build (1 more file) on the first segment.
fn setup(d: &Path) {
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
            "6",
            "--files",
            "2",
            "--size",
            "4096",
            "--partition",
            "p1",
        ],
    );
    ok(d, &["index", "create", "c1", "vec", "--field", "embedding"]);
    let view = json(d, &["collection", "describe", "c1"]);
    let seg = view["segments"][0]["id"].as_u64().expect("id").to_string();
    ok(d, &["index", "build", "c1", "vec", "--segment", &seg]);
}

#[test]
fn create_list_describe_verify_drop_import_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup(d);
    let live = json(d, &["collection", "describe", "c1"]);

    // create: committed at once, totals of the whole collection.
    let s1 = json(
        d,
        &[
            "snapshot",
            "create",
            "c1",
            "s1",
            "--description",
            "before the migration",
            "--label",
            "env=prod",
            "--label",
            "tier=gold",
        ],
    );
    assert_eq!(s1["status"], "committed");
    assert_eq!(s1["name"], "s1");
    assert_eq!(s1["collection_name"], "c1");
    assert_eq!(s1["collection_id"], live["id"]);
    assert_eq!(s1["totals"]["segments"], 6);
    assert_eq!(s1["totals"]["files"], 13);
    assert_eq!(s1["totals"]["bytes"], live["totals"]["bytes"]);
    assert_eq!(s1["totals"]["rows"], live["totals"]["rows"]);
    let human = ok(d, &["snapshot", "create", "c1", "s2"]);
    assert!(
        human.starts_with("created snapshot 's2' of collection 'c1'"),
        "{human}"
    );

    // list: newest first, filters, pages.
    assert_eq!(names(&json(d, &["snapshot", "list"])), ["s2", "s1"]);
    let by_label = json(
        d,
        &[
            "snapshot",
            "list",
            "--collection",
            "c1",
            "--label",
            "env=prod",
        ],
    );
    assert_eq!(names(&by_label), ["s1"]);
    let first = json(d, &["snapshot", "list", "--limit", "1"]);
    assert_eq!(names(&first), ["s2"]);
    let token = first["next_page_token"].as_u64().expect("a next page");
    let second = json(
        d,
        &[
            "snapshot",
            "list",
            "--limit",
            "1",
            "--page-token",
            &token.to_string(),
        ],
    );
    assert_eq!(names(&second), ["s1"]);
    assert_eq!(second["next_page_token"], Value::Null);
    let table = ok(d, &["snapshot", "list", "--limit", "1"]);
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "COLLECTION",
        "ID",
        "STATE",
        "SEGMENTS",
        "FILES",
        "SIZE",
        "CREATED",
        "LABELS",
    ] {
        assert!(header.contains(column), "{column} missing: {table}");
    }
    assert!(table.contains("UTC"), "{table}");
    assert!(
        table.contains(&format!("--page-token {token}")),
        "the next page token is printed: {table}"
    );
    let table = ok(d, &["snapshot", "list", "--state", "committed"]);
    assert!(table.contains("env=prod,tier=gold"), "{table}");

    // describe: every field.
    let v = json(d, &["snapshot", "describe", "c1", "s1"]);
    assert_eq!(v["id"], s1["id"]);
    assert_eq!(v["description"], "before the migration");
    assert_eq!(v["labels"]["env"], "prod");
    assert_eq!(v["labels"]["tier"], "gold");
    assert!(v["created_ms"].as_u64().is_some_and(|t| t > 0));
    assert!(v["committed_ms"].as_u64().is_some());
    assert!(v["pinned_version"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(v["failure"], Value::Null);
    assert_eq!(v["leases"], serde_json::json!([]));
    assert_eq!(v["imported"], false);
    assert_eq!(v["manifests"], 1);
    assert_eq!(v["format_version"], 1);
    assert_eq!(
        v["location"],
        format!("snapshots/{}/{}", live["id"], s1["id"])
    );
    let partitions: Vec<&str> = v["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(partitions, ["_default", "p1"]);
    assert_eq!(v["indexes"][0]["name"], "vec");
    assert_eq!(v["indexes"][0]["field"], "embedding");
    let human = ok(d, &["snapshot", "describe", "c1", "s1"]);
    for words in [
        "snapshot s1 (id",
        "state        committed",
        "before the migration",
        "env=prod,tier=gold",
        "format       version 1",
        "leases       none",
        "PARTITION",
        "INDEX",
    ] {
        assert!(human.contains(words), "{words:?} missing: {human}");
    }

    // verify: ok.
    let report = json(d, &["snapshot", "verify", "c1", "s1"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checked_files"], 13);
    assert_eq!(report["snapshot"], "s1");
    let human = ok(d, &["snapshot", "verify", "c1", "s1"]);
    assert!(human.contains(": ok (13 files checked"), "{human}");

    // drop: Deleted, hidden by default, listed with --state deleted, manifests gone.
    let dropped = json(d, &["snapshot", "drop", "c1", "s2"]);
    assert_eq!(dropped["status"], "deleted");
    assert!(
        !d.join("objects")
            .join(dropped["location"].as_str().expect("location"))
            .exists()
    );
    assert_eq!(names(&json(d, &["snapshot", "list"])), ["s1"]);
    assert_eq!(
        names(&json(d, &["snapshot", "list", "--state", "deleted"])),
        ["s2"]
    );
    // Its name is free again.
    json(d, &["snapshot", "create", "c1", "s2"]);

    // import: a copy of s1's objects registers once s1 itself is gone.
    let objects = d.join("objects");
    let location = v["location"].as_str().expect("location");
    copy_dir(&objects.join(location), &objects.join("imports/s1copy"));
    let out = snapvault(d, &["snapshot", "import", "--from", "imports/s1copy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error[already_exists]: "));
    ok(d, &["snapshot", "drop", "c1", "s1"]);
    let imported = json(d, &["snapshot", "import", "--from", "imports/s1copy/"]);
    assert_eq!(imported["imported"], true);
    assert_eq!(imported["status"], "committed");
    assert_eq!(imported["totals"], s1["totals"]);
    assert_eq!(imported["location"], "imports/s1copy");
    assert_eq!(json(d, &["snapshot", "verify", "c1", "s1"])["ok"], true);

    // verify of a damaged snapshot: the report, then one error line, exit 1.
    let seg = &live["segments"][1];
    let missing = seg["files"][0]["key"].as_str().expect("key");
    let corrupt = seg["files"][1]["key"].as_str().expect("key");
    std::fs::remove_file(objects.join(missing)).expect("remove");
    std::fs::write(objects.join(corrupt), b"garbage").expect("write");
    let out = snapvault(d, &["snapshot", "verify", "c1", "s1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains(&format!("missing           {missing}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("corrupt           {corrupt}")),
        "{stdout}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr
            .starts_with("error[internal]: snapshot verify found 1 missing and 1 corrupt objects"),
        "{stderr}"
    );
    // With --json stdout is exactly one document: the report.
    let out = snapvault(d, &["--json", "snapshot", "verify", "c1", "s1"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["ok"], false);
    assert_eq!(report["missing"], serde_json::json!([missing]));
    assert_eq!(report["corrupt"].as_array().map(Vec::len), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error[internal]: "), "{stderr}");
}

#[test]
fn bad_input_is_one_line_with_a_code_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup(d);
    ok(d, &["snapshot", "create", "c1", "s1"]);
    let listing = ok(d, &["--json", "snapshot", "list"]);
    let head = log_head(d);

    // (arguments, expected code, words the message must contain)
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["snapshot", "create", "c1", "../x"],
            "invalid_argument",
            "snapshot name '../x'",
        ),
        (
            vec!["snapshot", "create", "c1", "a/b"],
            "invalid_argument",
            "contains '/'",
        ),
        (
            vec!["snapshot", "create", "c1", ""],
            "invalid_argument",
            "snapshot name must not be empty",
        ),
        (
            vec!["snapshot", "describe", "../c1", "s1"],
            "invalid_argument",
            "collection name '../c1'",
        ),
        (
            vec!["snapshot", "create", "nope", "s2"],
            "not_found",
            "collection 'nope' not found",
        ),
        (
            vec!["snapshot", "describe", "nope", "s1"],
            "not_found",
            "snapshot 's1' of collection 'nope' not found",
        ),
        (
            vec!["snapshot", "describe", "c1", "nope"],
            "not_found",
            "snapshot 'nope' of collection 'c1' not found",
        ),
        (
            vec!["snapshot", "drop", "c1", "nope"],
            "not_found",
            "snapshot 'nope'",
        ),
        (
            vec!["snapshot", "verify", "c1", "nope"],
            "not_found",
            "snapshot 'nope'",
        ),
        (
            vec!["snapshot", "list", "--state", "done"],
            "invalid_argument",
            "unknown snapshot state 'done'; valid states: pending, committed, failed, deleting, deleted",
        ),
        (
            vec!["snapshot", "create", "c1", "s2", "--label", "env"],
            "invalid_argument",
            "label 'env' must look like key=value",
        ),
        (
            vec!["snapshot", "list", "--label", "env"],
            "invalid_argument",
            "label 'env' must look like key=value",
        ),
        (
            vec![
                "snapshot", "create", "c1", "s2", "--label", "a=1", "--label", "a=2",
            ],
            "invalid_argument",
            "label 'a' is given twice",
        ),
        (
            vec!["snapshot", "create", "c1", "s2", "--label", "9x=1"],
            "invalid_argument",
            "label key '9x'",
        ),
        (
            vec!["snapshot", "list", "--limit", "0"],
            "invalid_argument",
            "--limit",
        ),
        (
            vec!["snapshot", "import", "--from", "../x"],
            "invalid_argument",
            "import prefix",
        ),
        (
            vec!["snapshot", "import", "--from", "imports/none"],
            "not_found",
            "no snapshot.json under 'imports/none'",
        ),
        (
            vec!["snapshot", "frobnicate"],
            "invalid_argument",
            "frobnicate",
        ),
    ];
    for (args, code, words) in &cases {
        assert_refused(d, args, code, words);
    }

    assert_eq!(ok(d, &["--json", "snapshot", "list"]), listing);
    assert_eq!(log_head(d), head, "bad input moved the log head");

    // A taken name is refused by the collection's pin (the id reserved for the attempt may
    // move the log head; no snapshot state is written).
    let out = snapvault(d, &["snapshot", "create", "c1", "s1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error[already_exists]: snapshot 's1' already exists"),
        "{stderr}"
    );
    assert_eq!(ok(d, &["--json", "snapshot", "list"]), listing);
}

#[test]
fn demo_snapshots_then_moves_on_and_the_snapshot_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let report = json(d, &["demo"]);
    let s = &report["snapshot"];
    assert_eq!(s["name"], "nightly");
    // After the first compaction: one segment per shard, 4 files each, the 5 MiB ingested.
    assert_eq!(s["segments"], 2);
    assert_eq!(s["files"], 8);
    assert_eq!(s["bytes"], 20 * 4 * 65536);
    assert_eq!(s["verified_ok"], true);
    assert_eq!(s["verified_files"], 8);
    // The host moved on: none of the snapshot's segments is live any more.
    let collection = report["collection"].as_str().expect("collection");
    let live = json(d, &["collection", "describe", collection]);
    let live_ids: Vec<u64> = live["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|x| x["id"].as_u64().expect("id"))
        .collect();
    let held: Vec<u64> = s["segment_ids"]
        .as_array()
        .expect("segment_ids")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect();
    assert_eq!(held.len(), 2);
    assert!(
        held.iter().all(|id| !live_ids.contains(id)),
        "{held:?} {live_ids:?}"
    );
    assert_ne!(report["totals"]["bytes"], s["bytes"]);
    // The demo ends by restoring the snapshot and dropping it: a fresh process sees it
    // deleted, and the restored collection holds the snapshot's segments.
    let deleted = json(d, &["snapshot", "list", "--state", "deleted"]);
    assert_eq!(deleted["snapshots"][0]["id"], s["id"]);
    let restored = report["restore"]["collection"].as_str().expect("restored");
    let r = json(d, &["collection", "describe", restored]);
    assert_eq!(r["status"], "ready");
    assert_eq!(r["totals"]["files"], 8);
    assert_eq!(r["totals"]["bytes"], s["bytes"]);
    let human = ok(d, &["demo"]);
    assert!(human.contains("verified snapshot 'nightly'"), "{human}");
}

#[test]
fn bad_restore_input_is_one_line_with_a_code_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup(d);
    ok(d, &["snapshot", "create", "c1", "s1"]);
    let collections = ok(d, &["--json", "collection", "list"]);
    let head = log_head(d);

    // (arguments, expected code, words the message must contain)
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["restore", "start", "c1", "nope", "t1"],
            "not_found",
            "snapshot 'nope' of collection 'c1' not found",
        ),
        (
            vec!["restore", "start", "nope", "s1", "t1"],
            "not_found",
            "collection 'nope'",
        ),
        (
            vec!["restore", "start", "c1", "s1", "c1"],
            "already_exists",
            "collection 'c1' already exists",
        ),
        (
            vec!["restore", "start", "c1", "s1", "t1", "--partition", "zz"],
            "not_found",
            "partition 'zz' is not in snapshot 's1'",
        ),
        (
            vec!["restore", "start", "c1", "s1", "t1", "--parallelism", "0"],
            "invalid_argument",
            "1..=256, got '0'",
        ),
        (
            vec![
                "restore",
                "start",
                "c1",
                "s1",
                "t1",
                "--parallelism",
                "1000",
            ],
            "invalid_argument",
            "1..=256, got '1000'",
        ),
        (
            vec!["restore", "start", "c1", "s1", "../t"],
            "invalid_argument",
            "target collection name '../t'",
        ),
        (
            vec![
                "restore",
                "start",
                "c1",
                "s1",
                "t1",
                "--max-bytes-per-sec=-1",
            ],
            "invalid_argument",
            "bandwidth limit must be a positive number",
        ),
        (
            vec![
                "restore",
                "start",
                "c1",
                "s1",
                "t1",
                "--max-bytes-per-sec",
                "0",
            ],
            "invalid_argument",
            "got '0'",
        ),
        (
            vec!["restore", "status", "424242"],
            "not_found",
            "restore job 424242 not found",
        ),
        (
            vec!["restore", "status", "abc"],
            "invalid_argument",
            "job id 'abc' is not a number",
        ),
        (
            vec!["restore", "cancel", "424242"],
            "not_found",
            "restore job 424242 not found",
        ),
        (
            vec!["restore", "list", "--state", "weird"],
            "invalid_argument",
            "unknown restore state 'weird'",
        ),
    ];
    for (args, code, words) in &cases {
        assert_refused(d, args, code, words);
    }
    assert_eq!(ok(d, &["--json", "collection", "list"]), collections);
    let jobs = json(d, &["restore", "list"]);
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
    // Refusals are decided before anything is written (an id reserved for a refused start
    // would move the head; none may).
    assert_eq!(log_head(d), head, "bad restore input moved the log head");
    let under_data = std::fs::read_dir(d.join("objects/data"))
        .expect("data dir")
        .count();
    assert_eq!(under_data, 1, "only c1's prefix under data/");
}
