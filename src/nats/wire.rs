//! The wire format of the request/reply API (`docs/nats-api.md`): bodies, headers, errors.
//!
//! Bodies are msgpack maps with named fields by default, JSON when the request carries
//! `Content-Type: application/json` (the reply then is JSON too). An empty body is the empty
//! map, so operations without input need no body at all. A failed request is answered with
//! the error body `{code, message, details}` and the headers `Snapvault-Error-Code` (the stable
//! code), `Nats-Service-Error-Code` (its HTTP-like number) and `Nats-Service-Error` (the
//! message), the NATS micro-service convention.

use async_nats::HeaderMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use snapvault_events::{Error, ErrorCode};
use std::collections::BTreeMap;

pub const CONTENT_TYPE: &str = "Content-Type";
pub const JSON: &str = "application/json";
pub const MSGPACK: &str = "application/msgpack";
/// Optional: a retried request with the same id gets the first answer and acts once.
pub const REQUEST_ID: &str = "Snapvault-Request-Id";
/// On an error reply: the stable error code.
pub const ERROR_CODE: &str = "Snapvault-Error-Code";
/// On a reply that was answered from the request-id memory: `true`.
pub const REPLAYED: &str = "Snapvault-Replayed";
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
/// Headers of a published event.
pub const EVENT_POSITION: &str = "Snapvault-Position";
pub const EVENT_STREAM: &str = "Snapvault-Stream";
pub const EVENT_VERSION: &str = "Snapvault-Version";
pub const EVENT_TYPE: &str = "Snapvault-Event-Type";

/// Longest request id.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    MsgPack,
    Json,
}

impl Format {
    /// JSON when the request says `Content-Type: application/json`, else msgpack.
    pub fn of(headers: Option<&HeaderMap>) -> Format {
        let json = headers
            .and_then(|h| h.get(CONTENT_TYPE))
            .is_some_and(|v| v.as_str().trim().to_ascii_lowercase().starts_with(JSON));
        if json { Format::Json } else { Format::MsgPack }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::MsgPack => MSGPACK,
            Format::Json => JSON,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::MsgPack => "msgpack",
            Format::Json => "JSON",
        }
    }
}

/// Decode a request or reply body; an empty body is the empty map.
pub fn decode<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, String> {
    match format {
        Format::Json => {
            let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
                b"{}"
            } else {
                bytes
            };
            serde_json::from_slice(bytes).map_err(|e| e.to_string())
        }
        Format::MsgPack => {
            // 0x80: the empty msgpack map.
            let bytes: &[u8] = if bytes.is_empty() { &[0x80] } else { bytes };
            rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
        }
    }
}

/// Encode a body (msgpack with named fields, or JSON).
pub fn encode<T: Serialize>(format: Format, value: &T) -> Result<Vec<u8>, Error> {
    match format {
        Format::Json => serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("cannot encode a reply as JSON: {e}"))),
        Format::MsgPack => rmp_serde::to_vec_named(value)
            .map_err(|e| Error::internal(format!("cannot encode a reply as msgpack: {e}"))),
    }
}

/// The error body of a failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Context a program can use: the op, the request id, the limit that was hit…
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl ErrorBody {
    pub fn of(e: &Error) -> ErrorBody {
        ErrorBody {
            code: e.code,
            message: e.message.clone(),
            details: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> ErrorBody {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn to_error(&self) -> Error {
        Error::new(self.code, self.message.clone())
    }
}

/// The HTTP-like number of a code, for `Nats-Service-Error-Code`.
pub fn status_number(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::InvalidArgument => 400,
        ErrorCode::NotFound => 404,
        ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
        ErrorCode::FailedPrecondition => 412,
        ErrorCode::Unavailable => 503,
        ErrorCode::Internal => 500,
    }
}

/// A request id as given: 1..=128 characters of `[A-Za-z0-9_.-]`.
pub fn check_request_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "request id '{}' must be 1..={MAX_REQUEST_ID_BYTES} characters of [A-Za-z0-9_.-]",
            id.escape_debug()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    struct Req {
        name: String,
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn bodies_round_trip_and_empty_is_the_empty_map() {
        for f in [Format::MsgPack, Format::Json] {
            let r = Req {
                name: "a".into(),
                n: 3,
            };
            let bytes = encode(f, &r).unwrap();
            assert_eq!(decode::<Req>(f, &bytes).unwrap(), r);
            let e = decode::<Req>(f, b"").unwrap_err();
            assert!(e.contains("name"), "{e}");
        }
        assert!(decode::<Req>(Format::MsgPack, &[0xc1, 0xff]).is_err());
        assert!(decode::<Req>(Format::Json, br#"{"name": 5}"#).is_err());
    }

    #[test]
    fn request_ids() {
        assert!(check_request_id("abc-1.2_x").is_ok());
        for bad in ["", "a b", "x*", &"y".repeat(129)] {
            assert!(check_request_id(bad).is_err(), "{bad}");
        }
    }
}
