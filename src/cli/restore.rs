//! `restore start | status | list | cancel | wait`.
//!
//! Each command is one call of the client's restore API (`src/restores.rs`); this file checks
//! arguments, prints, and draws progress. A restore outlives the command that starts it: the
//! job runs while a process holds the node, and any later `snapvault` invocation (or
//! `serve`) resumes it. `start --wait`, `cancel --wait` and `wait` hold the node until the job
//! ends, with a progress bar on a terminal (after a line naming the job) and nothing
//! otherwise. Ctrl-C stops following, never the job: the command prints how to follow it
//! again and how to stop it, and exits 130 (`super::interrupt`).
//!
//! Exit codes of the waiting forms: 0 when the job completed (or, for `cancel --wait`, was
//! cancelled); a failed job prints its state, then `error[internal]: restore job N failed: …`
//! and exits 1 (the request was fine; the data or the store was not); a job cancelled while
//! `wait` watched it ends with `error[failed_precondition]` and exit 2.

use super::Ctx;
use super::interrupt::Interrupt;
use super::output::{Table, bytes, utc};
use clap::{Args, Subcommand};
use snapvault::Error;
use snapvault::restores::{RestorePage, RestoreView, StartRestoreRequest};
use snapvault_events::domain::restore::{MAX_PARALLELISM, RestoreOptions, RestoreStatus};
use snapvault_events::validate::validate_name;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Every state a job can be in, as `--state` spells them.
const STATES: [RestoreStatus; 7] = [
    RestoreStatus::Pending,
    RestoreStatus::Running,
    RestoreStatus::Committing,
    RestoreStatus::Completed,
    RestoreStatus::RollingBack,
    RestoreStatus::Failed,
    RestoreStatus::Cancelled,
];

#[derive(Debug, Subcommand)]
pub enum RestoreCmd {
    /// Restore a snapshot into a new collection. Prints the job id at once; the copy runs
    /// in the background (while this or a later process holds the node) unless --wait.
    Start(StartArgs),
    /// A job's state and progress: files and bytes, percent, rate, ETA, per-task states.
    Status {
        /// The job id (printed by `restore start`; see `restore list`).
        job: String,
    },
    /// Jobs, newest first.
    List(ListArgs),
    /// Cancel a pending or running job: everything it copied is deleted and its target
    /// collection dropped.
    Cancel {
        /// The job id (see `restore list`).
        job: String,
        /// Wait until the rollback is done. Ctrl-C stops following, not the rollback
        /// (exit 130).
        #[arg(long)]
        wait: bool,
    },
    /// Wait until a job ends, showing its progress (Ctrl-C stops waiting, not the job).
    Wait {
        /// The job id (see `restore list`).
        job: String,
        /// Give up waiting after this long (the job goes on), e.g. 30s, 10m.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The collection the snapshot was taken of (it may have been dropped since).
    pub snapshot_collection: String,
    /// The snapshot's name.
    pub snapshot: String,
    /// Name of the new collection.
    pub target: String,
    /// Restore only this partition (repeatable); default: all of the snapshot's.
    #[arg(long = "partition", value_name = "P")]
    pub partitions: Vec<String>,
    /// Copy tasks (and file copies) in flight at once, 1..=256.
    #[arg(long, value_name = "N", default_value = "4")]
    pub parallelism: String,
    /// Upper bound on the bytes copied per second, e.g. 50M, 1G, 1048576.
    #[arg(long, value_name = "B")]
    pub max_bytes_per_sec: Option<String>,
    /// Skip the crc32c check of each source file (copies server-side where the store can;
    /// sizes are still checked).
    #[arg(long)]
    pub no_verify: bool,
    /// Wait until the restore ends, showing its progress; exit non-zero unless it completed.
    /// Ctrl-C stops following, not the job (exit 130).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state: pending, running, committing, completed, rolling_back,
    /// failed or cancelled.
    #[arg(long, value_name = "S")]
    pub state: Option<String>,
    /// Page size.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=snapvault::restores::MAX_RESTORE_PAGE as u64))]
    pub limit: u64,
    /// Continue after this token (printed at the end of the previous page).
    #[arg(long, value_name = "T")]
    pub page_token: Option<u64>,
}

/// A job id as the user typed it: a positive integer.
pub fn parse_job_id(text: &str) -> Result<u64, Error> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(Error::invalid_argument("job id must not be 0")),
        Ok(id) => Ok(id),
        Err(_) => Err(Error::invalid_argument(format!(
            "job id '{}' is not a number; job ids are positive integers (see 'restore list')",
            text.escape_debug()
        ))),
    }
}

