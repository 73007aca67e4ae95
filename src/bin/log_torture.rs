//! `snapvault-log-torture <dir> [seed]`: append to a `SledLog` as fast as possible until killed.
//!
//! The crash test (`tests/sled_crash.rs`) runs this, kills it with SIGKILL at a random moment,
//! reopens the log and checks that everything acknowledged survived. So the one rule here is:
//! print `ACK <stream> <last_version> <last_position>` (and flush stdout) only *after* `append`
//! returned `Ok` — an ACK is this process's claim that the batch is durable.
//!
//! Three writers run concurrently, each owning two streams, so appends contend on the log's
//! writer lock the way entity actors do. Every append uses `ExpectedVersion::Exact` from the
//! versions read at start: this process is the only writer, so a `Conflict` means the log lost
//! or invented an event, and the process exits non-zero.
//!
//! Each payload carries `(stream, version, batch_first, batch_last)` plus padding whose length
//! depends on the version (see [`payload`]); the test rebuilds the exact bytes to compare.

use snapvault_events::{EventLog, ExpectedVersion, NewEvent, SledLog, SystemClock};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

const WRITERS: usize = 3;
const STREAMS_PER_WRITER: usize = 2;
const MAX_BATCH: u64 = 20;

/// The payload of event `version` of `stream`, appended in the batch `first..=last`.
/// `tests/sled_crash.rs` has the same function; keep them identical.
fn payload(stream: &str, version: u64, first: u64, last: u64) -> Vec<u8> {
    let mut p = format!("{stream} {version} {first} {last} ").into_bytes();
    p.resize(p.len() + (version as usize * 37) % 200, b'.');
    p
}

/// splitmix64: a tiny seeded PRNG; batch sizes and stream choice only need to vary.
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

fn fail(message: String) -> ! {
    eprintln!("snapvault-log-torture: {message}");
    std::process::exit(2);
}

async fn writer(log: SledLog, index: usize, seed: u64) {
    let streams: Vec<String> = (0..STREAMS_PER_WRITER)
        .map(|s| format!("torture-{}", index * STREAMS_PER_WRITER + s))
        .collect();
    let mut versions = Vec::with_capacity(streams.len());
    for s in &streams {
        match log.stream_version(s).await {
            Ok(v) => versions.push(v),
            Err(e) => fail(format!("stream_version({s}): {e}")),
        }
    }
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0x1234_5678_9abc_def1));
    loop {
        let which = (rng.next() % streams.len() as u64) as usize;
        let stream = &streams[which];
        let at = versions[which];
        let count = 1 + rng.next() % MAX_BATCH;
        let (first, last) = (at + 1, at + count);
        let events = (first..=last)
            .map(|v| NewEvent::new("Tortured", 1, payload(stream, v, first, last)))
            .collect();
        match log.append(stream, ExpectedVersion::Exact(at), events).await {
            Ok(a) => {
                if a.stream_version != last {
                    fail(format!(
                        "{stream}: appended {first}..={last} but the log says version {}",
                        a.stream_version
                    ));
                }
                versions[which] = last;
                let mut out = std::io::stdout().lock();
                let written = writeln!(out, "ACK {stream} {last} {}", a.last_position)
                    .and_then(|()| out.flush());
                if let Err(e) = written {
                    fail(format!("stdout: {e}"));
                }
            }
            Err(e) => fail(format!("append {stream} at {at}: {e}")),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        fail("usage: snapvault-log-torture <dir> [seed]".into());
    };
    let seed = match args.next().map(|s| s.parse::<u64>()) {
        None => 1,
        Some(Ok(s)) => s,
        Some(Err(e)) => fail(format!("seed must be a u64: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(format!("cannot start tokio: {e}")),
    };
    runtime.block_on(async move {
        let log = match SledLog::open(&dir, Arc::new(SystemClock)) {
            Ok(log) => log,
            Err(e) => fail(format!("open {}: {e}", dir.display())),
        };
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            tasks.push(tokio::spawn(writer(log.clone(), w, seed)));
        }
        for t in tasks {
            if let Err(e) = t.await {
                fail(format!("writer task: {e}"));
            }
        }
    });
}
