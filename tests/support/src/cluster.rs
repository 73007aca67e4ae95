//! Real `snapvault serve` processes on one nats-server, and the CLI in remote mode, for the
//! multi-process tests (`tests/claims_*.rs`) and the scale-out bench.
//!
//! The snapvault binary is a parameter: `env!("CARGO_BIN_EXE_snapvault")` exists only in the
//! root package's tests and benches, which pass it in.

use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// How long a serve node gets to print its "serving" document.
pub const SERVE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A command for `bin` with none of the environment that would change what it does
/// (`RUST_LOG` and the `SNAPVAULT_*` settings and test gates): a test sets what it wants.
pub fn base_command(bin: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_remove("RUST_LOG")
        .env_remove("SNAPVAULT_DATA")
        .env_remove("SNAPVAULT_NATS")
        .env_remove("SNAPVAULT_PREFIX")
        .env_remove("SNAPVAULT_CRASH_AT")
        .env_remove("SNAPVAULT_PAUSE_AT")
        .env_remove("SNAPVAULT_COPY_AUDIT");
    cmd
}

/// The snapvault binary on one nats-server under one subject prefix: the CLI in remote mode
/// (`--nats URL --prefix PREFIX`) and the `serve` nodes it talks to.
#[derive(Debug, Clone)]
pub struct Remote {
    bin: PathBuf,
    url: String,
    prefix: String,
}

impl Remote {
    pub fn new(bin: impl Into<PathBuf>, url: &str, prefix: &str) -> Remote {
        Remote {
            bin: bin.into(),
            url: url.to_string(),
            prefix: prefix.to_string(),
        }
    }

    /// `snapvault --nats URL --prefix PREFIX --request-timeout TIMEOUT`, for its arguments.
    pub fn command(&self, timeout: &str) -> Command {
        let mut cmd = base_command(&self.bin);
        cmd.args([
            "--nats",
            &self.url,
            "--prefix",
            &self.prefix,
            "--request-timeout",
            timeout,
        ]);
        cmd
    }

    /// Run `args` with a 20 s request timeout.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command("20s")
            .args(args)
            .output()
            .expect("run snapvault")
    }

    /// `--json ARGS` (20 s request timeout), which must succeed, as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "snapvault {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        parse_json(args, &out.stdout)
    }

    /// `--json ingest COLLECTION --segments SEGMENTS --files FILES --size SIZE` (FILES files of
    /// SIZE bytes per segment), which must succeed, as JSON.
    pub fn ingest(&self, collection: &str, segments: u64, files: u64, size: u64) -> Value {
        self.json(&[
            "ingest",
            collection,
            "--segments",
            &segments.to_string(),
            "--files",
            &files.to_string(),
            "--size",
            &size.to_string(),
        ])
    }

    /// `--json ARGS` with a 3 s request timeout, or `None` when this one call failed (it may
    /// have reached a node just killed, or a server that is down): the caller asks again.
    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let out = self
            .command("3s")
            .arg("--json")
            .args(args)
            .output()
            .expect("run snapvault");
        if !out.status.success() {
            eprintln!(
                "{args:?} failed (asking again): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `snapvault --json --nats URL --prefix PREFIX --log jetstream --store file://STORE
    /// --data DATA serve --node-id ID` for `node`: its copy audit (`SNAPVAULT_COPY_AUDIT`),
    /// stdin closed, stdout piped (for [`wait_serving`]), stderr to the node's file, created
    /// here. Add serve's options and environment, then spawn it into `node.child`.
    pub fn serve_command(&self, node: &Node, store: &Path) -> std::io::Result<Command> {
        let stderr = std::fs::File::create(&node.stderr)?;
        let mut cmd = base_command(&self.bin);
        cmd.args(["--json", "--nats", &self.url, "--prefix", &self.prefix])
            .args(["--log", "jetstream", "--store"])
            .arg(format!("file://{}", store.display()))
            .arg("--data")
            .arg(&node.data)
            .args(["serve", "--node-id", &node.id])
            .env("SNAPVAULT_COPY_AUDIT", &node.audit)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        Ok(cmd)
    }
}

/// `ARGS`' output as JSON; panics with the output when it is not.
pub fn parse_json(args: &[&str], stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

/// One `snapvault serve` node. Its process is killed (SIGKILL, by its own handle) when the
/// node is dropped, also on a panic.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    /// The process, while it runs (`None` before it is spawned and once it is killed).
    pub child: Option<Child>,
    /// Its copy audit (`SNAPVAULT_COPY_AUDIT`): one line per object a copy wrote.
    pub audit: PathBuf,
    /// Its stderr.
    pub stderr: PathBuf,
    /// Its `--data` directory.
    pub data: PathBuf,
}

impl Node {
    /// Node `id`, not started, with its files under `dir`: `data-ID`, `audit-ID.txt` and
    /// `serve-ID.err`.
    pub fn new(id: &str, dir: &Path) -> Node {
        Node {
            id: id.to_string(),
            child: None,
            audit: dir.join(format!("audit-{id}.txt")),
            stderr: dir.join(format!("serve-{id}.err")),
            data: dir.join(format!("data-{id}")),
        }
    }

    /// Still running (never exited, never restarted: the same process all along).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its process id while it runs, else 0.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL its process (if it runs) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawn `cmd` (from [`Remote::serve_command`]) as `node`, add it to `nodes` (which kill it
/// when dropped, also on a panic) and wait until it serves.
pub fn start_node<'a>(nodes: &'a mut Vec<Node>, mut node: Node, cmd: &mut Command) -> &'a mut Node {
    node.child = Some(cmd.spawn().expect("start snapvault serve"));
    nodes.push(node);
    let node = nodes.last_mut().expect("just pushed");
    wait_serving(node);
    node
}

