//! The JetStream backend: the log in one NATS JetStream stream, replicated when the NATS
//! cluster is (design §3). Requires nats-server ≥ 2.12 (atomic batch publish); the stream is
//! checked at open and a server without it is refused with a message saying so.
//!
//! # Layout
//!
//! One JetStream stream (default `SNAPVAULT_LOG`, [`log_stream_name`]) holds the whole log on
//! the subjects `<prefix>.log.>`; each entity stream is one subject `<prefix>.log.<token>`
//! ([`record::subject_for`]). One message is one event, so:
//! - the **global position** of an event is its message's stream sequence: contiguous,
//!   strictly increasing, assigned by the stream leader in one order for every writer on every
//!   node. The stream only ever holds events (deny-delete, deny-purge, no limits), so the
//!   sequence has no gaps.
//! - the **stream version** is carried in the record. The writer computes it (the version it
//!   read + 1…n) and the fence guarantees it is right: every append carries
//!   `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the entity's last message
//!   (0 for a new entity), so the server stores the message only if nobody appended to that
//!   subject since the writer read it. Versions therefore stay contiguous however many nodes
//!   write, and a refused fence becomes `Conflict { actual }` with `actual` read back.
//!
//! # The version → sequence mapping
//!
//! Reads by version need the sequence where a version sits. Each (version, sequence) pair this
//! node sees (appends, reads) is a fact that never changes, so a per-stream cache of the
//! latest pair is a correct index however stale it is: a catch-up from `v + 1` starts right
//! after the cached sequence of `v`, the common case for an entity that lost a fence or
//! replays its tail. Anything else is found by a binary search over next-by-subject direct
//! gets (log₂ of the stream's length, ~20 round trips for a million events). The cache is
//! bounded ([`JetStreamLogConfig::max_cached_streams`]).
//!
//! # Atomic batches
//!
//! An append of several events (a collection create, a compaction) must be all-or-nothing
//! *and* keep one position per event. Packing the batch into one message would give it one
//! sequence for n events, breaking contiguous positions (which the conformance suite, the
//! tail and every projection checkpoint rely on). So a multi-event append is a JetStream
//! **atomic batch** (ADR-50): n messages with `Nats-Batch-Id`/`Nats-Batch-Sequence`, the last
//! with `Nats-Batch-Commit: 1`; the server stores all n contiguously or none. The fence header
//! rides on the first message. Batches are capped at 1000 messages by the server, which is why
//! [`crate::envelope::MAX_EVENTS_PER_APPEND`] is 1000.
//!
//! # De-duplication of retried appends
//!
//! An append whose acknowledgement is lost (server restart, timeout) is retried with the same
//! identity until [`JetStreamLogConfig::append_timeout_ms`]:
//! - a one-event append carries `Nats-Msg-Id`: within the stream's duplicate window the server
//!   answers the retry with the first message's sequence (`duplicate: true`);
//! - every message carries `Snapvault-Append: <append id>`. A retry whose fence fails looks at
//!   the first message on the subject after the sequence it fenced on: if it carries the same
//!   append id, the first attempt landed and that is the answer. This covers batches (the
//!   server does not accept `Nats-Msg-Id` inside an atomic batch) and single events retried
//!   after the duplicate window.
//!
//! # Pipelining
//!
//! Appends to different streams are in flight together: each takes a permit of a bounded
//! window ([`JetStreamLogConfig::max_in_flight`]) for the time it waits for its ack, so a burst
//! waits for acks (back-pressure) instead of failing.
//!
//! # Reads
//!
//! `read_stream` and `read_all` page through batched direct gets (one request per page, no
//! server-side state); `subscribe` tails through an ordered consumer, recreated at the next
//! position after any interruption; `head` reads the stream's last sequence and
//! `watch_head` polls it ([`JetStreamLogConfig::head_poll_ms`]) besides following this node's
//! own appends, so another node's appends move the head too.

pub mod direct;
pub mod record;

