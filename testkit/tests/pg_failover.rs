//! The PostgreSQL store on a primary and a synchronous replica (`scripts/pg-pair.sh`),
//! through libpq's multi-host URL: it connects to the read-write host wherever it is in
//! the list, follows a crash failover without a restart (leases and the instance lock on
//! the new primary), says meanwhile what it is waiting for, and never uses a former
//! primary that came back on an older timeline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outboxd::config::Config;
use outboxd::health::Health;
use outboxd::store::postgres::PgStore;
use outboxd::store::{LeaseClaim, RELAY_LEASE, Store};
use testkit::pgpair::PgPair;

/// Calls `op` until it succeeds, for at most `within`.
async fn eventually<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    within: Duration,
    mut op: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("still failing after {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until `/readyz`'s database problem says `words`.
async fn problem_says(health: &Health, words: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = health.db_problem()
            && p.contains(words)
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never said {words:?}; it says {:?}",
            health.db_problem()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The README's recipe for a library user's own pool ("Depending on outboxd"), verbatim.
async fn primary_pool(urls: &[&str]) -> Result<sqlx::PgPool, sqlx::Error> {
    use sqlx::postgres::PgPoolOptions;
    let mut last = sqlx::Error::Configuration("no host given".into());
    for url in urls {
        let pool = PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(3))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                        .fetch_one(&mut *conn)
                        .await?;
                    if standby {
                        return Err(sqlx::Error::Configuration("a standby".into()));
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await;
        match pool {
            Ok(pool) => return Ok(pool),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_finds_the_primary_follows_a_failover_and_refuses_a_split_brain() {
    let dir = std::env::temp_dir().join(format!("outboxd-pg-failover-{}", std::process::id()));
    let pair = PgPair::start(&dir).unwrap();
    let admin = PgPair::url(pair.primary, "postgres");
    testkit::backlog::fresh_database(&admin, "failover")
        .await
        .unwrap();
    let (p, r) = (pair.primary, pair.replica);
    let mut config = Config::default();
    // The standby first: the relay must pass it by for the read-write host.
    config.database.url = format!(
        "postgres://postgres@127.0.0.1:{r},127.0.0.1:{p}/failover?target_session_attrs=read-write"
    );
    config.database.connect_timeout_ms = 1_000;

    // One-shot commands (`outboxd check`, `migrate`) connect to the primary too.
    let oneshot = outboxd::db::connect(&config.database, 1).await.unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&oneshot)
        .await
        .unwrap();
    assert!(!in_recovery);
    oneshot.close().await;
    // A library user's pool, by the README's recipe: the standby is passed by.
    let app = primary_pool(&[&PgPair::url(r, "failover"), &PgPair::url(p, "failover")])
        .await
        .unwrap();
    let on: i32 = sqlx::query_scalar("SELECT current_setting('port')::int")
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(on, i32::from(p));
    app.close().await;

    let store = PgStore::connect_lazy(&config).unwrap();
    let health = Arc::new(Health::default());
    store.report_to(health.clone());
    eventually(Duration::from_secs(5), || store.backlog(10)).await;
    assert_eq!(store.current_host(), format!("127.0.0.1:{p}"));
    let claim = LeaseClaim {
        name: RELAY_LEASE,
        owner: "failover-test",
        ttl: Duration::from_secs(3),
        reclaim: false,
        grace: Duration::from_secs(1),
    };
    let first = store.acquire_lease(&claim).await.unwrap().expect("lease");
    let lock = store.lock_instance("failover-test").await.unwrap();
    assert!(lock.is_some(), "instance lock on the first primary");

    // A crash: the store looks, and says what each host answers, until one is promoted.
    pair.kill_primary().unwrap();
    let _ = store.backlog(10).await;
    let said = problem_says(&health, "is a standby (in recovery)").await;
    assert!(said.contains(&format!("127.0.0.1:{p}")), "{said}");
    assert!(!health.ready(), "not ready without a primary");
    let promoted = Instant::now();
    pair.promote().unwrap();
    eventually(Duration::from_secs(10), || store.backlog(10)).await;
    let resumed = promoted.elapsed();
    assert_eq!(store.current_host(), format!("127.0.0.1:{r}"));
    assert_eq!(health.db_problem(), None, "the search is over");
    assert!(
        resumed < Duration::from_secs(5),
        "resumed {resumed:?} after promotion"
    );
    // The lease row came over with the data; the advisory lock did not, and is taken
    // again on the new primary.
    let relock = store.lock_instance("failover-test").await.unwrap();
    assert!(relock.is_some(), "instance lock on the new primary");
    let again = LeaseClaim {
        reclaim: true,
        ..claim
    };
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = store.acquire_lease(&again).await.unwrap().expect("lease");
    assert!(second > first, "epoch {second} after {first}");

    // The old primary comes back as it was (split brain) and the new one is lost: the old
    // one is behind the timeline seen, and never used.
    pair.restart_old_primary().unwrap();
    let promoted_port = r;
    pair.kill_replica().unwrap();
    let _ = store.backlog(10).await;
    let said = problem_says(&health, "split brain").await;
    assert!(
        said.contains(&format!("127.0.0.1:{p} is a primary on timeline 1")),
        "{said}"
    );
    assert!(
        store.backlog(10).await.is_err(),
        "no session on the old primary"
    );
    assert_eq!(store.current_host(), format!("127.0.0.1:{promoted_port}"));
    drop(pair);
}
