//! A real `snapvault serve --nats` node (JetStream log, `file://` store) on a real nats-server,
//! seen as third-party clients see it:
//!
//! - NATS micro spec v1: nats-py's own parsers (`ServicePing` / `ServiceInfo` /
//!   `ServiceStats.from_dict`, the pinned nats-py in `.tools/venv`) read `$SRV.PING/INFO/STATS`
//!   on all three subject forms, and `num_errors` counts the error replies sent
//!   (`tests/python/micro_spec_check.py`). Locally the test skips, saying why, when the venv's
//!   python or nats-py is missing; in CI (`CI` set) it fails instead.
//! - API shape: `restore.start` with `options: {}`, a partial `options` or none at all uses the
//!   documented defaults; copy-task events arrive on `…events.v1.copytask.<job>.<task>` (so
//!   `copytask.>` matches) and every event body is an object (`Dropped` → `{"Dropped": {}}`);
//!   `collection list`, `snapshot list` and `restore list --json` print exactly what their
//!   NATS ops answer.

use futures::StreamExt;
use serde_json::{Value, json};
use snapvault::nats::publisher::PublishedEvent;
use snapvault_test_support::NatsServer;
use snapvault_test_support::cluster::{Node, Remote, start_node, temp_dir_with_store, u64_of};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");

/// One serve node on a fresh nats-server; dropped in reverse order (node, then server).
struct Setup {
    nodes: Vec<Node>,
    remote: Remote,
    server: NatsServer,
    _dir: tempfile::TempDir,
}

fn setup(prefix: &str) -> Setup {
    let server = NatsServer::start();
    let (dir, store) = temp_dir_with_store();
    let remote = Remote::new(BIN, &server.url(), prefix);
    let mut nodes = Vec::new();
    let node = Node::new("n1", dir.path());
    let mut cmd = remote.serve_command(&node, &store).expect("serve command");
    start_node(&mut nodes, node, &mut cmd);
    Setup {
        nodes,
        remote,
        server,
        _dir: dir,
    }
}

/// The venv python with nats-py's micro parsers, or why it cannot be used.
fn python_with_nats_py() -> Result<PathBuf, String> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    if !python.is_file() {
        return Err(format!("{} not found", python.display()));
    }
    let probe = Command::new(&python)
        .args([
            "-c",
            "from nats.micro.service import ServiceInfo, ServicePing, ServiceStats",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "nats-py's nats.micro is not importable in {}: {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(python)
}

#[test]
fn nats_py_parses_ping_info_stats_and_stats_count_error_replies() {
    let python = match python_with_nats_py() {
        Ok(p) => p,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: {why}; run ./scripts/test-all.sh once (it installs the pinned nats-py into .tools/venv)"
            );
            return;
        }
        Err(why) => panic!("CI must run the nats-py micro-spec check: {why}"),
    };
    let s = setup("snapvault");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/micro_spec_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([s.server.url().as_str(), "snapvault", "snapvault"])
        .output()
        .expect("run the python check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "micro_spec_check.py failed ({}):\n{text}\nnode stderr:\n{}",
        out.status,
        s.nodes[0].stderr_text()
    );
    assert!(text.contains("5 error replies counted"), "{text}");
}

/// A JSON request on `<prefix>.api.v1.<op>`: `Ok(reply)` or `Err(error body)`.
async fn request(
    nats: &async_nats::Client,
    prefix: &str,
    op: &str,
    body: Value,
) -> Result<Value, Value> {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Content-Type", "application/json");
    let msg = nats
        .request_with_headers(
            format!("{prefix}.api.v1.{op}"),
            h,
            serde_json::to_vec(&body).expect("encode").into(),
        )
        .await
        .expect("an answer");
    let v: Value = serde_json::from_slice(&msg.payload).expect("JSON reply");
    let failed = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Snapvault-Error-Code"))
        .is_some();
    if failed { Err(v) } else { Ok(v) }
}

/// The published events of `sub` until `done` holds for what was gathered (30 s at most).
async fn gather(
    sub: &mut async_nats::Subscriber,
    mut done: impl FnMut(&[(String, PublishedEvent)]) -> bool,
) -> Vec<(String, PublishedEvent)> {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        while !done(&seen) {
            let m = sub.next().await.expect("subscription open");
            let e: PublishedEvent = rmp_serde::from_slice(&m.payload).expect("event body");
            seen.push((m.subject.to_string(), e));
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "events missing; got {:?}",
        seen.iter()
            .map(|(s, e)| (s, &e.event_type))
            .collect::<Vec<_>>()
    );
    seen
}