/// Node `id` of `nodes`.
pub fn node_by_id<'a>(nodes: &'a mut [Node], id: &str) -> &'a mut Node {
    nodes
        .iter_mut()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no node '{id}'"))
}

/// A fresh temporary directory with an empty directory `store` in it (the `file://` store the
/// nodes share), and that store's path.
pub fn temp_dir_with_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    (dir, store)
}

/// The first JSON document `stdout` prints (its lines up to a lone `}`), or `None` if none
/// came within `timeout`. A thread reads it and keeps draining `stdout` afterwards, so the
/// process never blocks on a full pipe.
pub fn first_document(stdout: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut doc = String::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            doc.push_str(&line);
            if line == "}" {
                let _ = tx.send(doc.clone());
                break;
            }
        }
        for _ in lines {}
    });
    rx.recv_timeout(timeout).ok()
}

/// Wait for the node's "serving" document (the first JSON object on its stdout; the JetStream
/// log), then keep draining its stdout.
pub fn wait_serving(node: &mut Node) {
    let child = node.child.as_mut().expect("running");
    let stdout = child.stdout.take().expect("stdout");
    let Some(doc) = first_document(stdout, SERVE_START_TIMEOUT) else {
        panic!(
            "serve {} did not become ready: {}",
            node.id,
            node.stderr_text()
        );
    };
    let v: Value = serde_json::from_str(&doc).expect("serving document");
    assert_eq!(v["status"], "serving", "{v}");
    assert_eq!(v["log"], "jetstream", "{v}");
}

/// `v[field]` as a `u64`; panics with `v` when it is not there.
pub fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no '{field}' in {v}"))
}

/// Every file under `dir`, recursively, as (path relative to `root`, bytes); files whose name
/// starts with `.` are left out. A missing `dir` has none.
pub fn files_under(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(root, &p, out);
        } else if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .to_string();
            out.push((rel, std::fs::read(&p).expect("read a stored file")));
        }
    }
}

/// Every live file of a restored collection (`target`, its `collection describe --json`
/// document) lies under `data/<its id>/` of `store` (the root of a `file://` store), is as large
/// as recorded and equals, byte for byte, the file of the same name among the files of the
/// source collection `source_id` (the host's files are unique pseudo-random bytes, so content
/// identifies the source). Returns the live files' keys, in the document's order.
pub fn assert_restored_files(store: &Path, target: &Value, source_id: u64) -> Vec<String> {
    let tid = u64_of(target, "id");
    let mut source = Vec::new();
    files_under(store, &store.join(format!("data/{source_id}")), &mut source);
    let by_content: BTreeMap<Vec<u8>, String> = source.into_iter().map(|(k, b)| (b, k)).collect();
    let mut keys = Vec::new();
    for seg in target["segments"].as_array().expect("segments") {
        for f in seg["files"].as_array().expect("files") {
            let key = f["key"].as_str().expect("key");
            assert!(key.starts_with(&format!("data/{tid}/")), "{key}");
            let bytes = std::fs::read(store.join(key))
                .unwrap_or_else(|e| panic!("restored '{key}' cannot be read: {e}"));
            assert_eq!(bytes.len() as u64, u64_of(f, "size"), "{key}");
            let src = by_content
                .get(&bytes)
                .unwrap_or_else(|| panic!("restored '{key}' matches no source file"));
            assert_eq!(
                src.rsplit('/').next(),
                key.rsplit('/').next(),
                "{key} came from {src}"
            );
            keys.push(key.to_string());
        }
    }
    keys
}

/// The lines of a copy audit (none if it does not exist).
pub fn audit_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
