//! snapvault's vocabulary and its log (design §1–3).
//!
//! - [`envelope`]: what the log stores around each event, checksummed.
//! - [`log`]: the `EventLog` contract; [`memory`], [`sled_log`] and [`jetstream`] implement it;
//!   [`conformance`] checks any implementation.
//! - [`codec`]: typed domain events over envelopes, with schema versions.
//! - [`domain`]: commands and events of every entity.
//! - [`clock`], [`ids`], [`validate`], [`error`]: the small pieces everything shares.

pub mod backoff;
pub mod clock;
pub mod codec;
pub mod conformance;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod jetstream;
pub mod log;
pub mod memory;
pub mod sled_log;
pub mod sled_repair;
pub mod sled_watermark;
pub mod validate;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, TokioClock};
pub use envelope::{Envelope, NewEvent};
pub use error::{Error, ErrorCode, LogError};
pub use jetstream::{JetStreamLog, JetStreamLogConfig};
pub use log::{Appended, EventLog, ExpectedVersion, Subscription};
pub use memory::MemoryLog;
pub use sled_log::SledLog;
