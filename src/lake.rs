//! The stand-in data lake: real Parquet files written with the `parquet` crate, for the
//! tests, the benchmark, the simulator and the demo of external collections.
//!
//! Each file has two columns, `id` (int64) and `value` (int64), in one row group; the bytes
//! depend only on `(seed, rows)`, so a rewrite with another seed or row count is a new
//! version of the fragment.

use bytes::Bytes;
use parquet::data_type::Int64Type;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use snapvault_events::Error;
use std::sync::Arc;

/// The schema of every lake file: its top-level columns are `id` and `value`.
pub const LAKE_SCHEMA: &str = "message lake { required int64 id; required int64 value; }";

/// A Parquet file of `rows` rows.
pub fn parquet_file(seed: u64, rows: u64) -> Result<Bytes, Error> {
    let bad = |e: parquet::errors::ParquetError| Error::internal(format!("writing Parquet: {e}"));
    let schema = Arc::new(parse_message_type(LAKE_SCHEMA).map_err(bad)?);
    let props = Arc::new(WriterProperties::builder().build());
    let mut out = Vec::new();
    {
        let mut writer = SerializedFileWriter::new(&mut out, schema, props).map_err(bad)?;
        let mut group = writer.next_row_group().map_err(bad)?;
        let ids: Vec<i64> = (0..rows as i64).collect();
        let values: Vec<i64> = ids
            .iter()
            .map(|i| (*i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) as i64)
            .collect();
        for column in [&ids, &values] {
            let Some(mut col) = group.next_column().map_err(bad)? else {
                return Err(Error::internal(
                    "lake schema has fewer columns than written",
                ));
            };
            col.typed::<Int64Type>()
                .write_batch(column, None, None)
                .map_err(bad)?;
            col.close().map_err(bad)?;
        }
        group.close().map_err(bad)?;
        writer.close().map_err(bad)?;
    }
    Ok(Bytes::from(out))
}

/// Write a Parquet file of `rows` rows at `path` of the local filesystem (parents created).
pub fn write_local(path: &std::path::Path, seed: u64, rows: u64) -> Result<(), Error> {
    let bytes = parquet_file(seed, rows)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(path, &bytes)
        .map_err(|e| Error::unavailable(format!("cannot write {}: {e}", path.display())))
}
