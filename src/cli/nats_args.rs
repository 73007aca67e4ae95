//! The NATS, log and store flags (global): `--nats URL` and its credentials make every command
//! talk to a snapvault service instead of opening `--data`, and make `serve` serve on NATS;
//! `--log` and `--store` choose what a node runs on.
//!
//! They are listed once, under their own heading in `snapvault --help` and in the help topic
//! `snapvault help connection`; every subcommand still accepts them (they are global) but
//! its help only points to the topic (see `super::command`).

use clap::{Args, ValueEnum};
use snapvault::nats::NatsOptions;
use snapvault::s3::S3Config;
use snapvault::{Error, LogConfig, NodeConfig, StoreConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogKind {
    /// sled in DIR/log of --data (one process).
    #[default]
    Sled,
    /// A JetStream stream on --nats (shared by every node on that NATS and prefix).
    Jetstream,
}

#[derive(Debug, Clone, Args, Default)]
#[command(next_help_heading = super::CONNECTION_HEADING)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated. Every command then talks to the snapvault
    /// service on it (same output, JSON and errors) instead of opening --data; `serve` serves
    /// the request/reply API on it.
    #[arg(long, global = true, value_name = "URL", env = "SNAPVAULT_NATS")]
    pub nats: Option<String>,
    /// NATS token.
    #[arg(
        long = "nats-token",
        global = true,
        value_name = "TOKEN",
        env = "SNAPVAULT_NATS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long = "nats-user", global = true, value_name = "USER")]
    pub user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long = "nats-password",
        global = true,
        value_name = "PASSWORD",
        env = "SNAPVAULT_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// A file holding an nkey seed.
    #[arg(long = "nats-nkey", global = true, value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// A NATS .creds file (JWT and nkey).
    #[arg(long = "nats-creds", global = true, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server; turns TLS on.
    #[arg(long = "nats-tls-ca", global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for TLS (with --nats-tls-key).
    #[arg(long = "nats-tls-cert", global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for TLS (with --nats-tls-cert).
    #[arg(long = "nats-tls-key", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Subject prefix: the API is <PREFIX>.api.v1.<op>, events <PREFIX>.events.v1.<kind>.<id>,
    /// the JetStream log <PREFIX>.log.<stream>.
    #[arg(
        long,
        global = true,
        value_name = "PREFIX",
        default_value = "snapvault",
        env = "SNAPVAULT_PREFIX"
    )]
    pub prefix: String,
    /// Where a node keeps its event log.
    #[arg(long, global = true, value_enum, default_value_t = LogKind::Sled)]
    pub log: LogKind,
    /// Replicas of the JetStream log stream when it is created (1, 3 or 5).
    #[arg(long = "log-replicas", global = true, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=5))]
    pub log_replicas: u64,
    /// The object store of a node: file://DIR or s3://BUCKET (default: DIR/objects of --data).
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS, or AWS_ENDPOINT_URL).
    #[arg(long = "s3-endpoint", global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long = "s3-region", global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id (default: AWS_ACCESS_KEY_ID).
    #[arg(long = "s3-access-key-id", global = true, value_name = "ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (default: AWS_SECRET_ACCESS_KEY).
    #[arg(
        long = "s3-secret-access-key",
        global = true,
        value_name = "KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,
    /// How long a remote command waits for one answer before it retries (same request id).
    #[arg(
        long = "request-timeout",
        global = true,
        value_name = "DURATION",
        default_value = "120s"
    )]
    pub request_timeout: String,
}

impl NatsArgs {
    pub fn options(&self, name: &str) -> Option<NatsOptions> {
        let url = self.nats.clone()?;
        Some(NatsOptions {
            token: self.token.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            nkey_file: self.nkey.clone(),
            creds_file: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            name: name.to_string(),
            ..NatsOptions::new(url)
        })
    }

    pub fn request_timeout(&self) -> Result<Duration, Error> {
        let ms = super::gc::parse_duration_ms(&self.request_timeout)?;
        if ms == 0 {
            return Err(Error::invalid_argument("--request-timeout must be above 0"));
        }
        Ok(Duration::from_millis(ms))
    }

    /// Refuse contradictory flags before anything opens or connects.
    pub fn check(&self, serving: bool) -> Result<(), Error> {
        if let Some(o) = self.options("snapvault") {
            o.check()?;
        }
        snapvault_events::jetstream::validate_prefix(&self.prefix).map_err(Error::from)?;
        self.request_timeout()?;
        if self.log == LogKind::Jetstream && self.nats.is_none() {
            return Err(Error::invalid_argument("--log jetstream needs --nats URL"));
        }
        if self.nats.is_some()
            && !serving
            && (self.log == LogKind::Jetstream || self.store.is_some())
        {
            return Err(Error::invalid_argument(
                "--log and --store configure the node of `serve`; other commands with --nats talk to that service",
            ));
        }
        if let Some(s) = &self.store {
            self.store_config_for(s, Path::new("."))?;
        }
        Ok(())
    }

    fn store_config_for(&self, url: &str, _data: &Path) -> Result<StoreConfig, Error> {
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(Error::invalid_argument("--store file:// needs a directory"));
            }
            return Ok(StoreConfig::Local {
                root: PathBuf::from(dir),
            });
        }
        if let Some(bucket) = url.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            snapvault::s3::check_bucket(bucket)?;
            return Ok(StoreConfig::S3(S3Config {
                bucket: bucket.to_string(),
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                access_key_id: self.s3_access_key_id.clone(),
                secret_access_key: self.s3_secret_access_key.clone(),
                session_token: None,
            }));
        }
        Err(Error::invalid_argument(format!(
            "--store '{}' must be file://DIR or s3://BUCKET",
            url.escape_debug()
        )))
    }

    /// The node a command (or `serve`) runs: the data directory's defaults, changed by
    /// `--log` and `--store`.
    pub fn node_config(&self, data: &Path) -> Result<NodeConfig, Error> {
        let mut config = NodeConfig::embedded(data);
        if let Some(s) = &self.store {
            config.store = self.store_config_for(s, data)?;
        }
        if self.log == LogKind::Jetstream {
            let nats = self
                .options("snapvault-log")
                .ok_or_else(|| Error::invalid_argument("--log jetstream needs --nats URL"))?;
            config.log = LogConfig::JetStream {
                nats: Box::new(nats),
                config: Box::new(snapvault_events::JetStreamLogConfig {
                    prefix: self.prefix.clone(),
                    replicas: self.log_replicas as usize,
                    ..Default::default()
                }),
            };
        }
        Ok(config)
    }
}
