//! The generic entity actor: a thin ractor shell around a pure decider.
//!
//! `pre_start` loads the stream (paged; replay never repeats I/O because deciders have none),
//! then each `Execute` runs `decide` on the current state, appends the events with the exact
//! expected version (the fence), and evolves. If another writer moved the stream (a second
//! node, or a stale twin of this actor during an eviction) the append is refused with
//! `Conflict`; the actor catches up from the log and decides again, a bounded number of times.
//! An ambiguous append failure (`Unavailable`) marks the state stale: the next command first
//! catches up, so a batch that did land is never applied twice.

use crate::aggregate::Aggregate;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use snapvault_events::codec::{decode, encode};
use snapvault_events::log::for_each_in_stream;
use snapvault_events::{Error, EventLog, ExpectedVersion, LogError, SharedClock};
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::oneshot;

/// How often a command is re-decided after losing the fence before giving up with `conflict`.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// What a successful command produced.
#[derive(Debug, Clone)]
pub struct Executed<E> {
    pub events: Vec<E>,
    /// The stream version after the command (unchanged when `events` is empty).
    pub version: u64,
    /// Global position of the last appended event (0 when nothing was appended).
    pub last_position: u64,
}

/// A read-only look at the state, run inside the actor so big states are not cloned.
pub type Inspector<A> = Box<dyn FnOnce(u64, &<A as Aggregate>::State) + Send>;

pub enum EntityMsg<A: Aggregate> {
    Execute {
        command: A::Command,
        correlation_id: u64,
        reply: oneshot::Sender<Result<Executed<A::Event>, Error>>,
    },
    Inspect(Inspector<A>),
    /// Like `Inspect`, but first catch up with the log: another node (or a twin actor) may
    /// have appended to the stream since this actor last did.
    InspectLatest(Inspector<A>),
}

pub struct EntityArgs {
    pub stream: String,
    pub log: Arc<dyn EventLog>,
    pub clock: SharedClock,
    /// Other processes write this log too: check the stream's version before each decision
    /// and read (see `RegistryConfig::shared_log`).
    pub shared_log: bool,
}

pub struct EntityState<A: Aggregate> {
    stream: String,
    log: Arc<dyn EventLog>,
    clock: SharedClock,
    version: u64,
    state: A::State,
    /// The log may hold events this actor has not applied (after an ambiguous append).
    stale: bool,
    shared_log: bool,
}

pub struct EntityActor<A: Aggregate>(PhantomData<fn() -> A>);

impl<A: Aggregate> Default for EntityActor<A> {
    fn default() -> Self {
        EntityActor(PhantomData)
    }
}

impl<A: Aggregate> EntityState<A> {
    /// On a shared log, mark the state stale when another writer moved the stream.
    async fn check_shared(&mut self) -> Result<(), LogError> {
        if self.shared_log
            && !self.stale
            && self.log.stream_version(&self.stream).await? > self.version
        {
            self.stale = true;
        }
        Ok(())
    }

    /// Apply every event after `self.version`.
    async fn catch_up(&mut self) -> Result<(), LogError> {
        let state = &mut self.state;
        let last = for_each_in_stream(&*self.log, &self.stream, self.version + 1, |env| {
            let event: A::Event = decode(&env)?;
            A::evolve(state, &event);
            Ok(())
        })
        .await?;
        self.version = self.version.max(last);
        self.stale = false;
        Ok(())
    }

    async fn execute(
        &mut self,
        command: &A::Command,
        correlation_id: u64,
    ) -> Result<Executed<A::Event>, Error> {
        self.check_shared().await?;
        if self.stale {
            self.catch_up().await?;
        }
        for _attempt in 0..=MAX_CONFLICT_RETRIES {
            let now_ms = self.clock.now_ms();
            let events = A::decide(&self.state, command, now_ms)?;
            if events.is_empty() {
                return Ok(Executed {
                    events,
                    version: self.version,
                    last_position: 0,
                });
            }
            let mut batch = Vec::with_capacity(events.len());
            for e in &events {
                let mut new = encode(e)?;
                new.correlation_id = correlation_id;
                batch.push(new);
            }
            match self
                .log
                .append(&self.stream, ExpectedVersion::Exact(self.version), batch)
                .await
            {
                Ok(appended) => {
                    for e in &events {
                        A::evolve(&mut self.state, e);
                    }
                    self.version = appended.stream_version;
                    return Ok(Executed {
                        events,
                        version: self.version,
                        last_position: appended.last_position,
                    });
                }
                Err(LogError::Conflict { .. }) => {
                    tracing::debug!(stream = %self.stream, "lost the fence; catching up");
                    self.catch_up().await?;
                }
                Err(e) => {
                    self.stale = true;
                    return Err(e.into());
                }
            }
        }
        Err(Error::conflict(format!(
            "{} '{}' kept changing under this command ({MAX_CONFLICT_RETRIES} retries); try again",
            A::KIND,
            self.stream
        )))
    }
}

#[ractor::async_trait]
impl<A: Aggregate> Actor for EntityActor<A> {
    type Msg = EntityMsg<A>;
    type State = EntityState<A>;
    type Arguments = EntityArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: EntityArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut s = EntityState {
            stream: args.stream,
            log: args.log,
            clock: args.clock,
            version: 0,
            state: A::State::default(),
            stale: true,
            shared_log: args.shared_log,
        };
        s.catch_up().await?;
        Ok(s)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EntityMsg::Execute {
                command,
                correlation_id,
                reply,
            } => {
                let out = s.execute(&command, correlation_id).await;
                // The caller may have given up waiting; that is not the entity's failure.
                let _ = reply.send(out);
            }
            EntityMsg::InspectLatest(f) => {
                if let Err(e) = s.catch_up().await {
                    tracing::debug!(stream = %s.stream, error = %e, "cannot catch up for a read; refusing it");
                    return Ok(());
                }
                f(s.version, &s.state)
            }
            EntityMsg::Inspect(f) => {
                // After an ambiguous append the log may hold events this actor has not
                // applied: catch up before answering, or a reader (the snapshot worker, a
                // describe) sees state that the log has already moved past. If the log cannot
                // be read now, refuse the read: dropping `f` tells the caller to try again.
                // On a shared log, another node may have moved the stream: check first.
                if let Err(e) = s.check_shared().await {
                    tracing::debug!(stream = %s.stream, error = %e, "cannot check the stream's version for a read; refusing it");
                    return Ok(());
                }
                if s.stale
                    && let Err(e) = s.catch_up().await
                {
                    tracing::debug!(stream = %s.stream, error = %e, "cannot catch up for a read; refusing it");
                    return Ok(());
                }
                f(s.version, &s.state)
            }
        }
        Ok(())
    }
}
