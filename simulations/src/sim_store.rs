//! `SimStore`: `object_store`'s `InMemory` behind a fault injector.
//!
//! It implements the production `ObjectStore` trait, so the node (and later the snapshot
//! writer, the copy tasks and the GC sweepers) run against it unchanged. It injects:
//! - errors on put (before the object lands, or after: an ambiguous put that did land),
//!   get/head, delete, copy (before or after) and listing (also mid-listing);
//! - virtual latency (`tokio::time::sleep` on the paused clock: free in real time, but it
//!   reorders concurrent work);
//! - listing reorders: real stores promise no global order across pages, so code that
//!   assumes sorted listings is a bug waiting for S3.
//!
//! It also replaces `InMemory`'s `last_modified` (read from the wall clock) with the virtual
//! time of the put, so anything that ages objects (GC's orphan safety window) is deterministic,
//! and it records every deletion with the log head at that moment, so the checker can require
//! that each deletion was announced in the log first (design §5).

use crate::faults::{FaultInjector, Site, delay};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use snapvault_events::SharedClock;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;

/// Virtual time (ms since the Unix epoch) each object was last written.
type PutTimes = Arc<Mutex<BTreeMap<Path, u64>>>;

/// One deletion that happened: the key and the log head when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub key: String,
    pub log_head: u64,
}

/// Deletions not yet collected by the checker, and the log whose head stamps them.
#[derive(Clone)]
struct DeletionAudit {
    head: watch::Receiver<u64>,
    seen: Arc<Mutex<Vec<Deletion>>>,
}

impl DeletionAudit {
    fn record(&self, key: &Path) {
        let log_head = *self.head.borrow();
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Deletion {
                key: key.to_string(),
                log_head,
            });
    }
}

pub struct SimStore {
    inner: Arc<InMemory>,
    faults: Arc<FaultInjector>,
    clock: SharedClock,
    put_times: PutTimes,
    audit: DeletionAudit,
}

impl fmt::Debug for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimStore")
    }
}

impl fmt::Display for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimStore(InMemory)")
    }
}

fn injected(what: &str, path: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "SimStore",
        source: format!("{what} of '{path}' failed (injected)").into(),
    }
}

fn lock(times: &PutTimes) -> std::sync::MutexGuard<'_, BTreeMap<Path, u64>> {
    times.lock().unwrap_or_else(|p| p.into_inner())
}

/// Put the virtual write time in place of `InMemory`'s wall-clock one.
fn virtual_meta(times: &PutTimes, mut meta: ObjectMeta) -> ObjectMeta {
    let ms = lock(times).get(&meta.location).copied().unwrap_or(0);
    meta.last_modified = (UNIX_EPOCH + Duration::from_millis(ms)).into();
    meta
}

impl SimStore {
    /// `log_head` is the durable log's head (e.g. `MemoryLog::watch_head`): each deletion is
    /// stamped with it.
    pub fn new(
        inner: Arc<InMemory>,
        faults: Arc<FaultInjector>,
        clock: SharedClock,
        log_head: watch::Receiver<u64>,
    ) -> SimStore {
        SimStore {
            inner,
            faults,
            clock,
            put_times: Arc::new(Mutex::new(BTreeMap::new())),
            audit: DeletionAudit {
                head: log_head,
                seen: Arc::new(Mutex::new(Vec::new())),
            },
        }
    }

