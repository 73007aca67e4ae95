//! The `snapvault` binary: parse, run, and turn an error into one line and an exit code.
//!
//! Exit codes: 0 success; 2 the request was refused (`invalid_argument`, `not_found`,
//! `already_exists`, `failed_precondition`: fix the input or the state and retry); 1 anything
//! else (`conflict`, `unavailable`, `internal`: the request may succeed when retried); 130
//! Ctrl-C stopped a command following a job or task (`--wait`, `restore wait`), which goes on.

mod cli;

use snapvault::ErrorCode;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Crash tests start this binary with SNAPVAULT_CRASH_AT=<point> to abort at that point
    // (see snapvault_actors::crash_points); only the binary arms it, never the library.
    if let Ok(point) = std::env::var("SNAPVAULT_CRASH_AT") {
        snapvault_actors::crash_points::arm(&point);
    }
    // ... and with SNAPVAULT_PAUSE_AT=<point>:<millis> to hold the thread there for a while
    // (a test gate too; only the binary arms it).
    if let Ok(spec) = std::env::var("SNAPVAULT_PAUSE_AT")
        && let Err(e) = snapvault_actors::crash_points::arm_pause(&spec)
    {
        eprintln!("error[invalid_argument]: SNAPVAULT_PAUSE_AT: {e}");
        return ExitCode::from(2);
    }
    // The restore crash test counts the copies a process really made (see
    // snapvault_actors::copy_audit); only the binary arms it.
    if let Some(path) = std::env::var_os("SNAPVAULT_COPY_AUDIT")
        && let Err(e) = snapvault_actors::copy_audit::arm(std::path::Path::new(&path))
    {
        eprintln!("error[invalid_argument]: cannot open SNAPVAULT_COPY_AUDIT file: {e}");
        return ExitCode::from(2);
    }
    let json = cli::json_requested();
    let result = cli::parse().and_then(|args| {
        cli::init_tracing(
            matches!(args.command, cli::Command::Serve(_)),
            args.log_format,
        );
        cli::run(args)
    });
    match result {
        // Ctrl-C stopped a command following a job (`--wait`); the job goes on.
        Ok(()) if cli::interrupt::interrupted() => ExitCode::from(cli::interrupt::EXIT_CODE),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::output::report_error(&e, json);
            ExitCode::from(exit_code(e.code))
        }
    }
}

fn exit_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::InvalidArgument
        | ErrorCode::NotFound
        | ErrorCode::AlreadyExists
        | ErrorCode::FailedPrecondition => 2,
        ErrorCode::Conflict | ErrorCode::Unavailable | ErrorCode::Internal => 1,
    }
}
