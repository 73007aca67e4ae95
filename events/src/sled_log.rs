//! The sled backend: the embedded default `EventLog` for a single process (design §3).
//!
//! # On-disk layout
//!
//! Everything lives in ONE sled tree ([`TREE_NAME`]) so that a single `sled::Batch` applied
//! with `apply_batch` makes an append atomic — sled recovers a batch whole or not at all.
//! Keys are prefixed by one byte:
//!
//! | key | value |
//! |---|---|
//! | `e` ‖ position (u64 BE) | the record: `Envelope::encode()` = crc32c ‖ rmp body |
//! | `s` ‖ stream ‖ 0x00 ‖ version (u64 BE) | position (u64 BE) — one entry per *append*: its last version and last position |
//! | `h` ‖ stream | the stream's version (u64 BE) |
//! | `m` ‖ `head` | the global head (u64 BE) |
//! | `m` ‖ `format` | the layout version (u64 BE), [`FORMAT_VERSION`] |
//!
//! Big-endian integers make sled's byte order the numeric order, so a range scan over `e` is the
//! global order and a range over `s` ‖ stream ‖ 0x00 is the stream in version order. Stream
//! names never contain NUL (`validate_append` refuses them), so the 0x00 separator makes the
//! `s` keys of one stream a prefix no other stream shares.
//!
//! The stream index is sparse: one entry per append, not per event. An append's events take
//! contiguous versions *and* contiguous positions, so the entry `(last_version → last_position)`
//! locates every event of the append (`position = last_position - (last_version - version)`),
//! and a stream read becomes a range scan of the `e` keys. Measured with the log benchmark, a
//! per-event entry doubles the keys each append inserts and halves append throughput on sled
//! 0.34 (each insert copies its leaf node); the sparse index costs one key per append. Every
//! record a stream read returns is still checked to carry that stream and version, so a wrong
//! or missing index entry surfaces as `Corrupt`, never as a wrong event.
//!
//! # Writes: group commit
//!
//! An `append` queues its request, then waits for the writer mutex. Whoever holds the mutex
//! is the *leader*: it takes every queued request (up to [`MAX_GROUP_REQUESTS`] and
//! [`MAX_GROUP_PAYLOAD_BYTES`]) and commits them as one group — each request's fence is checked
//! in queue order against the `h` key *and the requests before it in the group* (two appends to
//! one stream in a group are fenced one after the other, exactly as if they ran alone), the
//! accepted requests' records get contiguous positions, and everything goes into one
//! `sled::Batch`, one flush (fsync) and one watermark write. Each request is still all or
//! nothing (a refused one adds nothing to the batch); the group is applied atomically, so a
//! crash loses a whole group or nothing, and no request is acknowledged before the group's
//! flush. Waiters whose request a leader committed find their answer when they get the mutex
//! and return without writing. Concurrent appenders thus share one flush instead of queueing
//! one flush each (the log benchmark's concurrent case shows the difference).
//!
//! The mutex guard moves into the blocking task, so a cancelled `append` future cannot let a
//! second group start while the first is still writing. A cancelled append whose request is
//! still queued is skipped by the next leader; one already taken into a group completes (its
//! outcome is unknown to its caller, as for any cancelled write).
//!
//! # Visibility
//!
//! Readers only see events at or below the *durable* head — the head after the last
//! successful flush. sled makes an applied batch readable before it is flushed; exposing it
//! would let a reader act on an event (e.g. GC deleting files after a `SegmentDropped`) that a
//! crash then erases. Because appends are serialised, every position below the durable head is
//! durable too, so a tailing reader never skips one.
//!
//! # Durability watermark
//!
//! sled can roll back records *and* its head key together when it recovers from a damaged
//! segment; the remaining records are valid, so their checksums cannot show the loss. After
//! each flushed append the log writes its last position and that record's crc32c to a small
//! fsynced file of its own ([`crate::sled_watermark`]) before acknowledging; `open` refuses a
//! log that ends before it, or whose record there differs (`Corrupt`, naming the position).
//! The cost is one `fdatasync` of 32 bytes per append; group commit (several appends per
//! flush) shares it.
//!
//! # Opening a damaged directory
//!
//! sled reads the greatest file named `snap.*` as its snapshot: a leftover
//! `snap.*.generating` (a snapshot write cut short, e.g. by a full disk) would be read as a
//! corrupt snapshot on every later open, so it is removed first; any other unknown `snap.*`
//! file is refused, naming it. A panic inside sled becomes `Corrupt` at this boundary, and
//! opening is bounded by [`OPEN_TIMEOUT`].
//!
//! # Failure
//!
//! A failed apply or flush *poisons* the log: every later append is refused with
//! `Unavailable` until the process reopens it. After a failed fsync the kernel may have dropped
//! the dirty pages, so retrying the flush and trusting its success would be a lie; reopening
//! recovers from what is really on disk.

use crate::clock::SharedClock;
use crate::envelope::{Envelope, NewEvent, validate_append};
use crate::error::LogError;
use crate::log::{Appended, EventLog, ExpectedVersion};
use crate::sled_watermark::Watermark;
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, oneshot, watch};

/// The one sled tree that holds the log. Public so tools (the benchmark's raw baseline, a
/// corruption test) can look at the bytes without going through the log.
pub const TREE_NAME: &str = "snapvault-log";
/// First byte of every record key (`e` ‖ position u64 BE).
pub const EVENT_KEY_PREFIX: u8 = b'e';
/// First byte of every stream-index key (`s` ‖ stream ‖ 0x00 ‖ version u64 BE).
pub const STREAM_INDEX_KEY_PREFIX: u8 = b's';
/// First byte of every stream-head key (`h` ‖ stream).
pub const STREAM_HEAD_KEY_PREFIX: u8 = b'h';
/// Key of the global head.
pub(crate) const META_HEAD_KEY: &[u8] = b"mhead";
/// Key of the layout version.
const META_FORMAT_KEY: &[u8] = b"mformat";
/// Layout version this build writes and understands. A directory written by a newer layout is
/// refused on open rather than misread.
pub const FORMAT_VERSION: u64 = 1;
/// sled page-cache budget. sled's default is 1 GiB; the log is read in pages and replayed
/// once at start, so a small cache keeps memory flat however long the log grows.
pub const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// `e` ‖ position.
pub fn event_key(position: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT_KEY_PREFIX;
    k[1..].copy_from_slice(&position.to_be_bytes());
    k
}

