//! One seed, start to finish: setup, steps, liveness, check — and the trace hash.
//!
//! **Setup** draws the swarm (faults, workload mix, registry limits, id block size) from the
//! seed and builds the parts that outlive the node: the virtual clock, the simulated log and
//! the simulated store.
//!
//! **Steps** run on a tokio current_thread runtime with paused time whose own RNG is seeded
//! from the seed too (so `select!` and the scheduler are reproducible). Each step plans a few
//! operations, runs them as concurrent tasks, applies their outcomes to the model and checks
//! every invariant. A **crash** drops the whole runtime — every actor and task dies wherever it
//! was, mid-append or mid-upload — and the node restarts on a fresh runtime over the same log,
//! store and clock, exactly as a process restart would. Occasionally the node is shut down
//! gracefully instead.
//!
//! **Liveness** heals every fault and requires the system to settle: every entity catches up
//! with the log, and fresh work succeeds. Then a strict final check runs.
//!
//! The **trace hash** folds in every log event, every operation outcome and the final store
//! listing; the same seed must give the same hash, run after run.

use crate::claim_check::ClaimBounds;
use crate::faults::{FaultConfig, FaultInjector, Site};
use crate::invariants::{Checker, hash_store};
use crate::model::{IdLedger, Model, Threat};
use crate::node_link::{LinkedLog, LinkedStore, NodeLink};
use crate::prng::Prng;
use crate::sim_clock::SimClock;
use crate::sim_log::SimLog;
use crate::sim_store::SimStore;
use crate::trace::TraceHash;
use crate::workload::{
    Op, OpCtx, WorkloadMix, execute, judge, moving_names, outcome_word, plan_step,
};
use object_store::memory::InMemory;
use snapvault::{Client, Node, NodeParts};
use snapvault_actors::RegistryConfig;
use snapvault_actors::catalog::{Catalog, CatalogCommand};
use snapvault_actors::collection::Collection;
use snapvault_actors::gc::{GcConfig, GcRunOptions};
use snapvault_actors::restore::RestoreConfig;
use snapvault_actors::snapshot::Snapshot;
use snapvault_actors::snapshot::worker::SnapshotConfig;
use snapvault_actors::work::{Scope, WorkConfig};
use snapvault_events::domain::catalog::CATALOG_STREAM;
use snapvault_events::domain::claim::ClaimEvent;
use snapvault_events::domain::collection::CollectionCommand;
use snapvault_events::domain::collection_stream;
use snapvault_events::domain::snapshot::{SnapshotCommand, SnapshotStatus, snapshot_stream};
use snapvault_events::{Clock, ErrorCode, EventLog, MemoryLog, NewEvent};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

/// An operation that has not finished after this much virtual time is hung: a liveness bug.
/// (Snapshot creates retry transient errors until their pending timeout, up to 10 minutes.)
pub const OP_TIMEOUT: Duration = Duration::from_secs(3_600);

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub steps: u64,
    /// Print every step's operations and outcomes to stderr (deterministic, so two runs can
    /// be diffed).
    pub verbose: bool,
    /// Nodes on the one simulated log and store (1: a single node whose crash drops the whole
    /// runtime; 2..=4: see `Sim::cluster`).
    pub nodes: u32,
    /// A bug to plant on purpose, to show that the checker catches it (`--plant`).
    pub plant: Option<Plant>,
}

/// Bugs the simulator can plant ([`RunConfig::plant`]): each is what a real bug would do to
/// the log or the store, done behind the system's back once the run has work in flight. A
/// run with a planted bug must fail; `simulations/tests/determinism.rs` checks that it does,
/// naming the damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// Delete an object the log says must stay (what a GC bug would do).
    LoseObject,
    /// Record a claim by another node on a unit whose claim is live (what a broken fence
    /// would let through).
    ForgeClaim,
}

impl Plant {
    pub fn name(self) -> &'static str {
        match self {
            Plant::LoseObject => "lose-object",
            Plant::ForgeClaim => "forge-claim",
        }
    }

    pub fn parse(name: &str) -> Option<Plant> {
        match name {
            "lose-object" => Some(Plant::LoseObject),
            "forge-claim" => Some(Plant::ForgeClaim),
            _ => None,
        }
    }
}

/// A planted bug waits for this many steps, so there is work for it to damage.
const PLANT_AFTER_STEPS: u64 = 20;

/// Everything a seed draws about how it will be run.
#[derive(Debug, Clone)]
pub struct Swarm {
    pub faults: FaultConfig,
    pub mix: WorkloadMix,
    pub registry: RegistryConfig,
    pub id_block_size: u64,
    pub snapshot: SnapshotConfig,
    pub gc: GcConfig,
    pub restore: RestoreConfig,
    /// The node's part in claimed work: it takes every unit (`Scope::All`, as `serve`).
    pub work: WorkConfig,
}