use crate::clock::SharedClock;
use crate::envelope::{Envelope, NewEvent, validate_append};
use crate::error::LogError;
use crate::log::{Appended, EventLog, ExpectedVersion, Subscription};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, HeaderMap};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use record::subject_for;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Header naming the append a message belongs to (see module docs).
pub const APPEND_ID_HEADER: &str = "Snapvault-Append";
/// Largest number of events one direct-get page asks for.
const DIRECT_PAGE_EVENTS: usize = 1024;
/// How often an `Any` append re-reads and retries after losing the fence to another writer.
const MAX_ANY_ATTEMPTS: usize = 64;
/// First and largest wait between retries of an append whose ack was lost.
const RETRY_INITIAL_MS: u64 = 50;
const RETRY_MAX_MS: u64 = 1_000;

/// How the JetStream log is set up.
#[derive(Debug, Clone)]
pub struct JetStreamLogConfig {
    /// Subject prefix: the log's subjects are `<prefix>.log.>`.
    pub prefix: String,
    /// The JetStream stream's name; `None` derives it from the prefix ([`log_stream_name`]).
    pub stream_name: Option<String>,
    /// Replicas of the stream (1, 3 or 5); only used when the stream is created.
    pub replicas: usize,
    /// Appends waiting for their ack at once (the pipelining window).
    pub max_in_flight: usize,
    /// How long one publish waits for its ack before it is retried.
    pub ack_timeout_ms: u64,
    /// How long an append keeps retrying a lost ack before it fails with `Unavailable`.
    pub append_timeout_ms: u64,
    /// How long a read request waits for its answer.
    pub request_timeout_ms: u64,
    /// The stream's duplicate window (server-side `Nats-Msg-Id` memory).
    pub duplicate_window_ms: u64,
    /// Streams whose last (version, sequence) is cached; past it the cache starts over.
    pub max_cached_streams: usize,
    /// How often the head is polled for other nodes' appends (`watch_head`).
    pub head_poll_ms: u64,
}

impl Default for JetStreamLogConfig {
    fn default() -> Self {
        JetStreamLogConfig {
            prefix: "snapvault".to_string(),
            stream_name: None,
            replicas: 1,
            max_in_flight: 256,
            ack_timeout_ms: 5_000,
            append_timeout_ms: 30_000,
            request_timeout_ms: 5_000,
            duplicate_window_ms: 120_000,
            max_cached_streams: 100_000,
            head_poll_ms: 50,
        }
    }
}

/// `snapvault` → `SNAPVAULT_LOG`; characters a stream name cannot hold become `_`.
pub fn log_stream_name(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    name.push_str("_LOG");
    name
}

/// A subject prefix: dot-separated tokens of `[A-Za-z0-9_-]`.
pub fn validate_prefix(prefix: &str) -> Result<(), LogError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(LogError::Invalid(format!(
            "subject prefix '{}' must be 1..=64 characters of dot-separated [A-Za-z0-9_-] tokens",
            prefix.escape_debug()
        )))
    }
}

/// The last event of a stream: its version and its stream sequence (0, 0 when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Last {
    version: u64,
    seq: u64,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    stream: stream::Stream,
    name: String,
    prefix: String,
    /// `<prefix>.log.>`
    all_subjects: String,
    clock: SharedClock,
    config: JetStreamLogConfig,
    window: Arc<Semaphore>,
    /// Latest known (version, sequence) per stream; facts, never wrong, maybe not the latest.
    cache: Mutex<HashMap<String, Last>>,
    head_tx: Arc<watch::Sender<u64>>,
    /// Unique per open log: appends are `<node>-<counter>`.
    node: String,
    counter: AtomicU64,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The JetStream `EventLog`. Cloning is cheap and shares one open log.
#[derive(Clone)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("stream", &self.inner.name)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

fn unavailable(name: &str, what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("JetStream log {name}: {what}: {e}"))
}

