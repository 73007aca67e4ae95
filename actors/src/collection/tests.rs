//! Given events / when command / then events (or rejection) for the collection decider.

use super::*;
use crate::aggregate::{Aggregate, given_when};
use snapvault_events::ErrorCode;
use snapvault_events::domain::FileRef;
use snapvault_events::domain::collection::*;
use std::collections::BTreeMap;

fn created() -> CollectionEvent {
    let (out, _) = given_when::<Collection>(&[], create("c1", 2, &["p1"]), 100);
    out.unwrap().remove(0)
}

fn create(name: &str, shards: u32, partitions: &[&str]) -> CollectionCommand {
    CollectionCommand::Create(CreateCollection {
        collection_id: 7,
        name: name.into(),
        schema_json: r#"{"fields":[{"name":"v","type":"float_vector","dim":8}]}"#.into(),
        shard_count: shards,
        properties: BTreeMap::new(),
        partitions: partitions.iter().map(|p| p.to_string()).collect(),
        restoring_job: None,
        indexes: vec![],
        external: None,
    })
}

fn files(prefix: &str, n: usize) -> Vec<FileRef> {
    (0..n)
        .map(|i| FileRef {
            key: format!("data/7/{prefix}/{i}"),
            size: 100 + i as u64,
            crc32c: i as u32,
        })
        .collect()
}

fn flush(id: u64, partition: &str, shard: u32) -> CollectionCommand {
    CollectionCommand::FlushSegment(FlushSegment {
        segment_id: id,
        partition: partition.into(),
        shard,
        rows: 10,
        files: files(&format!("s{id}"), 2),
    })
}

fn apply(given: &mut Vec<CollectionEvent>, cmd: CollectionCommand) {
    let (out, _) = given_when::<Collection>(given, cmd, 200);
    given.extend(out.unwrap());
}

fn code(given: &[CollectionEvent], cmd: CollectionCommand) -> ErrorCode {
    given_when::<Collection>(given, cmd, 300)
        .0
        .unwrap_err()
        .code
}

#[test]
fn create_keeps_schema_verbatim_and_adds_default_partition() {
    let (out, state) = given_when::<Collection>(&[], create("c1", 2, &["p1"]), 100);
    assert_eq!(out.unwrap().len(), 1);
    assert!(state.is_live());
    assert_eq!(
        state.schema_json,
        r#"{"fields":[{"name":"v","type":"float_vector","dim":8}]}"#
    );
    let names: Vec<_> = state.partitions.values().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["_default", "p1"]);
    assert_eq!(state.created_ms, 100);
}

#[test]
fn create_rejects_bad_input() {
    assert_eq!(
        code(&[], create("9bad", 1, &[])),
        ErrorCode::InvalidArgument
    );
    assert_eq!(code(&[], create("a/b", 1, &[])), ErrorCode::InvalidArgument);
    assert_eq!(code(&[], create("ok", 0, &[])), ErrorCode::InvalidArgument);
    assert_eq!(
        code(&[], create("ok", 5000, &[])),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(&[], create("ok", 1, &["p", "p"])),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(&[], create("ok", 1, &["_default"])),
        ErrorCode::InvalidArgument
    );
    let mut bad_schema = create("ok", 1, &[]);
    if let CollectionCommand::Create(c) = &mut bad_schema {
        c.schema_json = "{not json".into();
    }
    assert_eq!(code(&[], bad_schema), ErrorCode::InvalidArgument);
    assert_eq!(
        code(&[created()], create("c1", 1, &[])),
        ErrorCode::AlreadyExists
    );
}

#[test]
fn flush_validates_partition_shard_files_and_duplicates() {
    let given = vec![created()];
    assert_eq!(code(&given, flush(1, "nope", 0)), ErrorCode::NotFound);
    assert_eq!(code(&given, flush(1, "p1", 2)), ErrorCode::InvalidArgument);
    assert_eq!(code(&given, flush(0, "p1", 0)), ErrorCode::InvalidArgument);
    for bad_key in ["../x", "/abs", "a//b", "a/./b"] {
        let cmd = CollectionCommand::FlushSegment(FlushSegment {
            segment_id: 1,
            partition: "p1".into(),
            shard: 0,
            rows: 1,
            files: vec![FileRef {
                key: bad_key.into(),
                size: 1,
                crc32c: 0,
            }],
        });
        assert_eq!(code(&given, cmd), ErrorCode::InvalidArgument, "{bad_key}");
    }
    let mut given = given;
    apply(&mut given, flush(1, "p1", 0));
    assert_eq!(code(&given, flush(1, "p1", 0)), ErrorCode::AlreadyExists);
}

