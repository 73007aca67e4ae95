//! The NATS service: every op of an [`OpTable`] on `<prefix>.api.v1.<op>`, discoverable as a
//! NATS micro service v1 (`super::micro`: `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, every reply
//! schema-complete, error replies counted). Each op's subscription is in the queue group `q`,
//! so several nodes serving one prefix share the load.
//!
//! Each request is decoded, checked against the limits, de-duplicated by its request id
//! (`super::requests`), run on the node's client in its own task (at most
//! [`ServiceConfig::max_concurrent`] at once: further requests wait, they are not refused),
//! and answered; any failure — a body that is not msgpack/JSON, a wrong field type, a missing
//! field, an unknown op, an oversized payload, a panic in a handler — is a structured error
//! reply (body `{code, message, details}` plus the `Nats-Service-Error*` headers, counted in
//! `$SRV.STATS`) and the service keeps serving. A subject under `<prefix>.api.v1.` that names
//! no op is answered by a catch-all endpoint with `invalid_argument` (without it the caller
//! would only see "no responders").
//!
//! The endpoints are plain subscriptions rather than async-nats's `service` module because
//! that module's `STATS` lacks `metadata` and it counts errors only for replies whose body it
//! drops (see `super::micro`).
//!
//! [`ServiceHandle::stop`] drains: the endpoints stop taking requests, the requests already
//! taken finish and are answered, then the connection is flushed.

use super::micro::{self, EndpointInfo, Endpoints, Identity, Verbs};
use super::ops::OpTable;
use super::requests::{Claim, RequestMemory, StoredReply};
use super::wire::{self, ErrorBody, Format};
use crate::Client;
use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt};
use snapvault_events::Error;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Subjects are `<prefix>.api.v1.<op>`.
    pub prefix: String,
    /// The micro-service name (`$SRV.*.<name>`): `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Largest request body accepted.
    pub max_request_bytes: usize,
    /// Largest reply body sent (also capped by the server's `max_payload`).
    pub max_reply_bytes: usize,
    /// Requests run at once.
    pub max_concurrent: usize,
    /// How long a retry waits for a request with the same id that is still running.
    pub running_wait_ms: u64,
    /// How long a claimed request id stays "running" if its node dies (see `requests`).
    pub running_ttl_ms: u64,
    /// How long `stop` waits for requests in flight.
    pub drain_timeout_ms: u64,
    /// Service metadata in every `$SRV` reply (`serve` puts the node id here so an operator
    /// can tell the instances apart); `api` (`<prefix>.api.v1`) is always added.
    pub metadata: BTreeMap<String, String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            prefix: "snapvault".into(),
            name: "snapvault".into(),
            max_request_bytes: 256 * 1024,
            max_reply_bytes: 8 << 20,
            max_concurrent: 64,
            running_wait_ms: 10_000,
            running_ttl_ms: 900_000,
            drain_timeout_ms: 60_000,
            metadata: BTreeMap::new(),
        }
    }
}

/// Queue group of the catch-all endpoint that answers unknown ops.
pub const UNKNOWN_OP_QUEUE_GROUP: &str = "snapvault-unknown-op";
/// Name of the catch-all endpoint in `$SRV.INFO` / `$SRV.STATS`.
pub const UNKNOWN_OP_ENDPOINT: &str = "unknown_op";

/// `<prefix>.api.v1`.
pub fn api_prefix(prefix: &str) -> String {
    format!("{prefix}.api.v1")
}

/// The micro-service endpoint name of an op: `collection.create` → `collection_create`.
pub fn endpoint_name(op: &str) -> String {
    op.replace('.', "_")
}

struct Shared {
    nats: async_nats::Client,
    client: Client,
    ops: OpTable,
    memory: RequestMemory,
    config: ServiceConfig,
    api: String,
    max_reply_bytes: usize,
    endpoints: Arc<Endpoints>,
    /// Index of the catch-all endpoint in `endpoints` (the ops come first, in name order).
    catch_all: usize,
}

/// A running service.
pub struct ServiceHandle {
    verbs: Verbs,
    nats: async_nats::Client,
    stop_tx: watch::Sender<bool>,
    dispatcher: tokio::task::JoinHandle<()>,
    id: String,
}