impl JetStreamLog {
    /// Open the log on `client`, creating its stream when it does not exist yet.
    pub async fn open(
        client: Client,
        config: JetStreamLogConfig,
        clock: SharedClock,
    ) -> Result<JetStreamLog, LogError> {
        validate_prefix(&config.prefix)?;
        if config.max_in_flight == 0 {
            return Err(LogError::Invalid("max_in_flight must be at least 1".into()));
        }
        let name = config
            .stream_name
            .clone()
            .unwrap_or_else(|| log_stream_name(&config.prefix));
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.request_timeout_ms));
        let all_subjects = format!("{}.log.>", config.prefix);
        let wanted = stream::Config {
            name: name.clone(),
            description: Some(format!(
                "snapvault event log (prefix {}): one subject per entity stream; do not delete",
                config.prefix
            )),
            subjects: vec![all_subjects.clone()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            duplicate_window: Duration::from_millis(config.duplicate_window_ms),
            allow_direct: true,
            allow_atomic_publish: true,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| unavailable(&name, "open the stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable(&name, "read the stream's configuration", e))?
            .clone();
        if info.config.subjects != wanted.subjects {
            return Err(LogError::Invalid(format!(
                "JetStream stream {name} exists with subjects {:?}, not [{all_subjects}]; pick another prefix or stream name",
                info.config.subjects
            )));
        }
        if !info.config.allow_atomic_publish || !info.config.allow_direct {
            // An older snapvault (or a person) made it; turn on what the log needs.
            let mut c = info.config.clone();
            c.allow_atomic_publish = true;
            c.allow_direct = true;
            let updated = js.update_stream(c).await.map_err(|e| {
                unavailable(
                    &name,
                    "enable atomic publish and direct get on the stream",
                    e,
                )
            })?;
            if !updated.config.allow_atomic_publish {
                return Err(LogError::Unavailable(format!(
                    "JetStream stream {name}: the server (nats-server {}) does not support atomic batch publish; the JetStream log needs nats-server 2.12 or newer",
                    client.server_info().version
                )));
            }
        }
        let head = info.state.last_sequence;
        let (head_tx, _) = watch::channel(head);
        let head_tx = Arc::new(head_tx);
        let watcher = tokio::spawn(watch_head_task(
            stream.clone(),
            head_tx.clone(),
            Duration::from_millis(config.head_poll_ms.max(1)),
        ));
        let node = client
            .new_inbox()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(JetStreamLog {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                name,
                prefix: config.prefix.clone(),
                all_subjects,
                clock,
                window: Arc::new(Semaphore::new(config.max_in_flight)),
                config,
                cache: Mutex::new(HashMap::new()),
                head_tx,
                node,
                counter: AtomicU64::new(0),
                watcher,
            }),
        })
    }

    /// The JetStream stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.name
    }

    /// The subject of an entity stream.
    pub fn subject(&self, stream: &str) -> String {
        subject_for(&self.inner.prefix, stream)
    }

    /// The NATS client the log uses.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// The outcome of one fenced publish.
enum Published {
    /// Stored; the stream sequence of the last message.
    Stored(u64),
    /// The fence refused it: the subject moved (maybe by our own earlier attempt).
    Fenced,
}

