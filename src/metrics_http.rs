//! `serve --metrics-addr`: the node's metrics ([`snapvault_actors::metrics`]) over HTTP, for
//! Prometheus or any OpenMetrics scraper. `GET /metrics` answers the text exposition; any
//! other path is 404, any other method 405. One request per connection, bounded in size,
//! time and number of connections at once, so a misbehaving scraper cannot hold the node.
//!
//! A host embedding a `Node` does not need this: it calls [`Client::metrics_text`] and serves
//! the text with its own HTTP stack.

use crate::Client;
use snapvault_events::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest request head read; a scrape request is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A connection that has not sent its request head by then is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// OpenMetrics 1.0 (Prometheus scrapes it natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bind `addr` (e.g. `127.0.0.1:9464`; port 0 picks one) and serve the node's metrics until
/// the returned task is aborted. Returns the address bound.
pub async fn serve_metrics(
    addr: &str,
    client: Client,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let bad = |e: std::io::Error| {
        Error::invalid_argument(format!(
            "--metrics-addr: cannot listen on '{}': {e}",
            addr.escape_debug()
        ))
    };
    let listener = TcpListener::bind(addr).await.map_err(bad)?;
    let bound = listener.local_addr().map_err(bad)?;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let client = client.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &client).await {
                    tracing::debug!(error = %e, "metrics endpoint: request failed");
                }
                drop(permit);
            });
        }
    });
    Ok((bound, task))
}

/// Read one request head and answer it.
async fn answer(mut stream: TcpStream, client: &Client) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_REQUEST_BYTES {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if head.len() > MAX_REQUEST_BYTES {
        (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
        )
    } else if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path != "/metrics" {
        (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_string(),
        )
    } else {
        ("200 OK", CONTENT_TYPE, client.metrics_text().await)
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}
