//! External collections: their source and spec, fragments, and the external update task.
//!
//! An external collection mirrors a prefix of Parquet files (its **source**) as segments. A
//! refresh is run by an **external update task** (`external-{task_id}` stream). The collection
//! stream is the authority on tasks: it records which task is active (at most one per
//! collection, enforced on the collection's fence), and every task's end (committed,
//! superseded, cancelled, failed). The task stream only follows, for progress and status.
//!
//! **Bulk data lives in the store, not in events.** A refresh of 10k fragments cannot fit one
//! 64 KiB event, so each external segment's fragment mapping (which fragment keys, with size,
//! e-tag / last-modified and rows, it was built from) is written to a *fragment list* object
//! of the node's own store, `data/{collection_id}/external/{segment_id}.fragments.json`, and
//! that object is the segment's one file (key, size, crc32c) in the log. So snapshots protect
//! and list it, GC reclaims it once the segment is dropped and no snapshot holds it, and the
//! source fragments themselves never appear as files in the log: GC cannot mistake them for
//! ours. The one refresh commit event (`ExternalRefreshed`) carries dropped segment ids and
//! added segment records, bounded by [`MAX_ADDED_SEGMENTS_PER_REFRESH`] and
//! [`MAX_EXTERNAL_SEGMENTS`] so it stays far below 64 KiB; kept segments are implicit (every
//! live external segment not dropped) and only counted.

use super::claim::{ClaimCommand, ClaimEvent};
use super::{CollectionId, SegmentId};
use crate::codec::DomainEvent;
use crate::error::Error;
use crate::validate::validate_object_key;
use serde::{Deserialize, Serialize};

pub type TaskId = u64;

/// Longest source URL.
pub const MAX_SOURCE_BYTES: usize = 1024;
/// Largest spec document.
pub const MAX_SPEC_BYTES: usize = 16 * 1024;
/// Most columns a spec may list.
pub const MAX_COLUMNS: usize = 1024;
/// Rows per segment when the spec does not say.
pub const DEFAULT_TARGET_ROWS_PER_SEGMENT: u64 = 1_000_000;
/// Largest target rows per segment.
pub const MAX_TARGET_ROWS_PER_SEGMENT: u64 = 1 << 40;
/// Most segments one refresh adds. When the changed and new fragments need more segments at
/// the target size, they are packed into this many (segments grow beyond the target), so the
/// commit event stays bounded (128 records of about 200 bytes).
pub const MAX_ADDED_SEGMENTS_PER_REFRESH: usize = 128;
/// Most live external segments per collection; bounds the dropped list of a refresh (ids of
/// at most 9 bytes each: 4096 of them are 36 KiB).
pub const MAX_EXTERNAL_SEGMENTS: usize = 4096;
/// Most fragments one segment is built from (bounds one fragment list object).
pub const MAX_FRAGMENTS_PER_SEGMENT: usize = 65_536;
/// Longest failure reason kept in an event.
pub const MAX_REASON_BYTES: usize = 1024;
/// How many finished tasks a collection remembers the outcome of (for reconciling task
/// streams after a crash; the task a crash interrupts is always among the last few).
pub const RECENT_TASK_OUTCOMES: usize = 64;

pub fn external_task_stream(id: TaskId) -> String {
    format!("external-{id}")
}

/// Where the fragment list of an external segment lives in the node's own store. Under the
/// collection's data prefix, so a list written by a task that never committed is an orphan
/// GC reclaims after its safety window.
pub fn fragment_list_key(collection_id: CollectionId, segment_id: SegmentId) -> String {
    format!("data/{collection_id}/external/{segment_id}.fragments.json")
}

/// Is `key` a fragment list object (the one file of an external segment)?
pub fn is_fragment_list_key(key: &str) -> bool {
    let mut parts = key.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("data"), Some(_), Some("external"), Some(f), None) if f.ends_with(".fragments.json")
    )
}

/// The file format of the source's fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalFormat {
    Parquet,
}

/// How fragments become segments. Parsed from the user's JSON (`--external-spec FILE`):
/// `{"format": "parquet", "columns": ["a", "b"], "target_rows_per_segment": 1000000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSpec {
    pub format: ExternalFormat,
    /// Columns to mirror; empty means all. Each must exist in every fragment's schema.
    #[serde(default)]
    pub columns: Vec<String>,
    pub target_rows_per_segment: u64,
}