/// `s` ‖ stream ‖ 0x00 ‖ version.
pub(crate) fn stream_index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 10);
    k.push(STREAM_INDEX_KEY_PREFIX);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The version at the end of an `s` key of `stream`; `None` when the key is not one.
fn stream_index_key_version(stream: &str, key: &[u8]) -> Option<u64> {
    key.get(stream.len() + 2..).and_then(be_u64)
}

/// `h` ‖ stream.
pub(crate) fn stream_head_key(stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 1);
    k.push(STREAM_HEAD_KEY_PREFIX);
    k.extend_from_slice(stream.as_bytes());
    k
}

/// A big-endian u64 value or key suffix; `None` when it is not exactly 8 bytes.
pub(crate) fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Position of an `e` key; `None` when the key is not one.
pub(crate) fn event_key_position(key: &[u8]) -> Option<u64> {
    match key.split_first() {
        Some((&EVENT_KEY_PREFIX, rest)) => be_u64(rest),
        _ => None,
    }
}

/// A stream name that cannot exist in the log (it would alias another stream's keys).
/// Readers get "no such stream" for it, as they do from the memory backend.
fn unstorable_stream_name(stream: &str) -> bool {
    stream.is_empty() || stream.as_bytes().contains(&0)
}

/// The append side, guarded by the writer mutex.
struct WriteState {
    /// Position of the last applied event. Equals the durable head except while an append is
    /// between `apply_batch` and the end of its flush (or after a failed one, which poisons).
    head: u64,
    /// The last acknowledged position, kept outside sled (see the module docs).
    watermark: Watermark,
}

/// Most appends one group commit takes (module docs): bounds the batch and the time a
/// leader keeps the writer.
pub const MAX_GROUP_REQUESTS: usize = 256;
/// Most payload bytes one group commit takes; a single bigger append still goes alone.
pub const MAX_GROUP_PAYLOAD_BYTES: usize = 8 << 20;

/// One queued append, waiting for a leader to commit it.
struct Request {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    now_ms: u64,
    payload_bytes: usize,
    reply: oneshot::Sender<Result<Appended, LogError>>,
    /// Set when the caller's future was dropped before a leader took the request.
    cancelled: Arc<AtomicBool>,
}

/// Marks a queued request cancelled if the `append` future is dropped before it is answered.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Longest `open` waits for sled to open a directory before it gives up with a clear error
/// (a damaged directory has made sled spin; a stalled disk does the same). The environment
/// variable [`OPEN_TIMEOUT_ENV`] (milliseconds) overrides it, e.g. for tests of damage.
pub const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
pub const OPEN_TIMEOUT_ENV: &str = "SNAPVAULT_LOG_OPEN_TIMEOUT_MS";

fn open_timeout() -> std::time::Duration {
    std::env::var(OPEN_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(OPEN_TIMEOUT, std::time::Duration::from_millis)
}

struct Inner {
    path: PathBuf,
    /// Kept so the directory stays locked and flushed on drop as long as any clone lives.
    _db: sled::Db,
    tree: sled::Tree,
    clock: SharedClock,
    /// Owned-guard mutex: the guard moves into the blocking task (see module docs).
    writer: Arc<Mutex<WriteState>>,
    /// Appends waiting for a leader (module docs, group commit).
    queue: std::sync::Mutex<VecDeque<Request>>,
    /// Groups committed (flushes), and appends acknowledged in them.
    groups_committed: AtomicU64,
    appends_committed: AtomicU64,
    /// Highest position known to be on disk; readers see nothing above it.
    durable_head: AtomicU64,
    /// Why the log refuses appends, once a write or flush failed.
    poisoned: OnceLock<String>,
    head_tx: watch::Sender<u64>,
}

/// The sled-backed `EventLog`. Cloning is cheap and shares the same open log.
#[derive(Clone)]
pub struct SledLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLog")
            .field("path", &self.inner.path)
            .field(
                "durable_head",
                &self.inner.durable_head.load(Ordering::Acquire),
            )
            .finish()
    }
}

