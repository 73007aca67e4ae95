//! `snapvault serve --nats` with the JetStream log and the S3 store (a real `nats-server -js`
//! and a real S3 server, moto, both started here), driven by the CLI in remote mode: the
//! snapshot → GC life cycle; remote errors are the same one line and exit code as embedded;
//! SIGTERM drains (the request in flight is answered) and exits 0.

use serde_json::Value;
use snapvault_test_support::cluster::{SERVE_START_TIMEOUT, first_document};
use snapvault_test_support::{MotoServer, NatsServer};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");

/// Credentials moto accepts (it accepts any).
fn aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT")
        .env_remove("RUST_LOG")
        .env_remove("SNAPVAULT_DATA")
        .env_remove("SNAPVAULT_NATS")
}

struct Serve {
    child: Child,
}

impl Serve {
    fn start(nats: &str, data: &Path, store: &[&str]) -> Serve {
        let mut cmd = Command::new(BIN);
        aws_env(&mut cmd)
            .args(["--json", "--nats", nats, "--log", "jetstream", "--data"])
            .arg(data)
            .args(store)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start snapvault serve");
        // The first line on stdout is the "serving" document: ready.
        let stdout = child.stdout.take().expect("stdout");
        let Some(doc) = first_document(stdout, SERVE_START_TIMEOUT) else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("serve output");
            panic!(
                "serve did not become ready: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let v: Value = serde_json::from_str(&doc).expect("serving document");
        assert_eq!(v["status"], "serving", "{v}");
        assert_eq!(v["log"], "jetstream");
        Serve { child }
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(nats: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    aws_env(&mut cmd)
        .args(["--nats", nats, "--request-timeout", "30s"])
        .args(args)
        .output()
        .expect("run snapvault")
}

fn ok(nats: &str, args: &[&str]) -> String {
    let out = cli(nats, args);
    assert!(
        out.status.success(),
        "snapvault {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(nats: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(nats, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
}

fn gc_reclaimed(report: &Value, category: &str) -> u64 {
    report["reclaimed"][category]["objects"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn snapshot_then_gc_over_nats_with_the_jetstream_log_and_the_s3_store() {
    let nats = NatsServer::start();
    let moto = MotoServer::start();
    moto.create_bucket("vault");
    let data = tempfile::tempdir().unwrap();
    let endpoint = moto.endpoint();
    let store = ["--store", "s3://vault", "--s3-endpoint", endpoint.as_str()];
    let serve = Serve::start(&nats.url(), data.path(), &store);
    let url = nats.url();

    ok(&url, &["collection", "create", "c1", "--shards", "2"]);
    let ingested = json(
        &url,
        &[
            "ingest",
            "c1",
            "--segments",
            "6",
            "--files",
            "2",
            "--size",
            "4096",
        ],
    );
    assert_eq!(ingested["segment_ids"].as_array().unwrap().len(), 6);
    let compacted = json(&url, &["compact", "c1"]);
    assert_eq!(compacted["compactions"].as_array().unwrap().len(), 2);
    let snap = json(
        &url,
        &["snapshot", "create", "c1", "nightly", "--label", "env=test"],
    );
    assert_eq!(snap["status"], "committed");
    let described = json(&url, &["snapshot", "describe", "c1", "nightly"]);
    assert_eq!(described["format_version"], 1);
    let files = described["totals"]["files"].as_u64().unwrap();
    assert_eq!(files, 4);
    // The host moves on: the snapshot's segments are compacted away and dropped.
    json(
        &url,
        &[
            "ingest",
            "c1",
            "--segments",
            "2",
            "--files",
            "2",
            "--size",
            "1024",
        ],
    );
    json(&url, &["compact", "c1"]);
    // GC with no retention: the files dropped before the snapshot... none; the snapshot's
    // files must all stay.
    let gc = json(
        &url,
        &[
            "gc",
            "run",
            "--dropped-retention",
            "0s",
            "--orphan-window",
            "0s",
        ],
    );
    assert_eq!(gc["loaded"], true, "{gc}");
    assert!(gc_reclaimed(&gc, "dropped_files") > 0, "{gc}");
    let verified = json(&url, &["snapshot", "verify", "c1", "nightly"]);
    assert_eq!(
        verified["ok"], true,
        "GC deleted a file the snapshot needs: {verified}"
    );
    assert_eq!(verified["checked_files"].as_u64(), Some(files));

    // Restore the snapshot into a new collection over NATS: the job runs on the service,
    // the remote CLI follows it to its end.
    let restored = json(
        &url,
        &["restore", "start", "c1", "nightly", "c1_restored", "--wait"],
    );
    assert_eq!(restored["status"], "completed", "{restored}");
    assert_eq!(restored["files_done"].as_u64(), Some(files));
    let job = restored["job_id"].as_u64().unwrap().to_string();
    let status = json(&url, &["restore", "status", &job]);
    assert_eq!(status["status"], "completed");
    let list = json(&url, &["restore", "list"]);
    assert_eq!(list["jobs"][0]["job_id"], restored["job_id"]);
    let rc = json(&url, &["collection", "describe", "c1_restored"]);
    assert_eq!(rc["status"], "ready");
    assert_eq!(rc["totals"]["files"].as_u64(), Some(files));

    // Drop the snapshot: its manifests go, and the next GC reclaims the files it held.
    let dropped = json(&url, &["snapshot", "drop", "c1", "nightly"]);
    assert_eq!(dropped["status"], "deleted");
    let gc = json(
        &url,
        &[
            "gc",
            "run",
            "--dropped-retention",
            "0s",
            "--orphan-window",
            "0s",
        ],
    );
    assert!(gc_reclaimed(&gc, "dropped_files") >= files, "{gc}");
    // The restored collection is untouched: snapshot it and verify every file in S3.
    let check = json(&url, &["snapshot", "create", "c1_restored", "check"]);
    assert_eq!(check["status"], "committed");
    let v = json(&url, &["snapshot", "verify", "c1_restored", "check"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checked_files"].as_u64(), Some(files));
    let status = json(&url, &["gc", "status"]);
    assert_eq!(status["loaded"], true);

    // Remote errors: the same one line, code and exit code as embedded.
    let out = cli(&url, &["snapshot", "describe", "c1", "nightly"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error[not_found]: snapshot 'nightly' of collection 'c1' not found"
    );
    let out = cli(&url, &["--json", "collection", "create", "c1"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "already_exists");
    // Bad input is refused before anything is sent.
    let out = cli(&url, &["collection", "create", "bad/name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error[invalid_argument]"));

    assert!(serve.terminate().success(), "serve must exit 0 on SIGTERM");
    // Nobody serves now: remote commands say so, as `unavailable` (exit 1).
    let out = Command::new(BIN)
        .args([
            "--nats",
            &url,
            "--request-timeout",
            "1s",
            "collection",
            "list",
        ])
        .env_remove("SNAPVAULT_NATS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error[unavailable]"));

    // The log and the data outlive the node: a new one on the same JetStream and bucket.
    let serve = Serve::start(&nats.url(), data.path(), &store);
    let list = json(&url, &["collection", "list"]);
    assert_eq!(list["collections"][0]["name"], "c1");
    assert!(serve.terminate().success());
}

#[test]
fn sigterm_drains_the_request_in_flight_and_exits_zero() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let url = nats.url();
    let serve = Serve::start(&url, data.path(), &[]);
    ok(&url, &["collection", "create", "c1"]);
    // A long request, then SIGTERM while it runs: it is answered before the process exits.
    let long = std::thread::spawn({
        let url = url.clone();
        move || {
            cli(
                &url,
                &[
                    "--json",
                    "ingest",
                    "c1",
                    "--segments",
                    "1500",
                    "--files",
                    "1",
                    "--size",
                    "1024",
                ],
            )
        }
    });
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    let status = serve.terminate();
    // It took a while to exit: it waited for the request in flight.
    let drained = started.elapsed();
    assert!(status.success(), "serve exit status {status:?}");
    let out = long.join().unwrap();
    assert!(
        out.status.success(),
        "the request in flight was not answered: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["segment_ids"].as_array().unwrap().len(), 1500);
    eprintln!("serve exited {drained:?} after SIGTERM");
}

#[test]
fn credentials_reach_the_server_and_a_wrong_one_is_one_clear_line() {
    let nats = snapvault_test_support::NatsServer::start_with(
        snapvault_test_support::NatsAuth::Token("s3cret".into()),
    );
    let data = tempfile::tempdir().unwrap();
    let url = nats.url();
    let serve = Serve::start(&url, data.path(), &["--nats-token", "s3cret"]);
    ok(
        &url,
        &["--nats-token", "s3cret", "collection", "create", "c1"],
    );
    let list = json(&url, &["--nats-token", "s3cret", "collection", "list"]);
    assert_eq!(list["collections"][0]["name"], "c1");
    let out = cli(&url, &["--nats-token", "wrong", "collection", "list"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error[invalid_argument]: NATS at") && err.contains("credentials"),
        "{err}"
    );
    // Contradictory credentials are refused before connecting.
    let out = cli(
        &url,
        &[
            "--nats-token",
            "a",
            "--nats-user",
            "u",
            "--nats-password",
            "p",
            "collection",
            "list",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most one NATS credential"));
    assert!(serve.terminate().success());
}
