//! The table of API operations: name → typed handler over the node's [`Client`].
//!
//! Each op group has its own file that registers its ops with one line each:
//!
//! ```ignore
//! t.add("collection.describe", |c: Client, r: Named| async move { c.describe_collection(&r.name).await });
//! ```
//!
//! [`OpTable::add`] does the rest: it decodes the request into the handler's input type
//! (msgpack or JSON; a bad body is an `invalid_argument` reply naming the op and the
//! problem), runs it, and turns the result into the reply. The service (`super::service`) adds
//! the subject `<prefix>.api.v1.<name>`, request ids, limits and error replies. Adding an op is
//! one `t.add(..)` line in its group's file (and a row in `docs/nats-api.md`); a new group is a
//! file here plus one call in [`OpTable::standard`].

pub mod collection;
pub mod external;
pub mod gc;
pub mod layout;
pub mod restore;
pub mod snapshot;

use super::wire::{self, Format};
use crate::Client;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use snapvault_events::Error;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// What an op answers: the reply value (encoded in the request's format by the service).
pub type OpResult = Result<serde_json::Value, Error>;
/// A registered handler.
pub type Handler =
    Arc<dyn Fn(Client, Format, bytes::Bytes) -> BoxFuture<'static, OpResult> + Send + Sync>;

/// Every op a service answers, by name (`collection.create`, …).
#[derive(Clone, Default)]
pub struct OpTable {
    ops: BTreeMap<String, Handler>,
}

/// No input.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Empty {}

/// An op name: dot-separated tokens of `[a-z0-9_]`.
pub fn valid_op_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

impl OpTable {
    /// The ops of the library's typed client: collections, layout, snapshots, restores,
    /// external collections, GC.
    pub fn standard() -> OpTable {
        let mut t = OpTable::default();
        collection::register(&mut t);
        layout::register(&mut t);
        snapshot::register(&mut t);
        restore::register(&mut t);
        external::register(&mut t);
        gc::register(&mut t);
        t
    }

    /// Register `name`: decode `Req`, run `f`, reply with `Resp`.
    ///
    /// # Panics
    /// When `name` is not a valid op name or is registered twice: both are programming
    /// errors found by the first test that builds the table.
    pub fn add<Req, Resp, F, Fut>(&mut self, name: &str, f: F)
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Client, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        assert!(valid_op_name(name), "op name '{name}' is not valid");
        let op = name.to_string();
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |client, format, body| {
            let (f, op) = (f.clone(), op.clone());
            Box::pin(async move {
                let req: Req = wire::decode(format, &body).map_err(|e| {
                    Error::invalid_argument(format!(
                        "the {} body of '{op}' does not fit the op's request: {e}",
                        format.name()
                    ))
                })?;
                let resp = f(client, req).await?;
                serde_json::to_value(&resp)
                    .map_err(|e| Error::internal(format!("cannot encode the reply of '{op}': {e}")))
            })
        });
        let previous = self.ops.insert(name.to_string(), handler);
        assert!(previous.is_none(), "op '{name}' registered twice");
    }

    pub fn get(&self, name: &str) -> Option<&Handler> {
        self.ops.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.ops.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_table_builds_and_names_are_valid() {
        let t = OpTable::standard();
        assert!(t.len() >= 20, "{}", t.len());
        for n in t.names() {
            assert!(valid_op_name(n), "{n}");
        }
        assert!(!valid_op_name("Bad.Name"));
        assert!(!valid_op_name("a..b"));
    }

    /// Every optional request field of docs/nats-api.md may be left out, and then means its
    /// documented default; in both formats.
    #[test]
    fn optional_request_fields_take_their_documented_defaults() {
        use crate::restores::StartRestoreRequest;
        use serde_json::json;
        use snapvault_events::domain::restore::RestoreOptions;
        fn decode<T: DeserializeOwned>(v: serde_json::Value) -> T {
            let json: T = wire::decode(Format::Json, &serde_json::to_vec(&v).unwrap())
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            let msgpack = rmp_serde::to_vec_named(&v).unwrap();
            let _: T =
                wire::decode(Format::MsgPack, &msgpack).unwrap_or_else(|e| panic!("{v}: {e}"));
            json
        }
        let restore = json!({ "snapshot_collection": "c", "snapshot": "s", "target": "t" });
        let mut with_empty = restore.clone();
        with_empty["options"] = json!({});
        let mut partial = restore.clone();
        partial["options"] = json!({ "parallelism": 8 });
        for v in [restore, with_empty] {
            let r: StartRestoreRequest = decode(v);
            assert_eq!(r.options, RestoreOptions::default());
            assert_eq!(
                (r.options.parallelism, r.options.verify_checksums),
                (4, true)
            );
        }
        let r: StartRestoreRequest = decode(partial);
        assert_eq!(
            r.options,
            RestoreOptions {
                parallelism: 8,
                ..RestoreOptions::default()
            }
        );

        let c: collection::CreateCollection = decode(json!({ "name": "c" }));
        assert_eq!((c.shard_count, c.schema_json.as_str()), (1, ""));
        let e: external::CreateExternal =
            decode(json!({ "collection": { "name": "c" }, "source": "lake/t1/" }));
        assert_eq!(e.collection.shard_count, 1);
        assert_eq!(e.spec_json, external::default_spec());
        let _: external::AlterExternal = decode(json!({ "collection": "c" }));
        let w: external::TaskRef = decode(json!({ "task": 3 }));
        assert_eq!(w.timeout_ms, None);
        let s: snapshot::CreateSnapshot = decode(json!({ "collection": "c", "name": "s" }));
        assert!(s.description.is_empty() && s.labels.is_empty());
        let _: snapshot::ListSnapshots = decode(json!({}));
        let _: restore::ListRestores = decode(json!({}));
        let w: restore::WaitRestore = decode(json!({ "job": 1 }));
        assert_eq!(w.timeout_ms, None);
        let g: gc::Run = decode(json!({}));
        assert_eq!(g, gc::Run::default());
        let _: gc::Status = decode(json!({}));
        let i: layout::CreateIndex =
            decode(json!({ "collection": "c", "name": "i", "field": "f" }));
        assert!(i.params_json.is_empty());
        let f: layout::Flush = decode(json!({ "collection": "c", "segment_id": 1, "files": [] }));
        assert_eq!((f.partition.as_str(), f.shard, f.rows), ("_default", 0, 0));
        let c: layout::Compact = decode(
            json!({ "collection": "c", "segment_ids": [1], "into_segment_id": 2, "files": [] }),
        );
        assert_eq!(c.rows, 0);
    }
}
