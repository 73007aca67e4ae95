//! Snapshot decider: the life cycle of one snapshot.
//!
//! `Pending → Committed → Deleting → Deleted`, `Pending → Failed → Deleting → Deleted`, and
//! `Imported` (straight to Committed). Every transition is idempotent when repeated (a resumed
//! worker may ask twice), and every refusal names the state that refused it.

use crate::aggregate::Aggregate;
use crate::claim::ClaimState;
use serde::{Deserialize, Serialize};
use snapvault_events::Error;
use snapvault_events::domain::claim::ClaimCommand;
use snapvault_events::domain::snapshot::{
    SnapshotCommand, SnapshotEvent, SnapshotIdentity, SnapshotStatus, SnapshotTotals,
};
use snapvault_events::domain::{JobId, SnapshotId};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub identity: Option<SnapshotIdentity>,
    pub status: Option<SnapshotStatus>,
    pub pinned_version: u64,
    /// Where `snapshot.json` and the manifests live.
    pub prefix: String,
    pub metadata_key: String,
    pub metadata_crc32c: u32,
    pub manifests: u32,
    pub totals: SnapshotTotals,
    pub created_ms: u64,
    pub committed_ms: Option<u64>,
    pub deadline_ms: u64,
    pub failure: Option<String>,
    pub imported: bool,
    pub leases: BTreeSet<JobId>,
    pub delete_requested_ms: Option<u64>,
    pub deleted_ms: Option<u64>,
    /// Which node finishes an unfinished create or drop (design §10).
    #[serde(default)]
    pub claim: ClaimState,
}

impl SnapshotState {
    pub fn snapshot_id(&self) -> SnapshotId {
        self.identity.as_ref().map_or(0, |i| i.snapshot_id)
    }

    fn label(&self) -> String {
        match &self.identity {
            Some(i) => format!(
                "snapshot '{}' of collection '{}'",
                i.name, i.collection_name
            ),
            None => "snapshot".to_string(),
        }
    }
}

pub struct Snapshot;

impl crate::claim_holder::Claimable for Snapshot {
    fn claim_command(command: ClaimCommand) -> SnapshotCommand {
        SnapshotCommand::Claim(command)
    }
    fn claim_event(event: &SnapshotEvent) -> Option<&snapvault_events::domain::claim::ClaimEvent> {
        match event {
            SnapshotEvent::Claim(c) => Some(c),
            _ => None,
        }
    }
}

impl Aggregate for Snapshot {
    type State = SnapshotState;
    type Command = SnapshotCommand;
    type Event = SnapshotEvent;
    const KIND: &'static str = "snapshot";

