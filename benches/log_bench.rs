//! The log benchmark: what the sled `EventLog` costs over raw sled, measured in the same run.
//!
//! 1. Batched append: batches of 100 events of ~200 B payload, each `append` durable (it
//!    flushes), vs raw sled inserting the same payload bytes as a `sled::Batch` of 100 inserts +
//!    `flush()` per batch in a separate database. Target ratio ≥ 0.7×.
//! 2. Full replay of 1,000,000 `SegmentFlushed` events (over 1,000 streams) into per-stream
//!    state: `read_all` pages of 4096 + checksum + `codec::decode` + [`fold_event`], vs iterating
//!    the same sled tree's `e` range (a byte-identical copy of the directory, since sled locks
//!    a directory to one opener) with no checksum, rmp-decoding the same payloads and folding
//!    the same way. Target ratio ≥ 0.7×. Memory is measured in a separate replay through the
//!    log alone: peak RSS (VmHWM) is reset before it and read after it, and RSS is sampled at
//!    every quarter, to show replay memory is a page plus sled's bounded cache, not the log.
//!
//! The machine is shared (2 cores, other builds running), so the two sides are measured in
//! *pairs* of chunks close in time, alternating which goes first: appends in 20 chunks of 1/20
//! of the batches (both databases keep growing across chunks, as in one long run), replays in
//! 16 chunks of 1/16 of the log (each side continues where its previous chunk stopped). The
//! ratio is the median of the paired ratios and each side's events/s comes from its median
//! chunk time, so a stall that hits one chunk does not decide the result.
//!
//! 3. Group commit: 64 writers at once, each appending single ~200 B events to its own stream
//!    (64 streams), vs ONE writer appending the same single events one after another through
//!    the same log, vs raw sled inserting the same bytes as batches of 64 inserts + `flush()`
//!    (what 64 concurrent appends could at best share). Measured in 5 alternating rounds;
//!    rates are medians, and the concurrent case's append latencies give p50/p99. Targets:
//!    ≥ 20× the single writer and ≥ 0.5× the raw batches.
//!
//! `cargo bench --bench log_bench`; `SNAPVAULT_BENCH_QUICK=1` shrinks every size 10× for a
//! smoke run.

use serde::Deserialize;
use snapvault_events::codec;
use snapvault_events::domain::collection::{CollectionEvent, IndexFiles, SegmentRecord};
use snapvault_events::domain::{FileRef, collection_stream};
use snapvault_events::sled_log::{CACHE_CAPACITY_BYTES, EVENT_KEY_PREFIX, TREE_NAME};
use snapvault_events::{EventLog, ExpectedVersion, ManualClock, NewEvent, SledLog};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const APPEND_BATCH: usize = 100;
const APPEND_PAYLOAD_BYTES: usize = 200;
const APPEND_STREAMS: usize = 100;
const REPLAY_BATCH: usize = 1_000;
const REPLAY_STREAMS: usize = 1_000;
const REPLAY_PAGE: usize = 4096;
const APPEND_CHUNKS: usize = 20;
const REPLAY_CHUNKS: usize = 16;
const CONCURRENT_WRITERS: usize = 64;
const CONCURRENT_ROUNDS: usize = 5;

type BoxError = Box<dyn std::error::Error>;

/// Per-stream replay state: (segments flushed, rows). The real collection `evolve` will
/// replace [`fold_event`]; keep both sides of the benchmark calling the same function.
type State = BTreeMap<String, (u64, u64)>;

/// Fold one collection event into the state. Stand-in for the collection decider's evolve.
fn fold_event(state: &mut State, stream: &str, event: &CollectionEvent) {
    let entry = match state.get_mut(stream) {
        Some(entry) => entry,
        None => state.entry(stream.to_string()).or_default(),
    };
    if let CollectionEvent::SegmentFlushed { segment } = event {
        entry.0 += 1;
        entry.1 += segment.rows;
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

fn raw_db(path: &Path) -> Result<sled::Db, BoxError> {
    Ok(sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY_BYTES)
        .open()?)
}

/// `(VmRSS, VmHWM)` in MiB, from /proc/self/status (0 where unavailable).
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset VmHWM to the current RSS (Linux `clear_refs` 5), so a later read is the peak of what
/// ran in between. Returns whether the kernel allowed it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn per_sec(events: usize, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64()
}

