//! `outboxd-example`: the example end to end (examples/README.md; `scripts/example.sh`
//! builds and runs it). users-api writes users and their `user.created` events in one
//! transaction, `outboxd run` relays them to the Redis stream `user:events`, welcome-mailer
//! consumes them through the inbox. Users are posted over HTTP while the mailer and the
//! relay are each killed with kill -9 once and restarted, and the mailer's Redis and
//! database connections are cut; then it checks that every user got exactly one welcome
//! mail and nothing is left pending in the consumer group. Prints a report; exits non-zero
//! on any mismatch.
//!
//! Resets the database `outboxd_example` and the Redis keys `user:events` and
//! `welcome-mailer:dead-letters`. Environment: USERS (default 300), DATABASE_URL (the
//! server), REDIS_URL (default redis://127.0.0.1:6379). The programs it runs are those of
//! the build it belongs to: `outboxd` and the examples `users-api`, `welcome-mailer`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;
use sqlx::PgPool;
use testkit::process::find_outboxd;
use tokio::sync::Mutex;

const API: &str = "127.0.0.1:18080";
const API_WITHOUT_DATABASE: &str = "127.0.0.1:18081";
const RELAY_HTTP: &str = "127.0.0.1:18464";
const STREAM: &str = "user:events";
const GROUP: &str = "welcome-mailer";
const DEAD_LETTERS: &str = "welcome-mailer:dead-letters";

fn say(msg: impl AsRef<str>) {
    println!("[example] {}", msg.as_ref());
}

