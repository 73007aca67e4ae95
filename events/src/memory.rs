//! In-memory `EventLog`: for decider tests, the simulator (wrapped by its fault injector) and
//! as the reference the other backends are compared with.

use crate::clock::SharedClock;
use crate::envelope::{Envelope, NewEvent, validate_append};
use crate::error::LogError;
use crate::log::{Appended, EventLog, ExpectedVersion};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Default)]
struct Inner {
    /// Every event, indexed by `position - 1`.
    events: Vec<Envelope>,
    /// For each stream, the positions of its events, indexed by `version - 1`.
    /// A HashMap is fine here: it is never iterated, only looked up.
    streams: HashMap<String, Vec<u64>>,
}

/// An `EventLog` kept in memory. Cloning shares the same log.
#[derive(Clone)]
pub struct MemoryLog {
    inner: Arc<Mutex<Inner>>,
    clock: SharedClock,
    head_tx: Arc<watch::Sender<u64>>,
}

impl MemoryLog {
    pub fn new(clock: SharedClock) -> Self {
        let (head_tx, _) = watch::channel(0);
        MemoryLog {
            inner: Arc::new(Mutex::new(Inner::default())),
            clock,
            head_tx: Arc::new(head_tx),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, LogError> {
        self.inner
            .lock()
            .map_err(|_| LogError::Unavailable("memory log mutex poisoned".into()))
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError> {
        validate_append(stream, &events)?;
        let now_ms = self.clock.now_ms();
        let mut inner = self.lock()?;
        let actual = inner.streams.get(stream).map_or(0, |v| v.len() as u64);
        if let ExpectedVersion::Exact(expected) = expected
            && expected != actual
        {
            return Err(LogError::Conflict {
                stream: stream.to_string(),
                expected,
                actual,
            });
        }
        let first_position = inner.events.len() as u64 + 1;
        let mut positions = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let position = first_position + i as u64;
            positions.push(position);
            inner.events.push(Envelope {
                stream: stream.to_string(),
                version: actual + 1 + i as u64,
                position,
                event_type: e.event_type,
                schema_version: e.schema_version,
                time_ms: now_ms,
                correlation_id: e.correlation_id,
                causation_id: e.causation_id,
                payload: e.payload,
                crc32c: 0,
            });
        }
        let count = positions.len() as u64;
        inner
            .streams
            .entry(stream.to_string())
            .or_default()
            .extend(positions);
        let last_position = first_position + count - 1;
        drop(inner);
        self.head_tx.send_replace(last_position);
        Ok(Appended {
            first_position,
            last_position,
            stream_version: actual + count,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        let inner = self.lock()?;
        let Some(positions) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let from = from_version.max(1) as usize - 1;
        Ok(positions
            .iter()
            .skip(from)
            .take(max_count)
            .map(|p| inner.events[*p as usize - 1].clone())
            .collect())
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        Ok(self
            .lock()?
            .streams
            .get(stream)
            .map_or(0, |v| v.len() as u64))
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        let inner = self.lock()?;
        let from = from_position.max(1) as usize - 1;
        Ok(inner
            .events
            .iter()
            .skip(from)
            .take(max_count)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<u64, LogError> {
        Ok(self.lock()?.events.len() as u64)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(|| async {
            Arc::new(MemoryLog::new(Arc::new(ManualClock::new(1_000)))) as Arc<dyn EventLog>
        })
        .await;
        crate::conformance::run_shared(|| async {
            let log = MemoryLog::new(Arc::new(ManualClock::new(1_000)));
            (
                Arc::new(log.clone()) as Arc<dyn EventLog>,
                Arc::new(log) as Arc<dyn EventLog>,
            )
        })
        .await;
    }
}
