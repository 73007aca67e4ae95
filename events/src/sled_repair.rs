//! `snapvault log verify` and `snapvault log repair`: the operator's tools for a damaged sled
//! log (the node itself refuses to open one, see `sled_log`).
//!
//! - [`verify`] walks every record from position 1 — contiguous positions, checksums, each
//!   stream's versions contiguous — and holds the end against the watermark. It reports the
//!   first bad position; it changes nothing (beyond removing sled's own unfinished snapshot
//!   files, as every open does).
//! - [`truncate_after`] drops every record after a position the operator names — explicitly
//!   accepting their loss — and fixes the stream heads, the stream index, the head key and the
//!   watermark to match. Records up to that position must verify; it never drops one of them.

use crate::envelope::Envelope;
use crate::error::LogError;
use crate::sled_log::{
    META_HEAD_KEY, STREAM_INDEX_KEY_PREFIX, be_u64, bounded, clear_sled_leftovers, event_key,
    event_key_position, open_raw, record_crc, sled_error, stream_head_key, stream_index_key,
};
use crate::sled_watermark::Watermark;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `log verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub path: PathBuf,
    /// Records that verified, from position 1 on.
    pub records: u64,
    /// Streams among them.
    pub streams: u64,
    /// The last acknowledged position the watermark records (`None`: no watermark yet).
    pub watermark: Option<u64>,
    /// The first position that is missing, damaged or out of order, and why; `None` when the
    /// whole log verified and reaches its watermark.
    pub first_bad_position: Option<u64>,
    pub reason: Option<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad_position.is_none()
    }
}

/// Records from position 1 while they verify: how many, each stream's last (version,
/// position), and the first bad position with its reason.
struct Walk {
    records: u64,
    streams: BTreeMap<String, (u64, u64)>,
    bad: Option<(u64, String)>,
}

fn walk(path: &Path, tree: &sled::Tree, up_to: u64) -> Result<Walk, LogError> {
    let mut w = Walk {
        records: 0,
        streams: BTreeMap::new(),
        bad: None,
    };
    for item in tree.range(event_key(1)..=event_key(up_to)) {
        let (k, v) = item.map_err(|e| sled_error(path, "read records", e))?;
        let expected = w.records + 1;
        let position = event_key_position(&k).unwrap_or(0);
        if position != expected {
            w.bad = Some((expected, "record is missing".into()));
            return Ok(w);
        }
        let env = match Envelope::decode(position, &v) {
            Ok(env) => env,
            Err(LogError::Corrupt { reason, .. }) => {
                w.bad = Some((position, reason));
                return Ok(w);
            }
            Err(e) => {
                w.bad = Some((position, e.message()));
                return Ok(w);
            }
        };
        let last_version = w.streams.get(&env.stream).map_or(0, |(v, _)| *v);
        if env.version != last_version + 1 {
            w.bad = Some((
                position,
                format!(
                    "stream '{}' jumps from version {last_version} to {}",
                    env.stream, env.version
                ),
            ));
            return Ok(w);
        }
        w.streams.insert(env.stream, (env.version, position));
        w.records += 1;
    }
    Ok(w)
}

/// Walk the whole log in `path` (see the module docs).
pub fn verify(path: &Path) -> Result<VerifyReport, LogError> {
    clear_sled_leftovers(path)?;
    let dir = path.to_path_buf();
    bounded(path, "verify", move || {
        let (_db, tree) = open_raw(&dir)?;
        let w = walk(&dir, &tree, u64::MAX)?;
        let watermark = Watermark::read(&dir)?.map(|m| m.position);
        let mut bad = w.bad;
        if bad.is_none()
            && let Some(mark) = watermark
            && mark > w.records
        {
            bad = Some((
                w.records + 1,
                format!(
                    "the log ends at position {}, but events up to position {mark} were acknowledged (its watermark)",
                    w.records
                ),
            ));
        }
        Ok(VerifyReport {
            path: dir,
            records: w.records,
            streams: w.streams.len() as u64,
            watermark,
            first_bad_position: bad.as_ref().map(|(p, _)| *p),
            reason: bad.map(|(_, r)| r),
        })
    })
}

/// What `log repair --truncate-after` dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    pub path: PathBuf,
    /// The log's head after the repair.
    pub head: u64,
    /// Records above it that were removed (present but beyond the cut, or damaged).
    pub records_dropped: u64,
    /// Acknowledged positions (per the watermark) above the cut that were already gone.
    pub acknowledged_lost: u64,
    /// Streams whose head moved back.
    pub streams_cut: u64,
}

/// Drop every record after `position` (see the module docs). `dry_run` reports what would be
/// dropped and changes nothing.
pub fn truncate_after(path: &Path, position: u64, dry_run: bool) -> Result<RepairReport, LogError> {
    clear_sled_leftovers(path)?;
    let dir = path.to_path_buf();
    bounded(path, "repair", move || {
        let (_db, tree) = open_raw(&dir)?;
        let w = walk(&dir, &tree, position)?;
        if let Some((bad, reason)) = w.bad {
            return Err(LogError::Corrupt {
                position: bad,
                reason: format!(
                    "{reason}; it lies at or below the cut at {position}: repair cannot keep it (cut below it)"
                ),
            });
        }
        if w.records != position {
            return Err(LogError::Invalid(format!(
                "the log holds only {} records; --truncate-after must be at most that",
                w.records
            )));
        }
        let above: Vec<sled::IVec> = tree
            .range(event_key(position + 1)..=event_key(u64::MAX))
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| sled_error(&dir, "list records above the cut", e))?;
        // Stream index entries (one per append) that point above the cut.
        let mut cut_streams: BTreeMap<String, Vec<sled::IVec>> = BTreeMap::new();
        for item in tree.scan_prefix([STREAM_INDEX_KEY_PREFIX]) {
            let (k, v) = item.map_err(|e| sled_error(&dir, "read the stream index", e))?;
            let Some(at) = be_u64(&v) else { continue };
            if at <= position {
                continue;
            }
            let Some(nul) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let stream = String::from_utf8_lossy(&k[1..nul]).into_owned();
            cut_streams.entry(stream).or_default().push(k);
        }
        // A damaged watermark is rewritten below like any other.
        let watermark = Watermark::read(&dir)
            .ok()
            .flatten()
            .map_or(0, |m| m.position);
        let head_before = position + above.len() as u64;
        let report = RepairReport {
            path: dir.clone(),
            head: position,
            records_dropped: above.len() as u64,
            acknowledged_lost: watermark.saturating_sub(head_before),
            streams_cut: cut_streams.len() as u64,
        };
        if dry_run {
            return Ok(report);
        }
        let mut batch = sled::Batch::default();
        for k in &above {
            batch.remove(k);
        }
        for (stream, keys) in &cut_streams {
            for k in keys {
                batch.remove(k);
            }
            match w.streams.get(stream) {
                // The append that straddles the cut keeps its part below: index that part.
                Some((version, at)) => {
                    batch.insert(stream_index_key(stream, *version), &at.to_be_bytes());
                    batch.insert(stream_head_key(stream), &version.to_be_bytes());
                }
                None => batch.remove(stream_head_key(stream)),
            }
        }
        batch.insert(META_HEAD_KEY, &position.to_be_bytes());
        tree.apply_batch(batch)
            .map_err(|e| sled_error(&dir, "apply the repair", e))?;
        tree.flush()
            .map_err(|e| sled_error(&dir, "flush the repair", e))?;
        let crc = if position > 0 {
            record_crc(&dir, &tree, position)?
        } else {
            0
        };
        // Start the watermark afresh (it may be the damaged part): a crash before the write
        // leaves none, and the next open creates it from the verified head.
        let file = dir.join(crate::sled_watermark::FILE_NAME);
        if let Err(e) = std::fs::remove_file(&file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(LogError::Unavailable(format!(
                "log watermark {}: remove: {e}",
                file.display()
            )));
        }
        let (mut mark, _) = Watermark::open(&dir)?;
        mark.reset(position, crc)?;
        Ok(report)
    })
}
