//! Published events: every committed domain event on `<prefix>.events.v1.<kind>.<id>`.
//!
//! A projection tails the log (`EventLog::subscribe`) from a durable checkpoint and publishes
//! each event in log order, with headers giving its position (`Snapvault-Position`), stream,
//! version and type, and `Nats-Msg-Id: <prefix>-<position>` so a JetStream stream capturing
//! the subjects de-duplicates by itself.
//!
//! **Guarantee**: at-least-once, in log order (so in version order per entity). The
//! checkpoint (`events/publisher.checkpoint` in the object store: the last position whose
//! publish the server confirmed with a flush) is written every
//! [`PublisherConfig::checkpoint_every_events`] events or
//! [`PublisherConfig::checkpoint_every_ms`]; after a crash the events after it are published
//! again, and every node serving a log publishes, so a subscriber de-duplicates by position
//! (per stream: drop an event whose position is not above the last one it applied). Core NATS
//! delivers only to subscribers connected at the time: a consumer that must not miss events
//! while it is down captures `<prefix>.events.v1.>` in a JetStream stream of its own.
//!
//! A record the log cannot give (corrupt, foreign, of a newer build) stops the publisher *at*
//! it — never skipped, as everywhere else: the warning names the position and why (once, then
//! at most every minute), [`EventPublisher::stopped`] reports it, and the record is read again
//! every 30 s, so publishing resumes by itself once the log is repaired.
//!
//! The `ids` stream (id-block reservations) is bookkeeping, not a domain event, and is not
//! published. Subjects are stable per kind, one token per part of the stream name, so a
//! wildcard per kind matches every entity of it: `collection-7` → `collection.7`,
//! `copytask-12-0` → `copytask.12.0` (`copytask.>` and `copytask.12.>` work), a singleton
//! stream (`catalog`, `gc`) → `<kind>._`.
//!
//! The body's `event` is always a JSON-style object, `{"<EventType>": {fields}}` (serde's
//! externally tagged form): an event without fields, such as a collection's `Dropped`, is
//! `{"Dropped": {}}`, not the bare string msgpack carries, so a consumer reads every event the
//! same way.

use super::wire;
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use snapvault_actors::projection::{LogStop, STOPPED_RETRY, StopWarnings};
use snapvault_events::envelope::Envelope;
use snapvault_events::jetstream::record::stream_token;
use snapvault_events::{EventLog, LogError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where the publisher keeps its position, outside the GC-scanned prefixes.
pub const CHECKPOINT_KEY: &str = "events/publisher.checkpoint";

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub prefix: String,
    pub checkpoint_every_events: u64,
    pub checkpoint_every_ms: u64,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            prefix: "snapvault".into(),
            checkpoint_every_events: 512,
            checkpoint_every_ms: 1_000,
        }
    }
}

/// The body of a published event (msgpack, named fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedEvent {
    pub stream: String,
    pub kind: String,
    pub id: String,
    pub version: u64,
    pub position: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub time_ms: u64,
    pub correlation_id: u64,
    pub causation_id: u64,
    /// The domain event itself, decoded from its payload: always an object
    /// `{"<EventType>": {fields}}` (`null` only for a payload that does not decode).
    pub event: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    position: u64,
    stream: String,
    version: u64,
}

/// The subject tokens of a stream: the kind (before the first `-`) and the id (the other
/// `-`-separated parts, joined by `.`, so each is its own subject token).
/// `collection-7` → (`collection`, `7`); `copytask-12-0` → (`copytask`, `12.0`);
/// `catalog` → (`catalog`, `_`). A name that does not split cleanly (an empty part, a
/// character outside `[A-Za-z0-9_-]`) is one token (`stream_token`) with id `_`.
pub fn kind_and_id(stream: &str) -> (String, String) {
    let mut parts = stream.split('-');
    let kind = parts.next().unwrap_or_default();
    let id: Vec<&str> = parts.collect();
    let clean =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if id.is_empty() || !clean(kind) || !id.iter().all(|t| clean(t)) {
        return (stream_token(stream), "_".to_string());
    }
    (kind.to_string(), id.join("."))
}

/// The published form of a decoded event: always an object. Serde's externally tagged enums
/// give `{"Variant": {fields}}` for variants with fields but a bare `"Variant"` string for
/// one without; that becomes `{"Variant": {}}`.
pub fn event_object(event: serde_json::Value) -> serde_json::Value {
    match event {
        serde_json::Value::String(variant) => {
            let mut m = serde_json::Map::new();
            m.insert(variant, serde_json::Value::Object(serde_json::Map::new()));
            serde_json::Value::Object(m)
        }
        other => other,
    }
}

/// `<prefix>.events.v1.<kind>.<id>`.
pub fn event_subject(prefix: &str, stream: &str) -> String {
    let (kind, id) = kind_and_id(stream);
    format!("{prefix}.events.v1.{kind}.{id}")
}

