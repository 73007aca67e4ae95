//! The conformance suite every `EventLog` backend must pass (design §3).
//!
//! A backend's test calls [`run_all`] with a factory that makes a fresh, empty log, and
//! [`run_durability`] with a function that (re)opens the same log, e.g. the same sled
//! directory or the same JetStream stream. The suite is public so the JetStream backend (and
//! any future one) plugs into the very same checks.

use crate::envelope::{MAX_EVENT_PAYLOAD_BYTES, NewEvent};
use crate::error::LogError;
use crate::log::{EventLog, ExpectedVersion};
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

fn ev(tag: &str, n: u64) -> NewEvent {
    NewEvent {
        event_type: tag.to_string(),
        schema_version: 1,
        payload: n.to_be_bytes().to_vec(),
        correlation_id: n,
        causation_id: n + 1,
    }
}

fn payload_n(payload: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[..8]);
    u64::from_be_bytes(b)
}

/// Run every check, each on a fresh log from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    empty_log(make().await).await;
    append_and_read_back(make().await).await;
    expected_version_fences(make().await).await;
    batches_are_all_or_nothing(make().await).await;
    concurrent_writers_exactly_one_wins(make().await).await;
    concurrent_appends_to_many_streams_each_land_whole(make().await).await;
    read_all_is_global_order_and_pages(make().await).await;
    subscribe_catches_up_then_tails(make().await).await;
    read_stream_from_any_version(make().await).await;
}

/// Two handles on ONE log, as two nodes sharing it (`make` returns a pair; for an in-process
/// backend both may be clones of one handle). Checks that the fence and the head work across
/// handles: what one appends moves the other's `head` and `watch_head`, a stale writer gets
/// `Conflict { actual }`, a concurrent race between them has exactly one winner, and a cold
/// reader (no cache) reads any version of a stream the other wrote.
pub async fn run_shared<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<dyn EventLog>, Arc<dyn EventLog>)>,
{
    let (a, b) = make().await;
    let mut b_head = b.watch_head();
    let before = *b_head.borrow_and_update();
    for i in 0..20u64 {
        a.append("shared", ExpectedVersion::Exact(i), vec![ev("S", i)])
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while *b_head.borrow_and_update() < before + 20 {
            b_head.changed().await.expect("head channel closed");
        }
    })
    .await
    .expect("another handle's appends did not move watch_head");
    assert_eq!(b.head().await.unwrap(), a.head().await.unwrap());
    assert_eq!(b.stream_version("shared").await.unwrap(), 20);
    let mid = b.read_stream("shared", 13, 3).await.unwrap();
    assert_eq!(
        mid.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![13, 14, 15]
    );
    // A stale writer on the other handle is fenced.
    let err = b
        .append("shared", ExpectedVersion::Exact(19), vec![ev("S", 99)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, LogError::Conflict { actual: 20, .. }),
        "{err:?}"
    );
    // Both race for version 21: exactly one wins, the loser sees the winner's version.
    let (ra, rb) = tokio::join!(
        a.append("shared", ExpectedVersion::Exact(20), vec![ev("A", 20)]),
        b.append("shared", ExpectedVersion::Exact(20), vec![ev("B", 20)]),
    );
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one handle must win: {ra:?} {rb:?}");
    for r in [ra, rb] {
        if let Err(e) = r {
            assert!(matches!(e, LogError::Conflict { actual: 21, .. }), "{e:?}");
        }
    }
    // The loser reloads and retries on top.
    let v = b.stream_version("shared").await.unwrap();
    assert_eq!(v, 21);
    b.append("shared", ExpectedVersion::Exact(v), vec![ev("R", 21)])
        .await
        .unwrap();
    let all = a.read_stream("shared", 1, 100).await.unwrap();
    assert_eq!(all.len(), 22);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.version == i as u64 + 1)
    );
}

