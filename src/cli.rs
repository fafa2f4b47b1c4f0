//! The command line: `outboxd run | migrate | check | status | dead-letters`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::actors::partition_of;
use crate::config::Config;
use crate::outbox::admin::{self, Selection};
use crate::relay::{Relay, RelayOptions};
use crate::{db, health, sink, telemetry};

/// Exit code for an invalid configuration.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of `check` (and one-shot commands) when a server cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// outboxd — publishes every committed outbox row to Kafka, at least once, in order per
/// aggregate.
#[derive(Debug, Parser)]
#[command(name = "outboxd", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: config/outboxd.toml if it exists]; every key can be
    /// overridden by OUTBOXD__SECTION__KEY environment variables.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (the service). SIGTERM/SIGINT stop it gracefully (exit 0); too many
    /// crashes in the restart window exit 1.
    Run,
    /// Create or update the outbox tables (idempotent).
    Migrate,
    /// Validate the configuration, connect to PostgreSQL and ask the broker for metadata.
    /// Exit 2 for an invalid configuration, 3 when a server cannot be reached.
    Check(CheckArgs),
    /// Backlog, oldest pending age and dead letters, per partition.
    Status(StatusArgs),
    /// List, replay or discard dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

/// `status` options.
/// `outboxd check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only validate the configuration (and the files it names); connect to nothing.
    /// For a service manager's pre-start step: a database or broker that is down at boot
    /// must not turn into a restart loop, as `run` itself waits for them.
    #[arg(long)]
    pub config_only: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters (open ones unless --all).
    List {
        /// Include replayed and discarded ones.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put dead letters back into the outbox under their original ids.
    Replay(SelectArgs),
    /// Give up on dead letters for good (their aggregates continue).
    Discard(SelectArgs),
}

/// Which dead letters.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SelectArgs {
    /// Original outbox ids.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub id: Vec<i64>,
    /// Every open dead letter of this aggregate.
    #[arg(long)]
    pub aggregate: Option<String>,
    /// Every open dead letter.
    #[arg(long)]
    pub all: bool,
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        if self.all {
            Selection::All
        } else if let Some(a) = &self.aggregate {
            Selection::Aggregate(a.clone())
        } else {
            Selection::Ids(self.id.clone())
        }
    }
}