fn append_payload(i: usize) -> Vec<u8> {
    (0..APPEND_PAYLOAD_BYTES)
        .map(|j| (i.wrapping_mul(31) + j) as u8)
        .collect()
}

/// Durable appends through the log, continuing across chunks.
struct LogAppender {
    log: SledLog,
    streams: Vec<String>,
    versions: Vec<u64>,
    next_batch: usize,
}

impl LogAppender {
    fn open(dir: &Path) -> Result<Self, BoxError> {
        Ok(LogAppender {
            log: SledLog::open(dir, clock())?,
            streams: (0..APPEND_STREAMS).map(|s| format!("bench-{s}")).collect(),
            versions: vec![0; APPEND_STREAMS],
            next_batch: 0,
        })
    }

    async fn run(&mut self, batches: usize) -> Result<Duration, BoxError> {
        let started = Instant::now();
        for _ in 0..batches {
            let b = self.next_batch;
            let s = b % APPEND_STREAMS;
            let events = (0..APPEND_BATCH)
                .map(|i| NewEvent::new("Bench", 1, append_payload(b * APPEND_BATCH + i)))
                .collect();
            let a = self
                .log
                .append(
                    &self.streams[s],
                    ExpectedVersion::Exact(self.versions[s]),
                    events,
                )
                .await?;
            self.versions[s] = a.stream_version;
            self.next_batch += 1;
        }
        Ok(started.elapsed())
    }
}

/// The baseline: the same payload bytes as one `sled::Batch` of inserts + `flush()` per batch.
struct RawAppender {
    _db: sled::Db,
    tree: sled::Tree,
    next_batch: usize,
}

impl RawAppender {
    fn open(dir: &Path) -> Result<Self, BoxError> {
        let db = raw_db(dir)?;
        let tree = db.open_tree("raw")?;
        Ok(RawAppender {
            _db: db,
            tree,
            next_batch: 0,
        })
    }

    fn run(&mut self, batches: usize) -> Result<Duration, BoxError> {
        let started = Instant::now();
        for _ in 0..batches {
            let b = self.next_batch;
            let mut batch = sled::Batch::default();
            for i in 0..APPEND_BATCH {
                let n = b * APPEND_BATCH + i;
                batch.insert(&(n as u64).to_be_bytes(), append_payload(n));
            }
            self.tree.apply_batch(batch)?;
            self.tree.flush()?;
            self.next_batch += 1;
        }
        Ok(started.elapsed())
    }
}

/// Case 3: single-event appends to `CONCURRENT_WRITERS` streams, through one log.
struct GroupAppender {
    log: SledLog,
    versions: Vec<u64>,
    next: usize,
}

impl GroupAppender {
    fn open(dir: &Path) -> Result<Self, BoxError> {
        Ok(GroupAppender {
            log: SledLog::open(dir, clock())?,
            versions: vec![0; CONCURRENT_WRITERS],
            next: 0,
        })
    }

    /// Every writer appends `per_writer` single events at once; returns the elapsed time and
    /// each append's latency.
    async fn concurrent(&mut self, per_writer: usize) -> Result<(Duration, Vec<f64>), BoxError> {
        let started = Instant::now();
        let mut handles = Vec::with_capacity(CONCURRENT_WRITERS);
        for w in 0..CONCURRENT_WRITERS {
            let log = self.log.clone();
            let mut version = self.versions[w];
            let base = self.next + w * per_writer;
            handles.push(tokio::spawn(async move {
                let stream = format!("group-{w}");
                let mut latencies = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let t = Instant::now();
                    let a = log
                        .append(
                            &stream,
                            ExpectedVersion::Exact(version),
                            vec![NewEvent::new("Bench", 1, append_payload(base + i))],
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    version = a.stream_version;
                    latencies.push(t.elapsed().as_secs_f64() * 1_000.0);
                }
                Ok::<_, String>((version, latencies))
            }));
        }
        let mut latencies = Vec::with_capacity(CONCURRENT_WRITERS * per_writer);
        for (w, h) in handles.into_iter().enumerate() {
            let (version, l) = h.await??;
            self.versions[w] = version;
            latencies.extend(l);
        }
        self.next += CONCURRENT_WRITERS * per_writer;
        Ok((started.elapsed(), latencies))
    }

