//! External collections against real parts: sled on disk, the local store, and real Parquet
//! files written with the `parquet` crate into a real directory (`file://`) and into the
//! node's own store (a plain prefix).

use snapvault::client::CreateCollectionRequest;
use snapvault::external::ExternalTaskView;
use snapvault::lake;
use snapvault::{ErrorCode, Node, NodeConfig};
use snapvault_events::codec::decode;
use snapvault_events::domain::collection::CollectionEvent;
use snapvault_events::domain::collection_stream;
use snapvault_events::domain::external::FragmentList;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

async fn start(dir: &Path) -> Node {
    Node::start(NodeConfig::embedded(dir))
        .await
        .expect("node starts")
}

fn spec(target_rows: u64) -> String {
    format!(r#"{{"format":"parquet","target_rows_per_segment":{target_rows}}}"#)
}

async fn create(node: &Node, name: &str, source: &str, target_rows: u64) -> u64 {
    node.client()
        .create_external_collection(
            CreateCollectionRequest {
                name: name.into(),
                shard_count: 2,
                ..Default::default()
            },
            source,
            &spec(target_rows),
        )
        .await
        .expect("external collection created")
        .id
}

async fn refresh(node: &Node, name: &str) -> ExternalTaskView {
    let c = node.client();
    let t = c.refresh_external(name).await.expect("refresh starts");
    c.wait_external_task(t.task_id, WAIT)
        .await
        .expect("task ends")
}

/// The collection's external segments: segment id → fragment keys with rows.
async fn mapping(node: &Node, id: u64) -> BTreeMap<u64, Vec<(String, u64)>> {
    let c = node.client();
    let segs = c
        .inspect_collection(id, |_, s| {
            s.segments
                .values()
                .map(|seg| (seg.segment_id, seg.files[0].key.clone()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for (sid, key) in segs {
        let bytes = snapvault_actors::snapshot::worker::get_object(&**c.store(), &key)
            .await
            .unwrap();
        let list = FragmentList::decode(&key, &bytes).unwrap();
        out.insert(
            sid,
            list.fragments
                .into_iter()
                .map(|f| (f.key, f.rows))
                .collect(),
        );
    }
    out
}

/// The refresh commits of a collection in the log: (task, kept, dropped, added).
async fn commits(node: &Node, id: u64) -> Vec<(u64, u64, Vec<u64>, Vec<u64>)> {
    let log = node.client().log().clone();
    let envs = log
        .read_stream(&collection_stream(id), 1, 100_000)
        .await
        .unwrap();
    envs.iter()
        .filter_map(|e| match decode::<CollectionEvent>(e).unwrap() {
            CollectionEvent::ExternalRefreshed {
                task_id,
                kept,
                dropped,
                added,
                ..
            } => Some((
                task_id,
                kept,
                dropped,
                added.iter().map(|s| s.segment_id).collect(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_remove_and_rewrite_fragments_keep_drop_and_add_exactly() {
    let data = tempfile::tempdir().unwrap();
    let lake_dir = tempfile::tempdir().unwrap();
    let at = |k: &str| lake_dir.path().join(k);
    for (k, rows) in [
        ("a.parquet", 100),
        ("b.parquet", 100),
        ("c.parquet", 100),
        ("sub/d.parquet", 100),
    ] {
        lake::write_local(&at(k), 1, rows).unwrap();
    }
    // Not fragments: Spark's marker and a temporary file.
    std::fs::write(at("_SUCCESS"), b"").unwrap();
    lake::write_local(&at("_temporary/x.parquet"), 1, 5).unwrap();
    let source = format!("file://{}/", lake_dir.path().display());
    let node = start(data.path()).await;
    // One fragment per segment: target = rows of a fragment.
    let id = create(&node, "t", &source, 100).await;

    let t1 = refresh(&node, "t").await;
    assert_eq!(t1.status, "committed", "{t1:?}");
    let c = t1.counts.unwrap();
    assert_eq!(
        (c.kept, c.dropped, c.added, c.fragments, c.rows),
        (0, 0, 4, 4, 400)
    );
    let m1 = mapping(&node, id).await;
    let by_key: BTreeMap<String, u64> = m1.iter().map(|(sid, f)| (f[0].0.clone(), *sid)).collect();
    assert_eq!(
        by_key.keys().cloned().collect::<Vec<_>>(),
        vec!["a.parquet", "b.parquet", "c.parquet", "sub/d.parquet"]
    );
    assert!(m1.values().all(|f| f.len() == 1 && f[0].1 == 100));

    // Remove b, rewrite c (other rows), add e.
    std::fs::remove_file(at("b.parquet")).unwrap();
    lake::write_local(&at("c.parquet"), 2, 150).unwrap();
    lake::write_local(&at("e.parquet"), 3, 70).unwrap();
    let t2 = refresh(&node, "t").await;
    let c = t2.counts.unwrap();
    assert_eq!(
        (c.kept, c.dropped, c.added, c.fragments),
        (2, 2, 2, 4),
        "{t2:?}"
    );
    let m2 = mapping(&node, id).await;
    assert_eq!(
        m2.get(&by_key["a.parquet"]),
        m1.get(&by_key["a.parquet"]),
        "a kept"
    );
    assert_eq!(
        m2.get(&by_key["sub/d.parquet"]),
        m1.get(&by_key["sub/d.parquet"]),
        "d kept"
    );
    assert!(!m2.contains_key(&by_key["b.parquet"]) && !m2.contains_key(&by_key["c.parquet"]));
    let mut now: Vec<(String, u64)> = m2.values().flatten().cloned().collect();
    now.sort();
    assert_eq!(
        now,
        vec![
            ("a.parquet".into(), 100),
            ("c.parquet".into(), 150),
            ("e.parquet".into(), 70),
            ("sub/d.parquet".into(), 100)
        ]
    );
    let log_commits = commits(&node, id).await;
    assert_eq!(log_commits.len(), 2);
    let (task, kept, dropped, added) = &log_commits[1];
    assert_eq!(*task, t2.task_id);
    assert_eq!(*kept, 2);
    let dropped: BTreeSet<u64> = dropped.iter().copied().collect();
    assert_eq!(
        dropped,
        BTreeSet::from([by_key["b.parquet"], by_key["c.parquet"]])
    );
    assert_eq!(added.len(), 2);

    // Nothing changed: everything kept, nothing read again.
    let t3 = refresh(&node, "t").await;
    let c = t3.counts.unwrap();
    assert_eq!((c.kept, c.dropped, c.added), (4, 0, 0));
    assert_eq!(
        t3.progress.footers_total, 0,
        "unchanged fragments are not read again"
    );

    // Status shows the last task; a restart keeps everything.
    let st = node.client().external_status("t").await.unwrap();
    assert_eq!((st.segments, st.fragments, st.rows), (4, 4, 420));
    assert!(st.active.is_none());
    assert_eq!(st.last.map(|l| l.task_id), Some(t3.task_id));
    node.shutdown().await;
    let node = start(data.path()).await;
    assert_eq!(mapping(&node, id).await, m2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_in_the_nodes_own_store_is_packed_to_the_target_and_never_collected() {
    let data = tempfile::tempdir().unwrap();
    let node = start(data.path()).await;
    let c = node.client();
    let store = c.store().clone();
    for i in 0..10u64 {
        let bytes = lake::parquet_file(i, 10 * (i + 1)).unwrap();
        snapvault_actors::snapshot::worker::put_object(
            &*store,
            &format!("lake/t/part-{i}.parquet"),
            bytes,
        )
        .await
        .unwrap();
    }
    // snapvault's own prefixes are refused as sources: GC would have to spare them wholesale.
    let refused = c
        .create_external_collection(
            snapvault::client::CreateCollectionRequest {
                name: "mine".into(),
                ..Default::default()
            },
            "data/lake/t",
            &spec(200),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code,
        snapvault::ErrorCode::InvalidArgument,
        "{refused}"
    );
    let id = create(&node, "own", "lake/t", 200).await;
    let t = refresh(&node, "own").await;
    let counts = t.counts.unwrap();
    // 550 rows, target 200: 3 segments, largest first into the least filled.
    assert_eq!(
        (counts.added, counts.fragments, counts.rows),
        (3, 10, 550),
        "{t:?}"
    );
    let m = mapping(&node, id).await;
    let sums: Vec<u64> = m.values().map(|f| f.iter().map(|x| x.1).sum()).collect();
    assert!(sums.iter().all(|s| (150..=200).contains(s)), "{sums:?}");
    // A GC with no windows keeps every fragment: they are the user's.
    let report = c
        .gc_run(snapvault_actors::gc::GcRunOptions {
            dry_run: false,
            dropped_retention_ms: Some(0),
            orphan_window_ms: Some(0),
        })
        .await
        .unwrap();
    assert!(report.loaded);
    for i in 0..10 {
        let key = format!("lake/t/part-{i}.parquet");
        snapvault_actors::snapshot::worker::get_object(&*store, &key)
            .await
            .unwrap_or_else(|e| panic!("GC deleted source fragment {key}: {e}"));
    }
    // Re-pointing the collection drops every segment, still no fragment goes.
    c.alter_external("own", Some("lake/none"), None)
        .await
        .unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_change_during_a_running_task_leaves_exactly_one_commit_from_the_new_task() {
    let data = tempfile::tempdir().unwrap();
    let big = tempfile::tempdir().unwrap();
    let small = tempfile::tempdir().unwrap();
    for i in 0..1500u64 {
        lake::write_local(&big.path().join(format!("f{i:05}.parquet")), i, 10).unwrap();
    }
    for i in 0..3u64 {
        lake::write_local(&small.path().join(format!("s{i}.parquet")), i, 10).unwrap();
    }
    let node = start(data.path()).await;
    let c = node.client();
    let id = create(
        &node,
        "race",
        &format!("file://{}/", big.path().display()),
        1_000,
    )
    .await;
    let first = c.refresh_external("race").await.unwrap();
    // A second refresh while the first runs returns the running task.
    let again = c.refresh_external("race").await.unwrap();
    assert_eq!(again.task_id, first.task_id);
    assert!(again.already_running);
    // Change the source while the first task is still reading footers.
    let altered = c
        .alter_external(
            "race",
            Some(&format!("file://{}/", small.path().display())),
            None,
        )
        .await
        .unwrap();
    assert_ne!(altered.task_id, first.task_id);
    let old = c.wait_external_task(first.task_id, WAIT).await.unwrap();
    let new = c.wait_external_task(altered.task_id, WAIT).await.unwrap();
    assert_eq!(old.status, "superseded", "{old:?}");
    assert_eq!(new.status, "committed", "{new:?}");
    let log_commits = commits(&node, id).await;
    assert_eq!(log_commits.len(), 1, "{log_commits:?}");
    assert_eq!(log_commits[0].0, altered.task_id);
    let m = mapping(&node, id).await;
    let keys: BTreeSet<String> = m.values().flatten().map(|f| f.0.clone()).collect();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k.starts_with('s')));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_failed_with_the_key_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let lake_dir = tempfile::tempdir().unwrap();
    lake::write_local(&lake_dir.path().join("good.parquet"), 1, 10).unwrap();
    let node = start(data.path()).await;
    let c = node.client();
    let source = format!("file://{}/", lake_dir.path().display());
    let id = create(&node, "f", &source, 100).await;
    assert_eq!(refresh(&node, "f").await.status, "committed");
    let before = mapping(&node, id).await;

    // An unreadable Parquet file: failed, naming it; the collection is unchanged.
    std::fs::write(
        lake_dir.path().join("bad.parquet"),
        b"this is not parquet at all",
    )
    .unwrap();
    let t = refresh(&node, "f").await;
    assert_eq!(t.status, "failed", "{t:?}");
    assert_eq!(t.failed_key.as_deref(), Some("bad.parquet"));
    assert!(
        t.reason
            .as_deref()
            .unwrap_or("")
            .contains("unreadable Parquet"),
        "{t:?}"
    );
    assert_eq!(mapping(&node, id).await, before);

    // A missing prefix: failed at once (no retry storm), nothing changed.
    let missing = format!("file://{}/nope/", lake_dir.path().display());
    let t = c.alter_external("f", Some(&missing), None).await.unwrap();
    let t = c.wait_external_task(t.task_id, WAIT).await.unwrap();
    assert_eq!(t.status, "failed", "{t:?}");
    assert!(
        t.reason.as_deref().unwrap_or("").contains("missing"),
        "{t:?}"
    );
    assert_eq!(mapping(&node, id).await, before);
    // The slot is free again.
    assert!(c.external_status("f").await.unwrap().active.is_none());

    // Cancel of nothing, refresh of a collection that is not external, bad input.
    assert_eq!(
        c.cancel_external("f").await.unwrap_err().code,
        ErrorCode::FailedPrecondition
    );
    c.create_collection(CreateCollectionRequest {
        name: "plain".into(),
        shard_count: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        c.refresh_external("plain").await.unwrap_err().code,
        ErrorCode::FailedPrecondition
    );
    for (source, spec, what) in [
        ("lake/x", "not json", "not valid JSON"),
        ("lake/x", r#"{"format":"csv"}"#, "unknown"),
        ("../x", r#"{"format":"parquet"}"#, "clean prefix"),
        ("file://rel/x", r#"{"format":"parquet"}"#, "absolute"),
    ] {
        let e = c
            .create_external_collection(
                CreateCollectionRequest {
                    name: "bad".into(),
                    shard_count: 1,
                    ..Default::default()
                },
                source,
                spec,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{what}: {e}");
        assert!(e.message.contains(what), "{what}: {e}");
    }
    assert_eq!(
        c.describe_collection("bad").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_captures_source_spec_and_fragment_mapping_and_survives_gc() {
    use snapvault::snapshots::CreateSnapshotRequest;
    use snapvault_actors::external::restore::{snapshot_external_config, snapshot_fragment_lists};
    use snapvault_actors::snapshot::manifest;
    let data = tempfile::tempdir().unwrap();
    let lake_dir = tempfile::tempdir().unwrap();
    for i in 0..4u64 {
        lake::write_local(&lake_dir.path().join(format!("p{i}.parquet")), i, 10).unwrap();
    }
    let node = start(data.path()).await;
    let c = node.client();
    let source = format!("file://{}/", lake_dir.path().display());
    let id = create(&node, "snap", &source, 10).await;
    assert_eq!(refresh(&node, "snap").await.status, "committed");
    let before = mapping(&node, id).await;
    let snap = c
        .create_snapshot(CreateSnapshotRequest {
            collection: "snap".into(),
            name: "s1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let view = c.describe_snapshot("snap", "s1").await.unwrap();
    assert_eq!(view.format_version, Some(2));
    // Rewrite every fragment, refresh (all segments replaced), GC with no retention.
    for i in 0..4u64 {
        lake::write_local(&lake_dir.path().join(format!("p{i}.parquet")), 100 + i, 20).unwrap();
    }
    let t = refresh(&node, "snap").await;
    assert_eq!(t.counts.unwrap().dropped, 4);
    c.gc_run(snapvault_actors::gc::GcRunOptions {
        dry_run: false,
        dropped_retention_ms: Some(0),
        orphan_window_ms: Some(0),
    })
    .await
    .unwrap();
    let report = c.verify_snapshot("snap", "s1").await.unwrap();
    assert!(report.ok, "{report:?}");
    // What a restore reads: the config and every segment's fragments, as at the snapshot.
    let s = c.find_snapshot("snap", "s1").await.unwrap();
    let bytes = snapvault_actors::snapshot::worker::get_object(&**c.store(), &s.metadata_key)
        .await
        .unwrap();
    let meta = manifest::decode_metadata(&bytes).unwrap();
    let config = snapshot_external_config(&meta).unwrap();
    assert_eq!(config.source, source);
    let mut segments = Vec::new();
    for m in &meta.manifests {
        let key = snapvault_actors::snapshot::worker::relocate(&s.prefix, &m.key).unwrap();
        let data = snapvault_actors::snapshot::worker::get_object(&**c.store(), &key)
            .await
            .unwrap();
        segments.extend(manifest::decode_manifest(&data).unwrap());
    }
    let lists = snapshot_fragment_lists(&**c.store(), &segments)
        .await
        .unwrap();
    let captured: BTreeMap<u64, Vec<(String, u64)>> = lists
        .into_iter()
        .map(|(seg, l)| {
            (
                seg.segment_id,
                l.fragments.into_iter().map(|f| (f.key, f.rows)).collect(),
            )
        })
        .collect();
    assert_eq!(captured, before);
    assert_eq!(snap.totals.segments, 4);
    node.shutdown().await;
}
