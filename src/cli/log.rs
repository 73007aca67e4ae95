//! `log verify` and `log repair`: the operator's tools for a damaged embedded log (DIR/log).
//! They work on the sled files directly, without starting a node (a node refuses to open a
//! log that lost acknowledged events; see `events/src/sled_log.rs`).

use crate::cli::output::{Output, plural};
use clap::Subcommand;
use snapvault::Error;
use snapvault_events::sled_repair;
use std::path::Path;

#[derive(Debug, Subcommand)]
pub enum LogCmd {
    /// Walk every record of the embedded log (DIR/log) — checksums, positions, each stream's
    /// versions, the acknowledged watermark — and name the first bad position. Changes nothing.
    Verify,
    /// Drop every record after a position, accepting their loss (use the position `log
    /// verify` names, minus one). Without --yes it only prints what it would drop.
    Repair {
        /// Keep records 1..=POS; drop the rest and fix stream heads, index and watermark.
        #[arg(long, value_name = "POS")]
        truncate_after: u64,
        /// Really drop them.
        #[arg(long)]
        yes: bool,
    },
}

/// Run a `log` command on the sled log of data directory `data`. With it, whether a report
/// was printed before the error (a damaged log, a dry run).
pub fn run(out: &Output, data: &Path, command: &LogCmd) -> (Result<(), Error>, bool) {
    let mut printed = false;
    let result = run_printing(out, data, command, &mut printed);
    (result, printed)
}

fn run_printing(
    out: &Output,
    data: &Path,
    command: &LogCmd,
    printed: &mut bool,
) -> Result<(), Error> {
    let path = data.join("log");
    if !path.is_dir() {
        return Err(Error::not_found(format!(
            "no embedded log at {} (is --data right?)",
            path.display()
        )));
    }
    match command {
        LogCmd::Verify => {
            let report = sled_repair::verify(&path)?;
            out.emit(&report, || {
                let mark = report
                    .watermark
                    .map_or("none".to_string(), |m| m.to_string());
                format!(
                    "{}: {} in {}, acknowledged up to {mark}",
                    report.path.display(),
                    plural(report.records, "record"),
                    plural(report.streams, "stream"),
                )
            })?;
            *printed = true;
            match (report.first_bad_position, &report.reason) {
                (Some(position), Some(reason)) => Err(Error::internal(format!(
                    "the log is damaged at position {position}: {reason}; `snapvault log repair --truncate-after {}` drops it and everything after (their events are lost)",
                    position.saturating_sub(1)
                ))),
                _ => Ok(()),
            }
        }
        LogCmd::Repair {
            truncate_after,
            yes,
        } => {
            let report = sled_repair::truncate_after(&path, *truncate_after, !yes)?;
            out.emit(&report, || {
                format!(
                    "{} {} after position {} ({} acknowledged ones already gone); {} cut back",
                    if *yes { "dropped" } else { "would drop" },
                    plural(report.records_dropped, "record"),
                    report.head,
                    report.acknowledged_lost,
                    plural(report.streams_cut, "stream"),
                )
            })?;
            *printed = true;
            if *yes {
                Ok(())
            } else {
                Err(Error::failed_precondition(
                    "nothing was changed: add --yes to drop these records",
                ))
            }
        }
    }
}