impl SledLog {
    /// Open (or create) the log in directory `path`. Time for new events comes from `clock`.
    ///
    /// This blocks on disk I/O: call it at start-up or inside `spawn_blocking`.
    ///
    /// # Head recovery
    ///
    /// The meta head key and the records are written in the same atomic batch, so they agree
    /// unless something outside the log touched the directory. When they disagree, the
    /// checksummed records are the truth, and nothing that was acknowledged is dropped silently:
    /// - meta head = last record `L`: the last record is verified (its checksum, position and
    ///   stream index) so the log never appends on top of a garbled tail.
    /// - meta head `H` < `L` (stale or missing meta key): every record `H+1..=L` is verified —
    ///   contiguous positions, valid checksum, stream index pointing at it — and the meta key is
    ///   repaired to `L`. Any failure is `Corrupt` naming the position.
    /// - meta head `H` > `L`: records `L+1..=H` were acknowledged and are gone. Truncating
    ///   would silently forget them, so open fails with `Corrupt` naming position `L+1`; the
    ///   operator restores the directory from a backup.
    pub fn open(path: &Path, clock: SharedClock) -> Result<SledLog, LogError> {
        clear_sled_leftovers(path)?;
        let owned = path.to_path_buf();
        let opened = bounded(path, "open", move || {
            let (db, tree, head, watermark) = Self::open_tree(&owned)?;
            Ok((db, tree, head, watermark))
        })?;
        let (db, tree, head, watermark) = opened;
        let (head_tx, _) = watch::channel(head);
        Ok(SledLog {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                _db: db,
                tree,
                clock,
                writer: Arc::new(Mutex::new(WriteState { head, watermark })),
                queue: std::sync::Mutex::new(VecDeque::new()),
                groups_committed: AtomicU64::new(0),
                appends_committed: AtomicU64::new(0),
                durable_head: AtomicU64::new(head),
                poisoned: OnceLock::new(),
                head_tx,
            }),
        })
    }

    /// The blocking part of [`SledLog::open`]: sled, the layout version, the head, the
    /// watermark check.
    fn open_tree(path: &Path) -> Result<(sled::Db, sled::Tree, u64, Watermark), LogError> {
        let (db, tree) = open_raw(path)?;

        let format = tree
            .get(META_FORMAT_KEY)
            .map_err(|e| sled_error(path, "read format", e))?;
        match format.as_deref().map(be_u64) {
            None => {
                tree.insert(META_FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| sled_error(path, "write format", e))?;
            }
            Some(Some(v)) if v <= FORMAT_VERSION => {}
            Some(Some(v)) => {
                return Err(LogError::UnsupportedVersion(format!(
                    "the log at {} has layout version {v}; this build understands up to {FORMAT_VERSION}; upgrade snapvault",
                    path.display()
                )));
            }
            Some(None) => {
                return Err(LogError::Corrupt {
                    position: 0,
                    reason: format!("layout version key of {} is garbled", path.display()),
                });
            }
        }

        let head = recover_head(path, &tree)?;
        tree.flush()
            .map_err(|e| sled_error(path, "flush after open", e))?;
        let watermark = check_watermark(path, &tree, head)?;
        Ok((db, tree, head, watermark))
    }

    /// `(groups, appends)` committed since open: each group is one flush, so
    /// `appends / groups` is how many appends shared a flush on average.
    pub fn group_commit_stats(&self) -> (u64, u64) {
        (
            self.inner.groups_committed.load(Ordering::Relaxed),
            self.inner.appends_committed.load(Ordering::Relaxed),
        )
    }

    /// The directory this log lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run blocking sled work off the async threads.
    async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, LogError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || catch_sled_panic(&path, what, || f(&inner)))
            .await
            // A panic inside `f` is caught there (`catch_sled_panic`); this is a cancelled task.
            .map_err(|e| {
                LogError::Unavailable(format!(
                    "sled log at {}: {what} task failed: {e}",
                    self.inner.path.display()
                ))
            })?
    }
}

/// sled and the log's tree, nothing checked (the caller's thread; see [`bounded`]).
pub(crate) fn open_raw(path: &Path) -> Result<(sled::Db, sled::Tree), LogError> {
    let db = open_db(path, || {
        sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
    })?;
    let tree = db
        .open_tree(TREE_NAME)
        .map_err(|e| sled_error(path, "open tree", e))?;
    Ok((db, tree))
}

/// How long `open` waits for the directory's lock. sled lets go of it only when its
/// background flusher of a just-dropped handle has exited, a few milliseconds after the drop,
/// so a reopen in the same process (a node restarted in place, a test) briefly finds it held.
const LOCK_WAIT_MS: u64 = 1_000;
const LOCK_POLL_MS: u64 = 10;

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Open with `open`, waiting up to `LOCK_WAIT_MS` for the directory's lock.
pub(crate) fn open_db(
    path: &Path,
    open: impl Fn() -> sled::Result<sled::Db>,
) -> Result<sled::Db, LogError> {
    let mut waited_ms = 0;
    loop {
        match open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) && waited_ms < LOCK_WAIT_MS => {
                std::thread::sleep(std::time::Duration::from_millis(LOCK_POLL_MS));
                waited_ms += LOCK_POLL_MS;
            }
            Err(e) => return Err(open_error(path, e)),
        }
    }
}

/// "could not acquire lock" means another process (or another open handle) holds the
/// directory; say so plainly, since that is what the operator has to fix.
fn open_error(path: &Path, e: sled::Error) -> LogError {
    if let sled::Error::Io(io) = &e
        && io.to_string().contains("could not acquire lock")
    {
        return LogError::Unavailable(format!(
            "data directory {} is in use by another snapvault process",
            path.display()
        ));
    }
    sled_error(path, "open", e)
}

/// sled's own errors: damaged files are `Corrupt` (code `internal`: fix the data, do not
/// retry); I/O failures are `Unavailable`.
pub(crate) fn sled_error(path: &Path, what: &str, e: sled::Error) -> LogError {
    match e {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => {
            damaged(path, &format!("sled reports damage ({what}: {e})"))
        }
        e => LogError::Unavailable(format!("sled log at {}: {what}: {e}", path.display())),
    }
}

/// Is `name` one of sled's own snapshot files (`snap.` ‖ 16 upper-case hex digits)?
fn is_sled_snapshot_name(name: &str) -> bool {
    name.strip_prefix("snap.").is_some_and(|lsn| {
        lsn.len() == 16
            && lsn
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    })
}

