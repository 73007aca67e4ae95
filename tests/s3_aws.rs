//! The S3 store as AWS users configure it, against a real S3 server (moto): an `http://`
//! endpoint from `AWS_ENDPOINT_URL` alone (no `AWS_ALLOW_HTTP`), credentials, region and
//! endpoint from a named profile of the shared AWS files (no key in the environment), a
//! profile that does not exist refused at once naming the files, and every upload carrying
//! a checksum the server keeps (issue 16).

use serde_json::Value;
use snapvault_test_support::MotoServer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");

/// The CLI on `data` with the S3 store `s3://vault`, every AWS variable cleared first.
fn snapvault(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "RUST_LOG",
        "SNAPVAULT_DATA",
        "SNAPVAULT_NATS",
    ] {
        cmd.env_remove(var);
    }
    // No real ~/.aws of whoever runs the tests.
    cmd.env("HOME", data);
    cmd.envs(env.iter().copied())
        .arg("--data")
        .arg(data)
        .args(["--json", "--store", "s3://vault"])
        .args(args)
        .output()
        .expect("run snapvault")
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON result")
}

/// One plain HTTP request to moto's own API (`/moto-api/...`); the response body.
fn moto_api(endpoint: &str, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect to moto");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{method} {path}: {reply}"
    );
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[test]
fn aws_conventions_work_against_a_real_s3_server() {
    let moto = MotoServer::start();
    moto.create_bucket("vault");
    let endpoint = moto.endpoint();

    // 1. An http:// endpoint from the environment alone: no AWS_ALLOW_HTTP, no flag.
    let d1 = tempfile::tempdir().unwrap();
    let env_only = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    ok_json(snapvault(
        d1.path(),
        &env_only,
        &["collection", "create", "c1"],
    ));
    let ingested = ok_json(snapvault(
        d1.path(),
        &env_only,
        &[
            "ingest",
            "c1",
            "--segments",
            "3",
            "--files",
            "2",
            "--size",
            "2048",
        ],
    ));
    assert_eq!(ingested["segment_ids"].as_array().map(Vec::len), Some(3));

    // 2. A named profile of the shared files: keys from the credentials file, region and
    //    endpoint from the config file; nothing in the environment.
    let d2 = tempfile::tempdir().unwrap();
    let credentials: PathBuf = d2.path().join("creds");
    let config: PathBuf = d2.path().join("config");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = wrong\n\n[ci]\naws_access_key_id = ci-key\naws_secret_access_key = ci-secret\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!("[profile ci]\nregion = us-east-1\nendpoint_url = {endpoint}\n"),
    )
    .unwrap();
    let (creds_s, config_s) = (
        credentials.display().to_string(),
        config.display().to_string(),
    );
    let profile = [
        ("AWS_PROFILE", "ci"),
        ("AWS_SHARED_CREDENTIALS_FILE", creds_s.as_str()),
        ("AWS_CONFIG_FILE", config_s.as_str()),
    ];
    // moto records every request from here on: the uploads' headers are checked below.
    moto_api(&endpoint, "POST", "/moto-api/recorder/start-recording");
    ok_json(snapvault(
        d2.path(),
        &profile,
        &["collection", "create", "c2"],
    ));
    let ingested = ok_json(snapvault(
        d2.path(),
        &profile,
        &[
            "ingest",
            "c2",
            "--segments",
            "2",
            "--files",
            "1",
            "--size",
            "1024",
        ],
    ));
    assert_eq!(ingested["segment_ids"].as_array().map(Vec::len), Some(2));
    let snap = ok_json(snapvault(
        d2.path(),
        &profile,
        &["snapshot", "create", "c2", "s"],
    ));
    assert_eq!(snap["status"], "committed");

    // 3. A profile neither file has: refused at once, naming it and the files.
    let missing = [
        ("AWS_PROFILE", "nope"),
        ("AWS_SHARED_CREDENTIALS_FILE", creds_s.as_str()),
        ("AWS_CONFIG_FILE", config_s.as_str()),
    ];
    let out = snapvault(d2.path(), &missing, &["collection", "list"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid_argument") && err.contains("'nope'") && err.contains("creds"),
        "{err}"
    );

    // 4. Every upload of the profile run carried a SHA-256 checksum for the server to check
    //    (S3 refuses a body that does not match it).
    let recording = moto_api(&endpoint, "GET", "/moto-api/recorder/download-recording");
    let uploads: Vec<Value> = recording
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| {
            r["method"] == "PUT" && r["url"].as_str().is_some_and(|u| u.contains("/vault/"))
        })
        .collect();
    assert!(uploads.len() >= 3, "{recording}");
    for r in &uploads {
        let headers = r["headers"].as_object().expect("headers");
        let sum = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-checksum-sha256"))
            .and_then(|(_, v)| v.as_str());
        assert!(
            sum.is_some_and(|s| s.len() == 44),
            "an upload without a SHA-256 checksum: {r}"
        );
        // Signed with the profile's key, not the default profile's.
        let auth = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("");
        assert!(auth.contains("Credential=ci-key/"), "{r}");
    }
}