impl Swarm {
    pub fn draw(rng: &mut Prng) -> Swarm {
        let faults = FaultConfig::draw(&mut rng.fork());
        let mix = WorkloadMix::draw(&mut rng.fork());
        let registry = RegistryConfig {
            idle_after_ms: *rng.pick(&[200, 2_000, 60_000]).unwrap_or(&60_000),
            max_live_entities: *rng.pick(&[1, 3, 16, 10_000]).unwrap_or(&10_000),
            shared_log: false,
        };
        let id_block_size = *rng.pick(&[1, 4, 64, 1_000]).unwrap_or(&64);
        let snapshot = SnapshotConfig {
            pending_timeout_ms: *rng.pick(&[5_000, 60_000, 600_000]).unwrap_or(&60_000),
            retry_initial_ms: *rng.pick(&[10, 100]).unwrap_or(&100),
            retry_max_ms: *rng.pick(&[1_000, 10_000]).unwrap_or(&10_000),
            verify_parallelism: *rng.pick(&[1, 4, 16]).unwrap_or(&4),
        };
        // GC in the background on some seeds; on demand (the workload's GC op) always. The
        // orphan window stays above the longest a host operation can take between writing a
        // file and recording it (seconds of virtual time here): a shorter window is a
        // misconfiguration, not a bug. Retention may be zero: that is where bugs hide.
        let gc = GcConfig {
            interval_ms: *rng.pick(&[0, 0, 5_000, 60_000]).unwrap_or(&0),
            dropped_retention_ms: *rng.pick(&[0, 1_000, 60_000]).unwrap_or(&0),
            orphan_safety_window_ms: *rng.pick(&[120_000, 600_000]).unwrap_or(&600_000),
            max_objects_per_cycle: *rng.pick(&[3, 50, 100_000]).unwrap_or(&100_000),
            ..GcConfig::default()
        };
        let restore = RestoreConfig {
            retry_initial_ms: *rng.pick(&[10, 100]).unwrap_or(&100),
            retry_max_ms: *rng.pick(&[1_000, 10_000]).unwrap_or(&10_000),
            progress_batch_files: *rng.pick(&[1, 4, 32]).unwrap_or(&32),
            progress_batch_ms: *rng.pick(&[100, 1_000]).unwrap_or(&1_000),
            status_poll_ms: *rng.pick(&[200, 1_000]).unwrap_or(&1_000),
            // Simulated files are small: 0 and 256 send every (or most) copies through the
            // multipart path, as big files do in production.
            single_put_max_bytes: *rng.pick(&[0, 256, 16 << 20]).unwrap_or(&(16 << 20)),
            ..RestoreConfig::default()
        };
        // One node restarting on one log, like `serve` on a sled directory: it takes its
        // own earlier incarnation's claims back at once.
        let work = WorkConfig {
            node_id: "sim-0".to_string(),
            scope: Scope::All,
            take_over_own: true,
            max_tasks: *rng.pick(&[1, 4, 8]).unwrap_or(&8),
            max_copies_in_flight: *rng.pick(&[1, 4, 16]).unwrap_or(&16),
            claim_ttl_ms: *rng.pick(&[3_000, 15_000]).unwrap_or(&15_000),
            reconcile_ms: *rng.pick(&[100, 1_000]).unwrap_or(&1_000),
            placement_delay_ms: *rng.pick(&[0, 2_000]).unwrap_or(&0),
            ..WorkConfig::default()
        };
        Swarm {
            faults,
            mix,
            registry,
            id_block_size,
            snapshot,
            gc,
            restore,
            work,
        }
    }
}

/// What a passing seed reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub steps: u64,
    pub trace_hash: u64,
    pub events: u64,
    pub objects: usize,
    pub crashes: u64,
    pub graceful_restarts: u64,
    pub virtual_ms: u64,
    pub lagging_reads: u64,
    /// Restore jobs that ended completed, failed, cancelled.
    pub restores: (u64, u64, u64),
    /// Claims taken, and how many of them took a lapsed claim over.
    pub claims: (u64, u64),
    /// Operation outcomes, by `kind:outcome`.
    pub outcomes: BTreeMap<String, u64>,
    pub injected: BTreeMap<Site, u64>,
}

impl RunReport {
    /// One line, stable format: the sweep parses `result=` and `trace_hash=`.
    pub fn summary_line(&self) -> String {
        let ok: u64 = self
            .outcomes
            .iter()
            .filter(|(k, _)| k.ends_with(":ok"))
            .map(|(_, v)| *v)
            .sum();
        let all: u64 = self.outcomes.values().sum();
        let faults: u64 = self.injected.values().sum();
        format!(
            "seed={} steps={} result=ok trace_hash={:#018x} events={} objects={} ops={} ops_ok={} faults={} crashes={} graceful={} lagging_reads={} restores={}/{}/{} claims={}/{} virtual_s={}",
            self.seed,
            self.steps,
            self.trace_hash,
            self.events,
            self.objects,
            all,
            ok,
            faults,
            self.crashes,
            self.graceful_restarts,
            self.lagging_reads,
            self.restores.0,
            self.restores.1,
            self.restores.2,
            self.claims.0,
            self.claims.1,
            self.virtual_ms / 1_000
        )
    }
}

/// A failing seed: where, what, and how to replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub steps: u64,
    pub nodes: u32,
    pub step: u64,
    pub message: String,
}

impl Failure {
    pub fn replay_command(&self) -> String {
        replay_command(self.seed, self.steps, self.nodes)
    }
}

/// The command that replays one seed (`--nodes` only for a multi-node run, so the
/// single-node format scripts grep for stays as it was).
pub fn replay_command(seed: u64, steps: u64, nodes: u32) -> String {
    let base = format!("cargo run -p snapvault-sim --release -- --seed {seed} --steps {steps}");
    if nodes > 1 {
        format!("{base} --nodes {nodes}")
    } else {
        base
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} steps={} result=FAIL at step {}: {}",
            self.seed, self.steps, self.step, self.message
        )
    }
}

thread_local! {
    /// Panics seen on this thread. The whole simulated node runs on the thread that runs the
    /// seed (current_thread runtime), so a panic anywhere in it — including inside an actor,
    /// where ractor catches it and reports a failed actor — lands here and fails the seed.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.borrow_mut().push(info.to_string()));
            if std::env::var_os("SIM_SHOW_PANICS").is_some() {
                default(info);
            }
        }));
    });
}

fn take_panics() -> Vec<String> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// When (if at all) the node crashes around a step.
enum CrashPlan {
    None,
    /// While the step's operations are in flight, after this much virtual time.
    MidStep(Duration),
    /// Once the step's operations are done; gracefully (shutdown) or not (drop).
    AfterStep {
        graceful: bool,
    },
}

/// Chance per step (ppm) that a cluster cuts one node mid-step, on top of the swarm's crashes.
const CLUSTER_CUT_PPM: u32 = 20_000;

