//! The metrics endpoint, scraped with a real HTTP client after a restore and a GC cycle: the
//! names, types and values an operator graphs (issue 16).

use snapvault::client::CreateCollectionRequest;
use snapvault::restores::StartRestoreRequest;
use snapvault::snapshots::CreateSnapshotRequest;
use snapvault::{Node, NodeConfig, host};
use snapvault_actors::gc::GcRunOptions;
use snapvault_events::domain::collection::FlushSegment;
use snapvault_events::domain::restore::{RestoreOptions, RestoreStatus};
use std::time::Duration;

const SEGMENTS: usize = 4;
const FILES: usize = 2;
const FILE_BYTES: usize = 1_000;

/// The value of the sample `name` (with its labels, exactly as printed).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_restore_and_a_gc_cycle_shows_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig::embedded(dir.path())).await.unwrap();
    let c = node.client();
    let view = c
        .create_collection(CreateCollectionRequest {
            name: "c1".into(),
            shard_count: 1,
            schema_json: r#"{"fields":[{"name":"v","type":"float_vector"}]}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..SEGMENTS {
        let id = c.allocate_id().await.unwrap();
        let files = host::write_segment_files(&**c.store(), view.id, 1, id, FILES, FILE_BYTES)
            .await
            .unwrap();
        c.flush_segment(
            "c1",
            FlushSegment {
                segment_id: id,
                partition: "_default".into(),
                shard: 0,
                rows: 10 + i as u64,
                files,
            },
        )
        .await
        .unwrap();
    }
    c.create_snapshot(CreateSnapshotRequest {
        collection: "c1".into(),
        name: "s".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let job = c
        .start_restore(StartRestoreRequest {
            snapshot_collection: "c1".into(),
            snapshot: "s".into(),
            target: "r1".into(),
            options: RestoreOptions::default(),
        })
        .await
        .unwrap()
        .job_id;
    let done = c
        .wait_restore(
            job,
            Duration::from_millis(20),
            Some(Duration::from_secs(60)),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(done.status, RestoreStatus::Completed);
    // Something for GC: the source and its snapshot go.
    c.drop_snapshot("c1", "s").await.unwrap();
    c.drop_collection("c1").await.unwrap();
    let report = c
        .gc_run(GcRunOptions {
            dry_run: false,
            dropped_retention_ms: Some(0),
            orphan_window_ms: Some(0),
        })
        .await
        .unwrap();
    let reclaimed = report.total();
    assert!(reclaimed.objects >= (SEGMENTS * FILES) as u64, "{report:?}");

    let (addr, server) = snapvault::metrics_http::serve_metrics("127.0.0.1:0", c.clone())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let response = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        snapvault::metrics_http::CONTENT_TYPE
    );
    let text = response.text().await.unwrap();
    let files = (SEGMENTS * FILES) as f64;
    for (name, want) in [
        ("snapvault_restore_files_total", files),
        ("snapvault_restore_bytes_total", files * FILE_BYTES as f64),
        ("snapvault_restore_jobs_total{outcome=\"completed\"}", 1.0),
        (
            "snapvault_snapshot_operations_total{op=\"create\",outcome=\"committed\"}",
            1.0,
        ),
        (
            "snapvault_snapshot_operations_total{op=\"drop\",outcome=\"deleted\"}",
            1.0,
        ),
        ("snapvault_gc_cycles_total{outcome=\"ok\"}", 1.0),
        ("snapvault_gc_ref_index_loaded", 1.0),
        ("snapvault_restore_jobs_coordinated", 0.0),
    ] {
        assert_eq!(sample(&text, name), Some(want), "{name} in\n{text}");
    }
    let gc_objects: f64 = text
        .lines()
        .filter(|l| l.starts_with("snapvault_gc_reclaimed_objects_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(gc_objects, reclaimed.objects as f64, "{text}");
    let gc_bytes: f64 = text
        .lines()
        .filter(|l| l.starts_with("snapvault_gc_reclaimed_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(gc_bytes, reclaimed.bytes as f64, "{text}");
    assert!(sample(&text, "snapvault_log_appends_total{outcome=\"ok\"}").unwrap_or(0.0) > 10.0);
    assert!(sample(&text, "snapvault_log_head_position").unwrap_or(0.0) > 10.0);
    assert!(sample(&text, "snapvault_log_append_duration_seconds_count").unwrap_or(0.0) > 10.0);
    for (family, kind) in [
        ("snapvault_restore_bytes", "counter"),
        ("snapvault_restore_jobs_coordinated", "gauge"),
        ("snapvault_snapshot_operation_duration_seconds", "histogram"),
        ("snapvault_gc_cycle_duration_seconds", "histogram"),
        ("snapvault_gc_ref_index_lag_events", "gauge"),
        ("snapvault_log_append_duration_seconds", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} in\n{text}"
        );
    }
    // Anything else is refused plainly.
    let missing = http.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let post = http
        .post(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    server.abort();
    node.shutdown().await;
}
