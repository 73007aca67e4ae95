//! What the host database does to the object store: write a segment's files, and merge
//! segments' files for a compaction. snapvault itself never writes host data; this module is
//! the stand-in host used by the CLI (`ingest`, `compact`), tests, benchmarks and the simulator.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use snapvault_events::Error;
use snapvault_events::domain::{CollectionId, FileRef, PartitionId, SegmentId};

/// How many object-store writes the host keeps in flight.
pub const HOST_IO_PARALLELISM: usize = 8;

/// The key the host gives file `index` of a segment, Milvus style.
pub fn segment_file_key(
    collection: CollectionId,
    partition: PartitionId,
    segment: SegmentId,
    kind: &str,
    index: usize,
) -> String {
    format!("data/{collection}/{partition}/{segment}/{kind}/{index}")
}

/// Deterministic pseudo-random bytes (SplitMix64) so tests can regenerate what was written.
pub fn file_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 8);
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    while out.len() < size {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Write one object and describe it.
pub async fn put_file(store: &dyn ObjectStore, key: &str, data: Bytes) -> Result<FileRef, Error> {
    let crc32c = crc32c::crc32c(&data);
    let size = data.len() as u64;
    store
        .put(&Path::from(key), PutPayload::from_bytes(data))
        .await
        .map_err(|e| Error::unavailable(format!("cannot write object '{key}': {e}")))?;
    Ok(FileRef {
        key: key.to_string(),
        size,
        crc32c,
    })
}

/// Write `files` insert-log files of `size` bytes each for a new segment, in parallel.
pub async fn write_segment_files(
    store: &dyn ObjectStore,
    collection: CollectionId,
    partition: PartitionId,
    segment: SegmentId,
    files: usize,
    size: usize,
) -> Result<Vec<FileRef>, Error> {
    futures::stream::iter(0..files)
        .map(|i| async move {
            let key = segment_file_key(collection, partition, segment, "insert_log", i);
            let data = Bytes::from(file_bytes(segment.wrapping_mul(1_000_003) ^ i as u64, size));
            put_file(store, &key, data).await
        })
        .buffered(HOST_IO_PARALLELISM)
        .try_collect()
        .await
}

/// Read a whole object.
pub async fn read_file(store: &dyn ObjectStore, key: &str) -> Result<Bytes, Error> {
    let got = store.get(&Path::from(key)).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            Error::not_found(format!("object '{key}' not found"))
        }
        e => Error::unavailable(format!("cannot read object '{key}': {e}")),
    })?;
    got.bytes()
        .await
        .map_err(|e| Error::unavailable(format!("cannot read object '{key}': {e}")))
}

/// Write the merged files of a compaction: file `i` of the new segment is the concatenation of
/// file `i` of each source segment (sources with fewer files contribute nothing to it).
pub async fn write_merged_files(
    store: &dyn ObjectStore,
    collection: CollectionId,
    partition: PartitionId,
    into: SegmentId,
    sources: &[Vec<FileRef>],
) -> Result<Vec<FileRef>, Error> {
    let width = sources.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(width);
    for i in 0..width {
        let mut merged = Vec::new();
        for files in sources {
            if let Some(f) = files.get(i) {
                merged.extend_from_slice(&read_file(store, &f.key).await?);
            }
        }
        let key = segment_file_key(collection, partition, into, "insert_log", i);
        out.push(put_file(store, &key, Bytes::from(merged)).await?);
    }
    Ok(out)
}