/// One request as the dispatcher gets it: the endpoint it came in on and the message.
type Incoming = (usize, async_nats::Message);

/// Start serving `ops` for `client` on `nats`.
pub async fn start(
    nats: async_nats::Client,
    client: Client,
    ops: OpTable,
    memory: RequestMemory,
    config: ServiceConfig,
) -> Result<ServiceHandle, Error> {
    snapvault_events::jetstream::validate_prefix(&config.prefix).map_err(Error::from)?;
    let name_ok = !config.name.is_empty()
        && config
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(Error::invalid_argument(format!(
            "service name '{}' must be 1 or more characters of [A-Za-z0-9_-] (NATS micro spec)",
            config.name.escape_debug()
        )));
    }
    let api = api_prefix(&config.prefix);
    // A fresh nuid per instance (the inbox's last token), as the micro libraries use.
    let id = nats
        .new_inbox()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut metadata = config.metadata.clone();
    metadata.insert("api".into(), api.clone());
    let identity = Identity {
        name: config.name.clone(),
        id: id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: format!(
            "snapvault {}: snapshots, restore and GC; requests on {api}.<op>",
            env!("CARGO_PKG_VERSION")
        ),
        metadata,
        started: micro::rfc3339_micros(std::time::SystemTime::now()),
    };

    let mut infos = Vec::with_capacity(ops.len() + 1);
    let mut subscriptions: Vec<futures::stream::BoxStream<'static, Incoming>> =
        Vec::with_capacity(ops.len() + 1);
    for (index, op) in ops.names().enumerate() {
        let subject = format!("{api}.{op}");
        let sub = nats
            .queue_subscribe(subject.clone(), micro::DEFAULT_QUEUE_GROUP.into())
            .await
            .map_err(|e| Error::unavailable(format!("cannot add endpoint {subject}: {e}")))?;
        subscriptions.push(sub.map(move |m| (index, m)).boxed());
        infos.push(EndpointInfo {
            name: endpoint_name(op),
            subject,
            queue_group: micro::DEFAULT_QUEUE_GROUP.into(),
            metadata: BTreeMap::from([("op".to_string(), op.to_string())]),
        });
    }
    // Its own queue group: NATS picks ONE member per queue group among all matching
    // subscriptions, so in the ops' group it would steal (and drop) their requests.
    let catch_all = infos.len();
    let subject = format!("{api}.>");
    let sub = nats
        .queue_subscribe(subject.clone(), UNKNOWN_OP_QUEUE_GROUP.into())
        .await
        .map_err(|e| Error::unavailable(format!("cannot add endpoint {subject}: {e}")))?;
    subscriptions.push(sub.map(move |m| (catch_all, m)).boxed());
    infos.push(EndpointInfo {
        name: UNKNOWN_OP_ENDPOINT.into(),
        subject,
        queue_group: UNKNOWN_OP_QUEUE_GROUP.into(),
        metadata: BTreeMap::from([(
            "purpose".to_string(),
            "answers a subject that names no op with invalid_argument".to_string(),
        )]),
    });
    let endpoints = Arc::new(Endpoints::new(infos));
    let verbs = Verbs::start(nats.clone(), identity, endpoints.clone()).await?;

    let max_payload = nats.server_info().max_payload;
    let max_reply_bytes = config
        .max_reply_bytes
        .min(max_payload.saturating_sub(4096).max(1024));
    let shared = Arc::new(Shared {
        nats: nats.clone(),
        client,
        ops,
        memory,
        api,
        max_reply_bytes,
        config,
        endpoints,
        catch_all,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(dispatch(
        shared,
        futures::stream::select_all(subscriptions),
        stop_rx,
    ));
    Ok(ServiceHandle {
        verbs,
        nats,
        stop_tx,
        dispatcher,
        id,
    })
}

impl ServiceHandle {
    /// This instance's micro-service id (`$SRV.<VERB>.<name>.<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stop taking requests, finish and answer the ones in flight, flush.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.dispatcher.await;
        self.verbs.stop();
        let _ = self.nats.flush().await;
    }
}

