//! The external task's effect interpreter: lists the source, reads footers, plans, writes the
//! fragment lists, re-validates and commits — or ends the task superseded, cancelled or
//! failed. Like the snapshot worker, it never holds entity state across store I/O: it reads
//! the state, does the I/O, and sends the result back as a command.
//!
//! Exactly-once commit: the commit is a command on the collection, accepted only from the
//! collection's active task for the current generation (the fence). Everything before it is
//! idempotent or disposable (fragment lists of new segment ids that are never committed are
//! orphans under `data/` that GC reclaims), so a crash anywhere is recovered by running the
//! task again, and a task that lost its slot learns its outcome from the collection.

use crate::collection::Collection;
use crate::collection::external::ExternalState;
use crate::crash_points::crash_point;
use crate::external::decider::{ExternalTask, ExternalTaskState};
use crate::external::footer::read_rows;
use crate::external::plan::{Current, pack, plan};
use crate::external::source::{OpenSource, SourceError, SourceStores, list_fragments};
use crate::registry::Registry;
use crate::snapshot::worker::{get_object, put_object};
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStore;
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::{CollectionCommand, ExternalCommit, SegmentRecord};
use snapvault_events::domain::external::{
    ExternalTaskCommand, ExternalTaskEvent, FRAGMENT_LIST_FORMAT, FragmentList, FragmentRef,
    RefreshCounts, TaskEnd, TaskId, TaskIdentity, TaskOutcome, TaskPhase, TaskProgress,
    external_task_stream, fragment_list_key, parse_source,
};
use snapvault_events::domain::{CollectionId, FileRef, SegmentId, collection_stream};
use snapvault_events::ids::IdAllocator;
use snapvault_events::{Error, ErrorCode, EventLog, SharedClock};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Limits and timings of external tasks.
#[derive(Debug, Clone, Copy)]
pub struct ExternalTaskConfig {
    /// Footers (and fragment lists) read at once.
    pub read_parallelism: usize,
    /// Attempts of a task that meets transient errors before it fails; the delay between
    /// them starts at `retry_initial_ms` and doubles up to `retry_max_ms`.
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Progress is recorded (and the slot re-checked) every this many footers.
    pub progress_every: u64,
}

impl Default for ExternalTaskConfig {
    fn default() -> Self {
        ExternalTaskConfig {
            read_parallelism: 16,
            max_attempts: 5,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
            progress_every: 1_000,
        }
    }
}

#[derive(Clone)]
pub struct ExternalWorker {
    pub registry: Registry,
    /// The node's own store (fragment lists live there).
    pub store: Arc<dyn ObjectStore>,
    pub sources: Arc<dyn SourceStores>,
    pub ids: Arc<IdAllocator>,
    pub clock: SharedClock,
    pub config: ExternalTaskConfig,
}

/// Why an attempt stopped early.
enum Stop {
    /// The task is over: this is how (already decided by the collection, or to record).
    Outcome(TaskOutcome),
    Source(SourceError),
    /// This node no longer holds the task's claim: another node runs it now.
    Lost(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Source(SourceError::from(e))
    }
}

impl From<SourceError> for Stop {
    fn from(e: SourceError) -> Self {
        Stop::Source(e)
    }
}

/// What the collection says about a task.
struct Slot {
    live: bool,
    name: String,
    external: Option<ExternalState>,
    segments: Vec<(SegmentId, u64, Option<FileRef>)>,
    shard_count: u32,
}

/// The outcome the collection recorded for a task that no longer holds the slot.
pub fn outcome_from_collection(ext: &ExternalState, task_id: TaskId) -> TaskOutcome {
    match ext.outcome_of(task_id) {
        Some(TaskEnd::Committed) => TaskOutcome::Committed {
            counts: ext
                .last_commit
                .filter(|(t, _)| *t == task_id)
                .map(|(_, c)| c)
                .unwrap_or_default(),
        },
        Some(TaskEnd::Cancelled) => TaskOutcome::Cancelled,
        Some(TaskEnd::Failed { key, reason }) => TaskOutcome::Failed {
            key: key.clone(),
            reason: reason.clone(),
        },
        Some(TaskEnd::Superseded) | None => TaskOutcome::Superseded {
            reason: "the source or spec changed (or the collection was dropped) while it ran; it committed nothing".into(),
        },
    }
}