/// `--parallelism`: 1..=256.
pub fn parse_parallelism(text: &str) -> Result<u32, Error> {
    match text.trim().parse::<u64>() {
        Ok(n) if (1..=u64::from(MAX_PARALLELISM)).contains(&n) => Ok(n as u32),
        _ => Err(Error::invalid_argument(format!(
            "parallelism must be a whole number 1..={MAX_PARALLELISM}, got '{}'",
            text.escape_debug()
        ))),
    }
}

/// `--max-bytes-per-sec`: a positive number of bytes, optionally with K, M, G or T (powers of
/// 1024, an optional trailing `B` or `iB`).
pub fn parse_bandwidth(text: &str) -> Result<u64, Error> {
    let bad = || {
        Error::invalid_argument(format!(
            "the bandwidth limit must be a positive number of bytes per second like 1048576, 50M or 1G, got '{}'",
            text.escape_debug()
        ))
    };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let value = n
        .checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(bad)?;
    if value == 0 {
        return Err(bad());
    }
    Ok(value)
}

fn parse_state(text: &str) -> Result<RestoreStatus, Error> {
    RestoreStatus::parse(text).ok_or_else(|| {
        let valid: Vec<&str> = STATES.iter().map(|s| s.as_str()).collect();
        Error::invalid_argument(format!(
            "unknown restore state '{}'; valid states: {}",
            text.escape_debug(),
            valid.join(", ")
        ))
    })
}

/// Refuse bad names, ids and numbers before the node starts.
pub fn check_args(cmd: &RestoreCmd) -> Result<(), Error> {
    match cmd {
        RestoreCmd::Start(a) => {
            options(a)?;
            Ok(())
        }
        RestoreCmd::Status { job } | RestoreCmd::Cancel { job, .. } => {
            parse_job_id(job).map(|_| ())
        }
        RestoreCmd::Wait { job, timeout } => {
            parse_job_id(job)?;
            if let Some(t) = timeout {
                super::gc::parse_duration_ms(t)?;
            }
            Ok(())
        }
        RestoreCmd::List(a) => a.state.as_deref().map(parse_state).transpose().map(|_| ()),
    }
}

fn options(a: &StartArgs) -> Result<StartRestoreRequest, Error> {
    validate_name("collection name", &a.snapshot_collection)?;
    validate_name("snapshot name", &a.snapshot)?;
    validate_name("target collection name", &a.target)?;
    for p in &a.partitions {
        validate_name("partition name", p)?;
    }
    Ok(StartRestoreRequest {
        snapshot_collection: a.snapshot_collection.clone(),
        snapshot: a.snapshot.clone(),
        target: a.target.clone(),
        options: RestoreOptions {
            partitions: a.partitions.clone(),
            parallelism: parse_parallelism(&a.parallelism)?,
            max_bytes_per_sec: a
                .max_bytes_per_sec
                .as_deref()
                .map(parse_bandwidth)
                .transpose()?,
            verify_checksums: !a.no_verify,
        },
    })
}

