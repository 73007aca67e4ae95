//! Opening and listing an external source (the effect side; read-only, never a write).
//!
//! A source is opened as an `ObjectStore` plus the prefix under it: a local directory is a
//! `LocalFileSystem` rooted there; a prefix of the node's own store is that store; `s3://`
//! needs S3 credentials the embedding database hands in through [`SourceStores`].
//!
//! Fragments are the `*.parquet` objects under the prefix (any depth), except those with a
//! path segment starting with `_` or `.` (Hive/Spark conventions: `_SUCCESS`, `_temporary/`,
//! `.crc` files, files being written).

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use snapvault_events::Error;
use snapvault_events::domain::external::SourceLocation;
use std::sync::Arc;

/// Most fragments one source may hold (the task keeps their list in memory).
pub const MAX_FRAGMENTS_PER_SOURCE: usize = 1_000_000;

/// One object of the listing: a fragment's key (relative to the source) and version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub last_modified_ms: u64,
}

/// A source opened for reading.
#[derive(Clone)]
pub struct OpenSource {
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside `store` (None: the whole store is the source).
    pub prefix: Option<Path>,
}

impl OpenSource {
    /// The store path of a fragment key.
    pub fn path(&self, key: &str) -> Path {
        match &self.prefix {
            Some(p) => Path::from(format!("{p}/{key}")),
            None => Path::from(key),
        }
    }
}

/// Why a source step failed: permanent (the task fails, naming the key) or transient (the
/// task retries, a bounded number of times, with backoff).
#[derive(Debug, Clone)]
pub enum SourceError {
    Permanent { key: String, reason: String },
    Transient(Error),
}

impl From<Error> for SourceError {
    fn from(e: Error) -> Self {
        use snapvault_events::ErrorCode as C;
        match e.code {
            C::Unavailable | C::Conflict => SourceError::Transient(e),
            _ => SourceError::Permanent {
                key: String::new(),
                reason: e.message,
            },
        }
    }
}

/// How a node opens sources. The default opens local directories and prefixes of the node's
/// own store; an embedding database with S3 credentials supplies its own for `s3://`.
pub trait SourceStores: Send + Sync + 'static {
    fn open(&self, location: &SourceLocation) -> Result<OpenSource, SourceError>;
}

pub struct DefaultSources {
    pub own: Arc<dyn ObjectStore>,
}

impl SourceStores for DefaultSources {
    fn open(&self, location: &SourceLocation) -> Result<OpenSource, SourceError> {
        match location {
            SourceLocation::Local { dir } => {
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(SourceError::Permanent {
                            key: dir.clone(),
                            reason: "the source is not a directory".into(),
                        });
                    }
                    Err(e) => {
                        return Err(SourceError::Permanent {
                            key: dir.clone(),
                            reason: format!("the source prefix is missing: {e}"),
                        });
                    }
                }
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(
                    |e| SourceError::Permanent {
                        key: dir.clone(),
                        reason: format!("cannot open the source directory: {e}"),
                    },
                )?;
                Ok(OpenSource {
                    store: Arc::new(fs),
                    prefix: None,
                })
            }
            SourceLocation::Store { prefix } => Ok(OpenSource {
                store: self.own.clone(),
                prefix: Some(Path::from(prefix.as_str())),
            }),
            SourceLocation::S3 { bucket, prefix } => Err(SourceError::Permanent {
                key: format!("s3://{bucket}/{prefix}"),
                reason: "this node has no S3 credentials for external sources; start it with an S3-capable SourceStores, or use file:/// or a prefix of the node's store".into(),
            }),
        }
    }
}

/// Is this relative key a fragment?
pub fn is_fragment(key: &str) -> bool {
    key.to_ascii_lowercase().ends_with(".parquet")
        && key
            .split('/')
            .all(|s| !s.is_empty() && !s.starts_with(['_', '.']))
}

/// List the fragments of an opened source, sorted by key.
pub async fn list_fragments(source: &OpenSource) -> Result<Vec<Listed>, SourceError> {
    let prefix_len = source.prefix.as_ref().map_or(0, |p| p.as_ref().len() + 1);
    let mut out = Vec::new();
    let mut stream = source.store.list(source.prefix.as_ref());
    while let Some(item) = stream.next().await {
        let meta = item.map_err(|e| {
            SourceError::Transient(Error::unavailable(format!(
                "listing the source failed: {e}"
            )))
        })?;
        let full = meta.location.as_ref();
        let Some(key) = full.get(prefix_len..) else {
            continue;
        };
        if !is_fragment(key) {
            continue;
        }
        if out.len() >= MAX_FRAGMENTS_PER_SOURCE {
            return Err(SourceError::Permanent {
                key: String::new(),
                reason: format!("the source holds more than {MAX_FRAGMENTS_PER_SOURCE} fragments"),
            });
        }
        out.push(Listed {
            key: key.to_string(),
            size: meta.size,
            e_tag: meta.e_tag,
            last_modified_ms: u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
        });
    }
    out.sort();
    out.dedup_by(|a, b| a.key == b.key);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_follow_hive_conventions() {
        assert!(is_fragment("a.parquet"));
        assert!(is_fragment("year=2024/part-0.PARQUET"));
        for no in [
            "_SUCCESS",
            "a.parquet.crc",
            ".a.parquet",
            "_temporary/x.parquet",
            "x.csv",
        ] {
            assert!(!is_fragment(no), "{no}");
        }
    }
}
