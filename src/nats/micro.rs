//! The NATS micro-service protocol v1 (ADR-32), implemented on plain subscriptions: the
//! discovery verbs `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`, each on its three subjects
//! (`$SRV.<VERB>`, `$SRV.<VERB>.<name>`, `$SRV.<VERB>.<name>.<id>`), and the per-endpoint
//! counters `STATS` reports.
//!
//! Why not async-nats's `service` module: its `STATS` reply has no top-level `metadata`
//! (nats-py's `ServiceStats.from_dict` raises `KeyError`), and it counts an error only when a
//! handler answers through `Request::respond(Err(..))`, which sends the headers but drops the
//! body — and our callers rely on the structured error body `{code, message, details}`. Here
//! every reply is schema-complete and every structured error reply counts: `num_errors` goes
//! up and `last_error` becomes `"<code>: <message>"`.
//!
//! Every instance answers every verb (plain subscriptions, no queue group), as the spec asks:
//! a `$SRV.PING` from a client gathers one reply per running node.

use async_nats::Subscriber;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use snapvault_events::Error;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const PING_RESPONSE: &str = "io.nats.micro.v1.ping_response";
pub const INFO_RESPONSE: &str = "io.nats.micro.v1.info_response";
pub const STATS_RESPONSE: &str = "io.nats.micro.v1.stats_response";
/// The queue group of the API endpoints (the micro libraries' default), so several nodes
/// serving one prefix share the requests: NATS gives each request to one member.
pub const DEFAULT_QUEUE_GROUP: &str = "q";

/// `PING` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    pub metadata: BTreeMap<String, String>,
}

/// One endpoint in an `INFO` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub name: String,
    pub subject: String,
    pub queue_group: String,
    pub metadata: BTreeMap<String, String>,
}

/// `INFO` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    pub metadata: BTreeMap<String, String>,
    pub description: String,
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint in a `STATS` reply. Times are nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub name: String,
    pub subject: String,
    pub queue_group: String,
    pub num_requests: u64,
    pub num_errors: u64,
    /// `"<code>: <message>"` of the last error reply, `""` before the first.
    pub last_error: String,
    pub processing_time: u64,
    pub average_processing_time: u64,
    /// Always present (nats-py reads `data["data"]`): an empty object, we have no extra
    /// per-endpoint statistics.
    pub data: serde_json::Value,
}

/// `STATS` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 in UTC with microseconds (`2024-06-01T12:00:00.123456Z`): the fixed-width
    /// form every client parses (nats-py insists on the fraction).
    pub started: String,
    pub endpoints: Vec<EndpointStats>,
}

/// Who this service instance is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    /// Unique per instance (each `start` of the service).
    pub id: String,
    pub version: String,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    pub started: String,
}

#[derive(Debug, Clone, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    last_error: String,
    processing_ns: u64,
}

/// The endpoints of one instance and their counters.
#[derive(Debug)]
pub struct Endpoints {
    info: Vec<EndpointInfo>,
    counters: Mutex<Vec<Counters>>,
}

impl Endpoints {
    pub fn new(info: Vec<EndpointInfo>) -> Endpoints {
        let counters = Mutex::new(vec![Counters::default(); info.len()]);
        Endpoints { info, counters }
    }

    pub fn info(&self) -> &[EndpointInfo] {
        &self.info
    }

    /// Count one answered request of endpoint `index`: how long it took and, for an error
    /// reply, its code and message.
    pub fn record(&self, index: usize, elapsed: Duration, error: Option<(&str, &str)>) {
        let mut all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = all.get_mut(index) else {
            return;
        };
        c.requests += 1;
        c.processing_ns = c
            .processing_ns
            .saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        if let Some((code, message)) = error {
            c.errors += 1;
            c.last_error = format!("{code}: {message}");
        }
    }

    pub fn stats(&self) -> Vec<EndpointStats> {
        let all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        self.info
            .iter()
            .zip(all.iter())
            .map(|(i, c)| EndpointStats {
                name: i.name.clone(),
                subject: i.subject.clone(),
                queue_group: i.queue_group.clone(),
                num_requests: c.requests,
                num_errors: c.errors,
                last_error: c.last_error.clone(),
                processing_time: c.processing_ns,
                average_processing_time: c.processing_ns.checked_div(c.requests).unwrap_or(0),
                data: serde_json::Value::Object(Default::default()),
            })
            .collect()
    }
}

pub fn ping(id: &Identity) -> PingResponse {
    PingResponse {
        kind: PING_RESPONSE.into(),
        name: id.name.clone(),
        id: id.id.clone(),
        version: id.version.clone(),
        metadata: id.metadata.clone(),
    }
}

