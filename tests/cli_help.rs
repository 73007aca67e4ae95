//! The `snapvault` help as a person reads it: every command has a description, every
//! argument and flag a help text, and the connection flags (NATS, log, store) are listed once —
//! in the top-level help and the `help connection` topic — while each command's help points
//! there. The flags still work after any command.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_snapvault");

const POINTER: &str = "see 'snapvault help connection'.";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SNAPVAULT_DATA")
        .env_remove("SNAPVAULT_NATS")
        .output()
        .expect("run snapvault")
}

fn help(path: &[String]) -> String {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let out = run(&args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// One entry of a help section: its name, and whether any text describes it.
struct Entry {
    name: String,
    described: bool,
}

/// The sections of a clap help text (`Commands:`, `Arguments:`, `Options:`, a custom
/// heading), each with its entries. clap writes an entry either on one line (name, two or
/// more spaces, text) or as the name alone with the text on the next, deeper-indented lines.
fn sections(text: &str) -> Vec<(String, Vec<Entry>)> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<(String, Vec<Entry>)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        if indent(line) == 0 {
            if line.ends_with(':') && !line.starts_with("Usage") {
                out.push((line.trim_end_matches(':').to_string(), Vec::new()));
            } else if !line.starts_with("Usage") {
                // Prose (about, after-help) ends the current section.
                out.push((String::new(), Vec::new()));
            }
            continue;
        }
        let Some((heading, entries)) = out.last_mut() else {
            continue;
        };
        if heading.is_empty() {
            continue;
        }
        // An entry starts at 2 to 6 columns (`  <NAME>`, `  -h, --help`, `      --data`);
        // description lines sit deeper.
        if !(2..=6).contains(&indent(line)) {
            continue;
        }
        let body = line.trim_start();
        let (name, rest) = match body.find("  ") {
            Some(at) => (&body[..at], body[at..].trim()),
            None => (body, ""),
        };
        let next_is_text = lines
            .get(i + 1)
            .is_some_and(|n| !n.trim().is_empty() && indent(n) > 6);
        entries.push(Entry {
            name: name.to_string(),
            described: !rest.is_empty() || next_is_text,
        });
    }
    out.retain(|(h, _)| !h.is_empty());
    out
}

/// Walk the whole command tree through `--help`: every command is described, every argument
/// and flag has help, no command but the top level lists a connection flag, and each ends
/// with the pointer to `help connection`.
#[test]
fn every_command_and_argument_has_help() {
    let top = help(&[]);
    let top_sections = sections(&top);
    let connection_flags: BTreeSet<String> = top_sections
        .iter()
        .filter(|(h, _)| h.starts_with("Connection"))
        .flat_map(|(_, e)| e.iter())
        .filter_map(|e| e.name.split_whitespace().next().map(str::to_string))
        .collect();
    for flag in [
        "--nats",
        "--nats-creds",
        "--nats-tls-ca",
        "--prefix",
        "--log",
        "--store",
        "--s3-endpoint",
        "--s3-secret-access-key",
        "--request-timeout",
    ] {
        assert!(
            connection_flags.contains(flag),
            "{flag} not under the Connection heading of --help:\n{top}"
        );
    }
    assert!(top.contains("snapvault help connection"), "{top}");

    let mut problems = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let text = help(&path);
        seen += 1;
        let shown = if path.is_empty() {
            "snapvault".to_string()
        } else {
            format!("snapvault {}", path.join(" "))
        };
        // The description is the first line, before `Usage:`.
        if text.lines().next().is_none_or(|l| l.starts_with("Usage")) {
            problems.push(format!("`{shown}` has no description"));
        }
        for (heading, entries) in sections(&text) {
            for e in &entries {
                if !e.described {
                    problems.push(format!("`{shown}`: `{}` ({heading}) has no help", e.name));
                }
                if heading == "Commands" {
                    let name = e.name.split_whitespace().next().unwrap_or_default();
                    if name != "help" {
                        let mut sub = path.clone();
                        sub.push(name.to_string());
                        todo.push(sub);
                    }
                } else if !path.is_empty() {
                    let flag = e.name.split([',', ' ']).find(|w| w.starts_with("--"));
                    if let Some(flag) = flag.filter(|f| connection_flags.contains(*f)) {
                        problems.push(format!("`{shown}` lists the connection flag {flag}"));
                    }
                }
            }
        }
        if !path.is_empty() && !text.trim_end().ends_with(POINTER) {
            problems.push(format!(
                "`{shown}` help does not end with the pointer to 'snapvault help connection'"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The walk reached every command group and its leaves (the tree today: 13 groups and
    // commands at the top, 30 below them).
    assert!(seen >= 40, "walked only {seen} commands");
}

/// `snapvault help connection` lists every connection flag of the top-level help, with its
/// help; `snapvault connection` prints the same topic.
#[test]
fn help_connection_lists_the_connection_flags() {
    let topic = run(&["help", "connection"]);
    assert!(topic.status.success(), "{topic:?}");
    let text = String::from_utf8(topic.stdout).expect("utf-8");
    assert!(
        text.contains("before or after the command"),
        "the topic says where the flags go:\n{text}"
    );
    let in_topic: BTreeSet<String> = sections(&text)
        .iter()
        .filter(|(h, _)| h.starts_with("Connection"))
        .flat_map(|(_, e)| e.iter())
        .inspect(|e| assert!(e.described, "{} has no help in the topic", e.name))
        .filter_map(|e| e.name.split_whitespace().next().map(str::to_string))
        .collect();
    let in_top: BTreeSet<String> = sections(&help(&[]))
        .iter()
        .filter(|(h, _)| h.starts_with("Connection"))
        .flat_map(|(_, e)| e.iter())
        .filter_map(|e| e.name.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(in_topic, in_top);
    assert!(in_topic.len() >= 18, "{in_topic:?}");
    // The topic is about connecting: the other global flags are left to each command's help.
    assert!(!text.contains("--log-format"), "{text}");
    let as_command = run(&["connection"]);
    assert_eq!(String::from_utf8_lossy(&as_command.stdout), text);
    assert!(as_command.status.success());
    // It is a topic, not a command in the list.
    let top = help(&[]);
    assert!(
        !top.lines()
            .any(|l| l.trim_start().starts_with("connection ")),
        "{top}"
    );
}

/// The connection flags are still accepted after the command, as scripts write them
/// (`snapvault snapshot list --collection c1 --nats URL`): they are parsed and checked there
/// like before it, before anything opens.
#[test]
fn connection_flags_still_parse_after_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let data_arg = data.to_str().expect("utf-8 path");
    for (flag, value, says) in [
        (
            "--request-timeout",
            "0s",
            "--request-timeout must be above 0",
        ),
        ("--store", "ftp://x", "must be file://DIR or s3://BUCKET"),
        ("--log", "jetstream", "--log jetstream needs --nats URL"),
        ("--prefix", "a..b", "subject prefix 'a..b'"),
    ] {
        let out = run(&[
            "--data",
            data_arg,
            "snapshot",
            "list",
            "--collection",
            "c1",
            flag,
            value,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(says), "{flag}: {stderr}");
        assert!(
            !Path::new(&data).exists(),
            "{flag}: bad input wrote nothing"
        );
    }
}
