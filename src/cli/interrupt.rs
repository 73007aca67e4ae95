//! Ctrl-C while a command follows a job or task (`--wait`, `restore wait`): it stops
//! following, never the work.
//!
//! A following command listens for SIGINT from before it starts the work ([`Interrupt::listen`]),
//! so a Ctrl-C at any moment of it is seen. The command then prints how to follow the work
//! again and how to stop it, the node shuts down as after any command, and the process exits
//! with [`EXIT_CODE`] (130, the shell's convention for "ended by SIGINT"); the job itself goes
//! on (in an embedded node: whenever a snapvault process next holds the data directory). A
//! second Ctrl-C ends the process at once, with the same code.

use snapvault::Error;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit code after Ctrl-C stopped a command following a job (README, "Errors and exit
/// codes").
pub const EXIT_CODE: u8 = 130;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C stopped this process following a job: `main` then exits with
/// [`EXIT_CODE`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// A SIGINT listener, armed from its creation on. Dropped (the following ended, or the
/// command failed before it), it leaves behind a task that ends the process at the next
/// Ctrl-C, so Ctrl-C never goes unheard while the node shuts down.
pub struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    /// Start listening (inside the runtime). From here on Ctrl-C no longer ends the process
    /// by itself: it ends [`Interrupt::follow`], or, after that, the process.
    pub fn listen() -> Result<Interrupt, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::interrupt())
                .map_err(|e| Error::internal(format!("cannot listen for Ctrl-C: {e}")))?;
            Ok(Interrupt {
                signal: Some(signal),
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Interrupt {})
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        next_ctrl_c(self.signal.as_mut()).await;
        #[cfg(not(unix))]
        next_ctrl_c().await;
    }

    /// Run `work` (following a job) to its end, or until Ctrl-C: then `None`, and
    /// [`interrupted`] is true. Either way a later Ctrl-C (while the node shuts down) ends the
    /// process at once with [`EXIT_CODE`], as it would have without this listener.
    pub async fn follow<F: Future>(mut self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            () = self.recv() => {
                INTERRUPTED.store(true, Ordering::Relaxed);
                None
            }
            out = work => Some(out),
        }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        #[cfg(unix)]
        let Some(mut signal) = self.signal.take() else {
            return;
        };
        runtime.spawn(async move {
            #[cfg(unix)]
            next_ctrl_c(Some(&mut signal)).await;
            #[cfg(not(unix))]
            next_ctrl_c().await;
            std::process::exit(i32::from(EXIT_CODE));
        });
    }
}

/// The next SIGINT on `signal`; never, when there is no listener.
#[cfg(unix)]
async fn next_ctrl_c(signal: Option<&mut tokio::signal::unix::Signal>) {
    let received = match signal {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        std::future::pending::<()>().await;
    }
}

/// The next Ctrl-C; never, when it cannot be listened for.
#[cfg(not(unix))]
async fn next_ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