pub async fn run(ctx: &Ctx, cmd: RestoreCmd) -> Result<(), Error> {
    match cmd {
        RestoreCmd::Start(args) => {
            let req = options(&args)?;
            // Listen before the job exists: a Ctrl-C from here on stops following, not the job.
            let interrupt = args.wait.then(Interrupt::listen).transpose()?;
            let view = ctx.client.start_restore(req).await?;
            if let Some(interrupt) = interrupt {
                announce(&format!(
                    "restore job {} started; following it (Ctrl-C stops following, not the job)",
                    view.job_id
                ));
                return wait(ctx, view.job_id, None, false, interrupt).await;
            }
            let runs = match ctx.client {
                super::backend::Backend::Local(_) => {
                    "on this data directory it copies while that or 'snapvault serve' runs"
                }
                super::backend::Backend::Remote(_) => "it runs in the service",
            };
            ctx.out.emit(&view, || {
                format!(
                    "restore job {} started: snapshot '{}' of collection '{}' into '{}'\n\
                     follow it with 'snapvault restore wait {}' ({runs})",
                    view.job_id, view.snapshot, view.snapshot_collection, view.target, view.job_id
                )
            })
        }
        RestoreCmd::Status { job } => {
            let view = ctx.client.restore_status(parse_job_id(&job)?).await?;
            ctx.out.emit(&view, || render_view(&view))
        }
        RestoreCmd::List(args) => {
            let page = ctx
                .client
                .list_restores(
                    args.state.as_deref().map(parse_state).transpose()?,
                    Some(args.limit as usize),
                    args.page_token,
                )
                .await?;
            ctx.out.emit(&page, || render_list(&page))
        }
        RestoreCmd::Cancel { job, wait: w } => {
            let job = parse_job_id(&job)?;
            let interrupt = w.then(Interrupt::listen).transpose()?;
            let view = ctx.client.cancel_restore(job).await?;
            if let Some(interrupt) = interrupt {
                announce(&format!(
                    "restore job {job} is {}; following its rollback (Ctrl-C stops following, not the rollback)",
                    view.status.as_str()
                ));
                return wait(ctx, job, None, true, interrupt).await;
            }
            ctx.out.emit(&view, || {
                format!(
                    "restore job {job} is {}: what it copied is being deleted and its target dropped",
                    view.status.as_str()
                )
            })
        }
        RestoreCmd::Wait { job, timeout } => {
            let timeout = timeout
                .as_deref()
                .map(super::gc::parse_duration_ms)
                .transpose()?
                .map(Duration::from_millis);
            let job = parse_job_id(&job)?;
            let interrupt = Interrupt::listen()?;
            announce(&format!(
                "following restore job {job} (Ctrl-C stops following, not the job)"
            ));
            wait(ctx, job, timeout, false, interrupt).await
        }
    }
}

/// A line for a person at a terminal before the progress bar (so the job id is on screen
/// while it copies); nothing when stderr is a script's pipe or a log file.
fn announce(line: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{line}");
    }
}

/// Hold the node until the job ends; progress on stderr; the final state on stdout. Ctrl-C
/// ends only the following ([`stopped_following`]).
async fn wait(
    ctx: &Ctx,
    job: u64,
    timeout: Option<Duration>,
    cancelling: bool,
    interrupt: Interrupt,
) -> Result<(), Error> {
    let mut bar = Bar::new();
    let mut last: Option<RestoreView> = None;
    let followed = interrupt
        .follow(
            ctx.client
                .wait_restore(job, Duration::from_millis(200), timeout, |v| {
                    bar.draw(v);
                    last = Some(v.clone());
                }),
        )
        .await;
    bar.finish();
    let Some(view) = followed else {
        return stopped_following(ctx, job, cancelling, last.as_ref());
    };
    let view = view?;
    ctx.out.emit(&view, || render_view(&view))?;
    match view.status {
        RestoreStatus::Completed => Ok(()),
        RestoreStatus::Cancelled if cancelling => Ok(()),
        RestoreStatus::Cancelled => {
            ctx.result_printed.store(true, Ordering::Relaxed);
            Err(Error::failed_precondition(format!(
                "restore job {job} was cancelled; nothing of it is left"
            )))
        }
        _ => {
            ctx.result_printed.store(true, Ordering::Relaxed);
            Err(Error::internal(format!(
                "restore job {job} failed and was rolled back: {}",
                view.failure.unwrap_or_default()
            )))
        }
    }
}

