//! What the command files call: the embedded node's [`Client`] (`--data DIR`) or the
//! [`RemoteClient`] of a snapvault service (`--nats URL`). Both have the same methods, so
//! every command prints the same output, JSON and errors either way; a remote error arrives
//! with its stable code and becomes the same `error[<code>]` line and exit code.
//!
//! The host-acting helpers (`ingest`, `compact`, `index build`, and the demo's store checks)
//! need the object store: embedded they run here, remote they run on the service as the
//! `host.*` ops (`super::host_ops`).

use super::compact::{self, CompactReport};
use super::demo::{self, Verified};
use super::host_ops::{
    self, HostCompact, HostIndexBuild, HostIngest, SnapshotSegments, VerifyFiles,
};
use super::index::{self, Built};
use super::ingest::{self, IngestPlan, IngestReport};
use snapvault::client::CreateCollectionRequest;
use snapvault::external::{ExternalStatusView, ExternalTaskView};
use snapvault::nats::RemoteClient;
use snapvault::restores::{RestorePage, RestoreView, StartRestoreRequest};
use snapvault::snapshots::{
    CreateSnapshotRequest, ListSnapshotsRequest, SnapshotPage, SnapshotView,
};
use snapvault::views::{CollectionSummary, CollectionView};
use snapvault::{Client, Error};
use snapvault_actors::gc::{GcReport, GcRunOptions, GcStatus};
use snapvault_actors::snapshot::worker::VerifyReport;
use snapvault_events::domain::restore::RestoreStatus;
use std::time::Duration;

#[derive(Clone)]
// The embedded client is the common case and lives once per process; boxing it would cost
// a pointer chase on every call for no memory anyone would notice.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Local(Client),
    Remote(RemoteClient),
}

/// One method, both arms: `local` on the embedded client, `remote` on the remote one.
macro_rules! both {
    ($self:ident, $c:ident => $local:expr, $r:ident => $remote:expr) => {
        match $self {
            Backend::Local($c) => $local,
            Backend::Remote($r) => $remote,
        }
    };
}

impl Backend {
    pub async fn allocate_id(&self) -> Result<u64, Error> {
        both!(self, c => c.allocate_id().await, r => r.allocate_id().await)
    }

    pub async fn create_collection(
        &self,
        req: CreateCollectionRequest,
    ) -> Result<CollectionView, Error> {
        both!(self, c => c.create_collection(req).await, r => r.create_collection(req).await)
    }

    pub async fn list_collections(&self) -> Result<Vec<CollectionSummary>, Error> {
        both!(self, c => c.list_collections().await, r => r.list_collections().await)
    }

    pub async fn describe_collection(&self, name: &str) -> Result<CollectionView, Error> {
        both!(self, c => c.describe_collection(name).await, r => r.describe_collection(name).await)
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), Error> {
        both!(self, c => c.drop_collection(name).await, r => r.drop_collection(name).await)
    }

    pub async fn create_partition(&self, collection: &str, name: &str) -> Result<(), Error> {
        both!(self, c => c.create_partition(collection, name).await,
                    r => r.create_partition(collection, name).await)
    }

    pub async fn drop_partition(&self, collection: &str, name: &str) -> Result<(), Error> {
        both!(self, c => c.drop_partition(collection, name).await,
                    r => r.drop_partition(collection, name).await)
    }

    pub async fn create_index(
        &self,
        collection: &str,
        name: &str,
        field: &str,
        params_json: &str,
    ) -> Result<(), Error> {
        both!(self, c => c.create_index(collection, name, field, params_json).await,
                    r => r.create_index(collection, name, field, params_json).await)
    }

    pub async fn drop_index(&self, collection: &str, name: &str) -> Result<(), Error> {
        both!(self, c => c.drop_index(collection, name).await,
                    r => r.drop_index(collection, name).await)
    }

    pub async fn drop_segment(&self, collection: &str, id: u64) -> Result<(), Error> {
        both!(self, c => c.drop_segment(collection, id).await,
                    r => r.drop_segment(collection, id).await)
    }

