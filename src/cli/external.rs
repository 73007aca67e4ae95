//! `collection create … --external-source/--external-spec`, `collection alter`, and
//! `external refresh [--wait] | status | cancel`.
//!
//! A refresh runs in the node of the process that started it (and is resumed by any later
//! process on the data directory): without `--wait` the command returns the task id once the
//! task holds the collection's refresh slot, and the process still gives the task up to 30 s
//! to finish before it exits; with `--wait` it follows the task to its end and fails (exit 1
//! or 2 by the code) when the task did not commit. Ctrl-C during `--wait` stops following,
//! not the task: it prints how to follow or cancel it and exits 130 (`super::interrupt`).

use super::interrupt::Interrupt;
use super::output::{Progress, Table, plural, utc};
use super::{CreateArgs, Ctx};
use snapvault::Error;
use snapvault::client::CreateCollectionRequest;
use snapvault::external::{ExternalStatusView, ExternalTaskView, external_config};
use snapvault_events::domain::external::{ExternalSpec, parse_source};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

/// How long `--wait` follows a task before it gives up (the task keeps running).
const WAIT_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Read a spec file (`--external-spec FILE`); without one, the defaults (`parquet`).
pub fn read_spec(path: Option<&Path>) -> Result<String, Error> {
    match path {
        None => Ok(r#"{"format":"parquet"}"#.to_string()),
        Some(p) => super::files::read_text(
            p,
            "external spec file",
            snapvault_events::domain::external::MAX_SPEC_BYTES,
        ),
    }
}

/// Checks before the node starts: the source is a clean prefix, the spec file is a valid
/// spec.
pub fn check(source: Option<&str>, spec: Option<&Path>) -> Result<(), Error> {
    if let Some(s) = source {
        parse_source(s)?;
    }
    if spec.is_some() {
        ExternalSpec::parse_json(&read_spec(spec)?)?;
    }
    Ok(())
}

pub async fn create(
    ctx: &Ctx,
    args: CreateArgs,
    properties: BTreeMap<String, String>,
    schema_json: String,
) -> Result<(), Error> {
    let source = args.external_source.clone().unwrap_or_default();
    let spec = read_spec(args.external_spec.as_deref())?;
    external_config(&source, &spec)?;
    let view = ctx
        .client
        .create_external_collection(
            CreateCollectionRequest {
                name: args.name,
                schema_json,
                shard_count: args.shards,
                properties,
                partitions: args.partitions,
            },
            &source,
            &spec,
        )
        .await?;
    ctx.out.emit(&view, || {
        format!(
            "created external collection '{}' (id {}, {}, source {}); run 'snapvault external refresh {}' to mirror it",
            view.name,
            view.id,
            plural(u64::from(view.shards), "shard"),
            parse_source(&source).map(|s| s.0).unwrap_or(source.clone()),
            view.name
        )
    })
}

pub async fn alter(
    ctx: &Ctx,
    name: &str,
    source: Option<&str>,
    spec: Option<&Path>,
) -> Result<(), Error> {
    let spec = match spec {
        Some(p) => Some(read_spec(Some(p))?),
        None => None,
    };
    let task = ctx
        .client
        .alter_external(name, source, spec.as_deref())
        .await?;
    ctx.out.emit(&task, || {
        format!(
            "altered '{name}' (source {}, generation {}); refresh task {} started",
            task.source, task.generation, task.task_id
        )
    })
}

pub async fn refresh(ctx: &Ctx, collection: &str, wait: bool) -> Result<(), Error> {
    // Listen before the task exists: a Ctrl-C from here on stops following, not the task.
    let interrupt = wait.then(Interrupt::listen).transpose()?;
    let task = ctx.client.refresh_external(collection).await?;
    let Some(interrupt) = interrupt else {
        return ctx.out.emit(&task, || {
            if task.already_running {
                format!(
                    "refresh task {} is already running for '{collection}'",
                    task.task_id
                )
            } else {
                format!("refresh task {} started for '{collection}'", task.task_id)
            }
        });
    };
    if std::io::stderr().is_terminal() {
        eprintln!(
            "refresh task {} {} for '{collection}'; following it (Ctrl-C stops following, not the task)",
            task.task_id,
            if task.already_running {
                "is already running"
            } else {
                "started"
            }
        );
    }
    let (mut last, mut bar) = (None, None);
    let followed = interrupt
        .follow(follow(ctx, task.task_id, &mut last, &mut bar))
        .await;
    let Some(done) = followed else {
        if let Some(b) = &bar {
            b.finish();
        }
        return stopped_following(ctx, collection, task.task_id, last.as_ref());
    };
    let done = done?;
    let outcome = finished(&done);
    ctx.out.emit(&done, || render_task(&done))?;
    if outcome.is_err() {
        ctx.result_printed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    outcome
}

/// After Ctrl-C: how to see, follow and cancel the task (stderr), and with `--json` the task
/// as last seen (stdout). The task goes on; the process exits 130.
fn stopped_following(
    ctx: &Ctx,
    collection: &str,
    task_id: u64,
    last: Option<&ExternalTaskView>,
) -> Result<(), Error> {
    // A one-shot process gives its running tasks up to 30 s when it exits, and drives only
    // the tasks it refreshes, alters or waits for (README, "External collections").
    let place = match ctx.client {
        super::backend::Backend::Local(_) => format!(
            "in this process for up to 30 s more (Ctrl-C again exits at once), then while \
             'snapvault external refresh {collection} --wait' or 'snapvault serve' runs on this \
             data directory"
        ),
        super::backend::Backend::Remote(_) => "in the service".to_string(),
    };
    eprintln!(
        "stopped following refresh task {task_id} of '{collection}' (Ctrl-C); the task was not cancelled: it goes on {place}"
    );
    eprintln!("  see it:          snapvault external status {collection}");
    eprintln!(
        "  follow it again: snapvault external refresh {collection} --wait (while it runs, this follows it instead of starting another)"
    );
    eprintln!("  stop it:         snapvault external cancel {collection}");
    match last {
        Some(view) if ctx.out.is_json() => ctx.out.emit(view, String::new),
        _ => Ok(()),
    }
}

/// Follow a task to its end, with a progress line (`bar`) on a terminal; `last` is the task
/// as last seen.
async fn follow(
    ctx: &Ctx,
    task_id: u64,
    last: &mut Option<ExternalTaskView>,
    bar: &mut Option<Progress>,
) -> Result<ExternalTaskView, Error> {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        let v = ctx.client.external_task(task_id).await?;
        *last = Some(v.clone());
        if v.is_finished() {
            if let Some(b) = bar.take() {
                b.finish();
            }
            return Ok(v);
        }
        if v.progress.footers_total > 0 {
            let b = bar.get_or_insert_with(|| {
                Progress::new(format!("task {task_id}: footers"), v.progress.footers_total)
            });
            b.update(v.progress.footers_read, 0);
        }
        if tokio::time::Instant::now() >= deadline {
            return ctx.client.wait_external_task(task_id, Duration::ZERO).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A task that did not commit is an error with its code: failed (the source is bad:
/// `failed_precondition`), superseded or cancelled (`conflict`: someone else changed it).
fn finished(v: &ExternalTaskView) -> Result<(), Error> {
    match v.status.as_str() {
        "committed" => Ok(()),
        "failed" => Err(Error::failed_precondition(format!(
            "refresh task {} failed on '{}': {}",
            v.task_id,
            v.failed_key.clone().unwrap_or_default(),
            v.reason.clone().unwrap_or_default()
        ))),
        other => Err(Error::conflict(format!(
            "refresh task {} was {other}{}",
            v.task_id,
            v.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))),
    }
}

pub async fn status(ctx: &Ctx, collection: &str) -> Result<(), Error> {
    let st = ctx.client.external_status(collection).await?;
    ctx.out.emit(&st, || render_status(&st))
}

pub async fn cancel(ctx: &Ctx, collection: &str) -> Result<(), Error> {
    let t = ctx.client.cancel_external(collection).await?;
    ctx.out.emit(&t, || {
        format!("cancelled refresh task {} of '{collection}'", t.task_id)
    })
}

fn render_task(t: &ExternalTaskView) -> String {
    let mut out = format!(
        "task {} of '{}': {}\n  source     {} (generation {})\n  started    {}\n",
        t.task_id,
        t.collection,
        t.status,
        t.source,
        t.generation,
        utc(t.started_ms)
    );
    if let Some(f) = t.finished_ms {
        out.push_str(&format!("  finished   {}\n", utc(f)));
    }
    if let Some(p) = &t.phase {
        out.push_str(&format!("  phase      {p}\n"));
    }
    out.push_str(&format!(
        "  fragments  {} listed, {} unchanged, {}/{} footers read\n",
        t.progress.fragments_listed,
        t.progress.fragments_unchanged,
        t.progress.footers_read,
        t.progress.footers_total
    ));
    if let Some(c) = &t.counts {
        let mut table = Table::new(
            &["KEPT", "DROPPED", "ADDED", "FRAGMENTS", "ROWS"],
            &["KEPT", "DROPPED", "ADDED", "FRAGMENTS", "ROWS"],
        );
        table.row(vec![
            c.kept.to_string(),
            c.dropped.to_string(),
            c.added.to_string(),
            c.fragments.to_string(),
            c.rows.to_string(),
        ]);
        out.push('\n');
        out.push_str(&table.render());
    }
    if let Some(k) = &t.failed_key {
        out.push_str(&format!("  failed on  {k}\n"));
    }
    if let Some(r) = &t.reason {
        out.push_str(&format!("  reason     {r}\n"));
    }
    out
}

fn render_status(st: &ExternalStatusView) -> String {
    let mut out = format!(
        "external collection {} (id {})\n  source     {}\n  spec       {}\n  generation {}\n  mirrored   {}, {} fragments, {} rows\n  refreshed  {}\n",
        st.collection,
        st.collection_id,
        st.source,
        st.spec,
        st.generation,
        plural(st.segments as u64, "segment"),
        st.fragments,
        st.rows,
        st.last_refresh_ms
            .map(utc)
            .unwrap_or_else(|| "never".into()),
    );
    let mut t = Table::new(
        &[
            "TASK", "ROLE", "STATUS", "PHASE", "FOOTERS", "KEPT", "DROPPED", "ADDED", "STARTED",
        ],
        &["TASK", "KEPT", "DROPPED", "ADDED"],
    );
    for (role, task) in [("active", &st.active), ("last", &st.last)] {
        if let Some(v) = task {
            let c = v.counts.unwrap_or_default();
            t.row(vec![
                v.task_id.to_string(),
                role.to_string(),
                v.status.clone(),
                v.phase.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", v.progress.footers_read, v.progress.footers_total),
                c.kept.to_string(),
                c.dropped.to_string(),
                c.added.to_string(),
                utc(v.started_ms),
            ]);
        }
    }
    out.push('\n');
    if st.active.is_none() && st.last.is_none() {
        out.push_str("no refresh yet (run 'snapvault external refresh NAME')\n");
    } else {
        out.push_str(&t.render());
        if let Some(r) = st.last.as_ref().and_then(|l| l.reason.as_ref()) {
            out.push_str(&format!("  last reason: {r}\n"));
        }
    }
    out
}
