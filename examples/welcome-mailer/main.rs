//! welcome-mailer — the consumer half of the example: reads `user.created` events from the
//! Redis stream `user:events` in the consumer group `welcome-mailer` and "sends" one
//! welcome mail per user, recorded as a row in its own `welcome_mail` table.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run --example welcome-mailer
//! ```
//!
//! Environment: `DATABASE_URL`; `REDIS_URL` (default `redis://127.0.0.1:6379`); `CONSUMER`,
//! its name in the group (default `<host>-<pid>`); `CLAIM_IDLE_MS` (default 30000): entries
//! another member has held unacknowledged this long are taken over; `SEND_DELAY_MS`
//! (default 0): how long "sending" a mail takes, to play a slow mail server.
//!
//! Redis delivers at least once (a member that dies before `XACK` leaves its entries to be
//! taken over; the relay resends after a crash), so every entry goes through the inbox
//! (`outboxd::inbox`): the `welcome_mail` row and the inbox entry commit together, and a
//! second delivery of the same `event_id` is acknowledged without writing anything.
//!
//! Order: the members of a group share one stream, so two events of one aggregate can be
//! handled by two members at once. This consumer does not need order — each user has one
//! `user.created` — so any number of members may run. A consumer that needs per-aggregate
//! order runs one member per stream, or has the events sharded over several streams by
//! aggregate id, each read by a single member.

use std::time::Duration;

use outboxd::inbox::{Handled, Inbox};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

const STREAM: &str = "user:events";
const GROUP: &str = "welcome-mailer";
/// Where entries that can never be processed go (no event_id, a payload that is not a
/// user), so that one bad entry neither blocks the group nor disappears.
const DEAD_LETTERS: &str = "welcome-mailer:dead-letters";
/// How long one XREADGROUP waits for new entries.
const BLOCK_MS: usize = 2_000;

struct Mailer {
    pool: PgPool,
    redis: ConnectionManager,
    inbox: Inbox,
    consumer: String,
    claim_idle: Duration,
    send_delay: Duration,
}

/// The payload of `user.created`, as users-api publishes it.
#[derive(Deserialize)]
struct User {
    id: Uuid,
    email: String,
}

/// What became of one entry.
enum Outcome {
    Sent,
    Duplicate,
    Ignored,
    DeadLettered,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let database_url = env("DATABASE_URL")
        .ok_or_else(|| anyhow::anyhow!("set DATABASE_URL to the mailer's PostgreSQL URL"))?;
    let redis_url = env("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let millis = |name: &str, default: u64| -> anyhow::Result<Duration> {
        let ms = env(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number of milliseconds"))
        })?;
        Ok(Duration::from_millis(ms))
    };
    let consumer = env("CONSUMER").unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .map_or("mailer".into(), |h| h.to_string_lossy().into_owned());
        format!("{host}-{}", std::process::id())
    });

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(3))
        // Shows in pg_stat_activity, where an operator (or the example's test) finds it.
        .connect_lazy_with(
            database_url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a PostgreSQL URL: {e}"))?
                .application_name(GROUP),
        );
    let client = redis::Client::open(redis_url.as_str())
        .map_err(|e| anyhow::anyhow!("REDIS_URL is not a Redis URL: {e}"))?;
    // The connection manager reconnects by itself. Its replies must be allowed to take
    // longer than the XREADGROUP BLOCK, or every quiet read would look like a timeout.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS as u64 + 3_000)))
        .set_connection_timeout(Some(Duration::from_secs(3)));
    let redis = retry("Redis", || {
        ConnectionManager::new_with_config(client.clone(), config.clone())
    })
    .await;

    let mailer = Mailer {
        pool,
        redis,
        // The inbox is keyed by the group, not by this member: an entry a dead member
        // processed but did not acknowledge is recognised when another member takes it over.
        inbox: Inbox::new(GROUP),
        consumer,
        claim_idle: millis("CLAIM_IDLE_MS", 30_000)?,
        send_delay: millis("SEND_DELAY_MS", 0)?,
    };
    retry("the database", || mailer.create_tables()).await;
    retry("Redis", || mailer.create_group()).await;
    tracing::info!(consumer = %mailer.consumer, stream = STREAM, group = GROUP, "Consuming.");

    tokio::select! {
        _ = mailer.run() => unreachable!("the mailer runs until stopped"),
        _ = shutdown() => tracing::info!("Stopped."),
    }
    Ok(())
}

