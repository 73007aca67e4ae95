//! Reading a fragment's row count from its Parquet footer: at most two ranged reads (one
//! suffix that usually holds the whole footer), never the data pages.

use crate::external::source::{OpenSource, SourceError};
use object_store::ObjectStoreExt;
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use snapvault_events::Error;

/// Bytes read from the end of a file at once: the footer of a typical fragment fits.
const SUFFIX_BYTES: u64 = 64 * 1024;
/// Largest footer accepted (a larger one is corrupt or absurd).
const MAX_FOOTER_BYTES: u64 = 64 * 1024 * 1024;

fn corrupt(key: &str, reason: impl Into<String>) -> SourceError {
    SourceError::Permanent {
        key: key.to_string(),
        reason: format!("unreadable Parquet: {}", reason.into()),
    }
}

fn store_error(key: &str, e: object_store::Error) -> SourceError {
    // A fragment that vanished between the listing and the read: the source is changing
    // under the task; list again (transient).
    SourceError::Transient(Error::unavailable(format!(
        "reading the footer of '{key}' failed: {e}"
    )))
}

/// Rows of fragment `key` (`size` bytes, from the listing). Checks that every column in
/// `columns` is a top-level field of its schema.
pub async fn read_rows(
    source: &OpenSource,
    key: &str,
    size: u64,
    columns: &[String],
) -> Result<u64, SourceError> {
    if size < 12 {
        return Err(corrupt(
            key,
            format!("{size} bytes is too small for a Parquet file"),
        ));
    }
    let path = source.path(key);
    let suffix = size.min(SUFFIX_BYTES);
    let tail = source
        .store
        .get_range(&path, size - suffix..size)
        .await
        .map_err(|e| store_error(key, e))?;
    if tail.len() as u64 != suffix {
        return Err(SourceError::Transient(Error::unavailable(format!(
            "'{key}' changed while its footer was read"
        ))));
    }
    let last8: [u8; 8] = tail[tail.len() - 8..]
        .try_into()
        .map_err(|_| corrupt(key, "short footer"))?;
    let footer = FooterTail::try_new(&last8).map_err(|e| corrupt(key, e.to_string()))?;
    if footer.is_encrypted_footer() {
        return Err(corrupt(key, "encrypted footers are not supported"));
    }
    let len = footer.metadata_length() as u64;
    if len > MAX_FOOTER_BYTES || len + 8 > size - 4 {
        return Err(corrupt(
            key,
            format!("footer length {len} does not fit the file"),
        ));
    }
    let metadata = if len + 8 <= suffix {
        let start = (suffix - 8 - len) as usize;
        ParquetMetaDataReader::decode_metadata(&tail[start..tail.len() - 8])
    } else {
        let bytes = source
            .store
            .get_range(&path, size - 8 - len..size - 8)
            .await
            .map_err(|e| store_error(key, e))?;
        ParquetMetaDataReader::decode_metadata(&bytes)
    }
    .map_err(|e| corrupt(key, e.to_string()))?;
    let rows = metadata.file_metadata().num_rows();
    let rows = u64::try_from(rows).map_err(|_| corrupt(key, format!("{rows} rows")))?;
    if !columns.is_empty() {
        let schema = metadata.file_metadata().schema_descr();
        let fields = schema.root_schema().get_fields();
        for c in columns {
            if !fields.iter().any(|f| f.name() == c) {
                return Err(SourceError::Permanent {
                    key: key.to_string(),
                    reason: format!("the spec's column '{c}' is not in this fragment's schema"),
                });
            }
        }
    }
    Ok(rows)
}