    /// Deletions since the last call, in the order they happened.
    pub fn take_deletions(&self) -> Vec<Deletion> {
        std::mem::take(&mut *self.audit.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The store without faults: what really exists (the checker reads through this).
    pub fn inner(&self) -> &Arc<InMemory> {
        &self.inner
    }

    async fn latency(&self) {
        delay(&self.faults, Site::StoreLatency, None).await;
    }

    fn stamp(&self, path: &Path) {
        lock(&self.put_times).insert(path.clone(), self.clock.now_ms());
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.latency().await;
        if self.faults.roll(Site::StorePutBefore) {
            return Err(injected("put", location));
        }
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.stamp(location);
        if self.faults.roll(Site::StorePutAfter) {
            return Err(injected("put (landed, reply lost)", location));
        }
        Ok(r)
    }

    /// Multipart uploads pass through with an up-front fault only: nothing in snapvault
    /// uses them yet, and a part-level injector belongs with the first user.
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.latency().await;
        if self.faults.roll(Site::StorePutBefore) {
            return Err(injected("multipart put", location));
        }
        self.stamp(location);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.latency().await;
        if self.faults.roll(Site::StoreGet) {
            return Err(injected("get", location));
        }
        let mut r = self.inner.get_opts(location, options).await?;
        r.meta = virtual_meta(&self.put_times, r.meta);
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        let times = self.put_times.clone();
        let audit = self.audit.clone();
        locations
            .then(move |location| {
                let inner = inner.clone();
                let faults = faults.clone();
                let times = times.clone();
                let audit = audit.clone();
                async move {
                    let location = location?;
                    delay(&faults, Site::StoreLatency, None).await;
                    if faults.roll(Site::StoreDelete) {
                        return Err(injected("delete", &location));
                    }
                    inner.delete(&location).await?;
                    lock(&times).remove(&location);
                    audit.record(&location);
                    Ok(location)
                }
            })
            .boxed()
    }

    /// The whole listing is taken at once (like one page), then maybe shuffled, and maybe cut
    /// by an error part way through, as a paginated listing can be.
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        let times = self.put_times.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            delay(&faults, Site::StoreLatency, None).await;
            let listed: Vec<Result<ObjectMeta>> = inner.list(prefix.as_ref()).collect().await;
            let mut items: Vec<Result<ObjectMeta>> = listed
                .into_iter()
                .map(|r| r.map(|m| virtual_meta(&times, m)))
                .collect();
            faults.maybe_shuffle(&mut items);
            if faults.roll(Site::StoreList) {
                let cut = faults.below(items.len() as u64 + 1) as usize;
                items.truncate(cut);
                let at = prefix.unwrap_or_default();
                items.push(Err(injected("list", &at)));
            }
            futures::stream::iter(items)
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.latency().await;
        if self.faults.roll(Site::StoreList) {
            return Err(injected("list", &prefix.cloned().unwrap_or_default()));
        }
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        r.objects = r
            .objects
            .into_iter()
            .map(|m| virtual_meta(&self.put_times, m))
            .collect();
        self.faults.maybe_shuffle(&mut r.objects);
        self.faults.maybe_shuffle(&mut r.common_prefixes);
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.latency().await;
        if self.faults.roll(Site::StoreCopy) {
            return Err(injected("copy", from));
        }
        self.inner.copy_opts(from, to, options).await?;
        self.stamp(to);
        if self.faults.roll(Site::StoreCopy) {
            return Err(injected("copy (landed, reply lost)", to));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultConfig;
    use crate::prng::{PPM, Prng};
    use futures::TryStreamExt;
    use snapvault_events::ManualClock;

    fn store_with(config: FaultConfig) -> (SimStore, Arc<FaultInjector>) {
        let faults = Arc::new(FaultInjector::new(config, Prng::new(9)));
        let (_head_tx, head) = watch::channel(0);
        let store = SimStore::new(
            Arc::new(InMemory::new()),
            faults.clone(),
            Arc::new(ManualClock::new(1_234)),
            head,
        );
        (store, faults)
    }

    #[tokio::test(start_paused = true)]
    async fn an_ambiguous_put_lands_with_a_virtual_time_and_deletions_are_audited() {
        let mut c = FaultConfig::none();
        c.store.put_after_ppm = PPM;
        c.store.reorder_listings = true;
        let (store, faults) = store_with(c);
        let p = Path::from("a/0");
        assert!(store.put(&p, PutPayload::from_static(b"x")).await.is_err());
        assert!(store.inner().head(&p).await.is_ok());
        let meta = store.head(&p).await.unwrap();
        assert_eq!(meta.last_modified.timestamp_millis(), 1_234);
        faults.heal();
        for i in 1..20 {
            store
                .put(
                    &Path::from(format!("a/{i:02}")),
                    PutPayload::from_static(b"y"),
                )
                .await
                .unwrap();
        }
        let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 20);
        store.delete(&p).await.unwrap();
        assert_eq!(
            store.take_deletions(),
            vec![Deletion {
                key: "a/0".into(),
                log_head: 0
            }]
        );
        assert!(store.take_deletions().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_put_does_not_land() {
        let mut c = FaultConfig::none();
        c.store.put_before_ppm = PPM;
        let (store, _) = store_with(c);
        let p = Path::from("b/0");
        assert!(store.put(&p, PutPayload::from_static(b"x")).await.is_err());
        assert!(store.inner().head(&p).await.is_err());
    }
}