impl Inner {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    fn cached(&self, stream: &str) -> Option<Last> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .copied()
    }

    /// Remember a (version, sequence) fact if it is newer than what is cached.
    fn remember(&self, stream: &str, last: Last) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.config.max_cached_streams && !cache.contains_key(stream) {
            cache.clear();
        }
        let e = cache.entry(stream.to_string()).or_insert(last);
        if last.version > e.version {
            *e = last;
        }
    }

    fn bump_head(&self, seq: u64) {
        self.head_tx.send_if_modified(|h| {
            if seq > *h {
                *h = seq;
                true
            } else {
                false
            }
        });
    }

    /// Decode the message at `seq` on `stream`'s subject and check it belongs to `stream`.
    fn decode_checked(
        &self,
        stream: &str,
        seq: u64,
        subject: &str,
        headers: &HeaderMap,
        payload: &[u8],
    ) -> Result<Envelope, LogError> {
        let env = record::decode_message(seq, subject, Some(headers), payload)?;
        if env.stream != stream {
            return Err(LogError::Corrupt {
                position: seq,
                reason: format!(
                    "record of stream '{}' found on the subject of '{stream}'",
                    env.stream
                ),
            });
        }
        Ok(env)
    }

    /// The stream's last event, from the cache unless `fresh`, else from the server.
    async fn last_of(&self, stream: &str, subject: &str, fresh: bool) -> Result<Last, LogError> {
        if !fresh && let Some(l) = self.cached(stream) {
            return Ok(l);
        }
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(m) => {
                let env =
                    self.decode_checked(stream, m.sequence, &m.subject, &m.headers, &m.payload)?;
                let last = Last {
                    version: env.version,
                    seq: m.sequence,
                };
                self.remember(stream, last);
                self.bump_head(m.sequence);
                Ok(last)
            }
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                Ok(Last { version: 0, seq: 0 })
            }
            Err(e) => Err(unavailable(&self.name, "read a stream's last event", e)),
        }
    }

    /// The first message on `subject` at or after `seq`, if any.
    async fn next_on_subject(
        &self,
        subject: &str,
        seq: u64,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, LogError> {
        match self
            .stream
            .direct_get_next_for_subject(subject, Some(seq.max(1)))
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(
                &self.name,
                "read the next event of a stream",
                e,
            )),
        }
    }

    /// The stream sequence of `version` of `stream`, or `None` when the stream is shorter.
    async fn seq_of_version(
        &self,
        stream: &str,
        subject: &str,
        version: u64,
    ) -> Result<Option<u64>, LogError> {
        if version <= 1 {
            return Ok(Some(1));
        }
        let (mut lo, mut hi_hint) = (1u64, None);
        if let Some(l) = self.cached(stream) {
            if l.version == version {
                return Ok(Some(l.seq));
            }
            if l.version + 1 == version {
                return Ok(Some(l.seq + 1));
            }
            if l.version < version {
                lo = l.seq + 1;
            } else {
                hi_hint = Some(l.seq);
            }
        }
        let hi_seq = match hi_hint {
            Some(h) => h,
            None => {
                let last = self.last_of(stream, subject, true).await?;
                if version > last.version {
                    return Ok(None);
                }
                if version == last.version {
                    return Ok(Some(last.seq));
                }
                last.seq
            }
        };
        // Versions grow with sequences: find the message of `version` by bisection over
        // "first message on the subject at or after mid".
        let mut hi = hi_seq;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let Some(m) = self.next_on_subject(subject, mid).await? else {
                hi = mid.saturating_sub(1);
                continue;
            };
            let env =
                self.decode_checked(stream, m.sequence, &m.subject, &m.headers, &m.payload)?;
            if env.version == version {
                return Ok(Some(m.sequence));
            }
            if env.version > version {
                if mid == 0 {
                    break;
                }
                hi = mid - 1;
            } else {
                lo = m.sequence + 1;
            }
        }
        Err(LogError::Corrupt {
            position: 0,
            reason: format!("stream '{stream}' has no version {version} below its last event"),
        })
    }

    /// Did an earlier attempt of `append_id` land right after `after`? Then return it.
    async fn find_own(
        &self,
        stream: &str,
        subject: &str,
        after: Last,
        count: u64,
        append_id: &str,
    ) -> Result<Option<Appended>, LogError> {
        let Some(m) = self.next_on_subject(subject, after.seq + 1).await? else {
            return Ok(None);
        };
        let ours = m
            .headers
            .get(APPEND_ID_HEADER)
            .is_some_and(|v| v.as_str() == append_id);
        if !ours {
            return Ok(None);
        }
        let last_position = m.sequence + count - 1;
        let stream_version = after.version + count;
        self.remember(
            stream,
            Last {
                version: stream_version,
                seq: last_position,
            },
        );
        self.bump_head(last_position);
        Ok(Some(Appended {
            first_position: m.sequence,
            last_position,
            stream_version,
        }))
    }

    /// Publish `records` on `subject` fenced on `expected_seq`, retrying lost acks with the
    /// same identity until the append timeout.
    async fn publish_fenced(
        &self,
        subject: &str,
        expected_seq: u64,
        records: &[Bytes],
        append_id: &str,
    ) -> Result<Published, LogError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.config.append_timeout_ms.max(1));
        let mut backoff_ms = RETRY_INITIAL_MS;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = if records.len() == 1 {
                self.publish_one(subject, expected_seq, &records[0], append_id)
                    .await
            } else {
                self.publish_batch(subject, expected_seq, records, append_id, attempt)
                    .await
            };
            match outcome {
                Ok(p) => return Ok(p),
                Err(Attempt::Refused(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    if tokio::time::Instant::now() + Duration::from_millis(backoff_ms) > deadline {
                        return Err(LogError::Unavailable(format!(
                            "JetStream log {}: append to {subject} not acknowledged after {attempt} attempts in {} ms ({why}); it may or may not have been stored",
                            self.name, self.config.append_timeout_ms
                        )));
                    }
                    tracing::debug!(%subject, attempt, %why, "append not acknowledged; retrying");
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(RETRY_MAX_MS);
                }
            }
        }
    }

    async fn publish_one(
        &self,
        subject: &str,
        expected_seq: u64,
        record: &Bytes,
        append_id: &str,
    ) -> Result<Published, Attempt> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", append_id);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected_seq.to_string().as_str(),
        );
        headers.insert(APPEND_ID_HEADER, append_id);
        let msg = jetstream::message::PublishMessage::build()
            .payload(record.clone())
            .headers(headers);
        self.send(subject, msg).await
    }

    async fn publish_batch(
        &self,
        subject: &str,
        expected_seq: u64,
        records: &[Bytes],
        append_id: &str,
        attempt: u32,
    ) -> Result<Published, Attempt> {
        // A fresh batch id per attempt: a half-received earlier attempt is abandoned by the
        // server, never mixed with this one.
        let batch_id = format!("{append_id}.{attempt}");
        let n = records.len();
        for (i, r) in records.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            headers.insert(APPEND_ID_HEADER, append_id);
            if i == 0 {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    expected_seq.to_string().as_str(),
                );
            }
            let payload = r.clone();
            if i + 1 < n {
                self.client
                    .publish_with_headers(subject.to_string(), headers, payload)
                    .await
                    .map_err(|e| Attempt::Retry(format!("send batch message: {e}")))?;
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                let msg = jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .headers(headers);
                return self.send(subject, msg).await;
            }
        }
        Err(Attempt::Refused(LogError::Invalid("empty batch".into())))
    }

    async fn send(
        &self,
        subject: &str,
        msg: jetstream::message::PublishMessage,
    ) -> Result<Published, Attempt> {
        use jetstream::context::PublishErrorKind as K;
        let ack = match self.js.send_publish(subject.to_string(), msg).await {
            Ok(future) => {
                match tokio::time::timeout(
                    Duration::from_millis(self.config.ack_timeout_ms),
                    future.into_future(),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => return Err(Attempt::Retry("ack timed out".into())),
                }
            }
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(Published::Stored(ack.sequence)),
            Err(e) => match e.kind() {
                K::WrongLastSequence => Ok(Published::Fenced),
                K::MaxPayloadExceeded => Err(Attempt::Refused(LogError::Invalid(format!(
                    "an event does not fit the NATS server's max_payload: {e}"
                )))),
                // Lost ack, connection down, JetStream not answering yet (restart): retry.
                K::TimedOut | K::BrokenPipe | K::StreamNotFound | K::MaxAckPending => {
                    Err(Attempt::Retry(e.to_string()))
                }
                K::WrongLastMessageId | K::Other => {
                    let text = e.to_string();
                    // Server-side limits on batches in flight are transient too.
                    if text.contains("inflight") || text.contains("in flight") {
                        Err(Attempt::Retry(text))
                    } else {
                        Err(Attempt::Refused(LogError::Unavailable(format!(
                            "JetStream log {}: publish to {subject} refused: {text}",
                            self.name
                        ))))
                    }
                }
            },
        }
    }

    async fn read_all_page(&self, from: u64, max: usize) -> Result<Vec<Envelope>, LogError> {
        let from = from.max(1);
        let mut out = Vec::with_capacity(max.min(DIRECT_PAGE_EVENTS));
        let mut next = from;
        while out.len() < max {
            let page = direct::batch(
                &self.client,
                &self.name,
                &self.all_subjects,
                next,
                (max - out.len()).min(DIRECT_PAGE_EVENTS),
                self.timeout(),
            )
            .await?;
            let n = page.messages.len();
            for m in page.messages {
                if m.sequence != next {
                    return Err(LogError::Corrupt {
                        position: next,
                        reason: format!(
                            "the log's stream skips from sequence {} to {}",
                            next - 1,
                            m.sequence
                        ),
                    });
                }
                let subject = m
                    .headers
                    .get("Nats-Subject")
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_else(|| self.all_subjects.clone());
                let env =
                    record::decode_message(m.sequence, &subject, Some(&m.headers), &m.payload)?;
                next = m.sequence + 1;
                out.push(env);
            }
            if n == 0 || page.pending == 0 {
                break;
            }
        }
        if let Some(last) = out.last() {
            self.bump_head(last.position);
        }
        Ok(out)
    }
}

