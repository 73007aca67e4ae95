//! Crash points (BUGGIFY-style) for crash tests with a real process.
//!
//! A test starts the `snapvault` binary with `SNAPVAULT_CRASH_AT=<point>`; when the code passes
//! that point the process aborts on the spot — no destructors, no flush — exactly like a
//! `kill -9` at that line. The binary arms it once at start; the library, the tests in process
//! and the simulator never do, so in them a crash point costs one atomic load.

use std::sync::OnceLock;

static ARMED: OnceLock<String> = OnceLock::new();

/// Arm the crash point `name` for the rest of this process (first call wins).
pub fn arm(name: &str) {
    let _ = ARMED.set(name.to_string());
}

/// Abort the process here if this is the armed crash point.
pub fn crash_point(name: &'static str) {
    if ARMED.get().is_some_and(|armed| armed == name) {
        eprintln!("crash point '{name}' reached: aborting");
        std::process::abort();
    }
}
