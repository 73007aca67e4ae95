//! The NATS service in process against a real `nats-server -js` (random port, temp store):
//! bad payloads get structured errors and the service keeps serving; it is a micro service;
//! committed events are published with their positions; a killed and restarted server loses
//! no acknowledged event and a retried request id acts once (also across a node restart);
//! two nodes on one JetStream log and one entity: the fence lets one write win at a time.

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use snapvault::nats::publisher::{EventPublisher, PublishedEvent, PublisherConfig};
use snapvault::nats::requests::{RequestMemory, RequestMemoryConfig};
use snapvault::nats::wire::{self, ErrorBody, Format};
use snapvault::nats::{NatsOptions, OpTable, RemoteClient, ServiceConfig, ServiceHandle, service};
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault::{ErrorCode, LogConfig, Node, NodeConfig, StoreConfig};
use snapvault_events::JetStreamLogConfig;
use snapvault_events::domain::FileRef;
use snapvault_events::domain::collection::FlushSegment;
use snapvault_test_support::NatsServer;
use std::collections::BTreeSet;
use std::time::Duration;

/// A node on the JetStream log plus its service and publisher.
struct Served {
    node: Node,
    service: ServiceHandle,
    publisher: EventPublisher,
}

impl Served {
    async fn stop(self) {
        self.service.stop().await;
        self.publisher.stop().await;
        self.node.shutdown().await;
    }
}

fn node_config(url: &str, prefix: &str, store: StoreConfig) -> NodeConfig {
    NodeConfig {
        log: LogConfig::JetStream {
            nats: Box::new(NatsOptions::new(url)),
            config: Box::new(JetStreamLogConfig {
                prefix: prefix.to_string(),
                ack_timeout_ms: 1_000,
                ..Default::default()
            }),
        },
        store,
        ..NodeConfig::in_memory()
    }
}

async fn serve(url: &str, prefix: &str, store: StoreConfig) -> Served {
    let node = Node::start(node_config(url, prefix, store))
        .await
        .expect("start node");
    let nats = snapvault::nats::connect(&NatsOptions::new(url))
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(nats.clone());
    let memory = RequestMemory::kv(
        &js,
        &format!("{}_REQUESTS", prefix.to_uppercase()),
        &RequestMemoryConfig::default(),
    )
    .await
    .expect("request memory");
    let client = node.client();
    let service = service::start(
        nats.clone(),
        client.clone(),
        OpTable::standard(),
        memory,
        ServiceConfig {
            prefix: prefix.to_string(),
            ..Default::default()
        },
    )
    .await
    .expect("start service");
    let publisher = EventPublisher::start(
        nats,
        client.log().clone(),
        client.store().clone(),
        PublisherConfig {
            prefix: prefix.to_string(),
            ..Default::default()
        },
    );
    Served {
        node,
        service,
        publisher,
    }
}

async fn remote(url: &str, prefix: &str) -> RemoteClient {
    let nats = snapvault::nats::connect(&NatsOptions::new(url))
        .await
        .expect("connect");
    let mut r = RemoteClient::new(nats, prefix);
    r.timeout = Duration::from_secs(5);
    r.attempts = 8;
    r
}

/// A raw request: the reply's error (if any) and its body.
async fn raw(
    nats: &async_nats::Client,
    subject: &str,
    json: bool,
    body: Vec<u8>,
) -> (Option<ErrorBody>, Bytes, HeaderMap) {
    let mut h = HeaderMap::new();
    if json {
        h.insert(wire::CONTENT_TYPE, wire::JSON);
    }
    let msg = nats
        .request_with_headers(subject.to_string(), h, body.into())
        .await
        .expect("an answer");
    let headers = msg.headers.clone().unwrap_or_default();
    let format = Format::of(Some(&headers));
    let error = headers.get(wire::ERROR_CODE).map(|code| {
        let e: ErrorBody = wire::decode(format, &msg.payload).expect("error body decodes");
        assert_eq!(
            e.code.as_str(),
            code.as_str(),
            "header and body codes agree"
        );
        assert!(headers.get(wire::SERVICE_ERROR_CODE).is_some());
        e
    });
    (error, msg.payload, headers)
}