/// How the collection's stream says `task_id` ended, read from the stream itself (paged):
/// for a task older than the collection's memory of recent outcomes. `None` when the stream
/// says nothing of its end.
pub async fn outcome_from_log(
    log: &dyn EventLog,
    collection_id: CollectionId,
    task_id: TaskId,
) -> Result<Option<TaskOutcome>, Error> {
    use snapvault_events::domain::collection::CollectionEvent as E;
    let mut found = None;
    snapvault_events::log::for_each_in_stream(log, &collection_stream(collection_id), 1, |env| {
        if !matches!(
            env.event_type.as_str(),
            "ExternalRefreshed" | "ExternalTaskEnded" | "ExternalAltered"
        ) {
            return Ok(());
        }
        match decode::<E>(&env)? {
            E::ExternalRefreshed {
                task_id: t,
                kept,
                dropped,
                added,
                fragments,
                ..
            } if t == task_id => {
                found = Some(TaskOutcome::Committed {
                    counts: RefreshCounts {
                        kept,
                        dropped: dropped.len() as u64,
                        added: added.len() as u64,
                        fragments,
                        rows: added.iter().map(|a| a.rows).sum(),
                    },
                });
            }
            E::ExternalTaskEnded {
                task_id: t, end, ..
            } if t == task_id => {
                found = Some(match end {
                    TaskEnd::Committed => TaskOutcome::Committed {
                        counts: RefreshCounts::default(),
                    },
                    TaskEnd::Cancelled => TaskOutcome::Cancelled,
                    TaskEnd::Failed { key, reason } => TaskOutcome::Failed { key, reason },
                    TaskEnd::Superseded => TaskOutcome::Superseded {
                        reason: "the source or spec changed while it ran; it committed nothing"
                            .into(),
                    },
                });
            }
            E::ExternalAltered {
                superseded: Some(t),
                ..
            } if t == task_id => {
                found = Some(TaskOutcome::Superseded {
                    reason: "the source or spec changed while it ran; it committed nothing".into(),
                });
            }
            _ => {}
        }
        Ok(())
    })
    .await?;
    Ok(found)
}

impl ExternalWorker {
    /// Before a task is recorded as superseded because the collection does not remember it
    /// (it is older than the collection's window of recent outcomes), ask the collection's
    /// stream, which never forgets: the task may have committed before a crash kept it from
    /// recording that in its own stream.
    async fn confirm_outcome(
        &self,
        identity: &TaskIdentity,
        outcome: TaskOutcome,
    ) -> Result<TaskOutcome, Error> {
        if !matches!(outcome, TaskOutcome::Superseded { .. }) {
            return Ok(outcome);
        }
        let slot = self.slot(identity.collection_id).await?;
        let forgotten = slot.external.as_ref().is_some_and(|e| {
            e.outcome_of(identity.task_id).is_none()
                && e.active.as_ref().map(|a| a.task_id) != Some(identity.task_id)
        });
        if !forgotten {
            return Ok(outcome);
        }
        Ok(outcome_from_log(
            &**self.registry.log(),
            identity.collection_id,
            identity.task_id,
        )
        .await?
        .unwrap_or(outcome))
    }

    pub async fn task(&self, id: TaskId) -> Result<ExternalTaskState, Error> {
        self.registry
            .inspect::<ExternalTask, _>(&external_task_stream(id), |_, s| s.clone())
            .await
    }

    async fn task_command(&self, id: TaskId, command: ExternalTaskCommand) -> Result<(), Error> {
        self.registry
            .execute::<ExternalTask>(&external_task_stream(id), command, id)
            .await
            .map(|_| ())
    }