impl ExternalSpec {
    /// Parse and check the user's spec document. Unknown fields are refused (a typo must not
    /// silently mean "default").
    pub fn parse_json(text: &str) -> Result<ExternalSpec, Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            format: Option<serde_json::Value>,
            #[serde(default)]
            columns: Option<Vec<String>>,
            #[serde(default)]
            target_rows_per_segment: Option<u64>,
        }
        if text.len() > MAX_SPEC_BYTES {
            return Err(Error::invalid_argument(format!(
                "external spec is {} bytes; at most {MAX_SPEC_BYTES} are allowed",
                text.len()
            )));
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            Error::invalid_argument(format!(
                "external spec is not valid JSON of the form {{\"format\": \"parquet\", \"columns\": [...], \"target_rows_per_segment\": N}}: {e}"
            ))
        })?;
        let format = match raw.format {
            Some(serde_json::Value::String(f)) if f == "parquet" => ExternalFormat::Parquet,
            Some(serde_json::Value::String(f)) => {
                return Err(Error::invalid_argument(format!(
                    "external spec format '{}' is unknown; supported formats: parquet",
                    f.escape_debug()
                )));
            }
            Some(other) => {
                return Err(Error::invalid_argument(format!(
                    "external spec format must be a string such as \"parquet\", got {other}"
                )));
            }
            None => {
                return Err(Error::invalid_argument(
                    "external spec must name its format, e.g. {\"format\": \"parquet\"}",
                ));
            }
        };
        let spec = ExternalSpec {
            format,
            columns: raw.columns.unwrap_or_default(),
            target_rows_per_segment: raw
                .target_rows_per_segment
                .unwrap_or(DEFAULT_TARGET_ROWS_PER_SEGMENT),
        };
        spec.check()?;
        Ok(spec)
    }

    /// The bounds every spec must keep (also checked by the decider).
    pub fn check(&self) -> Result<(), Error> {
        if self.target_rows_per_segment == 0
            || self.target_rows_per_segment > MAX_TARGET_ROWS_PER_SEGMENT
        {
            return Err(Error::invalid_argument(format!(
                "external spec target_rows_per_segment must be 1..={MAX_TARGET_ROWS_PER_SEGMENT}, got {}",
                self.target_rows_per_segment
            )));
        }
        if self.columns.len() > MAX_COLUMNS {
            return Err(Error::invalid_argument(format!(
                "external spec lists {} columns; at most {MAX_COLUMNS} are allowed",
                self.columns.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.columns {
            if c.is_empty() || c.len() > 255 || c.chars().any(char::is_control) {
                return Err(Error::invalid_argument(format!(
                    "external spec column '{}' must be 1..=255 bytes without control characters",
                    c.escape_debug()
                )));
            }
            if !seen.insert(c.as_str()) {
                return Err(Error::invalid_argument(format!(
                    "external spec lists column '{c}' twice"
                )));
            }
        }
        Ok(())
    }

    /// The spec as the JSON a user would write (for `describe` and `snapshot.json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "format": "parquet",
            "columns": self.columns,
            "target_rows_per_segment": self.target_rows_per_segment,
        })
    }
}

/// Where a source lives, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLocation {
    /// `file:///abs/dir/`: a directory of the local filesystem. `dir` is absolute, without
    /// the trailing `/`.
    Local { dir: String },
    /// `s3://bucket/prefix/`: a bucket of its own, read-only to snapvault. `prefix` has no
    /// leading or trailing `/` and may be empty.
    S3 { bucket: String, prefix: String },
    /// `lake/t1/`: a prefix of the node's own store. `prefix` has no trailing `/`.
    Store { prefix: String },
}

impl SourceLocation {
    /// The prefix of the node's own store this source covers, if it is one: GC must never
    /// touch what is under it.
    pub fn own_store_prefix(&self) -> Option<String> {
        match self {
            SourceLocation::Store { prefix } => Some(format!("{prefix}/")),
            _ => None,
        }
    }
}

