//! `snapshot create | list | describe | drop | verify | import`.
//!
//! Each command is one call of the client's snapshot API (`src/snapshots.rs`); this file only
//! checks arguments and prints. `verify` is the one command that prints its result and still
//! fails: a snapshot with missing or corrupt objects is not restorable, so a script must see a
//! non-zero exit (1, `internal`: the data is damaged, not the request) after the report.

use super::output::{Table, bytes, plural, utc};
use super::{Ctx, SnapshotCmd, SnapshotCreateArgs, SnapshotListArgs};
use serde::Serialize;
use snapvault::Error;
use snapvault::snapshots::{
    CreateSnapshotRequest, ListSnapshotsRequest, SnapshotPage, SnapshotView,
};
use snapvault_actors::collection::check_snapshot_labels;
use snapvault_actors::snapshot::worker::VerifyReport;
use snapvault_events::domain::snapshot::SnapshotStatus;
use snapvault_events::validate::{validate_name, validate_object_key};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Every state a snapshot can be in, in life-cycle order, as `--state` spells them.
const STATES: [SnapshotStatus; 5] = [
    SnapshotStatus::Pending,
    SnapshotStatus::Committed,
    SnapshotStatus::Failed,
    SnapshotStatus::Deleting,
    SnapshotStatus::Deleted,
];

/// Refuse bad names, labels, states and prefixes before the node starts.
pub fn check_args(cmd: &SnapshotCmd) -> Result<(), Error> {
    let collection = |n: &str| validate_name("collection name", n);
    let snapshot = |n: &str| validate_name("snapshot name", n);
    match cmd {
        SnapshotCmd::Create(a) => {
            collection(&a.collection)?;
            snapshot(&a.name)?;
            check_snapshot_labels(&a.description, &parse_labels(&a.labels)?)
        }
        SnapshotCmd::List(a) => {
            if let Some(c) = &a.collection {
                collection(c)?;
            }
            if let Some(s) = &a.state {
                parse_state(s)?;
            }
            if let Some(l) = &a.label {
                let (k, v) = parse_label(l)?;
                check_snapshot_labels("", &BTreeMap::from([(k, v)]))?;
            }
            Ok(())
        }
        SnapshotCmd::Describe {
            collection: c,
            name,
        }
        | SnapshotCmd::Drop {
            collection: c,
            name,
        }
        | SnapshotCmd::Verify {
            collection: c,
            name,
        } => {
            collection(c)?;
            snapshot(name)
        }
        SnapshotCmd::Import { from } => {
            validate_object_key("import prefix", from.trim_end_matches('/'))
        }
    }
}

/// `key=value` → `(key, value)`; the key must be non-empty. Values may contain `=`.
pub fn parse_label(text: &str) -> Result<(String, String), Error> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::invalid_argument(format!(
            "label '{}' must look like key=value",
            text.escape_debug()
        ))),
    }
}

/// Every `--label`, a key at most once: a second value would silently win otherwise.
pub fn parse_labels(texts: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut labels = BTreeMap::new();
    for text in texts {
        let (k, v) = parse_label(text)?;
        if labels.insert(k.clone(), v).is_some() {
            return Err(Error::invalid_argument(format!(
                "label '{k}' is given twice"
            )));
        }
    }
    Ok(labels)
}

