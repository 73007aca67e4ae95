//! Crash durability of the sled log with a real killed process (design §3: "durable when it
//! returns").
//!
//! Each iteration runs `snapvault-log-torture` on the same directory, kills it with SIGKILL
//! after a random 20–300 ms, reopens the log in this process and proves:
//! - every ACKed `(stream, version, position)` — from this and all earlier iterations — is
//!   present, at that position, with the exact payload;
//! - positions are contiguous `1..=head` and every record decodes (a torn record is never
//!   returned as valid: `read_all` would fail with `Corrupt`);
//! - versions are contiguous per stream, the stream index agrees with the global order, and a
//!   batch is all-or-nothing and never interleaved with another.
//!
//! The kill moments come from a PRNG seeded with a fixed seed plus the iteration; each
//! iteration prints its seed, so a failure can be replayed by hand with the torture binary.

use snapvault_events::{Envelope, EventLog, ManualClock, SledLog};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ITERATIONS: u64 = 24;
const FIXED_SEED: u64 = 0x5eed_c0ff_ee00_0000;
const PAGE: usize = 1000;

/// The payload the torture binary writes for event `version` of `stream`, appended in the batch
/// `first..=last`. Identical to `payload` in `src/bin/log_torture.rs`.
fn payload(stream: &str, version: u64, first: u64, last: u64) -> Vec<u8> {
    let mut p = format!("{stream} {version} {first} {last} ").into_bytes();
    p.resize(p.len() + (version as usize * 37) % 200, b'.');
    p
}

/// `(stream, version, first, last)` from a payload, checked against the exact bytes.
fn parse_payload(env: &Envelope) -> (String, u64, u64, u64) {
    let text = String::from_utf8_lossy(&env.payload);
    let fields: Vec<&str> = text.split(' ').take(4).collect();
    assert_eq!(
        fields.len(),
        4,
        "position {}: unparseable payload",
        env.position
    );
    let n = |i: usize| -> u64 {
        fields[i]
            .parse()
            .unwrap_or_else(|e| panic!("position {}: bad payload field {i}: {e}", env.position))
    };
    let (stream, version, first, last) = (fields[0].to_string(), n(1), n(2), n(3));
    assert_eq!(
        env.payload,
        payload(&stream, version, first, last),
        "position {}: payload bytes differ from what was written",
        env.position
    );
    (stream, version, first, last)
}

/// splitmix64, seeded per iteration.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One ACK line: the child's claim that `stream` reached `version`, ending at `position`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    version: u64,
    position: u64,
}

/// Complete `ACK` lines only: a line cut by the kill has no newline and claims nothing.
fn parse_acks(out: &[u8]) -> Vec<Ack> {
    let text = String::from_utf8_lossy(out);
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert!(
                f.len() == 4 && f[0] == "ACK",
                "unexpected child output line {line:?}"
            );
            Ack {
                stream: f[1].to_string(),
                version: f[2].parse().expect("version"),
                position: f[3].parse().expect("position"),
            }
        })
        .collect()
}

/// What the scan of the whole log found.
struct Scan {
    head: u64,
    /// position → (stream, version)
    at: Vec<(String, u64)>,
    /// stream → its version
    versions: BTreeMap<String, u64>,
}

