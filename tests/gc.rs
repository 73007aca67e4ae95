//! GC against real parts (sled on disk, local filesystem store): it reclaims what is dead and
//! never an object a snapshot, a live segment or an in-flight write needs.

use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use snapvault::NodeParts;
use snapvault::client::CreateCollectionRequest;
use snapvault::host;
use snapvault::restores::StartRestoreRequest;
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault::{Client, Node, NodeConfig};
use snapvault_actors::gc::GcRunOptions;
use snapvault_events::ExpectedVersion;
use snapvault_events::codec;
use snapvault_events::domain::collection::{
    BuildIndex, CollectionEvent, CompactSegments, FlushSegment,
};
use snapvault_events::domain::gc::GcCategory;
use snapvault_events::domain::restore::{RestoreOptions, RestoreStatus};
use snapvault_events::domain::{FileRef, collection_stream};
use snapvault_events::{Appended, Envelope, EventLog, LogError, NewEvent, SledLog, SystemClock};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A log whose global page reads (what projections catch up with) wait for a permit after
/// the first page, so a test can ask GC something while its index is surely still loading.
struct GatedLog {
    inner: Arc<dyn EventLog>,
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl EventLog for GatedLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        self.inner
            .read_stream(stream, from_version, max_count)
            .await
    }
    async fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        self.inner.stream_version(stream).await
    }
    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        // Pages only: a one-record read (the checkpoint's check against the log) passes.
        if from_position > 1 && max_count > 1 {
            let permit = self.gate.acquire().await;
            drop(permit);
        }
        self.inner.read_all(from_position, max_count).await
    }
    async fn head(&self) -> Result<u64, LogError> {
        self.inner.head().await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
}

fn config(dir: &Path) -> NodeConfig {
    let mut c = NodeConfig::embedded(dir);
    c.gc.interval_ms = 0;
    c
}

fn now_options() -> GcRunOptions {
    GcRunOptions {
        dry_run: false,
        dropped_retention_ms: Some(0),
        orphan_window_ms: Some(0),
    }
}

fn dry_now() -> GcRunOptions {
    GcRunOptions {
        dry_run: true,
        ..now_options()
    }
}

async fn started(dir: &Path) -> Node {
    let node = Node::start(config(dir)).await.unwrap();
    node.client()
        .gc_wait_loaded(Duration::from_secs(60))
        .await
        .unwrap();
    node
}

async fn flush(c: &Client, name: &str, cid: u64, shard: u32) -> (u64, Vec<FileRef>) {
    let id = c.allocate_id().await.unwrap();
    let files = host::write_segment_files(&**c.store(), cid, 1, id, 2, 512)
        .await
        .unwrap();
    c.flush_segment(
        name,
        FlushSegment {
            segment_id: id,
            partition: "_default".into(),
            shard,
            rows: 10,
            files: files.clone(),
        },
    )
    .await
    .unwrap();
    (id, files)
}

