//! Catalog decider: reserve and release collection names on one fenced stream, so two
//! creates (or restores) of one name race on a single fence and exactly one wins.

use crate::aggregate::Aggregate;
use snapvault_events::Error;
use snapvault_events::domain::CollectionId;
use snapvault_events::domain::catalog::CatalogEvent;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogCommand {
    /// Point `name` at `collection_id`; refused if the name points elsewhere.
    Reserve {
        name: String,
        collection_id: CollectionId,
    },
    /// Free `name` if (and only if) it still points at `collection_id`.
    Release {
        name: String,
        collection_id: CollectionId,
    },
    /// Atomically free `name` from a dead collection and point it at a new one.
    Replace {
        name: String,
        stale_collection_id: CollectionId,
        collection_id: CollectionId,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogState {
    pub names: BTreeMap<String, CollectionId>,
}

pub struct Catalog;

impl Aggregate for Catalog {
    type State = CatalogState;
    type Command = CatalogCommand;
    type Event = CatalogEvent;
    const KIND: &'static str = "catalog";

    fn decide(
        s: &CatalogState,
        command: &CatalogCommand,
        _now_ms: u64,
    ) -> Result<Vec<CatalogEvent>, Error> {
        match command {
            CatalogCommand::Reserve {
                name,
                collection_id,
            } => match s.names.get(name) {
                Some(id) if id == collection_id => Ok(vec![]),
                Some(_) => Err(Error::already_exists(format!(
                    "collection '{name}' already exists"
                ))),
                None => Ok(vec![CatalogEvent::NameReserved {
                    name: name.clone(),
                    collection_id: *collection_id,
                }]),
            },
            CatalogCommand::Release {
                name,
                collection_id,
            } => match s.names.get(name) {
                Some(id) if id == collection_id => Ok(vec![CatalogEvent::NameReleased {
                    name: name.clone(),
                    collection_id: *collection_id,
                }]),
                _ => Ok(vec![]),
            },
            CatalogCommand::Replace {
                name,
                stale_collection_id,
                collection_id,
            } => match s.names.get(name) {
                Some(id) if id == stale_collection_id => Ok(vec![
                    CatalogEvent::NameReleased {
                        name: name.clone(),
                        collection_id: *stale_collection_id,
                    },
                    CatalogEvent::NameReserved {
                        name: name.clone(),
                        collection_id: *collection_id,
                    },
                ]),
                None => Ok(vec![CatalogEvent::NameReserved {
                    name: name.clone(),
                    collection_id: *collection_id,
                }]),
                Some(id) if id == collection_id => Ok(vec![]),
                Some(_) => Err(Error::already_exists(format!(
                    "collection '{name}' already exists"
                ))),
            },
        }
    }

    fn evolve(s: &mut CatalogState, event: &CatalogEvent) {
        match event {
            CatalogEvent::NameReserved {
                name,
                collection_id,
            } => {
                s.names.insert(name.clone(), *collection_id);
            }
            CatalogEvent::NameReleased {
                name,
                collection_id,
            } => {
                if s.names.get(name) == Some(collection_id) {
                    s.names.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::given_when;
    use snapvault_events::ErrorCode;

    fn reserved(name: &str, id: u64) -> CatalogEvent {
        CatalogEvent::NameReserved {
            name: name.into(),
            collection_id: id,
        }
    }

    #[test]
    fn a_taken_name_is_refused_and_a_repeat_is_a_no_op() {
        let (out, _) = given_when::<Catalog>(
            &[reserved("a", 1)],
            CatalogCommand::Reserve {
                name: "a".into(),
                collection_id: 2,
            },
            0,
        );
        assert_eq!(out.unwrap_err().code, ErrorCode::AlreadyExists);
        let (out, _) = given_when::<Catalog>(
            &[reserved("a", 1)],
            CatalogCommand::Reserve {
                name: "a".into(),
                collection_id: 1,
            },
            0,
        );
        assert_eq!(out.unwrap(), vec![]);
    }

    #[test]
    fn replace_frees_a_stale_name_atomically() {
        let (out, state) = given_when::<Catalog>(
            &[reserved("a", 1)],
            CatalogCommand::Replace {
                name: "a".into(),
                stale_collection_id: 1,
                collection_id: 5,
            },
            0,
        );
        assert_eq!(out.unwrap().len(), 2);
        assert_eq!(state.names.get("a"), Some(&5));
    }

    #[test]
    fn release_only_frees_its_own_reservation() {
        let (out, state) = given_when::<Catalog>(
            &[reserved("a", 1)],
            CatalogCommand::Release {
                name: "a".into(),
                collection_id: 9,
            },
            0,
        );
        assert_eq!(out.unwrap(), vec![]);
        assert_eq!(state.names.get("a"), Some(&1));
    }
}