/// Prefixes of the node's own store that belong to snapvault: a source may not overlap them.
/// (`data/` holds every collection's files, which GC reclaims; a source there would have to
/// protect them from GC wholesale, `events/` holds the publisher's checkpoint.)
const RESERVED_PREFIXES: [&str; 4] = ["snapshots", "gc", "data", "events"];

/// Parse and normalise a source URL. Returns the normalised URL (always ending in `/`) and
/// its location. Refused (`invalid_argument`) unless it is a clean prefix: a known scheme,
/// no `.`/`..`/empty segment, no query or fragment, no control character.
pub fn parse_source(url: &str) -> Result<(String, SourceLocation), Error> {
    let shown = url.escape_debug().to_string();
    if url.is_empty() {
        return Err(Error::invalid_argument("external source must not be empty"));
    }
    if url.len() > MAX_SOURCE_BYTES {
        return Err(Error::invalid_argument(format!(
            "external source is {} bytes; at most {MAX_SOURCE_BYTES} are allowed",
            url.len()
        )));
    }
    if url.contains(['?', '#']) {
        return Err(Error::invalid_argument(format!(
            "external source '{shown}' must be a clean prefix: no query ('?') or fragment ('#')"
        )));
    }
    let clean = |what: &str, path: &str| -> Result<(), Error> {
        validate_object_key(what, path).map_err(|e| {
            Error::invalid_argument(format!(
                "external source '{shown}' is not a clean prefix: {}",
                e.message
            ))
        })
    };
    if let Some(rest) = url.strip_prefix("file://") {
        let Some(path) = rest.strip_prefix('/') else {
            return Err(Error::invalid_argument(format!(
                "external source '{shown}' must be an absolute path: file:///abs/dir/"
            )));
        };
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Err(Error::invalid_argument(format!(
                "external source '{shown}' must name a directory below '/'"
            )));
        }
        clean("path", path)?;
        let normal = format!("file:///{path}/");
        return Ok((
            normal,
            SourceLocation::Local {
                dir: format!("/{path}"),
            },
        ));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(Error::invalid_argument(format!(
                "external source '{shown}' has an invalid bucket name '{}': 3-63 characters of a-z, 0-9, '-' and '.'",
                bucket.escape_debug()
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            clean("prefix", prefix)?;
        }
        let normal = if prefix.is_empty() {
            format!("s3://{bucket}/")
        } else {
            format!("s3://{bucket}/{prefix}/")
        };
        return Ok((
            normal,
            SourceLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            },
        ));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(Error::invalid_argument(format!(
            "external source '{shown}' has the unknown scheme '{}'; use file:///abs/dir/, s3://bucket/prefix/ or a prefix of the node's store",
            scheme.escape_debug()
        )));
    }
    let prefix = url.trim_end_matches('/');
    if prefix.is_empty() {
        return Err(Error::invalid_argument(format!(
            "external source '{shown}' must be a prefix such as lake/table/, not the whole store"
        )));
    }
    clean("prefix", prefix)?;
    let first = prefix.split('/').next().unwrap_or_default();
    if RESERVED_PREFIXES.contains(&first) {
        return Err(Error::invalid_argument(format!(
            "external source '{shown}' lies under '{first}/', which belongs to snapvault"
        )));
    }
    Ok((
        format!("{prefix}/"),
        SourceLocation::Store {
            prefix: prefix.to_string(),
        },
    ))
}

/// The external part of a collection: where its data is and how it becomes segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalConfig {
    /// The normalised source URL (see [`parse_source`]).
    pub source: String,
    pub spec: ExternalSpec,
}

impl ExternalConfig {
    pub fn check(&self) -> Result<SourceLocation, Error> {
        self.spec.check()?;
        let (normal, location) = parse_source(&self.source)?;
        if normal != self.source {
            return Err(Error::invalid_argument(format!(
                "external source '{}' is not normalised (expected '{normal}')",
                self.source
            )));
        }
        Ok(location)
    }

    /// What decides the content of a segment: the source and which columns it mirrors (the
    /// target size only decides how new fragments are packed). A segment built under another
    /// fingerprint is never kept. FNV-1a 64, stable across builds and platforms.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            // A separator no UTF-8 text contains, so ("ab","c") and ("a","bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        eat(self.source.as_bytes());
        eat(b"parquet");
        for c in &self.spec.columns {
            eat(c.as_bytes());
        }
        h
    }
}

