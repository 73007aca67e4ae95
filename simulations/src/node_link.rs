//! `NodeLink`: one simulated node's line to the shared log and store, which a crash cuts.
//!
//! In multi-node mode every node runs in the one runtime on the same `SimLog` and `SimStore`.
//! A node cannot be killed alone by dropping the runtime, so a crash **cuts its link**: from
//! that moment every read, append, put, get, list, copy and delete it makes fails. Its actors
//! live on as a zombie — renewing claims it can no longer record, retrying copies that no
//! longer land — which is exactly the partitioned node design §10 says must be harmless. The
//! node then "restarts" as a new node (new id, new link); the zombie is shut down at the end.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use snapvault_events::{Appended, Envelope, EventLog, ExpectedVersion, LogError, NewEvent};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::watch;

/// The link of one node incarnation.
pub struct NodeLink {
    log: Arc<dyn EventLog>,
    store: Arc<dyn ObjectStore>,
    cut: AtomicBool,
    name: String,
    /// Writes (appends, puts, copies) that passed the link before it was cut and have not
    /// returned yet: a crash lets them land or not, but the runner waits for them to settle
    /// before it judges the step, as a whole-runtime crash settles them by killing them.
    writes_in_flight: AtomicU64,
}

/// Counts one write in flight on a link while it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicU64) -> InFlight<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NodeLink {
    pub fn new(name: &str, log: Arc<dyn EventLog>, store: Arc<dyn ObjectStore>) -> Arc<NodeLink> {
        Arc::new(NodeLink {
            log,
            store,
            cut: AtomicBool::new(false),
            name: name.to_string(),
            writes_in_flight: AtomicU64::new(0),
        })
    }

    /// The node crashed: nothing it does reaches the log or the store any more.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Wait until every write that passed before the cut has returned.
    pub async fn settled(&self) {
        while self.writes_in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn log_cut(&self, what: &str) -> Result<(), LogError> {
        if self.is_cut() {
            return Err(LogError::Unavailable(format!(
                "simulated node {}: {what}: its link is cut (crashed)",
                self.name
            )));
        }
        Ok(())
    }

    fn store_cut(&self, what: &str, path: &Path) -> Result<()> {
        if self.is_cut() {
            return Err(object_store::Error::Generic {
                store: "NodeLink",
                source: format!("{what} of '{path}' from node {}: link cut", self.name).into(),
            });
        }
        Ok(())
    }
}

/// The log as one node sees it.
pub struct LinkedLog(pub Arc<NodeLink>);
/// The store as one node sees it.
pub struct LinkedStore(pub Arc<NodeLink>);

#[async_trait]
impl EventLog for LinkedLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError> {
        self.0.log_cut("append")?;
        let _w = InFlight::new(&self.0.writes_in_flight);
        self.0.log.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        self.0.log_cut("read_stream")?;
        self.0
            .log
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        self.0.log_cut("stream_version")?;
        self.0.log.stream_version(stream).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        self.0.log_cut("read_all")?;
        self.0.log.read_all(from_position, max_count).await
    }

    async fn head(&self) -> Result<u64, LogError> {
        self.0.log_cut("head")?;
        self.0.log.head().await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.0.log.watch_head()
    }
}

impl fmt::Debug for LinkedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkedStore({})", self.0.name)
    }
}

impl fmt::Display for LinkedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkedStore({})", self.0.name)
    }
}

#[async_trait]
impl ObjectStore for LinkedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.0.store_cut("put", location)?;
        let _w = InFlight::new(&self.0.writes_in_flight);
        self.0.store.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.0.store_cut("multipart put", location)?;
        self.0.store.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.store_cut("get", location)?;
        self.0.store.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let link = self.0.clone();
        let checked = locations
            .map(move |l| {
                let l = l?;
                link.store_cut("delete", &l)?;
                Ok(l)
            })
            .boxed();
        self.0.store.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Err(e) = self
            .0
            .store_cut("list", &prefix.cloned().unwrap_or_default())
        {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.0.store.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0
            .store_cut("list", &prefix.cloned().unwrap_or_default())?;
        self.0.store.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.store_cut("copy", from)?;
        let _w = InFlight::new(&self.0.writes_in_flight);
        self.0.store.copy_opts(from, to, options).await
    }
}