#[test]
fn documented_defaults_stable_event_subjects_and_one_list_shape() {
    let prefix = "shape";
    let s = setup(prefix);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let nats = rt
        .block_on(async_nats::connect(s.server.url()))
        .expect("connect");
    let (mut tasks, mut collections) = rt.block_on(async {
        let t = nats
            .subscribe(format!("{prefix}.events.v1.copytask.>"))
            .await
            .expect("subscribe");
        let c = nats
            .subscribe(format!("{prefix}.events.v1.collection.>"))
            .await
            .expect("subscribe");
        nats.flush().await.expect("flush");
        (t, c)
    });

    s.remote.json(&["collection", "create", "c1"]);
    s.remote.ingest("c1", 2, 2, 4096);
    s.remote.json(&["snapshot", "create", "c1", "s1"]);

    // Every optional option takes its documented default: `options: {}`, a partial
    // `options`, and no `options` at all.
    let defaults = json!({
        "partitions": [], "parallelism": 4, "max_bytes_per_sec": null, "verify_checksums": true
    });
    let cases = [
        ("r_empty", json!({ "options": {} }), defaults.clone()),
        ("r_none", json!({}), defaults.clone()),
        (
            "r_partial",
            json!({ "options": { "verify_checksums": false } }),
            json!({ "partitions": [], "parallelism": 4, "max_bytes_per_sec": null, "verify_checksums": false }),
        ),
    ];
    let mut jobs = Vec::new();
    for (target, extra, want) in cases {
        let mut body = json!({ "snapshot_collection": "c1", "snapshot": "s1", "target": target });
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        let view = rt
            .block_on(request(&nats, prefix, "restore.start", body))
            .unwrap_or_else(|e| panic!("restore.start {target}: {e}"));
        assert_eq!(view["options"], want, "{target}: {view}");
        jobs.push(u64_of(&view, "job_id"));
    }
    for job in &jobs {
        let done = s.remote.json(&["restore", "wait", &job.to_string()]);
        assert_eq!(done["status"], "completed", "{done}");
    }

    // Copy-task events: one stable subject per task under `copytask.>`.
    let seen = rt.block_on(gather(&mut tasks, |seen| {
        jobs.iter().all(|job| {
            seen.iter()
                .any(|(_, e)| e.event_type == "Completed" && e.id.starts_with(&format!("{job}.")))
        })
    }));
    for (subject, e) in &seen {
        assert_eq!(e.kind, "copytask", "{subject}");
        assert_eq!(subject, &format!("{prefix}.events.v1.copytask.{}", e.id));
        let (job, task) = e.id.split_once('.').expect("<job>.<task>");
        assert!(jobs.contains(&job.parse().expect("job id")), "{subject}");
        assert!(task.parse::<u32>().is_ok(), "{subject}");
        assert_eq!(e.stream, format!("copytask-{job}-{task}"));
        assert!(e.event.is_object(), "{subject}: {}", e.event);
    }

    // A payload-less event is an object too.
    let dropped_id = u64_of(&s.remote.json(&["collection", "describe", "r_none"]), "id");
    s.remote.json(&["collection", "drop", "r_none"]);
    let seen = rt.block_on(gather(&mut collections, |seen| {
        seen.iter().any(|(_, e)| e.event_type == "Dropped")
    }));
    for (subject, e) in &seen {
        assert!(e.event.is_object(), "{subject}: {}", e.event);
        if e.event_type == "Dropped" {
            assert_eq!(
                subject,
                &format!("{prefix}.events.v1.collection.{dropped_id}")
            );
            assert_eq!(e.event, json!({ "Dropped": {} }));
        }
    }

    // The CLI's --json listings are exactly what the NATS list ops answer.
    for (args, op) in [
        (vec!["collection", "list"], "collection.list"),
        (vec!["snapshot", "list"], "snapshot.list"),
        (vec!["restore", "list"], "restore.list"),
    ] {
        let cli = s.remote.json(&args);
        let nats_reply = rt
            .block_on(request(&nats, prefix, op, json!({})))
            .unwrap_or_else(|e| panic!("{op}: {e}"));
        assert!(cli.is_object(), "{args:?}: {cli}");
        assert_eq!(cli, nats_reply, "{args:?} vs {op}");
    }
    let list = s.remote.json(&["collection", "list"]);
    let mut names: Vec<&str> = list["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["c1", "r_empty", "r_partial"]);
}
