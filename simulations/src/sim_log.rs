//! `SimLog`: the real in-memory log behind a fault injector.
//!
//! What it injects, and why each matters:
//! - an append refused before it is written (`Unavailable`, nothing durable): the plain
//!   failure every caller must survive;
//! - an append written and then reported as `Unavailable`: the **ambiguous ack** of a
//!   networked log (the reply was lost). The contract (see `snapvault_events::log`) says
//!   callers must re-read before retrying; an actor that assumed "failed means not written"
//!   would apply the batch twice or lose it, and the checker's replay comparison catches that;
//! - failed reads (`read_stream`, `read_all`, `stream_version`, `head`): an actor must fail to
//!   load cleanly and load again later;
//! - latency and bare yields before calls, so concurrent tasks interleave differently per seed.
//!
//! The log itself is a `MemoryLog` that survives node crashes; the checker reads it directly
//! (fault-free) through [`SimLog::inner`].

use crate::faults::{FaultInjector, Site, delay};
use async_trait::async_trait;
use snapvault_events::{
    Appended, Envelope, EventLog, ExpectedVersion, LogError, MemoryLog, NewEvent,
};
use std::sync::Arc;
use tokio::sync::watch;

pub struct SimLog {
    inner: MemoryLog,
    faults: Arc<FaultInjector>,
}

impl SimLog {
    pub fn new(inner: MemoryLog, faults: Arc<FaultInjector>) -> SimLog {
        SimLog { inner, faults }
    }

    /// The log without faults: what is really durable.
    pub fn inner(&self) -> &MemoryLog {
        &self.inner
    }

    async fn before_read(&self, what: &str) -> Result<(), LogError> {
        delay(&self.faults, Site::LogLatency, Some(Site::LogYield)).await;
        if self.faults.roll(Site::LogRead) {
            return Err(LogError::Unavailable(format!(
                "simulated log: {what} failed (injected)"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl EventLog for SimLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError> {
        delay(&self.faults, Site::LogLatency, Some(Site::LogYield)).await;
        if self.faults.roll(Site::LogAppendBefore) {
            return Err(LogError::Unavailable(format!(
                "simulated log: append to '{stream}' failed before it was written (injected)"
            )));
        }
        let appended = self.inner.append(stream, expected, events).await?;
        if self.faults.roll(Site::LogAppendAfter) {
            return Err(LogError::Unavailable(format!(
                "simulated log: append to '{stream}' was written but its ack was lost (injected)"
            )));
        }
        Ok(appended)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        self.before_read("read_stream").await?;
        self.inner
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        self.before_read("stream_version").await?;
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        self.before_read("read_all").await?;
        self.inner.read_all(from_position, max_count).await
    }

    async fn head(&self) -> Result<u64, LogError> {
        self.before_read("head").await?;
        self.inner.head().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultConfig;
    use crate::prng::{PPM, Prng};
    use snapvault_events::ManualClock;

    fn log_with(config: FaultConfig) -> (SimLog, Arc<FaultInjector>) {
        let faults = Arc::new(FaultInjector::new(config, Prng::new(3)));
        let inner = MemoryLog::new(Arc::new(ManualClock::new(0)));
        (SimLog::new(inner, faults.clone()), faults)
    }

    fn event() -> Vec<NewEvent> {
        vec![NewEvent::new("E", 1, vec![1])]
    }

    #[tokio::test]
    async fn an_ambiguous_append_is_durable_and_a_refused_one_is_not() {
        let mut c = FaultConfig::none();
        c.log.append_after_ppm = PPM;
        let (log, faults) = log_with(c);
        let e = log.append("s", ExpectedVersion::Exact(0), event()).await;
        assert!(matches!(e, Err(LogError::Unavailable(_))));
        assert_eq!(log.inner().stream_version("s").await.unwrap(), 1);
        faults.heal();
        assert!(
            log.append("s", ExpectedVersion::Exact(1), event())
                .await
                .is_ok()
        );

        let mut c = FaultConfig::none();
        c.log.append_before_ppm = PPM;
        let (log, _) = log_with(c);
        let e = log.append("s", ExpectedVersion::Exact(0), event()).await;
        assert!(matches!(e, Err(LogError::Unavailable(_))));
        assert_eq!(log.inner().stream_version("s").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn conformance_without_faults() {
        snapvault_events::conformance::run_all(|| async {
            let (log, _) = log_with(FaultConfig::none());
            Arc::new(log) as Arc<dyn EventLog>
        })
        .await;
    }
}
