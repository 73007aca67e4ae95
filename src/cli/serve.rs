//! `serve`: hold the node in the foreground until SIGTERM or SIGINT (Ctrl-C), then return so
//! the caller shuts the node down gracefully (entities finish what they were doing) and the
//! process exits 0. While it runs, the node's reconciler takes part in every unit of work in
//! the log (design §10): it claims unclaimed or expired restore jobs and copy tasks — a task
//! of a shard it serves at once, others after the placement delay — and renews what it holds.

use super::Ctx;
use serde::Serialize;
use snapvault::Error;
use snapvault_actors::work::{Scope, WorkConfig};
use std::collections::BTreeSet;

/// How this node takes part in claimed work.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// This node's id in claims and `restore status` (default: HOST-PID).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Shards this node serves first, e.g. `0,2` (default: all). Copy tasks of other shards
    /// are taken only after they waited `--placement-delay`.
    #[arg(long, value_name = "LIST")]
    pub shards: Option<String>,
    /// Upper bound on the bytes this node copies per second, over every job (e.g. 20M).
    #[arg(long, value_name = "RATE")]
    pub max_bytes_per_sec: Option<String>,
    /// Most copy tasks this node runs at once (1..=1024, default 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_tasks: Option<u64>,
    /// How long a claim lives without renewal (e.g. 15s; 1s..=1h). Failover takes about this.
    #[arg(long, value_name = "DURATION")]
    pub claim_ttl: Option<String>,
    /// How often the reconciler looks for work (e.g. 1s; 10ms..=1m).
    #[arg(long, value_name = "DURATION")]
    pub reconcile_interval: Option<String>,
    /// How long a copy task of a shard this node does not serve must wait (e.g. 2s).
    #[arg(long, value_name = "DURATION")]
    pub placement_delay: Option<String>,
    /// Serve Prometheus/OpenMetrics metrics on `http://ADDR/metrics` (e.g. 127.0.0.1:9464;
    /// port 0 picks a free one, shown in the "serving" line).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

/// `, metrics at URL` for the serving line, when there is an endpoint.
fn metrics_suffix(url: &Option<String>) -> String {
    url.as_ref()
        .map(|m| format!(", metrics at {m}"))
        .unwrap_or_default()
}

/// Start the metrics endpoint when `--metrics-addr` asks for one; the bound address.
async fn start_metrics(
    args: &ServeArgs,
    client: &snapvault::Client,
) -> Result<Option<(String, tokio::task::JoinHandle<()>)>, Error> {
    let Some(addr) = &args.metrics_addr else {
        return Ok(None);
    };
    let (bound, task) = snapvault::metrics_http::serve_metrics(addr, client.clone()).await?;
    tracing::info!(%bound, "metrics at http://{bound}/metrics");
    Ok(Some((bound.to_string(), task)))
}

/// Longest claim TTL `serve` accepts.
const MAX_CLAIM_TTL_MS: u64 = 3_600_000;
/// Most shards one `--shards` list names.
const MAX_SHARDS_LISTED: usize = 4096;

