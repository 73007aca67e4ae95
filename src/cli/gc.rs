//! `gc run [--dry-run] [--dropped-retention D] [--orphan-window D]` and `gc status`.

use super::Ctx;
use super::output::{Table, bytes, utc};
use snapvault::Error;
use snapvault_actors::gc::{GcReport, GcRunOptions, GcStatus};
use snapvault_events::domain::gc::GcCategory;
use std::time::Duration;

/// How long `gc run` waits for the ref index to load before it reports "not loaded".
const LOAD_WAIT: Duration = Duration::from_secs(600);

/// `90s`, `15m`, `24h`, `7d`, `500ms`, `0s` → milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let bad = || {
        Error::invalid_argument(format!(
            "duration '{}' must be a number with a unit: ms, s, m, h or d (e.g. 0s, 90s, 24h)",
            t.escape_debug()
        ))
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

pub async fn run(
    ctx: &Ctx,
    dry_run: bool,
    dropped_retention: Option<&str>,
    orphan_window: Option<&str>,
) -> Result<(), Error> {
    let options = GcRunOptions {
        dry_run,
        dropped_retention_ms: dropped_retention.map(parse_duration_ms).transpose()?,
        orphan_window_ms: orphan_window.map(parse_duration_ms).transpose()?,
    };
    // A command-line run waits for the index to load (it just started the node); the report
    // still says "not loaded" if it did not within the wait.
    let report = ctx.client.gc_run(options, LOAD_WAIT).await?;
    ctx.out.emit(&report, || render_report(&report))
}

fn render_report(r: &GcReport) -> String {
    if !r.loaded {
        return format!(
            "reclaimed nothing: {}",
            r.not_loaded_reason
                .as_deref()
                .unwrap_or("ref index not loaded")
        );
    }
    let verb = if r.dry_run {
        "would reclaim"
    } else {
        "reclaimed"
    };
    let mut t = Table::new(&["CATEGORY", "OBJECTS", "SIZE"], &["OBJECTS", "SIZE"]);
    for c in GcCategory::ALL {
        let a = r.reclaimed.get(&c).copied().unwrap_or_default();
        t.row(vec![
            c.as_str().to_string(),
            a.objects.to_string(),
            bytes(a.bytes),
        ]);
    }
    let total = r.total();
    let mut out = format!(
        "GC cycle {}{}: {verb} {} objects ({})\n{}",
        r.cycle,
        if r.dry_run { " (dry run)" } else { "" },
        total.objects,
        bytes(total.bytes),
        t.render()
    );
    if r.dry_run {
        for (c, keys) in &r.keys {
            for k in keys {
                out.push_str(&format!("\n{}  {k}", c.as_str()));
            }
        }
    }
    if r.truncated {
        out.push_str("\nmore remains: the cycle stopped at its object limit; run again");
    }
    out
}

pub async fn status(ctx: &Ctx) -> Result<(), Error> {
    let s = ctx.client.gc_status(Duration::from_secs(60)).await?;
    ctx.out.emit(&s, || render_status(&s))
}

fn render_status(s: &GcStatus) -> String {
    let mut out = if s.loaded {
        format!(
            "ref index loaded (at position {}, {} files indexed)",
            s.applied, s.files_indexed
        )
    } else {
        s.not_loaded_reason.clone().unwrap_or_default()
    };
    match &s.last_cycle {
        Some(r) => out.push_str(&format!(
            "\nlast cycle: {} ({} objects, {})",
            r.cycle,
            r.total().objects,
            bytes(r.total().bytes)
        )),
        None => out.push_str("\nlast cycle: none in this process"),
    }
    if let Some(next) = s.next_run_ms {
        out.push_str(&format!("\nnext run: {}", utc(next)));
    }
    out.push_str(&format!("\nchild restarts: {}", s.child_restarts));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("0s").ok(), Some(0));
        assert_eq!(parse_duration_ms("90s").ok(), Some(90_000));
        assert_eq!(parse_duration_ms("24h").ok(), Some(86_400_000));
        assert_eq!(parse_duration_ms("500ms").ok(), Some(500));
        assert_eq!(parse_duration_ms("7d").ok(), Some(604_800_000));
        for bad in ["", "s", "10", "-1s", "1.5h", "10x", "99999999999999999999d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