/// One publish attempt that did not end in a stored message or a fence answer.
enum Attempt {
    /// Try again with the same identity (the first may have landed).
    Retry(String),
    /// Final: the server refused it for a reason a retry does not change.
    Refused(LogError),
}

/// Follow the stream's last sequence by polling the stream's state (see module docs).
///
/// Polling, not a consumer: a consumer would have the server push a copy of every appended
/// message to every node (measured with `benches/nats_bench.rs` on a 2-core machine: a
/// headers-only ordered consumer held appends at ~0.6× of raw publishes, polling gives
/// ~0.85×), while a poll costs one small request per interval
/// however fast the log grows. This node's own appends move the head at once; another
/// node's within one interval.
async fn watch_head_task(stream: stream::Stream, head_tx: Arc<watch::Sender<u64>>, poll: Duration) {
    let mut backoff = poll;
    loop {
        tokio::time::sleep(backoff).await;
        match stream.get_info().await {
            Ok(info) => {
                backoff = poll;
                let seq = info.state.last_sequence;
                head_tx.send_if_modified(|h| {
                    if seq > *h {
                        *h = seq;
                        true
                    } else {
                        false
                    }
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "JetStream log: head poll failed; retrying");
                backoff = (backoff * 2).min(Duration::from_millis(RETRY_MAX_MS));
            }
        }
    }
}

#[async_trait]
impl EventLog for JetStreamLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError> {
        validate_append(stream, &events)?;
        let s = &self.inner;
        let subject = subject_for(&s.prefix, stream);
        let now_ms = s.clock.now_ms();
        let append_id = format!("{}-{}", s.node, s.counter.fetch_add(1, Ordering::Relaxed));
        let count = events.len() as u64;
        // Back-pressure: wait for a slot of the in-flight window.
        let _permit = s
            .window
            .acquire()
            .await
            .map_err(|_| LogError::Unavailable("JetStream log closed".into()))?;
        let mut fresh = false;
        for _ in 0..MAX_ANY_ATTEMPTS {
            let mut last = s.last_of(stream, &subject, fresh).await?;
            if let ExpectedVersion::Exact(v) = expected
                && v != last.version
            {
                if !fresh {
                    last = s.last_of(stream, &subject, true).await?;
                }
                if v != last.version {
                    return Err(LogError::Conflict {
                        stream: stream.to_string(),
                        expected: v,
                        actual: last.version,
                    });
                }
            }
            let records: Vec<Bytes> = events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    record::encode(&Envelope {
                        stream: stream.to_string(),
                        version: last.version + 1 + i as u64,
                        position: 0,
                        event_type: e.event_type.clone(),
                        schema_version: e.schema_version,
                        time_ms: now_ms,
                        correlation_id: e.correlation_id,
                        causation_id: e.causation_id,
                        payload: e.payload.clone(),
                        crc32c: 0,
                    })
                    .map(Bytes::from)
                })
                .collect::<Result<_, _>>()?;
            match s
                .publish_fenced(&subject, last.seq, &records, &append_id)
                .await?
            {
                Published::Stored(last_seq) => {
                    let stream_version = last.version + count;
                    s.remember(
                        stream,
                        Last {
                            version: stream_version,
                            seq: last_seq,
                        },
                    );
                    s.bump_head(last_seq);
                    return Ok(Appended {
                        first_position: last_seq + 1 - count,
                        last_position: last_seq,
                        stream_version,
                    });
                }
                Published::Fenced => {
                    if let Some(a) = s
                        .find_own(stream, &subject, last, count, &append_id)
                        .await?
                    {
                        return Ok(a);
                    }
                    let truth = s.last_of(stream, &subject, true).await?;
                    if let ExpectedVersion::Exact(v) = expected {
                        return Err(LogError::Conflict {
                            stream: stream.to_string(),
                            expected: v,
                            actual: truth.version,
                        });
                    }
                    fresh = true;
                }
            }
        }
        Err(LogError::Conflict {
            stream: stream.to_string(),
            expected: 0,
            actual: s.last_of(stream, &subject, true).await?.version,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        let s = &self.inner;
        if max_count == 0 || validate_append(stream, &[NewEvent::new("x", 1, vec![])]).is_err() {
            return Ok(Vec::new());
        }
        let subject = subject_for(&s.prefix, stream);
        let from_version = from_version.max(1);
        let Some(mut next_seq) = s.seq_of_version(stream, &subject, from_version).await? else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Envelope> = Vec::with_capacity(max_count.min(DIRECT_PAGE_EVENTS));
        let mut expect = from_version;
        while out.len() < max_count {
            let page = direct::batch(
                &s.client,
                &s.name,
                &subject,
                next_seq,
                (max_count - out.len()).min(DIRECT_PAGE_EVENTS),
                s.timeout(),
            )
            .await?;
            let n = page.messages.len();
            for m in page.messages {
                let env = s.decode_checked(stream, m.sequence, &subject, &m.headers, &m.payload)?;
                if env.version != expect {
                    return Err(LogError::Corrupt {
                        position: m.sequence,
                        reason: format!(
                            "stream '{stream}' has version {} where version {expect} belongs",
                            env.version
                        ),
                    });
                }
                expect += 1;
                next_seq = m.sequence + 1;
                out.push(env);
            }
            if n == 0 || page.pending == 0 {
                break;
            }
        }
        if let Some(last) = out.last() {
            s.remember(
                stream,
                Last {
                    version: last.version,
                    seq: last.position,
                },
            );
            s.bump_head(last.position);
        }
        Ok(out)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        if validate_append(stream, &[NewEvent::new("x", 1, vec![])]).is_err() {
            return Ok(0);
        }
        let subject = subject_for(&self.inner.prefix, stream);
        Ok(self.inner.last_of(stream, &subject, true).await?.version)
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        if max_count == 0 {
            return Ok(Vec::new());
        }
        self.inner.read_all_page(from_position, max_count).await
    }

    async fn head(&self) -> Result<u64, LogError> {
        let info = self
            .inner
            .stream
            .get_info()
            .await
            .map_err(|e| unavailable(&self.inner.name, "read the head", e))?;
        let head = info.state.last_sequence;
        self.inner.bump_head(head);
        Ok(head)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head_tx.subscribe()
    }

    fn subscribe(self: Arc<Self>, from_position: u64) -> Subscription {
        subscribe_ordered(self.inner.clone(), from_position)
    }
}

