//! The S3 object store (`--store s3://BUCKET`): AWS S3 or any S3-compatible server (MinIO,
//! moto in the tests). Conditional puts are on (`If-Match`/`If-None-Match` on ETags), so a
//! create-if-absent is a real fence on servers that support it. Every upload carries an
//! `x-amz-checksum-sha256` the server checks before storing (object_store offers SHA-256,
//! not CRC32C; the crc32c snapvault records is checked on top of it, end to end).
//!
//! # Where the settings come from, first match wins
//!
//! 1. the `--s3-*` flags ([`S3Config`]);
//! 2. the standard environment: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//!    `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3`/
//!    `AWS_ENDPOINT_URL`/`AWS_ENDPOINT`, web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
//!    `AWS_ROLE_ARN`), the ECS container credentials;
//! 3. the shared files of the AWS CLI and SDKs: profile `AWS_PROFILE` (else `default`) of
//!    `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`) for the keys, and of
//!    `AWS_CONFIG_FILE` (else `~/.aws/config`, `[profile NAME]`) for the keys, `region` and
//!    `endpoint_url`. A profile named in `AWS_PROFILE` that neither file has is an
//!    `invalid_argument` naming both files, instead of a silent fall-through to the instance
//!    metadata service;
//! 4. the EC2 instance metadata service.
//!
//! The AWS SDK's own loader (`aws-config`) would bring a second HTTP stack and about a
//! hundred crates for what is, here, two small INI files: [`read_profile`] parses them with
//! the SDK's rules for what snapvault needs (bounded in size, comments, `[profile NAME]`).
//!
//! An `http://` endpoint (flag, environment or profile) is allowed without `AWS_ALLOW_HTTP`:
//! naming a plain-HTTP endpoint is the opt-in. Requests are path-style, which every
//! S3-compatible server understands.

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, Checksum, S3ConditionalPut};
use snapvault_events::Error;
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// `http://127.0.0.1:9000` for a local server; `None`: AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "…"),
            )
            .finish()
    }
}

/// A bucket name as S3 allows it (3..=63 of `[a-z0-9.-]`).
pub fn check_bucket(bucket: &str) -> Result<(), Error> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "S3 bucket '{}' must be 3..=63 characters of [a-z0-9.-]",
            bucket.escape_debug()
        )))
    }
}

/// What a shared-config profile gives (module docs, step 3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Largest shared credentials or config file read.
const MAX_PROFILE_FILE_BYTES: u64 = 1 << 20;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `~/.aws/<name>`, or the file an environment variable names.
fn aws_file(var: &str, name: &str) -> Option<std::path::PathBuf> {
    env(var)
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws").join(name)))
}