    /// One writer appends `events` single events, one after another, over the same streams.
    async fn single(&mut self, events: usize) -> Result<Duration, BoxError> {
        let started = Instant::now();
        for i in 0..events {
            let w = i % CONCURRENT_WRITERS;
            let a = self
                .log
                .append(
                    &format!("group-{w}"),
                    ExpectedVersion::Exact(self.versions[w]),
                    vec![NewEvent::new("Bench", 1, append_payload(self.next + i))],
                )
                .await?;
            self.versions[w] = a.stream_version;
        }
        self.next += events;
        Ok(started.elapsed())
    }
}

/// Case 3's baseline: the same bytes as raw sled batches of `CONCURRENT_WRITERS` + flush.
fn raw_group_batches(
    tree: &sled::Tree,
    events: usize,
    next: &mut usize,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    for chunk in 0..events.div_ceil(CONCURRENT_WRITERS) {
        let mut batch = sled::Batch::default();
        for i in 0..CONCURRENT_WRITERS.min(events - chunk * CONCURRENT_WRITERS) {
            let n = *next + chunk * CONCURRENT_WRITERS + i;
            batch.insert(&(n as u64).to_be_bytes(), append_payload(n));
        }
        tree.apply_batch(batch)?;
        tree.flush()?;
    }
    *next += events;
    Ok(started.elapsed())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A realistic flush: three data files and one index build of two files.
fn segment_flushed(collection: u64, segment_id: u64) -> CollectionEvent {
    let file = |kind: &str, n: u64, size: u64| FileRef {
        key: format!("data/{collection}/1/{segment_id}/{kind}/{n}"),
        size,
        crc32c: (segment_id as u32).wrapping_mul(2_654_435_761) ^ n as u32,
    };
    CollectionEvent::SegmentFlushed {
        segment: SegmentRecord {
            segment_id,
            partition_id: 1,
            shard: (segment_id % 4) as u32,
            rows: 10_000 + segment_id % 1_000,
            level: 0,
            files: vec![
                file("insert_log", 0, 8 << 20),
                file("delta_log", 0, 64 << 10),
                file("stats_log", 0, 4 << 10),
            ],
            indexes: vec![IndexFiles {
                index_id: 7,
                build_id: segment_id,
                files: vec![file("index/7", 0, 2 << 20), file("index/7", 1, 1 << 20)],
            }],
        },
    }
}

/// Write `total` events in batches of `REPLAY_BATCH`, one stream per batch, cycling over
/// `REPLAY_STREAMS` streams. Returns the elapsed time and the mean record payload size.
async fn write_replay_log(dir: &Path, total: usize) -> Result<(Duration, usize), BoxError> {
    let log = SledLog::open(dir, clock())?;
    let mut versions = vec![0u64; REPLAY_STREAMS];
    let mut payload_bytes = 0usize;
    let started = Instant::now();
    for b in 0..total / REPLAY_BATCH {
        let s = b % REPLAY_STREAMS;
        let mut events = Vec::with_capacity(REPLAY_BATCH);
        for i in 0..REPLAY_BATCH {
            let e = codec::encode(&segment_flushed(
                s as u64 + 1,
                (b * REPLAY_BATCH + i) as u64,
            ))?;
            payload_bytes += e.payload.len();
            events.push(e);
        }
        let a = log
            .append(
                &collection_stream(s as u64 + 1),
                ExpectedVersion::Exact(versions[s]),
                events,
            )
            .await?;
        versions[s] = a.stream_version;
    }
    Ok((started.elapsed(), payload_bytes / total.max(1)))
}

/// Replay through the log: paged `read_all`, checksums, typed decode, fold. Continues where
/// the previous `run` stopped.
struct LogReplayer {
    log: SledLog,
    next: u64,
    state: State,
}

impl LogReplayer {
    fn open(dir: &Path) -> Result<Self, BoxError> {
        Ok(LogReplayer {
            log: SledLog::open(dir, clock())?,
            next: 1,
            state: State::new(),
        })
    }

    /// Replay up to `events` events; returns the time taken and how many were replayed.
    async fn run(
        &mut self,
        events: usize,
        mut on_page: impl FnMut(usize),
    ) -> Result<(Duration, usize), BoxError> {
        let started = Instant::now();
        let mut count = 0usize;
        while count < events {
            let page = self
                .log
                .read_all(self.next, REPLAY_PAGE.min(events - count))
                .await?;
            let Some(last) = page.last() else { break };
            self.next = last.position + 1;
            for env in &page {
                let event: CollectionEvent = codec::decode(env)?;
                fold_event(&mut self.state, &env.stream, &event);
            }
            count += page.len();
            on_page(count);
        }
        Ok((started.elapsed(), count))
    }
}

/// What the raw baseline reads of a record: the record body fields it needs, borrowed.
#[derive(Deserialize)]
struct RawRecord<'a> {
    stream: &'a str,
    #[serde(borrow)]
    payload: &'a [u8],
}

