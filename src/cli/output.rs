//! How the CLI talks: JSON objects on stdout for scripts (`--json`), aligned tables and short
//! sentences for people, progress on stderr only when stderr is a terminal, and errors as one
//! line `error[<code>]: <message>` so a script can match the code and a person can read it.

use serde::Serialize;
use snapvault::Error;
use std::io::{IsTerminal, Write};

/// Where command results go, and in which shape.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Print a result: `value` as one JSON document with `--json`, otherwise `human()`.
    /// `human` is lazy so that building a table costs nothing when a script asked for JSON.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        if self.json {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| Error::internal(format!("cannot encode the result as JSON: {e}")))?;
            write_stdout(&text);
        } else {
            write_stdout(human().trim_end_matches('\n'));
        }
        Ok(())
    }

    /// Whether results are JSON documents (`--json`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A line for people only (steps of the demo); silent with `--json` so stdout stays one
    /// JSON document.
    pub fn say(&self, line: &str) {
        if !self.json {
            write_stdout(line);
        }
    }
}

/// Write `text` and a newline to stdout. A closed pipe (`snapvault ... | head`) is not an error
/// worth a panic: the reader has what it wanted.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Report a failure: one line on stderr, and with `--json` the same as an object on stdout so a
/// script reading stdout always gets one JSON document.
pub fn report_error(e: &Error, json: bool) {
    // One line, always: a multi-line message would break `2>&1 | grep error[`.
    let message = e.message.replace(['\n', '\r'], " ");
    // Errors converted from log errors carry their code as a prefix ("unavailable: ...");
    // the code is already in the brackets, so do not say it twice.
    let prefix = format!("{}: ", e.code);
    let message = message
        .strip_prefix(&prefix)
        .map(str::to_string)
        .unwrap_or(message);
    eprintln!("error[{}]: {message}", e.code);
    if json {
        let doc = serde_json::json!({
            "error": { "code": e.code.as_str(), "message": message }
        });
        write_stdout(&doc.to_string());
    }
}

/// A plain text table: a header row and left-aligned columns (numbers right-aligned).
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns whose header is in `numeric` are right-aligned.
    pub fn new(headers: &[&'static str], numeric: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            right: headers.iter().map(|h| numeric.contains(h)).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right.get(i).copied().unwrap_or(false) {
                    line.push_str(&format!("{cell:>w$}"));
                } else {
                    line.push_str(&format!("{cell:<w$}"));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes for people: `12.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Elapsed time for people: `850 ms`, `12.3 s`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// `1` → `1 shard`, `2` → `2 shards`.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`, without a date library
/// ([`snapvault::views::civil_utc`]).
pub fn utc(ms: u64) -> String {
    let (year, month, day, hour, minute, second) = snapvault::views::civil_utc(ms / 1000);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// A one-line progress counter on stderr, redrawn in place; only when stderr is a terminal, so
/// logs and CI output never fill with carriage returns.
pub struct Progress {
    label: String,
    total: u64,
    enabled: bool,
    started: std::time::Instant,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            enabled: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
        }
    }

    pub fn update(&self, done: u64, bytes_done: u64) {
        if !self.enabled {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (bytes_done as f64 / secs) as u64;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {done}/{} ({}, {}/s)   ",
            self.label,
            self.total,
            self::bytes(bytes_done),
            self::bytes(rate)
        );
        let _ = err.flush();
    }

    /// End the progress line so the next output starts on a fresh line.
    pub fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(65_536), "64.0 KiB");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        let mut t = Table::new(&["NAME", "N"], &["N"]);
        t.row(vec!["a".into(), "10".into()]);
        assert_eq!(t.render(), "NAME   N\na     10\n");
    }
}
