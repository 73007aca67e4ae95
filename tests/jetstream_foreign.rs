//! A message some other NATS client publishes onto the log's subjects (`<prefix>.log.>`),
//! against a real `snapvault serve --nats --log jetstream` node on a real nats-server.
//!
//! The log stream denies deletes, so such a message stays. Every reader of the log stops *at*
//! it — never skips it — and says why: `gc status` names the position and that the record has
//! no snapvault append header, `gc run` answers at once instead of waiting for an index that
//! cannot load, and the node warns once instead of restarting its GC index every 100 ms.

use serde_json::Value;
use snapvault_test_support::NatsServer;
use snapvault_test_support::cluster::{Node, Remote, start_node, temp_dir_with_store};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");
const PREFIX: &str = "foreign";

/// Publish `payload` on `subject` through JetStream (as any client allowed to may) and return
/// the stream sequence the server stored it at.
fn publish_foreign(url: &str, subject: &str, payload: &'static [u8]) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client.clone());
        let ack = js
            .publish(subject.to_string(), payload.into())
            .await
            .expect("publish")
            .await
            .expect("the log's stream stores it");
        client.flush().await.expect("flush");
        ack.sequence
    })
}

/// `gc status --json` until it names a stop (or 20 s).
fn gc_status_stopped(remote: &Remote) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = remote.json(&["gc", "status"]);
        if !s["stopped_at"].is_null() || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_foreign_message_on_the_log_stops_readers_there_and_gc_status_says_why() {
    let nats = NatsServer::start();
    let (dir, store) = temp_dir_with_store();
    let remote = Remote::new(BIN, &nats.url(), PREFIX);
    let mut nodes = Vec::new();
    let node = Node::new("n1", dir.path());
    // Default log filter (warn): what an operator sees.
    let mut cmd = remote.serve_command(&node, &store).expect("serve command");
    start_node(&mut nodes, node, &mut cmd);

    remote.json(&["collection", "create", "c1"]);
    let before = remote.json(&["gc", "status"]);
    assert!(before["stopped_at"].is_null(), "{before}");

    let position = publish_foreign(&nats.url(), &format!("{PREFIX}.log.x-1"), b"hello");
    let published = Instant::now();

    // gc status names the position and why, and the index is not loaded.
    let s = gc_status_stopped(&remote);
    assert_eq!(s["stopped_at"].as_u64(), Some(position), "{s}");
    assert_eq!(s["loaded"], false, "{s}");
    let reason = s["stopped_reason"].as_str().expect("stopped_reason");
    assert!(
        reason.starts_with("record has no snapvault append header"),
        "{reason}"
    );
    assert!(reason.contains(&format!("'{PREFIX}.log.x-1'")), "{reason}");
    let not_loaded = s["not_loaded_reason"].as_str().expect("not_loaded_reason");
    assert!(
        not_loaded.contains(&format!(
            "stopped at log position {position}: record has no snapvault append header"
        )),
        "{not_loaded}"
    );
    // The plain rendering says it too.
    let out = remote.cli(&["gc", "status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("stopped at log position {position}")),
        "{text}"
    );

    // gc run does not wait (up to 10 min) for an index that cannot load: it says why at once.
    let t = Instant::now();
    let r = remote.json(&["gc", "run", "--dry-run"]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(r["loaded"], false, "{r}");
    assert!(
        r["not_loaded_reason"]
            .as_str()
            .is_some_and(|w| w.contains(&format!("stopped at log position {position}"))),
        "{r}"
    );

    // No busy loop: over ~5 s the node said it once per reader, and never restarted the index.
    let wait = Duration::from_secs(6).saturating_sub(published.elapsed());
    std::thread::sleep(wait);
    let s = remote.json(&["gc", "status"]);
    assert_eq!(s["child_restarts"].as_u64(), Some(0), "{s}");
    let stderr = nodes[0].stderr_text();
    let gc_warnings = stderr
        .matches("GC ref index stopped at a log record")
        .count();
    assert_eq!(gc_warnings, 1, "{stderr}");
    assert!(!stderr.contains("GC child ended"), "{stderr}");
    let naming = stderr
        .lines()
        .filter(|l| l.contains("no snapvault append header"))
        .count();
    // GC index, snapshot/restore/external indexes, the publisher, the start-time resume.
    assert!(
        (1..=8).contains(&naming),
        "{naming} lines name the record:\n{stderr}"
    );
    assert!(nodes[0].alive(), "the node keeps running");
}

/// docs/nats-permissions.md's configuration for prefix `foreign`, on `port` with JetStream in
/// `store_dir`.
fn permissions_config(port: u16, store_dir: &std::path::Path) -> String {
    format!(
        r#"
listen: "127.0.0.1:{port}"
server_name: "perm-{port}"
jetstream {{ store_dir: "{store}" }}
authorization {{
  users = [
    {{
      user: node, password: node-secret
      permissions: {{
        publish: {{ allow: ["{p}.log.>", "{p}.events.>", "$JS.API.>", "$JS.FC.>", "$JS.ACK.>", "$KV.{P}_REQUESTS.>", "_INBOX.>"] }}
        subscribe: {{ allow: ["{p}.api.>", "$SRV.>", "_INBOX.>"] }}
      }}
    }}
    {{
      user: client, password: client-secret
      permissions: {{
        publish: {{ allow: ["{p}.api.>", "$SRV.>"] }}
        subscribe: {{ allow: ["_INBOX.>", "{p}.events.>"] }}
      }}
    }}
  ]
}}
"#,
        store = store_dir.display(),
        p = PREFIX,
        P = PREFIX.to_uppercase(),
    )
}

/// A nats-server started with `-c FILE`, killed (by its own handle) when dropped.
struct ConfiguredServer(std::process::Child);

impl Drop for ConfiguredServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_the_documented_permissions_only_snapvault_nodes_publish_on_the_log() {
    let (dir, store) = temp_dir_with_store();
    let port = snapvault_test_support::free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, permissions_config(port, &dir.path().join("js"))).expect("config");
    let log = std::fs::File::create(dir.path().join("nats.log")).expect("log");
    let _server = ConfiguredServer(
        std::process::Command::new(snapvault_test_support::find_tool("nats-server"))
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start nats-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(25));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let remote = Remote::new(BIN, &url, PREFIX);
    let mut nodes = Vec::new();
    let node = Node::new("n1", dir.path());
    let mut cmd = remote.serve_command(&node, &store).expect("serve command");
    cmd.args(["--nats-user", "node", "--nats-password", "node-secret"]);
    start_node(&mut nodes, node, &mut cmd);

    // The client works through the API...
    let as_client = ["--nats-user", "client", "--nats-password", "client-secret"];
    let with = |args: &[&str]| -> Vec<String> {
        as_client
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let args = with(&["collection", "create", "c1"]);
    remote.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // ...but its publish onto the log's subjects is refused: no ack, nothing stored.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let refused = rt.block_on(async {
        let client = async_nats::ConnectOptions::with_user_and_password(
            "client".into(),
            "client-secret".into(),
        )
        .connect(url.as_str())
        .await
        .expect("connect as client");
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(Duration::from_secs(2));
        match js
            .publish(format!("{PREFIX}.log.x-1"), "hello".into())
            .await
        {
            Ok(ack) => ack.await.is_err(),
            Err(_) => true,
        }
    });
    assert!(refused, "the client's publish on the log was acknowledged");
    let args = with(&["gc", "status"]);
    let s = remote.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(s["stopped_at"].is_null(), "{s}");
    assert_eq!(s["loaded"], true, "{s}");
    let nats_log = std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default();
    assert!(
        nats_log.contains(&format!("Publish Violation - Subject \"{PREFIX}.log.x-1\"")),
        "{nats_log}"
    );
    // The node's own permissions are enough for everything it did.
    assert!(
        !nats_log
            .lines()
            .any(|l| l.contains("user:node") && l.contains("Violation")),
        "{nats_log}"
    );
    assert!(nodes[0].alive());
}