/// After Ctrl-C: how to follow the job again and how to stop it (stderr), and with `--json`
/// the job as last seen (stdout). The job goes on; the process exits 130.
fn stopped_following(
    ctx: &Ctx,
    job: u64,
    cancelling: bool,
    last: Option<&RestoreView>,
) -> Result<(), Error> {
    let (what, state, again) = if cancelling {
        (
            format!("the rollback of restore job {job}"),
            "the rollback goes on",
            format!("snapvault restore cancel {job} --wait"),
        )
    } else {
        (
            format!("restore job {job}"),
            "the job was not cancelled: it goes on",
            format!("snapvault restore wait {job}"),
        )
    };
    // A one-shot process drives only the jobs it started or waits for (README, "Restore
    // jobs"); this one is about to exit.
    let place = match ctx.client {
        super::backend::Backend::Local(_) => {
            format!("while '{again}' or 'snapvault serve' runs on this data directory")
        }
        super::backend::Backend::Remote(_) => "in the service".to_string(),
    };
    eprintln!("stopped following {what} (Ctrl-C); {state} {place}");
    eprintln!("  follow it again: {again}");
    if cancelling {
        eprintln!("  see it:          snapvault restore status {job}");
    } else {
        eprintln!("  stop it:         snapvault restore cancel {job}");
    }
    match last {
        Some(view) if ctx.out.is_json() => ctx.out.emit(view, String::new),
        _ => Ok(()),
    }
}

/// Progress: a redrawn bar on a terminal, nothing otherwise.
struct Bar {
    terminal: bool,
    drew: bool,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            terminal: std::io::stderr().is_terminal(),
            drew: false,
        }
    }

    fn draw(&mut self, v: &RestoreView) {
        let line = progress_line(v);
        if self.terminal {
            const WIDTH: usize = 30;
            let filled = ((v.percent / 100.0) * WIDTH as f64).round() as usize;
            let bar = format!(
                "{}{}",
                "#".repeat(filled.min(WIDTH)),
                ".".repeat(WIDTH - filled.min(WIDTH))
            );
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r[{bar}] {line}   ");
            let _ = err.flush();
            self.drew = true;
        }
        // Not a terminal (a script, a log file): no progress at all; the outcome is the one
        // result or error line (`restore status JOB` shows progress on demand).
    }

    fn finish(&self) {
        if self.drew {
            eprintln!();
        }
    }
}