/// Remove sled's leftover temporary snapshot files and refuse foreign `snap.*` files (see the
/// module docs: sled would read either as its snapshot).
pub(crate) fn clear_sled_leftovers(path: &Path) -> Result<(), LogError> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(LogError::Unavailable(format!(
                "sled log at {}: list the directory: {e}",
                path.display()
            )));
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("snap.")
            || is_sled_snapshot_name(&name)
            || name.ends_with(".in___motion")
        {
            continue;
        }
        let temp = name
            .strip_suffix(".generating")
            .is_some_and(is_sled_snapshot_name);
        if temp {
            tracing::warn!(path = %entry.path().display(), "removing a snapshot file sled left unfinished");
            std::fs::remove_file(entry.path()).map_err(|e| {
                LogError::Unavailable(format!(
                    "sled log at {}: remove the unfinished {name}: {e}",
                    path.display()
                ))
            })?;
        } else {
            return Err(LogError::Corrupt {
                position: 0,
                reason: format!(
                    "the log directory {} holds a foreign file '{name}' that sled would read as its snapshot; move it out of the directory",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

thread_local! {
    /// Set while this thread runs sled work whose panics are caught and reported as
    /// `Corrupt`: the panic hook stays quiet for them (one error line, not a backtrace).
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, catching a panic (sled panics on some damaged files) as `Corrupt`.
pub(crate) fn catch_sled_panic<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, LogError>,
) -> Result<T, LogError> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    r.unwrap_or_else(|panic| {
        Err(damaged(
            path,
            &format!(
                "sled failed on its files ({what}: {})",
                panic_message(&*panic)
            ),
        ))
    })
}

/// Damage no record can be named for: say which events were acknowledged (the watermark).
fn damaged(path: &Path, what: &str) -> LogError {
    let acknowledged = match crate::sled_watermark::Watermark::read(path) {
        Ok(Some(mark)) => format!("events up to position {} were acknowledged", mark.position),
        _ => "the watermark of acknowledged events is unreadable too".to_string(),
    };
    LogError::Corrupt {
        position: 0,
        reason: format!(
            "{what} in {}; {acknowledged} and cannot be read until the directory is restored from a backup (`snapvault log verify` names the first bad record when sled can open it)",
            path.display()
        ),
    }
}

/// Run `f` (sled work) on its own thread, at most [`OPEN_TIMEOUT`]; a panic inside is
/// `Corrupt` (sled panics on some damaged files), a timeout is `Corrupt` too.
pub(crate) fn bounded<T: Send + 'static>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = path.to_path_buf();
    let label = what.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("sled-{what}"))
        .spawn(move || {
            let _ = tx.send(catch_sled_panic(&dir, &label, f));
        });
    if let Err(e) = spawned {
        return Err(LogError::Unavailable(format!(
            "sled log at {}: {what}: cannot start a thread: {e}",
            path.display()
        )));
    }
    let timeout = open_timeout();
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(damaged(
            path,
            &format!(
                "sled did not {what} it within {} ms (damaged files, or a stalled disk)",
                timeout.as_millis()
            ),
        )),
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// The crc32c stored in the record at `position` (its first four bytes).
pub(crate) fn record_crc(path: &Path, tree: &sled::Tree, position: u64) -> Result<u32, LogError> {
    let bytes = tree
        .get(event_key(position))
        .map_err(|e| sled_error(path, "read the last record", e))?
        .ok_or_else(|| missing_record(position))?;
    Envelope::decode(position, &bytes)?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Hold the verified head against the watermark (see the module docs): refuse a log that
/// lost acknowledged events, then bring the watermark up to the head.
fn check_watermark(path: &Path, tree: &sled::Tree, head: u64) -> Result<Watermark, LogError> {
    let (mut watermark, found) = Watermark::open(path)?;
    if let Some(mark) = found {
        if mark.position > head {
            return Err(LogError::Corrupt {
                position: head + 1,
                reason: format!(
                    "the log at {} ends at position {head}, but events up to position {} were acknowledged (its watermark): they were lost when sled recovered; refusing to serve it. Restore the directory from a backup, or accept the loss with `snapvault log repair --truncate-after {head} --yes`",
                    path.display(),
                    mark.position
                ),
            });
        }
        if mark.position > 0 && record_crc(path, tree, mark.position)? != mark.last_crc {
            return Err(LogError::Corrupt {
                position: mark.position,
                reason: format!(
                    "the record at the log's watermark differs from the one acknowledged there (the log at {} was rewritten or damaged)",
                    path.display()
                ),
            });
        }
        if mark.position == head {
            return Ok(watermark);
        }
    }
    let crc = if head > 0 {
        record_crc(path, tree, head)?
    } else {
        0
    };
    watermark.advance(head, crc)?;
    Ok(watermark)
}

/// See [`SledLog::open`] for the rule.
fn recover_head(path: &Path, tree: &sled::Tree) -> Result<u64, LogError> {
    let meta = match tree
        .get(META_HEAD_KEY)
        .map_err(|e| sled_error(path, "read head", e))?
    {
        None => 0,
        Some(v) => be_u64(&v).ok_or_else(|| LogError::Corrupt {
            position: 0,
            reason: format!("head key of {} is garbled", path.display()),
        })?,
    };
    // The greatest key below `f` is the last `e` key, if any (no other prefix sorts before it).
    let last = match tree
        .get_lt([EVENT_KEY_PREFIX + 1])
        .map_err(|e| sled_error(path, "find last record", e))?
    {
        None => 0,
        Some((k, _)) => event_key_position(&k).ok_or_else(|| LogError::Corrupt {
            position: 0,
            reason: format!("the last record key of {} is garbled", path.display()),
        })?,
    };
    if meta > last {
        return Err(LogError::Corrupt {
            position: last + 1,
            reason: format!(
                "the log at {} records head {meta} but its last record is {last}: records {}..={meta} are missing; refusing to open rather than forget acknowledged events (restore the directory from a backup)",
                path.display(),
                last + 1
            ),
        });
    }
    // Verify the tail past the meta head, or at least the last record.
    let verify_from = if meta < last { meta + 1 } else { last.max(1) };
    if last > 0 {
        let mut expected = verify_from;
        for item in tree.range(event_key(verify_from)..=event_key(last)) {
            let (k, v) = item.map_err(|e| sled_error(path, "verify tail", e))?;
            let position = event_key_position(&k).unwrap_or(0);
            if position != expected {
                return Err(missing_record(expected));
            }
            let env = Envelope::decode(position, &v)?;
            // The first index entry at or after the record's version is its append's.
            let indexed = tree
                .range(
                    stream_index_key(&env.stream, env.version)
                        ..=stream_index_key(&env.stream, u64::MAX),
                )
                .next()
                .transpose()
                .map_err(|e| sled_error(path, "verify tail index", e))?
                .and_then(|(k, v)| {
                    let last_version = stream_index_key_version(&env.stream, &k)?;
                    be_u64(&v)?.checked_sub(last_version.checked_sub(env.version)?)
                });
            if indexed != Some(position) {
                return Err(LogError::Corrupt {
                    position,
                    reason: format!(
                        "stream '{}' version {} is not indexed at this position",
                        env.stream, env.version
                    ),
                });
            }
            expected += 1;
        }
        if expected != last + 1 {
            return Err(missing_record(expected));
        }
    }
    if meta != last {
        tracing::warn!(
            path = %path.display(),
            meta,
            last,
            "log head key was behind its records; verified the tail and repaired it"
        );
        tree.insert(META_HEAD_KEY, &last.to_be_bytes())
            .map_err(|e| sled_error(path, "repair head", e))?;
    }
    Ok(last)
}

pub(crate) fn missing_record(position: u64) -> LogError {
    LogError::Corrupt {
        position,
        reason: "record is missing below the head".into(),
    }
}

impl Inner {
    fn err(&self, what: &str, e: sled::Error) -> LogError {
        sled_error(&self.path, what, e)
    }

    /// Refuse further appends; the first reason wins.
    fn poison(&self, reason: String) -> LogError {
        tracing::error!(path = %self.path.display(), %reason, "sled log poisoned");
        let _ = self.poisoned.set(reason.clone());
        LogError::Unavailable(reason)
    }

    /// Take the next group off the queue: every request up to the group limits (at least one,
    /// however big), cancelled ones dropped.
    fn take_group(&self) -> Vec<Request> {
        let mut queue = match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut group = Vec::new();
        let mut bytes = 0usize;
        while let Some(next) = queue.front() {
            if next.cancelled.load(Ordering::Acquire) {
                queue.pop_front();
                continue;
            }
            if !group.is_empty()
                && (group.len() >= MAX_GROUP_REQUESTS
                    || bytes.saturating_add(next.payload_bytes) > MAX_GROUP_PAYLOAD_BYTES)
            {
                break;
            }
            bytes = bytes.saturating_add(next.payload_bytes);
            if let Some(r) = queue.pop_front() {
                group.push(r);
            }
        }
        group
    }

    /// The stream's version: what this group already gave it, else its `h` key.
    fn current_version(
        &self,
        stream: &str,
        in_group: &BTreeMap<String, u64>,
    ) -> Result<u64, LogError> {
        if let Some(v) = in_group.get(stream) {
            return Ok(*v);
        }
        match self
            .tree
            .get(stream_head_key(stream))
            .map_err(|e| self.err("read stream head", e))?
        {
            None => Ok(0),
            Some(v) => be_u64(&v).ok_or_else(|| LogError::Corrupt {
                position: 0,
                reason: format!("stream head of '{stream}' is garbled"),
            }),
        }
    }

    /// The blocking half of `append`, run by the leader with the writer guard held: fence and
    /// encode each request of the group in order, then one batch, one flush, one watermark
    /// write for all of them (module docs). Every request is answered.
    fn commit_group(&self, state: &mut WriteState, group: Vec<Request>) {
        if let Some(reason) = self.poisoned.get() {
            for r in group {
                let _ = r.reply.send(Err(LogError::Unavailable(format!(
                    "sled log at {} refuses appends after an earlier write failure ({reason}); restart to reopen it",
                    self.path.display()
                ))));
            }
            return;
        }
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut in_group: BTreeMap<String, u64> = BTreeMap::new();
        let mut accepted: Vec<(oneshot::Sender<Result<Appended, LogError>>, Appended)> =
            Vec::with_capacity(group.len());
        let mut head = state.head;
        let mut last_crc = 0u32;
        for r in group {
            let actual = match self.current_version(&r.stream, &in_group) {
                Ok(v) => v,
                Err(e) => {
                    let _ = r.reply.send(Err(e));
                    continue;
                }
            };
            if let ExpectedVersion::Exact(expected) = r.expected
                && expected != actual
            {
                let _ = r.reply.send(Err(LogError::Conflict {
                    stream: r.stream,
                    expected,
                    actual,
                }));
                continue;
            }
            let count = r.events.len() as u64;
            let first_position = head + 1;
            let last_position = head + count;
            let stream_version = actual + count;
            let mut mine = Vec::with_capacity(r.events.len() + 1);
            let mut mine_crc = 0u32;
            let mut refused = None;
            for (i, e) in r.events.into_iter().enumerate() {
                let position = first_position + i as u64;
                let env = Envelope {
                    stream: r.stream.clone(),
                    version: actual + 1 + i as u64,
                    position,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    time_ms: r.now_ms,
                    correlation_id: e.correlation_id,
                    causation_id: e.causation_id,
                    payload: e.payload,
                    crc32c: 0,
                };
                match env.encode() {
                    Ok(record) => {
                        mine_crc = u32::from_be_bytes([record[0], record[1], record[2], record[3]]);
                        mine.push((event_key(position).to_vec(), record));
                    }
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = refused {
                let _ = r.reply.send(Err(e));
                continue;
            }
            mine.push((
                stream_index_key(&r.stream, stream_version),
                last_position.to_be_bytes().to_vec(),
            ));
            records.extend(mine);
            last_crc = mine_crc;
            head = last_position;
            in_group.insert(r.stream, stream_version);
            accepted.push((
                r.reply,
                Appended {
                    first_position,
                    last_position,
                    stream_version,
                },
            ));
        }
        if accepted.is_empty() {
            return;
        }
        let mut batch = sled::Batch::default();
        for (key, value) in records {
            batch.insert(key, value);
        }
        for (stream, version) in &in_group {
            batch.insert(stream_head_key(stream), &version.to_be_bytes());
        }
        batch.insert(META_HEAD_KEY, &head.to_be_bytes());

        // From here on a failure leaves the outcome unknown: poison, report ambiguous.
        let failed = if let Err(e) = self.tree.apply_batch(batch) {
            Some(self.poison(format!(
                "sled log at {}: apply append: {e}",
                self.path.display()
            )))
        } else {
            state.head = head;
            if let Err(e) = self.tree.flush() {
                Some(self.poison(format!(
                    "sled log at {}: flush append: {e}",
                    self.path.display()
                )))
            } else if let Err(e) = state.watermark.advance(head, last_crc) {
                Some(self.poison(e.to_string()))
            } else {
                None
            }
        };
        if let Some(e) = failed {
            for (reply, _) in accepted {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        self.durable_head.store(head, Ordering::Release);
        self.head_tx.send_replace(head);
        self.groups_committed.fetch_add(1, Ordering::Relaxed);
        self.appends_committed
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        for (reply, appended) in accepted {
            let _ = reply.send(Ok(appended));
        }
    }

    fn read_all(&self, from_position: u64, max_count: usize) -> Result<Vec<Envelope>, LogError> {
        let durable = self.durable_head.load(Ordering::Acquire);
        let from = from_position.max(1);
        if max_count == 0 || from > durable {
            return Ok(Vec::new());
        }
        let last = durable.min(from.saturating_add(max_count as u64 - 1));
        let mut out = Vec::with_capacity((last - from + 1) as usize);
        let mut expected = from;
        for item in self.tree.range(event_key(from)..=event_key(last)) {
            let (k, v) = item.map_err(|e| self.err("read records", e))?;
            if event_key_position(&k) != Some(expected) {
                return Err(missing_record(expected));
            }
            out.push(Envelope::decode(expected, &v)?);
            expected += 1;
        }
        if expected != last + 1 {
            return Err(missing_record(expected));
        }
        Ok(out)
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        if max_count == 0 || unstorable_stream_name(stream) {
            return Ok(Vec::new());
        }
        let durable = self.durable_head.load(Ordering::Acquire);
        let from = from_version.max(1);
        let mut out = Vec::new();
        let mut expected = from;
        let range = stream_index_key(stream, from)..=stream_index_key(stream, u64::MAX);
        // Whether the index ran out (not the count, not an append in flight): then the stream
        // must end where its head key says (see `check_stream_end`).
        let mut ran_out = true;
        // Each index entry is one append: its last version and last position.
        for item in self.tree.range(range) {
            let (k, v) = item.map_err(|e| self.err("read stream index", e))?;
            let (Some(last_version), Some(last_position)) =
                (stream_index_key_version(stream, &k), be_u64(&v))
            else {
                return Err(LogError::Corrupt {
                    position: 0,
                    reason: format!("stream '{stream}' has a garbled index entry"),
                });
            };
            if last_position > durable {
                ran_out = false;
                break; // the append in flight; not durable yet
            }
            let first_position = last_version
                .checked_sub(expected)
                .and_then(|behind| last_position.checked_sub(behind))
                .filter(|p| *p >= 1)
                .ok_or_else(|| LogError::Corrupt {
                    position: last_position,
                    reason: format!(
                        "stream '{stream}' index entry (version {last_version} at position {last_position}) cannot hold version {expected}"
                    ),
                })?;
            let wanted = (max_count - out.len()) as u64;
            let last = last_position.min(first_position + wanted - 1);
            let mut position = first_position;
            for item in self.tree.range(event_key(first_position)..=event_key(last)) {
                let (k, record) = item.map_err(|e| self.err("read records", e))?;
                if event_key_position(&k) != Some(position) {
                    return Err(LogError::Corrupt {
                        position,
                        reason: format!(
                            "stream '{stream}' version {expected} points at a missing record"
                        ),
                    });
                }
                let env = Envelope::decode(position, &record)?;
                if env.stream != stream || env.version != expected {
                    return Err(LogError::Corrupt {
                        position,
                        reason: format!(
                            "index says stream '{stream}' version {expected}, record says stream '{}' version {}",
                            env.stream, env.version
                        ),
                    });
                }
                out.push(env);
                expected += 1;
                position += 1;
            }
            if position != last + 1 {
                return Err(LogError::Corrupt {
                    position,
                    reason: format!(
                        "stream '{stream}' version {expected} points at a missing record"
                    ),
                });
            }
            if out.len() == max_count {
                ran_out = false;
                break;
            }
        }
        if ran_out {
            self.check_stream_end(stream, expected - 1)?;
        }
        Ok(out)
    }

    /// A stream read that ran out of index entries ended at version `last`: its head key must
    /// say the same. sled recovers page by page, so a damaged page can bring back an older
    /// copy of part of the stream index while the records and head key are intact; without
    /// this check the stream would silently end early (an entity rebuilt without its last
    /// events). The error names the position of the first version the index lost.
    fn check_stream_end(&self, stream: &str, last: u64) -> Result<(), LogError> {
        let head = self.stream_head(stream)?;
        if head <= last {
            return Ok(());
        }
        let durable = self.durable_head.load(Ordering::Acquire);
        let lost = last + 1;
        let mut position = 0;
        for item in self.tree.range(event_key(1)..=event_key(durable)).rev() {
            let (k, v) = item.map_err(|e| self.err("find a lost index entry", e))?;
            let Some(p) = event_key_position(&k) else {
                continue;
            };
            if let Ok(env) = Envelope::decode(p, &v)
                && env.stream == stream
                && env.version == lost
            {
                position = p;
                break;
            }
        }
        Err(LogError::Corrupt {
            position,
            reason: format!(
                "stream '{stream}' is at version {head}, but its index ends at version {last}: sled lost part of the index when it recovered (`snapvault log verify` walks the records)"
            ),
        })
    }

    /// The head key of `stream` (0 when it has none).
    fn stream_head(&self, stream: &str) -> Result<u64, LogError> {
        match self
            .tree
            .get(stream_head_key(stream))
            .map_err(|e| self.err("read stream head", e))?
        {
            None => Ok(0),
            Some(v) => be_u64(&v).ok_or_else(|| LogError::Corrupt {
                position: 0,
                reason: format!("stream head of '{stream}' is garbled"),
            }),
        }
    }

    fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        if unstorable_stream_name(stream) {
            return Ok(0);
        }
        let head = self.stream_head(stream)?;
        if head == 0 {
            return Ok(0);
        }
        // Read the durable head *after* the stream head: if the stream's last append is still
        // being flushed, step back to the append before it (entries are per append, and only
        // one append is ever in flight).
        let durable = self.durable_head.load(Ordering::Acquire);
        let range = stream_index_key(stream, 1)..=stream_index_key(stream, head);
        let mut skipped_in_flight = false;
        for item in self.tree.range(range).rev() {
            let (k, v) = item.map_err(|e| self.err("read stream index", e))?;
            let version = stream_index_key_version(stream, &k).unwrap_or(0);
            match be_u64(&v) {
                Some(position) if position <= durable => {
                    if !skipped_in_flight && version != head {
                        self.check_stream_end(stream, version)?;
                    }
                    return Ok(version);
                }
                Some(_) => {
                    skipped_in_flight = true;
                    continue;
                }
                None => {
                    return Err(LogError::Corrupt {
                        position: 0,
                        reason: format!(
                            "stream '{stream}' index entry at version {version} is garbled"
                        ),
                    });
                }
            }
        }
        if !skipped_in_flight {
            self.check_stream_end(stream, 0)?;
        }
        Ok(0)
    }
}

#[async_trait]
impl EventLog for SledLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError> {
        validate_append(stream, &events)?;
        let now_ms = self.inner.clock.now_ms();
        let (reply, mut answer) = oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        let request = Request {
            stream: stream.to_string(),
            expected,
            payload_bytes: events.iter().map(|e| e.payload.len()).sum(),
            events,
            now_ms,
            reply,
            cancelled,
        };
        match self.inner.queue.lock() {
            Ok(mut q) => q.push_back(request),
            Err(poisoned) => poisoned.into_inner().push_back(request),
        }
        let unknown = || {
            LogError::Unavailable(format!(
                "sled log at {}: the group commit holding this append stopped; its outcome is unknown",
                self.inner.path.display()
            ))
        };
        // Usually a leader commits this request while it waits for the writer: then it returns
        // at once, without taking the writer in turn (which would delay the next group).
        let lock = self.inner.writer.clone().lock_owned();
        tokio::pin!(lock);
        let mut guard = tokio::select! {
            biased;
            result = &mut answer => return result.map_err(|_| unknown())?,
            guard = &mut lock => guard,
        };
        // This task leads: groups until one of them held this request (usually the first).
        loop {
            match answer.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(unknown()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            guard = self
                .blocking("append", move |inner| {
                    let group = inner.take_group();
                    inner.commit_group(&mut guard, group);
                    Ok(guard)
                })
                .await?;
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        let stream = stream.to_string();
        self.blocking("read_stream", move |inner| {
            inner.read_stream(&stream, from_version, max_count)
        })
        .await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        let stream = stream.to_string();
        self.blocking("stream_version", move |inner| inner.stream_version(&stream))
            .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        self.blocking("read_all", move |inner| {
            inner.read_all(from_position, max_count)
        })
        .await
    }

    async fn head(&self) -> Result<u64, LogError> {
        Ok(self.inner.durable_head.load(Ordering::Acquire))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Mutex as StdMutex;

    fn clock() -> SharedClock {
        Arc::new(ManualClock::new(1_000))
    }

    fn ev(n: u64) -> NewEvent {
        NewEvent::new("T", 1, n.to_be_bytes().to_vec())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let dirs = Arc::new(StdMutex::new(Vec::new()));
        crate::conformance::run_all(|| {
            let dirs = dirs.clone();
            async move {
                let dir = tempfile::tempdir().unwrap();
                let log = SledLog::open(dir.path(), clock()).unwrap();
                dirs.lock().unwrap().push(dir);
                Arc::new(log) as Arc<dyn EventLog>
            }
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn conformance_on_current_thread_runtime() {
        let dirs = Arc::new(StdMutex::new(Vec::new()));
        crate::conformance::run_all(|| {
            let dirs = dirs.clone();
            async move {
                let dir = tempfile::tempdir().unwrap();
                let log = SledLog::open(dir.path(), clock()).unwrap();
                dirs.lock().unwrap().push(dir);
                Arc::new(log) as Arc<dyn EventLog>
            }
        })
        .await;
    }

    #[tokio::test]
    async fn durability() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        crate::conformance::run_durability(|| {
            let path = path.clone();
            async move { Arc::new(SledLog::open(&path, clock()).unwrap()) as Arc<dyn EventLog> }
        })
        .await;
    }

    /// Fill a log with two streams, interleaved: positions 1..=20, `a` at odd, `b` at even.
    async fn filled(dir: &Path) {
        let log = SledLog::open(dir, clock()).unwrap();
        for i in 0..10u64 {
            log.append("a", ExpectedVersion::Exact(i), vec![ev(i)])
                .await
                .unwrap();
            log.append("b", ExpectedVersion::Exact(i), vec![ev(i)])
                .await
                .unwrap();
        }
    }

    fn raw_tree(dir: &Path) -> (sled::Db, sled::Tree) {
        let db = open_db(dir, || sled::open(dir)).unwrap();
        let tree = db.open_tree(TREE_NAME).unwrap();
        (db, tree)
    }

    #[tokio::test]
    async fn a_flipped_bit_on_disk_is_corrupt_at_its_position() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        // Position 7 is stream `a`, version 4.
        {
            let (db, tree) = raw_tree(dir.path());
            let mut bytes = tree.get(event_key(7)).unwrap().unwrap().to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x10;
            tree.insert(event_key(7), bytes).unwrap();
            db.flush().unwrap();
        }
        let log = SledLog::open(dir.path(), clock()).unwrap();
        let err = log.read_all(1, 100).await.unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 7, .. }),
            "{err:?}"
        );
        let err = log.read_stream("a", 1, 100).await.unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 7, .. }),
            "{err:?}"
        );
        // Pages that do not include the record still read, and the other stream is intact.
        assert_eq!(log.read_all(1, 6).await.unwrap().len(), 6);
        assert_eq!(log.read_all(8, 100).await.unwrap().len(), 13);
        assert_eq!(log.read_stream("b", 1, 100).await.unwrap().len(), 10);
        assert_eq!(log.read_stream("a", 5, 100).await.unwrap().len(), 6);
    }

    #[tokio::test]
    async fn an_index_entry_pointing_at_a_missing_record_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let (db, tree) = raw_tree(dir.path());
            tree.remove(event_key(4)).unwrap(); // stream `b`, version 2
            db.flush().unwrap();
        }
        let log = SledLog::open(dir.path(), clock()).unwrap();
        let err = log.read_stream("b", 1, 100).await.unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 4, .. }),
            "{err:?}"
        );
        let err = log.read_all(1, 100).await.unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 4, .. }),
            "{err:?}"
        );
    }

    /// The index holds one entry per append; reads must start and stop anywhere inside one.
    #[tokio::test]
    async fn stream_reads_start_and_stop_inside_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), clock()).unwrap();
        let sizes = [3usize, 1, 5, 2, 7, 1, 4];
        let mut versions = [0u64; 2];
        for (i, n) in sizes.iter().enumerate() {
            let s = i % 2;
            let events = (0..*n as u64).map(|k| ev(versions[s] + 1 + k)).collect();
            let a = log
                .append(
                    &format!("m-{s}"),
                    ExpectedVersion::Exact(versions[s]),
                    events,
                )
                .await
                .unwrap();
            versions[s] = a.stream_version;
        }
        for (s, total) in versions.iter().enumerate() {
            let stream = format!("m-{s}");
            assert_eq!(log.stream_version(&stream).await.unwrap(), *total);
            for from in 1..=total + 1 {
                for max in 1..=total + 1 {
                    let got = log.read_stream(&stream, from, max as usize).await.unwrap();
                    let want: Vec<u64> = (from..=*total).take(max as usize).collect();
                    let got_versions: Vec<u64> = got.iter().map(|e| e.version).collect();
                    assert_eq!(got_versions, want, "{stream} from {from} max {max}");
                    for e in &got {
                        assert_eq!(e.payload, e.version.to_be_bytes().to_vec());
                        assert_eq!(e.stream, stream);
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_lost_index_entry_is_corrupt_not_a_wrong_event() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SledLog::open(dir.path(), clock()).unwrap();
            // a: v1-3 at 1-3; b: v1-2 at 4-5; a: v4-5 at 6-7.
            log.append("a", ExpectedVersion::Exact(0), vec![ev(1), ev(2), ev(3)])
                .await
                .unwrap();
            log.append("b", ExpectedVersion::Exact(0), vec![ev(1), ev(2)])
                .await
                .unwrap();
            log.append("a", ExpectedVersion::Exact(3), vec![ev(4), ev(5)])
                .await
                .unwrap();
        }
        {
            let (db, tree) = raw_tree(dir.path());
            tree.remove(stream_index_key("a", 3)).unwrap();
            db.flush().unwrap();
        }
        let log = SledLog::open(dir.path(), clock()).unwrap();
        // The next entry (v5 at 7) would put v1 at position 3, which holds a v3.
        let err = log.read_stream("a", 1, 100).await.unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 3, .. }),
            "{err:?}"
        );
        // Reads that only need the surviving entry still work.
        let tail = log.read_stream("a", 4, 100).await.unwrap();
        assert_eq!(
            tail.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![6, 7]
        );
    }

    #[tokio::test]
    async fn a_garbled_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let (db, tree) = raw_tree(dir.path());
            let mut bytes = tree.get(event_key(20)).unwrap().unwrap().to_vec();
            bytes.truncate(bytes.len() - 3);
            tree.insert(event_key(20), bytes).unwrap();
            db.flush().unwrap();
        }
        let err = SledLog::open(dir.path(), clock()).unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 20, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_stale_head_key_is_repaired_from_verified_records() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let (db, tree) = raw_tree(dir.path());
            tree.insert(META_HEAD_KEY, &15u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let log = SledLog::open(dir.path(), clock()).unwrap();
        assert_eq!(log.head().await.unwrap(), 20);
        let next = log
            .append("a", ExpectedVersion::Exact(10), vec![ev(10)])
            .await
            .unwrap();
        assert_eq!(next.first_position, 21);
    }

    #[tokio::test]
    async fn a_head_key_beyond_the_records_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path()).await;
        {
            let (db, tree) = raw_tree(dir.path());
            tree.remove(event_key(20)).unwrap();
            tree.remove(event_key(19)).unwrap();
            db.flush().unwrap();
        }
        let err = SledLog::open(dir.path(), clock()).unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 19, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledLog::open(dir.path(), clock()).unwrap();
        let err = SledLog::open(dir.path(), clock()).unwrap_err();
        assert_eq!(
            err,
            LogError::Unavailable(format!(
                "data directory {} is in use by another snapvault process",
                dir.path().display()
            ))
        );
    }

    #[tokio::test]
    async fn a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, tree) = raw_tree(dir.path());
            tree.insert(META_FORMAT_KEY, &(FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledLog::open(dir.path(), clock()).unwrap_err();
        assert!(matches!(err, LogError::UnsupportedVersion(_)), "{err:?}");
    }

    #[tokio::test]
    async fn time_comes_from_the_clock_and_names_with_nul_do_not_alias() {
        let dir = tempfile::tempdir().unwrap();
        let manual = Arc::new(ManualClock::new(5_000));
        let log = SledLog::open(dir.path(), manual.clone()).unwrap();
        log.append("x", ExpectedVersion::Exact(0), vec![ev(1)])
            .await
            .unwrap();
        manual.advance_ms(7);
        log.append("x", ExpectedVersion::Exact(1), vec![ev(2)])
            .await
            .unwrap();
        let events = log.read_stream("x", 1, 10).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            vec![5_000, 5_007]
        );
        // "x\0..." would share key bytes with stream "x"; it cannot exist, so it reads empty.
        assert!(log.read_stream("x\0", 1, 10).await.unwrap().is_empty());
        assert_eq!(log.stream_version("x\0").await.unwrap(), 0);
        assert!(
            log.append("x\0", ExpectedVersion::Any, vec![ev(3)])
                .await
                .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), clock()).unwrap();
        let mut handles = Vec::new();
        for w in 0..64u64 {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                for a in 0..4u64 {
                    log.append(&format!("g-{w}"), ExpectedVersion::Exact(a), vec![ev(a)])
                        .await
                        .unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let (groups, appends) = log.group_commit_stats();
        assert_eq!(appends, 256);
        assert!(
            groups < appends,
            "64 concurrent writers never shared a flush: {groups} groups for {appends} appends"
        );
        drop(log);
        // Everything acknowledged is there after a reopen, watermark and all.
        let log = SledLog::open(dir.path(), clock()).unwrap();
        assert_eq!(log.head().await.unwrap(), 256);
        for w in 0..64u64 {
            assert_eq!(log.stream_version(&format!("g-{w}")).await.unwrap(), 4);
        }
    }

    #[tokio::test]
    async fn watch_head_moves_after_a_durable_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path(), clock()).unwrap();
        let mut rx = log.watch_head();
        assert_eq!(*rx.borrow_and_update(), 0);
        log.append("w", ExpectedVersion::Any, vec![ev(1), ev(2)])
            .await
            .unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
        drop(log);
        let log = SledLog::open(dir.path(), clock()).unwrap();
        assert_eq!(*log.watch_head().borrow(), 2);
    }
}
