//! Typed domain events on top of the untyped envelope.
//!
//! Payloads are rmp-serde with named fields (`to_vec_named`), so adding an optional field is a
//! compatible change. Every event enum declares the schema version it writes; a record with a
//! newer version is refused with a clear error (never skipped), an older one is upcast.

use crate::envelope::{Envelope, NewEvent};
use crate::error::LogError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A family of events that belong to one kind of stream (one entity type).
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + Send + Sync + std::fmt::Debug + 'static
{
    /// The schema version this build writes for every event of the family.
    const SCHEMA_VERSION: u16;
    /// Stable name of the event, stored in the envelope (the enum variant name).
    fn event_type(&self) -> &'static str;
    /// Decode a payload written with an older schema version. The default knows no older
    /// versions; a family that changes its schema overrides this.
    fn upcast(event_type: &str, schema_version: u16, _payload: &[u8]) -> Result<Self, String> {
        Err(format!(
            "no upcaster for '{event_type}' from schema version {schema_version}"
        ))
    }
}

/// Encode a domain event as a `NewEvent` ready for `append`.
pub fn encode<E: DomainEvent>(event: &E) -> Result<NewEvent, LogError> {
    let payload = rmp_serde::to_vec_named(event)
        .map_err(|e| LogError::Invalid(format!("cannot encode {}: {e}", event.event_type())))?;
    Ok(NewEvent::new(
        event.event_type(),
        E::SCHEMA_VERSION,
        payload,
    ))
}

/// Decode a stored envelope into its domain event.
pub fn decode<E: DomainEvent>(env: &Envelope) -> Result<E, LogError> {
    if env.schema_version > E::SCHEMA_VERSION {
        return Err(LogError::UnsupportedVersion(format!(
            "event '{}' at position {} has schema version {}, this build understands up to {}; upgrade snapvault",
            env.event_type,
            env.position,
            env.schema_version,
            E::SCHEMA_VERSION
        )));
    }
    if env.schema_version < E::SCHEMA_VERSION {
        return E::upcast(&env.event_type, env.schema_version, &env.payload).map_err(|reason| {
            LogError::Corrupt {
                position: env.position,
                reason,
            }
        });
    }
    let event: E = rmp_serde::from_slice(&env.payload).map_err(|e| LogError::Corrupt {
        position: env.position,
        reason: format!("cannot decode '{}': {e}", env.event_type),
    })?;
    if event.event_type() != env.event_type {
        return Err(LogError::Corrupt {
            position: env.position,
            reason: format!(
                "envelope says '{}' but payload is '{}'",
                env.event_type,
                event.event_type()
            ),
        });
    }
    Ok(event)
}
