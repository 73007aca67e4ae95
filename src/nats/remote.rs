//! The remote client: the typed client's operations over the request/reply API, for the CLI's
//! remote mode (`--nats URL`) and for programs that command a snapvault service.
//!
//! Every call carries a fresh request id (`Snapvault-Request-Id`). When the answer does not
//! come in time (a restarting server, a lost reply) or nobody answers yet (the service is
//! restarting), the call is sent again with the *same* id: the service answers a retry with
//! the first answer and runs the op once.

use super::ops::Empty;
use super::ops::collection::{Collections, CreateCollection, Dropped, Named};
use super::ops::gc as gc_ops;
use super::ops::layout::{
    Allocated, Compact, CreateIndex, Done, Flush, IndexRef, PartitionRef, RecordBuild, SegmentRef,
};
use super::ops::snapshot::{CreateSnapshot, Import, ListSnapshots, SnapshotRef};
use super::service::api_prefix;
use super::wire::{self, ErrorBody, Format};
use crate::client::CreateCollectionRequest;
use crate::snapshots::{CreateSnapshotRequest, ListSnapshotsRequest, SnapshotPage, SnapshotView};
use crate::views::{CollectionSummary, CollectionView};
use async_nats::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use snapvault_actors::gc::{GcReport, GcRunOptions, GcStatus};
use snapvault_actors::snapshot::worker::VerifyReport;
use snapvault_events::Error;
use snapvault_events::domain::collection::{BuildIndex, CompactSegments, FlushSegment};
use std::time::Duration;

#[derive(Clone)]
pub struct RemoteClient {
    nats: async_nats::Client,
    api: String,
    /// How long one attempt waits for its answer.
    pub timeout: Duration,
    /// Attempts per call (same request id each time).
    pub attempts: u32,
}

impl RemoteClient {
    pub fn new(nats: async_nats::Client, prefix: &str) -> RemoteClient {
        RemoteClient {
            nats,
            api: api_prefix(prefix),
            timeout: Duration::from_secs(60),
            attempts: 4,
        }
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// `<prefix>.api.v1`.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// The URL of the server this client is connected to.
    pub fn url(&self) -> String {
        let info = self.nats.server_info();
        format!("nats://{}:{}", info.host, info.port)
    }

    /// A request id unique to this call.
    pub fn new_request_id(&self) -> String {
        self.nats
            .new_inbox()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Call `op` with `req` and a fresh request id.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &str,
        req: &Req,
    ) -> Result<Resp, Error> {
        let id = self.new_request_id();
        self.call_with_id(op, req, &id).await
    }

    /// Call `op` with `req` under `request_id`, retrying lost answers with the same id.
    pub async fn call_with_id<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &str,
        req: &Req,
        request_id: &str,
    ) -> Result<Resp, Error> {
        let body = wire::encode(Format::MsgPack, req)?;
        let subject = format!("{}.{op}", self.api);
        let mut last_error = String::new();
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=self.attempts.max(1) {
            let mut headers = HeaderMap::new();
            headers.insert(wire::CONTENT_TYPE, wire::MSGPACK);
            headers.insert(wire::REQUEST_ID, request_id);
            let request = async_nats::Request::new()
                .payload(body.clone().into())
                .headers(headers)
                .timeout(Some(self.timeout));
            match self.nats.send_request(subject.clone(), request).await {
                Ok(msg) => return decode_reply(op, &msg),
                Err(e) => {
                    use async_nats::RequestErrorKind as K;
                    match e.kind() {
                        K::TimedOut | K::NoResponders => {
                            last_error = e.to_string();
                            tracing::debug!(%op, attempt, error = %e, "no answer; retrying with the same request id");
                            if attempt < self.attempts {
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                            }
                        }
                        K::MaxPayloadExceeded | K::InvalidSubject => {
                            return Err(Error::invalid_argument(format!(
                                "request to {subject} refused by NATS: {e}"
                            )));
                        }
                        K::Other => {
                            return Err(Error::unavailable(format!(
                                "request to {subject} failed: {e}"
                            )));
                        }
                    }
                }
            }
        }
        Err(Error::unavailable(format!(
            "no snapvault service answered on {subject} after {} attempts ({last_error}); is `snapvault serve --nats` running with this prefix?",
            self.attempts.max(1)
        )))
    }
}

fn decode_reply<Resp: DeserializeOwned>(
    op: &str,
    msg: &async_nats::Message,
) -> Result<Resp, Error> {
    let format = Format::of(msg.headers.as_ref());
    let failed = msg
        .headers
        .as_ref()
        .is_some_and(|h| h.get(wire::ERROR_CODE).is_some());
    if failed {
        let e: ErrorBody = wire::decode(format, &msg.payload).map_err(|e| {
            Error::internal(format!("the error reply of '{op}' is not readable: {e}"))
        })?;
        return Err(e.to_error());
    }
    wire::decode(format, &msg.payload)
        .map_err(|e| Error::internal(format!("the reply of '{op}' is not readable: {e}")))
}

/// The typed client's operations, one call each.
impl RemoteClient {
    pub async fn create_collection(
        &self,
        r: CreateCollectionRequest,
    ) -> Result<CollectionView, Error> {
        self.call(
            "collection.create",
            &CreateCollection {
                name: r.name,
                schema_json: r.schema_json,
                shard_count: r.shard_count,
                properties: r.properties,
                partitions: r.partitions,
            },
        )
        .await
    }

