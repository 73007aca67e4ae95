//! Id allocation backed by the log: unique across restarts and across nodes sharing one log.
//!
//! Ids are handed out from blocks reserved by appending `IdBlockReserved { end }` to the `ids`
//! stream with an exact expected version. A reserved block is never handed out again, even if
//! the process dies before using it (ids may have gaps; they never repeat). Id 0 is never
//! allocated, so 0 can mean "none" on the wire.

use crate::envelope::NewEvent;
use crate::error::LogError;
use crate::log::{EventLog, ExpectedVersion};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Mutex;

/// The stream that records reserved id blocks.
pub const IDS_STREAM: &str = "ids";
const EVENT_TYPE: &str = "IdBlockReserved";
/// How many times a reservation is retried after losing the race to another node.
const MAX_RESERVE_ATTEMPTS: usize = 64;

#[derive(Serialize, Deserialize)]
struct IdBlockReserved {
    /// Exclusive end of every id reserved so far.
    end: u64,
}

struct Block {
    next: u64,
    end: u64,
}

/// Hands out unique, increasing (within one allocator) non-zero ids.
pub struct IdAllocator {
    log: Arc<dyn EventLog>,
    block_size: u64,
    block: Mutex<Block>,
}

impl IdAllocator {
    pub fn new(log: Arc<dyn EventLog>, block_size: u64) -> Self {
        IdAllocator {
            log,
            block_size: block_size.max(1),
            block: Mutex::new(Block { next: 0, end: 0 }),
        }
    }

    /// One new id.
    pub async fn next_id(&self) -> Result<u64, LogError> {
        let mut block = self.block.lock().await;
        if block.next >= block.end {
            let (start, end) = self.reserve(self.block_size).await?;
            block.next = start;
            block.end = end;
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }

    /// `count` consecutive new ids, reserved as one block of their own (for bulk work such as
    /// a restore that needs one id per segment). Returns the first id.
    pub async fn next_range(&self, count: u64) -> Result<u64, LogError> {
        if count == 0 {
            return Err(LogError::Invalid(
                "cannot allocate an empty id range".into(),
            ));
        }
        let (start, _) = self.reserve(count).await?;
        Ok(start)
    }

    async fn reserve(&self, count: u64) -> Result<(u64, u64), LogError> {
        for _ in 0..MAX_RESERVE_ATTEMPTS {
            let version = self.log.stream_version(IDS_STREAM).await?;
            let current_end = if version == 0 {
                1
            } else {
                let last = self.log.read_stream(IDS_STREAM, version, 1).await?;
                let env = last.first().ok_or_else(|| LogError::Corrupt {
                    position: 0,
                    reason: format!("ids stream at version {version} has no event there"),
                })?;
                let r: IdBlockReserved =
                    rmp_serde::from_slice(&env.payload).map_err(|e| LogError::Corrupt {
                        position: env.position,
                        reason: format!("bad IdBlockReserved: {e}"),
                    })?;
                r.end
            };
            let end = current_end
                .checked_add(count)
                .ok_or_else(|| LogError::Invalid("id space exhausted".into()))?;
            let payload = rmp_serde::to_vec_named(&IdBlockReserved { end })
                .map_err(|e| LogError::Invalid(e.to_string()))?;
            match self
                .log
                .append(
                    IDS_STREAM,
                    ExpectedVersion::Exact(version),
                    vec![NewEvent::new(EVENT_TYPE, 1, payload)],
                )
                .await
            {
                Ok(_) => return Ok((current_end, end)),
                Err(LogError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(LogError::Unavailable(format!(
            "could not reserve ids after {MAX_RESERVE_ATTEMPTS} attempts: too much contention"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::memory::MemoryLog;
    use std::collections::BTreeSet;

    #[tokio::test]
    async fn ids_are_unique_across_allocators_and_restarts() {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(Arc::new(ManualClock::new(0))));
        let mut seen = BTreeSet::new();
        for _restart in 0..3 {
            let a = Arc::new(IdAllocator::new(log.clone(), 10));
            let b = Arc::new(IdAllocator::new(log.clone(), 7));
            let mut handles = Vec::new();
            for alloc in [a.clone(), b.clone(), a, b] {
                handles.push(tokio::spawn(async move {
                    let mut v = Vec::new();
                    for _ in 0..25 {
                        v.push(alloc.next_id().await.unwrap());
                    }
                    v
                }));
            }
            for h in handles {
                for id in h.await.unwrap() {
                    assert_ne!(id, 0);
                    assert!(seen.insert(id), "id {id} handed out twice");
                }
            }
        }
        let alloc = IdAllocator::new(log, 10);
        let start = alloc.next_range(100).await.unwrap();
        for id in start..start + 100 {
            assert!(seen.insert(id));
        }
    }
}
