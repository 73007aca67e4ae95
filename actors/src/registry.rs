//! The entity registry and its supervisor.
//!
//! Entities are spawned on demand (first command or read), rebuilt from their stream in
//! `pre_start`, and stopped when idle so memory stays bounded however many entities the log
//! holds. The supervisor is linked to every entity actor: when one fails (a panic or an error
//! in a handler) it is removed from the registry and the caller waiting on it gets an error at
//! once, not a hang; the next use restarts it from the log. Restarting lazily (on next use)
//! instead of eagerly means a crash loop costs nothing while nobody asks for the entity.
//!
//! Eviction drains an actor (it finishes what is in its mailbox, refuses new messages); a
//! caller that raced with the eviction gets its message back and retries on a fresh actor. Even
//! if an old and a new actor of one stream overlap for a moment, the log's fence lets only one
//! of them write.

use crate::aggregate::Aggregate;
use crate::entity::{EntityActor, EntityArgs, EntityMsg, Executed};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent,
};
use snapvault_events::{Error, EventLog, SharedClock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, oneshot};

/// Limits of the registry.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// An entity unused this long is stopped.
    pub idle_after_ms: u64,
    /// At most this many entity actors live at once; the least recently used go first.
    pub max_live_entities: usize,
    /// Other processes append to the same log (the JetStream log shared by several nodes):
    /// every entity checks its stream's version before each decision and read and catches up
    /// first, so a node never answers from state another node has moved past. One extra log
    /// round trip per command; off for a log this process owns alone.
    pub shared_log: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            idle_after_ms: 60_000,
            max_live_entities: 10_000,
            shared_log: false,
        }
    }
}

/// How many times a command is re-sent after racing with an eviction.
const MAX_SEND_ATTEMPTS: usize = 4;

struct Entry {
    cell: OnceCell<ActorCell>,
    /// Milliseconds of tokio time since the registry started.
    last_used_ms: AtomicU64,
}

#[derive(Default)]
struct Tables {
    by_stream: HashMap<String, Arc<Entry>>,
    by_actor: HashMap<ActorId, String>,
}

struct Shared {
    tables: Mutex<Tables>,
    /// The node's log, timed and counted ([`crate::metrics::MeteredLog`]).
    log: Arc<dyn EventLog>,
    metrics: Arc<crate::metrics::Metrics>,
    clock: SharedClock,
    config: RegistryConfig,
    started: tokio::time::Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A poisoned lock only means a panic happened while it was held; the tables are plain
        // maps that stay consistent, so keep going.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget the actor (it failed or stopped). Only removes the entry if it still belongs to
    /// that actor, so a fresh twin is not forgotten.
    fn forget(&self, actor: ActorId) {
        let mut t = self.tables();
        if let Some(stream) = t.by_actor.remove(&actor) {
            let same = t
                .by_stream
                .get(&stream)
                .and_then(|e| e.cell.get())
                .is_some_and(|c| c.get_id() == actor);
            if same {
                t.by_stream.remove(&stream);
            }
        }
    }

    /// Evict idle entities, and the least recently used ones beyond the cap.
    fn evict(&self) -> usize {
        let now = self.now_ms();
        let mut victims = Vec::new();
        {
            let mut t = self.tables();
            let mut live: Vec<(u64, String)> = t
                .by_stream
                .iter()
                .filter(|(_, e)| e.cell.initialized())
                .map(|(s, e)| (e.last_used_ms.load(Ordering::Relaxed), s.clone()))
                .collect();
            live.sort();
            let over = live.len().saturating_sub(self.config.max_live_entities);
            for (i, (last_used, stream)) in live.into_iter().enumerate() {
                let idle = now.saturating_sub(last_used) >= self.config.idle_after_ms;
                if (i < over || idle)
                    && let Some(e) = t.by_stream.remove(&stream)
                    && let Some(cell) = e.cell.get()
                {
                    t.by_actor.remove(&cell.get_id());
                    victims.push(cell.clone());
                }
            }
        }
        let n = victims.len();
        for cell in victims {
            // Finish queued messages, then stop; new sends are refused and retried by callers.
            let _ = cell.drain();
        }
        n
    }
}

/// The supervisor every entity actor is linked to.
struct EntitySupervisor;