async fn verify(dir: &Path, acks: &[Ack], previous_head: u64) -> Scan {
    let log = SledLog::open(dir, Arc::new(ManualClock::new(0)))
        .unwrap_or_else(|e| panic!("reopen after kill: {e}"));
    let head = log.head().await.expect("head");
    assert!(
        head >= previous_head,
        "head went back from {previous_head} to {head}"
    );

    // The whole log in global order: contiguous, decodable, exact payloads.
    let mut at: Vec<(String, u64)> = Vec::with_capacity(head as usize);
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    // (stream, first, last) of the batch the previous position belongs to, and whether it ended.
    let mut open_batch: Option<(String, u64, u64)> = None;
    let mut next = 1u64;
    loop {
        let page = log
            .read_all(next, PAGE)
            .await
            .unwrap_or_else(|e| panic!("read_all({next}): {e}"));
        if page.is_empty() {
            break;
        }
        for env in page {
            assert_eq!(env.position, next, "gap or repeat in read_all");
            let (stream, version, first, last) = parse_payload(&env);
            assert_eq!(env.stream, stream, "position {next}: stream");
            assert_eq!(env.version, version, "position {next}: version");
            assert!(first <= version && version <= last, "position {next}");
            let v = versions.entry(stream.clone()).or_default();
            assert_eq!(
                version,
                *v + 1,
                "position {next}: {stream} skips from {v} to {version}"
            );
            *v = version;
            // A batch occupies consecutive positions, starts at its first version and is
            // never interleaved with another one.
            match &open_batch {
                Some((s, f, l)) => assert_eq!(
                    (s.as_str(), *f, *l),
                    (stream.as_str(), first, last),
                    "position {next}: batch of {s} {f}..={l} interrupted"
                ),
                None => assert_eq!(version, first, "position {next}: batch starts mid-way"),
            }
            open_batch = (version < last).then(|| (stream.clone(), first, last));
            at.push((stream, version));
            next += 1;
        }
    }
    assert_eq!(next - 1, head, "read_all ended before the head");
    assert!(
        open_batch.is_none(),
        "torn batch at the end of the log: {open_batch:?}"
    );

    // The stream index agrees with the global order.
    for (stream, &version) in &versions {
        assert_eq!(log.stream_version(stream).await.expect("version"), version);
        let mut from = 1u64;
        loop {
            let page = log
                .read_stream(stream, from, PAGE)
                .await
                .unwrap_or_else(|e| panic!("read_stream({stream}, {from}): {e}"));
            for env in &page {
                assert_eq!(env.version, from);
                assert_eq!(
                    at[env.position as usize - 1],
                    (stream.clone(), from),
                    "index of {stream} v{from} points at the wrong position"
                );
                from += 1;
            }
            if page.len() < PAGE {
                break;
            }
        }
        assert_eq!(from - 1, version, "read_stream({stream}) is short");
    }

    // Everything acknowledged, ever, is there.
    for ack in acks {
        assert!(
            ack.position <= head,
            "ACKed {ack:?} is beyond the head {head}: acknowledged append lost"
        );
        assert_eq!(
            at[ack.position as usize - 1],
            (ack.stream.clone(), ack.version),
            "ACKed {ack:?} is not at its position"
        );
    }
    Scan { head, at, versions }
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut acks: Vec<Ack> = Vec::new();
    let mut head = 0;
    let mut iterations_with_acks = 0;
    for i in 0..ITERATIONS {
        let seed = FIXED_SEED.wrapping_add(i);
        let run_ms = 20 + Rng(seed).next() % 281;
        let mut child = Command::new(env!("CARGO_BIN_EXE_snapvault-log-torture"))
            .arg(dir.path())
            .arg(seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn snapvault-log-torture");
        // Drain stdout concurrently so a full pipe never stalls the child.
        let mut stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).map(|_| out)
        });
        std::thread::sleep(Duration::from_millis(run_ms));
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("iteration {i} (seed {seed}): the torture child exited by itself: {status}");
        }
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        let out = reader.join().expect("reader thread").expect("read stdout");
        let new_acks = parse_acks(&out);
        if !new_acks.is_empty() {
            iterations_with_acks += 1;
        }
        acks.extend(new_acks.iter().cloned());
        let scan = runtime.block_on(verify(dir.path(), &acks, head));
        eprintln!(
            "iteration {i:2}: seed {seed}, killed after {run_ms:3} ms, {:4} new ACKs, head {} ({} streams)",
            new_acks.len(),
            scan.head,
            scan.versions.len()
        );
        assert_eq!(scan.at.len() as u64, scan.head);
        head = scan.head;
    }
    assert!(
        iterations_with_acks >= ITERATIONS / 2,
        "only {iterations_with_acks} of {ITERATIONS} iterations acknowledged anything; the test proved little"
    );
    eprintln!(
        "{} ACKs verified over {ITERATIONS} kills, final head {head}, in {:.1} s",
        acks.len(),
        started.elapsed().as_secs_f64()
    );
}