/// A `--state` word; an unknown one names the valid ones.
pub fn parse_state(text: &str) -> Result<SnapshotStatus, Error> {
    SnapshotStatus::parse(text).ok_or_else(|| {
        let valid: Vec<&str> = STATES.iter().map(|s| s.as_str()).collect();
        Error::invalid_argument(format!(
            "unknown snapshot state '{}'; valid states: {}",
            text.escape_debug(),
            valid.join(", ")
        ))
    })
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<(), Error> {
    match cmd {
        SnapshotCmd::Create(args) => create(ctx, args).await,
        SnapshotCmd::List(args) => list(ctx, args).await,
        SnapshotCmd::Describe { collection, name } => describe(ctx, &collection, &name).await,
        SnapshotCmd::Drop { collection, name } => drop(ctx, &collection, &name).await,
        SnapshotCmd::Verify { collection, name } => verify(ctx, &collection, &name).await,
        SnapshotCmd::Import { from } => import(ctx, &from).await,
    }
}

async fn create(ctx: &Ctx, args: SnapshotCreateArgs) -> Result<(), Error> {
    let labels = parse_labels(&args.labels)?;
    let view = ctx
        .client
        .create_snapshot(CreateSnapshotRequest {
            collection: args.collection,
            name: args.name,
            description: args.description,
            labels,
        })
        .await?;
    ctx.out.emit(&view, || {
        format!(
            "created snapshot '{}' of collection '{}' (id {}): {}",
            view.name,
            view.collection_name,
            view.id,
            totals(&view)
        )
    })
}

/// `2 segments, 8 files, 5.0 MiB, 40960 rows`.
fn totals(v: &SnapshotView) -> String {
    format!(
        "{}, {}, {}, {} rows",
        plural(v.totals.segments, "segment"),
        plural(v.totals.files, "file"),
        bytes(v.totals.bytes),
        v.totals.rows
    )
}

async fn list(ctx: &Ctx, args: SnapshotListArgs) -> Result<(), Error> {
    let page = ctx
        .client
        .list_snapshots(ListSnapshotsRequest {
            collection: args.collection,
            status: args.state.as_deref().map(parse_state).transpose()?,
            label: args.label.as_deref().map(parse_label).transpose()?,
            limit: Some(args.limit as usize),
            page_token: args.page_token,
        })
        .await?;
    ctx.out.emit(&page, || render_list(&page))
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn render_list(page: &SnapshotPage) -> String {
    if page.snapshots.is_empty() {
        return "no snapshots (create one with 'snapvault snapshot create COLLECTION NAME')".into();
    }
    let mut t = Table::new(
        &[
            "NAME",
            "COLLECTION",
            "ID",
            "STATE",
            "SEGMENTS",
            "FILES",
            "SIZE",
            "CREATED",
            "LABELS",
        ],
        &["ID", "SEGMENTS", "FILES", "SIZE"],
    );
    for s in &page.snapshots {
        t.row(vec![
            s.name.clone(),
            s.collection_name.clone(),
            s.id.to_string(),
            s.status.as_str().to_string(),
            s.totals.segments.to_string(),
            s.totals.files.to_string(),
            bytes(s.totals.bytes),
            utc(s.created_ms),
            labels_text(&s.labels),
        ]);
    }
    let mut out = t.render();
    if let Some(token) = page.next_page_token {
        out.push_str(&format!(
            "\nmore snapshots: continue with --page-token {token}\n"
        ));
    }
    out
}

async fn describe(ctx: &Ctx, collection: &str, name: &str) -> Result<(), Error> {
    let view = ctx.client.describe_snapshot(collection, name).await?;
    ctx.out.emit(&view, || render_view(&view))
}

/// A snapshot for people: every field of the view, then its partitions and indexes.
pub fn render_view(v: &SnapshotView) -> String {
    let mut out = format!(
        "snapshot {} (id {}) of collection {} (id {})\n  state        {}\n",
        v.name,
        v.id,
        v.collection_name,
        v.collection_id,
        v.status.as_str()
    );
    let mut line = |key: &str, value: String| out.push_str(&format!("  {key:<12} {value}\n"));
    if !v.description.is_empty() {
        line("description", v.description.clone());
    }
    if !v.labels.is_empty() {
        line("labels", labels_text(&v.labels));
    }
    line("created", utc(v.created_ms));
    if let Some(ms) = v.committed_ms {
        line(if v.imported { "imported" } else { "committed" }, utc(ms));
    }
    if !v.imported {
        line(
            "pinned at",
            format!("version {} of the collection's stream", v.pinned_version),
        );
    }
    line("totals", totals(v));
    line("location", v.location.clone());
    line("manifests", v.manifests.to_string());
    if let Some(f) = v.format_version {
        line("format", format!("version {f}"));
    }
    let leases = if v.leases.is_empty() {
        "none".to_string()
    } else {
        let jobs: Vec<String> = v.leases.iter().map(u64::to_string).collect();
        format!("held by restore job {}", jobs.join(", "))
    };
    line("leases", leases);
    if let Some(reason) = &v.failure {
        line("failure", reason.clone());
    }
    if let Some(partitions) = &v.partitions {
        let mut t = Table::new(&["PARTITION", "ID"], &["ID"]);
        for p in partitions {
            t.row(vec![p.name.clone(), p.id.to_string()]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if let Some(indexes) = v.indexes.as_ref().filter(|i| !i.is_empty()) {
        let mut t = Table::new(&["INDEX", "ID", "FIELD", "PARAMS"], &["ID"]);
        for i in indexes {
            t.row(vec![
                i.name.clone(),
                i.id.to_string(),
                i.field.clone(),
                i.params_json.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

async fn drop(ctx: &Ctx, collection: &str, name: &str) -> Result<(), Error> {
    let view = ctx.client.drop_snapshot(collection, name).await?;
    ctx.out.emit(&view, || {
        format!(
            "dropped snapshot '{name}' of collection '{collection}' (id {}): manifests deleted, its files no longer protected",
            view.id
        )
    })
}

/// `verify`'s output: which snapshot, and the report.
#[derive(Debug, Serialize)]
pub struct Verified<'a> {
    pub collection: &'a str,
    pub snapshot: &'a str,
    #[serde(flatten)]
    pub report: &'a VerifyReport,
}

async fn verify(ctx: &Ctx, collection: &str, name: &str) -> Result<(), Error> {
    let report = ctx.client.verify_snapshot(collection, name).await?;
    let shown = Verified {
        collection,
        snapshot: name,
        report: &report,
    };
    ctx.out.emit(&shown, || render_verify(&shown))?;
    match verify_failure(collection, name, &report) {
        None => Ok(()),
        Some(e) => {
            ctx.result_printed.store(true, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// The error a damaged snapshot ends with, or `None` when the report is clean.
pub fn verify_failure(collection: &str, name: &str, r: &VerifyReport) -> Option<Error> {
    (!r.ok).then(|| {
        Error::internal(format!(
            "snapshot verify found {} missing and {} corrupt objects in snapshot '{name}' of collection '{collection}'",
            r.missing.len(),
            r.corrupt.len() + r.corrupt_manifests.len()
        ))
    })
}

fn render_verify(v: &Verified) -> String {
    let r = v.report;
    if r.ok {
        return format!(
            "snapshot '{}' of collection '{}': ok ({} checked: present, sizes and crc32c match)",
            v.snapshot,
            v.collection,
            plural(r.checked_files, "file")
        );
    }
    let mut out = format!(
        "snapshot '{}' of collection '{}': {} missing, {} corrupt, {} corrupt manifests ({} checked)\n",
        v.snapshot,
        v.collection,
        r.missing.len(),
        r.corrupt.len(),
        r.corrupt_manifests.len(),
        plural(r.checked_files, "file")
    );
    for key in &r.missing {
        out.push_str(&format!("  missing           {key}\n"));
    }
    for what in &r.corrupt {
        out.push_str(&format!("  corrupt           {what}\n"));
    }
    for what in &r.corrupt_manifests {
        out.push_str(&format!("  corrupt manifest  {what}\n"));
    }
    out
}

async fn import(ctx: &Ctx, from: &str) -> Result<(), Error> {
    let view = ctx.client.import_snapshot(from).await?;
    ctx.out.emit(&view, || {
        format!(
            "imported snapshot '{}' of collection '{}' (id {}) from '{from}': {}",
            view.name,
            view.collection_name,
            view.id,
            totals(&view)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_states() {
        assert_eq!(
            parse_label("a=b=c").ok(),
            Some(("a".to_string(), "b=c".to_string()))
        );
        for bad in ["", "=v", "novalue"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
        let twice = parse_labels(&["a=1".to_string(), "a=2".to_string()]);
        assert!(twice.is_err());
        for s in STATES {
            assert_eq!(parse_state(s.as_str()).ok(), Some(s));
        }
        let e = parse_state("done")
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(
            e.contains("pending, committed, failed, deleting, deleted"),
            "{e}"
        );
    }
}
