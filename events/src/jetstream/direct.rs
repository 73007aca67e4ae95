//! Batched direct gets (`$JS.API.DIRECT.GET.<stream>` with `batch`, server ≥ 2.11): up to N
//! messages of one subject from a sequence on, streamed to an inbox and closed by an
//! end-of-batch status. One request per page instead of one per event is what makes an
//! entity's replay cost a round trip, not a round trip per event.

use crate::error::LogError;
use async_nats::{Client, HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use std::time::Duration;

/// One stored message as a direct get returns it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// What one batch returned, and how many matching messages are left after it.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<Stored>,
    pub pending: u64,
}

#[derive(Serialize)]
struct Request<'a> {
    seq: u64,
    next_by_subj: &'a str,
    batch: usize,
    max_bytes: usize,
}

/// The largest page one batch asks for.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name).and_then(|v| v.as_str().parse().ok())
}

/// Messages on `subject` with sequence ≥ `from_seq`, at most `max` (and about
/// [`MAX_BATCH_BYTES`]).
pub async fn batch(
    client: &Client,
    stream: &str,
    subject: &str,
    from_seq: u64,
    max: usize,
    timeout: Duration,
) -> Result<Batch, LogError> {
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        LogError::Unavailable(format!("JetStream log {stream}: {what}: {e}"))
    };
    let body = serde_json::to_vec(&Request {
        seq: from_seq.max(1),
        next_by_subj: subject,
        batch: max.max(1),
        max_bytes: MAX_BATCH_BYTES,
    })
    .map_err(|e| LogError::Invalid(format!("cannot encode a direct get: {e}")))?;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable("subscribe for a direct get", &e))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(body),
        )
        .await
        .map_err(|e| unavailable("send a direct get", &e))?;
    let mut out = Batch::default();
    loop {
        let msg = match tokio::time::timeout(timeout, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(unavailable("direct get", &"the subscription closed")),
            Err(_) => {
                return Err(unavailable(
                    "direct get",
                    &format!("no answer in {timeout:?}"),
                ));
            }
        };
        match msg.status {
            None | Some(StatusCode::OK) => {
                let headers = msg.headers.unwrap_or_default();
                let sequence = header_u64(&headers, "Nats-Sequence").ok_or_else(|| {
                    LogError::Unavailable(format!(
                        "JetStream log {stream}: a direct get answer has no Nats-Sequence"
                    ))
                })?;
                out.pending = header_u64(&headers, "Nats-Num-Pending").unwrap_or(0);
                out.messages.push(Stored {
                    sequence,
                    headers,
                    payload: msg.payload,
                });
            }
            // 204 EOB: the batch is complete.
            Some(s) if s.as_u16() == 204 => {
                if let Some(h) = &msg.headers {
                    out.pending = header_u64(h, "Nats-Num-Pending").unwrap_or(0);
                }
                break;
            }
            // Nothing at or after `from_seq` on the subject.
            Some(StatusCode::NOT_FOUND) => {
                out.pending = 0;
                break;
            }
            Some(status) => {
                let why = msg.description.unwrap_or_default();
                return Err(unavailable("direct get", &format!("status {status} {why}")));
            }
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}
