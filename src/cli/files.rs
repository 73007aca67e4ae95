//! Files a user names on the command line (`--schema`, `--external-spec`): read with a bound,
//! so `/dev/zero` or a huge file is refused after reading one byte past the limit, never read
//! whole.

use snapvault::Error;
use std::io::Read;
use std::path::Path;

/// The text of `path`, at most `max_bytes` long; `what` names it in errors.
pub fn read_text(path: &Path, what: &str, max_bytes: usize) -> Result<String, Error> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| Error::invalid_argument(format!("cannot read {what} '{shown}': {e}")))?;
    let mut bytes = Vec::new();
    file.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::invalid_argument(format!("cannot read {what} '{shown}': {e}")))?;
    if bytes.len() > max_bytes {
        return Err(Error::invalid_argument(format!(
            "{what} '{shown}' is larger than {max_bytes} bytes, the most allowed"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Error::invalid_argument(format!("{what} '{shown}' is not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_after_the_limit() {
        let e = read_text(Path::new("/dev/zero"), "schema file", 32 * 1024).unwrap_err();
        assert_eq!(e.code, snapvault::ErrorCode::InvalidArgument);
        assert!(e.message.contains("larger than 32768 bytes"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(&p, "{}").unwrap();
        assert_eq!(read_text(&p, "schema file", 2).unwrap(), "{}");
        assert!(read_text(&p, "schema file", 1).is_err());
    }
}