#[test]
fn compaction_is_atomic_and_refuses_dropped_or_mixed_segments() {
    let mut given = vec![created()];
    apply(&mut given, flush(1, "p1", 0));
    apply(&mut given, flush(2, "p1", 0));
    apply(&mut given, flush(3, "p1", 1));
    let compact = |ids: &[u64], into: u64| {
        CollectionCommand::Compact(CompactSegments {
            segment_ids: ids.to_vec(),
            into_segment_id: into,
            rows: 20,
            files: files(&format!("s{into}"), 1),
        })
    };
    assert_eq!(
        code(&given, compact(&[1, 3], 9)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(&given, compact(&[1, 1], 9)),
        ErrorCode::InvalidArgument
    );
    assert_eq!(code(&given, compact(&[1, 42], 9)), ErrorCode::NotFound);
    assert_eq!(code(&given, compact(&[1, 2], 3)), ErrorCode::AlreadyExists);
    let (out, state) = given_when::<Collection>(&given, compact(&[1, 2], 9), 0);
    assert_eq!(out.unwrap().len(), 1, "one event: drop and add together");
    assert_eq!(
        state.segments.keys().copied().collect::<Vec<_>>(),
        vec![3, 9]
    );
    assert_eq!(state.segments[&9].level, 1);
    apply(&mut given, compact(&[1, 2], 9));
    assert_eq!(
        code(&given, compact(&[1], 10)),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(
        code(&given, CollectionCommand::DropSegment { segment_id: 2 }),
        ErrorCode::FailedPrecondition
    );
}

#[test]
fn index_rebuild_replaces_the_previous_build() {
    let mut given = vec![created()];
    apply(&mut given, flush(1, "_default", 0));
    apply(
        &mut given,
        CollectionCommand::CreateIndex {
            name: "vec_idx".into(),
            field: "v".into(),
            params_json: r#"{"type":"HNSW"}"#.into(),
        },
    );
    let build = |build_id: u64| {
        CollectionCommand::BuildIndex(BuildIndex {
            segment_id: 1,
            index: "vec_idx".into(),
            build_id,
            files: files(&format!("idx{build_id}"), 1),
        })
    };
    apply(&mut given, build(5));
    assert_eq!(code(&given, build(5)), ErrorCode::AlreadyExists);
    let (_, state) = given_when::<Collection>(&given, build(6), 0);
    let idx = &state.segments[&1].indexes;
    assert_eq!(idx.len(), 1);
    assert_eq!(idx[0].build_id, 6);
    let missing = CollectionCommand::BuildIndex(BuildIndex {
        segment_id: 1,
        index: "nope".into(),
        build_id: 7,
        files: files("x", 1),
    });
    assert_eq!(code(&given, missing), ErrorCode::NotFound);
}

#[test]
fn dropped_collection_refuses_everything_and_partition_drop_drops_segments() {
    let mut given = vec![created()];
    apply(&mut given, flush(1, "p1", 0));
    apply(&mut given, flush(2, "_default", 0));
    let (_, state) = given_when::<Collection>(
        &given,
        CollectionCommand::DropPartition { name: "p1".into() },
        0,
    );
    assert_eq!(state.segments.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert!(state.dropped_segments.contains(&1));
    assert_eq!(
        code(
            &given,
            CollectionCommand::DropPartition {
                name: "_default".into()
            }
        ),
        ErrorCode::FailedPrecondition
    );
    apply(&mut given, CollectionCommand::Drop);
    assert_eq!(code(&given, flush(3, "p1", 0)), ErrorCode::NotFound);
    assert_eq!(code(&given, CollectionCommand::Drop), ErrorCode::NotFound);
}

#[test]
fn restoring_collection_refuses_host_writes() {
    let mut cmd = create("r", 1, &[]);
    if let CollectionCommand::Create(c) = &mut cmd {
        c.restoring_job = Some(77);
    }
    let (out, state) = given_when::<Collection>(&[], cmd, 0);
    assert_eq!(state.status, Some(CollectionStatus::Restoring));
    let given = out.unwrap();
    assert_eq!(
        code(&given, flush(1, "_default", 0)),
        ErrorCode::FailedPrecondition
    );
}

fn restoring(job: u64) -> Vec<CollectionEvent> {
    let mut cmd = create("r", 2, &["p1"]);
    if let CollectionCommand::Create(c) = &mut cmd {
        c.restoring_job = Some(job);
        c.indexes = vec![NewIndex {
            name: "ivf".into(),
            field: "v".into(),
            params_json: "{}".into(),
        }];
    }
    given_when::<Collection>(&[], cmd, 0).0.unwrap()
}

fn restored(id: u64, partition: u64, index: Option<u64>) -> SegmentRecord {
    SegmentRecord {
        segment_id: id,
        partition_id: partition,
        shard: 1,
        rows: 5,
        level: 2,
        files: files(&format!("r{id}"), 2),
        indexes: index
            .map(|index_id| IndexFiles {
                index_id,
                build_id: id + 1,
                files: files(&format!("r{id}/idx"), 1),
            })
            .into_iter()
            .collect(),
    }
}

fn stage(job: u64, segments: Vec<SegmentRecord>) -> CollectionCommand {
    CollectionCommand::StageRestoredSegments {
        job_id: job,
        segments,
    }
}

#[test]
fn a_restore_target_declares_its_indexes_at_creation() {
    let given = restoring(77);
    let state = Collection::replay(&given);
    assert_eq!(state.index_by_name("ivf").map(|(id, _)| id), Some(1));
    assert_eq!(given.len(), 2, "Created + IndexCreated");
}

#[test]
fn only_its_job_stages_segments_and_a_repeat_is_a_no_op() {
    let mut given = restoring(77);
    let seg = restored(10, 2, Some(1));
    assert_eq!(
        code(&given, stage(78, vec![seg.clone()])),
        ErrorCode::FailedPrecondition
    );
    apply(&mut given, stage(77, vec![seg.clone()]));
    let (again, _) = given_when::<Collection>(&given, stage(77, vec![seg.clone()]), 0);
    assert_eq!(again.unwrap(), vec![], "a resumed commit repeats nothing");
    let mut other = seg.clone();
    other.rows = 6;
    assert_eq!(
        code(&given, stage(77, vec![other])),
        ErrorCode::AlreadyExists
    );
    // Staged segments are recorded, but the host still cannot write.
    assert_eq!(
        code(&given, flush(99, "_default", 0)),
        ErrorCode::FailedPrecondition
    );
}

#[test]
fn staged_segments_must_fit_the_target() {
    let given = restoring(77);
    assert_eq!(
        code(&given, stage(77, vec![restored(10, 9, None)])),
        ErrorCode::InvalidArgument,
        "unknown partition"
    );
    assert_eq!(
        code(&given, stage(77, vec![restored(10, 1, Some(5))])),
        ErrorCode::InvalidArgument,
        "undeclared index"
    );
    let mut bad_shard = restored(10, 1, None);
    bad_shard.shard = 2;
    assert_eq!(
        code(&given, stage(77, vec![bad_shard])),
        ErrorCode::InvalidArgument
    );
}

#[test]
fn complete_restore_makes_every_staged_segment_live_at_once() {
    let mut given = restoring(77);
    apply(
        &mut given,
        stage(77, vec![restored(10, 1, None), restored(12, 2, Some(1))]),
    );
    apply(
        &mut given,
        CollectionCommand::CompleteRestore { job_id: 77 },
    );
    let state = Collection::replay(&given);
    assert_eq!(state.status, Some(CollectionStatus::Ready));
    assert_eq!(state.segments.len(), 2);
    let (again, _) =
        given_when::<Collection>(&given, CollectionCommand::CompleteRestore { job_id: 77 }, 0);
    assert_eq!(again.unwrap(), vec![]);
    // Now it is the host's collection: no more staging, no abandoning.
    assert_eq!(
        code(&given, stage(77, vec![restored(14, 1, None)])),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(
        code(&given, CollectionCommand::AbandonRestore { job_id: 77 }),
        ErrorCode::FailedPrecondition
    );
    apply(&mut given, flush(99, "_default", 0));
}

#[test]
fn the_host_cannot_drop_a_restoring_collection_but_its_job_can_abandon_it() {
    let mut given = restoring(77);
    assert_eq!(
        code(&given, CollectionCommand::Drop),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(
        code(&given, CollectionCommand::AbandonRestore { job_id: 5 }),
        ErrorCode::FailedPrecondition
    );
    apply(&mut given, CollectionCommand::AbandonRestore { job_id: 77 });
    let state = Collection::replay(&given);
    assert_eq!(state.status, Some(CollectionStatus::Dropped));
    let (again, _) =
        given_when::<Collection>(&given, CollectionCommand::AbandonRestore { job_id: 77 }, 0);
    assert_eq!(again.unwrap(), vec![]);
    let (never, _) =
        given_when::<Collection>(&[], CollectionCommand::AbandonRestore { job_id: 77 }, 0);
    assert_eq!(
        never.unwrap(),
        vec![],
        "nothing to abandon when it was never created"
    );
}

#[test]
fn replay_is_deterministic() {
    let mut given = vec![created()];
    for i in 1..50 {
        apply(
            &mut given,
            flush(
                i,
                if i % 2 == 0 { "p1" } else { "_default" },
                (i % 2) as u32,
            ),
        );
    }
    assert_eq!(Collection::replay(&given), Collection::replay(&given));
}
