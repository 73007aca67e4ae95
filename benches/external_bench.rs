//! External refresh vs a raw listing + footer read of the same files, in the same run.
//!
//! Setup: N real Parquet fragments (written with the `parquet` crate) in a local directory.
//! - **raw**: list the directory through `object_store`'s `LocalFileSystem` and read every
//!   file's footer (one suffix read, decode the metadata, take the row count), 16 at a time;
//! - **refresh**: `external refresh` of an external collection on that directory (sled log,
//!   local store): list, read every footer, bin-pack, write the fragment lists, commit, and
//!   the task's own events; measured from the request to the committed task.
//! - **unchanged**: a second refresh with nothing changed (no footer read) for scale.
//!
//! Target: refresh throughput ≥ 0.7× raw. `SNAPVAULT_BENCH_QUICK=1` shrinks N for a smoke run.

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use snapvault::client::CreateCollectionRequest;
use snapvault::{Node, NodeConfig, lake};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARALLELISM: usize = 16;

async fn raw(dir: &std::path::Path) -> (u64, u64) {
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).expect("fs"));
    let listed: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await.expect("list");
    let rows: Vec<u64> = futures::stream::iter(listed)
        .map(|m| {
            let store = store.clone();
            async move {
                let size = m.size;
                let suffix = size.min(64 * 1024);
                let tail = store
                    .get_range(&m.location, size - suffix..size)
                    .await
                    .expect("read");
                let last8: [u8; 8] = tail[tail.len() - 8..].try_into().expect("8 bytes");
                let len = FooterTail::try_new(&last8)
                    .expect("footer")
                    .metadata_length();
                let start = tail.len() - 8 - len;
                let meta = ParquetMetaDataReader::decode_metadata(&tail[start..tail.len() - 8])
                    .expect("metadata");
                meta.file_metadata().num_rows() as u64
            }
        })
        .buffer_unordered(PARALLELISM)
        .collect()
        .await;
    (rows.len() as u64, rows.iter().sum())
}

fn main() {
    let quick = std::env::var_os("SNAPVAULT_BENCH_QUICK").is_some();
    let n: u64 = if quick { 500 } else { 10_000 };
    let rows_per_file = 100;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    for i in 0..n {
        let sub = lake_dir.path().join(format!("p{:02}", i % 50));
        lake::write_local(&sub.join(format!("part-{i:06}.parquet")), i, rows_per_file)
            .expect("write fragment");
    }
    rt.block_on(async {
        // Warm the page cache and the code paths once.
        raw(lake_dir.path()).await;
        let runs = 3;
        let mut raw_best = Duration::MAX;
        for _ in 0..runs {
            let t = Instant::now();
            let (files, rows) = raw(lake_dir.path()).await;
            raw_best = raw_best.min(t.elapsed());
            assert_eq!((files, rows), (n, n * rows_per_file));
        }
        let node = Node::start(NodeConfig::embedded(data.path()))
            .await
            .expect("node");
        let c = node.client();
        let source = format!("file://{}/", lake_dir.path().display());
        let mut refresh_best = Duration::MAX;
        let mut unchanged = Duration::MAX;
        for run in 0..runs {
            let name = format!("bench{run}");
            c.create_external_collection(
                CreateCollectionRequest {
                    name: name.clone(),
                    shard_count: 2,
                    ..Default::default()
                },
                &source,
                r#"{"format":"parquet","target_rows_per_segment":100000}"#,
            )
            .await
            .expect("create");
            let t = Instant::now();
            let task = c.refresh_external(&name).await.expect("refresh");
            let done = c
                .wait_external_task(task.task_id, Duration::from_secs(3600))
                .await
                .expect("wait");
            refresh_best = refresh_best.min(t.elapsed());
            let counts = done.counts.expect("committed");
            assert_eq!((counts.fragments, counts.rows), (n, n * rows_per_file));
            let t = Instant::now();
            let task = c.refresh_external(&name).await.expect("refresh");
            let again = c
                .wait_external_task(task.task_id, Duration::from_secs(3600))
                .await
                .expect("wait");
            unchanged = unchanged.min(t.elapsed());
            assert_eq!(again.counts.expect("committed").added, 0);
        }
        node.shutdown().await;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!("external refresh, {n} fragments of {rows_per_file} rows (best of {runs})");
        println!(
            "{:<44} {:>10} {:>14} {:>8}",
            "case", "time", "fragments/s", "ratio"
        );
        println!(
            "{:<44} {:>10.1?} {:>14.0} {:>8}",
            "raw listing + footer read (16 at a time)",
            raw_best,
            rate(raw_best),
            "1.00"
        );
        println!(
            "{:<44} {:>10.1?} {:>14.0} {:>8.2}",
            "external refresh (footers read, commit)",
            refresh_best,
            rate(refresh_best),
            raw_best.as_secs_f64() / refresh_best.as_secs_f64()
        );
        println!(
            "{:<44} {:>10.1?} {:>14.0} {:>8.2}",
            "refresh, nothing changed (no footer read)",
            unchanged,
            rate(unchanged),
            raw_best.as_secs_f64() / unchanged.as_secs_f64()
        );
        println!("target: refresh ratio >= 0.70");
    });
}