/// Replay straight off sled: the `e` range, no checksum, same payload decode, same fold.
struct RawReplayer {
    _db: sled::Db,
    records: sled::Iter,
    state: State,
}

impl RawReplayer {
    fn open(dir: &Path) -> Result<Self, BoxError> {
        let db = raw_db(dir)?;
        let records = db.open_tree(TREE_NAME)?.scan_prefix([EVENT_KEY_PREFIX]);
        Ok(RawReplayer {
            _db: db,
            records,
            state: State::new(),
        })
    }

    fn run(&mut self, events: usize) -> Result<(Duration, usize), BoxError> {
        let started = Instant::now();
        let mut count = 0usize;
        while count < events {
            let Some(item) = self.records.next() else {
                break;
            };
            let (_, v) = item?;
            let body = v.get(4..).ok_or("record shorter than its checksum")?;
            let record: RawRecord = rmp_serde::from_slice(body)?;
            let event: CollectionEvent = rmp_serde::from_slice(record.payload)?;
            fold_event(&mut self.state, record.stream, &event);
            count += 1;
        }
        Ok((started.elapsed(), count))
    }
}

/// Copy a closed sled directory, so the baseline reads the very same bytes.
fn copy_dir(from: &Path, to: &Path) -> Result<(), BoxError> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A blank line, then a table's heading and rule.
fn table_header(title: &str, ours: &str, baseline: &str) {
    println!();
    println!(
        "| {title:<46} | {ours:>13} | {baseline:>13} | {:>6} | {:<11} |",
        "ratio", "target"
    );
    println!(
        "|{:-<48}|{:-<15}|{:-<15}|{:-<8}|{:-<13}|",
        "", "", "", "", ""
    );
}

fn row(name: &str, (ours, raw, ratio): (f64, f64, f64), target: f64) {
    println!(
        "| {name:<46} | {ours:>13.0} | {raw:>13.0} | {ratio:>5.2}× | ≥ {target:.1}× {} |",
        if ratio >= target { "ok  " } else { "MISS" }
    );
}