    pub async fn list_collections(&self) -> Result<Vec<CollectionSummary>, Error> {
        let c: Collections = self.call("collection.list", &Empty {}).await?;
        Ok(c.collections)
    }

    pub async fn describe_collection(&self, name: &str) -> Result<CollectionView, Error> {
        self.call("collection.describe", &Named { name: name.into() })
            .await
    }

    pub async fn drop_collection(&self, name: &str) -> Result<(), Error> {
        let _: Dropped = self
            .call("collection.drop", &Named { name: name.into() })
            .await?;
        Ok(())
    }

    pub async fn create_partition(&self, collection: &str, name: &str) -> Result<(), Error> {
        let _: Done = self
            .call(
                "partition.create",
                &PartitionRef {
                    collection: collection.into(),
                    name: name.into(),
                },
            )
            .await?;
        Ok(())
    }

    pub async fn drop_partition(&self, collection: &str, name: &str) -> Result<(), Error> {
        let _: Done = self
            .call(
                "partition.drop",
                &PartitionRef {
                    collection: collection.into(),
                    name: name.into(),
                },
            )
            .await?;
        Ok(())
    }

    pub async fn create_index(
        &self,
        collection: &str,
        name: &str,
        field: &str,
        params_json: &str,
    ) -> Result<(), Error> {
        let _: Done = self
            .call(
                "index.create",
                &CreateIndex {
                    collection: collection.into(),
                    name: name.into(),
                    field: field.into(),
                    params_json: params_json.into(),
                },
            )
            .await?;
        Ok(())
    }

    pub async fn drop_index(&self, collection: &str, name: &str) -> Result<(), Error> {
        let _: Done = self
            .call(
                "index.drop",
                &IndexRef {
                    collection: collection.into(),
                    name: name.into(),
                },
            )
            .await?;
        Ok(())
    }

    pub async fn flush_segment(&self, collection: &str, f: FlushSegment) -> Result<(), Error> {
        let _: Done = self
            .call(
                "segment.flush",
                &Flush {
                    collection: collection.into(),
                    segment_id: f.segment_id,
                    partition: f.partition,
                    shard: f.shard,
                    rows: f.rows,
                    files: f.files,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn compact(&self, collection: &str, c: CompactSegments) -> Result<(), Error> {
        let _: Done = self
            .call(
                "segment.compact",
                &Compact {
                    collection: collection.into(),
                    segment_ids: c.segment_ids,
                    into_segment_id: c.into_segment_id,
                    rows: c.rows,
                    files: c.files,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn drop_segment(&self, collection: &str, segment_id: u64) -> Result<(), Error> {
        let _: Done = self
            .call(
                "segment.drop",
                &SegmentRef {
                    collection: collection.into(),
                    segment_id,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn build_index(&self, collection: &str, b: BuildIndex) -> Result<(), Error> {
        let _: Done = self
            .call(
                "index.record_build",
                &RecordBuild {
                    collection: collection.into(),
                    segment_id: b.segment_id,
                    index: b.index,
                    build_id: b.build_id,
                    files: b.files,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn allocate_id(&self) -> Result<u64, Error> {
        let a: Allocated = self.call("id.allocate", &Empty {}).await?;
        Ok(a.id)
    }

    pub async fn create_snapshot(&self, r: CreateSnapshotRequest) -> Result<SnapshotView, Error> {
        self.call(
            "snapshot.create",
            &CreateSnapshot {
                collection: r.collection,
                name: r.name,
                description: r.description,
                labels: r.labels,
            },
        )
        .await
    }

    pub async fn list_snapshots(&self, r: ListSnapshotsRequest) -> Result<SnapshotPage, Error> {
        self.call(
            "snapshot.list",
            &ListSnapshots {
                collection: r.collection,
                status: r.status,
                label: r.label,
                limit: r.limit,
                page_token: r.page_token,
            },
        )
        .await
    }

    pub async fn describe_snapshot(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<SnapshotView, Error> {
        self.call("snapshot.describe", &snapshot_ref(collection, name))
            .await
    }

    pub async fn drop_snapshot(&self, collection: &str, name: &str) -> Result<SnapshotView, Error> {
        self.call("snapshot.drop", &snapshot_ref(collection, name))
            .await
    }

    pub async fn verify_snapshot(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<VerifyReport, Error> {
        self.call("snapshot.verify", &snapshot_ref(collection, name))
            .await
    }

    pub async fn import_snapshot(&self, prefix: &str) -> Result<SnapshotView, Error> {
        self.call(
            "snapshot.import",
            &Import {
                prefix: prefix.into(),
            },
        )
        .await
    }

    pub async fn gc_run(&self, o: GcRunOptions, wait_loaded: Duration) -> Result<GcReport, Error> {
        self.call(
            "gc.run",
            &gc_ops::Run {
                dry_run: o.dry_run,
                dropped_retention_ms: o.dropped_retention_ms,
                orphan_window_ms: o.orphan_window_ms,
                wait_loaded_ms: wait_loaded.as_millis() as u64,
            },
        )
        .await
    }

    pub async fn gc_status(&self, wait_loaded: Duration) -> Result<GcStatus, Error> {
        self.call(
            "gc.status",
            &gc_ops::Status {
                wait_loaded_ms: wait_loaded.as_millis() as u64,
            },
        )
        .await
    }
}

fn snapshot_ref(collection: &str, name: &str) -> SnapshotRef {
    SnapshotRef {
        collection: collection.into(),
        name: name.into(),
    }
}
