//! The envelope: what the log stores around every domain event, and its checksummed codec.
//!
//! A record on disk (or in a JetStream message) is `crc32c (u32, big endian) || body`, where
//! body is the rmp-serde (named fields) encoding of [`Envelope`] without its `crc32c` field.
//! The checksum covers every field, so a torn or bit-flipped record is detected on read and
//! reported as [`LogError::Corrupt`] naming its position — never returned as valid.

use crate::error::LogError;
use serde::{Deserialize, Serialize};

/// Largest payload accepted for one event. Bulk data (file lists) goes to the object store and
/// the event carries its key and checksum (design §3).
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest number of events in one append. Keeps a batch well inside one sled write, and is
/// the most a JetStream atomic batch may hold (nats-server's default batch limit is 1000
/// messages; the JetStream log stores one event per message).
pub const MAX_EVENTS_PER_APPEND: usize = 1000;
/// Longest stream name.
pub const MAX_STREAM_NAME_BYTES: usize = 256;

/// An event the caller wants to append. The log assigns version, position and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: u16,
    pub payload: Vec<u8>,
    /// Id of the request or job this event belongs to; 0 when there is none.
    pub correlation_id: u64,
    /// Position of the event (or id of the command) that caused this one; 0 when none.
    pub causation_id: u64,
}

impl NewEvent {
    pub fn new(event_type: impl Into<String>, schema_version: u16, payload: Vec<u8>) -> Self {
        NewEvent {
            event_type: event_type.into(),
            schema_version,
            payload,
            correlation_id: 0,
            causation_id: 0,
        }
    }
}

/// A stored event, as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub stream: String,
    /// 1-based version within the stream; contiguous.
    pub version: u64,
    /// 1-based position in the global order of the whole log; strictly increasing.
    pub position: u64,
    pub event_type: String,
    pub schema_version: u16,
    /// Milliseconds since the Unix epoch, from the log's `Clock`.
    pub time_ms: u64,
    pub correlation_id: u64,
    pub causation_id: u64,
    pub payload: Vec<u8>,
    /// crc32c of the encoded body; filled on encode and checked on decode.
    #[serde(skip)]
    pub crc32c: u32,
}

/// Body of a record: every envelope field but the checksum. Kept as a separate struct so the
/// on-disk format is explicit and does not change when `Envelope` gains helper fields.
#[derive(Serialize)]
struct RecordBody<'a> {
    stream: &'a str,
    version: u64,
    position: u64,
    event_type: &'a str,
    schema_version: u16,
    time_ms: u64,
    correlation_id: u64,
    causation_id: u64,
    #[serde(serialize_with = "serde_bytes_compat::serialize")]
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct OwnedRecordBody {
    stream: String,
    version: u64,
    position: u64,
    event_type: String,
    schema_version: u16,
    time_ms: u64,
    correlation_id: u64,
    causation_id: u64,
    #[serde(deserialize_with = "serde_bytes_compat::deserialize")]
    payload: Vec<u8>,
}

/// Encode byte slices as msgpack `bin`, not as an array of integers (4× smaller, faster).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v.as_ref())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(d: D) -> Result<T, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V).map(T::from)
    }
}