fn main() -> Result<(), BoxError> {
    let quick = std::env::var("SNAPVAULT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let scale = if quick { 10 } else { 1 };
    let append_batches = 2_000 / scale;
    let replay_events = 1_000_000 / scale;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let base = tempfile::tempdir()?;
    println!(
        "snapvault log benchmark{} — {} cores, load average {}, data under {}",
        if quick { " (QUICK: sizes ÷10)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        base.path().display()
    );

    // 1. Batched durable append, in alternating pairs of chunks.
    let append_events = append_batches * APPEND_BATCH;
    let chunk_batches = append_batches / APPEND_CHUNKS;
    let mut ours = LogAppender::open(&base.path().join("append-log"))?;
    let mut raw = RawAppender::open(&base.path().join("append-raw"))?;
    let (mut ours_times, mut raw_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in 0..APPEND_CHUNKS {
        let (o, r) = if chunk % 2 == 0 {
            let r = raw.run(chunk_batches)?;
            (runtime.block_on(ours.run(chunk_batches))?, r)
        } else {
            let o = runtime.block_on(ours.run(chunk_batches))?;
            (o, raw.run(chunk_batches)?)
        };
        ours_times.push(o.as_secs_f64());
        raw_times.push(r.as_secs_f64());
        ratios.push(r.as_secs_f64() / o.as_secs_f64());
    }
    let chunk_events = (chunk_batches * APPEND_BATCH) as f64;
    println!(
        "  append: {append_events} events each side in {APPEND_CHUNKS} chunk pairs; totals snapvault {:.2} s, raw sled {:.2} s; paired ratios {:.2}..{:.2}",
        ours_times.iter().sum::<f64>(),
        raw_times.iter().sum::<f64>(),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let append_row = (
        chunk_events / median(ours_times),
        chunk_events / median(raw_times),
        median(ratios),
    );
    drop(ours);
    drop(raw);

    // 3. Group commit: concurrent single-event appends vs one writer vs raw batches.
    let per_writer = 200 / scale;
    let single_events = 1_000 / scale;
    let mut group = GroupAppender::open(&base.path().join("group-log"))?;
    let raw_group_db = raw_db(&base.path().join("group-raw"))?;
    let raw_group_tree = raw_group_db.open_tree("raw")?;
    let mut raw_next = 0usize;
    let (mut conc_rates, mut single_rates, mut raw_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut latencies_ms = Vec::new();
    let groups_before = group.log.group_commit_stats();
    for round in 0..CONCURRENT_ROUNDS {
        let concurrent_events = CONCURRENT_WRITERS * per_writer;
        let mut measure_raw =
            || raw_group_batches(&raw_group_tree, concurrent_events, &mut raw_next);
        let raw_time = if round % 2 == 0 {
            Some(measure_raw()?)
        } else {
            None
        };
        let (c, l) = runtime.block_on(group.concurrent(per_writer))?;
        let s1 = runtime.block_on(group.single(single_events))?;
        let raw_time = match raw_time {
            Some(t) => t,
            None => measure_raw()?,
        };
        conc_rates.push(per_sec(concurrent_events, c));
        single_rates.push(per_sec(single_events, s1));
        raw_rates.push(per_sec(concurrent_events, raw_time));
        latencies_ms.extend(l);
    }
    let groups_after = group.log.group_commit_stats();
    let appends_per_group = (groups_after.1 - groups_before.1) as f64
        / (groups_after.0 - groups_before.0).max(1) as f64;
    let p50_ms = percentile(&mut latencies_ms, 0.50);
    let p99_ms = percentile(&mut latencies_ms, 0.99);
    let (conc, single, raw_batches) = (median(conc_rates), median(single_rates), median(raw_rates));
    println!(
        "  group commit: {CONCURRENT_WRITERS} writers × {per_writer} single events per round, {CONCURRENT_ROUNDS} rounds; one writer {single_events} events per round; {appends_per_group:.1} appends per flush on average; concurrent append latency p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms"
    );
    drop(group);
    drop(raw_group_tree);
    drop(raw_group_db);

    // 2. Full replay.
    let replay_dir = base.path().join("replay");
    let (rss_start, _) = memory_mib();
    let (write_time, payload_mean) =
        runtime.block_on(write_replay_log(&replay_dir, replay_events))?;
    let (rss_written, hwm_written) = memory_mib();
    println!(
        "  wrote {replay_events} SegmentFlushed events (payload ≈ {payload_mean} B) in {REPLAY_BATCH}-event appends over {REPLAY_STREAMS} streams: {:.1} s, {:.0} events/s",
        write_time.as_secs_f64(),
        per_sec(replay_events, write_time)
    );
    let copy_dir_path = base.path().join("replay-copy");
    copy_dir(&replay_dir, &copy_dir_path)?;

    // 2a. Memory: one full replay through the log alone.
    let peak_reset = reset_peak_rss();
    let (rss_before, hwm_before) = memory_mib();
    let mut rss_samples = Vec::new();
    let quarter = (replay_events / 4).max(1);
    let mut memory_pass = LogReplayer::open(&replay_dir)?;
    let (alone, n) = runtime.block_on(memory_pass.run(replay_events, |count| {
        if count % quarter < REPLAY_PAGE {
            rss_samples.push(memory_mib().0);
        }
    }))?;
    if n != replay_events {
        return Err(format!("replayed {n} events, expected {replay_events}").into());
    }
    let reference = std::mem::take(&mut memory_pass.state);
    drop(memory_pass);
    let (rss_after, hwm_after) = memory_mib();
    println!(
        "  replay through the log alone (memory pass): {:.2} s",
        alone.as_secs_f64()
    );

    // 2b. Speed: both sides in alternating pairs of chunks.
    let chunk_events = replay_events / REPLAY_CHUNKS;
    let mut ours = LogReplayer::open(&replay_dir)?;
    let mut raw = RawReplayer::open(&copy_dir_path)?;
    let (mut ours_times, mut raw_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in 0..REPLAY_CHUNKS {
        let ((o, on), (r, rn)) = if chunk % 2 == 0 {
            let r = raw.run(chunk_events)?;
            (runtime.block_on(ours.run(chunk_events, |_| {}))?, r)
        } else {
            let o = runtime.block_on(ours.run(chunk_events, |_| {}))?;
            (o, raw.run(chunk_events)?)
        };
        if on != chunk_events || rn != chunk_events {
            return Err(format!("chunk {chunk}: replayed {on} / {rn} of {chunk_events}").into());
        }
        ours_times.push(o.as_secs_f64());
        raw_times.push(r.as_secs_f64());
        ratios.push(r.as_secs_f64() / o.as_secs_f64());
    }
    if ours.state != reference || raw.state != reference {
        return Err("the two replays folded to different states".into());
    }
    println!(
        "  replay: {} events each side in {REPLAY_CHUNKS} chunk pairs; totals snapvault {:.2} s, raw sled {:.2} s; paired ratios {:.2}..{:.2}",
        chunk_events * REPLAY_CHUNKS,
        ours_times.iter().sum::<f64>(),
        raw_times.iter().sum::<f64>(),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let replay_row = (
        chunk_events as f64 / median(ours_times),
        chunk_events as f64 / median(raw_times),
        median(ratios),
    );
    let streams = reference.len();
    drop(ours);
    drop(raw);

    table_header(
        "benchmark (events/s; ratio = median of pairs)",
        "snapvault",
        "raw sled",
    );
    row(
        &format!(
            "append {APPEND_BATCH}×{APPEND_PAYLOAD_BYTES} B batches + flush ({append_batches})"
        ),
        append_row,
        0.7,
    );
    row(
        &format!("replay {replay_events} events → {streams} stream states"),
        replay_row,
        0.7,
    );
    table_header(
        "group commit (events/s; ratio = medians)",
        "64 writers",
        "baseline",
    );
    row(
        "vs one writer, single-event appends",
        (conc, single, conc / single),
        20.0,
    );
    row(
        &format!("vs raw sled batches of {CONCURRENT_WRITERS} + flush"),
        (conc, raw_batches, conc / raw_batches),
        0.5,
    );
    println!(
        "| {:<46} | {:>13} | {:>13} | {:>6} | {:<11} |",
        "concurrent append latency p50 / p99 (ms)",
        format!("{p50_ms:.2}"),
        format!("{p99_ms:.2}"),
        "",
        ""
    );
    println!();
    println!("memory (MiB)                          VmRSS    VmHWM (peak)");
    println!("  at start                          {rss_start:>8.1}");
    println!("  after writing the replay log      {rss_written:>8.1} {hwm_written:>8.1}");
    println!(
        "  before replay{}      {rss_before:>8.1} {hwm_before:>8.1}",
        if peak_reset {
            " (peak reset)"
        } else {
            " (no reset)  "
        }
    );
    println!("  after the full replay             {rss_after:>8.1} {hwm_after:>8.1}");
    let samples: Vec<String> = rss_samples.iter().map(|m| format!("{m:.1}")).collect();
    println!(
        "  VmRSS at each quarter of the replay: {}",
        samples.join(" → ")
    );
    println!(
        "  peak growth during replay: {:+.1} MiB for {replay_events} events (page = {REPLAY_PAGE})",
        hwm_after - hwm_before
    );
    println!("load average at the end: {}", load_average());
    Ok(())
}