/// One fragment of the source: a Parquet file, identified by its key (relative to the
/// source prefix) and version (size, e-tag, last-modified), with the rows its footer says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FragmentRef {
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub last_modified_ms: u64,
    pub rows: u64,
}

impl FragmentRef {
    /// Same object version (rows are read from it, so they follow)?
    pub fn same_version(&self, key: &str, size: u64, e_tag: &Option<String>, lm: u64) -> bool {
        self.key == key && self.size == size && &self.e_tag == e_tag && self.last_modified_ms == lm
    }
}

/// The on-store fragment list of one external segment (its one file). Deterministic JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentList {
    pub format_version: u32,
    pub collection_id: CollectionId,
    pub segment_id: SegmentId,
    /// The source the keys are relative to.
    pub source: String,
    /// [`ExternalConfig::fingerprint`] of the config the segment was built under.
    pub fingerprint: u64,
    pub fragments: Vec<FragmentRef>,
}

pub const FRAGMENT_LIST_FORMAT: u32 = 1;

impl FragmentList {
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self)
            .map_err(|e| Error::internal(format!("cannot encode a fragment list: {e}")))
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<FragmentList, Error> {
        #[derive(Deserialize)]
        struct Probe {
            format_version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| Error::internal(format!("fragment list '{key}' is malformed: {e}")))?;
        if probe.format_version > FRAGMENT_LIST_FORMAT {
            return Err(Error::failed_precondition(format!(
                "fragment list '{key}' has format version {}; this build reads up to {FRAGMENT_LIST_FORMAT}: upgrade snapvault",
                probe.format_version
            )));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| Error::internal(format!("fragment list '{key}' is malformed: {e}")))
    }
}

/// How a task ended, as the collection stream records it (the authority).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEnd {
    Committed,
    /// A change of source or spec aborted it; it committed nothing.
    Superseded,
    Cancelled,
    Failed {
        key: String,
        reason: String,
    },
}

impl TaskEnd {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskEnd::Committed => "committed",
            TaskEnd::Superseded => "superseded",
            TaskEnd::Cancelled => "cancelled",
            TaskEnd::Failed { .. } => "failed",
        }
    }
}

/// Clip a reason so an event stays small.
pub fn clip_reason(text: &str) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text.to_string();
    }
    let mut cut = MAX_REASON_BYTES - 3;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

// ---------------------------------------------------------------------------------------------
// The external update task entity (`external-{task_id}`)
// ---------------------------------------------------------------------------------------------

/// What names a task, fixed at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIdentity {
    pub task_id: TaskId,
    pub collection_id: CollectionId,
    pub collection_name: String,
    /// The collection's external config generation the task runs for.
    pub generation: u64,
    pub config: ExternalConfig,
}

/// Where a running task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPhase {
    Listing,
    ReadingFooters,
    Writing,
    Committing,
}

impl TaskPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Listing => "listing",
            TaskPhase::ReadingFooters => "reading_footers",
            TaskPhase::Writing => "writing",
            TaskPhase::Committing => "committing",
        }
    }
}

/// Counters of a task's work, recorded in batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub fragments_listed: u64,
    pub fragments_unchanged: u64,
    pub footers_total: u64,
    pub footers_read: u64,
}

/// What a committed refresh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshCounts {
    pub kept: u64,
    pub dropped: u64,
    pub added: u64,
    /// Fragments and rows of the collection after the refresh.
    pub fragments: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    Committed { counts: RefreshCounts },
    Superseded { reason: String },
    Cancelled,
    Failed { key: String, reason: String },
}

