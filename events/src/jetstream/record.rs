//! What one JetStream message of the log holds, and which subject it is on.
//!
//! # Subjects
//!
//! Every entity stream is one subject, `<prefix>.log.<token>`. A stream name made only of
//! `[A-Za-z0-9_-]` (every name snapvault uses: `collection-7`, `snapshot-12`, `catalog`, `ids`)
//! is its own token, so `nats sub '<prefix>.log.collection-7'` shows one entity. Any other name
//! (the log contract allows dots, `/`, non-ASCII…) is spelled `~` followed by the hex of its
//! bytes: `~` never starts a plain token, so the mapping is one-to-one and a name can never
//! reach into another subject's tokens or wildcards.
//!
//! # Record
//!
//! The payload is `crc32c (u32, big endian) || body`, the body the rmp-serde (named fields)
//! encoding of [`RecordBody`]: the envelope without its position. The position is the
//! message's stream sequence, assigned by the server when it stores the message, so the writer
//! cannot know it; everything else (stream, version, type, schema version, time, correlation
//! and causation ids, payload) is the writer's and is covered by the checksum.

use crate::envelope::Envelope;
use crate::error::LogError;
use serde::{Deserialize, Serialize};

/// The subject of `stream` under `prefix`.
pub fn subject_for(prefix: &str, stream: &str) -> String {
    format!("{prefix}.log.{}", stream_token(stream))
}

/// The subject token of a stream name (see module docs).
pub fn stream_token(stream: &str) -> String {
    let plain = !stream.is_empty()
        && stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        return stream.to_string();
    }
    let mut out = String::with_capacity(1 + stream.len() * 2);
    out.push('~');
    for b in stream.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[derive(Serialize)]
struct RecordBody<'a> {
    stream: &'a str,
    version: u64,
    event_type: &'a str,
    schema_version: u16,
    time_ms: u64,
    correlation_id: u64,
    causation_id: u64,
    #[serde(with = "serde_bytes_compat")]
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct OwnedRecordBody {
    stream: String,
    version: u64,
    event_type: String,
    schema_version: u16,
    time_ms: u64,
    correlation_id: u64,
    causation_id: u64,
    #[serde(with = "serde_bytes_compat")]
    payload: Vec<u8>,
}

/// Bytes as msgpack `bin` (not an array of integers).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
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
        }
        d.deserialize_byte_buf(V)
    }
}

/// Encode one event of an append (everything but its position).
pub fn encode(env: &Envelope) -> Result<Vec<u8>, LogError> {
    let body = RecordBody {
        stream: &env.stream,
        version: env.version,
        event_type: &env.event_type,
        schema_version: env.schema_version,
        time_ms: env.time_ms,
        correlation_id: env.correlation_id,
        causation_id: env.causation_id,
        payload: &env.payload,
    };
    let mut out = Vec::with_capacity(env.payload.len() + env.stream.len() + 64);
    out.extend_from_slice(&[0u8; 4]);
    rmp_serde::encode::write_named(&mut out, &body)
        .map_err(|e| LogError::Invalid(format!("cannot encode event: {e}")))?;
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Decode and verify the message stored at stream sequence `position` on `subject`: it must
/// carry the append header every snapvault append sets ([`super::APPEND_ID_HEADER`]), and its
/// payload must be a sound record ([`decode`]). A message without the header was not written by
/// snapvault (anyone allowed to publish on `<prefix>.log.>` can put one there, see
/// `docs/nats-permissions.md`): it is `Corrupt`, naming its position and subject, whatever
/// its payload.
pub fn decode_message(
    position: u64,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    bytes: &[u8],
) -> Result<Envelope, LogError> {
    if headers
        .and_then(|h| h.get(super::APPEND_ID_HEADER))
        .is_none_or(|v| v.as_str().is_empty())
    {
        return Err(foreign(position, subject, bytes.len()));
    }
    decode(position, bytes)
}

/// The `Corrupt` of a message without snapvault's append header.
pub fn foreign(position: u64, subject: &str, len: usize) -> LogError {
    LogError::Corrupt {
        position,
        reason: format!(
            "record has no snapvault append header (foreign message?): {len} bytes on subject '{}' without {}, so not written by snapvault; allow only snapvault nodes to publish on the log's subjects (docs/nats-permissions.md)",
            subject.escape_debug(),
            super::APPEND_ID_HEADER,
        ),
    }
}

/// Decode and verify the record stored at stream sequence `position`.
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
            reason: format!("checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"),
        });
    }
    let body: OwnedRecordBody =
        rmp_serde::from_slice(&bytes[4..]).map_err(|e| LogError::Corrupt {
            position,
            reason: format!("undecodable record: {e}"),
        })?;
    Ok(Envelope {
        stream: body.stream,
        version: body.version,
        position,
        event_type: body.event_type,
        schema_version: body.schema_version,
        time_ms: body.time_ms,
        correlation_id: body.correlation_id,
        causation_id: body.causation_id,
        payload: body.payload,
        crc32c: stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            stream: "collection-1".into(),
            version: 3,
            position: 0,
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
    fn round_trip_takes_the_position_from_the_message() {
        let bytes = encode(&sample()).unwrap();
        let back = decode(42, &bytes).unwrap();
        assert_eq!(back.position, 42);
        assert_eq!(back.version, 3);
        assert_eq!(back.payload, vec![1, 2, 3, 4]);
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_detected() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(1, &b).is_err(), "bit {i} flip not detected");
        }
        for len in 0..bytes.len() {
            assert!(decode(1, &bytes[..len]).is_err());
        }
    }

    #[test]
    fn a_message_without_the_append_header_is_foreign() {
        let bytes = encode(&sample()).unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(super::super::APPEND_ID_HEADER, "n-1");
        let ok = decode_message(9, "sv.log.collection-1", Some(&headers), &bytes).unwrap();
        assert_eq!(ok.position, 9);
        for h in [None, Some(async_nats::HeaderMap::new())] {
            // Even a sound record is foreign without the header; so is "hello".
            for payload in [&bytes[..], b"hello"] {
                match decode_message(40, "sv.log.x-1", h.as_ref(), payload) {
                    Err(LogError::Corrupt { position, reason }) => {
                        assert_eq!(position, 40);
                        assert!(
                            reason.starts_with("record has no snapvault append header"),
                            "{reason}"
                        );
                        assert!(reason.contains("'sv.log.x-1'"), "{reason}");
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn tokens_are_one_to_one_and_never_wildcards() {
        assert_eq!(stream_token("collection-7"), "collection-7");
        assert_eq!(stream_token("a.b"), "~612e62");
        assert_eq!(stream_token("~x"), "~7e78");
        assert_ne!(stream_token("a.b"), stream_token("a_b"));
        for s in ["a.b", "x/y", "é", "a>b", "~"] {
            let t = stream_token(s);
            assert!(!t.contains(['.', '*', '>', ' ']), "{t}");
        }
        assert_eq!(subject_for("sv", "ids"), "sv.log.ids");
    }
}