impl ServeArgs {
    /// The node's work settings: `Scope::All`, and every flag checked (one clear error).
    /// On a shared log (`shared`) the default node id is `HOST-PID`, unique per process; on a
    /// sled directory (one process at a time) it stays `embedded`, so a restarted node takes
    /// its own unfinished work back at once.
    pub fn work(&self, mut work: WorkConfig, shared: bool) -> Result<WorkConfig, Error> {
        work.scope = Scope::All;
        if let Some(id) = &self.node_id {
            work.node_id = id.clone();
        } else if shared {
            work.node_id = default_node_id();
        }
        snapvault_events::domain::claim::validate_node_id(&work.node_id)?;
        if let Some(list) = &self.shards {
            work.shards = Some(parse_shards(list)?);
        }
        if let Some(rate) = &self.max_bytes_per_sec {
            work.max_bytes_per_sec = Some(super::restore::parse_bandwidth(rate)?);
        }
        if let Some(n) = self.max_tasks {
            work.max_tasks = n as usize;
        }
        let duration = |flag: &str, text: &Option<String>, min: u64, max: u64| {
            let Some(t) = text else {
                return Ok(None);
            };
            let ms = super::gc::parse_duration_ms(t)?;
            if ms < min || ms > max {
                return Err(Error::invalid_argument(format!(
                    "{flag} must be between {min} ms and {max} ms, got '{}'",
                    t.escape_debug()
                )));
            }
            Ok(Some(ms))
        };
        if let Some(ms) = duration("--claim-ttl", &self.claim_ttl, 1_000, MAX_CLAIM_TTL_MS)? {
            work.claim_ttl_ms = ms;
            work.safety_margin_ms = work.safety_margin_ms.min(ms / 3);
        }
        if let Some(ms) = duration("--reconcile-interval", &self.reconcile_interval, 10, 60_000)? {
            work.reconcile_ms = ms;
        }
        if let Some(ms) = duration("--placement-delay", &self.placement_delay, 0, 3_600_000)? {
            work.placement_delay_ms = ms;
        }
        if let Some(addr) = &self.metrics_addr
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Error::invalid_argument(format!(
                "--metrics-addr must be IP:PORT like 127.0.0.1:9464, got '{}'",
                addr.escape_debug()
            )));
        }
        // Renewals happen on reconcile ticks: a claim must outlive several of them.
        if work.reconcile_ms.saturating_mul(3) > work.claim_ttl_ms {
            return Err(Error::invalid_argument(format!(
                "--reconcile-interval ({} ms) must be at most a third of --claim-ttl ({} ms): claims are renewed on reconcile ticks",
                work.reconcile_ms, work.claim_ttl_ms
            )));
        }
        Ok(work)
    }

    /// Check the flags before anything opens (the node id's default is fine).
    pub fn check(&self) -> Result<(), Error> {
        self.work(WorkConfig::default(), false).map(|_| ())
    }
}

/// `0,2,5` → the shard set.
fn parse_shards(list: &str) -> Result<BTreeSet<u32>, Error> {
    let bad = |part: &str| {
        Error::invalid_argument(format!(
            "--shards must be a comma-separated list of shard numbers like 0,2, got '{}'",
            part.escape_debug()
        ))
    };
    let mut out = BTreeSet::new();
    for part in list.split(',') {
        let n: u32 = part.trim().parse().map_err(|_| bad(part))?;
        out.insert(n);
        if out.len() > MAX_SHARDS_LISTED {
            return Err(Error::invalid_argument(format!(
                "--shards names more than {MAX_SHARDS_LISTED} shards"
            )));
        }
    }
    Ok(out)
}

/// `HOST-PID`, from the kernel's host name (ASCII letters, digits, `.`, `-` kept).
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "node".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

#[derive(Serialize)]
struct Status<'a> {
    status: &'static str,
    data: &'a str,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &ServeArgs) -> Result<(), Error> {
    let data = ctx.data.display().to_string();
    // Listen before announcing readiness, so a signal sent right after the announcement is
    // never missed.
    let stop = stop_signal()?;
    let metrics = match &ctx.client {
        super::backend::Backend::Local(client) => start_metrics(args, client).await?,
        super::backend::Backend::Remote(_) => None,
    };
    let serving = Status {
        status: "serving",
        data: &data,
        pid: std::process::id(),
        metrics: metrics.as_ref().map(|(a, _)| format!("http://{a}/metrics")),
    };
    ctx.out.emit(&serving, || {
        let metrics = metrics_suffix(&serving.metrics);
        format!(
            "snapvault serving {data} (pid {}{metrics}); stop with Ctrl-C or SIGTERM",
            std::process::id()
        )
    })?;
    let signal = stop.await;
    if let Some((_, task)) = metrics {
        task.abort();
    }
    tracing::info!(signal, "stopping: shutting the node down");
    Ok(())
}