    fn decide(
        s: &SnapshotState,
        command: &SnapshotCommand,
        now_ms: u64,
    ) -> Result<Vec<SnapshotEvent>, Error> {
        use SnapshotCommand as C;
        use SnapshotEvent as E;
        use SnapshotStatus as S;
        let status = s.status;
        match command {
            C::Start {
                identity,
                pinned_version,
                pending_timeout_ms,
            } => {
                if let Some(existing) = &s.identity {
                    return if existing == identity && s.pinned_version == *pinned_version {
                        Ok(vec![])
                    } else {
                        Err(Error::already_exists(format!(
                            "snapshot {} already exists",
                            existing.snapshot_id
                        )))
                    };
                }
                Ok(vec![E::Started {
                    identity: identity.clone(),
                    pinned_version: *pinned_version,
                    prefix: format!(
                        "snapshots/{}/{}",
                        identity.collection_id, identity.snapshot_id
                    ),
                    created_ms: now_ms,
                    deadline_ms: now_ms.saturating_add(*pending_timeout_ms),
                }])
            }
            C::Commit {
                metadata_key,
                metadata_crc32c,
                manifests,
                totals,
            } => match status {
                Some(S::Pending) => Ok(vec![E::Committed {
                    metadata_key: metadata_key.clone(),
                    metadata_crc32c: *metadata_crc32c,
                    manifests: *manifests,
                    totals: *totals,
                    committed_ms: now_ms,
                }]),
                Some(S::Committed) => Ok(vec![]),
                None => Err(Error::not_found("snapshot not found")),
                Some(other) => Err(Error::failed_precondition(format!(
                    "{} is {}; only a pending snapshot can commit",
                    s.label(),
                    other.as_str()
                ))),
            },
            C::Fail { reason } => match status {
                Some(S::Pending) => Ok(vec![E::Failed {
                    reason: reason.clone(),
                    failed_ms: now_ms,
                }]),
                Some(S::Failed) => Ok(vec![]),
                None => Err(Error::not_found("snapshot not found")),
                Some(other) => Err(Error::failed_precondition(format!(
                    "{} is {}; only a pending snapshot can fail",
                    s.label(),
                    other.as_str()
                ))),
            },
            C::Import {
                identity,
                prefix,
                metadata_key,
                metadata_crc32c,
                manifests,
                totals,
                original_created_ms,
            } => {
                if s.identity.is_some() {
                    return Err(Error::already_exists(format!(
                        "snapshot {} already exists",
                        s.snapshot_id()
                    )));
                }
                Ok(vec![E::Imported {
                    identity: identity.clone(),
                    prefix: prefix.clone(),
                    metadata_key: metadata_key.clone(),
                    metadata_crc32c: *metadata_crc32c,
                    manifests: *manifests,
                    totals: *totals,
                    created_ms: *original_created_ms,
                    imported_ms: now_ms,
                }])
            }
            C::Drop => match status {
                None | Some(S::Deleting) | Some(S::Deleted) => {
                    Err(Error::not_found(format!("{} not found", s.label())))
                }
                Some(S::Pending) => Err(Error::failed_precondition(format!(
                    "{} is still being created; drop it once it is committed or failed",
                    s.label()
                ))),
                Some(S::Committed) | Some(S::Failed) => {
                    if let Some(job) = s.leases.iter().next() {
                        return Err(Error::failed_precondition(format!(
                            "{} is held by restore job {job}; cancel or finish the restore first",
                            s.label()
                        )));
                    }
                    Ok(vec![E::DeleteRequested {
                        requested_ms: now_ms,
                    }])
                }
            },
            C::MarkDeleted => match status {
                Some(S::Deleting) => Ok(vec![E::Deleted { deleted_ms: now_ms }]),
                Some(S::Deleted) => Ok(vec![]),
                None => Err(Error::not_found("snapshot not found")),
                Some(other) => Err(Error::failed_precondition(format!(
                    "{} is {}; only a deleting snapshot can be marked deleted",
                    s.label(),
                    other.as_str()
                ))),
            },
            C::TakeLease { job_id } => match status {
                Some(S::Committed) => {
                    if s.leases.contains(job_id) {
                        Ok(vec![])
                    } else {
                        Ok(vec![E::LeaseTaken { job_id: *job_id }])
                    }
                }
                None => Err(Error::not_found("snapshot not found")),
                Some(other) => Err(Error::failed_precondition(format!(
                    "{} is {}; only a committed snapshot can be restored",
                    s.label(),
                    other.as_str()
                ))),
            },
            C::ReleaseLease { job_id } => {
                if s.leases.contains(job_id) {
                    Ok(vec![E::LeaseReleased { job_id: *job_id }])
                } else {
                    Ok(vec![])
                }
            }
            // Only unfinished work is claimed; renewing or releasing ended work is a no-op.
            C::Claim(claim) => match s.status {
                Some(S::Pending) | Some(S::Deleting) => Ok(s
                    .claim
                    .decide(claim, now_ms, &s.label())?
                    .into_iter()
                    .map(E::Claim)
                    .collect()),
                None => Err(Error::not_found("snapshot not found")),
                Some(other) if matches!(claim, ClaimCommand::Claim { .. }) => {
                    Err(Error::failed_precondition(format!(
                        "{} is {}; only a pending create or a drop is claimed",
                        s.label(),
                        other.as_str()
                    )))
                }
                Some(_) => Ok(vec![]),
            },
        }
    }

