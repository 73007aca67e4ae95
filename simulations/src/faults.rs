//! Swarm testing: each seed draws which faults are on and how often, and one shared
//! [`FaultInjector`] rolls them at run time.
//!
//! Why swarm: a single fixed fault mix explores one corner of the space well and the rest
//! badly (a high crash rate hides bugs that need a long quiet run; a high error rate never lets
//! a long operation finish). Drawing a different mix per seed — some seeds with no faults at
//! all, some with one fault cranked up — finds more bugs for the same CPU (Groce et al.,
//! "Swarm Testing", ISSTA 2012; TigerBeetle's VOPR does the same).

use crate::prng::{PPM, Prng};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Every place a fault can be injected. Ordered, so the counters print in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Site {
    /// An append refused before anything was written.
    LogAppendBefore,
    /// An append written durably, then reported as failed: the ambiguous ack.
    LogAppendAfter,
    LogRead,
    LogLatency,
    /// A bare yield before a log call: reorders tasks without moving time.
    LogYield,
    StorePutBefore,
    /// A put that landed but reported an error.
    StorePutAfter,
    StoreGet,
    StoreDelete,
    StoreCopy,
    StoreList,
    StoreLatency,
    /// A listing returned in a shuffled order (object stores promise no order across pages
    /// and some backends do not sort at all).
    StoreListReorder,
}

/// Probabilities (parts per million) and latencies of the log's faults.
#[derive(Debug, Clone, Default)]
pub struct LogFaults {
    pub append_before_ppm: u32,
    pub append_after_ppm: u32,
    pub read_ppm: u32,
    pub latency_ppm: u32,
    pub latency_max_ms: u64,
    pub yield_ppm: u32,
}

/// Probabilities (parts per million) and latencies of the object store's faults.
#[derive(Debug, Clone, Default)]
pub struct StoreFaults {
    pub put_before_ppm: u32,
    pub put_after_ppm: u32,
    pub get_ppm: u32,
    pub delete_ppm: u32,
    pub copy_ppm: u32,
    pub list_ppm: u32,
    pub latency_ppm: u32,
    pub latency_max_ms: u64,
    pub reorder_listings: bool,
}

/// Crashes of the whole node.
#[derive(Debug, Clone, Default)]
pub struct NodeFaults {
    /// Chance per step that the node crashes during or right after the step.
    pub crash_ppm: u32,
    /// Of those crashes, the share that strikes while the step's operations are in flight.
    pub crash_mid_step_ppm: u32,
    /// Chance that a crash at a step boundary is a graceful shutdown instead.
    pub graceful_ppm: u32,
    /// Longest virtual time the node stays down.
    pub downtime_max_ms: u64,
}

/// Everything faulty a seed turned on.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub log: LogFaults,
    pub store: StoreFaults,
    pub node: NodeFaults,
}

/// Draw a probability for one fault: off half the time (swarm), otherwise log-uniform-ish
/// between rare and frequent so both regimes get explored.
fn maybe(rng: &mut Prng, max_ppm: u32) -> u32 {
    if rng.coin() {
        return 0;
    }
    // One of a few decades below `max_ppm`: 1/1, 1/4, 1/16, 1/64 of it.
    let shift = rng.below(4) * 2;
    ((max_ppm as u64) >> shift).max(1) as u32
}

impl FaultConfig {
    /// No faults at all: the liveness phase, and a share of seeds.
    pub fn none() -> FaultConfig {
        FaultConfig::default()
    }

    /// Draw a swarm configuration. About one seed in eight runs fault-free, so bugs that only
    /// need a long undisturbed run are found too.
    pub fn draw(rng: &mut Prng) -> FaultConfig {
        if rng.below(8) == 0 {
            return FaultConfig::none();
        }
        let log = LogFaults {
            append_before_ppm: maybe(rng, 60_000),
            append_after_ppm: maybe(rng, 60_000),
            read_ppm: maybe(rng, 30_000),
            latency_ppm: maybe(rng, 300_000),
            latency_max_ms: rng.range(1, 200),
            yield_ppm: maybe(rng, 500_000),
        };
        let store = StoreFaults {
            put_before_ppm: maybe(rng, 60_000),
            put_after_ppm: maybe(rng, 60_000),
            get_ppm: maybe(rng, 60_000),
            delete_ppm: maybe(rng, 60_000),
            copy_ppm: maybe(rng, 60_000),
            list_ppm: maybe(rng, 60_000),
            latency_ppm: maybe(rng, 300_000),
            latency_max_ms: rng.range(1, 500),
            reorder_listings: rng.coin(),
        };
        let node = NodeFaults {
            crash_ppm: maybe(rng, 40_000),
            crash_mid_step_ppm: rng.range(0, PPM as u64) as u32,
            graceful_ppm: rng.range(0, 300_000) as u32,
            downtime_max_ms: rng.range(0, 120_000),
        };
        FaultConfig { log, store, node }
    }
}

/// Whether faults fire right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Faults fire with their configured probabilities.
    Active = 0,
    /// Switched off for a moment (while the checker reads through the real actors).
    Paused = 1,
    /// Switched off for good: the liveness phase.
    Healed = 2,
}

struct Rolling {
    rng: Prng,
    injected: BTreeMap<Site, u64>,
}

