//! The `snapvault` command line: clap definitions and dispatch.
//!
//! Every command runs embedded on a data directory (`--data`, the sled log in `DIR/log` and
//! the local object store in `DIR/objects`): it starts a node, does its work through the typed
//! `Client`, and shuts the node down; with `--nats URL` the same commands talk to a snapvault
//! service instead (`backend`, `nats_args`). Arguments are checked *before* the node starts,
//! so bad input never touches the data directory. Each command group lives in its own file; this
//! file only parses and routes.

pub mod backend;
pub mod collection;
pub mod compact;
pub mod demo;
pub mod external;
pub mod files;
pub mod gc;
pub mod host_ops;
pub mod index;
pub mod ingest;
pub mod interrupt;
pub mod log;
pub mod nats_args;
pub mod output;
pub mod restore;
pub mod serve;
pub mod snapshot;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use output::Output;
use snapvault::{Error, ErrorCode, Node};
use snapvault_events::validate::validate_name;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// snapvault: snapshots, restore and garbage collection for databases that keep immutable
/// files in object storage.
#[derive(Debug, Parser)]
#[command(name = "snapvault", version, propagate_version = true)]
pub struct Cli {
    /// Data directory of the embedded node: the event log (DIR/log) and the local object
    /// store (DIR/objects). Created when missing.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "SNAPVAULT_DATA",
        default_value = "./snapvault-data"
    )]
    pub data: PathBuf,

    /// Print results (and errors) as JSON on stdout, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// Log lines on stderr as text (default) or one JSON object per line, for log shippers.
    /// Which lines: `RUST_LOG` (default: errors only; warnings too for `serve`).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "SNAPVAULT_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// NATS: remote mode, `serve` on NATS, the JetStream log, the S3 store.
    #[command(flatten)]
    pub nats: nats_args::NatsArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and drop collections.
    #[command(subcommand)]
    Collection(CollectionCmd),
    /// Create and drop partitions of a collection.
    #[command(subcommand)]
    Partition(PartitionCmd),
    /// Create, drop and build indexes.
    #[command(subcommand)]
    Index(IndexCmd),
    /// Drop segments.
    #[command(subcommand)]
    Segment(SegmentCmd),
    /// Create, list, describe, verify, drop and import snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Act as the host database: write segments of real files and flush them.
    Ingest(IngestArgs),
    /// Act as the host database: merge segments' files and record the compaction.
    Compact(CompactArgs),
    /// Restore a snapshot into a new collection, as a tracked job: start, status, list,
    /// cancel, wait.
    #[command(subcommand)]
    Restore(restore::RestoreCmd),
    /// Garbage collection: reclaim dropped files, dropped snapshots, failed restores, orphans.
    #[command(subcommand)]
    Gc(GcCmd),
    /// Refresh external collections from their sources: refresh, status, cancel.
    #[command(subcommand)]
    External(ExternalCmd),
    /// Run the node in the foreground until SIGTERM or Ctrl-C, taking part in every restore
    /// (and other claimed work) in the log.
    Serve(serve::ServeArgs),
    /// The main job end to end on the data directory: create, ingest, compact, describe.
    Demo,
    /// Check or repair the embedded event log (DIR/log) without starting a node.
    #[command(subcommand)]
    Log(log::LogCmd),
    /// Help topic: the connection flags (NATS, its credentials and TLS, the JetStream log,
    /// the S3 store) that every command accepts. Read it with `snapvault help connection`.
    #[command(hide = true, long_about = CONNECTION_TOPIC, override_usage = CONNECTION_USAGE)]
    Connection,
}

/// The heading of the connection flags (`nats_args`) in `snapvault --help` and in the
/// `help connection` topic.
pub const CONNECTION_HEADING: &str =
    "Connection (NATS, log, store; also accepted after any command)";