#[ractor::async_trait]
impl Actor for EntitySupervisor {
    type Msg = ();
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        shared: Arc<Shared>,
    ) -> Result<Arc<Shared>, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        _myself: ActorRef<()>,
        _msg: (),
        _shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    /// Overrides the default (which stops the supervisor when a child ends): a failed entity
    /// is forgotten and restarted from the log on next use; the supervisor keeps running.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(who, err) => {
                tracing::warn!(actor = %who.get_id(), error = %err, "entity actor failed; it will be reloaded from the log on next use");
                shared.forget(who.get_id());
            }
            SupervisionEvent::ActorTerminated(who, _, _) => shared.forget(who.get_id()),
            _ => {}
        }
        Ok(())
    }
}

/// Spawns, finds, supervises and evicts entity actors.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
    supervisor: ActorRef<()>,
    sweeper: Arc<tokio::task::JoinHandle<()>>,
}

impl Registry {
    pub async fn start(
        log: Arc<dyn EventLog>,
        clock: SharedClock,
        config: RegistryConfig,
    ) -> Result<Registry, Error> {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let log: Arc<dyn EventLog> =
            Arc::new(crate::metrics::MeteredLog::new(log, metrics.clone()));
        let shared = Arc::new(Shared {
            tables: Mutex::new(Tables::default()),
            log,
            metrics,
            clock,
            config,
            started: tokio::time::Instant::now(),
        });
        let (supervisor, _) = Actor::spawn(None, EntitySupervisor, shared.clone())
            .await
            .map_err(|e| Error::internal(format!("cannot start the entity supervisor: {e}")))?;
        let sweep_every = Duration::from_millis((config.idle_after_ms / 2).max(10));
        let weak = Arc::downgrade(&shared);
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.evict();
            }
        });
        Ok(Registry {
            shared,
            supervisor,
            sweeper: Arc::new(sweeper),
        })
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.shared.log
    }

    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// This node's metrics (every part of a node reaches them through its registry).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared.metrics
    }

    /// How many entity actors are alive now.
    pub fn live_entities(&self) -> usize {
        self.shared
            .tables()
            .by_stream
            .values()
            .filter(|e| e.cell.initialized())
            .count()
    }

    /// Run the eviction pass now (tests; the sweeper runs it on its own).
    pub fn evict_now(&self) -> usize {
        self.shared.evict()
    }

    async fn actor<A: Aggregate>(&self, stream: &str) -> Result<ActorRef<EntityMsg<A>>, Error> {
        let now = self.shared.now_ms();
        let (entry, grew) = {
            let mut t = self.shared.tables();
            let before = t.by_stream.len();
            let e = t
                .by_stream
                .entry(stream.to_string())
                .or_insert_with(|| {
                    Arc::new(Entry {
                        cell: OnceCell::new(),
                        last_used_ms: AtomicU64::new(now),
                    })
                })
                .clone();
            (e, t.by_stream.len() > before)
        };
        entry.last_used_ms.store(now, Ordering::Relaxed);
        let cap = self.shared.config.max_live_entities;
        if grew && self.shared.tables().by_stream.len() > cap + cap / 8 + 1 {
            self.shared.evict();
        }
        let cell = entry
            .cell
            .get_or_try_init(|| async {
                let args = EntityArgs {
                    stream: stream.to_string(),
                    log: self.shared.log.clone(),
                    clock: self.shared.clock.clone(),
                    shared_log: self.shared.config.shared_log,
                };
                let (actor, _) = Actor::spawn_linked(
                    None,
                    EntityActor::<A>::default(),
                    args,
                    self.supervisor.get_cell(),
                )
                .await
                .map_err(|e| {
                    Error::unavailable(format!(
                        "cannot load {} '{stream}' from the log: {e}",
                        A::KIND
                    ))
                })?;
                self.shared
                    .tables()
                    .by_actor
                    .insert(actor.get_id(), stream.to_string());
                Ok::<ActorCell, Error>(actor.get_cell())
            })
            .await;
        match cell {
            Ok(cell) => Ok(cell.clone().into()),
            Err(e) => {
                // Do not keep a failed slot: the next caller tries to load again.
                let mut t = self.shared.tables();
                if t.by_stream
                    .get(stream)
                    .is_some_and(|x| Arc::ptr_eq(x, &entry))
                {
                    t.by_stream.remove(stream);
                }
                Err(e)
            }
        }
    }

    /// Run `command` on the entity of `stream`.
    pub async fn execute<A: Aggregate>(
        &self,
        stream: &str,
        command: A::Command,
        correlation_id: u64,
    ) -> Result<Executed<A::Event>, Error> {
        for _ in 0..MAX_SEND_ATTEMPTS {
            let actor = self.actor::<A>(stream).await?;
            let (reply, rx) = oneshot::channel();
            let msg = EntityMsg::Execute {
                command: command.clone(),
                correlation_id,
                reply,
            };
            match actor.send_message(msg) {
                Ok(()) => {
                    return rx.await.unwrap_or_else(|_| {
                        Err(Error::unavailable(format!(
                            "{} '{stream}' failed while handling the command; it will be reloaded from the log on next use. The command may or may not have taken effect: read the state before retrying",
                            A::KIND
                        )))
                    });
                }
                Err(MessagingErr::SendErr(_) | MessagingErr::ChannelClosed) => {
                    // Evicted or stopped between lookup and send: nothing was done; retry.
                    self.shared.forget(actor.get_id());
                    continue;
                }
                Err(e) => return Err(Error::internal(format!("cannot reach {stream}: {e}"))),
            }
        }
        Err(Error::unavailable(format!(
            "{} '{stream}' kept stopping while being asked; try again",
            A::KIND
        )))
    }

    /// Run `f` on the entity's state inside the actor and return its result.
    pub async fn inspect<A: Aggregate, R: Send + 'static>(
        &self,
        stream: &str,
        f: impl FnOnce(u64, &A::State) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.inspect_with::<A, R>(stream, false, f).await
    }

    /// Like [`Registry::inspect`], but the actor first catches up with the log, so the state
    /// includes what other nodes appended (a cancel recorded elsewhere, say).
    pub async fn inspect_latest<A: Aggregate, R: Send + 'static>(
        &self,
        stream: &str,
        f: impl FnOnce(u64, &A::State) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.inspect_with::<A, R>(stream, true, f).await
    }

    /// Stop the actor of `stream` now (it finishes its mailbox first), so a worker that is
    /// done with an entity gives its memory back without waiting for the idle sweep.
    pub fn release(&self, stream: &str) {
        let cell = {
            let mut t = self.shared.tables();
            let cell = t
                .by_stream
                .remove(stream)
                .and_then(|e| e.cell.get().cloned());
            if let Some(c) = &cell {
                t.by_actor.remove(&c.get_id());
            }
            cell
        };
        if let Some(cell) = cell {
            let _ = cell.drain();
        }
    }

    /// [`Registry::inspect`] or, with `latest`, [`Registry::inspect_latest`]: for callers
    /// that decide at run time whether the actor must first catch up with the log.
    pub async fn inspect_with<A: Aggregate, R: Send + 'static>(
        &self,
        stream: &str,
        latest: bool,
        f: impl FnOnce(u64, &A::State) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let mut f = Some(f);
        for _ in 0..MAX_SEND_ATTEMPTS {
            let actor = self.actor::<A>(stream).await?;
            let (tx, rx) = oneshot::channel();
            let Some(g) = f.take() else { break };
            let slot = Arc::new(Mutex::new(Some(g)));
            let slot2 = slot.clone();
            let inspector: crate::entity::Inspector<A> = Box::new(move |v, s| {
                let g = slot2.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(g) = g {
                    let _ = tx.send(g(v, s));
                }
            });
            let msg = if latest {
                EntityMsg::InspectLatest(inspector)
            } else {
                EntityMsg::Inspect(inspector)
            };
            match actor.send_message(msg) {
                Ok(()) => {
                    return rx.await.map_err(|_| {
                        Error::unavailable(format!(
                            "{} '{stream}' failed while being read; try again",
                            A::KIND
                        ))
                    });
                }
                Err(_) => {
                    self.shared.forget(actor.get_id());
                    // Take the closure back out of the undelivered message's slot.
                    f = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    continue;
                }
            }
        }
        Err(Error::unavailable(format!(
            "{} '{stream}' kept stopping while being read; try again",
            A::KIND
        )))
    }

    /// Stop every entity (draining their mailboxes) and the supervisor.
    pub async fn shutdown(&self) {
        self.sweeper.abort();
        let cells: Vec<ActorCell> = {
            let mut t = self.shared.tables();
            t.by_actor.clear();
            t.by_stream
                .drain()
                .filter_map(|(_, e)| e.cell.get().cloned())
                .collect()
        };
        for cell in cells {
            let _ = cell.drain_and_wait(Some(Duration::from_secs(10))).await;
        }
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use snapvault_events::codec::DomainEvent;
    use snapvault_events::{ErrorCode, ManualClock, MemoryLog};

    /// A tiny aggregate: adds numbers; panics on request (to test supervision).
    struct Counter;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    enum CounterEvent {
        Added { n: u64 },
    }

    impl DomainEvent for CounterEvent {
        const SCHEMA_VERSION: u16 = 1;
        fn event_type(&self) -> &'static str {
            "Added"
        }
    }

    #[derive(Debug, Clone)]
    enum CounterCmd {
        Add(u64),
        Panic,
    }

    impl Aggregate for Counter {
        type State = u64;
        type Command = CounterCmd;
        type Event = CounterEvent;
        const KIND: &'static str = "counter";
        fn decide(_: &u64, c: &CounterCmd, _: u64) -> Result<Vec<CounterEvent>, Error> {
            match c {
                CounterCmd::Add(0) => Err(Error::invalid_argument("zero")),
                CounterCmd::Add(n) => Ok(vec![CounterEvent::Added { n: *n }]),
                CounterCmd::Panic => panic!("deliberate panic in decide"),
            }
        }
        fn evolve(s: &mut u64, e: &CounterEvent) {
            let CounterEvent::Added { n } = e;
            *s += n;
        }
    }

    async fn registry(config: RegistryConfig) -> (Registry, Arc<dyn EventLog>) {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(Arc::new(ManualClock::new(0))));
        let r = Registry::start(log.clone(), Arc::new(ManualClock::new(0)), config)
            .await
            .unwrap();
        (r, log)
    }

    async fn value(r: &Registry, stream: &str) -> u64 {
        r.inspect::<Counter, _>(stream, |_, s| *s).await.unwrap()
    }

    #[tokio::test]
    async fn a_panicking_entity_fails_the_call_and_is_reloaded_from_the_log() {
        let (r, _) = registry(RegistryConfig::default()).await;
        r.execute::<Counter>("counter-1", CounterCmd::Add(5), 0)
            .await
            .unwrap();
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            r.execute::<Counter>("counter-1", CounterCmd::Panic, 0),
        )
        .await
        .expect("a panicking entity must not hang its caller")
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
        // Give the supervisor a moment to see the failure, then use the entity again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.execute::<Counter>("counter-1", CounterCmd::Add(2), 0)
            .await
            .unwrap();
        assert_eq!(
            value(&r, "counter-1").await,
            7,
            "state rebuilt from the log"
        );
        let err = r
            .execute::<Counter>("counter-1", CounterCmd::Add(0), 0)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        r.shutdown().await;
    }

    #[tokio::test]
    async fn two_actors_of_one_stream_cannot_both_win() {
        // Two registries over one log play two nodes: the fence serialises them and each
        // catches up on conflict, so no addition is lost.
        let (a, log) = registry(RegistryConfig::default()).await;
        let b = Registry::start(
            log,
            Arc::new(ManualClock::new(0)),
            RegistryConfig::default(),
        )
        .await
        .unwrap();
        let mut handles = Vec::new();
        for i in 0..40u64 {
            let r = if i % 2 == 0 { a.clone() } else { b.clone() };
            handles.push(tokio::spawn(async move {
                r.execute::<Counter>("counter-x", CounterCmd::Add(1), 0)
                    .await
            }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let fresh = Registry::start(
            a.log().clone(),
            Arc::new(ManualClock::new(0)),
            RegistryConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(value(&fresh, "counter-x").await, 40);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_entities_are_stopped_and_live_count_stays_bounded() {
        let (r, _) = registry(RegistryConfig {
            idle_after_ms: 1_000,
            max_live_entities: 100,
            ..Default::default()
        })
        .await;
        for i in 0..1_000 {
            r.execute::<Counter>(&format!("counter-{i}"), CounterCmd::Add(1), 0)
                .await
                .unwrap();
            assert!(r.live_entities() <= 100 + 100 / 8 + 2, "cap exceeded");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(r.live_entities(), 0, "idle entities must be stopped");
        // And they come back with their state.
        assert_eq!(value(&r, "counter-17").await, 1);
        r.shutdown().await;
    }
}
