//! The scenario's database — PostgreSQL or MariaDB — and the harness's own statements on
//! either: the writers' transactions, the poison rows, a late-committing transaction, the
//! counts the checks read, and stopping and starting the server.

use std::time::Duration;

use outboxd::NewEvent;
use serde::Serialize;

/// Which database a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// The local PostgreSQL (`DATABASE_URL`).
    Postgres,
    /// The local MariaDB (`OUTBOXD_TEST_MYSQL_URL`), through the MariaDB/MySQL store.
    MariaDb,
}

impl Database {
    /// As the command line and the reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Database::Postgres => "postgres",
            Database::MariaDb => "mariadb",
        }
    }

    /// From the command line.
    pub fn parse(s: &str) -> Result<Database, String> {
        match s {
            "postgres" => Ok(Database::Postgres),
            "mariadb" => Ok(Database::MariaDb),
            other => Err(format!("{other:?}: postgres or mariadb")),
        }
    }

    /// The server's `host:port`, which the scenario's proxy forwards to.
    pub fn server(self) -> &'static str {
        match self {
            Database::Postgres => "127.0.0.1:5432",
            Database::MariaDb => "127.0.0.1:3306",
        }
    }

    /// Stops (fast) or starts the local server.
    pub fn ctl(self, action: &str) -> anyhow::Result<()> {
        match self {
            Database::Postgres => pg_ctl(action),
            Database::MariaDb => mariadb_ctl(action),
        }
    }
}

fn pg_ctl(action: &str) -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no cluster under /etc/postgresql"))?;
    let mut cmd = std::process::Command::new("pg_ctlcluster");
    cmd.args(["--skip-systemctl-redirect", &version, "main", action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    run(cmd, &format!("pg_ctlcluster {action}"))
}

/// `stop`: a clean shutdown (`mariadb-admin shutdown`, as the tests' user); `start`:
/// `mysqld_safe`, waiting until the server answers.
fn mariadb_ctl(action: &str) -> anyhow::Result<()> {
    if action == "stop" {
        let mut cmd = std::process::Command::new("mariadb-admin");
        cmd.args([
            "--protocol=tcp",
            "-h",
            "127.0.0.1",
            "-u",
            "outboxd_test",
            "-poutboxd_test",
            "shutdown",
        ]);
        run(cmd, "mariadb-admin shutdown")
    } else {
        // mysqld_safe in a session of its own, as scripts/setup.sh starts it (Debian's init
        // script waits for a maintenance account this server may not have).
        std::process::Command::new("setsid")
            .arg("mysqld_safe")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..120 {
            let mut ping = std::process::Command::new("mariadb-admin");
            ping.args(["--protocol=tcp", "-h", "127.0.0.1", "-u", "outboxd_test"])
                .args(["-poutboxd_test", "ping"]);
            if run(ping, "ping").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        anyhow::bail!("MariaDB did not come back within 30 s (mysqld_safe)")
    }
}

fn run(mut cmd: std::process::Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A pool on the scenario's database.
#[derive(Clone)]
pub enum Db {
    /// PostgreSQL.
    Pg(sqlx::PgPool),
    /// MariaDB.
    My(sqlx::MySqlPool),
}

/// A transaction held open (a late committer).
pub enum Tx {
    /// PostgreSQL.
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    /// MariaDB.
    My(sqlx::Transaction<'static, sqlx::MySql>),
}

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Pg(t) => t.commit().await,
            Tx::My(t) => t.commit().await,
        }
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Pg(t) => t.rollback().await,
            Tx::My(t) => t.rollback().await,
        }
    }
}

/// Runs the same statement text (no placeholders) on either database.
macro_rules! on_either {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            Db::Pg($p) => $body,
            Db::My($p) => $body,
        }
    };
}