/// The last line of every subcommand's help: its connection flags are hidden there.
const CONNECTION_POINTER: &str = "Connection flags (--nats and its credentials and TLS, --prefix, --log, --store, --s3-*, \
     --request-timeout) are accepted here too; see 'snapvault help connection'.";

/// The top-level help's last line.
const TOP_POINTER: &str = "The connection flags are accepted before or after any command; 'snapvault help connection' \
     explains them. Exit codes: 0 ok, 2 a refused request, 1 anything else, 130 Ctrl-C while \
     following a job (--wait, restore wait; the job goes on).";

const CONNECTION_USAGE: &str = "snapvault [CONNECTION FLAGS] <COMMAND> [ARGS] [CONNECTION FLAGS]";

const CONNECTION_TOPIC: &str =
    "The connection flags: which node a command runs, or which service it talks to.

Without --nats, every command starts an embedded node on the data directory (--data): the sled \
log in DIR/log and the object store in DIR/objects, unless --store names another one.

With --nats URL, every command except `serve` and `log` talks to the snapvault service on that \
NATS instead of opening --data: same output, same --json, same error lines and exit codes. \
`serve --nats URL` is such a service; --log and --store choose what its node runs on (--log \
jetstream keeps the event log in the JetStream stream <PREFIX>_LOG, shared by every node on \
that NATS and prefix).

These flags go before or after the command: `snapvault --nats URL snapshot list` and \
`snapvault snapshot list --nats URL` are the same. Each command's own help leaves them out \
and points here.";