impl Mailer {
    /// Reads, processes and acknowledges until stopped; any error means a pause and a
    /// fresh start from this member's own unacknowledged entries, so nothing is skipped.
    async fn run(&self) {
        let mut backoff = Duration::from_millis(100);
        let mut last_claim = None::<tokio::time::Instant>;
        let mut last_cleanup = tokio::time::Instant::now();
        // On start, and after any error, first re-read what this member was given and did
        // not acknowledge (XREADGROUP from id 0), then new entries (">").
        let mut own_pending = true;
        loop {
            let result = async {
                if last_claim.is_none_or(|t| t.elapsed() >= self.claim_idle / 2) {
                    self.take_over().await?;
                    last_claim = Some(tokio::time::Instant::now());
                }
                let entries = self.read(if own_pending { "0" } else { ">" }).await?;
                if own_pending && entries.is_empty() {
                    own_pending = false;
                }
                for entry in entries {
                    self.handle(entry).await?;
                }
                if last_cleanup.elapsed() >= Duration::from_secs(3600) {
                    let deleted = self.inbox.cleanup(&self.pool).await?;
                    tracing::info!(deleted, "Deleted old inbox entries.");
                    last_cleanup = tokio::time::Instant::now();
                }
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "Cannot consume; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    own_pending = true;
                }
            }
        }
    }

    /// One XREADGROUP: this member's pending entries from `id` 0, or new ones with `>`
    /// (waiting up to BLOCK_MS for them).
    async fn read(&self, id: &str) -> anyhow::Result<Vec<StreamId>> {
        let mut options = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(100);
        if id == ">" {
            options = options.block(BLOCK_MS);
        }
        let reply: Option<StreamReadReply> = self
            .redis
            .clone()
            .xread_options(&[STREAM], &[id], &options)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect())
    }

    /// Takes over entries other members have held unacknowledged for CLAIM_IDLE_MS (they
    /// died, or hang) and processes them; then forgets members that are long gone.
    async fn take_over(&self) -> anyhow::Result<()> {
        let idle = self.claim_idle.as_millis() as usize;
        let mut cursor = "0-0".to_string();
        loop {
            let options = StreamAutoClaimOptions::default().count(100);
            let reply: StreamAutoClaimReply = self
                .redis
                .clone()
                .xautoclaim_options(STREAM, GROUP, &self.consumer, idle, &cursor, options)
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    entries = reply.claimed.len(),
                    "Took over entries another member left unacknowledged."
                );
            }
            for entry in reply.claimed {
                self.handle(entry).await?;
            }
            cursor = reply.next_stream_id;
            if cursor == "0-0" {
                break;
            }
        }
        // A member named <host>-<pid> is never coming back once its process is gone; drop
        // those idle for long with nothing pending, so XINFO CONSUMERS stays readable.
        let members: redis::streams::StreamInfoConsumersReply =
            self.redis.clone().xinfo_consumers(STREAM, GROUP).await?;
        for gone in members
            .consumers
            .iter()
            .filter(|c| c.name != self.consumer && c.pending == 0 && c.idle > 10 * idle)
        {
            let _: i64 = self
                .redis
                .clone()
                .xgroup_delconsumer(STREAM, GROUP, &gone.name)
                .await?;
        }
        Ok(())
    }

    /// Processes one entry and acknowledges it. An error (database or Redis down) leaves
    /// it unacknowledged: it is read again from this member's pending entries.
    async fn handle(&self, entry: StreamId) -> anyhow::Result<()> {
        let outcome = match self.process(&entry).await? {
            Ok(outcome) => outcome,
            Err(reason) => {
                // Keep the whole entry beside the reason; acknowledging it alone would lose it.
                let mut fields: Vec<(String, Vec<u8>)> = entry
                    .map
                    .keys()
                    .filter_map(|k| Some((k.clone(), entry.get::<Vec<u8>>(k)?)))
                    .collect();
                fields.push(("dead_letter_reason".into(), reason.clone().into_bytes()));
                fields.push(("dead_letter_entry_id".into(), entry.id.clone().into_bytes()));
                let _: String = self.redis.clone().xadd(DEAD_LETTERS, "*", &fields).await?;
                tracing::error!(entry = %entry.id, %reason, "Entry cannot be processed; moved to {DEAD_LETTERS}.");
                Outcome::DeadLettered
            }
        };
        let _: i64 = self.redis.clone().xack(STREAM, GROUP, &[&entry.id]).await?;
        match outcome {
            Outcome::Sent => tracing::debug!(entry = %entry.id, "Sent welcome mail."),
            // Rare (a take-over or a relay resend), worth seeing in the log.
            Outcome::Duplicate => {
                tracing::info!(entry = %entry.id, "Duplicate delivery skipped by the inbox.")
            }
            Outcome::Ignored | Outcome::DeadLettered => {}
        }
        Ok(())
    }

    /// The mail itself, through the inbox. The outer error is worth retrying (the
    /// database); the inner one says why the entry can never be processed.
    async fn process(&self, entry: &StreamId) -> anyhow::Result<Result<Outcome, String>> {
        // Other event types may share the stream later; not ours to handle.
        if entry.get::<String>("event_type").as_deref() != Some("user.created") {
            return Ok(Ok(Outcome::Ignored));
        }
        let Some(event_id) = entry
            .get::<String>("event_id")
            .and_then(|s| s.parse::<Uuid>().ok())
        else {
            return Ok(Err("no event_id field holding a UUID".into()));
        };
        let user = match serde_json::from_slice::<User>(
            &entry.get::<Vec<u8>>("payload").unwrap_or_default(),
        ) {
            Ok(user) => user,
            Err(e) => return Ok(Err(format!("payload is not a user: {e}"))),
        };
        let handled = self
            .inbox
            .process(&self.pool, event_id, async |tx| {
                // Here a real mailer calls the mail server — inside the transaction, so
                // that if recording the mail fails it is sent again (at least once), never
                // lost. Only the row below is exactly once.
                tokio::time::sleep(self.send_delay).await;
                sqlx::query(
                    "INSERT INTO welcome_mail (user_id, email, event_id) VALUES ($1, $2, $3)",
                )
                .bind(user.id)
                .bind(&user.email)
                .bind(event_id)
                .execute(&mut *tx)
                .await
            })
            .await?;
        Ok(Ok(match handled {
            Handled::Done(_) => Outcome::Sent,
            Handled::Duplicate => Outcome::Duplicate,
        }))
    }

    /// The inbox table (with outboxd's migrations) and the mailer's own `welcome_mail`.
    async fn create_tables(&self) -> anyhow::Result<()> {
        outboxd::MIGRATOR.run(&self.pool).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS welcome_mail (
                 user_id  uuid        NOT NULL,
                 email    text        NOT NULL,
                 event_id uuid        NOT NULL,
                 sent_at  timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The group, reading the stream from its first entry, so that users created before
    /// the mailer ever ran get their mail too. Already there: fine.
    async fn create_group(&self) -> anyhow::Result<()> {
        let created: redis::RedisResult<String> = self
            .redis
            .clone()
            .xgroup_create_mkstream(STREAM, GROUP, "0")
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }
}

/// Runs `attempt` until it succeeds, saying why it did not and waiting a little longer
/// each time (at most 5 s).
async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot reach {what}; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
