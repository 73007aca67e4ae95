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
use snapvault::nats::RemoteClient;
use snapvault::snapshots::{
    CreateSnapshotRequest, ListSnapshotsRequest, SnapshotPage, SnapshotView,
};
use snapvault::views::{CollectionSummary, CollectionView};
use snapvault::{Client, Error};
use snapvault_actors::gc::{GcReport, GcRunOptions, GcStatus};
use snapvault_actors::snapshot::worker::VerifyReport;
use std::time::Duration;

#[derive(Clone)]
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