/// Seconds of virtual time the liveness phase waits after healing, checking every second
/// that the reconcilers claim every unit in time.
const LIVENESS_WAIT_S: u64 = 30;

/// One node of a multi-node run and its link to the shared log and store.
struct Member {
    id: String,
    node: Node,
    link: Arc<NodeLink>,
}

struct Sim {
    cfg: RunConfig,
    swarm: Swarm,
    workload_rng: Prng,
    node_rng: Prng,
    runtime_rng: Prng,
    clock: Arc<SimClock>,
    faults: Arc<FaultInjector>,
    log: Arc<SimLog>,
    store: Arc<SimStore>,
    model: Model,
    checker: Checker,
    ledger: IdLedger,
    trace: TraceHash,
    step: u64,
    crashes: u64,
    graceful: u64,
    needs_recovery_check: bool,
    /// The planted bug (`RunConfig::plant`) is in.
    planted: bool,
    outcomes: BTreeMap<String, u64>,
}

impl Sim {
    fn setup(cfg: RunConfig) -> Sim {
        let mut root = Prng::new(cfg.seed);
        let swarm = Swarm::draw(&mut root.fork());
        let workload_rng = root.fork();
        let node_rng = root.fork();
        let runtime_rng = root.fork();
        let fault_rng = root.fork();
        let clock = Arc::new(SimClock::new());
        let faults = Arc::new(FaultInjector::new(swarm.faults.clone(), fault_rng));
        let memory_log = MemoryLog::new(clock.clone());
        let log_head = memory_log.watch_head();
        let log = Arc::new(SimLog::new(memory_log, faults.clone()));
        let store = Arc::new(SimStore::new(
            Arc::new(InMemory::new()),
            faults.clone(),
            clock.clone(),
            log_head,
        ));
        let verbose = cfg.verbose;
        if verbose {
            eprintln!("seed {}: {swarm:#?}", cfg.seed);
        }
        Sim {
            cfg,
            swarm,
            workload_rng,
            node_rng,
            runtime_rng,
            clock,
            faults,
            log,
            store,
            model: Model::default(),
            checker: Checker::new(verbose),
            ledger: IdLedger::default(),
            trace: TraceHash::default(),
            step: 0,
            crashes: 0,
            graceful: 0,
            needs_recovery_check: false,
            planted: false,
            outcomes: BTreeMap::new(),
        }
    }

    /// Plant `RunConfig::plant` once the run is past [`PLANT_AFTER_STEPS`] and there is
    /// something for it to damage (else try again after the next step).
    async fn maybe_plant(&mut self) -> Result<(), String> {
        let Some(plant) = self.cfg.plant else {
            return Ok(());
        };
        if self.planted || self.step < PLANT_AFTER_STEPS {
            return Ok(());
        }
        self.checker
            .ingest(self.log.inner(), &mut self.trace)
            .await?;
        let what = match plant {
            Plant::LoseObject => {
                let protected = self.checker.truth().protected_files();
                let Some(key) = protected.keys().next().cloned() else {
                    return Ok(());
                };
                object_store::ObjectStoreExt::delete(
                    &**self.store.inner(),
                    &object_store::path::Path::from(key.as_str()),
                )
                .await
                .map_err(|e| format!("planting: cannot delete '{key}': {e}"))?;
                format!("deleted object '{key}'")
            }
            Plant::ForgeClaim => {
                let now_ms = self.clock.now_ms();
                let Some((stream, epoch)) = self.checker.claims.live_unit(now_ms) else {
                    return Ok(());
                };
                let forged = ClaimEvent::Claimed {
                    node: "planted".to_string(),
                    epoch: epoch + 1,
                    deadline_ms: now_ms + 10_000,
                    at_ms: now_ms,
                };
                let new = claim_event_for(&stream, forged)?;
                self.log
                    .inner()
                    .append(&stream, snapvault_events::ExpectedVersion::Any, vec![new])
                    .await
                    .map_err(|e| format!("planting: cannot append to '{stream}': {e}"))?;
                format!("forged a claim on '{stream}'")
            }
        };
        self.planted = true;
        self.note(format!("planted bug: {what}"));
        Ok(())
    }

    fn note(&mut self, line: String) {
        self.trace.str(&line);
        if self.cfg.verbose {
            eprintln!("[{:>5} {:>9}ms] {line}", self.step, self.clock.elapsed_ms());
        }
    }

    fn draw_crash(&mut self) -> CrashPlan {
        let n = &self.swarm.faults.node;
        if !self.node_rng.chance(n.crash_ppm) {
            return CrashPlan::None;
        }
        if self.node_rng.chance(n.crash_mid_step_ppm) {
            CrashPlan::MidStep(Duration::from_millis(self.node_rng.range(0, 50)))
        } else {
            let graceful = self.node_rng.chance(n.graceful_ppm);
            CrashPlan::AfterStep { graceful }
        }
    }