/// A running publisher.
pub struct EventPublisher {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stopped_at: Arc<Mutex<Option<LogStop>>>,
}

impl EventPublisher {
    pub fn start(
        nats: async_nats::Client,
        log: Arc<dyn EventLog>,
        store: Arc<dyn ObjectStore>,
        config: PublisherConfig,
    ) -> EventPublisher {
        let (stop, stop_rx) = watch::channel(false);
        let stopped_at = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run(nats, log, store, config, stop_rx, stopped_at.clone()));
        EventPublisher {
            stop,
            task,
            stopped_at,
        }
    }

    /// Where publishing stopped at a record the log cannot give, and why (read again every
    /// 30 s), if it did.
    pub fn stopped(&self) -> Option<LogStop> {
        self.stopped_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publish what was read, write the checkpoint, stop.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn load_checkpoint(log: &dyn EventLog, store: &dyn ObjectStore) -> u64 {
    let Ok(bytes) = snapvault_actors::snapshot::worker::get_object(store, CHECKPOINT_KEY).await
    else {
        return 0;
    };
    let Ok(c) = serde_json::from_slice::<Checkpoint>(&bytes) else {
        tracing::warn!("event publisher: checkpoint unreadable; publishing from the start");
        return 0;
    };
    match log.read_all(c.position, 1).await {
        Ok(page)
            if page.first().is_some_and(|e| {
                e.position == c.position && e.stream == c.stream && e.version == c.version
            }) =>
        {
            c.position
        }
        _ => {
            tracing::warn!(
                position = c.position,
                "event publisher: checkpoint does not match this log; publishing from the start"
            );
            0
        }
    }
}

async fn save_checkpoint(nats: &async_nats::Client, store: &dyn ObjectStore, last: &Envelope) {
    // Only what the server has received counts as published.
    if let Err(e) = nats.flush().await {
        tracing::debug!(error = %e, "event publisher: flush failed; checkpoint not moved");
        return;
    }
    let c = Checkpoint {
        position: last.position,
        stream: last.stream.clone(),
        version: last.version,
    };
    let Ok(bytes) = serde_json::to_vec(&c) else {
        return;
    };
    if let Err(e) =
        snapvault_actors::snapshot::worker::put_object(store, CHECKPOINT_KEY, Bytes::from(bytes))
            .await
    {
        tracing::warn!(error = %e, "event publisher: checkpoint not written");
    }
}

fn message(
    prefix: &str,
    env: &Envelope,
) -> Result<(String, async_nats::HeaderMap, Vec<u8>), String> {
    let (kind, id) = kind_and_id(&env.stream);
    let event: serde_json::Value = match rmp_serde::from_slice(&env.payload) {
        Ok(v) => event_object(v),
        Err(e) => {
            tracing::warn!(position = env.position, error = %e, "event publisher: payload not decodable; published without it");
            serde_json::Value::Null
        }
    };
    let body = PublishedEvent {
        stream: env.stream.clone(),
        kind: kind.clone(),
        id: id.clone(),
        version: env.version,
        position: env.position,
        event_type: env.event_type.clone(),
        schema_version: env.schema_version,
        time_ms: env.time_ms,
        correlation_id: env.correlation_id,
        causation_id: env.causation_id,
        event,
    };
    let bytes = rmp_serde::to_vec_named(&body).map_err(|e| e.to_string())?;
    let mut h = async_nats::HeaderMap::new();
    h.insert(wire::CONTENT_TYPE, wire::MSGPACK);
    h.insert(wire::EVENT_POSITION, env.position.to_string().as_str());
    h.insert(wire::EVENT_STREAM, env.stream.as_str());
    h.insert(wire::EVENT_VERSION, env.version.to_string().as_str());
    h.insert(wire::EVENT_TYPE, env.event_type.as_str());
    h.insert("Nats-Msg-Id", format!("{prefix}-{}", env.position).as_str());
    Ok((format!("{prefix}.events.v1.{kind}.{id}"), h, bytes))
}

async fn run(
    nats: async_nats::Client,
    log: Arc<dyn EventLog>,
    store: Arc<dyn ObjectStore>,
    config: PublisherConfig,
    mut stop: watch::Receiver<bool>,
    stopped_at: Arc<Mutex<Option<LogStop>>>,
) {
    let mut warnings = StopWarnings::default();
    let set_stopped = |s: Option<LogStop>| {
        *stopped_at.lock().unwrap_or_else(|p| p.into_inner()) = s;
    };
    let mut next = load_checkpoint(&*log, &*store).await + 1;
    let mut last: Option<Envelope> = None;
    let mut since_checkpoint = 0u64;
    let mut checkpointed_at = tokio::time::Instant::now();
    let every = Duration::from_millis(config.checkpoint_every_ms.max(10));
    let mut backoff_ms = 50;
    'outer: loop {
        let mut sub = log.clone().subscribe(next);
        let mut pause = None;
        loop {
            let item = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break 'outer,
                _ = tokio::time::sleep(every), if since_checkpoint > 0 => {
                    if let Some(l) = &last {
                        save_checkpoint(&nats, &*store, l).await;
                    }
                    since_checkpoint = 0;
                    checkpointed_at = tokio::time::Instant::now();
                    continue;
                }
                item = sub.next() => item,
            };
            match item {
                Some(Ok(env)) => {
                    backoff_ms = 50;
                    if let Some(s) = warnings.clear() {
                        set_stopped(None);
                        tracing::warn!(
                            position = s.position,
                            "event publisher: the log record it had stopped at reads now; publishing again"
                        );
                    }
                    next = env.position + 1;
                    if env.stream != snapvault_events::ids::IDS_STREAM {
                        match message(&config.prefix, &env) {
                            Ok((subject, headers, body)) => {
                                if let Err(e) = nats
                                    .publish_with_headers(subject, headers, body.into())
                                    .await
                                {
                                    tracing::warn!(error = %e, position = env.position, "event publisher: publish failed; retrying from there");
                                    next = env.position;
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, position = env.position, "event publisher: cannot encode")
                            }
                        }
                    }
                    last = Some(env);
                    since_checkpoint += 1;
                    if since_checkpoint >= config.checkpoint_every_events
                        || checkpointed_at.elapsed() >= every
                    {
                        if let Some(l) = &last {
                            save_checkpoint(&nats, &*store, l).await;
                        }
                        since_checkpoint = 0;
                        checkpointed_at = tokio::time::Instant::now();
                    }
                }
                Some(Err(LogError::Unavailable(e))) => {
                    tracing::debug!(error = %e, "event publisher: log unavailable; resubscribing");
                    break;
                }
                Some(Err(e)) => {
                    // Never skipped: stop here, say so once, read it again much later.
                    let stop = LogStop::of(&e, next).unwrap_or(LogStop {
                        position: next,
                        reason: e.message(),
                    });
                    if warnings.due(&stop) {
                        tracing::error!(
                            position = stop.position,
                            reason = %stop.reason,
                            retry_s = STOPPED_RETRY.as_secs(),
                            "event publisher stopped at a log record it cannot read; nothing after it is published until it reads"
                        );
                    }
                    set_stopped(Some(stop));
                    pause = Some(STOPPED_RETRY);
                    break;
                }
                None => break,
            }
        }
        drop(sub);
        let pause = pause.unwrap_or_else(|| {
            let p = Duration::from_millis(backoff_ms);
            backoff_ms = (backoff_ms * 2).min(2_000);
            p
        });
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if let Some(l) = &last {
        save_checkpoint(&nats, &*store, l).await;
    }
}