#[tokio::main]
async fn main() -> ExitCode {
    let work = match tempfile::Builder::new()
        .prefix("outboxd-example.")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("[example] FAILED: a work directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut example = match Example::new(work.path()).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("[example] FAILED: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match example.run().await {
        Ok(()) => {
            say("PASSED: every user got exactly one welcome mail; nothing pending");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("[example] FAILED: {e:#}");
            // Keep the logs of a failed run.
            let kept = work.keep();
            eprintln!("[example] logs in {}", kept.display());
            ExitCode::FAILURE
        }
    }
}

/// A child process killed (kill -9) when dropped.
struct Process(Child);

impl Process {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Example {
    work: PathBuf,
    users: u64,
    db_url: String,
    redis_url: String,
    pool: PgPool,
    redis: redis::aio::MultiplexedConnection,
    http: reqwest::Client,
    outboxd: PathBuf,
    examples: PathBuf,
    relay: Option<Process>,
    relay_runs: u32,
    mailer: Option<Process>,
    mailer_runs: u32,
    others: Vec<Process>,
    /// Expected answers by status, for the report.
    answered: BTreeMap<u16, u32>,
}

impl Example {
    async fn new(work: &Path) -> anyhow::Result<Example> {
        let users = match std::env::var("USERS") {
            Ok(v) => v.parse().context("USERS must be a number")?,
            Err(_) => 300,
        };
        ensure!(users >= 3, "USERS must be at least 3");
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let redis_url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let db_url = testkit::backlog::with_database(&admin, "outboxd_example")?;
        let outboxd = find_outboxd()?;
        let examples = outboxd
            .parent()
            .expect("a binary is in a directory")
            .join("examples");
        for e in ["users-api", "welcome-mailer"] {
            ensure!(
                examples.join(e).exists(),
                "{} is missing: build it first (cargo build --example {e})",
                examples.join(e).display()
            );
        }
        // A fresh database (the relay's `migrate` makes the outbox; the API its own table).
        testkit::backlog::fresh_database(&admin, "outboxd_example").await?;
        let out = Command::new(&outboxd)
            .arg("migrate")
            .env("OUTBOXD__DATABASE__URL", &db_url)
            .output()?;
        ensure!(out.status.success(), "outboxd migrate: {out:?}");
        let pool = PgPool::connect(&db_url).await?;
        let redis = redis::Client::open(redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("Redis at {redis_url}"))?;
        let mut example = Example {
            work: work.to_path_buf(),
            users,
            db_url,
            redis_url,
            pool,
            redis,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            outboxd,
            examples,
            relay: None,
            relay_runs: 0,
            mailer: None,
            mailer_runs: 0,
            others: Vec::new(),
            answered: BTreeMap::new(),
        };
        let _: () = redis::cmd("DEL")
            .arg(STREAM)
            .arg(DEAD_LETTERS)
            .query_async(&mut example.redis)
            .await?;
        Ok(example)
    }

    /// Starts `program args` with `env`, its output in the work directory's `log`.
    fn spawn(
        &self,
        program: &Path,
        args: &[&str],
        log: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let out = std::fs::File::create(self.work.join(log))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Process(
            cmd.spawn()
                .with_context(|| format!("{}", program.display()))?,
        ))
    }

    fn start_relay(&mut self) -> anyhow::Result<()> {
        self.relay_runs += 1;
        let relay = self.spawn(
            &self.outboxd,
            &["run"],
            &format!("relay-{}.log", self.relay_runs),
            &[
                ("OUTBOXD__DATABASE__URL", &self.db_url),
                ("OUTBOXD__SINK__KIND", "redis"),
                ("OUTBOXD__REDIS__URL", &self.redis_url),
                ("OUTBOXD__METRICS__LISTEN", RELAY_HTTP),
            ],
        )?;
        self.relay = Some(relay);
        Ok(())
    }

    /// A new consumer name per run, as a new pod would have: the dead member's entries must
    /// be taken over by XAUTOCLAIM, not re-read under its old name. SEND_DELAY_MS plays a
    /// slow mail server, so that the kill always finds entries read but not yet
    /// acknowledged.
    fn start_mailer(&mut self) -> anyhow::Result<()> {
        self.mailer_runs += 1;
        let consumer = format!("mailer-{}", self.mailer_runs);
        let p = self.spawn(
            &self.examples.join("welcome-mailer"),
            &[],
            &format!("mailer-{}.log", self.mailer_runs),
            &[
                ("DATABASE_URL", &self.db_url),
                ("REDIS_URL", &self.redis_url),
                ("CONSUMER", &consumer),
                ("CLAIM_IDLE_MS", "2000"),
                ("SEND_DELAY_MS", "20"),
            ],
        )?;
        self.mailer = Some(p);
        Ok(())
    }

    async fn wait_for(&self, what: &str, url: &str, status: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(url).send().await
                && r.status().as_u16() == status
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{what} did not answer {status} at {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The answer to `request` must have `status` and, for an error, a JSON error body;
    /// returns the body.
    async fn expect(
        &mut self,
        status: u16,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<String> {
        *self.answered.entry(status).or_default() += 1;
        let r = request.send().await.with_context(|| what.to_string())?;
        let got = r.status().as_u16();
        let body = r.text().await?;
        ensure!(
            got == status,
            "{what}: expected {status}, got {got} ({body})"
        );
        ensure!(
            status < 400 || body.contains("\"error\""),
            "{what}: no JSON error: {body}"
        );
        Ok(body)
    }

    fn post(&self, base: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        self.http
            .post(format!("http://{base}/users"))
            .header("content-type", "application/json")
            .body(body)
    }

    async fn sql(&self, query: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Entries the consumer `member` holds unacknowledged.
    async fn pending_of(&mut self, member: &str) -> anyhow::Result<usize> {
        let entries: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(member)
            .query_async(&mut self.redis)
            .await?;
        Ok(entries.len())
    }

    /// Entries read by the group and not acknowledged, by anyone.
    async fn pending(&mut self) -> anyhow::Result<i64> {
        let summary: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .query_async(&mut self.redis)
            .await
            .unwrap_or_default();
        Ok(match summary.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        })
    }

    async fn xlen(&mut self, key: &str) -> anyhow::Result<i64> {
        Ok(redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut self.redis)
            .await?)
    }

    /// Posts users `from..=to`, four at a time, in the background; the statuses go to
    /// `created`.
    fn post_users(
        &self,
        from: u64,
        to: u64,
        created: Arc<Mutex<Vec<u16>>>,
    ) -> tokio::task::JoinHandle<()> {
        let http = self.http.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(from..=to)
                .for_each_concurrent(4, |i| {
                    let http = http.clone();
                    let created = created.clone();
                    async move {
                        let body = json!({"name": format!("User {i}"), "email": format!("user-{i}@example.com")});
                        let status = match http
                            .post(format!("http://{API}/users"))
                            .json(&body)
                            .send()
                            .await
                        {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        created.lock().await.push(status);
                    }
                })
                .await;
        })
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        self.start_relay()?;
        let api = self.spawn(
            &self.examples.join("users-api"),
            &[],
            "api.log",
            &[("DATABASE_URL", &self.db_url), ("LISTEN", API)],
        )?;
        self.others.push(api);
        self.start_mailer()?;
        self.wait_for("users-api", &format!("http://{API}/health"), 200)
            .await?;
        self.wait_for("the relay", &format!("http://{RELAY_HTTP}/readyz"), 200)
            .await?;

        say("bad requests are refused and write nothing");
        self.bad_requests().await?;

        let third = self.users / 3;
        let created = Arc::new(Mutex::new(Vec::new()));
        say(format!(
            "posting users 1..{third}; kill -9 of the mailer mid-way"
        ));
        let posting = self.post_users(1, third, created.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Kill it while it holds entries it has read and not acknowledged: SEND_DELAY_MS
        // keeps it behind the posting, so each read takes more than the one before; wait
        // for a handful.
        for _ in 0..100 {
            if self.pending_of("mailer-1").await? >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(mut m) = self.mailer.take() {
            m.kill();
        }
        posting.await?;
        let left_by_mailer = self.pending_of("mailer-1").await?;
        ensure!(
            left_by_mailer > 0,
            "the killed mailer held nothing unacknowledged: the take-over is not exercised"
        );
        say(format!(
            "the killed mailer left {left_by_mailer} entries unacknowledged; starting another"
        ));
        self.start_mailer()?;
        let taken = self.post(API, r#"{"name":"Again","email":"user-1@example.com"}"#);
        self.expect(409, "an email already taken", taken).await?;
        let taken = self.post(API, r#"{"name":"Again","email":"User-1@Example.com"}"#);
        self.expect(409, "an email taken in other letters", taken)
            .await?;

        say(format!(
            "posting users {}..{}; kill -9 of the relay mid-way",
            third + 1,
            2 * third
        ));
        let posting = self.post_users(third + 1, 2 * third, created.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(mut r) = self.relay.take() {
            r.kill();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.start_relay()?;
        posting.await?;

        say(format!(
            "posting users {}..{}; the mailer's Redis and database connections cut mid-way",
            2 * third + 1,
            self.users
        ));
        let posting = self.post_users(2 * third + 1, self.users, created.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _: redis::Value = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
            .query_async(&mut self.redis)
            .await?;
        self.sql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{GROUP}'"
        ))
        .await?;
        posting.await?;

        let statuses = created.lock().await.clone();
        let ok = statuses.iter().filter(|s| **s == 201).count() as u64;
        if ok != self.users {
            let mut by: BTreeMap<u16, u32> = BTreeMap::new();
            for s in statuses {
                *by.entry(s).or_default() += 1;
            }
            bail!("{ok} of {} users created: {by:?}", self.users);
        }
        let some: uuid::Uuid =
            sqlx::query_scalar("SELECT id FROM users WHERE email = 'user-7@example.com'")
                .fetch_one(&self.pool)
                .await?;
        let get = self.http.get(format!("http://{API}/users/{some}"));
        let body = self.expect(200, "an existing user", get).await?;
        ensure!(
            body.contains("\"email\":\"user-7@example.com\""),
            "GET /users/{some} answered {body}"
        );

        say("waiting for every welcome mail");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mailed = self
                .sql("SELECT count(DISTINCT user_id) FROM welcome_mail")
                .await?;
            let outbox = self.sql("SELECT count(*) FROM outbox").await?;
            let pending = self.pending().await?;
            if mailed == self.users as i64 && outbox == 0 && pending == 0 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "after 120 s: {mailed} of {} users mailed, {outbox} events in the outbox, \
                 {pending} entries pending",
                self.users
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Anything still arriving would show as a duplicate below.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.report(left_by_mailer).await
    }

    async fn bad_requests(&mut self) -> anyhow::Result<()> {
        let cases: [(u16, &str, String); 8] = [
            (400, "a body that is not JSON", "not json".into()),
            (422, "a missing email", r#"{"name":"A"}"#.into()),
            (
                422,
                "an invalid email",
                r#"{"name":"A","email":"not-an-address"}"#.into(),
            ),
            (
                422,
                "an empty name",
                r#"{"name":" ","email":"a@example.com"}"#.into(),
            ),
            (
                422,
                "a NUL character",
                r#"{"name":"A\u0000B","email":"a@example.com"}"#.into(),
            ),
            (
                422,
                "a name of 201 characters",
                json!({"name": "n".repeat(201), "email": "a@example.com"}).to_string(),
            ),
            (
                422,
                "an email of 255 characters",
                json!({"name": "A", "email": format!("{}@example.com", "e".repeat(243))})
                    .to_string(),
            ),
            (
                415,
                "no JSON content type",
                r#"{"name":"A","email":"a@example.com"}"#.into(),
            ),
        ];
        for (status, what, body) in cases {
            let request = if status == 415 {
                self.http
                    .post(format!("http://{API}/users"))
                    .header("content-type", "text/plain")
                    .body(body)
            } else {
                self.post(API, body)
            };
            let answer = self.expect(status, what, request).await?;
            if what == "an email of 255 characters" {
                ensure!(
                    answer.contains("longer than 254"),
                    "the email's length is what is refused: {answer}"
                );
            }
        }
        let unknown = self
            .http
            .get(format!("http://{API}/users/{}", uuid::Uuid::new_v4()));
        self.expect(404, "an unknown user", unknown).await?;
        let nope = self.http.get(format!("http://{API}/users/nope"));
        self.expect(404, "a user id that is not one", nope).await?;
        let written = self
            .sql("SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM outbox)")
            .await?;
        ensure!(written == 0, "a refused request wrote a user or an event");

        // An API whose database does not answer says so, without the database's own words.
        let api = self.spawn(
            &self.examples.join("users-api"),
            &[],
            "api-no-db.log",
            &[
                ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
                ("LISTEN", API_WITHOUT_DATABASE),
            ],
        )?;
        self.others.push(api);
        let health = format!("http://{API_WITHOUT_DATABASE}/health");
        self.wait_for("users-api without a database", &health, 503)
            .await?;
        let body = self
            .expect(503, "health without a database", self.http.get(&health))
            .await?;
        ensure!(
            body.trim() == r#"{"error":"database unavailable"}"#,
            "/health must not show the database's own words: {body}"
        );
        let post = self.post(
            API_WITHOUT_DATABASE,
            r#"{"name":"A","email":"a@example.com"}"#,
        );
        self.expect(503, "a user posted while the database is down", post)
            .await?;
        Ok(())
    }

    async fn report(&mut self, left_by_mailer: usize) -> anyhow::Result<()> {
        let users = self.users as i64;
        let mails = self.sql("SELECT count(*) FROM welcome_mail").await?;
        let missing = self
            .sql(
                "SELECT count(*) FROM users u WHERE NOT EXISTS \
                 (SELECT 1 FROM welcome_mail m WHERE m.user_id = u.id)",
            )
            .await?;
        let twice = self
            .sql(
                "SELECT count(*) FROM (SELECT user_id FROM welcome_mail GROUP BY user_id \
                 HAVING count(*) > 1) d",
            )
            .await?;
        let strays = self
            .sql(
                "SELECT count(*) FROM welcome_mail m WHERE NOT EXISTS \
                 (SELECT 1 FROM users u WHERE u.id = m.user_id AND u.email = m.email)",
            )
            .await?;
        let pending = self.pending().await?;
        let entries = self.xlen(STREAM).await?;
        let dead = self.xlen(DEAD_LETTERS).await?;
        let mut skipped = 0;
        let mut taken = 0u64;
        for run in 1..=self.mailer_runs {
            let log = std::fs::read_to_string(self.work.join(format!("mailer-{run}.log")))
                .unwrap_or_default();
            skipped += log.matches("Duplicate delivery skipped").count();
            for line in log.lines().filter(|l| l.contains("Took over")) {
                taken += line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("entries="))
                    .and_then(|n| {
                        n.trim_matches(|c: char| !c.is_ascii_digit())
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0);
            }
        }
        let n = |s: u16| self.answered.get(&s).copied().unwrap_or(0);
        println!("[example] report");
        println!(
            "  users created                     {users} (refused: {} bad bodies, {} emails taken, {} answers with the database down)",
            n(400) + n(415) + n(422),
            n(409),
            n(503)
        );
        println!(
            "  stream entries in {STREAM}    {entries} (the relay resent {} after its kill -9)",
            entries - users
        );
        println!("  welcome mails                     {mails}");
        println!("  users without a mail              {missing}");
        println!("  users with more than one mail     {twice}");
        println!("  mails to no such user             {strays}");
        println!(
            "  left unacknowledged by the killed mailer   {left_by_mailer} (entries taken over by XAUTOCLAIM: {taken})"
        );
        println!("  duplicate deliveries skipped by the inbox  {skipped}");
        println!("  pending in group {GROUP}    {pending}");
        println!("  dead letters                      {dead}");
        ensure!(
            mails == users
                && missing == 0
                && twice == 0
                && strays == 0
                && pending == 0
                && dead == 0,
            "the mails do not match the users (see the report)"
        );
        Ok(())
    }
}