fn collection_create(name: &str) -> Vec<u8> {
    rmp_serde::to_vec_named(&serde_json::json!({ "name": name })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_get_structured_errors_and_the_service_keeps_serving() {
    let server = NatsServer::start();
    let served = serve(&server.url(), "bp", StoreConfig::Memory).await;
    let nats = async_nats::connect(server.url()).await.unwrap();
    let create = "bp.api.v1.collection.create";

    let cases: Vec<(&str, &str, bool, Vec<u8>, &str)> = vec![
        (
            "garbage bytes",
            create,
            false,
            vec![0xc1, 0xff, 0x00, 0x13],
            "msgpack",
        ),
        ("garbage JSON", create, true, b"{not json".to_vec(), "JSON"),
        (
            "wrong field type",
            create,
            true,
            br#"{"name": 5}"#.to_vec(),
            "invalid type",
        ),
        (
            "wrong field type (msgpack)",
            create,
            false,
            rmp_serde::to_vec_named(&serde_json::json!({ "name": ["x"] })).unwrap(),
            "invalid type",
        ),
        (
            "missing field",
            create,
            true,
            b"{}".to_vec(),
            "missing field `name`",
        ),
        (
            "unknown op",
            "bp.api.v1.collection.explode",
            false,
            vec![],
            "unknown op",
        ),
        (
            "oversized payload",
            create,
            false,
            vec![0x80; 300 * 1024],
            "over the limit",
        ),
        (
            "bad name",
            create,
            false,
            collection_create("../etc"),
            "collection name",
        ),
    ];
    for (what, subject, json, body, needle) in cases {
        let (error, _, headers) = raw(&nats, subject, json, body).await;
        let e = error.unwrap_or_else(|| panic!("{what}: no error reply"));
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{what}: {e:?}");
        assert!(e.message.contains(needle), "{what}: {}", e.message);
        assert!(e.details.contains_key("op"), "{what}: {e:?}");
        let ct = headers
            .get(wire::CONTENT_TYPE)
            .map(|v| v.as_str().to_string());
        assert_eq!(
            ct.as_deref(),
            Some(if json { wire::JSON } else { wire::MSGPACK }),
            "{what}"
        );
    }
    // Still serving: a good request in both formats.
    let (error, body, _) = raw(&nats, create, false, collection_create("good")).await;
    assert!(error.is_none(), "{error:?}");
    let view: snapvault::views::CollectionView = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(view.name, "good");
    let (error, body, _) = raw(
        &nats,
        "bp.api.v1.collection.describe",
        true,
        br#"{"name":"good"}"#.to_vec(),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["name"], "good");
    // Domain errors carry their stable codes.
    let (error, _, _) = raw(&nats, create, false, collection_create("good")).await;
    assert_eq!(error.map(|e| e.code), Some(ErrorCode::AlreadyExists));
    let (error, _, _) = raw(
        &nats,
        "bp.api.v1.collection.describe",
        true,
        br#"{"name":"nope"}"#.to_vec(),
    )
    .await;
    assert_eq!(error.map(|e| e.code), Some(ErrorCode::NotFound));
    // A bad request id is refused too.
    let mut h = HeaderMap::new();
    h.insert(wire::REQUEST_ID, "has space");
    let msg = nats
        .request_with_headers(create.to_string(), h, collection_create("x").into())
        .await
        .unwrap();
    assert_eq!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get(wire::ERROR_CODE))
            .map(|v| v.as_str().to_string())
            .as_deref(),
        Some("invalid_argument")
    );

    // It is a NATS micro service: async-nats's own micro types read every verb on each of
    // its subject forms, every reply has the schema's fields, and STATS counted the 11 error
    // replies above (8 bad payloads, 2 domain errors, 1 bad request id) among 13 requests.
    let id = served.service.id().to_string();
    for suffix in [
        String::new(),
        ".snapvault".into(),
        format!(".snapvault.{id}"),
    ] {
        let ask = |verb: &str| {
            let subject = format!("$SRV.{verb}{suffix}");
            let nats = nats.clone();
            async move {
                let msg = nats
                    .request(subject.clone(), Bytes::new())
                    .await
                    .unwrap_or_else(|e| panic!("{subject}: {e}"));
                serde_json::from_slice::<serde_json::Value>(&msg.payload).unwrap()
            }
        };
        let ping = ask("PING").await;
        let p: async_nats::service::PingResponse = serde_json::from_value(ping.clone()).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.name.as_str(), p.id.as_str()),
            ("io.nats.micro.v1.ping_response", "snapvault", id.as_str())
        );
        let info = ask("INFO").await;
        let i: async_nats::service::Info = serde_json::from_value(info.clone()).unwrap();
        assert_eq!(i.kind, "io.nats.micro.v1.info_response");
        assert!(
            i.endpoints
                .iter()
                .any(|e| e.subject == "bp.api.v1.snapshot.describe" && e.queue_group == "q"),
            "{info}"
        );
        let stats = ask("STATS").await;
        let st: async_nats::service::Stats = serde_json::from_value(stats.clone()).unwrap();
        assert_eq!(st.kind, "io.nats.micro.v1.stats_response");
        for (v, keys) in [
            (&ping, &["type", "name", "id", "version", "metadata"][..]),
            (
                &info,
                &[
                    "type",
                    "name",
                    "id",
                    "version",
                    "metadata",
                    "description",
                    "endpoints",
                ],
            ),
            (
                &stats,
                &[
                    "type",
                    "name",
                    "id",
                    "version",
                    "metadata",
                    "started",
                    "endpoints",
                ],
            ),
        ] {
            for k in keys {
                assert!(v.get(*k).is_some(), "{k} missing: {v}");
            }
        }
        let errors: usize = st.endpoints.iter().map(|e| e.errors).sum();
        let requests: usize = st.endpoints.iter().map(|e| e.requests).sum();
        assert_eq!((errors, requests), (11, 13), "{stats}");
        let describe = st
            .endpoints
            .iter()
            .find(|e| e.name == "collection_describe")
            .unwrap();
        assert_eq!((describe.requests, describe.errors), (2, 1));
        let unknown = st
            .endpoints
            .iter()
            .find(|e| e.name == "unknown_op")
            .unwrap();
        assert_eq!((unknown.requests, unknown.errors), (1, 1));
        let last = stats["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "collection_describe")
            .unwrap()["last_error"]
            .clone();
        assert_eq!(last, "not_found: collection 'nope' not found", "{stats}");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_published_in_order_with_their_positions() {
    let server = NatsServer::start();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let mut events = nats.subscribe("ev.events.v1.>").await.unwrap();
    nats.flush().await.unwrap();
    let served = serve(&server.url(), "ev", StoreConfig::Memory).await;
    let r = remote(&server.url(), "ev").await;
    let view = r
        .create_collection(snapvault::client::CreateCollectionRequest {
            name: "c".into(),
            shard_count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    r.create_partition("c", "p1").await.unwrap();
    let subject = format!("ev.events.v1.collection.{}", view.id);
    let mut seen = Vec::new();
    let mut last_position = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.len() < 2 {
            let m = events.next().await.unwrap();
            let h = m.headers.clone().unwrap();
            let position: u64 = h
                .get(wire::EVENT_POSITION)
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            assert!(position > last_position, "published out of log order");
            last_position = position;
            let e: PublishedEvent = rmp_serde::from_slice(&m.payload).unwrap();
            assert_eq!(e.position, position);
            assert!(
                !m.subject.as_str().starts_with("ev.events.v1.ids."),
                "id reservations are not domain events"
            );
            if m.subject.as_str() == subject {
                assert_eq!(e.kind, "collection");
                assert_eq!(e.id, view.id.to_string());
                seen.push((e.version, e.event_type.clone()));
            }
        }
    })
    .await
    .expect("events not published");
    assert_eq!(seen[0].0 + 1, seen[1].0, "versions in order: {seen:?}");
    served.stop().await;
}

fn file(n: u64) -> FileRef {
    FileRef {
        key: format!("data/x/{n}"),
        size: n,
        crc32c: n as u32,
    }
}

fn flush(segment_id: u64) -> FlushSegment {
    FlushSegment {
        segment_id,
        partition: "_default".into(),
        shard: 0,
        rows: 1,
        files: vec![file(segment_id)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_acknowledged_event_and_retried_ids_act_once() {
    let mut server = NatsServer::start();
    let url = server.url();
    let served = serve(&url, "kr", StoreConfig::Memory).await;
    let r = remote(&url, "kr").await;
    r.create_collection(snapvault::client::CreateCollectionRequest {
        name: "c".into(),
        shard_count: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    // An op that acts differently every time it runs: a retry with the same id must return
    // the first answer.
    let first: serde_json::Value = r
        .call_with_id("id.allocate", &serde_json::json!({}), "alloc-1")
        .await
        .unwrap();

    // A workload of flushes, each with its own request id, while the server dies and comes back.
    let workload = {
        let r = r.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60u64 {
                let id = 1_000 + i;
                match r.flush_segment("c", flush(id)).await {
                    Ok(()) => acked.push(id),
                    Err(e) => panic!("flush {id} failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart();
    let acked = tokio::time::timeout(Duration::from_secs(120), workload)
        .await
        .expect("workload stalled after the restart")
        .unwrap();
    let view = r.describe_collection("c").await.unwrap();
    let live: BTreeSet<u64> = view.segments.iter().map(|s| s.id).collect();
    for id in &acked {
        assert!(live.contains(id), "acknowledged flush of segment {id} lost");
    }
    assert_eq!(
        live.len(),
        acked.len(),
        "a flush acted twice or a stray one landed"
    );

    // The retried id, after the server restart: same answer, marked replayed, acted once.
    let again: serde_json::Value = r
        .call_with_id("id.allocate", &serde_json::json!({}), "alloc-1")
        .await
        .unwrap();
    assert_eq!(first, again);
    let fresh: serde_json::Value = r
        .call_with_id("id.allocate", &serde_json::json!({}), "alloc-2")
        .await
        .unwrap();
    assert_ne!(first, fresh);
    // Same id, different request: refused, not answered with the other one's reply.
    let reused = r
        .call_with_id::<_, serde_json::Value>("collection.list", &serde_json::json!({}), "alloc-1")
        .await
        .unwrap_err();
    assert_eq!(reused.code, ErrorCode::InvalidArgument, "{reused:?}");

    // And across a node restart (the memory is in JetStream, not in the process).
    served.stop().await;
    let served = serve(&url, "kr", StoreConfig::Memory).await;
    let after: serde_json::Value = r
        .call_with_id("id.allocate", &serde_json::json!({}), "alloc-1")
        .await
        .unwrap();
    assert_eq!(first, after);
    let view = r.describe_collection("c").await.unwrap();
    assert_eq!(view.segments.len(), acked.len());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_log_and_one_entity() {
    let server = NatsServer::start();
    let url = server.url();
    let a = Node::start(node_config(&url, "two", StoreConfig::Memory))
        .await
        .unwrap();
    let b = Node::start(node_config(&url, "two", StoreConfig::Memory))
        .await
        .unwrap();
    let (ca, cb) = (a.client(), b.client());
    ca.create_collection(snapvault::client::CreateCollectionRequest {
        name: "shared".into(),
        shard_count: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    // Node B sees A's collection (its actor loads from the shared log).
    let id = cb.collection_id("shared").await.unwrap();
    // Rounds of concurrent writes to the one entity from both nodes: each node's actor holds
    // a stale version after the other's write, so one of each pair loses the fence, reloads
    // and retries on top. Every write lands exactly once, versions stay contiguous.
    const ROUNDS: u64 = 10;
    for round in 0..ROUNDS {
        let (ra, rb) = tokio::join!(
            ca.flush_segment("shared", flush(10_000 + round)),
            cb.flush_segment("shared", flush(20_000 + round)),
        );
        ra.unwrap();
        rb.unwrap();
    }
    // A collection created on A after B loaded the catalog is found on B at once.
    ca.create_collection(snapvault::client::CreateCollectionRequest {
        name: "late".into(),
        shard_count: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(cb.describe_collection("late").await.unwrap().name, "late");
    // Both nodes answer with every write (entities check the shared log before a read).
    for c in [&ca, &cb] {
        let view = c.describe_collection_by_id(id).await.unwrap();
        assert_eq!(view.segments.len() as u64, 2 * ROUNDS);
    }
    // And a fresh node replays the shared log: every write is there exactly once.
    let fresh = Node::start(node_config(&url, "two", StoreConfig::Memory))
        .await
        .unwrap();
    let view = fresh.client().describe_collection_by_id(id).await.unwrap();
    assert_eq!(view.segments.len() as u64, 2 * ROUNDS);
    fresh.shutdown().await;
    let stream = snapvault_events::domain::collection_stream(id);
    let events = ca.log().read_stream(&stream, 1, 10_000).await.unwrap();
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.version == i as u64 + 1),
        "versions not contiguous"
    );
    // A decision only one can win: two snapshots of one name at once, one per node.
    let req = |n: &str| CreateSnapshotRequest {
        collection: "shared".into(),
        name: n.into(),
        ..Default::default()
    };
    let (sa, sb) = tokio::join!(
        ca.create_snapshot(req("nightly")),
        cb.create_snapshot(req("nightly"))
    );
    let outcomes = [sa.map(|_| ()), sb.map(|_| ())];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "exactly one create of one name wins: {outcomes:?}"
    );
    for o in &outcomes {
        if let Err(e) = o {
            assert_eq!(e.code, ErrorCode::AlreadyExists, "{e:?}");
        }
    }
    // The head moves on both nodes whoever writes.
    let head_a = ca.log().head().await.unwrap();
    assert_eq!(cb.log().head().await.unwrap(), head_a);
    let mut wb = cb.log().watch_head();
    tokio::time::timeout(Duration::from_secs(20), async {
        while *wb.borrow_and_update() < head_a {
            wb.changed().await.unwrap();
        }
    })
    .await
    .expect("B's watch_head did not follow A's appends");
    a.shutdown().await;
    b.shutdown().await;
}
