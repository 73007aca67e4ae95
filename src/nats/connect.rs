//! How a node or the CLI connects to NATS: URL plus at most one credential (token,
//! user/password, nkey seed, creds file) and optional TLS (CA, client cert and key).

use snapvault_events::Error;
use std::path::PathBuf;
use std::time::Duration;

/// Everything needed to open a NATS connection.
#[derive(Clone, Default)]
pub struct NatsOptions {
    /// One URL or a comma-separated list (`nats://a:4222,nats://b:4222`).
    pub url: String,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How this connection is named in the server's monitoring.
    pub name: String,
    /// How long the first connect may take.
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "…");
        f.debug_struct("NatsOptions")
            .field("url", &self.url)
            .field("token", &hidden(&self.token))
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("nkey_file", &self.nkey_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl NatsOptions {
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            name: "snapvault".into(),
            connect_timeout_ms: 5_000,
            ..Default::default()
        }
    }

    /// Refuse contradictory or half-given credentials before anything connects.
    pub fn check(&self) -> Result<(), Error> {
        if self.url.trim().is_empty() {
            return Err(Error::invalid_argument(
                "--nats needs a URL, e.g. nats://127.0.0.1:4222",
            ));
        }
        let given = [
            self.token.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.nkey_file.is_some(),
            self.creds_file.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given > 1 {
            return Err(Error::invalid_argument(
                "give at most one NATS credential: --nats-token, --nats-user/--nats-password, --nats-nkey or --nats-creds",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(Error::invalid_argument(
                "--nats-user and --nats-password go together",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::invalid_argument(
                "--nats-tls-cert and --nats-tls-key go together",
            ));
        }
        Ok(())
    }
}

/// Make rustls usable by every library in the process (async-nats and the S3 client link
/// rustls with different default providers; without one chosen, a TLS connect panics).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connect. The client reconnects by itself after a lost connection, forever, with backoff.
pub async fn connect(opts: &NatsOptions) -> Result<async_nats::Client, Error> {
    opts.check()?;
    install_crypto_provider();
    let mut o = async_nats::ConnectOptions::new()
        .name(&opts.name)
        .connection_timeout(Duration::from_millis(opts.connect_timeout_ms.max(1)))
        .max_reconnects(None);
    if let Some(t) = &opts.token {
        o = o.token(t.clone());
    }
    if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
        o = o.user_and_password(u.clone(), p.clone());
    }
    if let Some(path) = &opts.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_argument(format!(
                "cannot read nkey seed file {}: {e}",
                path.display()
            ))
        })?;
        o = o.nkey(seed.trim().to_string());
    }
    if let Some(path) = &opts.creds_file {
        o = o.credentials_file(path).await.map_err(|e| {
            Error::invalid_argument(format!(
                "cannot read NATS creds file {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(ca) = &opts.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) {
        o = o
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let urls: Vec<&str> = opts.url.split(',').map(str::trim).collect();
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| {
            u.parse().map_err(|e| {
                Error::invalid_argument(format!(
                    "NATS URL '{}' is not valid: {e}",
                    u.escape_debug()
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    o.connect(addrs).await.map_err(|e| {
        let text = e.to_string();
        if text.contains("authorization") || text.contains("Authorization") {
            Error::invalid_argument(format!(
                "NATS at {} refused the credentials: {text}",
                opts.url
            ))
        } else {
            Error::unavailable(format!("cannot connect to NATS at {}: {text}", opts.url))
        }
    })
}
