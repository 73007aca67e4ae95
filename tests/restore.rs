//! Restore jobs against real parts: sled on disk and the local filesystem store.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use snapvault::client::CreateCollectionRequest;
use snapvault::restores::{RestoreView, StartRestoreRequest};
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault::{Client, ErrorCode, Node, NodeConfig, host};
use snapvault_actors::gc::GcRunOptions;
use snapvault_events::domain::collection::{BuildIndex, CollectionStatus, FlushSegment};
use snapvault_events::domain::restore::{RestoreOptions, RestoreStatus};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

async fn start(dir: &Path) -> Node {
    Node::start(NodeConfig::embedded(dir))
        .await
        .expect("node starts")
}

/// A collection with two partitions, two shards, an index built on some segments, and a
/// snapshot `s` of it. Returns the collection id.
async fn source(c: &Client, name: &str, segments: usize, files: usize, size: usize) -> u64 {
    let view = c
        .create_collection(CreateCollectionRequest {
            name: name.into(),
            shard_count: 2,
            partitions: vec!["p1".into()],
            schema_json: r#"{"fields":[{"name":"v","type":"float_vector"}]}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.create_index(name, "ivf", "v", r#"{"nlist":8}"#)
        .await
        .unwrap();
    for i in 0..segments {
        let id = c.allocate_id().await.unwrap();
        let (partition, partition_id) = if i % 3 == 0 {
            ("p1", 2)
        } else {
            ("_default", 1)
        };
        let written =
            host::write_segment_files(&**c.store(), view.id, partition_id, id, files, size)
                .await
                .unwrap();
        c.flush_segment(
            name,
            FlushSegment {
                segment_id: id,
                partition: partition.into(),
                shard: (i % 2) as u32,
                rows: 100 + i as u64,
                files: written,
            },
        )
        .await
        .unwrap();
        if i % 2 == 0 {
            let key = host::segment_file_key(view.id, partition_id, id, "index", 0);
            let f = host::put_file(&**c.store(), &key, Bytes::from(host::file_bytes(id, 333)))
                .await
                .unwrap();
            let build_id = c.allocate_id().await.unwrap();
            c.build_index(
                name,
                BuildIndex {
                    segment_id: id,
                    index: "ivf".into(),
                    build_id,
                    files: vec![f],
                },
            )
            .await
            .unwrap();
        }
    }
    c.create_snapshot(CreateSnapshotRequest {
        collection: name.into(),
        name: "s".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    view.id
}

fn restore_req(collection: &str, target: &str) -> StartRestoreRequest {
    StartRestoreRequest {
        snapshot_collection: collection.into(),
        snapshot: "s".into(),
        target: target.into(),
        options: RestoreOptions::default(),
    }
}

async fn wait(c: &Client, job: u64) -> RestoreView {
    c.wait_restore(
        job,
        Duration::from_millis(20),
        Some(Duration::from_secs(120)),
        |_| {},
    )
    .await
    .unwrap()
}

async fn keys_under(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    store
        .list(Some(&StorePath::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// Every live file of `target` has the bytes of the snapshot's file with the same relative
/// name in the corresponding source segment (matched by rows, which are unique here).
async fn assert_restored_byte_for_byte(c: &Client, source: &str, target: &str) {
    let snap = c.describe_snapshot(source, "s").await.unwrap();
    let src = snapvault_actors::snapshot::worker::collection_at(
        &**c.log(),
        snap.collection_id,
        snap.pinned_version,
    )
    .await
    .unwrap();
    let dst = c.describe_collection(target).await.unwrap();
    assert_eq!(dst.status, CollectionStatus::Ready);
    assert_eq!(dst.segments.len(), src.segments.len());
    let by_rows: BTreeMap<u64, _> = src.segments.values().map(|s| (s.rows, s.clone())).collect();
    let store = c.store();
    for seg in &dst.segments {
        let s = &by_rows[&seg.rows];
        assert_eq!(seg.files.len(), s.files.len());
        for (a, b) in seg.files.iter().zip(&s.files) {
            assert!(a.key.starts_with(&format!("data/{}/", dst.id)), "{}", a.key);
            assert_eq!(a.key.rsplit('/').next(), b.key.rsplit('/').next());
            let got = host::read_file(&**store, &a.key).await.unwrap();
            let want = host::read_file(&**store, &b.key).await.unwrap();
            assert_eq!(got, want, "{} differs from {}", a.key, b.key);
            assert_eq!((a.size, a.crc32c), (b.size, b.crc32c));
        }
        let src_index_files: usize = s.indexes.iter().map(|i| i.files.len()).sum();
        let dst_index_files: usize = seg.indexes.iter().map(|i| i.files.len()).sum();
        assert_eq!(dst_index_files, src_index_files);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_copies_every_file_byte_for_byte_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    source(&c, "c1", 12, 3, 4096).await;
    let started = c.start_restore(restore_req("c1", "r1")).await.unwrap();
    assert!(started.job_id > 0, "a real job id comes back at once");
    let done = wait(&c, started.job_id).await;
    assert_eq!(done.status, RestoreStatus::Completed, "{done:?}");
    assert_eq!(done.totals.segments, 12);
    assert_eq!(done.files_done, done.totals.files);
    assert_eq!(done.percent, 100.0);
    assert!(done.tasks.iter().all(|t| t.status == "completed"));
    assert_restored_byte_for_byte(&c, "c1", "r1").await;
    // The lease is gone: the snapshot can be dropped, and the restored data stays.
    let snap = c.describe_snapshot("c1", "s").await.unwrap();
    assert!(snap.leases.is_empty());
    drop(c);
    node.shutdown().await;

    let node = start(dir.path()).await;
    let c = node.client();
    let again = c.restore_status(started.job_id).await.unwrap();
    assert_eq!(again.status, RestoreStatus::Completed);
    assert_eq!(again.files_done, done.files_done);
    let page = c.list_restores(None, None, None).await.unwrap();
    assert_eq!(page.jobs.len(), 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_dropped_collection_then_drop_the_snapshot_and_gc_keeps_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    source(&c, "c1", 6, 2, 1000).await;
    c.drop_collection("c1").await.unwrap();
    let job = c
        .start_restore(restore_req("c1", "r1"))
        .await
        .unwrap()
        .job_id;
    assert_eq!(wait(&c, job).await.status, RestoreStatus::Completed);
    assert_restored_byte_for_byte(&c, "c1", "r1").await;
    c.drop_snapshot("c1", "s").await.unwrap();
    let report = c
        .gc_run(GcRunOptions {
            dry_run: false,
            dropped_retention_ms: Some(0),
            orphan_window_ms: Some(0),
        })
        .await
        .unwrap();
    assert!(report.total().objects > 0, "the dropped source's files go");
    let r1 = c.describe_collection("r1").await.unwrap();
    for seg in &r1.segments {
        for f in &seg.files {
            let got = host::read_file(&**c.store(), &f.key).await.unwrap();
            assert_eq!(crc32c::crc32c(&got), f.crc32c);
        }
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_subset_restores_only_those_segments() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    source(&c, "c1", 9, 1, 100).await;
    let mut req = restore_req("c1", "only_p1");
    req.options.partitions = vec!["p1".into()];
    let job = c.start_restore(req).await.unwrap().job_id;
    assert_eq!(wait(&c, job).await.status, RestoreStatus::Completed);
    let v = c.describe_collection("only_p1").await.unwrap();
    assert_eq!(v.segments.len(), 3, "segments 0, 3, 6 are in p1");
    assert!(v.partitions.iter().any(|p| p.name == "p1"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_midway_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    source(&c, "c1", 20, 4, 64 * 1024).await;
    let mut req = restore_req("c1", "r1");
    // ~5 MiB at 1 MiB/s: a few seconds, so the cancel lands mid-way.
    req.options.max_bytes_per_sec = Some(1 << 20);
    req.options.parallelism = 2;
    let job = c.start_restore(req).await.unwrap();
    // Drop is refused while the lease is held, naming the job.
    let err = c.drop_snapshot("c1", "s").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedPrecondition);
    assert!(err.message.contains(&job.job_id.to_string()), "{err}");
    loop {
        let v = c.restore_status(job.job_id).await.unwrap();
        if v.files_done > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.cancel_restore(job.job_id).await.unwrap();
    let end = wait(&c, job.job_id).await;
    assert_eq!(end.status, RestoreStatus::Cancelled, "{end:?}");
    assert!(end.files_done < end.totals.files, "cancelled mid-way");
    assert!(
        keys_under(&**c.store(), &format!("data/{}", job.target_collection_id))
            .await
            .is_empty()
    );
    assert_eq!(
        c.describe_collection("r1").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    // The lease is released and the name is free again.
    assert!(
        c.describe_snapshot("c1", "s")
            .await
            .unwrap()
            .leases
            .is_empty()
    );
    let again = c.start_restore(restore_req("c1", "r1")).await.unwrap();
    assert_eq!(
        wait(&c, again.job_id).await.status,
        RestoreStatus::Completed
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_file_fails_the_job_naming_the_key_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    source(&c, "c1", 10, 2, 2048).await;
    let victim = c.describe_collection("c1").await.unwrap().segments[7].files[1]
        .key
        .clone();
    c.store()
        .delete(&StorePath::from(victim.as_str()))
        .await
        .unwrap();
    let job = c.start_restore(restore_req("c1", "r1")).await.unwrap();
    let end = wait(&c, job.job_id).await;
    assert_eq!(end.status, RestoreStatus::Failed, "{end:?}");
    let failure = end.failure.unwrap_or_default();
    assert!(
        failure.contains(&victim),
        "the reason names the key: {failure}"
    );
    assert!(
        keys_under(&**c.store(), &format!("data/{}", job.target_collection_id))
            .await
            .is_empty()
    );
    assert_eq!(
        c.describe_collection("r1").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert!(
        c.describe_snapshot("c1", "s")
            .await
            .unwrap()
            .leases
            .is_empty()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_restores_into_one_name_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    source(&c, "c1", 3, 1, 100).await;
    let mut handles = Vec::new();
    for _ in 0..6 {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            c.start_restore(restore_req("c1", "same")).await
        }));
    }
    let mut won = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok(v) => won.push(v.job_id),
            Err(e) => assert_eq!(e.code, ErrorCode::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one restore into a name wins");
    assert_eq!(wait(&c, won[0]).await.status, RestoreStatus::Completed);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_codes_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    source(&c, "c1", 2, 1, 100).await;
    let head = c.log().head().await.unwrap();
    let cases: Vec<(StartRestoreRequest, ErrorCode)> = vec![
        (
            StartRestoreRequest {
                snapshot: "nope".into(),
                ..restore_req("c1", "r")
            },
            ErrorCode::NotFound,
        ),
        (restore_req("c1", "c1"), ErrorCode::AlreadyExists),
        (restore_req("c1", "../x"), ErrorCode::InvalidArgument),
        (
            StartRestoreRequest {
                options: RestoreOptions {
                    partitions: vec!["ghost".into()],
                    ..RestoreOptions::default()
                },
                ..restore_req("c1", "r")
            },
            ErrorCode::NotFound,
        ),
        (
            StartRestoreRequest {
                options: RestoreOptions {
                    parallelism: 0,
                    ..RestoreOptions::default()
                },
                ..restore_req("c1", "r")
            },
            ErrorCode::InvalidArgument,
        ),
        (
            StartRestoreRequest {
                options: RestoreOptions {
                    parallelism: 1_000_000,
                    ..RestoreOptions::default()
                },
                ..restore_req("c1", "r")
            },
            ErrorCode::InvalidArgument,
        ),
        (
            StartRestoreRequest {
                options: RestoreOptions {
                    max_bytes_per_sec: Some(0),
                    ..RestoreOptions::default()
                },
                ..restore_req("c1", "r")
            },
            ErrorCode::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let err = c.start_restore(req.clone()).await.unwrap_err();
        assert_eq!(err.code, code, "{req:?}: {err}");
    }
    assert_eq!(
        c.restore_status(424242).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.cancel_restore(424242).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.restore_status(0).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        c.log().head().await.unwrap(),
        head,
        "refused requests write nothing"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_collection_restores_with_its_fragment_mapping_and_copies_no_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    std::fs::create_dir_all(&lake_dir).unwrap();
    for i in 0..6u64 {
        snapvault::lake::write_local(&lake_dir.join(format!("part-{i}.parquet")), i, 100 + i)
            .unwrap();
    }
    let node = start(&dir.path().join("d")).await;
    let c = node.client();
    let source = format!("file://{}/", lake_dir.display());
    c.create_external_collection(
        CreateCollectionRequest {
            name: "ext".into(),
            shard_count: 1,
            ..Default::default()
        },
        &source,
        r#"{"format":"parquet","target_rows_per_segment":250}"#,
    )
    .await
    .unwrap();
    let t = c.refresh_external("ext").await.unwrap();
    c.wait_external_task(t.task_id, Duration::from_secs(60))
        .await
        .unwrap();
    c.create_snapshot(CreateSnapshotRequest {
        collection: "ext".into(),
        name: "s".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let job = c.start_restore(restore_req("ext", "ext2")).await.unwrap();
    let done = wait(&c, job.job_id).await;
    assert_eq!(done.status, RestoreStatus::Completed, "{done:?}");
    assert_eq!(done.totals.files, 0, "no fragment is copied");
    let src = c.describe_collection("ext").await.unwrap();
    let dst = c.describe_collection("ext2").await.unwrap();
    assert_eq!(dst.segments.len(), src.segments.len());
    // Same fragments behind the restored segments, under lists of the target's own.
    let fragments = |v: &snapvault::views::CollectionView| {
        let mut all = Vec::new();
        for s in &v.segments {
            assert_eq!(s.files.len(), 1);
            all.push(s.files[0].key.clone());
        }
        all
    };
    let mut src_frags = Vec::new();
    for key in fragments(&src) {
        let b = host::read_file(&**c.store(), &key).await.unwrap();
        let list = snapvault_events::domain::external::FragmentList::decode(&key, &b).unwrap();
        src_frags.extend(list.fragments.into_iter().map(|f| (f.key, f.rows)));
    }
    let mut dst_frags = Vec::new();
    for key in fragments(&dst) {
        assert!(
            key.starts_with(&format!("data/{}/external/", dst.id)),
            "{key}"
        );
        let b = host::read_file(&**c.store(), &key).await.unwrap();
        let list = snapvault_events::domain::external::FragmentList::decode(&key, &b).unwrap();
        assert_eq!(list.collection_id, dst.id);
        dst_frags.extend(list.fragments.into_iter().map(|f| (f.key, f.rows)));
    }
    src_frags.sort();
    dst_frags.sort();
    assert_eq!(src_frags, dst_frags);
    assert_eq!(src_frags.len(), 6);
    // The restored collection is external too, and refreshes find nothing changed.
    let t = c.refresh_external("ext2").await.unwrap();
    let ended = c
        .wait_external_task(t.task_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ended.status, "committed", "{ended:?}");
    let counts = ended.counts.expect("a committed refresh has counts");
    assert_eq!(
        (counts.kept, counts.dropped, counts.added),
        (src.segments.len() as u64, 0, 0),
        "every restored segment is kept: same fragments, same source"
    );
    node.shutdown().await;
}