impl TaskOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskOutcome::Committed { .. } => "committed",
            TaskOutcome::Superseded { .. } => "superseded",
            TaskOutcome::Cancelled => "cancelled",
            TaskOutcome::Failed { .. } => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExternalTaskCommand {
    Start {
        identity: TaskIdentity,
    },
    /// Record progress, under the claim of epoch `epoch` (a stale holder is refused: it
    /// learns it lost the task and stops).
    Progress {
        epoch: u64,
        phase: TaskPhase,
        progress: TaskProgress,
    },
    /// Record the end the collection decided (idempotent; from any node: cancel and alter
    /// end tasks run elsewhere). Ends the task's claim.
    Finish {
        outcome: TaskOutcome,
    },
    /// Claim, renew or release the running task (design §10).
    Claim(ClaimCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExternalTaskEvent {
    Started {
        identity: TaskIdentity,
        started_ms: u64,
    },
    Progressed {
        phase: TaskPhase,
        progress: TaskProgress,
        at_ms: u64,
    },
    Finished {
        outcome: TaskOutcome,
        finished_ms: u64,
    },
    Claim(ClaimEvent),
}

impl DomainEvent for ExternalTaskEvent {
    const SCHEMA_VERSION: u16 = 1;
    fn event_type(&self) -> &'static str {
        match self {
            ExternalTaskEvent::Started { .. } => "Started",
            ExternalTaskEvent::Progressed { .. } => "Progressed",
            ExternalTaskEvent::Finished { .. } => "Finished",
            ExternalTaskEvent::Claim(c) => c.event_type(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn sources_are_normalised_or_refused() {
        let ok = [
            ("file:///data/lake", "file:///data/lake/"),
            ("file:///data/lake/", "file:///data/lake/"),
            ("s3://my-bucket/t/1/", "s3://my-bucket/t/1/"),
            ("s3://my-bucket", "s3://my-bucket/"),
            ("lake/t1", "lake/t1/"),
            ("database/t1/", "database/t1/"),
        ];
        for (input, normal) in ok {
            assert_eq!(
                parse_source(input).map(|x| x.0).ok(),
                Some(normal.into()),
                "{input}"
            );
        }
        for bad in [
            "",
            "file://relative/dir/",
            "file:///",
            "file:///a/../b/",
            "s3://B/x/",
            "s3://ab/",
            "s3://bucket/a//b/",
            "http://x/y/",
            "/abs/dir/",
            "../up/",
            "a//b/",
            "lake/t1/?x=1",
            "snapshots/1/",
            "gc/",
            "data/",
            "data/1/",
            "data/lake/t1/",
            "events/",
            "/",
        ] {
            let e = parse_source(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}: {e}");
        }
    }

    #[test]
    fn specs_parse_with_defaults_and_refuse_nonsense() {
        let s = ExternalSpec::parse_json(r#"{"format":"parquet"}"#).unwrap();
        assert_eq!(s.target_rows_per_segment, DEFAULT_TARGET_ROWS_PER_SEGMENT);
        assert!(s.columns.is_empty());
        let s = ExternalSpec::parse_json(
            r#"{"format":"parquet","columns":["a","b"],"target_rows_per_segment":10}"#,
        )
        .unwrap();
        assert_eq!(s.columns, vec!["a", "b"]);
        for (bad, needle) in [
            ("not json", "not valid JSON"),
            (r#"{"format":"csv"}"#, "unknown"),
            (r#"{"format":7}"#, "must be a string"),
            (r#"{}"#, "must name its format"),
            (
                r#"{"format":"parquet","target_rows_per_segment":0}"#,
                "1..=",
            ),
            (r#"{"format":"parquet","colums":["a"]}"#, "unknown field"),
            (r#"{"format":"parquet","columns":["a","a"]}"#, "twice"),
        ] {
            let e = ExternalSpec::parse_json(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn fingerprint_follows_source_and_columns_not_target() {
        let spec = ExternalSpec::parse_json(r#"{"format":"parquet"}"#).unwrap();
        let a = ExternalConfig {
            source: "lake/a/".into(),
            spec: spec.clone(),
        };
        let mut b = a.clone();
        b.spec.target_rows_per_segment = 7;
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.spec.columns = vec!["x".into()];
        assert_ne!(a.fingerprint(), b.fingerprint());
        let c = ExternalConfig {
            source: "lake/b/".into(),
            spec,
        };
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn fragment_list_keys() {
        assert_eq!(fragment_list_key(4, 9), "data/4/external/9.fragments.json");
        assert!(is_fragment_list_key(&fragment_list_key(4, 9)));
        assert!(!is_fragment_list_key("data/4/1/9/insert_log/0"));
    }
}
