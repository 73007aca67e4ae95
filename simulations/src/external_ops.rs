//! The workload's external-collection operations: the user writes and rewrites real Parquet
//! files into lakes (prefixes `data/lake/{n}/` of the node's own store, under GC's orphan
//! scan on purpose), and the host creates external collections on them, refreshes them (with
//! and without waiting), re-points them while refreshes run, and cancels.

use crate::model::{Effect, Model};
use crate::prng::Prng;
use snapvault::Client;
use snapvault::client::CreateCollectionRequest;
use snapvault::lake::parquet_file;
use snapvault_events::Error;
use snapvault_events::domain::CollectionId;
use std::time::Duration;

/// Lakes and the file names in each: few, so writes rewrite and refreshes race.
pub const LAKES: u64 = 2;
pub const FILES_PER_LAKE: u64 = 6;
/// How long a waiting refresh follows its task (virtual time).
pub const WAIT: Duration = Duration::from_secs(600);

pub fn lake_prefix(lake: u64) -> String {
    format!("lake/{lake}/")
}

fn spec(target_rows: u64) -> String {
    format!(r#"{{"format":"parquet","target_rows_per_segment":{target_rows}}}"#)
}

#[derive(Debug, Clone)]
pub enum ExternalOp {
    /// The user writes (or rewrites) one Parquet file of a lake.
    Write {
        lake: u64,
        file: u64,
        seed: u64,
        rows: u64,
    },
    Create {
        name: String,
        lake: u64,
        target_rows: u64,
    },
    Refresh {
        id: CollectionId,
        name: String,
        wait: bool,
    },
    Alter {
        id: CollectionId,
        name: String,
        lake: u64,
        target_rows: u64,
    },
    Cancel {
        id: CollectionId,
        name: String,
    },
}

impl ExternalOp {
    pub fn label(&self) -> String {
        match self {
            ExternalOp::Write {
                lake, file, rows, ..
            } => {
                format!("lake-write {lake}/f{file} rows={rows}")
            }
            ExternalOp::Create {
                name,
                lake,
                target_rows,
            } => {
                format!("external-create {name} lake={lake} target={target_rows}")
            }
            ExternalOp::Refresh { name, wait, .. } => {
                format!("external-refresh {name} wait={wait}")
            }
            ExternalOp::Alter {
                name,
                lake,
                target_rows,
                ..
            } => {
                format!("external-alter {name} lake={lake} target={target_rows}")
            }
            ExternalOp::Cancel { name, .. } => format!("external-cancel {name}"),
        }
    }

    pub fn collection_name(&self) -> Option<&str> {
        match self {
            ExternalOp::Write { .. } => None,
            ExternalOp::Create { name, .. }
            | ExternalOp::Refresh { name, .. }
            | ExternalOp::Alter { name, .. }
            | ExternalOp::Cancel { name, .. } => Some(name),
        }
    }
}

/// Plan one external operation (`kind`: 0 write, 1 create, 2 refresh, 3 alter, 4 cancel).
pub fn plan(rng: &mut Prng, model: &Model, kind: u8) -> Option<Vec<ExternalOp>> {
    let targets = [50u64, 120, 1_000];
    if kind == 0 {
        return Some(vec![ExternalOp::Write {
            lake: rng.below(LAKES),
            file: rng.below(FILES_PER_LAKE),
            seed: rng.next_u64(),
            rows: rng.range(1, 100),
        }]);
    }
    if kind == 1 {
        return Some(vec![ExternalOp::Create {
            name: format!("x{}", rng.below(2)),
            lake: rng.below(LAKES),
            target_rows: *rng.pick(&targets)?,
        }]);
    }
    let externals: Vec<(CollectionId, String)> = model
        .live_collections()
        .into_iter()
        .filter(|(id, _)| model.external.contains(id))
        .map(|(id, c)| (id, c.name.clone()))
        .collect();
    let (id, name) = rng.pick(&externals)?.clone();
    Some(match kind {
        2 => {
            let op = ExternalOp::Refresh {
                id,
                name: name.clone(),
                wait: rng.coin(),
            };
            // Two at once: the second must get the first's task.
            if rng.below(4) == 0 {
                return Some(vec![op.clone(), op]);
            }
            vec![op]
        }
        3 => vec![
            ExternalOp::Refresh {
                id,
                name: name.clone(),
                wait: false,
            },
            ExternalOp::Alter {
                id,
                name,
                lake: rng.below(LAKES),
                target_rows: *rng.pick(&targets)?,
            },
        ],
        _ => vec![ExternalOp::Cancel { id, name }],
    })
}

pub async fn execute(client: &Client, op: &ExternalOp) -> Result<Vec<Effect>, Error> {
    match op {
        ExternalOp::Write {
            lake,
            file,
            seed,
            rows,
        } => {
            let bytes = parquet_file(*seed, *rows)?;
            let key = format!("{}f{file}.parquet", lake_prefix(*lake));
            snapvault_actors::snapshot::worker::put_object(&**client.store(), &key, bytes).await?;
            Ok(vec![])
        }
        ExternalOp::Create {
            name,
            lake,
            target_rows,
        } => {
            let view = client
                .create_external_collection(
                    CreateCollectionRequest {
                        name: name.clone(),
                        shard_count: 2,
                        ..Default::default()
                    },
                    &lake_prefix(*lake),
                    &spec(*target_rows),
                )
                .await?;
            Ok(vec![Effect::CollectionCreated {
                id: view.id,
                name: name.clone(),
                shard_count: view.shards,
                partitions: view
                    .partitions
                    .iter()
                    .map(|p| (p.id, p.name.clone()))
                    .collect(),
            }])
        }
        ExternalOp::Refresh { name, wait, .. } => {
            let t = client.refresh_external(name).await?;
            if *wait {
                client.wait_external_task(t.task_id, WAIT).await?;
            }
            Ok(vec![])
        }
        ExternalOp::Alter {
            name,
            lake,
            target_rows,
            ..
        } => {
            client
                .alter_external(name, Some(&lake_prefix(*lake)), Some(&spec(*target_rows)))
                .await?;
            Ok(vec![])
        }
        ExternalOp::Cancel { name, .. } => {
            client.cancel_external(name).await?;
            Ok(vec![])
        }
    }
}