/// `open` must return the same durable log each time it is called after the previous handle
/// was dropped.
pub async fn run_durability<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    {
        let log = open().await;
        for i in 0..10u64 {
            log.append("durable", ExpectedVersion::Exact(i), vec![ev("D", i)])
                .await
                .expect("append");
        }
    }
    let log = open().await;
    assert_eq!(log.stream_version("durable").await.unwrap(), 10);
    let events = log.read_stream("durable", 1, 100).await.unwrap();
    let ns: Vec<u64> = events.iter().map(|e| payload_n(&e.payload)).collect();
    assert_eq!(
        ns,
        (0..10).collect::<Vec<_>>(),
        "events lost or reordered across reopen"
    );
    let next = log
        .append("durable", ExpectedVersion::Exact(10), vec![ev("D", 10)])
        .await
        .unwrap();
    assert_eq!(next.stream_version, 11);
    assert_eq!(next.first_position, log.head().await.unwrap());
}

async fn empty_log(log: Arc<dyn EventLog>) {
    assert_eq!(log.head().await.unwrap(), 0);
    assert!(log.read_all(1, 10).await.unwrap().is_empty());
    assert_eq!(log.stream_version("nothing").await.unwrap(), 0);
    assert!(log.read_stream("nothing", 1, 10).await.unwrap().is_empty());
}

async fn append_and_read_back(log: Arc<dyn EventLog>) {
    let a = log
        .append(
            "s-1",
            ExpectedVersion::Exact(0),
            vec![ev("A", 1), ev("B", 2)],
        )
        .await
        .unwrap();
    assert_eq!(
        (a.first_position, a.last_position, a.stream_version),
        (1, 2, 2)
    );
    let b = log
        .append("s-1", ExpectedVersion::Any, vec![ev("C", 3)])
        .await
        .unwrap();
    assert_eq!((b.first_position, b.stream_version), (3, 3));
    let events = log.read_stream("s-1", 1, 10).await.unwrap();
    assert_eq!(events.len(), 3);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.stream, "s-1");
        assert_eq!(e.version, i as u64 + 1);
        assert_eq!(e.position, i as u64 + 1);
        assert_eq!(payload_n(&e.payload), i as u64 + 1);
        assert_eq!(e.correlation_id, i as u64 + 1);
        assert_eq!(e.causation_id, i as u64 + 2);
        assert_eq!(e.schema_version, 1);
    }
    assert_eq!(events[1].event_type, "B");
    let tail = log.read_stream("s-1", 2, 10).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let one = log.read_stream("s-1", 2, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    assert!(log.read_stream("s-1", 4, 10).await.unwrap().is_empty());
    assert_eq!(log.stream_version("s-1").await.unwrap(), 3);
    assert_eq!(log.head().await.unwrap(), 3);
}

async fn expected_version_fences(log: Arc<dyn EventLog>) {
    log.append("f", ExpectedVersion::Exact(0), vec![ev("A", 1)])
        .await
        .unwrap();
    let err = log
        .append("f", ExpectedVersion::Exact(0), vec![ev("A", 2)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Conflict {
                actual: 1,
                expected: 0,
                ..
            }
        ),
        "expected Conflict{{actual:1}}, got {err:?}"
    );
    let err = log
        .append("f", ExpectedVersion::Exact(5), vec![ev("A", 2)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, LogError::Conflict { actual: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        log.stream_version("f").await.unwrap(),
        1,
        "a refused append wrote"
    );
    assert_eq!(log.head().await.unwrap(), 1);
    log.append("f", ExpectedVersion::Exact(1), vec![ev("A", 3)])
        .await
        .unwrap();
    assert_eq!(log.stream_version("f").await.unwrap(), 2);
}

async fn batches_are_all_or_nothing(log: Arc<dyn EventLog>) {
    let oversized = NewEvent::new("Big", 1, vec![7; MAX_EVENT_PAYLOAD_BYTES + 1]);
    let err = log
        .append("b", ExpectedVersion::Exact(0), vec![ev("A", 1), oversized])
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Invalid(_)), "{err:?}");
    assert_eq!(
        log.head().await.unwrap(),
        0,
        "part of a refused batch was written"
    );
    assert!(log.append("b", ExpectedVersion::Any, vec![]).await.is_err());
    let big_batch: Vec<NewEvent> = (0..200).map(|i| ev("A", i)).collect();
    let a = log
        .append("b", ExpectedVersion::Exact(0), big_batch)
        .await
        .unwrap();
    assert_eq!(a.stream_version, 200);
    let events = log.read_stream("b", 1, 1000).await.unwrap();
    assert_eq!(events.len(), 200);
    assert!(
        events
            .windows(2)
            .all(|w| w[1].position == w[0].position + 1)
    );
}