async fn dispatch(
    shared: Arc<Shared>,
    mut requests: futures::stream::SelectAll<futures::stream::BoxStream<'static, Incoming>>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_concurrent.max(1)));
    let mut running = JoinSet::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = stopped(&mut stop) => None,
            r = requests.next() => r,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        let Some((endpoint, message)) = next else {
            break;
        };
        let received = Instant::now();
        let op = message
            .subject
            .as_str()
            .strip_prefix(&shared.api)
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or_default()
            .to_string();
        // Known ops also reach the catch-all subscription: only its copy of an unknown op
        // gets an answer there (and is counted there).
        if endpoint == shared.catch_all && shared.ops.get(&op).is_some() {
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let s = shared.clone();
        // Every line the request logs carries its op and subject.
        let span = tracing::info_span!("nats_request", op = %op, subject = %message.subject);
        running.spawn(
            async move {
                let _permit = permit;
                respond(&s, endpoint, &op, message, received).await;
            }
            .instrument(span),
        );
    }
    // Drain: every request taken is answered before the service stops. Dropping the
    // subscriptions unsubscribes them, so no new request comes to this node.
    drop(requests);
    let drain = Duration::from_millis(shared.config.drain_timeout_ms);
    if tokio::time::timeout(drain, async {
        while running.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            left = running.len(),
            "requests still running after the drain timeout; abandoning them"
        );
        running.abort_all();
    }
}

async fn respond(
    s: &Shared,
    endpoint: usize,
    op: &str,
    message: async_nats::Message,
    received: Instant,
) {
    tracing::debug!(%op, "request");
    let format = Format::of(message.headers.as_ref());
    let request_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(wire::REQUEST_ID))
        .map(|v| v.as_str().to_string());
    let (reply, replayed) = answer(s, op, format, &message.payload, request_id.as_deref()).await;
    let (mut body, mut error) = match encode_reply(format, &reply) {
        Ok(b) => (b, reply.error.clone()),
        Err(e) => error_body(format, &ErrorBody::of(&e).with("op", op)),
    };
    if body.len() > s.max_reply_bytes {
        let e = ErrorBody::of(&Error::failed_precondition(format!(
            "the reply of '{op}' is {} bytes, over the limit of {} bytes; ask for less (a page, a filter)",
            body.len(),
            s.max_reply_bytes
        )))
        .with("op", op)
        .with("limit_bytes", s.max_reply_bytes.to_string());
        (body, error) = error_body(format, &e);
    }
    let mut headers = HeaderMap::new();
    headers.insert(wire::CONTENT_TYPE, format.content_type());
    if replayed {
        headers.insert(wire::REPLAYED, "true");
    }
    let error_line = error.as_ref().map(|e| one_line(&e.message));
    if let (Some(e), Some(line)) = (&error, &error_line) {
        headers.insert(wire::ERROR_CODE, e.code.as_str());
        headers.insert(
            wire::SERVICE_ERROR_CODE,
            wire::status_number(e.code).to_string().as_str(),
        );
        headers.insert(wire::SERVICE_ERROR, line.as_str());
    }
    tracing::debug!(%op, error = ?error.as_ref().map(|e| e.code), replayed, "reply");
    match message.reply {
        Some(to) => {
            if let Err(e) = s.nats.publish_with_headers(to, headers, body.into()).await {
                tracing::warn!(%op, error = %e, "could not send a reply");
            }
        }
        None => tracing::debug!(%op, "request without a reply subject: ran, not answered"),
    }
    // Every structured error reply counts, as the micro libraries count theirs.
    let counted = error.as_ref().zip(error_line.as_deref());
    s.endpoints.record(
        endpoint,
        received.elapsed(),
        counted.map(|(e, line)| (e.code.as_str(), line)),
    );
    // The node's metrics too; every unknown op under one label, so a client cannot grow
    // the label set without bound.
    let op_label = if endpoint == s.catch_all {
        UNKNOWN_OP_ENDPOINT
    } else {
        op
    };
    s.client
        .metrics()
        .nats_request(op_label, error.as_ref().map_or("ok", |e| e.code.as_str()));
}

fn one_line(s: &str) -> String {
    let line: String = s.replace(['\r', '\n'], " ");
    line.chars().take(512).collect()
}

