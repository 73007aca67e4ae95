//! Crash points (BUGGIFY-style) for crash tests with a real process, and pause points for
//! tests that must act while a process is held at one of them.
//!
//! A test starts the `snapvault` binary with `SNAPVAULT_CRASH_AT=<point>`; when the code passes
//! that point the process aborts on the spot — no destructors, no flush — exactly like a
//! `kill -9` at that line. The binary arms it once at start; the library, the tests in process
//! and the simulator never do, so in them a crash point costs one atomic load.
//!
//! `SNAPVAULT_PAUSE_AT=<point>:<millis>` is the same kind of test gate: the thread that passes
//! that point sleeps that long (`std::thread::sleep`, so it holds its runtime worker too) and
//! then goes on, every time it passes it — a window in which a test starts another node or
//! reads the log while this process is stopped right after that step. Only the binary arms it
//! (`arm_pause`), once at start; unarmed it is one more atomic load.

use std::sync::OnceLock;
use std::time::Duration;

static ARMED: OnceLock<String> = OnceLock::new();
static PAUSE: OnceLock<(String, Duration)> = OnceLock::new();

/// Arm the crash point `name` for the rest of this process (first call wins).
pub fn arm(name: &str) {
    let _ = ARMED.set(name.to_string());
}

/// Arm a pause point for the rest of this process (first call wins): `spec` is
/// `<point>:<millis>`, e.g. `restore.after_request:4000`. A malformed spec is refused with a
/// message saying why.
pub fn arm_pause(spec: &str) -> Result<(), String> {
    let malformed = || {
        format!(
            "pause point '{}' must look like <point>:<millis>, e.g. restore.after_request:4000",
            spec.escape_debug()
        )
    };
    let (name, millis) = spec.rsplit_once(':').ok_or_else(malformed)?;
    let millis: u64 = millis.trim().parse().map_err(|_| malformed())?;
    if name.trim().is_empty() {
        return Err(malformed());
    }
    let _ = PAUSE.set((name.trim().to_string(), Duration::from_millis(millis)));
    Ok(())
}

/// Pause here if this is the armed pause point, then abort the process here if this is the
/// armed crash point.
pub fn crash_point(name: &'static str) {
    if let Some((point, pause)) = PAUSE.get()
        && point == name
    {
        eprintln!("pause point '{name}' reached: sleeping {pause:?}");
        std::thread::sleep(*pause);
        eprintln!("pause point '{name}': going on");
    }
    if ARMED.get().is_some_and(|armed| armed == name) {
        eprintln!("crash point '{name}' reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_spec_is_point_colon_millis() {
        assert!(arm_pause("restore.after_request").is_err());
        assert!(arm_pause("restore.after_request:soon").is_err());
        assert!(arm_pause(":100").is_err());
        assert!(PAUSE.get().is_none(), "a refused spec arms nothing");
        // Unarmed points pass straight through.
        crash_point("restore.after_request");
    }
}