/// The `key = value` pairs of section `[wanted]` of an INI text (AWS shared-file rules:
/// `#`/`;` comments, keys case-insensitive, values trimmed). `None` when there is no such
/// section.
fn ini_section(text: &str, wanted: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim());
            if current == Some(wanted) {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if current == Some(wanted)
            && let Some((k, v)) = line.split_once('=')
            && let Some(pairs) = found.as_mut()
        {
            pairs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    found
}

fn read_bounded(path: &std::path::Path) -> Result<Option<String>, Error> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::invalid_argument(format!(
                "cannot read the AWS file {}: {e}",
                path.display()
            )));
        }
    };
    let mut text = String::new();
    file.take(MAX_PROFILE_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            Error::invalid_argument(format!("cannot read the AWS file {}: {e}", path.display()))
        })?;
    if text.len() as u64 > MAX_PROFILE_FILE_BYTES {
        return Err(Error::invalid_argument(format!(
            "the AWS file {} is larger than {MAX_PROFILE_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(Some(text))
}

/// The profile `AWS_PROFILE` (else `default`) from the shared credentials and config files.
/// `Ok(None)` when neither has it and no profile was named; an error when `AWS_PROFILE`
/// names one that neither has.
pub fn read_profile() -> Result<Option<Profile>, Error> {
    let named = env("AWS_PROFILE");
    let name = named.clone().unwrap_or_else(|| "default".to_string());
    let credentials_path = aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_path = aws_file("AWS_CONFIG_FILE", "config");
    let mut pairs = Vec::new();
    let mut seen = false;
    // The config file first, so the credentials file's keys win (the SDK's rule).
    if let Some(path) = &config_path
        && let Some(text) = read_bounded(path)?
    {
        let section = if name == "default" {
            ini_section(&text, "default").or_else(|| ini_section(&text, "profile default"))
        } else {
            ini_section(&text, &format!("profile {name}"))
        };
        if let Some(p) = section {
            seen = true;
            pairs.extend(p);
        }
    }
    if let Some(path) = &credentials_path
        && let Some(text) = read_bounded(path)?
        && let Some(p) = ini_section(&text, &name)
    {
        seen = true;
        pairs.extend(p);
    }
    if !seen {
        return match named {
            Some(n) => Err(Error::invalid_argument(format!(
                "AWS_PROFILE '{}' is in neither {} nor {}",
                n.escape_debug(),
                credentials_path
                    .map_or("(no credentials file)".into(), |p| p.display().to_string()),
                config_path.map_or("(no config file)".into(), |p| p.display().to_string()),
            ))),
            None => Ok(None),
        };
    }
    let mut profile = Profile::default();
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "aws_access_key_id" => &mut profile.access_key_id,
            "aws_secret_access_key" => &mut profile.secret_access_key,
            "aws_session_token" => &mut profile.session_token,
            "region" => &mut profile.region,
            "endpoint_url" => &mut profile.endpoint_url,
            _ => continue,
        };
        *slot = Some(v);
    }
    Ok(Some(profile))
}

/// Open the bucket.
pub fn open(c: &S3Config) -> Result<Arc<dyn ObjectStore>, Error> {
    check_bucket(&c.bucket)?;
    crate::nats::connect::install_crypto_provider();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&c.bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_virtual_hosted_style_request(false)
        .with_checksum_algorithm(Checksum::SHA256);
    // Step 3 of the module docs: only what neither the flags nor the environment give.
    let static_keys = c.access_key_id.is_some() || env("AWS_ACCESS_KEY_ID").is_some();
    let web_identity = env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some();
    let profile = read_profile()?.unwrap_or_default();
    if !static_keys
        && !web_identity
        && let (Some(k), Some(s)) = (&profile.access_key_id, &profile.secret_access_key)
    {
        b = b.with_access_key_id(k).with_secret_access_key(s);
        if let Some(t) = &profile.session_token {
            b = b.with_token(t);
        }
    }
    let region = c
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or(profile.region)
        .unwrap_or_else(|| "us-east-1".to_string());
    b = b.with_region(region);
    let endpoint = c
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"))
        .or(profile.endpoint_url);
    if let Some(e) = &endpoint {
        b = b.with_endpoint(e);
        if e.starts_with("http://") {
            b = b.with_allow_http(true);
        }
    }
    if let Some(k) = &c.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &c.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    if let Some(t) = &c.session_token {
        b = b.with_token(t);
    }
    let store = b.build().map_err(|e| {
        Error::invalid_argument(format!(
            "cannot set up the S3 store for bucket '{}': {e}",
            c.bucket
        ))
    })?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_follow_the_shared_file_rules() {
        let text = "# comment\n[default]\naws_access_key_id = A\n\n[profile ci]\nRegion=eu-west-1\n; x\nendpoint_url = http://h:1\n[ci]\naws_secret_access_key=S\n";
        assert_eq!(
            ini_section(text, "default"),
            Some(vec![("aws_access_key_id".to_string(), "A".to_string())])
        );
        assert_eq!(
            ini_section(text, "profile ci"),
            Some(vec![
                ("region".to_string(), "eu-west-1".to_string()),
                ("endpoint_url".to_string(), "http://h:1".to_string())
            ])
        );
        assert_eq!(ini_section(text, "nope"), None);
        assert_eq!(ini_section("[empty]\n", "empty"), Some(vec![]));
    }
}
