//! The node's metrics: one Prometheus/OpenMetrics registry per node (each `Registry` of
//! entities owns one), so several nodes in one process — tests, the simulator, a host running
//! two — never mix their figures. `serve --metrics-addr` exposes it over HTTP
//! (`src/metrics_http.rs`); a host embedding a `Node` calls [`Metrics::encode`] and serves
//! the text itself.
//!
//! Every figure is this node's own: what it copied, reclaimed, appended, answered. Summed
//! over the nodes of a cluster they give the cluster's totals (no double counting: a unit of
//! work is counted by the node that did it). Names start with `snapvault_` and carry their
//! unit (`_bytes`, `_seconds`, `_events`); counters end in `_total`.

use async_trait::async_trait;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use snapvault_events::{
    Appended, Envelope, EventLog, ExpectedVersion, LogError, NewEvent, Subscription,
};
use std::sync::Arc;
use std::time::Duration;

/// One label set: `(name, value)` pairs, in the order they print.
pub type Labels = Vec<(String, String)>;

/// Latency buckets from 1 ms to ~33 s (doubling).
#[derive(Clone, Copy)]
pub struct SecondsBuckets;

impl MetricConstructor<Histogram> for SecondsBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 16))
    }
}

pub struct Metrics {
    registry: Registry,
    // Restore (this node's copy tasks and the jobs it coordinates).
    pub restore_bytes: Counter,
    pub restore_files: Counter,
    pub restore_files_skipped: Counter,
    pub restore_copy_retries: Counter,
    pub restore_task_retries: Counter,
    pub restore_jobs_coordinated: Gauge,
    pub restore_tasks_running: Gauge,
    /// Jobs this node ended, by `outcome` (completed, failed, cancelled).
    pub restore_jobs: Family<Labels, Counter>,
    // Snapshots.
    /// Creates and drops this node finished, by `op` (create, drop) and `outcome`.
    pub snapshot_ops: Family<Labels, Counter>,
    pub snapshot_op_seconds: Family<Labels, Histogram, SecondsBuckets>,
    // GC.
    /// Objects and bytes reclaimed, by `category`.
    pub gc_reclaimed_objects: Family<Labels, Counter>,
    pub gc_reclaimed_bytes: Family<Labels, Counter>,
    /// Cycles this node ran, by `outcome` (ok, failed).
    pub gc_cycles: Family<Labels, Counter>,
    pub gc_cycle_seconds: Histogram,
    pub gc_ref_index_lag_events: Gauge,
    pub gc_ref_index_loaded: Gauge,
    // The event log, as this node sees it.
    pub log_append_seconds: Histogram,
    /// Appends by `outcome` (ok, conflict, error).
    pub log_appends: Family<Labels, Counter>,
    pub log_head_position: Gauge,
    // The NATS service.
    /// Requests answered, by `op` and `code` (`ok` or the error's stable code).
    pub nats_requests: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One label.
pub fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            restore_bytes: Counter::default(),
            restore_files: Counter::default(),
            restore_files_skipped: Counter::default(),
            restore_copy_retries: Counter::default(),
            restore_task_retries: Counter::default(),
            restore_jobs_coordinated: Gauge::default(),
            restore_tasks_running: Gauge::default(),
            restore_jobs: Family::default(),
            snapshot_ops: Family::default(),
            snapshot_op_seconds: Family::new_with_constructor(SecondsBuckets),
            gc_reclaimed_objects: Family::default(),
            gc_reclaimed_bytes: Family::default(),
            gc_cycles: Family::default(),
            gc_cycle_seconds: SecondsBuckets.new_metric(),
            gc_ref_index_lag_events: Gauge::default(),
            gc_ref_index_loaded: Gauge::default(),
            log_append_seconds: SecondsBuckets.new_metric(),
            log_appends: Family::default(),
            log_head_position: Gauge::default(),
            nats_requests: Family::default(),
        };
        // Metrics are cheap handles (Arc inside): the registry keeps clones for encoding.
        m.registry.register(
            "snapvault_restore_bytes",
            "Bytes this node copied for restores",
            m.restore_bytes.clone(),
        );
        m.registry.register(
            "snapvault_restore_files",
            "Files this node copied for restores",
            m.restore_files.clone(),
        );
        m.registry.register(
            "snapvault_restore_files_skipped",
            "Files a resumed copy task found already copied and did not copy again",
            m.restore_files_skipped.clone(),
        );
        m.registry.register(
            "snapvault_restore_copy_retries",
            "File copies retried after a transient error",
            m.restore_copy_retries.clone(),
        );
        m.registry.register(
            "snapvault_restore_task_retries",
            "Copy tasks released to run again after a transient failure",
            m.restore_task_retries.clone(),
        );
        m.registry.register(
            "snapvault_restore_jobs_coordinated",
            "Restore jobs this node coordinates now",
            m.restore_jobs_coordinated.clone(),
        );
        m.registry.register(
            "snapvault_restore_tasks_running",
            "Copy tasks this node runs now",
            m.restore_tasks_running.clone(),
        );
        m.registry.register(
            "snapvault_restore_jobs",
            "Restore jobs this node ended, by outcome",
            m.restore_jobs.clone(),
        );
        m.registry.register(
            "snapvault_snapshot_operations",
            "Snapshot creates and drops this node finished, by op and outcome",
            m.snapshot_ops.clone(),
        );
        m.registry.register(
            "snapvault_snapshot_operation_duration_seconds",
            "Time from the start of a snapshot create or drop on this node to its end, by op",
            m.snapshot_op_seconds.clone(),
        );
        m.registry.register(
            "snapvault_gc_reclaimed_objects",
            "Objects GC deleted on this node, by category",
            m.gc_reclaimed_objects.clone(),
        );
        m.registry.register(
            "snapvault_gc_reclaimed_bytes",
            "Bytes GC deleted on this node, by category",
            m.gc_reclaimed_bytes.clone(),
        );
        m.registry.register(
            "snapvault_gc_cycles",
            "GC cycles this node ran, by outcome",
            m.gc_cycles.clone(),
        );
        m.registry.register(
            "snapvault_gc_cycle_duration_seconds",
            "Duration of GC cycles this node ran",
            m.gc_cycle_seconds.clone(),
        );
        m.registry.register(
            "snapvault_gc_ref_index_lag_events",
            "Events between the log's head and what GC's reference index has read",
            m.gc_ref_index_lag_events.clone(),
        );
        m.registry.register(
            "snapvault_gc_ref_index_loaded",
            "1 once GC's reference index caught up with the log (GC reclaims nothing before)",
            m.gc_ref_index_loaded.clone(),
        );
        m.registry.register(
            "snapvault_log_append_duration_seconds",
            "Latency of this node's appends to the event log (durable when they return)",
            m.log_append_seconds.clone(),
        );
        m.registry.register(
            "snapvault_log_appends",
            "This node's appends to the event log, by outcome",
            m.log_appends.clone(),
        );
        m.registry.register(
            "snapvault_log_head_position",
            "The event log's head position as this node last saw it",
            m.log_head_position.clone(),
        );
        m.registry.register(
            "snapvault_nats_requests",
            "NATS API requests this node answered, by op and code",
            m.nats_requests.clone(),
        );
        m
    }

    /// The OpenMetrics text exposition of every metric (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Count a snapshot create or drop that ended after `took`.
    pub fn snapshot_op(&self, op: &str, outcome: &str, took: Duration) {
        self.snapshot_ops
            .get_or_create(&vec![
                ("op".to_string(), op.to_string()),
                ("outcome".to_string(), outcome.to_string()),
            ])
            .inc();
        self.snapshot_op_seconds
            .get_or_create(&label("op", op))
            .observe(took.as_secs_f64());
    }

    /// Count a NATS request answered with `code` (`ok` for a success).
    pub fn nats_request(&self, op: &str, code: &str) {
        self.nats_requests
            .get_or_create(&vec![
                ("op".to_string(), op.to_string()),
                ("code".to_string(), code.to_string()),
            ])
            .inc();
    }
}

