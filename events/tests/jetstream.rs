//! The JetStream log against a real `nats-server -js` (started here on a random port, see
//! `snapvault-test-support`): the conformance suite, durability across reconnects, two
//! handles as two nodes, and a server killed and restarted under pipelined appends.

use snapvault_events::conformance;
use snapvault_events::{
    EventLog, ExpectedVersion, JetStreamLog, JetStreamLogConfig, NewEvent, SharedClock, SystemClock,
};
use snapvault_test_support::NatsServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

fn fresh_prefix() -> String {
    format!("t{}", PREFIXES.fetch_add(1, Ordering::Relaxed))
}

async fn open(url: &str, prefix: &str) -> Arc<dyn EventLog> {
    let client = async_nats::connect(url).await.expect("connect");
    let config = JetStreamLogConfig {
        prefix: prefix.to_string(),
        ..Default::default()
    };
    Arc::new(
        JetStreamLog::open(client, config, clock())
            .await
            .expect("open JetStream log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let server = NatsServer::start();
    let url = server.url();
    conformance::run_all(|| {
        let url = url.clone();
        async move { open(&url, &fresh_prefix()).await }
    })
    .await;
    let prefix = fresh_prefix();
    conformance::run_durability(|| {
        let (url, prefix) = (url.clone(), prefix.clone());
        async move { open(&url, &prefix).await }
    })
    .await;
    conformance::run_shared(|| {
        let url = url.clone();
        async move {
            let prefix = fresh_prefix();
            (open(&url, &prefix).await, open(&url, &prefix).await)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subject_per_stream_and_position_is_the_stream_sequence() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let log = JetStreamLog::open(
        client.clone(),
        JetStreamLogConfig {
            prefix: "sv".into(),
            ..Default::default()
        },
        clock(),
    )
    .await
    .unwrap();
    assert_eq!(log.stream_name(), "SV_LOG");
    let a = log
        .append(
            "collection-7",
            ExpectedVersion::Exact(0),
            vec![
                NewEvent::new("A", 1, vec![1]),
                NewEvent::new("B", 1, vec![2]),
            ],
        )
        .await
        .unwrap();
    assert_eq!((a.first_position, a.last_position), (1, 2));
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("SV_LOG").await.unwrap();
    let m = stream.direct_get(2).await.unwrap();
    assert_eq!(m.subject.as_str(), "sv.log.collection-7");
    assert!(m.headers.get("Snapvault-Append").is_some());
    // Nothing else may remove events.
    assert!(
        stream.delete_message(1).await.is_err(),
        "deny_delete is off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_server_loses_no_acknowledged_append() {
    const WRITERS: u64 = 6;
    const PER_WRITER: u64 = 40;
    let mut server = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        JetStreamLog::open(
            client,
            JetStreamLogConfig {
                prefix: "kill".into(),
                ack_timeout_ms: 1_000,
                append_timeout_ms: 30_000,
                ..Default::default()
            },
            clock(),
        )
        .await
        .unwrap(),
    );
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (log, acked) = (log.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let stream = format!("w-{w}");
            let mut version = 0;
            let mut i = 0;
            while i < PER_WRITER {
                let batch = if i % 5 == 4 { 3 } else { 1 };
                let events = (0..batch)
                    .map(|k| NewEvent::new("E", 1, (i * 10 + k).to_be_bytes().to_vec()))
                    .collect();
                // The append rides out the restart itself (retries with the same identity
                // until its timeout), so every append here must succeed, exactly once.
                let a = log
                    .append(&stream, ExpectedVersion::Exact(version), events)
                    .await
                    .unwrap_or_else(|e| panic!("append {i} of {stream}: {e:?}"));
                version = a.stream_version;
                acked.fetch_add(batch, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            version
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    let mut total_versions = 0;
    for (w, h) in writers.into_iter().enumerate() {
        let version = tokio::time::timeout(Duration::from_secs(90), h)
            .await
            .expect("writer stalled")
            .unwrap();
        let events = log.read_stream(&format!("w-{w}"), 1, 10_000).await.unwrap();
        assert_eq!(events.len() as u64, version, "writer {w}");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1, "versions of w-{w} not contiguous");
        }
        // No append is stored twice: payloads are unique per writer.
        let mut payloads: Vec<&Vec<u8>> = events.iter().map(|e| &e.payload).collect();
        payloads.sort();
        payloads.dedup();
        assert_eq!(
            payloads.len(),
            events.len(),
            "an append of w-{w} stored twice"
        );
        total_versions += version;
    }
    assert_eq!(total_versions, acked.load(Ordering::Relaxed));
    // Positions are contiguous across the whole log.
    let all = log.read_all(1, 100_000).await.unwrap();
    assert_eq!(all.len() as u64, log.head().await.unwrap());
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64 + 1)
    );
}
