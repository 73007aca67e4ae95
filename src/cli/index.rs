//! `index create | drop | build`, `partition create | drop`, `segment drop`: the smaller
//! changes of a collection's layout.

use super::output::bytes;
use super::{Ctx, IndexCmd, PartitionCmd, SegmentCmd, parse_segment_id};
use bytes::Bytes;
use serde::Serialize;
use snapvault::{Client, Error, host};
use snapvault_events::domain::FileRef;
use snapvault_events::domain::collection::BuildIndex;

/// Smallest and largest index file `index build` writes: a quarter of the segment's data,
/// clamped, which is the order of magnitude of a real vector or scalar index.
const MIN_INDEX_FILE_BYTES: u64 = 1024;
const MAX_INDEX_FILE_BYTES: u64 = 64 << 20;

#[derive(Serialize)]
struct Done<'a> {
    collection: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment: Option<u64>,
    action: &'static str,
}

pub async fn partition(ctx: &Ctx, cmd: PartitionCmd) -> Result<(), Error> {
    let (collection, name, action) = match &cmd {
        PartitionCmd::Create { collection, name } => {
            ctx.client.create_partition(collection, name).await?;
            (collection, name, "created")
        }
        PartitionCmd::Drop { collection, name } => {
            ctx.client.drop_partition(collection, name).await?;
            (collection, name, "dropped")
        }
    };
    let done = Done {
        collection,
        partition: Some(name),
        index: None,
        segment: None,
        action,
    };
    ctx.out.emit(&done, || {
        format!("{action} partition '{name}' of collection '{collection}'")
    })
}

pub async fn segment(ctx: &Ctx, cmd: SegmentCmd) -> Result<(), Error> {
    let SegmentCmd::Drop { collection, id } = cmd;
    let id = parse_segment_id(&id)?;
    ctx.client.drop_segment(&collection, id).await?;
    let done = Done {
        collection: &collection,
        partition: None,
        index: None,
        segment: Some(id),
        action: "dropped",
    };
    ctx.out.emit(&done, || {
        format!("dropped segment {id} of collection '{collection}'")
    })
}

pub async fn index(ctx: &Ctx, cmd: IndexCmd) -> Result<(), Error> {
    match cmd {
        IndexCmd::Create {
            collection,
            name,
            field,
            params,
        } => {
            let params = params.unwrap_or_default();
            ctx.client
                .create_index(&collection, &name, &field, &params)
                .await?;
            let done = Done {
                collection: &collection,
                partition: None,
                index: Some(&name),
                segment: None,
                action: "created",
            };
            ctx.out.emit(&done, || {
                format!("created index '{name}' on field '{field}' of collection '{collection}'")
            })
        }
        IndexCmd::Drop { collection, name } => {
            ctx.client.drop_index(&collection, &name).await?;
            let done = Done {
                collection: &collection,
                partition: None,
                index: Some(&name),
                segment: None,
                action: "dropped",
            };
            ctx.out.emit(&done, || {
                format!("dropped index '{name}' of collection '{collection}'")
            })
        }
        IndexCmd::Build {
            collection,
            index,
            segment,
        } => {
            let segment = parse_segment_id(&segment)?;
            let built = ctx
                .client
                .host_index_build(&collection, &index, segment)
                .await?;
            ctx.out.emit(&built, || {
                format!(
                    "built index '{}' on segment {} of '{}' (build {}, {})",
                    built.index,
                    built.segment,
                    built.collection,
                    built.build_id,
                    bytes(built.files.iter().map(|f| f.size).sum())
                )
            })
        }
    }
}

/// A recorded index build.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Built {
    pub collection: String,
    pub index: String,
    pub segment: u64,
    pub build_id: u64,
    pub files: Vec<FileRef>,
}

/// Act as the host's index builder: check the index and the segment exist, write the index
/// file under a key unique to this build (so a rebuild never overwrites files a snapshot may
/// still reference), then record the build with a fresh build id.
pub async fn build(
    client: &Client,
    collection: &str,
    index: &str,
    segment: u64,
) -> Result<Built, Error> {
    let view = client.describe_collection(collection).await?;
    let index_view = view
        .indexes
        .iter()
        .find(|i| i.name == index)
        .ok_or_else(|| {
            Error::not_found(format!(
                "index '{index}' not found in collection '{collection}'"
            ))
        })?;
    let seg = view
        .segments
        .iter()
        .find(|s| s.id == segment)
        .ok_or_else(|| {
            Error::not_found(format!(
                "segment {segment} is not a live segment of collection '{collection}'"
            ))
        })?;
    let build_id = client.allocate_id().await?;
    let data_bytes: u64 = seg.files.iter().map(|f| f.size).sum();
    let size = (data_bytes / 4).clamp(MIN_INDEX_FILE_BYTES, MAX_INDEX_FILE_BYTES) as usize;
    let kind = format!("index/{}/{build_id}", index_view.id);
    let key = host::segment_file_key(view.id, seg.partition_id, segment, &kind, 0);
    let file = host::put_file(
        client.store().as_ref(),
        &key,
        Bytes::from(host::file_bytes(build_id, size)),
    )
    .await?;
    let files = vec![file];
    client
        .build_index(
            collection,
            BuildIndex {
                segment_id: segment,
                index: index.to_string(),
                build_id,
                files: files.clone(),
            },
        )
        .await?;
    Ok(Built {
        collection: collection.to_string(),
        index: index.to_string(),
        segment,
        build_id,
        files,
    })
}
