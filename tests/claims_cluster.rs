//! Claims across real processes (design §10): three `snapvault serve --nats --log jetstream`
//! nodes on one nats-server, one prefix and one `file://` store share one restore of 2,000
//! files. Every node copies part of it (each is seen holding copy tasks and each one's copy
//! audit has lines); then the job's coordinator is `kill -9`ed mid-copy, with no restart.
//! The two survivors take over its claims once they lapse and finish the job within the
//! claim TTL plus the remaining copy time plus slack; every restored file equals its source
//! byte for byte (read straight from the shared store directory), every file was copied, and
//! the copies counted over all three audits exceed the files by at most one progress batch
//! per task the killed node held.

use serde_json::Value;
use snapvault_test_support::NatsServer;
use snapvault_test_support::cluster::{
    Node, Remote, assert_restored_files, audit_lines, node_by_id, start_node, temp_dir_with_store,
    u64_of,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");
/// The subject prefix every node and the CLI use.
const PREFIX: &str = "claims";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const SEGMENTS: u64 = 500;
const FILES_PER_SEGMENT: u64 = 4;
const FILE_BYTES: u64 = 4096;
const TOTAL_FILES: u64 = SEGMENTS * FILES_PER_SEGMENT;
/// Each node's bandwidth cap (`serve --max-bytes-per-sec 256K`): 2,000 × 4 KiB take about
/// 10 s on three nodes, so there is time to kill one mid-way.
const NODE_RATE: &str = "256K";
const NODE_BYTES_PER_SEC: u64 = 256 * 1024;
/// The job's own limit: the three nodes' caps together (not the binding limit while three
/// nodes copy, whether it applies per node or per job).
const JOB_RATE: &str = "768K";
const PARALLELISM: &str = "16";
/// Per node: 3 × 6 ≥ 16, so no two nodes can hold all of the job's parallelism between them.
const MAX_TASKS: &str = "6";
const CLAIM_TTL: Duration = Duration::from_secs(5);
/// Files a copy task records per progress batch (`progress_batch_files`).
const BATCH: u64 = 32;
/// Slack on top of the claim TTL and the remaining copy time for the survivors to finish.
const SLACK: Duration = Duration::from_secs(10);

/// The three serve processes (each killed, SIGKILL, when dropped, also on a panic).
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(remote: &Remote, store: &Path, dir: &Path) -> Cluster {
        let mut cluster = Cluster { nodes: Vec::new() };
        for id in NODES {
            let node = Node::new(id, dir);
            let mut cmd = remote
                .serve_command(&node, store)
                .expect("serve stderr file");
            cmd.args(["--claim-ttl", "5s", "--reconcile-interval", "200ms"])
                .args(["--placement-delay", "500ms"])
                .args(["--max-bytes-per-sec", NODE_RATE, "--max-tasks", MAX_TASKS]);
            start_node(&mut cluster.nodes, node, &mut cmd);
        }
        cluster
    }

    /// Every node's stderr, for failure messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} stderr:\n{}", n.id, n.stderr_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `restore status --json`, or `None` when this one call failed (a request that reached the
/// node just killed; the next poll asks again, with a new request id).
fn status(remote: &Remote, job: &str) -> Option<Value> {
    remote.try_json(&["restore", "status", job])
}

/// Node id → tasks it holds now, from a status.
fn held_by_node(status: &Value) -> BTreeMap<String, u64> {
    let mut held = BTreeMap::new();
    for t in status["tasks"].as_array().into_iter().flatten() {
        if let Some(n) = t["node"].as_str() {
            *held.entry(n.to_string()).or_insert(0) += 1;
        }
    }
    held
}

/// Every live file of `target` equals, byte for byte, the source file of the same name (the
/// host's files are unique pseudo-random bytes, so content identifies the source), read from
/// the shared store directory.
fn assert_restored_byte_for_byte(remote: &Remote, store: &Path, target: &str, expect_files: u64) {
    let view = remote.json(&["collection", "describe", target]);
    assert_eq!(view["status"], "ready", "{view}");
    let snap = remote.json(&["snapshot", "describe", "c1", "s"]);
    let cid = u64_of(&snap, "collection_id");
    let seen = assert_restored_files(store, &view, cid).len() as u64;
    assert_eq!(seen, expect_files, "restored files");
}

#[test]
fn a_restore_is_copied_by_every_node_and_survives_kill_9_of_its_coordinator() {
    let began = Instant::now();
    let nats = NatsServer::start();
    let remote = Remote::new(BIN, &nats.url(), PREFIX);
    let (dir, store) = temp_dir_with_store();
    let mut cluster = Cluster::start(&remote, &store, dir.path());

    // The source: 500 segments × 4 files of 4 KiB over 2 shards, written by the nodes.
    remote.json(&["collection", "create", "c1", "--shards", "2"]);
    let ingested = remote.ingest("c1", SEGMENTS, FILES_PER_SEGMENT, FILE_BYTES);
    assert_eq!(
        ingested["segment_ids"].as_array().map(Vec::len),
        Some(SEGMENTS as usize)
    );
    let snap = remote.json(&["snapshot", "create", "c1", "s"]);
    assert_eq!(snap["status"], "committed", "{snap}");

    let started = remote.json(&[
        "restore",
        "start",
        "c1",
        "s",
        "r1",
        "--parallelism",
        PARALLELISM,
        "--max-bytes-per-sec",
        JOB_RATE,
    ]);
    let job = u64_of(&started, "job_id").to_string();
    let restore_began = Instant::now();
    eprintln!(
        "setup took {:?}; restore job {job} started",
        restore_began - began
    );

    // Until every node is seen holding copy tasks and a fifth of the files are done: then
    // kill the coordinator.
    let mut seen_holding: BTreeSet<String> = BTreeSet::new();
    let poll_deadline = Instant::now() + Duration::from_secs(40);
    let (coordinator, at_kill) = loop {
        assert!(
            Instant::now() < poll_deadline,
            "the nodes never all held tasks of the job (seen: {seen_holding:?})\n{}",
            cluster.logs()
        );
        let Some(s) = status(&remote, &job) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let st = s["status"].as_str().unwrap_or_default().to_string();
        assert!(
            st == "pending" || st == "running",
            "the job left running before the kill (status {st}, nodes seen holding tasks \
             {seen_holding:?}): make it slower\n{s}"
        );
        seen_holding.extend(held_by_node(&s).into_keys());
        let total = s["totals"]["files"].as_u64().unwrap_or(0);
        let done = s["files_done"].as_u64().unwrap_or(0);
        if st == "running"
            && total > 0
            && seen_holding.len() == NODES.len()
            && done * 5 >= total
            && let Some(c) = s["node"].as_str()
        {
            break (c.to_string(), s);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let killed_held = held_by_node(&at_kill)
        .get(&coordinator)
        .copied()
        .unwrap_or(0);
    let bytes_total = u64_of(&at_kill["totals"], "bytes");
    let remaining = bytes_total.saturating_sub(u64_of(&at_kill, "bytes_done"));
    {
        let node = node_by_id(&mut cluster.nodes, &coordinator);
        let mut child = node.child.take().expect("the coordinator runs");
        child.kill().expect("kill -9 the coordinator");
        let _ = child.wait();
    }
    let killed_at = Instant::now();
    let expected_remaining =
        Duration::from_secs_f64(remaining as f64 / (2 * NODE_BYTES_PER_SEC) as f64);
    let bound = CLAIM_TTL + expected_remaining + SLACK;
    eprintln!(
        "killed coordinator {coordinator} after {:?} of copying: {} of {TOTAL_FILES} files done, \
         it held {killed_held} task(s); nodes seen holding tasks: {seen_holding:?}; \
         {remaining} bytes left (≈{expected_remaining:?} on two nodes); bound {bound:?}",
        killed_at - restore_began,
        u64_of(&at_kill, "files_done"),
    );

    // The survivors finish it.
    let mut new_coordinator: Option<(String, Duration)> = None;
    let end = loop {
        let waited = killed_at.elapsed();
        assert!(
            waited < bound + Duration::from_secs(30),
            "the job did not finish {waited:?} after its coordinator was killed\n{}",
            cluster.logs()
        );
        let Some(s) = status(&remote, &job) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if new_coordinator.is_none()
            && let Some(c) = s["node"].as_str()
            && c != coordinator
        {
            new_coordinator = Some((c.to_string(), killed_at.elapsed()));
        }
        match s["status"].as_str().unwrap_or_default() {
            "completed" => break s,
            "pending" | "running" | "committing" => {}
            other => panic!("the job ended {other}: {s}\n{}", cluster.logs()),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let finished_after = killed_at.elapsed();
    eprintln!(
        "completed {finished_after:?} after the kill (bound {bound:?}); new coordinator seen: \
         {new_coordinator:?}; whole restore {:?}",
        restore_began.elapsed()
    );
    assert!(
        finished_after <= bound,
        "the survivors took {finished_after:?} after the kill; claim TTL {CLAIM_TTL:?} + \
         remaining copy ≈{expected_remaining:?} + slack {SLACK:?} = {bound:?}"
    );
    assert_eq!(u64_of(&end, "files_done"), TOTAL_FILES, "{end}");
    assert_eq!(u64_of(&end["totals"], "files"), TOTAL_FILES, "{end}");
    assert_ne!(
        end["node"].as_str(),
        Some(coordinator.as_str()),
        "a dead node is still shown as coordinator: {end}"
    );

    assert_restored_byte_for_byte(&remote, &store, "r1", TOTAL_FILES);

    // Copies: every file at least once, each node some, and re-copies bounded by what the
    // killed node may have had in flight (a node may claim a task between the status read and
    // the kill, so at least one task's batch is allowed).
    let mut copies = 0u64;
    let mut distinct: BTreeSet<String> = BTreeSet::new();
    let mut per_node = BTreeMap::new();
    for n in &cluster.nodes {
        let lines = audit_lines(&n.audit);
        per_node.insert(n.id.as_str(), lines.len());
        copies += lines.len() as u64;
        distinct.extend(lines);
    }
    let allowed = TOTAL_FILES + BATCH * killed_held.max(1);
    eprintln!(
        "{TOTAL_FILES} files, {copies} copies (per node {per_node:?}), {} re-copies; allowed \
         {allowed} ({killed_held} task(s) held by the killed node); test took {:?}",
        copies - distinct.len() as u64,
        began.elapsed()
    );
    for (id, n) in &per_node {
        assert!(*n > 0, "node {id} copied nothing: {per_node:?}");
    }
    assert_eq!(
        distinct.len() as u64,
        TOTAL_FILES,
        "every file copied at least once"
    );
    assert!(
        copies <= allowed,
        "{copies} copies for {TOTAL_FILES} files: more re-copied than the killed node had in \
         flight ({killed_held} tasks)"
    );
    drop(cluster);
}
