//! GC operations of the client: run a cycle (or a dry run) and read the status.

use crate::client::Client;
use snapvault_actors::gc::{GcReport, GcRunOptions, GcStatus};
use snapvault_events::Error;
use std::time::Duration;

impl Client {
    /// Run a GC cycle now. Reclaims nothing (and says why) while the ref index is loading.
    pub async fn gc_run(&self, options: GcRunOptions) -> Result<GcReport, Error> {
        self.gc.run(options).await
    }

    /// Wait until the GC ref index has caught up with the log head seen at start.
    pub async fn gc_wait_loaded(&self, timeout: Duration) -> Result<(), Error> {
        self.gc.wait_loaded(timeout).await
    }

    pub fn gc_status(&self) -> GcStatus {
        self.gc.status()
    }
}