/// Collection `c1` (one shard) with one flushed segment: its id and the segment's files.
async fn one_flushed_segment(c: &Client) -> (u64, Vec<FileRef>) {
    let view = c
        .create_collection(CreateCollectionRequest {
            name: "c1".into(),
            shard_count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, files) = flush(c, "c1", view.id, 0).await;
    (view.id, files)
}

fn exists(dir: &Path, key: &str) -> bool {
    dir.join("objects").join(key).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_protects_compacted_rebuilt_and_dropped_files_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(dir.path()).await;
    let c = node.client();
    let view = c
        .create_collection(CreateCollectionRequest {
            name: "c1".into(),
            shard_count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    c.create_index("c1", "idx", "v", "{}").await.unwrap();
    let mut pinned = BTreeSet::new();
    let mut segs = Vec::new();
    for _ in 0..4 {
        let (id, files) = flush(&c, "c1", view.id, 0).await;
        pinned.extend(files.into_iter().map(|f| f.key));
        let build_id = c.allocate_id().await.unwrap();
        let key = format!("data/{}/1/{id}/index/{build_id}", view.id);
        let f = host::put_file(&**c.store(), &key, bytes::Bytes::from(vec![7u8; 100]))
            .await
            .unwrap();
        pinned.insert(f.key.clone());
        c.build_index(
            "c1",
            BuildIndex {
                segment_id: id,
                index: "idx".into(),
                build_id,
                files: vec![f],
            },
        )
        .await
        .unwrap();
        segs.push(id);
    }
    c.create_snapshot(CreateSnapshotRequest {
        collection: "c1".into(),
        name: "s".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // After the snapshot: rebuild an index, compact everything, drop the result.
    let build_id = c.allocate_id().await.unwrap();
    let key = format!("data/{}/1/{}/index/{build_id}", view.id, segs[0]);
    let f = host::put_file(&**c.store(), &key, bytes::Bytes::from(vec![8u8; 100]))
        .await
        .unwrap();
    c.build_index(
        "c1",
        BuildIndex {
            segment_id: segs[0],
            index: "idx".into(),
            build_id,
            files: vec![f.clone()],
        },
    )
    .await
    .unwrap();
    let into = c.allocate_id().await.unwrap();
    let merged = host::write_segment_files(&**c.store(), view.id, 1, into, 1, 64)
        .await
        .unwrap();
    c.compact(
        "c1",
        CompactSegments {
            segment_ids: segs.clone(),
            into_segment_id: into,
            rows: 40,
            files: merged.clone(),
        },
    )
    .await
    .unwrap();
    c.drop_segment("c1", into).await.unwrap();

    let r = c.gc_run(now_options()).await.unwrap();
    assert!(r.loaded);
    // Only the post-snapshot objects were dead: the rebuilt index file and the merged file.
    let dropped = r
        .reclaimed
        .get(&GcCategory::DroppedFiles)
        .copied()
        .unwrap_or_default();
    assert_eq!(dropped.objects, 2, "{r:?}");
    assert!(!exists(dir.path(), &f.key));
    assert!(!exists(dir.path(), &merged[0].key));
    for k in &pinned {
        assert!(
            exists(dir.path(), k),
            "GC deleted {k}, which the snapshot needs"
        );
    }
    let v = c.verify_snapshot("c1", "s").await.unwrap();
    assert!(v.ok, "{v:?}");

    // …and it restores, byte for byte, from exactly the files GC kept for it.
    let job = c
        .start_restore(StartRestoreRequest {
            snapshot_collection: "c1".into(),
            snapshot: "s".into(),
            target: "c1_restored".into(),
            options: RestoreOptions::default(),
        })
        .await
        .unwrap();
    let end = c
        .wait_restore(
            job.job_id,
            Duration::from_millis(10),
            Some(Duration::from_secs(60)),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(end.status, RestoreStatus::Completed, "{end:?}");
    let mut restored_from = BTreeSet::new();
    let mut restored_keys = Vec::new();
    for seg in c.restore_segments(job.job_id).await.unwrap() {
        for (source_key, dest) in &seg.files {
            let restored = host::read_file(&**c.store(), &dest.key).await.unwrap();
            let original = host::read_file(&**c.store(), source_key).await.unwrap();
            assert_eq!(restored, original, "{} differs from {source_key}", dest.key);
            restored_from.insert(source_key.clone());
            restored_keys.push(dest.key.clone());
        }
    }
    assert_eq!(
        restored_from, pinned,
        "the restore copied exactly the snapshot's files"
    );

    // Drop the snapshot: now its files, and its manifests, go.
    c.drop_snapshot("c1", "s").await.unwrap();
    let r = c.gc_run(now_options()).await.unwrap();
    let dropped = r
        .reclaimed
        .get(&GcCategory::DroppedFiles)
        .copied()
        .unwrap_or_default();
    assert_eq!(dropped.objects as usize, pinned.len(), "{r:?}");
    for k in &pinned {
        assert!(!exists(dir.path(), k), "{k} should be reclaimed");
    }
    let dry = c.gc_run(dry_now()).await.unwrap();
    assert_eq!(dry.total().objects, 0, "nothing left to reclaim: {dry:?}");
    for k in &restored_keys {
        assert!(
            exists(dir.path(), k),
            "GC deleted {k} of the restored collection"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_respect_the_safety_window_and_unflushed_host_files_survive() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(dir.path()).await;
    let c = node.client();
    let (collection_id, live) = one_flushed_segment(&c).await;
    let orphan = format!("data/{collection_id}/1/999999/insert_log/0");
    c.store()
        .put(
            &ObjPath::from(orphan.as_str()),
            PutPayload::from(vec![1u8; 10]),
        )
        .await
        .unwrap();
    // Younger than an hour's window: kept (it may be a file the host has not flushed yet).
    let r = c
        .gc_run(GcRunOptions {
            dry_run: false,
            dropped_retention_ms: Some(0),
            orphan_window_ms: Some(3_600_000),
        })
        .await
        .unwrap();
    assert_eq!(r.total().objects, 0, "{r:?}");
    assert!(exists(dir.path(), &orphan));
    // Dry run with no window lists it, deletes nothing.
    let dry = c.gc_run(dry_now()).await.unwrap();
    assert_eq!(
        dry.keys.get(&GcCategory::Orphans),
        Some(&vec![orphan.clone()])
    );
    assert!(exists(dir.path(), &orphan));
    // With no window: reclaimed; the live files stay.
    let r = c.gc_run(now_options()).await.unwrap();
    assert_eq!(
        r.reclaimed.get(&GcCategory::Orphans).map(|a| a.objects),
        Some(1)
    );
    assert!(!exists(dir.path(), &orphan));
    for f in &live {
        assert!(exists(dir.path(), &f.key));
    }
    // Cycles are recorded in the log for audit.
    let gc_events = c.log().read_stream("gc", 1, 100).await.unwrap();
    assert!(gc_events.iter().any(|e| e.event_type == "Reclaiming"));
    node.shutdown().await;
}

/// Staging files of the local store (`<key>#<n>`: what a write cut short by `kill -9`
/// leaves; listing the store never shows them) are reclaimed once older than the orphan
/// window, in their own category; a young one stays; the objects beside them stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_files_a_killed_write_left_are_reclaimed_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(dir.path()).await;
    let c = node.client();
    let (collection_id, live) = one_flushed_segment(&c).await;
    let old = format!("{}#3", live[0].key);
    let young = format!("data/{collection_id}/1/77/insert_log/0#12");
    for (key, age_s) in [(&old, 7_200u64), (&young, 0)] {
        let path = dir.path().join("objects").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![7u8; 100]).unwrap();
        let when = std::time::SystemTime::now() - Duration::from_secs(age_s);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let hour = GcRunOptions {
        dry_run: true,
        dropped_retention_ms: Some(0),
        orphan_window_ms: Some(3_600_000),
    };
    let dry = c.gc_run(hour.clone()).await.unwrap();
    assert_eq!(
        dry.keys.get(&GcCategory::Staging),
        Some(&vec![old.clone()]),
        "{dry:?}"
    );
    assert!(exists(dir.path(), &old));
    let r = c
        .gc_run(GcRunOptions {
            dry_run: false,
            ..hour
        })
        .await
        .unwrap();
    assert_eq!(
        r.reclaimed
            .get(&GcCategory::Staging)
            .map(|a| (a.objects, a.bytes)),
        Some((1, 100)),
        "{r:?}"
    );
    assert!(!exists(dir.path(), &old));
    assert!(exists(dir.path(), &young), "younger than the window");
    for f in &live {
        assert!(exists(dir.path(), &f.key));
    }
    // With no window, the young one goes too.
    c.gc_run(now_options()).await.unwrap();
    assert!(!exists(dir.path(), &young));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_snapshot_pin_protects_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let node = started(dir.path()).await;
    let c = node.client();
    let view = c
        .create_collection(CreateCollectionRequest {
            name: "c1".into(),
            shard_count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let (seg, files) = flush(&c, "c1", view.id, 0).await;
    // A create that pinned and then crashed: the pin is in the log, nothing else.
    let stream = collection_stream(view.id);
    let v = c.log().stream_version(&stream).await.unwrap();
    let pin = codec::encode(&CollectionEvent::SnapshotPinned {
        snapshot_id: 424242,
        name: "crashed".into(),
        description: String::new(),
        labels: Default::default(),
        pinned_ms: 0,
    })
    .unwrap();
    c.log()
        .append(&stream, ExpectedVersion::Exact(v), vec![pin])
        .await
        .unwrap();
    c.registry().evict_now();
    c.drop_segment("c1", seg).await.unwrap();
    let r = c.gc_run(now_options()).await.unwrap();
    assert_eq!(r.total().objects, 0, "{r:?}");
    for f in &files {
        assert!(
            exists(dir.path(), &f.key),
            "a pending snapshot's file was reclaimed"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_reclaimed_before_the_ref_index_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let events: u64 = 1_000_000;
    let (dead_key, live_key);
    {
        let node = started(dir.path()).await;
        let c = node.client();
        let view = c
            .create_collection(CreateCollectionRequest {
                name: "big".into(),
                shard_count: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let (dead, dead_files) = flush(&c, "big", view.id, 0).await;
        let (_, live_files) = flush(&c, "big", view.id, 0).await;
        dead_key = dead_files[0].key.clone();
        live_key = live_files[0].key.clone();
        c.drop_segment("big", dead).await.unwrap();
        // A long log: many unrelated events after.
        let mut version = 0;
        for _ in 0..events / 1000 {
            let batch = (0..1000)
                .map(|i| snapvault_events::NewEvent::new("Noise", 1, vec![i as u8; 100]))
                .collect();
            c.log()
                .append("noise", ExpectedVersion::Exact(version), batch)
                .await
                .unwrap();
            version += 1000;
        }
        node.shutdown().await;
    }
    // Hold every projection's catch-up read at the gate: the GC is asked at once, while its
    // index is (deterministically) still behind the head, then the gate opens.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let inner: Arc<dyn EventLog> =
        Arc::new(SledLog::open(&dir.path().join("log"), Arc::new(SystemClock)).unwrap());
    let log: Arc<dyn EventLog> = Arc::new(GatedLog {
        inner,
        gate: gate.clone(),
    });
    let store = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir.path().join("objects")).unwrap(),
    );
    let cfg = config(dir.path());
    let node = Node::start_with(
        NodeParts {
            log,
            store,
            clock: Arc::new(SystemClock),
        },
        cfg.registry,
        cfg.id_block_size,
        snapvault::node::NodeLimits {
            snapshot: cfg.snapshot,
            gc: cfg.gc,
            restore: cfg.restore,
            work: cfg.work,
        },
    )
    .await
    .unwrap();
    let c = node.client();
    let r = c.gc_run(now_options()).await.unwrap();
    gate.add_permits(usize::MAX >> 4);
    assert!(
        !r.loaded,
        "the index cannot be loaded behind the gate: {r:?}"
    );
    let reason = r.not_loaded_reason.clone().unwrap();
    assert!(
        reason.starts_with("ref index not loaded (at position"),
        "{reason}"
    );
    assert_eq!(r.total().objects, 0);
    assert!(exists(dir.path(), &dead_key));
    assert!(!c.gc_status().loaded);
    c.gc_wait_loaded(Duration::from_secs(120)).await.unwrap();
    let r = c.gc_run(now_options()).await.unwrap();
    assert!(r.loaded);
    assert_eq!(
        r.reclaimed
            .get(&GcCategory::DroppedFiles)
            .map(|a| a.objects),
        Some(2)
    );
    assert!(!exists(dir.path(), &dead_key));
    assert!(exists(dir.path(), &live_key));
    node.shutdown().await;
}