    async fn collection(&self, id: CollectionId, command: CollectionCommand) -> Result<(), Error> {
        self.registry
            .execute::<Collection>(&collection_stream(id), command, 0)
            .await
            .map(|_| ())
    }

    async fn slot(&self, id: CollectionId) -> Result<Slot, Error> {
        self.registry
            .inspect::<Collection, _>(&collection_stream(id), |_, s| {
                let segments = s
                    .external
                    .as_ref()
                    .map(|e| {
                        e.segments
                            .iter()
                            .map(|sid| {
                                let seg = s.segments.get(sid);
                                (
                                    *sid,
                                    seg.map_or(0, |x| x.rows),
                                    seg.and_then(|x| x.files.first().cloned()),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Slot {
                    live: s.is_live(),
                    name: s.name.clone(),
                    external: s.external.clone(),
                    segments,
                    shard_count: s.shard_count,
                }
            })
            .await
    }

    /// Record the start of a task's stream (idempotent).
    pub async fn start(&self, identity: TaskIdentity) -> Result<(), Error> {
        let id = identity.task_id;
        self.task_command(id, ExternalTaskCommand::Start { identity })
            .await
    }

    /// The identity a task has according to its collection (for adopting a task whose
    /// stream a crash left empty).
    pub async fn identity_from_collection(
        &self,
        collection_id: CollectionId,
        task_id: TaskId,
    ) -> Result<Option<TaskIdentity>, Error> {
        let slot = self.slot(collection_id).await?;
        Ok(slot.external.and_then(|e| {
            e.active
                .filter(|a| a.task_id == task_id)
                .map(|a| TaskIdentity {
                    task_id,
                    collection_id,
                    collection_name: slot.name.clone(),
                    generation: a.generation,
                    config: e.config.clone(),
                })
        }))
    }

    /// Drive a task to its end under the claim of epoch `epoch` (see
    /// `crate::claim_holder`). Safe to run again after a crash, and twice at once (the
    /// collection's fence lets one commit; the claim makes the other stop at its next step).
    /// A lost claim ends the run with `failed_precondition` ("claim lost") and records
    /// nothing more.
    pub async fn run(&self, id: TaskId, epoch: u64) -> Result<ExternalTaskState, Error> {
        let mut attempt = 0u32;
        let mut backoff =
            snapvault_events::Backoff::new(self.config.retry_initial_ms, self.config.retry_max_ms);
        loop {
            let t = self.task(id).await?;
            let Some(identity) = t.identity.clone() else {
                return Err(Error::not_found(format!("external task {id} not found")));
            };
            if t.outcome.is_some() {
                return Ok(t);
            }
            let outcome = match self.attempt(&identity, epoch).await {
                Ok(outcome) => outcome,
                Err(Stop::Lost(e)) => return Err(e),
                Err(Stop::Outcome(outcome)) => self.confirm_outcome(&identity, outcome).await?,
                Err(Stop::Source(SourceError::Permanent { key, reason })) => {
                    self.still_held(&identity, epoch).await?;
                    self.fail(&identity, key, reason).await?
                }
                Err(Stop::Source(SourceError::Transient(e))) => {
                    attempt += 1;
                    if attempt >= self.config.max_attempts.max(1) {
                        self.still_held(&identity, epoch).await?;
                        let reason = format!("gave up after {attempt} attempts: {e}");
                        self.fail(&identity, identity.config.source.clone(), reason)
                            .await?
                    } else {
                        tracing::info!(task = id, error = %e, delay_ms = backoff.current_ms(), "external task will retry");
                        tokio::time::sleep(Duration::from_millis(backoff.current_ms())).await;
                        backoff.grow();
                        continue;
                    }
                }
            };
            self.task_command(id, ExternalTaskCommand::Finish { outcome })
                .await?;
            return self.task(id).await;
        }
    }

    /// Refuse (`failed_precondition`, "claim lost") unless this node still holds the task
    /// under `epoch`: a repeat of the recorded progress passes the task's epoch fence and
    /// appends nothing. Asked before a failure is decided, which a stale holder must not do.
    async fn still_held(&self, identity: &TaskIdentity, epoch: u64) -> Result<(), Error> {
        let t = self.task(identity.task_id).await?;
        let phase = t.phase.unwrap_or(TaskPhase::Listing);
        self.task_command(
            identity.task_id,
            ExternalTaskCommand::Progress {
                epoch,
                phase,
                progress: t.progress,
            },
        )
        .await
    }

    /// End the task failed on the collection (unless it already ended otherwise), and
    /// return the outcome to record.
    async fn fail(
        &self,
        identity: &TaskIdentity,
        key: String,
        reason: String,
    ) -> Result<TaskOutcome, Error> {
        tracing::warn!(task = identity.task_id, %key, %reason, "external task failed");
        let end = TaskEnd::Failed {
            key: key.clone(),
            reason: reason.clone(),
        };
        match self
            .collection(
                identity.collection_id,
                CollectionCommand::EndExternalTask {
                    task_id: identity.task_id,
                    end,
                },
            )
            .await
        {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::FailedPrecondition || e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
        let slot = self.slot(identity.collection_id).await?;
        Ok(slot
            .external
            .map(|e| outcome_from_collection(&e, identity.task_id))
            .unwrap_or(TaskOutcome::Failed { key, reason }))
    }

    /// Is the task still the collection's active task for its generation? If not, how it
    /// ended.
    fn check_slot(identity: &TaskIdentity, slot: &Slot) -> Result<(), Stop> {
        let Some(ext) = &slot.external else {
            return Err(Stop::Outcome(TaskOutcome::Superseded {
                reason: "the collection is not external".into(),
            }));
        };
        let active = ext.active.as_ref().map(|a| a.task_id) == Some(identity.task_id);
        if !active {
            return Err(Stop::Outcome(outcome_from_collection(
                ext,
                identity.task_id,
            )));
        }
        if ext.generation != identity.generation || ext.config != identity.config {
            return Err(Stop::Outcome(TaskOutcome::Superseded {
                reason: "the source or spec changed while it ran; it committed nothing".into(),
            }));
        }
        Ok(())
    }

    /// A live-collection check that also ends the slot of a dropped collection.
    async fn live_slot(&self, identity: &TaskIdentity) -> Result<Slot, Stop> {
        let slot = self.slot(identity.collection_id).await?;
        // First what the collection already recorded (a commit may have landed before the
        // collection was dropped): the collection decides.
        if let Some(ext) = &slot.external
            && ext.active.as_ref().map(|a| a.task_id) != Some(identity.task_id)
        {
            return Err(Stop::Outcome(outcome_from_collection(
                ext,
                identity.task_id,
            )));
        }
        if !slot.live {
            let r = self
                .collection(
                    identity.collection_id,
                    CollectionCommand::EndExternalTask {
                        task_id: identity.task_id,
                        end: TaskEnd::Superseded,
                    },
                )
                .await;
            if let Err(e) = r
                && !matches!(e.code, ErrorCode::FailedPrecondition | ErrorCode::NotFound)
            {
                return Err(e.into());
            }
            return Err(Stop::Outcome(TaskOutcome::Superseded {
                reason: "the collection was dropped while it ran; it committed nothing".into(),
            }));
        }
        Self::check_slot(identity, &slot)?;
        Ok(slot)
    }

    async fn progress(
        &self,
        identity: &TaskIdentity,
        epoch: u64,
        phase: TaskPhase,
        progress: TaskProgress,
    ) -> Result<(), Stop> {
        self.task_command(
            identity.task_id,
            ExternalTaskCommand::Progress {
                epoch,
                phase,
                progress,
            },
        )
        .await
        .map_err(|e| {
            // The only refusal of progress on a started task: the claim moved on.
            if e.code == ErrorCode::FailedPrecondition {
                Stop::Lost(e)
            } else {
                Stop::from(e)
            }
        })?;
        // The slot may have moved on (cancel, alter): stop early rather than at the commit.
        let slot = self.slot(identity.collection_id).await?;
        Self::check_slot(identity, &slot)
    }

    async fn attempt(&self, identity: &TaskIdentity, epoch: u64) -> Result<TaskOutcome, Stop> {
        let slot = self.live_slot(identity).await?;
        let (_, location) = parse_source(&identity.config.source)?;
        let source: OpenSource = self.sources.open(&location)?;
        let listing = list_fragments(&source).await?;
        crash_point("external.after_list");
        if listing.is_empty() {
            return Err(Stop::Source(SourceError::Permanent {
                key: identity.config.source.clone(),
                reason: "the source prefix is missing or holds no Parquet fragments (*.parquet); nothing was changed".into(),
            }));
        }
        let mut progress = TaskProgress {
            fragments_listed: listing.len() as u64,
            ..TaskProgress::default()
        };
        self.progress(identity, epoch, TaskPhase::Listing, progress)
            .await?;

        // The fragment lists of the current segments, read in parallel.
        let current: Vec<Current> = futures::stream::iter(slot.segments.iter().cloned())
            .map(|(segment_id, rows, file)| {
                let store = self.store.clone();
                async move {
                    let list = match file {
                        Some(f) => match get_object(&*store, &f.key).await {
                            Ok(bytes) if crc32c::crc32c(&bytes) == f.crc32c => {
                                Some(FragmentList::decode(&f.key, &bytes)?)
                            }
                            Ok(_) => None, // damaged: rebuild the segment
                            Err(e) if e.code == ErrorCode::NotFound => None,
                            Err(e) => return Err(e),
                        },
                        None => None,
                    };
                    Ok::<Current, Error>(Current {
                        segment_id,
                        rows,
                        list,
                    })
                }
            })
            .buffered(self.config.read_parallelism.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let fingerprint = identity.config.fingerprint();
        let p = plan(&listing, &current, fingerprint);
        progress.fragments_unchanged = p.kept_fragments;
        progress.footers_total = p.unknown.len() as u64;
        self.progress(identity, epoch, TaskPhase::ReadingFooters, progress)
            .await?;

        // Footers of new and changed fragments, in parallel, in listing order.
        let columns = identity.config.spec.columns.clone();
        let mut reads = futures::stream::iter(p.unknown.iter().cloned())
            .map(|l| {
                let source = source.clone();
                let columns = columns.clone();
                async move {
                    let rows = read_rows(&source, &l.key, l.size, &columns).await?;
                    Ok::<FragmentRef, SourceError>(FragmentRef {
                        key: l.key,
                        size: l.size,
                        e_tag: l.e_tag,
                        last_modified_ms: l.last_modified_ms,
                        rows,
                    })
                }
            })
            .buffered(self.config.read_parallelism.max(1));
        let mut fragments = p.known.clone();
        fragments.reserve(p.unknown.len());
        while let Some(r) = reads.next().await {
            fragments.push(r?);
            progress.footers_read += 1;
            if progress
                .footers_read
                .is_multiple_of(self.config.progress_every.max(1))
            {
                self.progress(identity, epoch, TaskPhase::ReadingFooters, progress)
                    .await?;
            }
        }
        drop(reads);
        crash_point("external.after_footers");

        // New segments: ids from the log's allocator, one fragment list object each.
        let bins = pack(fragments, identity.config.spec.target_rows_per_segment);
        self.progress(identity, epoch, TaskPhase::Writing, progress)
            .await?;
        let first_id = if bins.is_empty() {
            0
        } else {
            self.ids
                .next_range(bins.len() as u64)
                .await
                .map_err(Error::from)?
        };
        let collection_id = identity.collection_id;
        let shard_count = slot.shard_count.max(1);
        let written: Vec<(SegmentRecord, u64)> =
            futures::stream::iter(bins.into_iter().enumerate())
                .map(|(i, fragments)| {
                    let store = self.store.clone();
                    let source_url = identity.config.source.clone();
                    async move {
                        let segment_id = first_id + i as u64;
                        let rows: u64 = fragments.iter().map(|f| f.rows).sum();
                        let n = fragments.len() as u64;
                        let list = FragmentList {
                            format_version: FRAGMENT_LIST_FORMAT,
                            collection_id,
                            segment_id,
                            source: source_url,
                            fingerprint,
                            fragments,
                        };
                        let bytes = list.encode()?;
                        let key = fragment_list_key(collection_id, segment_id);
                        let file = FileRef {
                            key: key.clone(),
                            size: bytes.len() as u64,
                            crc32c: crc32c::crc32c(&bytes),
                        };
                        put_object(&*store, &key, Bytes::from(bytes)).await?;
                        let record = SegmentRecord {
                            segment_id,
                            partition_id: 0, // set below from the collection
                            shard: (segment_id % u64::from(shard_count)) as u32,
                            rows,
                            level: 0,
                            files: vec![file],
                            indexes: Vec::new(),
                        };
                        Ok::<(SegmentRecord, u64), Error>((record, n))
                    }
                })
                .buffered(self.config.read_parallelism.max(1))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        crash_point("external.after_write");

        // Re-validate: still the active task, for the same source and spec, same segments.
        progress.footers_read = progress.footers_total;
        self.progress(identity, epoch, TaskPhase::Committing, progress)
            .await?;
        let now = self.live_slot(identity).await?;
        let before: BTreeSet<SegmentId> = slot.segments.iter().map(|s| s.0).collect();
        let after: BTreeSet<SegmentId> = now.segments.iter().map(|s| s.0).collect();
        if before != after {
            return Err(Stop::Source(SourceError::Transient(Error::conflict(
                "the collection's external segments changed while the task ran",
            ))));
        }
        let default_partition = self
            .registry
            .inspect::<Collection, _>(&collection_stream(collection_id), |_, s| {
                s.partition_by_name(snapvault_events::domain::collection::DEFAULT_PARTITION)
                    .map(|(id, _)| id)
            })
            .await?
            .ok_or_else(|| Error::internal("the default partition is missing"))?;
        let added_fragments: u64 = written.iter().map(|(_, n)| n).sum();
        let added: Vec<SegmentRecord> = written
            .into_iter()
            .map(|(mut r, _)| {
                r.partition_id = default_partition;
                r
            })
            .collect();
        let counts = RefreshCounts {
            kept: p.kept.len() as u64,
            dropped: p.dropped.len() as u64,
            added: added.len() as u64,
            fragments: p.kept_fragments + added_fragments,
            rows: p.kept_rows + added.iter().map(|a| a.rows).sum::<u64>(),
        };
        crash_point("external.before_commit");
        let commit = CollectionCommand::CommitExternalRefresh(ExternalCommit {
            task_id: identity.task_id,
            generation: identity.generation,
            dropped: p.dropped.clone(),
            added,
            fragments: counts.fragments,
        });
        match self.collection(collection_id, commit).await {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::FailedPrecondition => {
                // Lost the slot at the last moment: the collection knows how the task ended.
                let slot = self.slot(collection_id).await?;
                Self::check_slot(identity, &slot)?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        crash_point("external.after_commit");
        Ok(TaskOutcome::Committed { counts })
    }
}

/// Decode helper for tools: the events of one task stream.
pub fn task_events(envs: &[snapvault_events::Envelope]) -> Result<Vec<ExternalTaskEvent>, Error> {
    envs.iter()
        .map(|e| decode::<ExternalTaskEvent>(e).map_err(Error::from))
        .collect()
}