async fn concurrent_writers_exactly_one_wins(log: Arc<dyn EventLog>) {
    const WRITERS: u64 = 16;
    const ROUNDS: u64 = 5;
    log.append("race", ExpectedVersion::Exact(0), vec![ev("Seed", 0)])
        .await
        .unwrap();
    for round in 0..ROUNDS {
        let expected = log.stream_version("race").await.unwrap();
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                log.append(
                    "race",
                    ExpectedVersion::Exact(expected),
                    vec![ev("W", w), ev("W2", w)],
                )
                .await
            }));
        }
        let mut wins = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(_) => wins += 1,
                Err(LogError::Conflict { actual, .. }) => {
                    assert_eq!(
                        actual,
                        expected + 2,
                        "conflict must report the moved version"
                    )
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one writer must win");
        assert_eq!(log.stream_version("race").await.unwrap(), expected + 2);
    }
    // Winners' batches are never interleaved with each other.
    let events = log.read_stream("race", 1, 10_000).await.unwrap();
    assert_eq!(events.len() as u64, 1 + 2 * ROUNDS);
    for pair in events[1..].chunks(2) {
        assert_eq!(pair[0].event_type, "W");
        assert_eq!(pair[1].event_type, "W2");
        assert_eq!(
            payload_n(&pair[0].payload),
            payload_n(&pair[1].payload),
            "events of two writers interleaved in one stream"
        );
    }
}

/// Many writers at once, each appending batches to its own stream under its own fence (and
/// a few of them racing on a shared stream): every append lands whole, at contiguous
/// positions, the stream versions follow the appends, and the global order holds every event
/// once. A backend that groups concurrent appends into one flush must not change any of it.
async fn concurrent_appends_to_many_streams_each_land_whole(log: Arc<dyn EventLog>) {
    const WRITERS: u64 = 32;
    const APPENDS: u64 = 8;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let stream = format!("many-{w}");
            let mut shared_wins = 0u64;
            for a in 0..APPENDS {
                let n = w * 1_000 + a;
                let got = log
                    .append(
                        &stream,
                        ExpectedVersion::Exact(a * 3),
                        vec![ev("X", n), ev("Y", n), ev("Z", n)],
                    )
                    .await
                    .unwrap();
                assert_eq!(got.stream_version, a * 3 + 3);
                assert_eq!(got.last_position, got.first_position + 2);
                // Everyone also races for the next version of one shared stream.
                let v = log.stream_version("many-shared").await.unwrap();
                match log
                    .append("many-shared", ExpectedVersion::Exact(v), vec![ev("S", n)])
                    .await
                {
                    Ok(_) => shared_wins += 1,
                    Err(LogError::Conflict { actual, .. }) => assert!(actual > v),
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }
            shared_wins
        }));
    }
    let mut shared_wins = 0;
    for h in handles {
        shared_wins += h.await.unwrap();
    }
    assert!(shared_wins >= 1);
    assert_eq!(
        log.stream_version("many-shared").await.unwrap(),
        shared_wins
    );
    let total = WRITERS * APPENDS * 3 + shared_wins;
    let all = log.read_all(1, 100_000).await.unwrap();
    assert_eq!(all.len() as u64, total);
    assert!(all.windows(2).all(|w| w[1].position == w[0].position + 1));
    for w in 0..WRITERS {
        let events = log
            .read_stream(&format!("many-{w}"), 1, 1_000)
            .await
            .unwrap();
        assert_eq!(events.len() as u64, APPENDS * 3);
        for (i, triple) in events.chunks(3).enumerate() {
            let n = w * 1_000 + i as u64;
            let tags: Vec<&str> = triple.iter().map(|e| e.event_type.as_str()).collect();
            assert_eq!(tags, ["X", "Y", "Z"], "writer {w} append {i}");
            assert!(triple.iter().all(|e| payload_n(&e.payload) == n));
            assert_eq!(triple[1].position, triple[0].position + 1);
            assert_eq!(triple[2].position, triple[0].position + 2);
            assert_eq!(triple[2].version, i as u64 * 3 + 3);
        }
    }
}