/// The node's event log with every append timed and counted, and the head it last saw
/// recorded. Reads pass straight through.
pub struct MeteredLog {
    inner: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
}

impl MeteredLog {
    pub fn new(inner: Arc<dyn EventLog>, metrics: Arc<Metrics>) -> MeteredLog {
        MeteredLog { inner, metrics }
    }
}

#[async_trait]
impl EventLog for MeteredLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, LogError> {
        let started = tokio::time::Instant::now();
        let r = self.inner.append(stream, expected, events).await;
        let outcome = match &r {
            Ok(a) => {
                self.metrics
                    .log_append_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .log_head_position
                    .set(i64::try_from(a.last_position).unwrap_or(i64::MAX));
                "ok"
            }
            Err(LogError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        self.metrics
            .log_appends
            .get_or_create(&label("outcome", outcome))
            .inc();
        r
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
        self.inner.read_all(from_position, max_count).await
    }

    async fn head(&self) -> Result<u64, LogError> {
        let head = self.inner.head().await?;
        self.metrics
            .log_head_position
            .set(i64::try_from(head).unwrap_or(i64::MAX));
        Ok(head)
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }

    fn subscribe(self: Arc<Self>, from_position: u64) -> Subscription {
        self.inner.clone().subscribe(from_position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_units_and_counters_end_in_total() {
        let m = Metrics::new();
        m.restore_bytes.inc_by(42);
        m.snapshot_op("create", "ok", Duration::from_millis(3));
        m.gc_reclaimed_bytes
            .get_or_create(&label("category", "dropped_segment"))
            .inc_by(7);
        let text = m.encode();
        assert!(
            text.contains("# TYPE snapvault_restore_bytes counter"),
            "{text}"
        );
        assert!(text.contains("snapvault_restore_bytes_total 42"), "{text}");
        assert!(
            text.contains("snapvault_snapshot_operations_total{op=\"create\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("snapvault_gc_reclaimed_bytes_total{category=\"dropped_segment\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE snapvault_snapshot_operation_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