fn eta(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

/// `running 45.2% 900/2000 files 1.2 GiB/2.0 GiB 35.1 MiB/s ETA 12s`.
pub fn progress_line(v: &RestoreView) -> String {
    let mut line = format!(
        "{} {:.1}% {}/{} files {}/{}",
        v.status.as_str(),
        v.percent,
        v.files_done,
        v.totals.files,
        bytes(v.bytes_done),
        bytes(v.totals.bytes)
    );
    if v.rate_bytes_per_sec > 0 {
        line.push_str(&format!(" {}/s", bytes(v.rate_bytes_per_sec)));
    }
    if let Some(ms) = v.eta_ms {
        line.push_str(&format!(" ETA {}", eta(ms)));
    }
    line
}

fn render_view(v: &RestoreView) -> String {
    let mut out = format!("restore job {}\n", v.job_id);
    let mut line = |key: &str, value: String| out.push_str(&format!("  {key:<10} {value}\n"));
    line("state", v.status.as_str().to_string());
    line(
        "snapshot",
        format!(
            "'{}' of collection '{}' (id {})",
            v.snapshot, v.snapshot_collection, v.snapshot_id
        ),
    );
    line(
        "target",
        format!("'{}' (id {})", v.target, v.target_collection_id),
    );
    line("progress", progress_line(v));
    line(
        "tasks",
        format!("{} of {} complete", v.tasks_done, v.totals.tasks),
    );
    let o = &v.options;
    line(
        "options",
        format!(
            "parallelism {}, {}, {}, partitions: {}",
            o.parallelism,
            o.max_bytes_per_sec
                .map_or("no bandwidth limit".to_string(), |b| format!(
                    "at most {}/s",
                    bytes(b)
                )),
            if o.verify_checksums {
                "checksums verified"
            } else {
                "checksums not verified"
            },
            if o.partitions.is_empty() {
                "all".to_string()
            } else {
                o.partitions.join(", ")
            }
        ),
    );
    if let Some(node) = &v.node {
        line("coordinator", format!("node '{node}'"));
    }
    if !v.nodes.is_empty() {
        let nodes: Vec<String> = v
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{} ({} tasks, {}/s)",
                    n.node,
                    n.tasks_held,
                    bytes(n.bytes_per_sec)
                )
            })
            .collect();
        line("nodes", nodes.join(", "));
    }
    line("requested", utc(v.requested_ms));
    if let Some(ms) = v.started_ms {
        line("started", utc(ms));
    }
    if let Some(ms) = v.finished_ms {
        line("finished", utc(ms));
    }
    if let Some(f) = &v.failure {
        line("failure", f.clone());
    }
    if matches!(v.status, RestoreStatus::Failed | RestoreStatus::Cancelled) {
        line(
            "rollback",
            format!(
                "{} copied objects deleted, target dropped",
                v.objects_deleted
            ),
        );
    }
    if !v.tasks.is_empty() {
        let mut t = Table::new(
            &[
                "TASK", "SHARD", "STATE", "NODE", "FILES", "BYTES", "FAILURE",
            ],
            &["TASK", "SHARD"],
        );
        for task in &v.tasks {
            t.row(vec![
                task.task.to_string(),
                task.shard.to_string(),
                task.status.clone(),
                task.node.clone().unwrap_or_default(),
                format!("{}/{}", task.files_done, task.files_total),
                format!("{}/{}", bytes(task.bytes_done), bytes(task.bytes_total)),
                task.failure.clone().unwrap_or_default(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

fn render_list(page: &RestorePage) -> String {
    if page.jobs.is_empty() {
        return "no restore jobs (start one with 'snapvault restore start COLLECTION SNAPSHOT TARGET')".into();
    }
    let mut t = Table::new(
        &[
            "JOB",
            "STATE",
            "SNAPSHOT",
            "TARGET",
            "PROGRESS",
            "FILES",
            "SIZE",
            "REQUESTED",
        ],
        &["JOB", "FILES", "SIZE"],
    );
    for j in &page.jobs {
        t.row(vec![
            j.job_id.to_string(),
            j.status.as_str().to_string(),
            format!("{}/{}", j.snapshot_collection, j.snapshot),
            j.target.clone(),
            format!("{:.1}%", j.percent),
            j.totals.files.to_string(),
            bytes(j.totals.bytes),
            utc(j.requested_ms),
        ]);
    }
    let mut out = t.render();
    if let Some(token) = page.next_page_token {
        out.push_str(&format!(
            "\nmore jobs: continue with --page-token {token}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_parses_units_and_refuses_zero_and_negatives() {
        assert_eq!(parse_bandwidth("1048576").ok(), Some(1 << 20));
        assert_eq!(parse_bandwidth("50M").ok(), Some(50 << 20));
        assert_eq!(parse_bandwidth("1GiB").ok(), Some(1 << 30));
        assert_eq!(parse_bandwidth("2kB").ok(), Some(2048));
        for bad in ["0", "-5", "", "M", "1.5M", "5X", "99999999999999999999T"] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parallelism_and_job_ids() {
        assert_eq!(parse_parallelism("8").ok(), Some(8));
        for bad in ["0", "257", "-1", "x", "1000000"] {
            assert!(parse_parallelism(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_job_id("12").ok(), Some(12));
        assert!(parse_job_id("0").is_err());
        assert!(parse_job_id("abc").is_err());
        assert!(parse_state("rolling_back").is_ok());
        assert!(parse_state("done").is_err());
    }
}
