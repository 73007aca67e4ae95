//! Snapshots against real parts: sled on disk, the local filesystem store, restarts.

use snapvault::client::CreateCollectionRequest;
use snapvault::host;
use snapvault::snapshots::{CreateSnapshotRequest, ListSnapshotsRequest};
use snapvault::{ErrorCode, Node, NodeConfig};
use snapvault_events::domain::collection::{CompactSegments, FlushSegment};
use snapvault_events::domain::snapshot::SnapshotStatus;
use std::collections::BTreeSet;
use std::path::Path;

async fn start(dir: &Path) -> Node {
    Node::start(NodeConfig::embedded(dir))
        .await
        .expect("node starts")
}

async fn collection_with_segments(node: &Node, name: &str, segments: usize) -> Vec<u64> {
    let c = node.client();
    let view = c
        .create_collection(CreateCollectionRequest {
            name: name.into(),
            shard_count: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..segments {
        let id = c.allocate_id().await.unwrap();
        let files = host::write_segment_files(&**c.store(), view.id, 1, id, 2, 1024)
            .await
            .unwrap();
        c.flush_segment(
            name,
            FlushSegment {
                segment_id: id,
                partition: "_default".into(),
                shard: (i % 2) as u32,
                rows: 100,
                files,
            },
        )
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

fn req(collection: &str, name: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        collection: collection.into(),
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_exactly_one_wins_and_no_lock_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    collection_with_segments(&node, "c1", 5).await;
    let mut handles = Vec::new();
    for _ in 0..8 {
        let c = node.client();
        handles.push(tokio::spawn(async move {
            c.create_snapshot(req("c1", "s1")).await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(v) => {
                ok += 1;
                assert_eq!(v.status, SnapshotStatus::Committed);
                assert_eq!(v.totals.segments, 5);
                assert_eq!(v.totals.files, 10);
            }
            Err(e) => assert_eq!(e.code, ErrorCode::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one create of a name must win");
    let v = node
        .client()
        .create_snapshot(req("c1", "s2"))
        .await
        .unwrap();
    assert_eq!(v.status, SnapshotStatus::Committed);
    let page = node
        .client()
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap();
    let names: Vec<_> = page.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["s2", "s1"], "newest first");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_racing_a_create_never_changes_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    for round in 0..5 {
        let name = format!("race{round}");
        let ids = collection_with_segments(&node, &name, 6).await;
        let shard0: Vec<u64> = ids.iter().copied().step_by(2).collect();
        let cid = c.collection_id(&name).await.unwrap();
        let into = c.allocate_id().await.unwrap();
        let snap = {
            let c = c.clone();
            let name = name.clone();
            tokio::spawn(async move { c.create_snapshot(req(&name, "s")).await })
        };
        let compaction = {
            let c = c.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let files = host::write_segment_files(&**c.store(), cid, 1, into, 1, 10).await?;
                c.compact(
                    &name,
                    CompactSegments {
                        segment_ids: shard0,
                        into_segment_id: into,
                        rows: 300,
                        files,
                    },
                )
                .await
            })
        };
        let snap = snap.await.unwrap().unwrap();
        compaction.await.unwrap().unwrap();
        // The manifest lists exactly the live segments at the pin: all six, or (if the
        // compaction won the race) the three of shard 1 plus the merged one.
        let at_pin =
            snapvault_actors::snapshot::worker::collection_at(&**c.log(), cid, snap.pinned_version)
                .await
                .unwrap();
        let expected: BTreeSet<u64> = at_pin.segments.keys().copied().collect();
        let listed = manifest_segments(&c, &snap.location, snap.manifests).await;
        assert_eq!(listed, expected);
        assert!(expected.len() == 6 || expected.len() == 4, "{expected:?}");
        let report = c.verify_snapshot(&name, "s").await.unwrap();
        assert!(report.ok, "{report:?}");
    }
    node.shutdown().await;
}

async fn manifest_segments(c: &snapvault::Client, location: &str, manifests: u32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for n in 0..manifests {
        let bytes = host::read_file(&**c.store(), &format!("{location}/manifest-{n}.avro"))
            .await
            .unwrap();
        for seg in snapvault_actors::snapshot::manifest::decode_manifest(&bytes).unwrap() {
            out.insert(seg.segment_id);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_outlive_their_collection_and_drop_removes_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    collection_with_segments(&node, "c1", 3).await;
    let v = c.create_snapshot(req("c1", "keep")).await.unwrap();
    c.drop_collection("c1").await.unwrap();
    let d = c.describe_snapshot("c1", "keep").await.unwrap();
    assert_eq!(d.collection_id, v.collection_id);
    assert_eq!(d.format_version, Some(1));
    assert!(c.verify_snapshot("c1", "keep").await.unwrap().ok);
    let listed = c
        .list_snapshots(ListSnapshotsRequest {
            collection: Some("c1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.snapshots.len(), 1);
    let dropped = c.drop_snapshot("c1", "keep").await.unwrap();
    assert_eq!(dropped.status, SnapshotStatus::Deleted);
    assert!(
        !dir.path()
            .join("objects")
            .join(&v.location)
            .join("snapshot.json")
            .exists()
    );
    let e = c.describe_snapshot("c1", "keep").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let hidden = c
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap();
    assert!(hidden.snapshots.is_empty());
    let deleted = c
        .list_snapshots(ListSnapshotsRequest {
            status: Some(SnapshotStatus::Deleted),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deleted.snapshots.len(), 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_missing_and_corrupt_files_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    collection_with_segments(&node, "c1", 2).await;
    c.create_snapshot(req("c1", "s")).await.unwrap();
    let seg = &c.describe_collection("c1").await.unwrap().segments[0];
    let missing = seg.files[0].key.clone();
    let corrupt = seg.files[1].key.clone();
    std::fs::remove_file(dir.path().join("objects").join(&missing)).unwrap();
    std::fs::write(dir.path().join("objects").join(&corrupt), b"garbage").unwrap();
    let r = c.verify_snapshot("c1", "s").await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.missing, vec![missing]);
    assert_eq!(r.corrupt.len(), 1);
    assert!(r.corrupt[0].starts_with(&corrupt), "{:?}", r.corrupt);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_codes_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    collection_with_segments(&node, "c1", 1).await;
    let head = c.log().head().await.unwrap();
    for bad in ["", "9x", "../x", "a/b", "a b", &"s".repeat(256)] {
        let e = c.create_snapshot(req("c1", bad)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}: {e}");
    }
    let e = c.create_snapshot(req("nope", "s")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = c.create_snapshot(req("../c1", "s")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert_eq!(
        c.describe_snapshot("c1", "nope").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.drop_snapshot("c1", "nope").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.verify_snapshot("c1", "nope").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.log().head().await.unwrap(),
        head,
        "a refused command wrote to the log"
    );
    node.shutdown().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_registers_a_copied_snapshot_and_refuses_damaged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let c = node.client();
    collection_with_segments(&node, "c1", 4).await;
    let v = c.create_snapshot(req("c1", "s")).await.unwrap();
    let objects = dir.path().join("objects");
    let src = objects.join(&v.location);
    copy_dir(&src, &objects.join("imports/good"));
    copy_dir(&src, &objects.join("imports/truncated"));
    copy_dir(&src, &objects.join("imports/future"));
    // A copy of a live snapshot's name is refused while the original lives.
    assert_eq!(
        c.import_snapshot("imports/good").await.unwrap_err().code,
        ErrorCode::AlreadyExists
    );
    // A truncated manifest.
    let m = objects.join("imports/truncated/manifest-0.avro");
    let bytes = std::fs::read(&m).unwrap();
    std::fs::write(&m, &bytes[..bytes.len() / 2]).unwrap();
    let e = c.import_snapshot("imports/truncated").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(e.message.contains("manifest-0.avro"), "{e}");
    // A future format version names both versions.
    let j = objects.join("imports/future/snapshot.json");
    let text = std::fs::read_to_string(&j).unwrap();
    let text = text.replacen("\"format_version\": 1", "\"format_version\": 7", 1);
    std::fs::write(&j, text).unwrap();
    let e = c.import_snapshot("imports/future").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e}");
    assert!(
        e.message.contains('7') && e.message.contains("up to 2"),
        "{e}"
    );
    for bad in ["../x", "/abs", ""] {
        assert_eq!(
            c.import_snapshot(bad).await.unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
    assert_eq!(
        c.import_snapshot("imports/none").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    // A manifest naming a key that climbs out of the store, and a manifest of another
    // snapshot, each with a snapshot.json that matches its size and checksum: both refused.
    {
        use snapvault_actors::snapshot::manifest;
        let good = std::fs::read(objects.join("imports/good/manifest-0.avro")).unwrap();
        let text = std::fs::read_to_string(objects.join("imports/good/snapshot.json")).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        let snapshot_id = meta["snapshot_id"].as_u64().unwrap();
        let segments = manifest::decode_manifest(&good).unwrap();
        let mut climbing = segments.clone();
        climbing[0].files[0].key = "../../../../x".into();
        for (name, bytes) in [
            (
                "climbing",
                manifest::encode_manifest(snapshot_id, 0, &climbing).unwrap(),
            ),
            (
                "foreign",
                manifest::encode_manifest(snapshot_id + 1, 0, &segments).unwrap(),
            ),
        ] {
            let at = objects.join(format!("imports/{name}"));
            copy_dir(&objects.join("imports/good"), &at);
            std::fs::write(at.join("manifest-0.avro"), &bytes).unwrap();
            let mut m = meta.clone();
            m["manifests"][0]["size"] = bytes.len().into();
            m["manifests"][0]["crc32c"] = crc32c::crc32c(&bytes).into();
            std::fs::write(at.join("snapshot.json"), serde_json::to_vec(&m).unwrap()).unwrap();
            let e = c
                .import_snapshot(&format!("imports/{name}"))
                .await
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{name}: {e}");
        }
    }
    // After the original is dropped, the copy imports and verifies.
    c.drop_snapshot("c1", "s").await.unwrap();
    let imported = c.import_snapshot("imports/good").await.unwrap();
    assert_eq!(imported.status, SnapshotStatus::Committed);
    assert!(imported.imported);
    assert_eq!(imported.totals.segments, 4);
    assert!(c.verify_snapshot("c1", "s").await.unwrap().ok);
    // Dropping it deletes what the import registered, and nothing else under the prefix.
    std::fs::write(objects.join("imports/good/notes.txt"), b"mine").unwrap();
    c.drop_snapshot("c1", "s").await.unwrap();
    assert!(!objects.join("imports/good/snapshot.json").exists());
    assert!(!objects.join("imports/good/manifest-0.avro").exists());
    assert!(objects.join("imports/good/notes.txt").exists());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = start(dir.path()).await;
        collection_with_segments(&node, "c1", 3).await;
        node.client().create_snapshot(req("c1", "s")).await.unwrap();
        node.shutdown().await;
    }
    let node = start(dir.path()).await;
    let d = node.client().describe_snapshot("c1", "s").await.unwrap();
    assert_eq!(d.status, SnapshotStatus::Committed);
    assert_eq!(d.totals.segments, 3);
    node.shutdown().await;
}
