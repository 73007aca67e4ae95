//! The request-id memory: a retried request (same `Snapvault-Request-Id`) gets the first
//! answer and never acts twice.
//!
//! - With a JetStream log the memory is a KV bucket (`<PREFIX>_REQUESTS`), so it survives a
//!   node restart and is shared by every node serving the prefix. A request first *creates*
//!   its key with a "running" marker (create fails when the key exists, so two nodes cannot
//!   both start it); the marker carries a TTL ([`RequestMemoryConfig::running_ttl_ms`]) so a
//!   node that died mid-request does not block the id forever. The answer then replaces the
//!   marker (compare-and-set on the marker's revision) and lives for the bucket's max age
//!   ([`RequestMemoryConfig::ttl_ms`]). The bucket is bounded in bytes too; the oldest
//!   entries go first.
//! - Otherwise (sled log) it is a bounded in-process map with the same TTLs: retries after a
//!   lost reply are served, a node restart forgets.
//!
//! An id reused for a different op or body is refused (`invalid_argument`), never answered
//! with another request's reply.

use super::wire::ErrorBody;
use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use snapvault_events::Error;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RequestMemoryConfig {
    /// How long an answer is remembered.
    pub ttl_ms: u64,
    /// How long a "running" marker blocks its id when its node never finishes.
    pub running_ttl_ms: u64,
    /// Bytes the KV bucket may hold.
    pub max_bytes: i64,
    /// Entries the in-process memory holds.
    pub max_entries: usize,
    pub replicas: usize,
}

impl Default for RequestMemoryConfig {
    fn default() -> Self {
        RequestMemoryConfig {
            ttl_ms: 3_600_000,
            running_ttl_ms: 900_000,
            max_bytes: 256 << 20,
            max_entries: 10_000,
            replicas: 1,
        }
    }
}

/// A finished request's answer, as it was replied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReply {
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Remembered {
    op: String,
    /// crc32c of the request body: the same id must mean the same request.
    fingerprint: u32,
    answer: Option<StoredReply>,
}

/// What to do with a request that carries an id.
pub enum Claim {
    /// Run it, then `finish` the ticket.
    Run(Ticket),
    /// It ran before: this is its answer.
    Replay(StoredReply),
    /// It is running right now (on this or another node).
    Running,
}

/// The right to finish a claimed request.
pub struct Ticket {
    key: String,
    revision: u64,
    op: String,
    fingerprint: u32,
}

pub enum RequestMemory {
    Kv(Box<kv::Store>),
    Local(Mutex<Local>),
}

pub struct Local {
    entries: BTreeMap<String, (Instant, Remembered)>,
    order: VecDeque<(Instant, String)>,
    ttl: Duration,
    running_ttl: Duration,
    max_entries: usize,
}

fn key(id: &str) -> String {
    format!("req.{id}")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("request-id memory: {what}: {e}"))
}

fn check_same(r: &Remembered, op: &str, fingerprint: u32, id: &str) -> Result<(), Error> {
    if r.op != op || r.fingerprint != fingerprint {
        return Err(Error::invalid_argument(format!(
            "request id '{id}' was already used for a different request ({}); use a new id for a new request",
            r.op
        )));
    }
    Ok(())
}

