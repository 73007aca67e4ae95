//! The S3 object store (`--store s3://BUCKET`): AWS S3 or any S3-compatible server (MinIO,
//! moto in the tests). Conditional puts are on (`If-Match`/`If-None-Match` on ETags), so a
//! create-if-absent is a real fence on servers that support it.
//!
//! Settings come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL`/`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`); what [`S3Config`] gives explicitly
//! (the `--s3-*` flags) wins. Requests are path-style, which every S3-compatible server
//! understands.

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
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

/// Open the bucket.
pub fn open(c: &S3Config) -> Result<Arc<dyn ObjectStore>, Error> {
    check_bucket(&c.bucket)?;
    crate::nats::connect::install_crypto_provider();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&c.bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_virtual_hosted_style_request(false);
    if std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        && c.region.is_none()
    {
        b = b.with_region("us-east-1");
    }
    if let Some(e) = &c.endpoint {
        b = b.with_endpoint(e);
        if e.starts_with("http://") {
            b = b.with_allow_http(true);
        }
    }
    if let Some(r) = &c.region {
        b = b.with_region(r);
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
