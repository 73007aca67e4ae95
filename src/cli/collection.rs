//! `collection create | list | describe | drop`.

use super::output::{Table, bytes, plural, utc};
use super::{CreateArgs, Ctx};
use serde::Serialize;
use snapvault::Error;
use snapvault::client::CreateCollectionRequest;
use snapvault::nats::ops::collection::Collections;
use snapvault::views::{CollectionSummary, CollectionView};
use std::collections::BTreeMap;

/// `key=value` → `(key, value)`; the key must be non-empty. Values may contain `=`.
pub fn parse_property(text: &str) -> Result<(String, String), Error> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::invalid_argument(format!(
            "property '{}' must look like key=value",
            text.escape_debug()
        ))),
    }
}

pub async fn create(ctx: &Ctx, args: CreateArgs) -> Result<(), Error> {
    let schema_json = match &args.schema {
        Some(path) => super::files::read_text(
            path,
            "schema file",
            snapvault_events::domain::collection::MAX_SCHEMA_BYTES,
        )?,
        None => String::new(),
    };
    let mut properties = BTreeMap::new();
    for p in &args.properties {
        let (k, v) = parse_property(p)?;
        if properties.insert(k.clone(), v).is_some() {
            return Err(Error::invalid_argument(format!(
                "property '{k}' is given twice"
            )));
        }
    }
    if args.external_source.is_some() {
        return super::external::create(ctx, args, properties, schema_json).await;
    }
    let view = ctx
        .client
        .create_collection(CreateCollectionRequest {
            name: args.name,
            schema_json,
            shard_count: args.shards,
            properties,
            partitions: args.partitions,
        })
        .await?;
    ctx.out.emit(&view, || {
        let partitions: Vec<&str> = view.partitions.iter().map(|p| p.name.as_str()).collect();
        format!(
            "created collection '{}' (id {}, {}, partitions: {})",
            view.name,
            view.id,
            plural(u64::from(view.shards), "shard"),
            partitions.join(", ")
        )
    })
}

pub async fn list(ctx: &Ctx) -> Result<(), Error> {
    let list = ctx.client.list_collections().await?;
    // `{collections: [...]}`, the same shape as the NATS op `collection.list`.
    let listing = Collections { collections: list };
    ctx.out.emit(&listing, || render_list(&listing.collections))
}

fn render_list(list: &[CollectionSummary]) -> String {
    if list.is_empty() {
        return "no collections (create one with 'snapvault collection create NAME')".into();
    }
    let mut t = Table::new(
        &[
            "NAME",
            "ID",
            "STATUS",
            "SHARDS",
            "PARTITIONS",
            "SEGMENTS",
            "FILES",
            "SIZE",
        ],
        &["ID", "SHARDS", "PARTITIONS", "SEGMENTS", "FILES", "SIZE"],
    );
    for c in list {
        t.row(vec![
            c.name.clone(),
            c.id.to_string(),
            status(&c.status),
            c.shards.to_string(),
            c.partitions.to_string(),
            c.segments.to_string(),
            c.files.to_string(),
            bytes(c.bytes),
        ]);
    }
    t.render()
}

pub async fn describe(ctx: &Ctx, name: &str) -> Result<(), Error> {
    let view = ctx.client.describe_collection(name).await?;
    ctx.out.emit(&view, || render_view(&view))
}

/// The serialised (snake_case) name of a status, the same word `--json` prints.
fn status<T: Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A collection for people: a header, then partitions, indexes and segments as tables.
pub fn render_view(v: &CollectionView) -> String {
    let mut out = format!(
        "collection {} (id {})\n  status     {}\n  shards     {}\n  created    {}\n  version    {}\n  schema     {}\n",
        v.name,
        v.id,
        status(&v.status),
        v.shards,
        utc(v.created_ms),
        v.version,
        v.schema
    );
    if let Some(job) = v.restoring_job {
        out.push_str(&format!("  restoring  by job {job}\n"));
    }
    if !v.properties.is_empty() {
        let props: Vec<String> = v
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!("  properties {}\n", props.join(", ")));
    }
    out.push_str(&format!(
        "  totals     {}, {}, {}, {} rows\n",
        plural(v.totals.segments as u64, "segment"),
        plural(v.totals.files, "file"),
        bytes(v.totals.bytes),
        v.totals.rows
    ));

    let mut partitions = Table::new(&["PARTITION", "ID", "SEGMENTS"], &["ID", "SEGMENTS"]);
    for p in &v.partitions {
        let n = v.segments.iter().filter(|s| s.partition_id == p.id).count();
        partitions.row(vec![p.name.clone(), p.id.to_string(), n.to_string()]);
    }
    out.push('\n');
    out.push_str(&partitions.render());

    if !v.indexes.is_empty() {
        let mut indexes = Table::new(&["INDEX", "ID", "FIELD", "PARAMS"], &["ID"]);
        for i in &v.indexes {
            indexes.row(vec![
                i.name.clone(),
                i.id.to_string(),
                i.field.clone(),
                i.params.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&indexes.render());
    }

    out.push('\n');
    if v.segments.is_empty() {
        out.push_str("no segments (write some with 'snapvault ingest')\n");
    } else {
        let index_name = |id: u64| {
            v.indexes
                .iter()
                .find(|i| i.id == id)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let mut segments = Table::new(
            &[
                "SEGMENT",
                "PARTITION",
                "SHARD",
                "LEVEL",
                "ROWS",
                "FILES",
                "SIZE",
                "INDEXES",
            ],
            &["SEGMENT", "SHARD", "LEVEL", "ROWS", "FILES", "SIZE"],
        );
        for s in &v.segments {
            let size: u64 = s.files.iter().map(|f| f.size).sum::<u64>()
                + s.indexes
                    .iter()
                    .flat_map(|i| i.files.iter())
                    .map(|f| f.size)
                    .sum::<u64>();
            let indexes: Vec<String> = s
                .indexes
                .iter()
                .map(|i| format!("{}#{}", index_name(i.index_id), i.build_id))
                .collect();
            segments.row(vec![
                s.id.to_string(),
                s.partition.clone(),
                s.shard.to_string(),
                s.level.to_string(),
                s.rows.to_string(),
                (s.files.len() + s.indexes.iter().map(|i| i.files.len()).sum::<usize>())
                    .to_string(),
                bytes(size),
                indexes.join(","),
            ]);
        }
        out.push_str(&segments.render());
    }
    out
}

#[derive(Serialize)]
struct Dropped<'a> {
    dropped: &'a str,
}

pub async fn drop(ctx: &Ctx, name: &str) -> Result<(), Error> {
    ctx.client.drop_collection(name).await?;
    ctx.out.emit(&Dropped { dropped: name }, || {
        format!("dropped collection '{name}'")
    })
}