impl Envelope {
    /// Encode as `crc32c || body`. The returned checksum is also stored in `self.crc32c` by
    /// callers that keep the envelope.
    pub fn encode(&self) -> Result<Vec<u8>, LogError> {
        let body = RecordBody {
            stream: &self.stream,
            version: self.version,
            position: self.position,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            time_ms: self.time_ms,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            payload: &self.payload,
        };
        let mut out = Vec::with_capacity(self.payload.len() + self.stream.len() + 64);
        out.extend_from_slice(&[0u8; 4]);
        rmp_serde::encode::write_named(&mut out, &body)
            .map_err(|e| LogError::Invalid(format!("cannot encode event: {e}")))?;
        let crc = crc32c::crc32c(&out[4..]);
        out[..4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Decode and verify a record. `position` is where the record was found; it names the
    /// record in the error and must match the position stored inside it.
    pub fn decode(position: u64, bytes: &[u8]) -> Result<Envelope, LogError> {
        if bytes.len() < 5 {
            return Err(LogError::Corrupt {
                position,
                reason: format!("record is {} bytes, shorter than its header", bytes.len()),
            });
        }
        let stored = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let actual = crc32c::crc32c(&bytes[4..]);
        if stored != actual {
            return Err(LogError::Corrupt {
                position,
                reason: format!(
                    "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
                ),
            });
        }
        let body: OwnedRecordBody =
            rmp_serde::from_slice(&bytes[4..]).map_err(|e| LogError::Corrupt {
                position,
                reason: format!("undecodable record: {e}"),
            })?;
        if body.position != position {
            return Err(LogError::Corrupt {
                position,
                reason: format!("record claims position {}", body.position),
            });
        }
        Ok(Envelope {
            stream: body.stream,
            version: body.version,
            position: body.position,
            event_type: body.event_type,
            schema_version: body.schema_version,
            time_ms: body.time_ms,
            correlation_id: body.correlation_id,
            causation_id: body.causation_id,
            payload: body.payload,
            crc32c: stored,
        })
    }
}

/// Check a batch against the log's limits before anything is written.
pub fn validate_append(stream: &str, events: &[NewEvent]) -> Result<(), LogError> {
    if stream.is_empty() || stream.len() > MAX_STREAM_NAME_BYTES {
        return Err(LogError::Invalid(format!(
            "stream name must be 1..={MAX_STREAM_NAME_BYTES} bytes, got {}",
            stream.len()
        )));
    }
    if stream
        .bytes()
        .any(|b| b == 0 || b == b' ' || b == b'*' || b == b'>' || b.is_ascii_control())
    {
        return Err(LogError::Invalid(format!(
            "stream name '{}' contains a NUL, space, wildcard or control character",
            stream.escape_debug()
        )));
    }
    if events.is_empty() {
        return Err(LogError::Invalid(
            "an append needs at least one event".into(),
        ));
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(LogError::Invalid(format!(
            "an append takes at most {MAX_EVENTS_PER_APPEND} events, got {}",
            events.len()
        )));
    }
    for e in events {
        if e.payload.len() > MAX_EVENT_PAYLOAD_BYTES {
            return Err(LogError::Invalid(format!(
                "event '{}' payload is {} bytes; the limit is {MAX_EVENT_PAYLOAD_BYTES} (put bulk data in the object store)",
                e.event_type,
                e.payload.len()
            )));
        }
        if e.event_type.is_empty() || e.event_type.len() > 128 {
            return Err(LogError::Invalid("event type must be 1..=128 bytes".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            stream: "collection-1".into(),
            version: 3,
            position: 42,
            event_type: "SegmentFlushed".into(),
            schema_version: 1,
            time_ms: 1_700_000_000_000,
            correlation_id: 7,
            causation_id: 41,
            payload: vec![1, 2, 3, 4],
            crc32c: 0,
        }
    }

    #[test]
    fn round_trips_and_checks_position() {
        let bytes = sample().encode().unwrap();
        let back = Envelope::decode(42, &bytes).unwrap();
        assert_eq!(back.payload, vec![1, 2, 3, 4]);
        assert_eq!(back.stream, "collection-1");
        assert!(matches!(
            Envelope::decode(43, &bytes),
            Err(LogError::Corrupt { position: 43, .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample().encode().unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                Envelope::decode(42, &b).is_err(),
                "bit {i} flip not detected"
            );
        }
    }

    #[test]
    fn truncation_is_detected() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(Envelope::decode(42, &bytes[..len]).is_err());
        }
    }

    #[test]
    fn limits_are_enforced() {
        assert!(validate_append("s", &[]).is_err());
        assert!(validate_append("", &[NewEvent::new("x", 1, vec![])]).is_err());
        assert!(validate_append("a b", &[NewEvent::new("x", 1, vec![])]).is_err());
        let big = NewEvent::new("x", 1, vec![0; MAX_EVENT_PAYLOAD_BYTES + 1]);
        assert!(validate_append("s", &[big]).is_err());
        assert!(validate_append("s", &[NewEvent::new("x", 1, vec![0; 10])]).is_ok());
    }
}