fn encode_reply(format: Format, reply: &StoredReply) -> Result<Vec<u8>, Error> {
    match &reply.error {
        Some(e) => wire::encode(format, e),
        None => wire::encode(format, &reply.value),
    }
}

fn error_body(format: Format, e: &ErrorBody) -> (Vec<u8>, Option<ErrorBody>) {
    let body = wire::encode(format, e).unwrap_or_else(|_| e.message.clone().into_bytes());
    (body, Some(e.clone()))
}

fn failed(e: Error, op: &str, request_id: Option<&str>) -> StoredReply {
    let mut body = ErrorBody::of(&e).with("op", op);
    if let Some(id) = request_id {
        body = body.with("request_id", id);
    }
    StoredReply {
        error: Some(body),
        value: serde_json::Value::Null,
    }
}

/// The reply to one request, and whether it came from the request-id memory.
async fn answer(
    s: &Shared,
    op: &str,
    format: Format,
    payload: &[u8],
    request_id: Option<&str>,
) -> (StoredReply, bool) {
    if payload.len() > s.config.max_request_bytes {
        let mut r = failed(
            Error::invalid_argument(format!(
                "the request body of '{op}' is {} bytes, over the limit of {} bytes",
                payload.len(),
                s.config.max_request_bytes
            )),
            op,
            request_id,
        );
        if let Some(e) = r.error.as_mut() {
            e.details
                .insert("limit_bytes".into(), s.config.max_request_bytes.to_string());
        }
        return (r, false);
    }
    let Some(handler) = s.ops.get(op).cloned() else {
        let known: Vec<&str> = s.ops.names().collect();
        return (
            failed(
                Error::invalid_argument(format!(
                    "unknown op '{}' on {}; known ops: {}",
                    op.escape_debug(),
                    s.api,
                    known.join(", ")
                )),
                op,
                request_id,
            ),
            false,
        );
    };
    let run = |body: bytes::Bytes| {
        let (client, handler) = (s.client.clone(), handler.clone());
        async move {
            // A panicking handler is a bug, but it must not take the service down nor leave
            // the caller waiting: it becomes an `internal` reply.
            match std::panic::AssertUnwindSafe(handler(client, format, body))
                .catch_unwind()
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::internal(format!(
                    "op '{op}' failed unexpectedly (a bug: see the node's log)"
                ))),
            }
        }
    };
    let body = bytes::Bytes::copy_from_slice(payload);
    let Some(id) = request_id else {
        return (to_reply(run(body).await, op, None), false);
    };
    if let Err(e) = wire::check_request_id(id) {
        return (failed(e, op, None), false);
    }
    let fingerprint = crc32c::crc32c(payload);
    let running_ttl = Duration::from_millis(s.config.running_ttl_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(s.config.running_wait_ms);
    loop {
        match s.memory.claim(id, op, fingerprint, running_ttl).await {
            Err(e) => return (failed(e, op, Some(id)), false),
            Ok(Claim::Replay(r)) => return (r, true),
            Ok(Claim::Run(ticket)) => {
                let reply = to_reply(run(body).await, op, Some(id));
                let transient = reply
                    .error
                    .as_ref()
                    .is_some_and(|e| e.code == snapvault_events::ErrorCode::Unavailable);
                if transient {
                    // Not remembered: the retry runs again (see `requests`).
                    if let Err(e) = s.memory.release(ticket).await {
                        tracing::warn!(%op, request_id = id, error = %e, "claim not released");
                    }
                    return (reply, false);
                }
                if let Err(e) = s.memory.finish(ticket, &reply).await {
                    tracing::warn!(%op, request_id = id, error = %e, "answer not remembered; a retry of this id will wait for the running marker to expire");
                }
                return (reply, false);
            }
            Ok(Claim::Running) => {
                if tokio::time::Instant::now() >= deadline {
                    return (
                        failed(
                            Error::unavailable(format!(
                                "request '{id}' is still running (on this or another node); retry later with the same id to get its answer"
                            )),
                            op,
                            Some(id),
                        ),
                        false,
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn to_reply(r: Result<serde_json::Value, Error>, op: &str, id: Option<&str>) -> StoredReply {
    match r {
        Ok(value) => StoredReply { error: None, value },
        Err(e) => failed(e, op, id),
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