    /// Run one node incarnation until it crashes (`Ok(false)`) or the run is over (`Ok(true)`).
    async fn incarnation(&mut self) -> Result<bool, String> {
        self.clock.resume();
        let parts = NodeParts {
            log: self.log.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
        };
        // A start that fails on a transient log error is what a supervisor restarts.
        let mut attempts = 0;
        let node = loop {
            match Node::start_with(
                parts.clone(),
                self.swarm.registry,
                self.swarm.id_block_size,
                snapvault::node::NodeLimits {
                    snapshot: self.swarm.snapshot,
                    gc: self.swarm.gc.clone(),
                    restore: self.swarm.restore,
                    work: self.swarm.work.clone(),
                },
            )
            .await
            {
                Ok(node) => break node,
                Err(e) if e.code == ErrorCode::Unavailable && attempts < 100 => {
                    attempts += 1;
                    self.note(format!("start failed ({e}); starting again"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("the node failed to start: {e}")),
            }
        };
        let client = node.client();
        if self.needs_recovery_check {
            self.note(format!("restarted (incarnation {})", self.crashes));
            self.maybe_plant().await?;
            self.check(&client, false, false).await?;
            self.needs_recovery_check = false;
        }
        while self.step < self.cfg.steps {
            let crash = self.draw_crash();
            let crashed_mid_step = self.run_step(&client, &crash).await?;
            self.step += 1;
            if !matches!(crash, CrashPlan::None) {
                let graceful =
                    !crashed_mid_step && matches!(crash, CrashPlan::AfterStep { graceful: true });
                drop(client);
                if graceful {
                    // Idle here (every operation of the step has returned), so the order in
                    // which the registry drains its actors cannot change what happens.
                    node.shutdown().await;
                    self.graceful += 1;
                    self.note("graceful shutdown".to_string());
                } else {
                    drop(node);
                    self.note("crash".to_string());
                }
                self.crashes += 1;
                self.clock.freeze();
                let down = self
                    .node_rng
                    .range(0, self.swarm.faults.node.downtime_max_ms);
                self.clock.skip(down);
                self.needs_recovery_check = true;
                // Returning drops the runtime: whatever was still running dies mid-flight.
                return Ok(false);
            }
            self.maybe_plant().await?;
            self.check(&client, false, false).await?;
            let gap = self.workload_rng.range(0, self.swarm.mix.max_gap_ms);
            if gap > 0 {
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
        }
        let mut node = node;
        let live = BTreeSet::from([self.swarm.work.node_id.clone()]);
        self.liveness(&client, &mut node, &live).await?;
        drop(client);
        drop(node);
        self.clock.freeze();
        Ok(true)
    }

    /// Start simulated node `slot` of generation `generation` on its own link to the shared
    /// log and store: its own registry (checking other nodes' writes before deciding), its
    /// own node id, taking every unit (`Scope::All`) and never a claim of another id.
    async fn start_member(&mut self, slot: usize, generation: u64) -> Result<Member, String> {
        let id = format!("sim-{slot}-{generation}");
        let link = NodeLink::new(&id, self.log.clone(), self.store.clone());
        let parts = NodeParts {
            log: Arc::new(LinkedLog(link.clone())),
            store: Arc::new(LinkedStore(link.clone())),
            clock: self.clock.clone(),
        };
        let mut registry = self.swarm.registry;
        registry.shared_log = true;
        let work = WorkConfig {
            node_id: id.clone(),
            take_over_own: false,
            ..self.swarm.work.clone()
        };
        let mut attempts = 0;
        loop {
            match Node::start_with(
                parts.clone(),
                registry,
                self.swarm.id_block_size,
                snapvault::node::NodeLimits {
                    snapshot: self.swarm.snapshot,
                    gc: self.swarm.gc.clone(),
                    restore: self.swarm.restore,
                    work: work.clone(),
                },
            )
            .await
            {
                Ok(node) => return Ok(Member { id, node, link }),
                Err(e) if e.code == ErrorCode::Unavailable && attempts < 100 => {
                    attempts += 1;
                    self.note(format!("{id}: start failed ({e}); starting again"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("node {id} failed to start: {e}")),
            }
        }
    }

    /// Multi-node mode (design §10): `nodes` nodes share the log and the store in one
    /// runtime. Each step's operations go to nodes drawn at random. A crash picks one node
    /// and cuts its link — its actors live on as a zombie that can reach nothing (a paused or
    /// partitioned node) — or shuts it down gracefully, and a new node (a new id) takes its
    /// slot at once. Claims must make the zombies harmless and their work be taken over:
    /// every invariant is checked after every step, and liveness at the end.
    async fn cluster(&mut self) -> Result<(), String> {
        self.clock.resume();
        let n = self.cfg.nodes.max(1) as usize;
        let mut members = Vec::with_capacity(n);
        for slot in 0..n {
            members.push(self.start_member(slot, 0).await?);
        }
        let mut zombies: Vec<Member> = Vec::new();
        let mut generation = 0;
        while self.step < self.cfg.steps {
            let mut crash = self.draw_crash();
            // Nodes of a cluster die more often than whole processes in single-node runs:
            // takeovers of lapsed claims are what this mode is for.
            if matches!(crash, CrashPlan::None) && self.node_rng.chance(CLUSTER_CUT_PPM) {
                crash = CrashPlan::MidStep(Duration::from_millis(self.node_rng.range(0, 200)));
            }
            let victim = self.node_rng.below(n as u64) as usize;
            let clients: Vec<Client> = members.iter().map(|m| m.node.client()).collect();
            let cut = members[victim].link.clone();
            self.run_step_on(&clients, &crash, Some((victim, cut)))
                .await?;
            drop(clients);
            if matches!(crash, CrashPlan::MidStep(_)) {
                members[victim].link.settled().await;
            }
            self.step += 1;
            if !matches!(crash, CrashPlan::None) {
                generation += 1;
                let fresh = self.start_member(victim, generation).await?;
                let old = std::mem::replace(&mut members[victim], fresh);
                let graceful = matches!(crash, CrashPlan::AfterStep { graceful: true });
                if graceful {
                    old.node.shutdown().await;
                    self.graceful += 1;
                    self.note(format!("node {victim}: graceful shutdown, replaced"));
                } else {
                    old.link.cut();
                    old.link.settled().await;
                    zombies.push(old);
                    self.note(format!("node {victim}: cut off (zombie), replaced"));
                }
                self.crashes += 1;
            }
            let client = members[0].node.client();
            self.maybe_plant().await?;
            self.check(&client, false, false).await?;
            let gap = self.workload_rng.range(0, self.swarm.mix.max_gap_ms);
            if gap > 0 {
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
        }
        let client = members[0].node.client();
        let live: BTreeSet<String> = members.iter().map(|m| m.id.clone()).collect();
        let mut first = members.remove(0);
        self.liveness(&client, &mut first.node, &live).await?;
        drop(client);
        self.note(format!("{} zombies left behind", zombies.len()));
        drop(zombies);
        drop(members);
        drop(first);
        self.clock.freeze();
        Ok(())
    }

    /// Plan and run one step. Returns whether the node crashed while it ran.
    async fn run_step(&mut self, client: &Client, crash: &CrashPlan) -> Result<bool, String> {
        self.run_step_on(std::slice::from_ref(client), crash, None)
            .await
    }

    /// Plan and run one step, each operation on one of `clients` (drawn when there are
    /// several). With `cut`, a mid-step crash cuts that node's link instead of dropping the
    /// runtime, and every operation is still awaited (those on the cut node fail).
    async fn run_step_on(
        &mut self,
        clients: &[Client],
        crash: &CrashPlan,
        cut: Option<(usize, Arc<NodeLink>)>,
    ) -> Result<bool, String> {
        let ops = plan_step(&mut self.workload_rng, &self.model, &self.swarm.mix);
        let threats: Vec<Threat> = ops.iter().filter_map(Op::threat).collect();
        for t in &threats {
            self.model.threaten(t);
        }
        let moving = moving_names(&ops);
        let mut handles = Vec::with_capacity(ops.len());
        let mut picks = Vec::with_capacity(ops.len());
        for op in &ops {
            let jitter = self.workload_rng.range(0, self.swarm.mix.max_jitter_ms);
            let pick = if clients.len() > 1 {
                self.workload_rng.below(clients.len() as u64) as usize
            } else {
                0
            };
            picks.push(pick);
            let ctx = OpCtx {
                client: clients[pick].clone(),
                ledger: self.ledger.clone(),
            };
            let op = op.clone();
            handles.push(tokio::spawn(async move {
                if jitter > 0 {
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                tokio::time::timeout(OP_TIMEOUT, execute(&ctx, &op)).await
            }));
        }
        // In a cluster, a mid-step crash cuts one node: its operations are lost with it (not
        // awaited: a zombie may wait for ever), the others' are awaited as usual.
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let victim = match (crash, cut) {
            (CrashPlan::MidStep(after), Some((victim, link))) => {
                let after = *after;
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    link.cut();
                    let _ = cut_tx.send(true);
                });
                Some(victim)
            }
            _ => None,
        };
        let joined = async move {
            let mut out = Vec::with_capacity(handles.len());
            for (h, pick) in handles.into_iter().zip(picks) {
                if victim == Some(pick) {
                    let mut rx = cut_rx.clone();
                    tokio::select! {
                        biased;
                        r = h => out.push(Some(r)),
                        _ = rx.wait_for(|cut| *cut) => out.push(None),
                    }
                } else {
                    out.push(Some(h.await));
                }
            }
            out
        };
        let results = match crash {
            CrashPlan::MidStep(after) if victim.is_none() => {
                tokio::select! {
                    biased;
                    r = joined => Some(r),
                    _ = tokio::time::sleep(*after) => None,
                }
            }
            _ => Some(joined.await),
        };
        let Some(results) = results else {
            for op in &ops {
                self.note(format!("{} -> lost in crash", op.label()));
            }
            self.model.apply(&[], &threats);
            return Ok(true);
        };
        let mut acked = Vec::new();
        for (op, r) in ops.iter().zip(results) {
            let Some(r) = r else {
                self.note(format!("{} -> lost with its node", op.label()));
                continue;
            };
            let outcome = match r {
                Err(e) => return Err(format!("{}: the operation task failed: {e}", op.label())),
                Ok(Err(_)) => {
                    return Err(format!(
                        "{}: did not finish within {}s of virtual time (hang)",
                        op.label(),
                        OP_TIMEOUT.as_secs()
                    ));
                }
                Ok(Ok(o)) => o,
            };
            if let Err(why) = judge(op, &outcome, &moving) {
                // The log may say more precisely what broke (and `--verbose` shows it).
                self.checker
                    .ingest(self.log.inner(), &mut self.trace)
                    .await?;
                return Err(why);
            }
            let word = outcome_word(&outcome);
            let kind = op.label();
            let kind = kind.split(' ').next().unwrap_or("?");
            *self.outcomes.entry(format!("{kind}:{word}")).or_default() += 1;
            self.note(format!("{} -> {word}", op.label()));
            if let Ok(effects) = outcome {
                acked.extend(effects);
            }
        }
        self.model.apply(&acked, &threats);
        Ok(false)
    }

    /// Check every invariant, with faults paused so the checker's own reads through the
    /// actors cannot fail.
    async fn check(&mut self, client: &Client, all: bool, strict: bool) -> Result<(), String> {
        self.faults.pause();
        let r = self.check_inner(client, all, strict).await;
        self.faults.resume();
        r
    }

    async fn check_inner(
        &mut self,
        client: &Client,
        all: bool,
        strict: bool,
    ) -> Result<(), String> {
        // Deletions first, then the log: every announcement that preceded a deletion is then
        // in the truth the deletion is judged against.
        let deletions = self.store.take_deletions();
        self.checker
            .ingest(self.log.inner(), &mut self.trace)
            .await?;
        self.checker.check_catalog()?;
        self.checker.check_ids(&self.ledger)?;
        // Background work (the start-time resume, periodic GC) may move the log while we
        // look; a mismatch is believed only if it survives reading the log again.
        let mut attempt = 0;
        loop {
            let r = async {
                self.checker
                    .check_actors(client, self.log.inner(), all, strict)
                    .await?;
                self.checker.check_files(self.store.inner()).await
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e) if attempt >= 2 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::task::yield_now().await;
                    self.checker
                        .ingest(self.log.inner(), &mut self.trace)
                        .await?;
                }
            }
        }
        self.checker.check_deletions(&deletions)?;
        self.checker.check_restores(self.store.inner()).await?;
        self.checker
            .check_new_commits(
                client,
                self.log.inner(),
                self.store.inner(),
                self.clock.clone(),
            )
            .await?;
        self.model.reconcile(self.checker.truth())?;
        let panics = take_panics();
        if !panics.is_empty() {
            return Err(format!("panicked: {}", panics.join(" | ")));
        }
        Ok(())
    }

    /// Heal every fault and require everything to settle.
    async fn liveness(
        &mut self,
        client: &Client,
        node: &mut Node,
        live_nodes: &BTreeSet<String>,
    ) -> Result<(), String> {
        self.faults.heal();
        let healed_ms = self.clock.now_ms();
        self.note("liveness: faults healed".to_string());
        // Virtual time for anything pending to finish or time out, and for idle entities to
        // be evicted — during which the reconcilers alone (nothing here resumes work) must
        // claim every unit that needs a holder in time (`ClaimAudit::overdue`).
        let bounds = ClaimBounds {
            claim_ttl_ms: self.swarm.work.claim_ttl_ms,
            restore_reconcile_ms: self.swarm.work.reconcile_ms,
            node_reconcile_ms: self
                .swarm
                .work
                .reconcile_ms
                .max(snapvault::node::MIN_RECONCILE_MS),
            placement_delay_ms: self.swarm.work.placement_delay_ms,
            retry_max_ms: self.swarm.restore.retry_max_ms,
        };
        for _ in 0..LIVENESS_WAIT_S {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.checker
                .ingest(self.log.inner(), &mut self.trace)
                .await?;
            let late = self.checker.claims.overdue(
                self.checker.truth(),
                self.clock.now_ms(),
                healed_ms,
                live_nodes,
                bounds,
            );
            if !late.is_empty() {
                return Err(format!(
                    "liveness: work unclaimed past its deadline and the reconcile interval: {}",
                    late.join("; ")
                ));
            }
        }
        // What the next start would do: finish interrupted snapshot creates and drops.
        node.resumed().await;
        tokio::time::timeout(OP_TIMEOUT, client.resume_unfinished())
            .await
            .map_err(|_| "liveness: resuming unfinished work hung".to_string())?
            .map_err(|e| format!("liveness: resuming unfinished work failed: {e}"))?;
        self.settle_external(client).await?;
        self.settle_restores(client).await?;
        self.checker
            .ingest(self.log.inner(), &mut self.trace)
            .await?;
        for (id, s) in &self.checker.truth().snapshots {
            if matches!(
                s.state.status,
                Some(SnapshotStatus::Pending | SnapshotStatus::Deleting)
            ) {
                return Err(format!(
                    "liveness: snapshot {id} is still {:?} after healing and resuming",
                    s.state.status
                ));
            }
        }

        // 1. Every entity catches up with the log. Any command makes a stale actor re-read
        //    its stream first; these probes are refused without writing anything.
        let ids: Vec<u64> = self.checker.truth().collections.keys().copied().collect();
        for id in ids {
            let probe = CollectionCommand::DropIndex {
                name: "settle-probe".to_string(),
            };
            match client
                .registry()
                .execute::<Collection>(&collection_stream(id), probe, 0)
                .await
            {
                Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::FailedPrecondition) => {
                }
                Ok(_) => return Err(format!("liveness: a probe of collection {id} wrote events")),
                Err(e) => return Err(format!("liveness: collection {id} does not settle: {e}")),
            }
        }
        let snapshot_ids: Vec<u64> = self.checker.truth().snapshots.keys().copied().collect();
        for id in snapshot_ids {
            // Releasing a lease nobody holds changes nothing.
            let probe = SnapshotCommand::ReleaseLease { job_id: u64::MAX };
            let before = self.log.inner().head().await.map_err(|e| e.to_string())?;
            match client
                .registry()
                .execute::<Snapshot>(&snapshot_stream(id), probe, 0)
                .await
            {
                Err(e) if e.code == ErrorCode::Unavailable => {
                    return Err(format!("liveness: snapshot {id} does not settle: {e}"));
                }
                _ => {}
            }
            if self.log.inner().head().await.map_err(|e| e.to_string())? != before {
                return Err(format!("liveness: a probe of snapshot {id} wrote events"));
            }
        }
        let probe = CatalogCommand::Release {
            name: "settle-probe".to_string(),
            collection_id: 0,
        };
        client
            .registry()
            .execute::<Catalog>(CATALOG_STREAM, probe, 0)
            .await
            .map_err(|e| format!("liveness: the catalog does not settle: {e}"))?;

        // 2. With faults healed, real work succeeds every time.
        let mut ops = Vec::new();
        for (id, c) in self.model.live_collections() {
            if self.model.external.contains(&id) {
                continue; // the host does not write into external collections
            }
            if let Some((pid, p)) = c.partitions.iter().next() {
                ops.push(Op::Flush {
                    id,
                    name: c.name.clone(),
                    partition_id: *pid,
                    partition: p.clone(),
                    shard: 0,
                    files: 2,
                    size: 64,
                    rows: 10,
                });
            }
        }
        ops.push(Op::Create {
            name: "settled".to_string(),
            shard_count: 1,
            partitions: Vec::new(),
        });
        self.run_must_succeed(client, ops).await?;
        let created = self
            .model
            .live_collections()
            .into_iter()
            .find(|(_, c)| c.name == "settled")
            .map(|(id, c)| (id, c.partitions.iter().next().map(|(p, n)| (*p, n.clone()))));
        let Some((id, Some((pid, pname)))) = created else {
            return Err("liveness: the collection created while healed is not known".to_string());
        };
        let flush = Op::Flush {
            id,
            name: "settled".to_string(),
            partition_id: pid,
            partition: pname,
            shard: 0,
            files: 1,
            size: 32,
            rows: 1,
        };
        let snapshot = Op::CreateSnapshot {
            name: "settled".to_string(),
            snapshot: "settled".to_string(),
        };
        let drop = Op::Drop {
            id,
            name: "settled".to_string(),
        };
        let restore = Op::Restore(crate::restore_ops::RestoreOp::Start {
            start: crate::restore_ops::Start {
                collection: "settled".to_string(),
                snapshot: "settled".to_string(),
                target: "settledr".to_string(),
                options: Default::default(),
            },
            then: crate::restore_ops::Follow::Wait,
        });
        self.run_must_succeed(client, vec![flush, snapshot, restore, drop])
            .await?;
        self.checker
            .ingest(self.log.inner(), &mut self.trace)
            .await?;
        let settled_restore = self.checker.truth().restores.jobs.values().find(|j| {
            j.state
                .request
                .as_ref()
                .is_some_and(|r| r.target_name == "settledr")
        });
        if settled_restore.and_then(|j| j.status())
            != Some(snapvault_events::domain::restore::RestoreStatus::Completed)
        {
            return Err(format!(
                "liveness: a restore with faults healed did not complete: {:?}",
                settled_restore.map(|j| (&j.state.status, &j.state.failure))
            ));
        }

        // 3. GC converges: with nothing in flight, windows of zero are safe; cycle until a
        //    cycle reclaims nothing, then nothing unneeded may remain.
        tokio::time::timeout(OP_TIMEOUT, client.gc_wait_loaded(OP_TIMEOUT))
            .await
            .map_err(|_| "liveness: the GC ref index never loaded".to_string())?
            .map_err(|e| format!("liveness: the GC ref index does not load: {e}"))?;
        let mut cycles = 0;
        loop {
            let report = tokio::time::timeout(
                OP_TIMEOUT,
                client.gc_run(GcRunOptions {
                    dry_run: false,
                    dropped_retention_ms: Some(0),
                    orphan_window_ms: Some(0),
                }),
            )
            .await
            .map_err(|_| "liveness: a GC cycle hung".to_string())?
            .map_err(|e| format!("liveness: a GC cycle failed with faults healed: {e}"))?;
            if !report.loaded {
                return Err(format!(
                    "liveness: GC not loaded after waiting: {:?}",
                    report.not_loaded_reason
                ));
            }
            if report.total().objects == 0 && !report.truncated {
                break;
            }
            cycles += 1;
            if cycles > 10_000 {
                return Err("liveness: GC keeps finding garbage after 10000 cycles".to_string());
            }
        }
        self.note(format!(
            "liveness: GC converged after {cycles} reclaiming cycles"
        ));

        // 4. Strict: every stream checked, every actor exactly at the log's version, every
        //    committed snapshot still verifies, nothing unneeded left behind.
        self.check(client, true, true).await?;
        let committed: Vec<u64> = self
            .checker
            .truth()
            .snapshots
            .iter()
            .filter(|(_, s)| s.state.status == Some(SnapshotStatus::Committed))
            .map(|(id, _)| *id)
            .collect();
        self.checker
            .verify_snapshots(
                client,
                self.log.inner(),
                self.store.inner(),
                self.clock.clone(),
                &committed,
            )
            .await?;
        self.checker.check_converged(self.store.inner()).await?;
        self.checker
            .check_restores_settled(self.store.inner())
            .await?;
        // External collections: one more refresh each, with nothing else running, must make
        // every one mirror its source exactly.
        // Only collections a name points at (a create that lost the race for its name leaves
        // a stream that is not live to the catalog).
        let truth = self.checker.truth();
        let names: Vec<String> = truth
            .collections
            .iter()
            .filter(|(id, r)| {
                r.state.is_live()
                    && r.state.external.is_some()
                    && truth.catalog.names.get(&r.state.name) == Some(*id)
            })
            .map(|(_, r)| r.state.name.clone())
            .collect();
        for name in names {
            let t = tokio::time::timeout(OP_TIMEOUT, client.refresh_external(&name))
                .await
                .map_err(|_| format!("liveness: refresh of '{name}' hung"))?
                .map_err(|e| {
                    format!("liveness: refresh of '{name}' failed with faults healed: {e}")
                })?;
            let done = client
                .wait_external_task(t.task_id, OP_TIMEOUT)
                .await
                .map_err(|e| format!("liveness: refresh task of '{name}': {e}"))?;
            self.note(format!("liveness: refresh {name} -> {}", done.status));
            if done.status != "committed"
                && !done
                    .reason
                    .as_deref()
                    .unwrap_or("")
                    .contains("no Parquet fragments")
            {
                return Err(format!(
                    "liveness: the final refresh of '{name}' did not commit: {done:?}"
                ));
            }
        }
        self.checker
            .ingest(self.log.inner(), &mut self.trace)
            .await?;
        let live: BTreeMap<u64, &snapvault_actors::collection::CollectionState> = self
            .checker
            .truth()
            .collections
            .iter()
            .filter(|(id, r)| {
                r.state.is_live()
                    && self.checker.truth().catalog.names.get(&r.state.name) == Some(*id)
            })
            .map(|(id, r)| (*id, &r.state))
            .collect();
        crate::external_check::check_mirror(&live, self.store.inner()).await
    }

    /// Wait for every job to end: the node's reconciler claims whatever a crash left (a
    /// job's coordination, its copy tasks) and drives it on.
    async fn settle_restores(&mut self, client: &Client) -> Result<(), String> {
        self.checker
            .ingest(self.log.inner(), &mut self.trace)
            .await?;
        let jobs: Vec<u64> = self
            .checker
            .truth()
            .restores
            .jobs
            .iter()
            .filter(|(_, j)| !j.status().is_some_and(|s| s.is_terminal()))
            .map(|(id, _)| *id)
            .collect();
        for job in jobs {
            let v = client
                .wait_restore(job, Duration::from_secs(1), Some(OP_TIMEOUT), |_| {})
                .await
                .map_err(|e| format!("liveness: restore job {job} does not end: {e}"))?;
            self.note(format!("liveness: restore {job} -> {}", v.status.as_str()));
        }
        self.checker
            .ingest(self.log.inner(), &mut self.trace)
            .await?;
        self.checker
            .check_restores_settled(self.store.inner())
            .await
    }

    /// Let the reconcilers finish every external task (a task whose runner died is taken
    /// once its claim lapsed), then require that none is left running.
    async fn settle_external(&mut self, client: &Client) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        loop {
            client
                .reconcile_external(None)
                .await
                .map_err(|e| format!("liveness: reconciling external tasks failed: {e}"))?;
            client
                .external_idle(OP_TIMEOUT)
                .await
                .map_err(|e| format!("liveness: external tasks do not settle: {e}"))?;
            self.checker
                .ingest(self.log.inner(), &mut self.trace)
                .await?;
            let truth = self.checker.truth();
            let running = truth.external.tasks.values().any(|t| t.is_running())
                || truth.collections.values().any(|r| {
                    r.state.is_live()
                        && r.state
                            .external
                            .as_ref()
                            .is_some_and(|e| e.active.is_some())
                });
            if !running || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let truth = self.checker.truth();
        for (id, t) in &truth.external.tasks {
            if t.is_running() {
                return Err(format!(
                    "liveness: external task {id} is still running after settling"
                ));
            }
        }
        for (id, r) in &truth.collections {
            if let Some(a) = r.state.external.as_ref().and_then(|e| e.active.as_ref())
                && r.state.is_live()
            {
                return Err(format!(
                    "liveness: collection {id} still holds task {} as active after settling",
                    a.task_id
                ));
            }
        }
        Ok(())
    }

    async fn run_must_succeed(&mut self, client: &Client, ops: Vec<Op>) -> Result<(), String> {
        let ctx = OpCtx {
            client: client.clone(),
            ledger: self.ledger.clone(),
        };
        let mut acked = Vec::new();
        for op in ops {
            let out = tokio::time::timeout(OP_TIMEOUT, execute(&ctx, &op))
                .await
                .map_err(|_| format!("liveness: {} hung", op.label()))?;
            self.note(format!(
                "liveness: {} -> {}",
                op.label(),
                outcome_word(&out)
            ));
            match out {
                Ok(effects) => acked.extend(effects),
                Err(e) => {
                    return Err(format!(
                        "liveness: {} failed with faults healed: {e}",
                        op.label()
                    ));
                }
            }
            // Apply as we go: later operations may act on what earlier ones created.
            self.model.apply(&std::mem::take(&mut acked), &[]);
        }
        Ok(())
    }
}

fn build_runtime(seed: u64) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
}

/// Run one seed. Run one seed per process (the binary does): ractor numbers actors from a
/// process-wide counter, and only a fresh process guarantees a fresh one.
pub fn run_seed(cfg: &RunConfig) -> Result<RunReport, Failure> {
    install_panic_hook();
    take_panics();
    let mut sim = Sim::setup(cfg.clone());
    let fail = |sim: &Sim, message: String| Failure {
        seed: cfg.seed,
        steps: cfg.steps,
        nodes: cfg.nodes,
        step: sim.step,
        message,
    };
    loop {
        let runtime_seed = sim.runtime_rng.next_u64();
        let rt = build_runtime(runtime_seed)
            .map_err(|e| fail(&sim, format!("cannot build a runtime: {e}")))?;
        // A cluster runs in one runtime to the end (its crashes cut single nodes); a single
        // node runs one incarnation per runtime.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                if cfg.nodes > 1 {
                    sim.cluster().await.map(|()| true)
                } else {
                    sim.incarnation().await
                }
            })
        }));
        // Dropping the runtime is the crash: every task of the node dies where it stood.
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(rt)));
        let panics = take_panics();
        match outcome {
            Err(p) => {
                let mut msg = format!("panicked: {}", panic_message(&*p));
                if !panics.is_empty() {
                    msg = format!("{msg} ({})", panics.join(" | "));
                }
                return Err(fail(&sim, msg));
            }
            Ok(Err(m)) => return Err(fail(&sim, m)),
            Ok(Ok(done)) => {
                if dropped.is_err() || !panics.is_empty() {
                    return Err(fail(
                        &sim,
                        format!("panicked while the node went down: {}", panics.join(" | ")),
                    ));
                }
                if done {
                    break;
                }
            }
        }
    }
    let objects = futures::executor::block_on(hash_store(sim.store.inner(), &mut sim.trace))
        .map_err(|m| fail(&sim, m))?;
    Ok(RunReport {
        seed: cfg.seed,
        steps: cfg.steps,
        trace_hash: sim.trace.value(),
        events: sim.checker.events(),
        objects,
        crashes: sim.crashes,
        graceful_restarts: sim.graceful,
        virtual_ms: sim.clock.elapsed_ms(),
        lagging_reads: sim.checker.lagging_reads,
        restores: sim.checker.restore_counts(),
        claims: (sim.checker.claims.claims, sim.checker.claims.takeovers),
        outcomes: sim.outcomes.clone(),
        injected: sim.faults.injected(),
    })
}

/// A claim event encoded as the event type of `stream`'s kind (a forged claim, `Plant`).
fn claim_event_for(stream: &str, claim: ClaimEvent) -> Result<NewEvent, String> {
    use snapvault_events::codec::encode;
    use snapvault_events::domain::external::ExternalTaskEvent;
    use snapvault_events::domain::restore::{CopyTaskEvent, RestoreEvent};
    let encoded = if stream.starts_with("copytask-") {
        encode(&CopyTaskEvent::Claim(claim))
    } else if stream.starts_with("restore-") {
        encode(&RestoreEvent::Claim(claim))
    } else if stream.starts_with("external-") {
        encode(&ExternalTaskEvent::Claim(claim))
    } else if stream.starts_with("snapshot-") {
        encode(&snapvault_events::domain::snapshot::SnapshotEvent::Claim(
            claim,
        ))
    } else {
        encode(&claim)
    };
    encoded.map_err(|e| format!("planting: cannot encode a claim for '{stream}': {e}"))
}
