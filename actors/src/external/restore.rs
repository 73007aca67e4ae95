//! What a restore of an external collection needs (the restore job itself lives with the
//! restore entity).
//!
//! A snapshot of an external collection has `snapshot.json` format version 2 with an
//! `external` section (source, spec, generation) and manifests whose every segment has one
//! file: its fragment list. Restoring it means: create the target collection external with the
//! same config, then give each restored segment a fragment list of its own under the target
//! (same fragments, no data copied: the fragments stay in the user's source) and commit the
//! segments. [`snapshot_fragment_lists`] reads and checks the lists of a snapshot's segments;
//! [`relocate_fragment_list`] makes the target's list object for a new segment id.

use crate::snapshot::manifest::SnapshotMetadata;
use crate::snapshot::worker::get_recorded;
use object_store::ObjectStore;
use snapvault_events::Error;
use snapvault_events::domain::collection::SegmentRecord;
use snapvault_events::domain::external::{
    ExternalConfig, FragmentList, fragment_list_key, is_fragment_list_key,
};
use snapvault_events::domain::{CollectionId, FileRef, SegmentId};

/// The external config a restore recreates the collection with, if the snapshot is of an
/// external collection.
pub fn snapshot_external_config(meta: &SnapshotMetadata) -> Option<ExternalConfig> {
    meta.external.as_ref().map(|e| ExternalConfig {
        source: e.source.clone(),
        spec: e.spec.clone(),
    })
}

/// Read each segment's fragment list (checked against the size and crc32c the manifest
/// recorded). `segments` are the decoded manifest records of the snapshot.
pub async fn snapshot_fragment_lists(
    store: &dyn ObjectStore,
    segments: &[SegmentRecord],
) -> Result<Vec<(SegmentRecord, FragmentList)>, Error> {
    let mut out = Vec::with_capacity(segments.len());
    for seg in segments {
        let [file] = seg.files.as_slice() else {
            return Err(Error::invalid_argument(format!(
                "segment {} of an external snapshot must have exactly one file (its fragment list)",
                seg.segment_id
            )));
        };
        if !is_fragment_list_key(&file.key) {
            return Err(Error::invalid_argument(format!(
                "segment {}'s file '{}' is not a fragment list",
                seg.segment_id, file.key
            )));
        }
        let bytes = get_recorded(store, &file.key, "fragment list").await?;
        if bytes.len() as u64 != file.size || crc32c::crc32c(&bytes) != file.crc32c {
            return Err(Error::internal(format!(
                "fragment list '{}' does not match the size and crc32c in the manifest",
                file.key
            )));
        }
        out.push((seg.clone(), FragmentList::decode(&file.key, &bytes)?));
    }
    Ok(out)
}

/// The fragment list of restored segment `segment_id` of `collection_id`: the same fragments,
/// at the target's key. Returns the bytes to put and the segment's file reference.
pub fn relocate_fragment_list(
    list: &FragmentList,
    collection_id: CollectionId,
    segment_id: SegmentId,
) -> Result<(Vec<u8>, FileRef), Error> {
    let moved = FragmentList {
        collection_id,
        segment_id,
        ..list.clone()
    };
    let bytes = moved.encode()?;
    let file = FileRef {
        key: fragment_list_key(collection_id, segment_id),
        size: bytes.len() as u64,
        crc32c: crc32c::crc32c(&bytes),
    };
    Ok((bytes, file))
}
