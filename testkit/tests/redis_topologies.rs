//! The Redis sink on a Redis Cluster and behind Redis Sentinel, each started privately
//! on free ports (`testkit::redistopo`): streams spread over the cluster's slots arrive
//! whole and in order; behind sentinels the relay follows the master through a failover;
//! `outboxd check` says which topology it reached, and names what is wrong when it cannot.
//! The failover fault scenarios under load are `outboxd-torture --scenario redis-cluster
//! --scenario redis-sentinel`.

mod common;

use std::time::Duration;

use common::sinks::*;
use common::*;
use outboxd::{Relay, RelayOptions};
use redis::cluster_routing::Slot;
use testkit::redistopo::{MASTER_NAME, RedisCluster, RedisSentinel};
use testkit::verify::{Consumed, read_redis, read_redis_cluster};

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("outboxd-test-{name}-{}", std::process::id()))
}

/// `outboxd check` with these settings: its exit code and what it printed.
fn check(db: &TestDb, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut c = std::process::Command::new(bin());
    c.arg("check").current_dir(std::env::temp_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOXD__") {
            c.env_remove(k);
        }
    }
    c.env("OUTBOXD__DATABASE__URL", &db.url)
        .env("OUTBOXD__SINK__KIND", "redis");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_gets_streams_over_every_master_whole_and_in_order() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(&dir("cluster")))
        .await
        .unwrap()
        .expect("scripts/redis-cluster.sh start");
    let db = TestDb::new().await;
    let base = unique("orders:");
    let streams: Vec<String> = (0..12).map(|i| format!("{base}:{i}")).collect();
    // The streams' slots are spread: one pipeline could not carry them.
    let slots: std::collections::HashSet<_> = streams.iter().map(Slot::for_key).collect();
    assert!(slots.len() > 1);
    let mut written = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        let aggs: Vec<String> = (0..5).map(|a| format!("u-{i}-{a}")).collect();
        written.extend(write_events(&db, stream, &aggs, 20).await);
    }
    let mut cfg = redis_config(&db, &cluster.seeds());
    cfg.redis.cluster = true;
    cfg.redis.wait_replicas = 1;
    let relay = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    assert!(drained(&db, Duration::from_secs(60)).await, "drained");
    relay.shutdown().await.unwrap();
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    let records: Vec<Consumed> = read_redis_cluster(
        &cluster.node_urls(),
        &names,
        Duration::from_secs(30),
        Duration::from_secs(2),
        every_event(written.len()),
    )
    .await
    .unwrap();
    assert_whole_and_in_order(&written, &records);
    // Each master holds some of them.
    for port in cluster.masters().unwrap() {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!(keys > 0, "master {port} holds none of the 12 streams");
    }

    let (code, text) = check(
        &db,
        &[
            ("OUTBOXD__REDIS__URL", cluster.seeds()),
            ("OUTBOXD__REDIS__CLUSTER", "true".into()),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("a cluster (cluster_state ok, 3 masters)"),
        "{text}"
    );
    // A cluster node given as one server: the rows would be held; check names the key.
    let (code, text) = check(
        &db,
        &[(
            "OUTBOXD__REDIS__URL",
            format!("{},127.0.0.1:1", cluster.node_urls()[0]),
        )],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("redis.cluster = true"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinels_the_relay_follows_the_master_through_a_failover() {
    let topo = tokio::task::spawn_blocking(|| RedisSentinel::start(&dir("sentinel")))
        .await
        .unwrap()
        .expect("scripts/redis-sentinel.sh start");
    let db = TestDb::new().await;
    let stream = unique("accounts:");
    let aggs = aggregates(10);
    let mut cfg = redis_config(&db, "redis://127.0.0.1:1");
    cfg.redis.sentinels = topo.sentinel_urls();
    cfg.redis.master_name = MASTER_NAME.into();
    cfg.redis.timeout_ms = 2_000;
    let relay = Relay::start(cfg, RelayOptions::default()).await.unwrap();
    let mut written = write_events(&db, &stream, &aggs, 10).await;
    assert!(drained(&db, Duration::from_secs(30)).await, "first half");
    // Replicated before the crash (without WAIT, a crash loses what the replica lacks).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = topo.master;
    topo.kill(old).unwrap();
    let more: Vec<String> = aggs.iter().map(|a| format!("{a}-after")).collect();
    written.extend(write_events(&db, &stream, &more, 10).await);
    assert!(
        drained(&db, Duration::from_secs(60)).await,
        "published to the promoted replica"
    );
    let new = topo.current_master().unwrap();
    assert_eq!(new, topo.replica, "the sentinels promoted the replica");
    let (code, text) = check(
        &db,
        &[
            (
                "OUTBOXD__REDIS__SENTINELS",
                format!("{:?}", topo.sentinel_urls()),
            ),
            ("OUTBOXD__REDIS__MASTER_NAME", MASTER_NAME.into()),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("master \"outboxd\" found through 3 sentinel(s)"),
        "{text}"
    );
    let (code, text) = check(
        &db,
        &[
            (
                "OUTBOXD__REDIS__SENTINELS",
                format!("{:?}", topo.sentinel_urls()),
            ),
            ("OUTBOXD__REDIS__MASTER_NAME", "nosuch".into()),
        ],
    );
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("nosuch"), "{text}");
    relay.shutdown().await.unwrap();
    let records = read_redis(
        &format!("redis://127.0.0.1:{new}"),
        &[&stream],
        Duration::from_secs(30),
        Duration::from_secs(2),
        every_event(written.len()),
    )
    .await
    .unwrap();
    assert_whole_and_in_order(&written, &records);
}
