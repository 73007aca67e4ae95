//! The durability watermark of the sled log: the last acknowledged position, kept outside sled.
//!
//! # Why
//!
//! Every record carries its own crc32c, so a damaged record is never *read* as valid. But
//! sled recovers by replaying its own segment log, and a damaged segment makes it stop there:
//! it rolls its state back to the last intact point, records *and* head key together, and
//! opens cleanly. The records that are left are all valid, so no record checksum can tell that
//! acknowledged events are gone (1,457 acknowledged segments came back as 1,365, and GC would
//! then have deleted the lost segments' files as orphans). The watermark is the one fact sled
//! cannot roll back: after every flushed append, the append's last position and its last
//! record's crc32c are written to a small file beside sled's and `fdatasync`ed, before the
//! append is acknowledged. On open, a log that ends before the watermark, or whose record at
//! the watermark differs, is refused (`Corrupt`, code `internal`, naming the first missing or
//! damaged position) — never served.
//!
//! Open stays O(1) in the log's length: the watermark pins the tail (what sled can lose), the
//! record checksums guard every record as it is read, and `snapvault log verify` walks the
//! whole log when an operator asks.
//!
//! # Format
//!
//! [`FILE_NAME`] holds two 32-byte slots, written alternately (`seq % 2`), each:
//! `magic "SVWM"` ‖ seq u64 LE ‖ position u64 LE ‖ last record crc32c u32 LE ‖ crc32c of the
//! preceding 24 bytes u32 LE ‖ 4 zero bytes. A torn write can damage only the slot being
//! written; the other still holds the previous watermark, which is never ahead of the log.
//! The valid slot with the higher seq wins.

use crate::error::LogError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The watermark file, inside the log's directory (sled ignores files it does not know).
pub const FILE_NAME: &str = "snapvault-watermark";
const MAGIC: &[u8; 4] = b"SVWM";
const SLOT_BYTES: usize = 32;

/// The last acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Write sequence number (which slot is newest).
    pub seq: u64,
    /// Global position of the last acknowledged event (0: nothing yet).
    pub position: u64,
    /// crc32c of that event's record (its first four bytes on disk).
    pub last_crc: u32,
}

/// The open watermark file.
pub struct Watermark {
    path: PathBuf,
    file: File,
    last: Mark,
}

fn encode(mark: &Mark) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    slot[0..4].copy_from_slice(MAGIC);
    slot[4..12].copy_from_slice(&mark.seq.to_le_bytes());
    slot[12..20].copy_from_slice(&mark.position.to_le_bytes());
    slot[20..24].copy_from_slice(&mark.last_crc.to_le_bytes());
    let crc = crc32c::crc32c(&slot[0..24]);
    slot[24..28].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode(slot: &[u8]) -> Option<Mark> {
    if slot.len() < SLOT_BYTES || &slot[0..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes([slot[i], slot[i + 1], slot[i + 2], slot[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&slot[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if crc32c::crc32c(&slot[0..24]) != u32_at(24) {
        return None;
    }
    Some(Mark {
        seq: u64_at(4),
        position: u64_at(12),
        last_crc: u32_at(20),
    })
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> LogError {
    LogError::Unavailable(format!("log watermark {}: {what}: {e}", path.display()))
}

impl Watermark {
    /// Open the watermark of the log in `dir`. `None` inside when the file does not exist
    /// yet (a new log, or one written before watermarks: the caller creates it from the
    /// verified head). A file with no valid slot is `Corrupt`.
    pub fn open(dir: &Path) -> Result<(Watermark, Option<Mark>), LogError> {
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, "open", e))?;
        let mut bytes = vec![0u8; 2 * SLOT_BYTES];
        let len = file
            .read_at(&mut bytes, 0)
            .map_err(|e| io_error(&path, "read", e))?;
        bytes.truncate(len);
        let found = if !existed || len == 0 {
            None
        } else {
            let marks = [bytes.get(..SLOT_BYTES), bytes.get(SLOT_BYTES..)]
                .into_iter()
                .flatten()
                .filter_map(decode)
                .max_by_key(|m| m.seq);
            match marks {
                Some(m) => Some(m),
                None => {
                    return Err(LogError::Corrupt {
                        position: 0,
                        reason: format!(
                            "the log's watermark {} is damaged: it no longer says which events were acknowledged (`snapvault log repair` rewrites it after `log verify`)",
                            path.display()
                        ),
                    });
                }
            }
        };
        let last = found.unwrap_or(Mark {
            seq: 0,
            position: 0,
            last_crc: 0,
        });
        Ok((Watermark { path, file, last }, found))
    }

    /// The watermark of the log in `dir` as it is on disk, creating nothing (`log verify`).
    pub fn read(dir: &Path) -> Result<Option<Mark>, LogError> {
        if !dir.join(FILE_NAME).exists() {
            return Ok(None);
        }
        Watermark::open(dir).map(|(_, found)| found)
    }

    /// The last mark written (or read at open).
    pub fn last(&self) -> Mark {
        self.last
    }

    /// Record that everything up to `position` (whose record's crc32c is `last_crc`) is
    /// durable in sled, durably: the acknowledgement waits for this.
    pub fn advance(&mut self, position: u64, last_crc: u32) -> Result<(), LogError> {
        let mark = Mark {
            seq: self.last.seq + 1,
            position,
            last_crc,
        };
        let offset = (mark.seq % 2) * SLOT_BYTES as u64;
        self.file
            .write_all_at(&encode(&mark), offset)
            .map_err(|e| io_error(&self.path, "write", e))?;
        self.file
            .sync_data()
            .map_err(|e| io_error(&self.path, "sync", e))?;
        self.last = mark;
        Ok(())
    }

    /// Set the watermark to `position` even if that is below the last one (`log repair`:
    /// the operator accepted the loss of what lies above).
    pub fn reset(&mut self, position: u64, last_crc: u32) -> Result<(), LogError> {
        self.advance(position, last_crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, found) = Watermark::open(dir.path()).unwrap();
        assert_eq!(found, None);
        w.advance(5, 0xaa).unwrap();
        w.advance(9, 0xbb).unwrap();
        drop(w);
        let (_, found) = Watermark::open(dir.path()).unwrap();
        assert_eq!(found.map(|m| (m.position, m.last_crc)), Some((9, 0xbb)));
        // Tear the newest slot (seq 2, slot 0): the previous one is read.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[13] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, found) = Watermark::open(dir.path()).unwrap();
        assert_eq!(found.map(|m| (m.position, m.last_crc)), Some((5, 0xaa)));
        // Both damaged: refused, never read as "nothing acknowledged".
        bytes[SLOT_BYTES + 13] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = Watermark::open(dir.path()).err().unwrap();
        assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    }
}
