//! `serve`: hold the node in the foreground until SIGTERM or SIGINT (Ctrl-C), then return so
//! the caller shuts the node down gracefully (entities finish what they were doing) and the
//! process exits 0. Work that outlives one command (restores, refreshes: later issues) is
//! resumed by the node while this runs.

use super::Ctx;
use serde::Serialize;
use snapvault::Error;

#[derive(Serialize)]
struct Status<'a> {
    status: &'static str,
    data: &'a str,
    pid: u32,
}

pub async fn run(ctx: &Ctx) -> Result<(), Error> {
    let data = ctx.data.display().to_string();
    // Listen before announcing readiness, so a signal sent right after the announcement is
    // never missed.
    let stop = stop_signal()?;
    let serving = Status {
        status: "serving",
        data: &data,
        pid: std::process::id(),
    };
    ctx.out.emit(&serving, || {
        format!(
            "snapvault serving {data} (pid {}); stop with Ctrl-C or SIGTERM",
            std::process::id()
        )
    })?;
    let signal = stop.await;
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
) -> Result<(), Error> {
    use snapvault::nats::publisher::{EventPublisher, PublisherConfig};
    use snapvault::nats::requests::{RequestMemory, RequestMemoryConfig};
    use snapvault::nats::{OpTable, ServiceConfig, service};
    let stop = stop_signal()?;
    let config = args.node_config(data)?;
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
    let service = service::start(
        nats.clone(),
        client.clone(),
        ops,
        memory,
        ServiceConfig {
            prefix: args.prefix.clone(),
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
    };
    out.emit(&serving, || {
        format!(
            "snapvault serving {} on {} (log {}, store {}, pid {}); stop with Ctrl-C or SIGTERM",
            serving.api, serving.nats, serving.log, serving.store, serving.pid
        )
    })?;
    let signal = stop.await;
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