async fn read_all_is_global_order_and_pages(log: Arc<dyn EventLog>) {
    for i in 0..30u64 {
        let stream = format!("g-{}", i % 3);
        log.append(&stream, ExpectedVersion::Any, vec![ev("G", i)])
            .await
            .unwrap();
    }
    let mut next = 1;
    let mut seen = Vec::new();
    loop {
        let page = log.read_all(next, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        for e in page {
            assert_eq!(e.position, next, "read_all skipped or repeated a position");
            next += 1;
            seen.push(payload_n(&e.payload));
        }
    }
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
    assert_eq!(log.head().await.unwrap(), 30);
    assert_eq!(log.read_all(28, 100).await.unwrap().len(), 3);
    assert!(log.read_all(31, 100).await.unwrap().is_empty());
}

async fn read_stream_from_any_version(log: Arc<dyn EventLog>) {
    // Two streams interleaved, so versions and positions differ.
    for i in 0..150u64 {
        log.append("long", ExpectedVersion::Exact(i), vec![ev("L", i)])
            .await
            .unwrap();
        log.append("other", ExpectedVersion::Any, vec![ev("O", i)])
            .await
            .unwrap();
    }
    for (from, max) in [
        (1, 10),
        (2, 1),
        (75, 5),
        (149, 10),
        (150, 10),
        (151, 10),
        (0, 3),
    ] {
        let got = log.read_stream("long", from, max).await.unwrap();
        let want: Vec<u64> = (from.max(1)..=150).take(max).collect();
        assert_eq!(
            got.iter().map(|e| e.version).collect::<Vec<_>>(),
            want,
            "read_stream(long, {from}, {max})"
        );
        for e in &got {
            assert_eq!(e.stream, "long");
            assert_eq!(payload_n(&e.payload), e.version - 1);
        }
    }
    // Backwards, so a backend cache of the last version is not enough.
    for from in (1..=150).rev().step_by(37) {
        let got = log.read_stream("long", from, 2).await.unwrap();
        assert_eq!(got.first().map(|e| e.version), Some(from));
    }
}

async fn subscribe_catches_up_then_tails(log: Arc<dyn EventLog>) {
    const BEFORE: u64 = 50;
    const WRITERS: u64 = 4;
    const PER_WRITER: u64 = 100;
    for i in 0..BEFORE {
        log.append("pre", ExpectedVersion::Any, vec![ev("P", i)])
            .await
            .unwrap();
    }
    let mut sub = log.clone().subscribe(1);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let stream = format!("w-{w}");
                log.append(&stream, ExpectedVersion::Any, vec![ev("T", i)])
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let total = BEFORE + WRITERS * PER_WRITER;
    let mut expected_position = 1;
    let mut per_stream: std::collections::BTreeMap<String, u64> = Default::default();
    while expected_position <= total {
        let next = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("subscription stalled")
            .expect("subscription ended")
            .expect("subscription error");
        assert_eq!(
            next.position, expected_position,
            "gap or duplicate in subscription"
        );
        let v = per_stream.entry(next.stream.clone()).or_default();
        *v += 1;
        assert_eq!(
            next.version, *v,
            "stream versions out of order in subscription"
        );
        expected_position += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    // Subscribing from the middle starts exactly there.
    let mut mid = log.clone().subscribe(total - 2);
    for p in total - 2..=total {
        assert_eq!(mid.next().await.unwrap().unwrap().position, p);
    }
    // And a later append still arrives.
    log.append("late", ExpectedVersion::Any, vec![ev("L", 0)])
        .await
        .unwrap();
    let late = tokio::time::timeout(Duration::from_secs(20), mid.next())
        .await
        .expect("tail stalled")
        .unwrap()
        .unwrap();
    assert_eq!(late.stream, "late");
}
