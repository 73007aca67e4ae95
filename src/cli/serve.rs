//! `serve`: hold the node in the foreground until SIGTERM or SIGINT (Ctrl-C), then return so
//! the caller shuts the node down gracefully (entities finish what they were doing) and the
//! process exits 0. Work that outlives one command (restores, refreshes: later issues) is
//! resumed by the node while this runs.

use super::Ctx;
use serde::Serialize;
use snapvault::Error;

#[derive(Serialize)]
struct Status<'a> {
    status: &'static str,
    data: &'a str,
    pid: u32,
}

pub async fn run(ctx: &Ctx) -> Result<(), Error> {
    let data = ctx.data.display().to_string();
    // Listen before announcing readiness, so a signal sent right after the announcement is
    // never missed.
    let stop = stop_signal()?;
    let serving = Status {
        status: "serving",
        data: &data,
        pid: std::process::id(),
    };
    ctx.out.emit(&serving, || {
        format!(
            "snapvault serving {data} (pid {}); stop with Ctrl-C or SIGTERM",
            std::process::id()
        )
    })?;
    let signal = stop.await;
    tracing::info!(signal, "stopping: shutting the node down");
    Ok(())
}

/// A future that completes with the signal's name on the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl Future<Output = &'static str>, Error> {
    let cannot = |e: std::io::Error| Error::internal(format!("cannot listen for signals: {e}"));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(cannot)?;
        let mut int = signal(SignalKind::interrupt()).map_err(cannot)?;
        Ok(async move {
            tokio::select! {
                biased;
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = cannot;
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}
