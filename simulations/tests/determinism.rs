//! The simulator's own guarantees, tested through the built binary so that every seed runs in
//! a fresh process, exactly as in a sweep.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_snapvault-sim");

/// Run one seed in a child process and return its result line.
fn run(seed: u64, steps: u64) -> String {
    let out = Command::new(BIN)
        .args(["--seed", &seed.to_string(), "--steps", &steps.to_string()])
        .output()
        .expect("run the simulator");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "seed {seed} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("seed="))
        .unwrap_or_else(|| panic!("no result line in:\n{stdout}"))
        .to_string()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name} in '{line}'"))
}

#[test]
fn the_same_seed_gives_the_same_trace_hash() {
    // A few seeds, so faults, crashes and fault-free runs are all likely to be covered.
    for seed in [1, 7, 12] {
        let a = run(seed, 150);
        let b = run(seed, 150);
        assert_eq!(
            field(&a, "trace_hash"),
            field(&b, "trace_hash"),
            "seed {seed} is not deterministic:\n{a}\n{b}"
        );
        assert_eq!(field(&a, "events"), field(&b, "events"));
    }
    // And different seeds do different things.
    assert_ne!(
        field(&run(2, 50), "trace_hash"),
        field(&run(3, 50), "trace_hash")
    );
}

#[test]
fn a_small_sweep_passes() {
    let out = Command::new(BIN)
        .args(["--seeds", "100..110", "--steps", "100", "--jobs", "2"])
        .output()
        .expect("run the sweep");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sweep failed:\n{stdout}");
    assert!(stdout.contains("10 passed, 0 failed"), "{stdout}");
}

#[test]
fn a_failing_seed_would_print_its_replay_command() {
    // Argument errors exit non-zero without a result line; the replay format itself is pinned
    // here so scripts that grep for it keep working.
    let f = snapvault_sim::Failure {
        seed: 5,
        steps: 80,
        nodes: 1,
        step: 3,
        message: "x".into(),
    };
    assert_eq!(
        f.replay_command(),
        "cargo run -p snapvault-sim --release -- --seed 5 --steps 80"
    );
    let cluster = snapvault_sim::Failure { nodes: 3, ..f };
    assert_eq!(
        cluster.replay_command(),
        "cargo run -p snapvault-sim --release -- --seed 5 --steps 80 --nodes 3"
    );
}

/// Each bug the simulator can plant is caught: the seed fails, naming the damage (so the
/// checker is known to look where it says it does).
#[test]
fn a_planted_bug_is_caught_by_the_checker() {
    for (bug, nodes, expect) in [
        ("lose-object", "1", "is missing from the store"),
        ("forge-claim", "1", "claimed it at"),
        ("forge-claim", "3", "claimed it at"),
    ] {
        let out = Command::new(BIN)
            .args([
                "--seed", "1", "--steps", "300", "--nodes", nodes, "--plant", bug,
            ])
            .output()
            .expect("run the simulator");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{bug} was not caught:\n{stdout}");
        assert!(stdout.contains("result=FAIL"), "{bug}:\n{stdout}");
        assert!(
            stdout.contains(expect),
            "{bug}: expected '{expect}' in\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("--plant {bug}")),
            "{bug}:\n{stdout}"
        );
    }
}
