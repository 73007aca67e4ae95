//! The copy audit: a test hook that proves how many copies a restore really made.
//!
//! The `snapvault` binary arms it when `SNAPVAULT_COPY_AUDIT=<file>` is set; every copy a
//! task starts writing then appends one line (its destination key) to the file — before the
//! write, so an object that exists was always counted, even when the process died right
//! after writing it — with an unbuffered `write`
//! per line so a `kill -9` loses none that happened. The crash test counts the lines against
//! the number of files. Unarmed (the library, the simulator) it costs one atomic load.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static AUDIT: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Arm the audit for this process, appending to `path` (first call wins).
pub fn arm(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let _ = AUDIT.set(Mutex::new(f));
    Ok(())
}

/// Record that a copy to `key` is being written.
pub fn record_copy(key: &str) {
    if let Some(f) = AUDIT.get() {
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.write_all(format!("{key}\n").as_bytes());
    }
}