    fn evolve(s: &mut SnapshotState, event: &SnapshotEvent) {
        use SnapshotEvent as E;
        use SnapshotStatus as S;
        match event {
            E::Started {
                identity,
                pinned_version,
                prefix,
                created_ms,
                deadline_ms,
            } => {
                s.identity = Some(identity.clone());
                s.status = Some(S::Pending);
                s.pinned_version = *pinned_version;
                s.prefix = prefix.clone();
                s.created_ms = *created_ms;
                s.deadline_ms = *deadline_ms;
            }
            E::Committed {
                metadata_key,
                metadata_crc32c,
                manifests,
                totals,
                committed_ms,
            } => {
                s.status = Some(S::Committed);
                s.metadata_key = metadata_key.clone();
                s.metadata_crc32c = *metadata_crc32c;
                s.manifests = *manifests;
                s.totals = *totals;
                s.committed_ms = Some(*committed_ms);
                s.claim.end(*committed_ms);
            }
            E::Failed { reason, failed_ms } => {
                s.status = Some(S::Failed);
                s.failure = Some(reason.clone());
                s.claim.end(*failed_ms);
            }
            E::Imported {
                identity,
                prefix,
                metadata_key,
                metadata_crc32c,
                manifests,
                totals,
                created_ms,
                imported_ms,
            } => {
                s.identity = Some(identity.clone());
                s.status = Some(S::Committed);
                s.prefix = prefix.clone();
                s.metadata_key = metadata_key.clone();
                s.metadata_crc32c = *metadata_crc32c;
                s.manifests = *manifests;
                s.totals = *totals;
                s.created_ms = *created_ms;
                s.committed_ms = Some(*imported_ms);
                s.imported = true;
            }
            E::DeleteRequested { requested_ms } => {
                s.status = Some(S::Deleting);
                s.delete_requested_ms = Some(*requested_ms);
            }
            E::Deleted { deleted_ms } => {
                s.status = Some(S::Deleted);
                s.deleted_ms = Some(*deleted_ms);
                s.claim.end(*deleted_ms);
            }
            E::LeaseTaken { job_id } => {
                s.leases.insert(*job_id);
            }
            E::LeaseReleased { job_id } => {
                s.leases.remove(job_id);
            }
            E::Claim(c) => s.claim.evolve(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given_when;
    use snapvault_events::ErrorCode;

    fn identity() -> SnapshotIdentity {
        SnapshotIdentity {
            snapshot_id: 9,
            collection_id: 3,
            collection_name: "c".into(),
            name: "s1".into(),
            description: String::new(),
            labels: Default::default(),
        }
    }

    fn started() -> SnapshotEvent {
        let cmd = SnapshotCommand::Start {
            identity: identity(),
            pinned_version: 12,
            pending_timeout_ms: 1_000,
        };
        given_when::<Snapshot>(&[], cmd, 50).0.unwrap().remove(0)
    }

    fn commit() -> SnapshotCommand {
        SnapshotCommand::Commit {
            metadata_key: "snapshots/3/9/snapshot.json".into(),
            metadata_crc32c: 1,
            manifests: 1,
            totals: SnapshotTotals::default(),
        }
    }

    fn code(given: &[SnapshotEvent], c: SnapshotCommand) -> ErrorCode {
        given_when::<Snapshot>(given, c, 100).0.unwrap_err().code
    }

    #[test]
    fn start_sets_prefix_and_deadline_and_is_idempotent() {
        let (_, s) = given_when::<Snapshot>(
            &[],
            SnapshotCommand::Start {
                identity: identity(),
                pinned_version: 12,
                pending_timeout_ms: 1_000,
            },
            50,
        );
        assert_eq!(s.prefix, "snapshots/3/9");
        assert_eq!(s.deadline_ms, 1_050);
        assert_eq!(s.status, Some(SnapshotStatus::Pending));
        let again = SnapshotCommand::Start {
            identity: identity(),
            pinned_version: 12,
            pending_timeout_ms: 1_000,
        };
        assert_eq!(
            given_when::<Snapshot>(&[started()], again, 60).0.unwrap(),
            vec![]
        );
    }

    #[test]
    fn commit_then_drop_then_deleted() {
        let mut given = vec![started()];
        given.extend(given_when::<Snapshot>(&given, commit(), 60).0.unwrap());
        assert_eq!(
            given_when::<Snapshot>(&given, commit(), 61).0.unwrap(),
            vec![]
        );
        assert_eq!(
            code(&given, SnapshotCommand::Fail { reason: "x".into() }),
            ErrorCode::FailedPrecondition
        );
        given.extend(
            given_when::<Snapshot>(&given, SnapshotCommand::Drop, 70)
                .0
                .unwrap(),
        );
        assert_eq!(code(&given, SnapshotCommand::Drop), ErrorCode::NotFound);
        assert_eq!(
            code(&given, SnapshotCommand::TakeLease { job_id: 1 }),
            ErrorCode::FailedPrecondition
        );
        let (_, s) = given_when::<Snapshot>(&given, SnapshotCommand::MarkDeleted, 80);
        assert_eq!(s.status, Some(SnapshotStatus::Deleted));
    }

    #[test]
    fn pending_cannot_be_dropped_or_leased_and_failed_can_be_dropped() {
        let given = vec![started()];
        assert_eq!(
            code(&given, SnapshotCommand::Drop),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(&given, SnapshotCommand::TakeLease { job_id: 1 }),
            ErrorCode::FailedPrecondition
        );
        let mut given = given;
        given.extend(
            given_when::<Snapshot>(
                &given,
                SnapshotCommand::Fail {
                    reason: "timeout".into(),
                },
                2_000,
            )
            .0
            .unwrap(),
        );
        assert_eq!(code(&given, commit()), ErrorCode::FailedPrecondition);
        let (out, s) = given_when::<Snapshot>(&given, SnapshotCommand::Drop, 2_001);
        assert_eq!(out.unwrap().len(), 1);
        assert_eq!(s.status, Some(SnapshotStatus::Deleting));
    }

    #[test]
    fn a_lease_blocks_drop_until_released() {
        let mut given = vec![started()];
        given.extend(given_when::<Snapshot>(&given, commit(), 60).0.unwrap());
        given.extend(
            given_when::<Snapshot>(&given, SnapshotCommand::TakeLease { job_id: 77 }, 61)
                .0
                .unwrap(),
        );
        let err = given_when::<Snapshot>(&given, SnapshotCommand::Drop, 62)
            .0
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert!(err.message.contains("77"), "{}", err.message);
        given.extend(
            given_when::<Snapshot>(&given, SnapshotCommand::ReleaseLease { job_id: 77 }, 63)
                .0
                .unwrap(),
        );
        assert!(
            given_when::<Snapshot>(&given, SnapshotCommand::Drop, 64)
                .0
                .is_ok()
        );
    }
}