/// A future that completes with the signal's name on the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl Future<Output = &'static str>, Error> {
    let cannot = |e: std::io::Error| Error::internal(format!("cannot listen for signals: {e}"));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(cannot)?;
        let mut int = signal(SignalKind::interrupt()).map_err(cannot)?;
        Ok(async move {
            tokio::select! {
                biased;
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = cannot;
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

#[derive(Serialize)]
struct ServingNats<'a> {
    status: &'static str,
    nats: &'a str,
    prefix: &'a str,
    api: String,
    events: String,
    log: &'a str,
    store: String,
    ops: Vec<String>,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
}

/// `serve --nats URL`: the node (on `--log` and `--store`) plus the request/reply API as a
/// NATS micro service and the event publisher, until SIGTERM or SIGINT. Then, in this order:
/// the service stops taking requests and answers the ones it took, the publisher publishes
/// what it read and checkpoints, the node finishes what its entities were doing (their
/// appends complete), the connection is flushed; exit 0.
pub async fn run_service(
    out: super::output::Output,
    data: &std::path::Path,
    args: &super::nats_args::NatsArgs,
    serve_args: &ServeArgs,
) -> Result<(), Error> {
    use snapvault::nats::publisher::{EventPublisher, PublisherConfig};
    use snapvault::nats::requests::{RequestMemory, RequestMemoryConfig};
    use snapvault::nats::{OpTable, ServiceConfig, service};
    let stop = stop_signal()?;
    let mut config = args.node_config(data)?;
    config.work = serve_args.work(config.work.clone(), jetstream_log(&config))?;
    let node_id = config.work.node_id.clone();
    let store_text = match &config.store {
        snapvault::StoreConfig::Local { root } => format!("file://{}", root.display()),
        snapvault::StoreConfig::S3(s3) => format!("s3://{}", s3.bucket),
        snapvault::StoreConfig::Memory => "memory".to_string(),
    };
    let jetstream = args.log == super::nats_args::LogKind::Jetstream;
    let options = args
        .options("snapvault-serve")
        .ok_or_else(|| Error::invalid_argument("serve on NATS needs --nats URL"))?;
    let nats = snapvault::nats::connect(&options).await?;
    let node = snapvault::Node::start(config).await?;
    let memory_config = RequestMemoryConfig {
        replicas: args.log_replicas as usize,
        ..Default::default()
    };
    let memory = if jetstream {
        let base = snapvault_events::jetstream::log_stream_name(&args.prefix);
        let bucket = format!("{}_REQUESTS", base.trim_end_matches("_LOG"));
        let js = async_nats::jetstream::new(nats.clone());
        RequestMemory::kv(&js, &bucket, &memory_config).await?
    } else {
        RequestMemory::local(&memory_config)
    };
    let mut ops = OpTable::standard();
    super::host_ops::register(&mut ops);
    let op_names: Vec<String> = ops.names().map(str::to_string).collect();
    let client = node.client();
    let metrics = start_metrics(serve_args, &client).await?;
    let service = service::start(
        nats.clone(),
        client.clone(),
        ops,
        memory,
        ServiceConfig {
            prefix: args.prefix.clone(),
            // In every $SRV reply, so an operator tells the nodes apart.
            metadata: std::collections::BTreeMap::from([("node_id".to_string(), node_id)]),
            ..Default::default()
        },
    )
    .await?;
    let publisher = EventPublisher::start(
        nats.clone(),
        client.log().clone(),
        client.store().clone(),
        PublisherConfig {
            prefix: args.prefix.clone(),
            ..Default::default()
        },
    );
    let url = options.url.clone();
    let serving = ServingNats {
        status: "serving",
        nats: &url,
        prefix: &args.prefix,
        api: format!("{}.api.v1.<op>", args.prefix),
        events: format!("{}.events.v1.<kind>.<id>", args.prefix),
        log: if jetstream { "jetstream" } else { "sled" },
        store: store_text,
        ops: op_names,
        pid: std::process::id(),
        metrics: metrics.as_ref().map(|(a, _)| format!("http://{a}/metrics")),
    };
    out.emit(&serving, || {
        let metrics = metrics_suffix(&serving.metrics);
        format!(
            "snapvault serving {} on {} (log {}, store {}, pid {}{metrics}); stop with Ctrl-C or SIGTERM",
            serving.api, serving.nats, serving.log, serving.store, serving.pid
        )
    })?;
    let signal = stop.await;
    if let Some((_, task)) = metrics {
        task.abort();
    }
    tracing::info!(
        signal,
        "stopping: draining requests, then shutting the node down"
    );
    service.stop().await;
    publisher.stop().await;
    node.shutdown().await;
    let _ = nats.flush().await;
    Ok(())
}

/// Is the node's log shared with other processes (JetStream)?
pub fn jetstream_log(config: &snapvault::NodeConfig) -> bool {
    matches!(config.log, snapvault::LogConfig::JetStream { .. })
}
