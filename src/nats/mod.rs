//! snapvault as a NATS citizen (design §7, `docs/nats-api.md`):
//!
//! - [`connect`]: URL + credentials + TLS → a NATS connection.
//! - [`wire`]: bodies (msgpack / JSON), headers, the error body.
//! - [`ops`]: the table of API operations, one file per group.
//! - [`requests`]: the request-id memory (KV bucket, or in process).
//! - [`service`]: the micro service answering `<prefix>.api.v1.<op>`.
//! - [`micro`]: the NATS micro-service protocol v1 (`$SRV.PING/INFO/STATS`, endpoint stats).
//! - [`publisher`]: every committed event on `<prefix>.events.v1.<kind>.<id>`.
//! - [`remote`]: the typed client over the API (the CLI's remote mode).
//! - [`remote_jobs`]: its restore and external-refresh operations (bounded waits in a loop).

pub mod connect;
pub mod micro;
pub mod ops;
pub mod publisher;
pub mod remote;
pub mod remote_jobs;
pub mod requests;
pub mod service;
pub mod wire;

pub use connect::{NatsOptions, connect};
pub use ops::OpTable;
pub use remote::RemoteClient;
pub use service::{ServiceConfig, ServiceHandle};