/// Catch up and tail through an ordered consumer from `from`; after any interruption the
/// consumer is made again at the next position, so the subscription never skips or repeats.
/// A transient failure to (re)create it is yielded as `Unavailable` and ends the stream (the
/// caller subscribes again, as with the generic tail).
fn subscribe_ordered(inner: Arc<Inner>, from: u64) -> Subscription {
    struct Tail {
        inner: Arc<Inner>,
        next: u64,
        messages: Option<consumer::pull::Ordered>,
        failures: u32,
        done: bool,
        /// The client's connection count when the consumer was made: a server that came back
        /// from a restart no longer has the consumer, and the client library only notices
        /// after ~15 s of "consumer not found"; so a reconnect makes the tail resubscribe at
        /// once (from the next position: nothing is skipped or repeated).
        connects: u64,
    }
    /// Consecutive failures to (re)create the consumer before the subscription gives up.
    const MAX_FAILURES: u32 = 8;
    /// How often the tail looks whether the client reconnected while it waits for messages.
    const RECONNECT_CHECK_MS: u64 = 250;
    fn connects(c: &Client) -> u64 {
        c.statistics().connects.load(Ordering::Relaxed)
    }
    let start = Tail {
        connects: connects(&inner.client),
        inner,
        next: from.max(1),
        messages: None,
        failures: 0,
        done: false,
    };
    Box::pin(futures::stream::unfold(start, |mut t| async move {
        if t.done {
            return None;
        }
        loop {
            if t.messages.is_none() {
                let made = t
                    .inner
                    .stream
                    .create_consumer(consumer::pull::OrderedConfig {
                        filter_subject: t.inner.all_subjects.clone(),
                        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: t.next,
                        },
                        ..Default::default()
                    })
                    .await;
                let messages = match made {
                    Ok(c) => c.messages().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match messages {
                    Ok(m) => {
                        t.messages = Some(m);
                        t.connects = connects(&t.inner.client);
                    }
                    Err(e) => {
                        t.failures += 1;
                        if t.failures >= MAX_FAILURES {
                            t.done = true;
                            return Some((Err(unavailable(&t.inner.name, "subscribe", e)), t));
                        }
                        tokio::time::sleep(Duration::from_millis(
                            (RETRY_INITIAL_MS << t.failures).min(RETRY_MAX_MS),
                        ))
                        .await;
                        continue;
                    }
                }
            }
            let Some(messages) = t.messages.as_mut() else {
                continue;
            };
            let next = tokio::select! {
                biased;
                m = messages.next() => Some(m),
                _ = tokio::time::sleep(Duration::from_millis(RECONNECT_CHECK_MS)) => None,
            };
            let Some(next) = next else {
                if connects(&t.inner.client) != t.connects {
                    tracing::debug!(
                        next = t.next,
                        "the NATS client reconnected; resubscribing the log tail"
                    );
                    t.messages = None;
                }
                continue;
            };
            match next {
                Some(Ok(m)) => {
                    t.failures = 0;
                    let seq = match m.info() {
                        Ok(i) => i.stream_sequence,
                        Err(_) => continue,
                    };
                    if seq < t.next {
                        continue; // redelivered after a recreate
                    }
                    if seq > t.next {
                        t.done = true;
                        return Some((
                            Err(LogError::Corrupt {
                                position: t.next,
                                reason: format!(
                                    "the log's stream skips from sequence {} to {seq}",
                                    t.next - 1
                                ),
                            }),
                            t,
                        ));
                    }
                    match record::decode_message(seq, &m.subject, m.headers.as_ref(), &m.payload) {
                        Ok(env) => {
                            t.next = seq + 1;
                            t.inner.bump_head(seq);
                            return Some((Ok(env), t));
                        }
                        Err(e) => {
                            t.done = true;
                            return Some((Err(e), t));
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, next = t.next, "log subscription interrupted; resubscribing");
                    t.messages = None;
                }
                None => t.messages = None,
            }
        }
    }))
}