/// Runs a command with a valid configuration.
pub async fn execute(command: Command, config: Config) -> ExitCode {
    let result = match command {
        Command::Run => run(config).await,
        Command::Migrate => migrate(&config).await,
        Command::Check(a) if a.config_only => {
            println!("config: ok");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(_) => check(&config).await,
        Command::Status(a) => status(&config, a.json).await,
        Command::DeadLetters(c) => dead_letters(&config, c).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A connection pool to the configured database, for one command.
enum OneShot {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

impl OneShot {
    fn admin(&self) -> admin::Db<'_> {
        match self {
            OneShot::Postgres(p) => admin::Db::Postgres(p),
            OneShot::MySql(p) => admin::Db::MySql(p),
        }
    }

    /// Connects now, or says why not (and refuses a server that is too old).
    async fn connect(config: &Config, max: u32) -> anyhow::Result<OneShot> {
        Ok(match db::backend(&config.database) {
            db::Backend::Postgres => OneShot::Postgres(db::connect(&config.database, max).await?),
            db::Backend::MySql => OneShot::MySql(db::connect_mysql(&config.database, max).await?),
        })
    }
}

async fn one_shot_pool(config: &Config) -> Result<OneShot, ExitCode> {
    OneShot::connect(config, 2).await.map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(EXIT_UNREACHABLE)
    })
}

async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    let pool = match one_shot_pool(config).await {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let before = applied_migrations(&pool).await;
    match &pool {
        OneShot::Postgres(p) => crate::MIGRATOR.run(p).await?,
        OneShot::MySql(p) => crate::MYSQL_MIGRATOR.run(p).await?,
    }
    let after = applied_migrations(&pool).await;
    let new = after.saturating_sub(before);
    if new == 0 {
        println!("Schema is up to date ({after} migrations applied).");
    } else {
        println!("Applied {new} migration(s); {after} in total.");
    }
    Ok(ExitCode::SUCCESS)
}

async fn applied_migrations(pool: &OneShot) -> i64 {
    const SQL: &str = "SELECT count(*) FROM _sqlx_migrations WHERE success";
    match pool {
        OneShot::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
        OneShot::MySql(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
    }
    .unwrap_or(0)
}

/// The server's name and version, how the connection is protected, and (MariaDB/MySQL)
/// whether the relay's user may see running transactions.
async fn describe_server(pool: &OneShot) -> (String, String, Option<String>) {
    match pool {
        OneShot::Postgres(p) => {
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(p)
                .await
                .unwrap_or_default();
            (
                format!("PostgreSQL {version}"),
                db::tls_description(p).await,
                None,
            )
        }
        OneShot::MySql(p) => {
            let version = db::mysql_version(p).await.unwrap_or_default();
            let problem = crate::store::mysql::sql::running_writers(p)
                .await
                .err()
                .map(|e| e.to_string());
            (version, db::mysql_tls_description(p).await, problem)
        }
    }
}

async fn check(config: &Config) -> anyhow::Result<ExitCode> {
    println!("config: ok");
    let mut unreachable = Vec::new();
    match OneShot::connect(config, 1).await {
        Ok(pool) => {
            let (version, tls, problem) = describe_server(&pool).await;
            let migrated = applied_migrations(&pool).await;
            let expected = match pool {
                OneShot::Postgres(_) => crate::MIGRATOR.iter().count(),
                OneShot::MySql(_) => crate::MYSQL_MIGRATOR.iter().count(),
            } as i64;
            let schema = if migrated >= expected {
                "migrated".to_string()
            } else {
                format!("{migrated}/{expected} migrations applied — run `outboxd migrate`")
            };
            match problem {
                None => println!(
                    "database: ok ({}, {version}, {tls}, schema {schema})",
                    crate::secrets::redact(&config.database.url)
                ),
                Some(problem) => {
                    println!(
                        "database: MISCONFIGURED ({}, {version}): {problem}",
                        crate::secrets::redact(&config.database.url)
                    );
                    unreachable.push("database");
                }
            }
        }
        Err(e) => {
            println!("database: UNREACHABLE — {e:#}");
            unreachable.push("database");
        }
    }
    let health = std::sync::Arc::new(health::Health::default());
    let kind = config.sink.kind;
    let sink = match sink::create(config, health.clone()).await {
        Ok(s) => s,
        Err(e) => {
            // Only the configuration can make this fail (clients connect later).
            eprintln!("error: invalid configuration (1 problem):\n  - {kind}: {e:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let timeout = Duration::from_millis(config.database.connect_timeout_ms.max(1_000));
    let location = sink::location(config);
    match sink.probe(timeout).await {
        Ok(what) => println!(
            "broker: ok ({kind} at {location}, {what}; {})",
            sink.describe()
        ),
        Err(e) => {
            // A TLS or authentication failure says more than a timeout.
            match health.broker_problem() {
                Some(problem) => println!("broker: UNREACHABLE — {location}: {problem}"),
                None => println!("broker: UNREACHABLE — {location}: {e}"),
            }
            unreachable.push("broker");
        }
    }
    if unreachable.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: cannot reach the {}", unreachable.join(" and the "));
        Ok(ExitCode::from(EXIT_UNREACHABLE))
    }
}

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let listen = config.metrics.listen.clone();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        partitions = config.relay.partitions,
        sink = config.sink.kind.name(),
        at = %sink::location(&config),
        database = %crate::secrets::redact(&config.database.url),
        "Starting outboxd."
    );
    if !listen.is_empty() {
        // Before the relay starts, so that the series it sets up at start are recorded.
        telemetry::metrics_handle();
    }
    if let Some(refused) = refuse_old_server(&config).await {
        eprintln!("error: {refused}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let mut relay = Relay::start(config, RelayOptions::default()).await?;
    if !listen.is_empty() {
        let addr = listen.parse()?;
        let health = relay.health();
        tokio::spawn(async move {
            if let Err(e) = telemetry::serve(addr, health).await {
                tracing::error!(error = %e, "Metrics endpoint failed.");
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
        exit = relay.wait() => {
            return Ok(ExitCode::from(exit.exit_code()));
        }
    }
    tracing::info!("Signal received; shutting down.");
    relay.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// A MariaDB / MySQL server that answers at start-up and is older than the store supports
/// is refused before the relay starts (one that is down is checked when it answers).
async fn refuse_old_server(config: &Config) -> Option<String> {
    if db::backend(&config.database) != db::Backend::MySql {
        return None;
    }
    let pool = db::lazy_mysql_pool(&config.database, 1).ok()?;
    let ask = db::mysql_version(&pool);
    let timeout = Duration::from_millis(config.database.connect_timeout_ms);
    let version = tokio::time::timeout(timeout, ask).await.ok()?.ok()?;
    pool.close().await;
    db::check_mysql_version(&version)
        .err()
        .map(|e| e.to_string())
}

async fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let pool = match one_shot_pool(config).await {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let partitions = config.relay.partitions as usize;
    let db = pool.admin();
    let backlog = admin::backlog_by_aggregate(db).await?;
    let (open_dl, resolved_dl) = admin::dead_letter_counts(db).await?;
    let kept = admin::published_kept(db).await?;
    let leases = admin::leases(db).await?;
    let destinations = admin::backlog_by_destination(db, 10).await?;
    let now = chrono::Utc::now();
    let age = |t: chrono::DateTime<chrono::Utc>| (now - t).num_milliseconds() as f64 / 1000.0;
    let sink = config.sink.kind;
    let location = sink::location(config);
    #[derive(Default, serde::Serialize)]
    struct Part {
        pending: i64,
        aggregates: usize,
        oldest_age_secs: Option<f64>,
    }
    let mut parts: BTreeMap<usize, Part> = (0..partitions).map(|p| (p, Part::default())).collect();
    for b in &backlog {
        let p = parts
            .get_mut(&partition_of(&b.aggregate_id, partitions))
            .expect("partition");
        p.pending += b.pending;
        p.aggregates += 1;
        let age = (now - b.oldest).num_milliseconds() as f64 / 1000.0;
        p.oldest_age_secs = Some(p.oldest_age_secs.map_or(age, |a: f64| a.max(age)));
    }
    let total: i64 = parts.values().map(|p| p.pending).sum();
    let oldest = parts
        .values()
        .filter_map(|p| p.oldest_age_secs)
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |x| x.max(a))));
    if json {
        let v = serde_json::json!({
            "pending": total,
            "oldest_pending_age_secs": oldest,
            "published_kept": kept,
            "dead_letters": {"open": open_dl, "resolved": resolved_dl},
            "partitions": parts,
            "sink": {"kind": sink.name(), "at": location},
            "destinations": destinations.iter().map(|(topic, pending, oldest)| serde_json::json!({
                "destination": topic, "pending": pending, "oldest_age_secs": age(*oldest)})).collect::<Vec<_>>(),
            "leases": leases.iter().map(|l| serde_json::json!({
                "name": l.name, "owner": l.owner, "epoch": l.epoch,
                "expires_at": l.expires_at, "expired": l.expired})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("sink:           {sink} at {location}");
    println!("pending:        {total}");
    println!(
        "oldest pending: {}",
        oldest.map_or("-".into(), |a| format!("{a:.1}s"))
    );
    println!("dead letters:   {open_dl} open, {resolved_dl} resolved");
    if kept > 0 {
        println!("published, kept until cleanup: {kept}");
    }
    for l in &leases {
        println!(
            "lease {:?}:  {} (epoch {}, {})",
            l.name,
            l.owner,
            l.epoch,
            if l.expired { "expired" } else { "held" }
        );
    }
    if !destinations.is_empty() {
        // A destination the sink holds (see /readyz) keeps ageing here.
        println!("\ndestination (longest waiting first)  pending  oldest");
        for (topic, pending, oldest) in &destinations {
            println!("{topic:<36} {pending:>8}  {:.1}s", age(*oldest));
        }
    }
    println!("\npartition  pending  aggregates  oldest");
    for (i, p) in &parts {
        println!(
            "{i:>9}  {:>7}  {:>10}  {}",
            p.pending,
            p.aggregates,
            p.oldest_age_secs.map_or("-".into(), |a| format!("{a:.1}s"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn dead_letters(config: &Config, cmd: DeadLetterCommand) -> anyhow::Result<ExitCode> {
    let pool = match one_shot_pool(config).await {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    match cmd {
        DeadLetterCommand::List { all, limit } => {
            let rows = admin::list_dead_letters(pool.admin(), all, limit).await?;
            if rows.is_empty() {
                println!("No dead letters.");
            }
            for d in rows {
                println!(
                    "{}  aggregate={}  {}  topic={}  class={}  attempts={}  at={}{}\n    {}",
                    d.id,
                    d.aggregate_id,
                    d.event_type,
                    d.topic,
                    d.error_class,
                    d.attempts,
                    d.dead_lettered_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    d.resolution.map(|r| format!("  ({r})")).unwrap_or_default(),
                    d.reason
                );
            }
        }
        DeadLetterCommand::Replay(sel) => {
            let n = admin::replay(pool.admin(), &sel.selection()).await?;
            println!("Replayed {n} dead letter(s).");
        }
        DeadLetterCommand::Discard(sel) => {
            let n = admin::discard(pool.admin(), &sel.selection()).await?;
            println!("Discarded {n} dead letter(s).");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the configuration, or prints every problem and returns exit code 2.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(&crate::config::ConfigSource::from_cli(path)).map_err(|e| {
        eprint!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}
