//! What to run and how big: the command line and the plan made from it.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Benchmark for outboxd.
#[derive(Debug, Clone, Parser)]
#[command(name = "outboxd-bench", about, long_about = None)]
pub struct Args {
    /// quick (a minute, for development), standard (the report), long (+ bloat).
    #[arg(long, default_value = "standard")]
    pub mode: String,
    /// Repetitions of the drain and ceiling measurements (medians are reported).
    #[arg(long)]
    pub runs: Option<u32>,
    /// Backlog rows for the drain phases.
    #[arg(long)]
    pub rows: Option<u64>,
    /// Seconds per sustained rate.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Offered rates, events/s.
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<u32>>,
    /// Offered rates of the single-event phase, transactions/s (one event each).
    #[arg(long, value_delimiter = ',')]
    pub single_rates: Option<Vec<u32>>,
    /// Relays of the single-event phase (for experiments; default both): outboxd, naive.
    #[arg(long, value_delimiter = ',')]
    pub single_relays: Option<Vec<String>>,
    /// `sslmode`s of the single-event phase, each run once per mode (e.g. disable,require;
    /// default: the writers' and relays' own default, `prefer`).
    #[arg(long, value_delimiter = ',')]
    pub single_sslmodes: Option<Vec<String>>,
    /// Databases of the databases phase (default both): postgres, mariadb.
    #[arg(long, value_delimiter = ',')]
    pub databases: Option<Vec<String>>,
    /// Backlog rows of the databases phase's drains.
    #[arg(long)]
    pub database_rows: Option<u64>,
    /// Offered rates of the databases phase's single-event runs, transactions/s.
    #[arg(long, value_delimiter = ',')]
    pub database_rates: Option<Vec<u32>>,
    /// Phases to run (default: all but bloat): ceilings, drain, sustained, single, tls, search,
    /// sinks, databases, bloat.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Measure nothing: re-render the summary and chart of this results.json into --out.
    #[arg(long)]
    pub render: Option<PathBuf>,
}

/// What to run, how big.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// quick / standard / long.
    pub mode: String,
    /// Repetitions of drain and ceilings.
    pub runs: u32,
    /// Backlog rows.
    pub rows: u64,
    /// Seconds per sustained rate.
    pub seconds: u64,
    /// Offered rates.
    pub rates: Vec<u32>,
    /// Seconds per step of the flat-backlog search.
    pub search_seconds: u64,
    /// How long the bloat phase holds the xmin horizon.
    pub bloat_hold_secs: u64,
    /// Offered rates of the single-event phase, transactions/s.
    #[serde(default)]
    pub single_rates: Vec<u32>,
    /// Seconds per single-event run.
    #[serde(default)]
    pub single_seconds: u64,
    /// Relays of the single-event phase.
    #[serde(default)]
    pub single_relays: Vec<String>,
    /// `sslmode`s of the single-event phase (empty: the default).
    #[serde(default)]
    pub single_sslmodes: Vec<String>,
    /// Databases of the databases phase.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Backlog rows of its drains.
    #[serde(default)]
    pub database_rows: u64,
    /// Offered rates of its single-event runs.
    #[serde(default)]
    pub database_rates: Vec<u32>,
    /// Phases to run.
    pub phases: Vec<String>,
    #[serde(skip)]
    pub(crate) out: PathBuf,
}

impl Plan {
    /// From the command line.
    pub fn from_args(a: &Args) -> anyhow::Result<Plan> {
        let (runs, rows, seconds, search, hold, single) = match a.mode.as_str() {
            "quick" => (1, 200_000, 15, 10, 60, 15),
            "standard" => (3, 1_000_000, 60, 20, 600, 30),
            "long" => (3, 1_000_000, 60, 20, 600, 30),
            other => anyhow::bail!("unknown mode {other:?} (quick, standard, long)"),
        };
        let mut phases: Vec<String> = if a.only.is_empty() {
            [
                "ceilings",
                "drain",
                "sustained",
                "single",
                "tls",
                "search",
                "sinks",
                "databases",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        } else {
            a.only.clone()
        };
        if a.mode == "long" && a.only.is_empty() {
            phases.push("bloat".into());
        }
        Ok(Plan {
            mode: a.mode.clone(),
            runs: a.runs.unwrap_or(runs),
            rows: a.rows.unwrap_or(rows),
            seconds: a.seconds.unwrap_or(seconds),
            rates: a
                .rates
                .clone()
                .unwrap_or_else(|| vec![1_000, 10_000, 20_000]),
            search_seconds: search,
            bloat_hold_secs: hold,
            single_rates: a
                .single_rates
                .clone()
                .unwrap_or_else(|| vec![1_000, 2_000, 5_000]),
            single_seconds: a.seconds.unwrap_or(single),
            single_relays: a
                .single_relays
                .clone()
                .unwrap_or_else(|| vec!["naive".into(), "outboxd".into()]),
            single_sslmodes: a.single_sslmodes.clone().unwrap_or_default(),
            databases: a
                .databases
                .clone()
                .unwrap_or_else(|| vec!["postgres".into(), "mariadb".into()]),
            database_rows: a.database_rows.unwrap_or(200_000),
            database_rates: a
                .database_rates
                .clone()
                .unwrap_or_else(|| vec![1_000, 2_000]),
            phases,
            out: a.out.clone(),
        })
    }

    pub(crate) fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}
