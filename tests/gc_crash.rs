//! `kill -9` (an abort at a crash point) in the middle of a GC sweep, then a restart: GC
//! finishes, no referenced object is missing, no reclaimable object remains.

use std::path::Path;
use std::process::{Command, Output};

fn snapvault(data: &Path, args: &[&str], crash_at: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapvault"));
    cmd.arg("--data").arg(data).args(args);
    cmd.env_remove("SNAPVAULT_CRASH_AT");
    if let Some(point) = crash_at {
        cmd.env("SNAPVAULT_CRASH_AT", point);
    }
    cmd.output().expect("run snapvault")
}

fn ok(data: &Path, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = snapvault(data, &full, None);
    assert!(
        out.status.success(),
        "snapvault {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn keys(describe: &serde_json::Value) -> Vec<String> {
    describe["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["files"].as_array().unwrap().iter())
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_sweep_killed_after_its_record_finishes_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    ok(data, &["collection", "create", "c1", "--shards", "2"]);
    ok(
        data,
        &[
            "ingest",
            "c1",
            "--segments",
            "30",
            "--files",
            "3",
            "--size",
            "512",
        ],
    );
    let before = keys(&ok(data, &["collection", "describe", "c1"]));
    ok(data, &["snapshot", "create", "c1", "s1"]);
    ok(data, &["compact", "c1"]);
    let after = keys(&ok(data, &["collection", "describe", "c1"]));
    // The snapshot holds the compacted-away files: GC keeps them.
    let r = ok(
        data,
        &[
            "gc",
            "run",
            "--dropped-retention",
            "0s",
            "--orphan-window",
            "0s",
        ],
    );
    assert_eq!(r["loaded"], true);
    for k in &before {
        assert!(
            data.join("objects").join(k).exists(),
            "{k} reclaimed under a snapshot"
        );
    }
    ok(data, &["snapshot", "drop", "c1", "s1"]);
    std::fs::create_dir_all(data.join("objects/data/orphan")).unwrap();
    std::fs::write(data.join("objects/data/orphan/x"), b"nobody knows me").unwrap();

    let crashed = snapvault(
        data,
        &[
            "gc",
            "run",
            "--dropped-retention",
            "0s",
            "--orphan-window",
            "0s",
        ],
        Some("gc.after_record"),
    );
    assert!(!crashed.status.success(), "the crash point did not fire");

    // Restart: the next cycle finishes the sweep.
    ok(
        data,
        &[
            "gc",
            "run",
            "--dropped-retention",
            "0s",
            "--orphan-window",
            "0s",
        ],
    );
    let dry = ok(
        data,
        &[
            "gc",
            "run",
            "--dry-run",
            "--dropped-retention",
            "0s",
            "--orphan-window",
            "0s",
        ],
    );
    let left: u64 = dry["reclaimed"]
        .as_object()
        .map(|m| m.values().map(|a| a["objects"].as_u64().unwrap()).sum())
        .unwrap_or(0);
    assert_eq!(left, 0, "reclaimable objects remain: {dry}");
    for k in &after {
        assert!(
            data.join("objects").join(k).exists(),
            "live {k} was reclaimed"
        );
    }
    for k in before.iter().filter(|k| !after.contains(k)) {
        assert!(!data.join("objects").join(k).exists(), "dead {k} remains");
    }
    assert!(!data.join("objects/data/orphan/x").exists());
}

#[test]
fn bad_durations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["10", "1.5h", "-1s", "soon"] {
        let out = snapvault(dir.path(), &["gc", "run", "--dropped-retention", bad], None);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error[invalid_argument]"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}
