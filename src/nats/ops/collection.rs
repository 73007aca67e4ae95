//! Ops of collections: `collection.create | list | describe | drop`.

use super::{Empty, OpTable};
use crate::Client;
use crate::client::CreateCollectionRequest;
use crate::views::CollectionSummary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `collection.create`: only `name` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCollection {
    pub name: String,
    #[serde(default)]
    pub schema_json: String,
    #[serde(default = "one")]
    pub shard_count: u32,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub partitions: Vec<String>,
}

fn one() -> u32 {
    1
}

/// A request naming one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collections {
    pub collections: Vec<CollectionSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub dropped: String,
}

pub fn register(t: &mut OpTable) {
    t.add(
        "collection.create",
        |c: Client, r: CreateCollection| async move {
            c.create_collection(CreateCollectionRequest {
                name: r.name,
                schema_json: r.schema_json,
                shard_count: r.shard_count,
                properties: r.properties,
                partitions: r.partitions,
            })
            .await
        },
    );
    t.add("collection.list", |c: Client, _: Empty| async move {
        Ok(Collections {
            collections: c.list_collections().await?,
        })
    });
    t.add("collection.describe", |c: Client, r: Named| async move {
        c.describe_collection(&r.name).await
    });
    t.add("collection.drop", |c: Client, r: Named| async move {
        c.drop_collection(&r.name).await?;
        Ok(Dropped { dropped: r.name })
    });
}