pub fn info(id: &Identity, endpoints: &Endpoints) -> InfoResponse {
    InfoResponse {
        kind: INFO_RESPONSE.into(),
        name: id.name.clone(),
        id: id.id.clone(),
        version: id.version.clone(),
        metadata: id.metadata.clone(),
        description: id.description.clone(),
        endpoints: endpoints.info().to_vec(),
    }
}

pub fn stats(id: &Identity, endpoints: &Endpoints) -> StatsResponse {
    StatsResponse {
        kind: STATS_RESPONSE.into(),
        name: id.name.clone(),
        id: id.id.clone(),
        version: id.version.clone(),
        metadata: id.metadata.clone(),
        started: id.started.clone(),
        endpoints: endpoints.stats(),
    }
}

/// The three subjects of a verb: `$SRV.<VERB>`, `$SRV.<VERB>.<name>`, `$SRV.<VERB>.<name>.<id>`.
pub fn verb_subjects(verb: &str, name: &str, id: &str) -> [String; 3] {
    [
        format!("$SRV.{verb}"),
        format!("$SRV.{verb}.{name}"),
        format!("$SRV.{verb}.{name}.{id}"),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Ping,
    Info,
    Stats,
}

/// Answers the discovery verbs until aborted.
pub struct Verbs {
    task: tokio::task::JoinHandle<()>,
}

impl Verbs {
    /// Subscribe to the nine verb subjects and answer them from a task.
    pub async fn start(
        nats: async_nats::Client,
        identity: Identity,
        endpoints: Arc<Endpoints>,
    ) -> Result<Verbs, Error> {
        let mut subs: Vec<futures::stream::BoxStream<'static, (Verb, async_nats::Message)>> =
            Vec::new();
        for (verb, word) in [
            (Verb::Ping, "PING"),
            (Verb::Info, "INFO"),
            (Verb::Stats, "STATS"),
        ] {
            for subject in verb_subjects(word, &identity.name, &identity.id) {
                let sub: Subscriber = nats.subscribe(subject.clone()).await.map_err(|e| {
                    Error::unavailable(format!("cannot subscribe to {subject}: {e}"))
                })?;
                subs.push(sub.map(move |m| (verb, m)).boxed());
            }
        }
        let mut all = futures::stream::select_all(subs);
        let task = tokio::spawn(async move {
            while let Some((verb, msg)) = all.next().await {
                let Some(reply) = msg.reply else { continue };
                let body = match verb {
                    Verb::Ping => serde_json::to_vec(&ping(&identity)),
                    Verb::Info => serde_json::to_vec(&info(&identity, &endpoints)),
                    Verb::Stats => serde_json::to_vec(&stats(&identity, &endpoints)),
                };
                match body {
                    Ok(body) => {
                        if let Err(e) = nats.publish(reply, body.into()).await {
                            tracing::debug!(error = %e, ?verb, "micro-service verb not answered");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, ?verb, "cannot encode a verb reply"),
                }
            }
        });
        Ok(Verbs { task })
    }

    /// Stop answering (dropping the subscriptions unsubscribes them).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// `t` as RFC 3339 in UTC with microseconds, without a date library (Howard Hinnant's
/// days-to-civil conversion).
pub fn rfc3339_micros(t: SystemTime) -> String {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let (year, month, day, hour, minute, second) = crate::views::civil_utc(since.as_secs());
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:06}Z",
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        assert_eq!(
            rfc3339_micros(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_717_243_200_123_456);
        assert_eq!(rfc3339_micros(t), "2024-06-01T12:00:00.123456Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_micros(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn stats_count_requests_errors_and_times() {
        let e = Endpoints::new(vec![EndpointInfo {
            name: "a_b".into(),
            subject: "p.api.v1.a.b".into(),
            queue_group: DEFAULT_QUEUE_GROUP.into(),
            metadata: BTreeMap::new(),
        }]);
        e.record(0, Duration::from_nanos(300), None);
        e.record(
            0,
            Duration::from_nanos(100),
            Some(("not_found", "no such thing")),
        );
        e.record(7, Duration::from_nanos(100), None);
        let s = e.stats();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].num_requests, s[0].num_errors), (2, 1));
        assert_eq!(s[0].last_error, "not_found: no such thing");
        assert_eq!(
            (s[0].processing_time, s[0].average_processing_time),
            (400, 200)
        );
        let v = serde_json::to_value(&s[0]).unwrap();
        for key in [
            "name",
            "subject",
            "queue_group",
            "num_requests",
            "num_errors",
            "last_error",
            "processing_time",
            "average_processing_time",
            "data",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
    }
}
