//! Drain throughput while a transaction holds the xmin horizon (`--mode long`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use testkit::process::free_port;

use crate::world::{World, bar, say, scrape};
use testkit::cpu::CpuTicks;

/// Drain rate while the xmin horizon is held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BloatBurst {
    /// before / during / after.
    pub phase: String,
    /// Seconds since the hold began (during; the hold's length after).
    pub at_secs: f64,
    /// Drain rate.
    pub events_per_sec: f64,
    /// `n_dead_tup` of `outbox` after the burst (PostgreSQL's statistics, which lag).
    #[serde(default)]
    pub dead_tuples: i64,
}

/// A transaction holds the xmin horizon back for `hold_secs` while `outboxd run` drains
/// bursts of 200,000 rows: three before, one every 30 s during the hold, three after it
/// ends (after a first, unreported, warm-up burst). Each burst is one statement; its clock starts when it commits and stops when the
/// relay has marked all of it. Every deleted row stays as a dead tuple (and a dead index
/// entry) until the hold ends: 20 bursts leave 4,000,000.
pub(crate) async fn bloat(hold_secs: u64) -> anyhow::Result<Vec<BloatBurst>> {
    let w = World::new().await?;
    let metrics = format!("127.0.0.1:{}", free_port());
    let bin = testkit::process::find_outboxd()?;
    let mut child = std::process::Command::new(&bin)
        .arg("run")
        .current_dir(std::env::temp_dir())
        .env("OUTBOXD__DATABASE__URL", &w.url)
        .env("OUTBOXD__KAFKA__BROKERS", &w.brokers)
        .env("OUTBOXD__METRICS__LISTEN", &metrics)
        .env("OUTBOXD__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .spawn()?;
    let burst = 200_000u64;
    let mut marked = 0.0;
    let mut out = Vec::new();
    let mut run_burst = async |phase: &str, at: f64| -> anyhow::Result<()> {
        w.insert_rows(0, burst).await?;
        let t = Instant::now();
        let ticks = CpuTicks::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let m = scrape(&metrics, "outboxd_rows_marked_total")
                .await
                .unwrap_or(0.0);
            if m - marked >= burst as f64 {
                marked = m;
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(600),
                "a burst did not drain in 10 minutes"
            );
        }
        let rate = burst as f64 / t.elapsed().as_secs_f64();
        ticks.note(format!("bloat {phase} burst"));
        let dead: i64 = sqlx::query_scalar(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox'",
        )
        .fetch_one(&w.pool)
        .await
        .unwrap_or(-1);
        say(format!(
            "bloat {phase} at {at:.0} s: {rate:.0} events/s ({dead} dead tuples)"
        ));
        out.push(BloatBurst {
            phase: phase.into(),
            at_secs: at,
            events_per_sec: rate,
            dead_tuples: dead,
        });
        Ok(())
    };
    // A first burst warms the relay up (connections, caches); it is not reported.
    run_burst("warm-up", 0.0).await?;
    for _ in 0..3 {
        run_burst("before", 0.0).await?;
    }
    let mut holder = w.pool.acquire().await?.detach();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut holder)
        .await?;
    sqlx::query("SELECT pg_current_xact_id(), count(*) FROM outbox")
        .execute(&mut holder)
        .await?;
    let hold_start = Instant::now();
    let b = bar(hold_secs, "bloat: xmin held");
    let mut next = 0u64;
    while next < hold_secs {
        let wait = Duration::from_secs(next).saturating_sub(hold_start.elapsed());
        tokio::time::sleep(wait).await;
        run_burst("during", hold_start.elapsed().as_secs_f64()).await?;
        b.set_position(hold_start.elapsed().as_secs().min(hold_secs));
        next += 30;
    }
    tokio::time::sleep(Duration::from_secs(hold_secs).saturating_sub(hold_start.elapsed())).await;
    b.finish_and_clear();
    sqlx::query("COMMIT").execute(&mut holder).await?;
    let held = hold_start.elapsed().as_secs_f64();
    for _ in 0..3 {
        run_burst("after", held).await?;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    w.close().await;
    Ok(out)
}
