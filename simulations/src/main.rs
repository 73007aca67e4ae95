//! `snapvault-sim`: run one seed, or sweep a range of seeds.
//!
//! ```text
//! cargo run -p snapvault-sim --release -- --seed 42 [--steps 500] [--verbose]
//! cargo run -p snapvault-sim --release -- --seeds 0..200 [--steps 500] [--jobs 2]
//! ```
//! A sweep runs every seed in a fresh child process of this binary (one seed per process, as
//! determinism requires: some state, like ractor's actor id counter, is process-wide), a few
//! at a time. A failing seed prints the one command that replays it.

use clap::{ArgGroup, Parser};
use snapvault_sim::{Plant, RunConfig, run_seed};
use std::collections::BTreeMap;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "snapvault-sim",
    about = "Deterministic simulation of snapvault: seeded workloads, faults, crashes, invariant checks"
)]
#[command(group(ArgGroup::new("which").required(true).args(["seed", "seeds"])))]
struct Args {
    /// Run this one seed, in this process.
    #[arg(long)]
    seed: Option<u64>,
    /// Sweep the seeds A..B (B excluded), each in its own child process.
    #[arg(long, value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Steps per seed.
    #[arg(long, default_value_t = 500)]
    steps: u64,
    /// Seeds run at once during a sweep.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Print every step's operations and outcomes to stderr (single seed).
    #[arg(long)]
    verbose: bool,
    /// Nodes sharing the simulated log and store (1..=4). With more than one, a crash cuts one
    /// node off (a zombie that keeps trying) and a new node takes its place; claims must keep
    /// their work from being done twice or left undone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    nodes: u32,
    /// Plant a bug (`lose-object`, `forge-claim`) to show the checker catches it: the seed
    /// must fail (single seed only).
    #[arg(long, value_name = "BUG", value_parser = parse_plant, requires = "seed")]
    plant: Option<Plant>,
}

fn parse_plant(s: &str) -> Result<Plant, String> {
    Plant::parse(s).ok_or_else(|| format!("unknown bug '{s}': lose-object or forge-claim"))
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("'{s}' is not a range like 0..200"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|e| format!("bad range start '{a}': {e}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|e| format!("bad range end '{b}': {e}"))?;
    if b <= a {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok((a, b))
}

fn replay(seed: u64, steps: u64, nodes: u32) -> String {
    snapvault_sim::runner::replay_command(seed, steps, nodes)
}

fn init_tracing() {
    // Off unless asked for: logs cost time, and the trace is the record that matters.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
}

fn run_one(seed: u64, steps: u64, verbose: bool, nodes: u32, plant: Option<Plant>) -> ExitCode {
    let started = Instant::now();
    match run_seed(&RunConfig {
        seed,
        steps,
        verbose,
        nodes,
        plant,
    }) {
        Ok(report) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{} wall_ms={} steps_per_s={:.0}",
                report.summary_line(),
                (secs * 1_000.0) as u64,
                steps as f64 / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(f) => {
            println!("{f}");
            let planted = plant.map(|p| format!(" --plant {}", p.name()));
            println!(
                "replay: {}{}",
                f.replay_command(),
                planted.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    }
}

enum SeedResult {
    Passed(String),
    Failed(String),
}

fn run_child(exe: &std::path::Path, seed: u64, steps: u64, nodes: u32) -> SeedResult {
    let out = Command::new(exe)
        .args(["--seed", &seed.to_string(), "--steps", &steps.to_string()])
        .args(["--nodes", &nodes.to_string()])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return SeedResult::Failed(format!("seed={seed}: cannot start a child: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("seed="))
        .unwrap_or("")
        .to_string();
    if out.status.success() && line.contains("result=ok") {
        SeedResult::Passed(line)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        SeedResult::Failed(format!(
            "{}\n  exit: {}\n{}",
            if line.is_empty() {
                format!("seed={seed}: no result line")
            } else {
                line
            },
            out.status,
            tail.iter()
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }
}

fn sweep(start: u64, end: u64, steps: u64, jobs: usize, nodes: u32) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find this binary to run seeds in children: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(start));
    let results: Arc<Mutex<BTreeMap<u64, SeedResult>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let next = next.clone();
            let results = results.clone();
            let exe = exe.clone();
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        return;
                    }
                    let r = run_child(&exe, seed, steps, nodes);
                    match &r {
                        SeedResult::Passed(line) => println!("{line}"),
                        SeedResult::Failed(msg) => println!("{msg}"),
                    }
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(seed, r);
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            eprintln!("a sweep worker thread panicked");
            return ExitCode::FAILURE;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let results = results.lock().unwrap_or_else(|p| p.into_inner());
    let failed: Vec<u64> = results
        .iter()
        .filter(|(_, r)| matches!(r, SeedResult::Failed(_)))
        .map(|(s, _)| *s)
        .collect();
    let seeds = end - start;
    let total_steps = seeds * steps;
    println!(
        "sweep {start}..{end}: {} passed, {} failed; {total_steps} steps in {secs:.1}s = {:.0} steps/s ({jobs} jobs)",
        seeds as usize - failed.len(),
        failed.len(),
        total_steps as f64 / secs.max(1e-9)
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for seed in failed {
            println!("replay: {}", replay(seed, steps, nodes));
        }
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match (args.seed, args.seeds) {
        (Some(seed), _) => run_one(seed, args.steps, args.verbose, args.nodes, args.plant),
        (None, Some((a, b))) => sweep(a, b, args.steps, args.jobs, args.nodes),
        (None, None) => ExitCode::FAILURE,
    }
}