/// The one fault injector a run's simulated log and store share: its configuration, its own
/// PRNG stream, the on/off switch and counters of what it injected.
pub struct FaultInjector {
    config: FaultConfig,
    mode: AtomicU8,
    rolling: Mutex<Rolling>,
}

impl FaultInjector {
    pub fn new(config: FaultConfig, rng: Prng) -> FaultInjector {
        FaultInjector {
            config,
            mode: AtomicU8::new(Mode::Active as u8),
            rolling: Mutex::new(Rolling {
                rng,
                injected: BTreeMap::new(),
            }),
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Active,
            1 => Mode::Paused,
            _ => Mode::Healed,
        }
    }

    /// Stop injecting until [`FaultInjector::resume`] (the checker's reads must not fail).
    pub fn pause(&self) {
        if self.mode() == Mode::Active {
            self.mode.store(Mode::Paused as u8, Ordering::SeqCst);
        }
    }

    pub fn resume(&self) {
        if self.mode() == Mode::Paused {
            self.mode.store(Mode::Active as u8, Ordering::SeqCst);
        }
    }

    /// Stop injecting for the rest of the run: the liveness phase.
    pub fn heal(&self) {
        self.mode.store(Mode::Healed as u8, Ordering::SeqCst);
    }

    pub fn is_active(&self) -> bool {
        self.mode() == Mode::Active
    }

    fn ppm(&self, site: Site) -> u32 {
        let l = &self.config.log;
        let s = &self.config.store;
        match site {
            Site::LogAppendBefore => l.append_before_ppm,
            Site::LogAppendAfter => l.append_after_ppm,
            Site::LogRead => l.read_ppm,
            Site::LogLatency => l.latency_ppm,
            Site::LogYield => l.yield_ppm,
            Site::StorePutBefore => s.put_before_ppm,
            Site::StorePutAfter => s.put_after_ppm,
            Site::StoreGet => s.get_ppm,
            Site::StoreDelete => s.delete_ppm,
            Site::StoreCopy => s.copy_ppm,
            Site::StoreList => s.list_ppm,
            Site::StoreLatency => s.latency_ppm,
            Site::StoreListReorder => {
                if s.reorder_listings {
                    PPM
                } else {
                    0
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rolling> {
        // A panic elsewhere while this was held fails the seed anyway; keep rolling.
        self.rolling.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Does the fault at `site` fire now? Draws nothing when faults are off or the site is
    /// disabled, so the stream stays aligned with what actually happened.
    pub fn roll(&self, site: Site) -> bool {
        if !self.is_active() {
            return false;
        }
        let ppm = self.ppm(site);
        if ppm == 0 {
            return false;
        }
        let mut r = self.lock();
        let fire = r.rng.chance(ppm);
        if fire {
            *r.injected.entry(site).or_default() += 1;
        }
        fire
    }

    /// A virtual delay to inject at a latency site, if it fires.
    pub fn latency(&self, site: Site) -> Option<Duration> {
        if !self.roll(site) {
            return None;
        }
        let max = match site {
            Site::StoreLatency => self.config.store.latency_max_ms,
            _ => self.config.log.latency_max_ms,
        };
        let ms = self.lock().rng.range(0, max);
        Some(Duration::from_millis(ms))
    }

    /// Shuffle a listing if reordering is on.
    pub fn maybe_shuffle<T>(&self, items: &mut [T]) {
        if items.len() > 1 && self.roll(Site::StoreListReorder) {
            self.lock().rng.shuffle(items);
        }
    }

    /// A uniform draw from the fault stream (where in a listing an error strikes).
    pub fn below(&self, n: u64) -> u64 {
        self.lock().rng.below(n)
    }

    /// How many faults were injected, per site.
    pub fn injected(&self) -> BTreeMap<Site, u64> {
        self.lock().injected.clone()
    }
}

/// Wait out an injected latency, or yield, before a call. Sleeping on tokio's paused clock
/// costs no real time but lets other tasks run first, which is the point.
pub async fn delay(faults: &FaultInjector, latency: Site, yield_site: Option<Site>) {
    if let Some(d) = faults.latency(latency) {
        tokio::time::sleep(d).await;
    } else if let Some(y) = yield_site
        && faults.roll(y)
    {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_a_function_of_the_seed_and_some_seeds_are_quiet() {
        let mut quiet = 0;
        for seed in 0..64 {
            let a = FaultConfig::draw(&mut Prng::new(seed));
            let b = FaultConfig::draw(&mut Prng::new(seed));
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            if a.log.append_after_ppm == 0 && a.node.crash_ppm == 0 && a.store.put_before_ppm == 0 {
                quiet += 1;
            }
        }
        assert!(quiet > 0 && quiet < 64);
    }

    #[test]
    fn paused_and_healed_injectors_never_fire() {
        let mut c = FaultConfig::none();
        c.log.append_before_ppm = PPM;
        let f = FaultInjector::new(c, Prng::new(1));
        assert!(f.roll(Site::LogAppendBefore));
        f.pause();
        assert!(!f.roll(Site::LogAppendBefore));
        f.resume();
        assert!(f.roll(Site::LogAppendBefore));
        f.heal();
        f.resume();
        assert!(!f.roll(Site::LogAppendBefore));
        assert_eq!(f.injected().get(&Site::LogAppendBefore), Some(&2));
    }
}
