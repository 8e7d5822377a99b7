//! `prismctl export features`: a de-duplicated training set from the fraud model's offline
//! store, joined with the labels known at a cut-off time (see `prism_fraud::export`).
//!
//! Exit status 0 when the file was written; 1 when the store cannot be read (a service
//! down, a file that is not a complete Parquet file, named); 2 for a wrong invocation.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use prism_fraud::export::{export, ExportRequest};
use prism_platform::Config;
use prism_projector::app::Projector as _;
use prism_projector::copies::Copies as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// The fraud features of card payments and withdrawals in [--from, --to), with a
    /// `label` column: reported as fraud at or before --cutoff.
    Features(FeaturesArgs),
}

#[derive(Debug, clap::Args)]
struct FeaturesArgs {
    /// First event time included (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    from: DateTime<Utc>,
    /// First event time excluded.
    #[arg(long, value_parser = parse_time)]
    to: DateTime<Utc>,
    /// Labels known at this time: reports made later are left out (default: now).
    #[arg(long, value_parser = parse_time)]
    cutoff: Option<DateTime<Utc>>,
    /// The Parquet file to write (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{raw:?} is not an RFC 3339 time like 2026-11-01T00:00:00Z: {e}"))
}

pub async fn run(config: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let What::Features(args) = &args.what;
    if args.from >= args.to {
        eprintln!("prismctl: --from must be before --to");
        return Ok(ExitCode::from(2));
    }
    let request = ExportRequest {
        from: args.from,
        to: args.to,
        cutoff: args.cutoff.unwrap_or_else(Utc::now),
        out: args.out.clone(),
    };
    let projector = prism_fraud::app::FraudProjector::new(config.clone())?;
    let copy = match async { projector.open().await?.live().await }.await {
        Ok(copy) => copy,
        Err(e) => {
            eprintln!("prismctl: export features: {e:#}\n(is the stack up? `dev/stack up`)");
            return Ok(ExitCode::FAILURE);
        }
    };
    let store = copy.offline.clone();
    let outcome = tokio::task::spawn_blocking(move || export(&store, &request))
        .await
        .context("exporting")?;
    let summary = match outcome {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("prismctl: export features: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &summary).context("writing the summary")?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "wrote {} rows ({} reported as fraud by the cut-off) to {}\n\
             read {} rows from {} files ({} duplicates dropped) and {} label files \
             ({} reports after the cut-off left out)",
            summary.rows,
            summary.frauds,
            args.out.display(),
            summary.rows_read,
            summary.row_files,
            summary.duplicates,
            summary.label_files,
            summary.reports_after_cutoff
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