/// Completes once the stop flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_come_from_stream_names() {
        assert_eq!(
            event_subject("sv", "collection-7"),
            "sv.events.v1.collection.7"
        );
        assert_eq!(
            event_subject("sv", "snapshot-12"),
            "sv.events.v1.snapshot.12"
        );
        assert_eq!(event_subject("sv", "catalog"), "sv.events.v1.catalog._");
        assert_eq!(event_subject("sv", "gc"), "sv.events.v1.gc._");
        assert_eq!(event_subject("sv", "gc-claim"), "sv.events.v1.gc.claim");
        // Every part of a copy task's stream is its own token, so `copytask.>` matches.
        let task = snapvault_events::domain::restore::copy_task_stream(12, 0);
        assert_eq!(event_subject("sv", &task), "sv.events.v1.copytask.12.0");
        assert_eq!(kind_and_id(&task), ("copytask".into(), "12.0".into()));
        assert_eq!(
            event_subject("sv", &snapvault_events::domain::restore::restore_stream(12)),
            "sv.events.v1.restore.12"
        );
        // Names that do not split cleanly stay one token.
        assert_eq!(event_subject("sv", "a--b"), "sv.events.v1.a--b._");
        assert_eq!(event_subject("sv", "x.y-1"), "sv.events.v1.~782e792d31._");
    }

    #[test]
    fn every_event_is_an_object() {
        use snapvault_events::domain::collection::CollectionEvent;
        let env = |event: &CollectionEvent| {
            let new = snapvault_events::codec::encode(event).unwrap();
            Envelope {
                stream: "collection-7".into(),
                version: 2,
                position: 9,
                event_type: new.event_type.clone(),
                schema_version: new.schema_version,
                time_ms: 0,
                correlation_id: 0,
                causation_id: 0,
                payload: new.payload,
                crc32c: 0,
            }
        };
        let (subject, _, body) = message("sv", &env(&CollectionEvent::Dropped)).unwrap();
        assert_eq!(subject, "sv.events.v1.collection.7");
        let e: PublishedEvent = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(e.event, serde_json::json!({ "Dropped": {} }));
        assert_eq!(e.event_type, "Dropped");
        let other = serde_json::json!({ "PartitionDropped": { "name": "p" } });
        assert_eq!(event_object(other.clone()), other);
    }
}