impl Db {
    /// Connects to a fresh database of the scenario's.
    pub async fn connect(database: Database, url: &str) -> anyhow::Result<Db> {
        Ok(match database {
            Database::Postgres => Db::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(12)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(url)
                    .await?,
            ),
            Database::MariaDb => Db::My(testkit::mysqldb::mysql_pool(url, 12).await),
        })
    }

    /// A count, by a statement without placeholders that both databases take.
    pub async fn count(&self, sql: &'static str) -> Result<i64, sqlx::Error> {
        on_either!(self, |p| sqlx::query_scalar(sql).fetch_one(p).await)
    }

    /// Rows still pending, except those of aggregates starting with `prefix`.
    pub async fn pending_except(&self, prefix: &str) -> Result<i64, sqlx::Error> {
        let like = format!("{prefix}%");
        match self {
            Db::Pg(p) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL AND aggregate_id NOT LIKE $1",
                )
                .bind(like)
                .fetch_one(p)
                .await
            }
            Db::My(p) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL AND aggregate_id NOT LIKE ?",
                )
                .bind(like)
                .fetch_one(p)
                .await
            }
        }
    }

    /// Writes events in one transaction through the library. `Err(true)` when the COMMIT
    /// itself failed (the outcome is unknown), `Err(false)` when nothing was written.
    pub async fn write(&self, events: &[NewEvent]) -> Result<(), bool> {
        on_either!(self, |p| {
            let mut tx = p.begin().await.map_err(|_| false)?;
            outboxd::enqueue_batch(&mut *tx, events)
                .await
                .map_err(|_| false)?;
            tx.commit().await.map_err(|_| true)
        })
    }

    /// Inserts one row with plain SQL; `headers` is JSON text, not checked.
    pub async fn insert(
        &self,
        aggregate: &str,
        event_type: &str,
        topic: &str,
        payload: (Option<String>, Option<Vec<u8>>),
        headers: &str,
    ) -> Result<uuid::Uuid, sqlx::Error> {
        let event_id = uuid::Uuid::new_v4();
        let (json, bytes) = payload;
        match self {
            Db::Pg(p) => sqlx::query(
                "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, headers) \
                 VALUES ($1, 'torture', $2, $3, $4, $5::jsonb, $6, $7::jsonb)",
            )
            .bind(event_id)
            .bind(aggregate)
            .bind(event_type)
            .bind(topic)
            .bind(json)
            .bind(bytes)
            .bind(headers)
            .execute(p)
            .await
            .map(drop),
            Db::My(p) => sqlx::query(
                "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, headers) \
                 VALUES (?, 'torture', ?, ?, ?, ?, ?, ?)",
            )
            .bind(event_id.hyphenated())
            .bind(aggregate)
            .bind(event_type)
            .bind(topic)
            .bind(json)
            .bind(bytes)
            .bind(headers)
            .execute(p)
            .await
            .map(drop),
        }?;
        Ok(event_id)
    }

    /// Every dead letter: event id, class, reason.
    pub async fn dead_letters(&self) -> Result<Vec<(uuid::Uuid, String, String)>, sqlx::Error> {
        match self {
            Db::Pg(p) => {
                sqlx::query_as("SELECT event_id, error_class, reason FROM outbox_dead_letter")
                    .fetch_all(p)
                    .await
            }
            Db::My(p) => {
                let rows: Vec<(String, String, String)> =
                    sqlx::query_as("SELECT event_id, error_class, reason FROM outbox_dead_letter")
                        .fetch_all(p)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|(e, c, r)| (e.parse().unwrap_or_default(), c, r))
                    .collect())
            }
        }
    }

    /// The lease's holder.
    pub async fn lease_owner(&self) -> String {
        on_either!(self, |p| sqlx::query_scalar(
            "SELECT owner FROM outbox_lease"
        )
        .fetch_one(p)
        .await
        .unwrap_or_default())
    }

    /// Writes `event` in a transaction left open; returns it and the row's id.
    pub async fn hold(&self, event: &NewEvent) -> anyhow::Result<(Tx, i64)> {
        Ok(match self {
            Db::Pg(p) => {
                let mut tx = p.begin().await?;
                outboxd::enqueue(&mut *tx, event).await?;
                let id = sqlx::query_scalar("SELECT id FROM outbox WHERE event_id = $1")
                    .bind(event.event_id())
                    .fetch_one(&mut *tx)
                    .await?;
                (Tx::Pg(tx), id)
            }
            Db::My(p) => {
                let mut tx = p.begin().await?;
                outboxd::enqueue(&mut *tx, event).await?;
                let id = sqlx::query_scalar("SELECT id FROM outbox WHERE event_id = ?")
                    .bind(event.event_id().hyphenated())
                    .fetch_one(&mut *tx)
                    .await?;
                (Tx::My(tx), id)
            }
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_either!(self, |p| p.close().await)
    }
}
