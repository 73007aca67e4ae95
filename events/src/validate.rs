//! Input rules shared by every entity: names and object keys. Each refusal is
//! `invalid_argument` with a message that names the field, the value and the rule.

use crate::error::Error;

/// Longest name of a collection, partition, index or snapshot.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest object key the host may give.
pub const MAX_OBJECT_KEY_BYTES: usize = 1024;

/// Names: 1–255 characters of `[A-Za-z0-9_-]`, starting with an ASCII letter or `_`. This keeps names
/// safe as path segments, NATS subject tokens and CLI arguments.
pub fn validate_name(field: &str, name: &str) -> Result<(), Error> {
    let shown = shown(name);
    if name.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid_argument(format!(
            "{field} '{}…' is {} characters; at most {MAX_NAME_CHARS} are allowed",
            name.chars().take(32).collect::<String>(),
            name.chars().count()
        )));
    }
    let first = name.chars().next().unwrap_or('0');
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(Error::invalid_argument(format!(
            "{field} '{shown}' must start with an ASCII letter (A-Z, a-z) or '_'"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::invalid_argument(format!(
            "{field} '{shown}' contains '{}'; only ASCII letters, digits, '_' and '-' are allowed",
            bad.escape_debug()
        )));
    }
    Ok(())
}

/// Object keys: a clean relative path — no leading `/`, no `.` or `..` segment, no empty
/// segment, no backslash or control character, at most 1024 bytes.
pub fn validate_object_key(field: &str, key: &str) -> Result<(), Error> {
    let shown = shown(key);
    if key.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    if key.len() > MAX_OBJECT_KEY_BYTES {
        return Err(Error::invalid_argument(format!(
            "{field} is {} bytes; at most {MAX_OBJECT_KEY_BYTES} are allowed",
            key.len()
        )));
    }
    if key.starts_with('/') {
        return Err(Error::invalid_argument(format!(
            "{field} '{shown}' must be a relative path (no leading '/')"
        )));
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(Error::invalid_argument(format!(
            "{field} '{shown}' contains a control character or backslash"
        )));
    }
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err(Error::invalid_argument(format!(
                    "{field} '{shown}' has an empty path segment ('//' or a trailing '/')"
                )));
            }
            "." | ".." => {
                return Err(Error::invalid_argument(format!(
                    "{field} '{shown}' has a '{segment}' segment; keys must be clean relative paths"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn names() {
        for ok in ["a", "_x", "Abc-9_z", &"a".repeat(255)] {
            assert!(validate_name("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "9a",
            "-a",
            "a b",
            "../x",
            "a/b",
            "é",
            "a.b",
            &"a".repeat(256),
        ] {
            let e = validate_name("name", bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
        }
    }

    /// The messages say which letters: a Unicode letter is refused, and the user must learn
    /// why from the message alone.
    #[test]
    fn name_messages_say_ascii() {
        let first = validate_name("collection name", "\u{e9}t\u{e9}").unwrap_err();
        assert!(
            first.message.contains("must start with an ASCII letter"),
            "{}",
            first.message
        );
        let later = validate_name("collection name", "caf\u{e9}").unwrap_err();
        assert!(
            later
                .message
                .contains("only ASCII letters, digits, '_' and '-' are allowed"),
            "{}",
            later.message
        );
    }

    #[test]
    fn keys() {
        for ok in ["a", "a/b/c.bin", "data/1/2/insert_log/0"] {
            assert!(validate_object_key("key", ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\nb",
        ] {
            assert!(validate_object_key("key", bad).is_err(), "{bad}");
        }
    }
}