    pub async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<SnapshotView, Error> {
        both!(self, c => c.create_snapshot(req).await, r => r.create_snapshot(req).await)
    }

    pub async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<SnapshotPage, Error> {
        both!(self, c => c.list_snapshots(req).await, r => r.list_snapshots(req).await)
    }

    pub async fn describe_snapshot(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<SnapshotView, Error> {
        both!(self, c => c.describe_snapshot(collection, name).await,
                    r => r.describe_snapshot(collection, name).await)
    }

    pub async fn drop_snapshot(&self, collection: &str, name: &str) -> Result<SnapshotView, Error> {
        both!(self, c => c.drop_snapshot(collection, name).await,
                    r => r.drop_snapshot(collection, name).await)
    }

    pub async fn verify_snapshot(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<VerifyReport, Error> {
        both!(self, c => c.verify_snapshot(collection, name).await,
                    r => r.verify_snapshot(collection, name).await)
    }

    pub async fn import_snapshot(&self, prefix: &str) -> Result<SnapshotView, Error> {
        both!(self, c => c.import_snapshot(prefix).await, r => r.import_snapshot(prefix).await)
    }

    /// Wait (up to `wait`) for the GC ref index to load, then run a cycle.
    pub async fn gc_run(&self, options: GcRunOptions, wait: Duration) -> Result<GcReport, Error> {
        both!(self,
            c => {
                let _ = c.gc_wait_loaded(wait).await;
                c.gc_run(options).await
            },
            r => r.gc_run(options, wait).await)
    }

    /// Wait (up to `wait`) for the GC ref index to load, then report.
    pub async fn gc_status(&self, wait: Duration) -> Result<GcStatus, Error> {
        both!(self,
            c => {
                let _ = c.gc_wait_loaded(wait).await;
                Ok(c.gc_status())
            },
            r => r.gc_status(wait).await)
    }

    pub async fn host_ingest(
        &self,
        collection: &str,
        plan: &IngestPlan,
    ) -> Result<IngestReport, Error> {
        both!(self,
            c => ingest::ingest(c, collection, plan).await,
            r => r.call("host.ingest", &HostIngest::of(collection, plan)).await)
    }

    pub async fn host_compact(
        &self,
        collection: &str,
        ids: Option<Vec<u64>>,
    ) -> Result<CompactReport, Error> {
        both!(self,
            c => compact::compact(c, collection, ids).await,
            r => r.call("host.compact", &HostCompact { collection: collection.to_string(), segment_ids: ids }).await)
    }

    pub async fn host_index_build(
        &self,
        collection: &str,
        index_name: &str,
        segment: u64,
    ) -> Result<Built, Error> {
        both!(self,
            c => index::build(c, collection, index_name, segment).await,
            r => r.call("host.index_build", &HostIndexBuild {
                collection: collection.to_string(),
                index: index_name.to_string(),
                segment,
            }).await)
    }

    /// Read back every live file of a collection and check its size and crc32c.
    pub async fn verify_live_files(&self, collection: &str) -> Result<Verified, Error> {
        both!(self,
            c => demo::verify_files(c, &c.describe_collection(collection).await?).await,
            r => r.call("host.verify_files", &VerifyFiles { collection: collection.to_string() }).await)
    }

    /// Every file of restore job `job` equals its source byte for byte.
    pub async fn compare_restore(&self, job: u64) -> Result<Verified, Error> {
        both!(self,
            c => demo::compare_restore(c, job).await,
            r => r.call("host.compare_restore", &host_ops::CompareRestore { job }).await)
    }

    /// The data files a snapshot holds that its collection no longer has live.
    pub async fn snapshot_only_files(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<Vec<String>, Error> {
        both!(self,
        c => demo::snapshot_only_files(c, collection, name).await,
        r => {
            let got: host_ops::Keys = r.call("host.snapshot_only_files", &SnapshotSegments {
                collection: collection.to_string(),
                name: name.to_string(),
            }).await?;
            Ok(got.keys)
        })
    }

    /// How many of `keys` exist in the store.
    pub async fn count_existing(&self, keys: &[String]) -> Result<u64, Error> {
        both!(self,
        c => demo::count_existing(c, keys).await,
        r => {
            let got: host_ops::Count = r.call("host.count_existing", &host_ops::Keys { keys: keys.to_vec() }).await?;
            Ok(got.count)
        })
    }

    pub async fn start_restore(&self, req: StartRestoreRequest) -> Result<RestoreView, Error> {
        both!(self, c => c.start_restore(req).await, r => r.start_restore(req).await)
    }

    pub async fn restore_status(&self, job: u64) -> Result<RestoreView, Error> {
        both!(self, c => c.restore_status(job).await, r => r.restore_status(job).await)
    }

    pub async fn list_restores(
        &self,
        status: Option<RestoreStatus>,
        limit: Option<usize>,
        page_token: Option<u64>,
    ) -> Result<RestorePage, Error> {
        both!(self, c => c.list_restores(status, limit, page_token).await,
                    r => r.list_restores(status, limit, page_token).await)
    }

    pub async fn cancel_restore(&self, job: u64) -> Result<RestoreView, Error> {
        both!(self, c => c.cancel_restore(job).await, r => r.cancel_restore(job).await)
    }

    pub async fn wait_restore(
        &self,
        job: u64,
        poll: Duration,
        timeout: Option<Duration>,
        progress: impl FnMut(&RestoreView),
    ) -> Result<RestoreView, Error> {
        both!(self, c => c.wait_restore(job, poll, timeout, progress).await,
                    r => r.wait_restore(job, poll, timeout, progress).await)
    }

    pub async fn create_external_collection(
        &self,
        req: CreateCollectionRequest,
        source: &str,
        spec_json: &str,
    ) -> Result<CollectionView, Error> {
        both!(self, c => c.create_external_collection(req, source, spec_json).await,
                    r => r.create_external_collection(req, source, spec_json).await)
    }

    pub async fn alter_external(
        &self,
        collection: &str,
        source: Option<&str>,
        spec_json: Option<&str>,
    ) -> Result<ExternalTaskView, Error> {
        both!(self, c => c.alter_external(collection, source, spec_json).await,
                    r => r.alter_external(collection, source, spec_json).await)
    }

    pub async fn refresh_external(&self, collection: &str) -> Result<ExternalTaskView, Error> {
        both!(self, c => c.refresh_external(collection).await, r => r.refresh_external(collection).await)
    }

    pub async fn external_task(&self, task: u64) -> Result<ExternalTaskView, Error> {
        both!(self, c => c.external_task(task).await, r => r.external_task(task).await)
    }

    pub async fn wait_external_task(
        &self,
        task: u64,
        timeout: Duration,
    ) -> Result<ExternalTaskView, Error> {
        both!(self, c => c.wait_external_task(task, timeout).await,
                    r => r.wait_external_task(task, timeout).await)
    }

    pub async fn external_status(&self, collection: &str) -> Result<ExternalStatusView, Error> {
        both!(self, c => c.external_status(collection).await, r => r.external_status(collection).await)
    }

    pub async fn cancel_external(&self, collection: &str) -> Result<ExternalTaskView, Error> {
        both!(self, c => c.cancel_external(collection).await, r => r.cancel_external(collection).await)
    }

    /// The segment ids a committed snapshot's manifests list.
    pub async fn snapshot_segments(&self, s: &SnapshotView) -> Result<Vec<u64>, Error> {
        both!(self,
        c => demo::snapshot_segments(c, s).await,
        r => {
            let got: host_ops::SegmentIds = r.call("host.snapshot_segments", &SnapshotSegments {
                collection: s.collection_name.clone(),
                name: s.name.clone(),
            }).await?;
            Ok(got.segment_ids)
        })
    }
}