impl RequestMemory {
    /// The KV bucket `<bucket>` on `js`, created when missing.
    pub async fn kv(
        js: &jetstream::Context,
        bucket: &str,
        config: &RequestMemoryConfig,
    ) -> Result<RequestMemory, Error> {
        let store = match js.get_key_value(bucket).await {
            Ok(s) => s,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    description: "snapvault: answers of requests by request id".into(),
                    history: 1,
                    max_age: Duration::from_millis(config.ttl_ms),
                    max_bytes: config.max_bytes,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: config.replicas.max(1),
                    limit_markers: Some(Duration::from_secs(1)),
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&format!("create KV bucket {bucket}"), e))?,
        };
        Ok(RequestMemory::Kv(Box::new(store)))
    }

    pub fn local(config: &RequestMemoryConfig) -> RequestMemory {
        RequestMemory::Local(Mutex::new(Local {
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            ttl: Duration::from_millis(config.ttl_ms),
            running_ttl: Duration::from_millis(config.running_ttl_ms),
            max_entries: config.max_entries.max(1),
        }))
    }

    pub async fn claim(
        &self,
        id: &str,
        op: &str,
        fingerprint: u32,
        running_ttl: Duration,
    ) -> Result<Claim, Error> {
        let k = key(id);
        match self {
            RequestMemory::Kv(store) => {
                for _ in 0..3 {
                    if let Some(entry) = store
                        .entry(k.clone())
                        .await
                        .map_err(|e| unavailable("read", e))?
                        && entry.operation == kv::Operation::Put
                    {
                        let r: Remembered = rmp_serde::from_slice(&entry.value).map_err(|e| {
                            Error::internal(format!(
                                "request-id memory: entry {k} is unreadable: {e}"
                            ))
                        })?;
                        check_same(&r, op, fingerprint, id)?;
                        return Ok(match r.answer {
                            Some(a) => Claim::Replay(a),
                            None => Claim::Running,
                        });
                    }
                    let marker = rmp_serde::to_vec_named(&Remembered {
                        op: op.to_string(),
                        fingerprint,
                        answer: None,
                    })
                    .map_err(|e| Error::internal(format!("request-id memory: {e}")))?;
                    match store
                        .create_with_ttl(&k, marker.into(), running_ttl.max(Duration::from_secs(1)))
                        .await
                    {
                        Ok(revision) => {
                            return Ok(Claim::Run(Ticket {
                                key: k,
                                revision,
                                op: op.to_string(),
                                fingerprint,
                            }));
                        }
                        // Somebody created it between our read and our create: read again.
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(unavailable("claim", e)),
                    }
                }
                Ok(Claim::Running)
            }
            RequestMemory::Local(m) => {
                let mut l = m.lock().unwrap_or_else(|p| p.into_inner());
                l.expire();
                if let Some((at, r)) = l.entries.get(&k) {
                    check_same(r, op, fingerprint, id)?;
                    match &r.answer {
                        Some(a) => return Ok(Claim::Replay(a.clone())),
                        None if at.elapsed() < l.running_ttl => return Ok(Claim::Running),
                        None => {}
                    }
                }
                let now = Instant::now();
                l.entries.insert(
                    k.clone(),
                    (
                        now,
                        Remembered {
                            op: op.to_string(),
                            fingerprint,
                            answer: None,
                        },
                    ),
                );
                l.order.push_back((now, k.clone()));
                l.bound();
                Ok(Claim::Run(Ticket {
                    key: k,
                    revision: 0,
                    op: op.to_string(),
                    fingerprint,
                }))
            }
        }
    }

    /// Forget a claimed request without an answer (it failed with `unavailable`): a retry
    /// with the same id runs it again.
    pub async fn release(&self, ticket: Ticket) -> Result<(), Error> {
        match self {
            RequestMemory::Kv(store) => store
                .delete_expect_revision(&ticket.key, Some(ticket.revision))
                .await
                .map_err(|e| unavailable("release", e)),
            RequestMemory::Local(m) => {
                let mut l = m.lock().unwrap_or_else(|p| p.into_inner());
                l.entries.remove(&ticket.key);
                Ok(())
            }
        }
    }

    /// Record the answer of a claimed request.
    pub async fn finish(&self, ticket: Ticket, answer: &StoredReply) -> Result<(), Error> {
        let r = Remembered {
            op: ticket.op,
            fingerprint: ticket.fingerprint,
            answer: Some(answer.clone()),
        };
        match self {
            RequestMemory::Kv(store) => {
                let bytes = rmp_serde::to_vec_named(&r)
                    .map_err(|e| Error::internal(format!("request-id memory: {e}")))?;
                store
                    .update(&ticket.key, bytes.into(), ticket.revision)
                    .await
                    .map_err(|e| unavailable("record the answer", e))?;
                Ok(())
            }
            RequestMemory::Local(m) => {
                let mut l = m.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                l.entries.insert(ticket.key.clone(), (now, r));
                l.order.push_back((now, ticket.key));
                l.bound();
                Ok(())
            }
        }
    }
}

impl Local {
    fn expire(&mut self) {
        while let Some((at, k)) = self.order.front().cloned() {
            if at.elapsed() < self.ttl {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&k).is_some_and(|(t, _)| *t == at) {
                self.entries.remove(&k);
            }
        }
    }

    fn bound(&mut self) {
        while self.entries.len() > self.max_entries {
            let Some((at, k)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&k).is_some_and(|(t, _)| *t == at) {
                self.entries.remove(&k);
            }
        }
        // The order queue holds at most two entries per key (claim and finish).
        while self.order.len() > 2 * self.max_entries + 2 {
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: u64) -> StoredReply {
        StoredReply {
            error: None,
            value: serde_json::json!({ "n": n }),
        }
    }

    #[tokio::test]
    async fn local_memory_replays_refuses_reuse_and_is_bounded() {
        let m = RequestMemory::local(&RequestMemoryConfig {
            max_entries: 3,
            ..Default::default()
        });
        let ttl = Duration::from_secs(60);
        let Claim::Run(t) = m.claim("a", "op.x", 1, ttl).await.unwrap() else {
            panic!("first claim must run")
        };
        assert!(matches!(
            m.claim("a", "op.x", 1, ttl).await.unwrap(),
            Claim::Running
        ));
        m.finish(t, &reply(7)).await.unwrap();
        match m.claim("a", "op.x", 1, ttl).await.unwrap() {
            Claim::Replay(r) => assert_eq!(r, reply(7)),
            _ => panic!("must replay"),
        }
        assert!(m.claim("a", "op.y", 1, ttl).await.is_err());
        assert!(m.claim("a", "op.x", 2, ttl).await.is_err());
        for id in ["b", "c", "d", "e"] {
            if let Claim::Run(t) = m.claim(id, "op.x", 1, ttl).await.unwrap() {
                m.finish(t, &reply(1)).await.unwrap();
            }
        }
        // "a" was the oldest: forgotten, so it runs again.
        assert!(matches!(
            m.claim("a", "op.x", 1, ttl).await.unwrap(),
            Claim::Run(_)
        ));
    }
}