#[derive(Debug, Subcommand)]
pub enum GcCmd {
    /// Run one GC cycle now (waits for the ref index to load first).
    Run {
        /// List what would be reclaimed (with keys), delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep files of dropped segments this long (this run only), e.g. 0s, 24h.
        #[arg(long, value_name = "DURATION")]
        dropped_retention: Option<String>,
        /// Delete unknown objects only when older than this (this run only), e.g. 0s, 1h.
        #[arg(long, value_name = "DURATION")]
        orphan_window: Option<String>,
    },
    /// Whether the ref index is loaded, the last cycle, totals, the next run.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum CollectionCmd {
    /// Create a collection (with the `_default` partition and any given with --partition).
    Create(CreateArgs),
    /// List live collections.
    List,
    /// Show a collection: partitions, indexes, segments and their files.
    Describe {
        /// The collection's name.
        name: String,
    },
    /// Drop a collection (its snapshots, when there are any, outlive it).
    Drop {
        /// The collection's name.
        name: String,
    },
    /// Change an external collection's source and/or spec: the running refresh is
    /// superseded (it commits nothing) and a new one starts.
    Alter {
        /// The external collection's name.
        name: String,
        /// The new source: file:///abs/dir/, s3://bucket/prefix/ or a prefix of the store.
        #[arg(long, value_name = "PREFIX")]
        external_source: Option<String>,
        /// A JSON file with the new spec.
        #[arg(long, value_name = "FILE")]
        external_spec: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExternalCmd {
    /// Start a refresh (or show the one running); with --wait, follow it to its end.
    Refresh {
        /// The external collection's name.
        collection: String,
        /// Follow the task to its end (progress on a terminal); exit non-zero unless it
        /// committed. Ctrl-C stops following, not the task (exit 130).
        #[arg(long)]
        wait: bool,
    },
    /// Source, spec, what is mirrored, the running and the last refresh.
    Status {
        /// The external collection's name.
        collection: String,
    },
    /// Cancel the running refresh (it commits nothing).
    Cancel {
        /// The external collection's name.
        collection: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The new collection's name: 1-255 ASCII letters, digits, '_' or '-', starting with an
    /// ASCII letter or '_'.
    pub name: String,
    /// Number of shards (write channels); segments belong to one.
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// An extra partition besides `_default` (repeatable).
    #[arg(long = "partition", value_name = "P")]
    pub partitions: Vec<String>,
    /// A JSON file with the schema; kept verbatim.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// A property `key=value` (repeatable).
    #[arg(long = "property", value_name = "K=V")]
    pub properties: Vec<String>,
    /// Make it external: its segments mirror the Parquet files under this prefix
    /// (file:///abs/dir/, s3://bucket/prefix/, or a prefix of the node's store).
    #[arg(long, value_name = "PREFIX")]
    pub external_source: Option<String>,
    /// A JSON file with the external spec: {"format":"parquet","columns":[...],
    /// "target_rows_per_segment":N} (default: parquet, all columns, 1000000 rows).
    #[arg(long, value_name = "FILE", requires = "external_source")]
    pub external_spec: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PartitionCmd {
    /// Add a partition to a collection.
    Create {
        /// The collection's name.
        collection: String,
        /// The new partition's name.
        name: String,
    },
    /// Drop a partition and every segment in it.
    Drop {
        /// The collection's name.
        collection: String,
        /// The partition's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IndexCmd {
    /// Declare an index on a field.
    Create {
        /// The collection's name.
        collection: String,
        /// The new index's name.
        name: String,
        /// The field (column) the index is on.
        #[arg(long)]
        field: String,
        /// Index parameters as JSON (default `{}`).
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
    },
    /// Drop an index: its built files leave every segment (GC reclaims them unless a
    /// snapshot holds them).
    Drop {
        /// The collection's name.
        collection: String,
        /// The index's name.
        name: String,
    },
    /// Act as the host: write an index's files for a segment and record the build.
    Build {
        /// The collection's name.
        collection: String,
        /// The index's name.
        index: String,
        /// The segment id (see `collection describe`).
        #[arg(long, value_name = "ID")]
        segment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SegmentCmd {
    /// Drop one live segment (GC reclaims its files unless a snapshot holds them).
    Drop {
        /// The collection's name.
        collection: String,
        /// The segment id (see `collection describe`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a collection: pin its live segments, write and verify the manifests, commit.
    /// Returns once the snapshot is committed.
    Create(SnapshotCreateArgs),
    /// Snapshots, newest first (Deleting and Deleted ones only with --state).
    List(SnapshotListArgs),
    /// Everything about one snapshot: state, times, totals, location, partitions, indexes.
    Describe {
        /// The collection the snapshot was taken of.
        collection: String,
        /// The snapshot's name.
        name: String,
    },
    /// Drop a snapshot: its manifests are deleted and its files no longer protected.
    Drop {
        /// The collection the snapshot was taken of.
        collection: String,
        /// The snapshot's name.
        name: String,
    },
    /// Check every object the snapshot references: present, right size and crc32c. Exits 1
    /// when anything is missing or corrupt.
    Verify {
        /// The collection the snapshot was taken of.
        collection: String,
        /// The snapshot's name.
        name: String,
    },
    /// Register a snapshot found under a prefix of the object store (its snapshot.json and
    /// manifests, e.g. copied from another cluster).
    Import {
        /// The object-store prefix holding snapshot.json, e.g. `imports/nightly`.
        #[arg(long, value_name = "PREFIX")]
        from: String,
    },
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// The collection to snapshot.
    pub collection: String,
    /// The snapshot's name, unused among the collection's live snapshots.
    pub name: String,
    /// Free text kept with the snapshot.
    #[arg(long, value_name = "D", default_value = "")]
    pub description: String,
    /// A label `key=value` (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotListArgs {
    /// Only snapshots of this collection.
    #[arg(long, value_name = "C")]
    pub collection: Option<String>,
    /// Only snapshots in this state: pending, committed, failed, deleting or deleted.
    #[arg(long, value_name = "S")]
    pub state: Option<String>,
    /// Only snapshots carrying this label `key=value`.
    #[arg(long, value_name = "K=V")]
    pub label: Option<String>,
    /// Page size.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=snapvault::snapshots::MAX_LIST_PAGE as u64))]
    pub limit: u64,
    /// Continue after this token (printed at the end of the previous page).
    #[arg(long, value_name = "T")]
    pub page_token: Option<u64>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The collection to write into.
    pub collection: String,
    /// How many segments to write.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub segments: u64,
    /// Files per segment.
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    /// Bytes per file.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=ingest::MAX_FILE_BYTES))]
    pub size: u64,
    /// The partition to write into.
    #[arg(long, default_value = snapvault_events::domain::collection::DEFAULT_PARTITION)]
    pub partition: String,
    /// The shard to write into; without it segments go round-robin over all shards.
    #[arg(long)]
    pub shard: Option<u32>,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The collection whose segments to merge.
    pub collection: String,
    /// Comma-separated segment ids to merge into one; default: all live segments of each
    /// (partition, shard) that has more than one.
    #[arg(long, value_name = "ID,...")]
    pub segments: Option<String>,
}

/// What every command gets: the client of the running node and where to print.
pub struct Ctx {
    /// The embedded node's client, or the remote one with `--nats` (see `backend`).
    pub client: backend::Backend,
    pub out: Output,
    pub data: PathBuf,
    /// Set by a command that printed its full result and still fails (`snapshot verify` that
    /// found damage): with `--json` its error then goes to stderr only, so stdout stays the
    /// one JSON document the script reads (the report), not the report plus an error object.
    pub result_printed: AtomicBool,
}

/// The clap command tree of [`Cli`], with the connection flags shown once: under their own
/// heading in the top-level help and in the `help connection` topic. Every subcommand still
/// accepts them (they are global), but in its help they are hidden and a last line points to
/// the topic; the topic in turn hides the other global flags (`--data`, `--json`,
/// `--log-format`), which every command's help shows.
pub fn command() -> clap::Command {
    let top = <Cli as CommandFactory>::command().after_help(TOP_POINTER);
    let is_connection = |a: &clap::Arg| a.get_help_heading() == Some(CONNECTION_HEADING);
    let hidden = |keep: bool| -> Vec<clap::Arg> {
        top.get_arguments()
            .filter(|a| a.is_global_set() && is_connection(a) == keep)
            .map(|a| a.clone().hide(true))
            .collect()
    };
    let (connection, others) = (hidden(true), hidden(false));
    let names: Vec<String> = top
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    names.iter().fold(top, |top, name| {
        top.mut_subcommand(name, |sub| {
            if name == "connection" {
                sub.args(others.iter().cloned())
            } else {
                hide_connection_flags(sub, &connection)
            }
        })
    })
}

/// Give `sub` and every command under it hidden copies of the global connection flags (clap
/// then propagates nothing over them: parsing is unchanged, only the help) and the pointer.
fn hide_connection_flags(sub: clap::Command, connection: &[clap::Arg]) -> clap::Command {
    let sub = sub
        .args(connection.iter().cloned())
        .after_help(CONNECTION_POINTER);
    let names: Vec<String> = sub
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    names.iter().fold(sub, |sub, name| {
        sub.mut_subcommand(name, |s| hide_connection_flags(s, connection))
    })
}

/// Parse the command line. Help and version are printed and end the process here (exit 0);
/// every other parse error becomes one `invalid_argument` line like any other bad input.
pub fn parse() -> Result<Cli, Error> {
    let parsed = command()
        .try_get_matches()
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches));
    match parsed {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => Err(clap_error(&e)),
        },
    }
}

/// The first line of clap's rendering, without its `error: ` prefix: clap names the argument
/// and the problem there; the rest is usage text that would break the one-line contract.
fn clap_error(e: &clap::Error) -> Error {
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    Error::invalid_argument(format!("{first} (see 'snapvault --help')"))
}

/// Whether `--json` is on the command line, known even when parsing fails so that a parse
/// error is reported as JSON too.
pub fn json_requested() -> bool {
    std::env::args_os()
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Libraries whose own lines stay at `warn` unless `RUST_LOG` names them: at `info` or
/// `debug` they would drown snapvault's lines (sled alone writes hundreds per restore).
const QUIET_DEPENDENCIES: &[&str] = &[
    "sled",
    "object_store",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tower",
    "ractor",
];

/// The filter: `RUST_LOG` (or the default), with every dependency it does not name kept at
/// `warn` and async-nats off (the CLI reports NATS trouble as its one error line;
/// `RUST_LOG=async_nats=warn` shows it).
pub fn log_filter(rust_log: Option<&str>, serving: bool) -> String {
    let base = rust_log.map(str::trim).filter(|s| !s.is_empty());
    let mut directives = vec![
        base.unwrap_or(if serving { "warn" } else { "error" })
            .to_string(),
    ];
    let named = |dep: &str| base.is_some_and(|b| b.split(',').any(|d| d.trim().starts_with(dep)));
    for dep in QUIET_DEPENDENCIES {
        if !named(dep) {
            directives.push(format!("{dep}=warn"));
        }
    }
    if !named("async_nats") {
        directives.push("async_nats=off".to_string());
    }
    directives.join(",")
}

/// Tracing to stderr, filtered by `RUST_LOG` ([`log_filter`]), so stdout stays the result.
/// By default a one-shot command logs errors only — its outcome is its one result or error
/// line — and `serve` logs warnings too. Colour only on a terminal, so a log written to a
/// file carries no escape codes; `--log-format json` writes one JSON object per line.
pub fn init_tracing(serving: bool, format: LogFormat) {
    use std::io::IsTerminal;
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(rust_log.as_deref(), serving))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(None, serving)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Run a parsed command to completion.
pub fn run(cli: Cli) -> Result<(), Error> {
    if let Command::Connection = cli.command {
        return print_help_topic("connection");
    }
    check_args(&cli.command)?;
    let serving = matches!(cli.command, Command::Serve(_));
    cli.nats.check(serving)?;
    if let Command::Log(command) = &cli.command {
        if cli.nats.nats.is_some() {
            return Err(Error::invalid_argument(
                "`log verify` and `log repair` work on the embedded log of --data, not over --nats",
            ));
        }
        // A report always reaches stdout before the error a damaged log ends in.
        let (result, printed) = log::run(&Output::new(cli.json), &cli.data, command);
        return finish(result, cli.json, printed);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the async runtime: {e}")))?;
    let json = cli.json;
    let (result, result_printed) = runtime.block_on(async move {
        if cli.nats.nats.is_some() {
            if let Command::Serve(a) = &cli.command {
                let out = Output::new(cli.json);
                return (
                    serve::run_service(out, &cli.data, &cli.nats, a).await,
                    false,
                );
            }
            return remote(cli).await;
        }
        let mut config = match cli.nats.node_config(&cli.data) {
            Ok(c) => c,
            Err(e) => return (Err(e), false),
        };
        if let Command::Serve(a) = &cli.command {
            let shared = serve::jetstream_log(&config);
            match a.work(config.work.clone(), shared) {
                Ok(w) => config.work = w,
                Err(e) => return (Err(e), false),
            }
        }
        let node = match Node::start(config).await {
            Ok(node) => node,
            Err(e) => return (Err(e), false),
        };
        let ctx = Ctx {
            client: backend::Backend::Local(node.client()),
            out: Output::new(cli.json),
            data: cli.data.clone(),
            result_printed: AtomicBool::new(false),
        };
        let result = dispatch(&ctx, cli.command).await;
        // Shut down whatever happened: entities finish what they were doing, the log closes.
        node.shutdown().await;
        (result, ctx.result_printed.load(Ordering::Relaxed))
    });
    drop(runtime);
    finish(result, json, result_printed)
}

/// A help topic run as a command (`snapvault connection`): the same text as `snapvault help
/// TOPIC`. A closed pipe (`| head`) is not an error: the reader has what it wanted.
fn print_help_topic(topic: &str) -> Result<(), Error> {
    if let Err(help) = command().try_get_matches_from(["snapvault", "help", topic]) {
        let _ = help.print();
    }
    Ok(())
}

/// The end of a command: with `--json`, a result document already on stdout (a report
/// that ends in an error) leaves the error one stderr line and the exit code to say.
fn finish(result: Result<(), Error>, json: bool, result_printed: bool) -> Result<(), Error> {
    match result {
        Err(e) if json && result_printed => {
            // The report on stdout is the JSON document; the error is the one stderr line.
            // Same exit codes as `main` (today only a damaged snapshot: `internal`, exit 1).
            output::report_error(&e, false);
            let refused = matches!(
                e.code,
                ErrorCode::InvalidArgument
                    | ErrorCode::NotFound
                    | ErrorCode::AlreadyExists
                    | ErrorCode::FailedPrecondition
            );
            std::process::exit(if refused { 2 } else { 1 })
        }
        result => result,
    }
}

/// A command in remote mode: the same dispatch, against the service on `--nats`.
async fn remote(cli: Cli) -> (Result<(), Error>, bool) {
    let connected = async {
        let options = cli
            .nats
            .options("snapvault-cli")
            .ok_or_else(|| Error::internal("remote mode without --nats"))?;
        let nats = snapvault::nats::connect(&options).await?;
        let mut remote = snapvault::nats::RemoteClient::new(nats, &cli.nats.prefix);
        remote.timeout = cli.nats.request_timeout()?;
        Ok::<_, Error>(remote)
    };
    let remote = match connected.await {
        Ok(r) => r,
        Err(e) => return (Err(e), false),
    };
    let ctx = Ctx {
        client: backend::Backend::Remote(remote.clone()),
        out: Output::new(cli.json),
        data: cli.data.clone(),
        result_printed: AtomicBool::new(false),
    };
    let result = dispatch(&ctx, cli.command).await;
    let _ = remote.nats().flush().await;
    (result, ctx.result_printed.load(Ordering::Relaxed))
}

async fn dispatch(ctx: &Ctx, command: Command) -> Result<(), Error> {
    match command {
        Command::Collection(c) => match c {
            CollectionCmd::Create(args) => collection::create(ctx, args).await,
            CollectionCmd::List => collection::list(ctx).await,
            CollectionCmd::Describe { name } => collection::describe(ctx, &name).await,
            CollectionCmd::Drop { name } => collection::drop(ctx, &name).await,
            CollectionCmd::Alter {
                name,
                external_source,
                external_spec,
            } => {
                external::alter(
                    ctx,
                    &name,
                    external_source.as_deref(),
                    external_spec.as_deref(),
                )
                .await
            }
        },
        Command::External(e) => match e {
            ExternalCmd::Refresh { collection, wait } => {
                external::refresh(ctx, &collection, wait).await
            }
            ExternalCmd::Status { collection } => external::status(ctx, &collection).await,
            ExternalCmd::Cancel { collection } => external::cancel(ctx, &collection).await,
        },
        Command::Partition(p) => index::partition(ctx, p).await,
        Command::Index(i) => index::index(ctx, i).await,
        Command::Segment(s) => index::segment(ctx, s).await,
        Command::Snapshot(s) => snapshot::run(ctx, s).await,
        Command::Restore(r) => restore::run(ctx, r).await,
        Command::Ingest(args) => ingest::run(ctx, args).await,
        Command::Compact(args) => compact::run(ctx, args).await,
        Command::Gc(GcCmd::Run {
            dry_run,
            dropped_retention,
            orphan_window,
        }) => {
            gc::run(
                ctx,
                dry_run,
                dropped_retention.as_deref(),
                orphan_window.as_deref(),
            )
            .await
        }
        Command::Gc(GcCmd::Status) => gc::status(ctx).await,
        Command::Serve(a) => serve::run(ctx, &a).await,
        Command::Demo => demo::run(ctx).await,
        // Handled in `run` before any node starts.
        Command::Log(_) | Command::Connection => Err(Error::internal(
            "log commands and help topics run without a node",
        )),
    }
}

/// Refuse bad names, ids and sizes before the node starts, so bad input writes nothing (not
/// even a fresh data directory). The client checks again; this is the early, cheap copy.
fn check_args(command: &Command) -> Result<(), Error> {
    let collection = |n: &str| validate_name("collection name", n);
    let partition = |n: &str| validate_name("partition name", n);
    let index = |n: &str| validate_name("index name", n);
    match command {
        Command::Collection(c) => match c {
            CollectionCmd::Create(a) => {
                collection(&a.name)?;
                a.partitions.iter().try_for_each(|p| partition(p))?;
                a.properties
                    .iter()
                    .try_for_each(|p| collection::parse_property(p).map(|_| ()))?;
                external::check(a.external_source.as_deref(), a.external_spec.as_deref())
            }
            CollectionCmd::Alter {
                name,
                external_source,
                external_spec,
            } => {
                collection(name)?;
                if external_source.is_none() && external_spec.is_none() {
                    return Err(Error::invalid_argument(
                        "collection alter needs --external-source, --external-spec or both",
                    ));
                }
                external::check(external_source.as_deref(), external_spec.as_deref())
            }
            CollectionCmd::List => Ok(()),
            CollectionCmd::Describe { name } | CollectionCmd::Drop { name } => collection(name),
        },
        Command::Partition(PartitionCmd::Create {
            collection: c,
            name,
        })
        | Command::Partition(PartitionCmd::Drop {
            collection: c,
            name,
        }) => {
            collection(c)?;
            partition(name)
        }
        Command::Index(i) => match i {
            IndexCmd::Create {
                collection: c,
                name,
                field,
                ..
            } => {
                collection(c)?;
                index(name)?;
                validate_name("index field", field)
            }
            IndexCmd::Drop {
                collection: c,
                name,
            } => {
                collection(c)?;
                index(name)
            }
            IndexCmd::Build {
                collection: c,
                index: i,
                segment,
            } => {
                collection(c)?;
                index(i)?;
                parse_segment_id(segment).map(|_| ())
            }
        },
        Command::Segment(SegmentCmd::Drop { collection: c, id }) => {
            collection(c)?;
            parse_segment_id(id).map(|_| ())
        }
        Command::Snapshot(s) => snapshot::check_args(s),
        Command::Restore(r) => restore::check_args(r),
        Command::Ingest(a) => {
            collection(&a.collection)?;
            partition(&a.partition)?;
            ingest::check_files(a.files)
        }
        Command::Compact(a) => {
            collection(&a.collection)?;
            match &a.segments {
                Some(list) => parse_segment_ids(list).map(|_| ()),
                None => Ok(()),
            }
        }
        Command::Gc(GcCmd::Run {
            dropped_retention,
            orphan_window,
            ..
        }) => {
            for d in [dropped_retention, orphan_window].into_iter().flatten() {
                gc::parse_duration_ms(d)?;
            }
            Ok(())
        }
        Command::Gc(GcCmd::Status) => Ok(()),
        Command::External(
            ExternalCmd::Refresh { collection: c, .. }
            | ExternalCmd::Status { collection: c }
            | ExternalCmd::Cancel { collection: c },
        ) => collection(c),
        Command::Serve(a) => a.check(),
        Command::Demo | Command::Log(_) | Command::Connection => Ok(()),
    }
}

/// A segment id as the user typed it: a positive integer.
pub fn parse_segment_id(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    match t.parse::<u64>() {
        Ok(0) => Err(Error::invalid_argument("segment id must not be 0")),
        Ok(id) => Ok(id),
        Err(_) => Err(Error::invalid_argument(format!(
            "segment id '{}' is not a number; segment ids are positive integers (see 'collection describe')",
            t.escape_debug()
        ))),
    }
}

/// A comma-separated list of segment ids (`12,13,14`); empty entries are refused.
pub fn parse_segment_ids(text: &str) -> Result<Vec<u64>, Error> {
    if text.trim().is_empty() {
        return Err(Error::invalid_argument(
            "--segments needs at least one segment id",
        ));
    }
    text.split(',').map(parse_segment_id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
        command().debug_assert();
    }

    /// Every command has a one-line description and every argument (positional or flag) a
    /// help text, all the way down the tree.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let has = |s: Option<&clap::builder::StyledStr>| {
                s.is_some_and(|s| !s.to_string().trim().is_empty())
            };
            if !has(cmd.get_about()) {
                missing.push(format!("`{path}` has no description"));
            }
            for a in cmd.get_arguments() {
                if !has(a.get_help()) {
                    missing.push(format!("`{path}`: argument `{}` has no help", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "snapvault", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
        // The walk saw the whole tree: the help topic and a nested command among it.
        assert!(cmd.find_subcommand("connection").is_some());
        let drop = cmd
            .find_subcommand("partition")
            .and_then(|p| p.find_subcommand("drop"));
        assert!(drop.is_some_and(|d| d.get_arguments().any(|a| a.get_id() == "nats")));
    }

    /// The connection flags are listed in the top-level help and the topic, hidden in every
    /// other command's help (which points to the topic), and still parse after a subcommand.
    #[test]
    fn connection_flags_are_shown_once_and_accepted_everywhere() {
        let mut cmd = command();
        let top = cmd.render_long_help().to_string();
        assert!(
            top.contains(CONNECTION_HEADING) && top.contains("--nats-creds"),
            "{top}"
        );
        let list = cmd
            .find_subcommand_mut("snapshot")
            .and_then(|s| s.find_subcommand_mut("list"))
            .map(|l| l.render_long_help().to_string())
            .unwrap_or_default();
        assert!(list.contains("--collection"), "{list}");
        assert!(
            !list.contains("--nats-creds") && !list.contains("--s3-region"),
            "{list}"
        );
        assert!(
            list.trim_end().ends_with("'snapvault help connection'."),
            "{list}"
        );
        let parsed = command()
            .try_get_matches_from([
                "snapvault",
                "snapshot",
                "list",
                "--nats",
                "nats://h:4222",
                "--store",
                "s3://b",
            ])
            .and_then(|mut m| Cli::from_arg_matches_mut(&mut m));
        let cli = parsed.map_err(|e| e.to_string());
        assert_eq!(
            cli.as_ref()
                .map(|c| (c.nats.nats.clone(), c.nats.store.clone())),
            Ok((Some("nats://h:4222".into()), Some("s3://b".into())))
        );
    }

    #[test]
    fn segment_ids() {
        assert_eq!(parse_segment_ids("1, 2,3").ok(), Some(vec![1, 2, 3]));
        for bad in ["", "1,,2", "abc", "1,x", "0", "-1"] {
            let e = parse_segment_ids(bad).err().map(|e| e.code);
            assert_eq!(e, Some(snapvault::ErrorCode::InvalidArgument), "{bad}");
        }
    }
}

#[cfg(test)]
mod log_filter_tests {
    use super::log_filter;

    #[test]
    fn dependencies_stay_at_warn_unless_named() {
        let f = log_filter(Some("info"), false);
        assert!(f.starts_with("info,"), "{f}");
        assert!(
            f.contains("sled=warn") && f.contains("async_nats=off"),
            "{f}"
        );
        let f = log_filter(Some("info,sled=debug"), false);
        assert!(!f.contains("sled=warn"), "{f}");
        assert_eq!(log_filter(None, true).split(',').next(), Some("warn"));
        assert_eq!(
            log_filter(Some("  "), false).split(',').next(),
            Some("error")
        );
    }
}
