//! The external task index: unfinished refresh tasks and their claims, folded from the log.
//!
//! What the reconciler needs to find work no node runs (design §10): every task stream that
//! started and has not finished, with its claim; and every collection's active task, because
//! a crash between taking the refresh slot and starting the task's stream leaves a slot with
//! no stream to adopt. Only external task events and the collection's external events are
//! decoded.

use crate::claim::ClaimState;
use crate::projection::{Fold, Projection};
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::CollectionEvent;
use snapvault_events::domain::external::{ExternalTaskEvent, TaskId};
use snapvault_events::{Envelope, Error, EventLog, LogError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A task whose stream started and has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    pub collection_id: u64,
    pub started_ms: u64,
    pub claim: ClaimState,
}

/// A collection's active task (the slot), as its stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveSlot {
    pub task_id: TaskId,
    /// When the slot was taken (the event's log time).
    pub since_ms: u64,
}

#[derive(Default)]
pub struct Tables {
    running: BTreeMap<TaskId, RunningTask>,
    active: BTreeMap<u64, ActiveSlot>,
}

/// Unfinished external work.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub running: BTreeMap<TaskId, RunningTask>,
    /// Slots whose task has no stream yet: (collection, slot).
    pub streamless: BTreeMap<u64, ActiveSlot>,
}

fn stream_id(stream: &str, prefix: &str) -> Option<u64> {
    stream.strip_prefix(prefix)?.parse().ok()
}

impl Fold for Tables {
    fn apply(&mut self, env: &Envelope) -> Result<(), LogError> {
        if let Some(id) = stream_id(&env.stream, "external-") {
            match decode::<ExternalTaskEvent>(env)? {
                ExternalTaskEvent::Started {
                    identity,
                    started_ms,
                } => {
                    self.running.insert(
                        id,
                        RunningTask {
                            collection_id: identity.collection_id,
                            started_ms,
                            claim: ClaimState::default(),
                        },
                    );
                }
                ExternalTaskEvent::Claim(c) => {
                    if let Some(t) = self.running.get_mut(&id) {
                        t.claim.evolve(&c);
                    }
                }
                ExternalTaskEvent::Finished { .. } => {
                    self.running.remove(&id);
                }
                ExternalTaskEvent::Progressed { .. } => {}
            }
        } else if let Some(cid) = stream_id(&env.stream, "collection-")
            && env.event_type.starts_with("External")
        {
            match decode::<CollectionEvent>(env)? {
                CollectionEvent::ExternalAltered { task_id, .. }
                | CollectionEvent::ExternalTaskStarted { task_id, .. } => {
                    self.active.insert(
                        cid,
                        ActiveSlot {
                            task_id,
                            since_ms: env.time_ms,
                        },
                    );
                }
                CollectionEvent::ExternalTaskEnded { task_id, .. }
                | CollectionEvent::ExternalRefreshed { task_id, .. }
                    if self.active.get(&cid).map(|a| a.task_id) == Some(task_id) =>
                {
                    self.active.remove(&cid);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct ExternalIndex {
    projection: Projection<Tables>,
}

impl ExternalIndex {
    /// Start tailing the log from its beginning.
    pub fn start(log: Arc<dyn EventLog>) -> ExternalIndex {
        ExternalIndex {
            projection: Projection::start("external task index", log),
        }
    }

    /// Stop tailing (node shutdown).
    pub async fn stop(&self) {
        self.projection.stop().await
    }

    /// Unfinished tasks as of the log's head now.
    pub async fn unfinished(&self) -> Result<Unfinished, Error> {
        self.projection
            .read(|t| Unfinished {
                running: t.running.clone(),
                streamless: t
                    .active
                    .iter()
                    .filter(|(_, a)| !t.running.contains_key(&a.task_id))
                    .map(|(c, a)| (*c, *a))
                    .collect(),
            })
            .await
    }
}
