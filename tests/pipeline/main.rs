//! The pipeline's own behaviour — order per aggregate, late committers, retries, holds,
//! dead letters, missing destinations, outages, crashes and restarts, leases — on the
//! in-memory store and an in-memory sink: no database, no broker, seconds per test.
//! What only PostgreSQL or a real broker can show stays in `relay.rs`, `operations.rs`,
//! `sinks.rs` and the fault suite.

mod memsink;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memsink::{MemorySink, Published};
use outboxd::actors::Hooks;
use outboxd::config::{Config, DeadLetterPolicy, OnPublish};
use outboxd::sink::FailureKind;
use outboxd::store::memory::MemoryStore;
use outboxd::store::{Fence, LeaseClaim, RELAY_LEASE, Store, StoreError};
use outboxd::{NewEvent, Relay, RelayOptions};

fn config() -> Config {
    let mut c = Config::default();
    c.metrics.listen = String::new();
    c.relay.partitions = 4;
    c.relay.lease_ttl_ms = 1_500;
    c.relay.instance_id = "memory-a".into();
    c.poller.interval_ms = 50;
    c.poller.rescan_interval_ms = 60_000;
    c.retry.initial_backoff_ms = 5;
    c.retry.max_backoff_ms = 50;
    c.retry.max_attempts = 4;
    c.supervisor.initial_backoff_ms = 5;
    c.supervisor.max_backoff_ms = 50;
    c.supervisor.max_restarts = 1_000;
    c
}

fn event(aggregate: &str, topic: &str) -> NewEvent {
    NewEvent::builder("test", aggregate)
        .event_type("e")
        .topic(topic)
        .json(&serde_json::json!({"a": aggregate}))
        .build()
        .unwrap()
}

/// Writes `per` events for each aggregate, interleaved, each in its own transaction;
/// returns the ids by aggregate.
fn write(store: &MemoryStore, aggs: &[String], per: usize) -> BTreeMap<String, Vec<i64>> {
    let mut ids: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for _ in 0..per {
        for a in aggs {
            ids.entry(a.clone())
                .or_default()
                .push(store.enqueue(&event(a, "t")));
        }
    }
    ids
}

fn aggregates(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A relay on `store` and `sink`, started (it may stand by).
async fn spawn(store: &MemoryStore, sink: &MemorySink, cfg: Config, hooks: Hooks) -> Relay {
    Relay::start_with_store(
        cfg,
        Arc::new(store.clone()),
        RelayOptions {
            sink: Some(sink.factory()),
            hooks,
        },
    )
    .await
    .unwrap()
}

/// A relay on `store` and `sink` that holds the lease.
async fn start(store: &MemoryStore, sink: &MemorySink, cfg: Config) -> Relay {
    let relay = spawn(store, sink, cfg, Hooks::default()).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            relay.info().await.is_ok_and(|i| i.active)
        })
        .await,
        "the relay took the lease"
    );
    relay
}

async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn drained(store: &MemoryStore, timeout: Duration) -> bool {
    eventually(timeout, || async { store.pending().is_empty() }).await
}

/// Lost, reordered and duplicated rows of `written` in what the sink accepted.
#[derive(Debug, Default, PartialEq)]
struct Ledger {
    lost: usize,
    reordered: usize,
    duplicates: usize,
}

fn ledger(written: &BTreeMap<String, Vec<i64>>, published: &[Published]) -> Ledger {
    let mut by_agg: HashMap<&str, Vec<i64>> = HashMap::new();
    for p in published {
        by_agg.entry(&p.aggregate_id).or_default().push(p.id);
    }
    let mut l = Ledger::default();
    for (agg, ids) in written {
        let got = by_agg.get(agg.as_str()).cloned().unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut max = i64::MIN;
        for id in &got {
            if !seen.insert(*id) {
                // A resend. After a crash the relay repeats an aggregate's unmarked
                // events, in order, from the oldest; some may already have been
                // delivered after it (design.md, guarantee 2).
                l.duplicates += 1;
                continue;
            }
            // The first delivery of an event after a later one's is out of order.
            if *id < max {
                l.reordered += 1;
            }
            max = max.max(*id);
        }
        l.lost += ids.iter().filter(|id| !seen.contains(id)).count();
    }
    l
}

/// Under steady load the poller gathers and reads on its own cadence with row wake-ups
/// off; when the load stops it turns them on again, and a lone event after the quiet spell
/// is published at once (the fallback poll is a minute away, so only the renewed wake-up
/// can have found it). Nothing is lost or reordered across the switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_the_poller_paces_itself_and_wakes_again_when_it_stops() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let mut cfg = config();
    cfg.poller.interval_ms = 60_000;
    cfg.poller.gather_ms = 20;
    cfg.poller.gather_full_rate = 100;
    let relay = start(&store, &sink, cfg).await;
    let aggs = aggregates("paced", 20);
    let mut written: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    // ~500 events/s for a second, one per transaction.
    for i in 0..500 {
        let a = &aggs[i % aggs.len()];
        written
            .entry(a.clone())
            .or_default()
            .push(store.enqueue(&event(a, "t")));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(drained(&store, Duration::from_secs(10)).await);
    let (paused, _) = store.wakeups_paused();
    assert!(paused >= 1, "the poller never paced itself");
    assert!(
        eventually(Duration::from_secs(2), || async {
            !store.wakeups_paused().1
        })
        .await,
        "row wake-ups stayed off after the load stopped"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lone = store.enqueue(&event("lone", "t"));
    written.insert("lone".into(), vec![lone]);
    let started = Instant::now();
    assert!(drained(&store, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a lone event waited {:?}",
        started.elapsed()
    );
    relay.shutdown().await.unwrap();
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_published_once_and_in_order_per_aggregate() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let relay = start(&store, &sink, config()).await;
    let aggs = aggregates("a", 50);
    let writer = {
        let store = store.clone();
        let aggs = aggs.clone();
        tokio::spawn(async move {
            let mut all = BTreeMap::new();
            for _ in 0..20 {
                for (a, ids) in write(&store, &aggs, 2) {
                    all.entry(a).or_insert_with(Vec::new).extend(ids);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            all
        })
    };
    let written = writer.await.unwrap();
    assert!(drained(&store, Duration::from_secs(20)).await);
    let report = relay.shutdown().await.unwrap();
    assert!(report.marked_all);
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
    assert_eq!(sink.published().len(), 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_committing_lower_id_is_published_not_skipped_and_a_rollback_holds_nothing() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let relay = start(&store, &sink, config()).await;
    // Two transactions take low ids and stay open while later rows commit and go out.
    let mut late = store.begin();
    let late_id = late.enqueue(&event("late", "t"));
    let mut rolled = store.begin();
    rolled.enqueue(&event("rolled", "t"));
    let later = write(&store, &aggregates("b", 5), 4);
    assert!(drained(&store, Duration::from_secs(10)).await);
    assert!(!sink.published().iter().any(|p| p.id == late_id));
    rolled.rollback();
    late.commit();
    assert!(
        eventually(Duration::from_secs(5), || async {
            sink.published().iter().any(|p| p.id == late_id)
        })
        .await,
        "the late row below the cursor was found"
    );
    let mut written = later;
    written.insert("late".into(), vec![late_id]);
    relay.shutdown().await.unwrap();
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_in_order_without_holding_up_others() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let written = write(&store, &aggregates("f", 10), 10);
    // The first row of f-0 fails three times (below max_attempts = 4).
    let first = written["f-0"][0];
    sink.flaky(first, 3);
    let relay = start(&store, &sink, config()).await;
    assert!(drained(&store, Duration::from_secs(10)).await);
    relay.shutdown().await.unwrap();
    let published = sink.published();
    assert_eq!(ledger(&written, &published), Ledger::default());
    assert!(store.dead_letters().is_empty());
    // Others went on meanwhile: some row of another aggregate before f-0's first.
    let pos = published.iter().position(|p| p.id == first).unwrap();
    assert!(pos > 0, "f-0's first row went first despite three failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_aggregate_is_dead_lettered_and_held_until_replayed() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let mut written = write(&store, &aggregates("ok", 10), 10);
    let bad = write(&store, &["bad".to_string()], 5);
    sink.fail_aggregate("bad", FailureKind::Permanent, "record_too_large");
    let relay = start(&store, &sink, config()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.pending().len() == 4 && store.dead_letters().len() == 1
        })
        .await,
        "the healthy rows went, the poisoned one was dead-lettered, its later rows wait: {} pending",
        store.pending().len()
    );
    let dl = &store.dead_letters()[0];
    assert_eq!(
        (dl.row.id, dl.error_class.as_str()),
        (bad["bad"][0], "record_too_large")
    );
    assert!(store.pending().iter().all(|r| r.aggregate_id == "bad"));
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
    // Still held a while later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.pending().len(), 4);
    // Replayed before the fix, it fails again: dead-lettered again (not lost), the
    // aggregate held again.
    assert_eq!(store.replay("bad"), 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let dls = store.dead_letters();
            dls.len() == 1 && dls[0].resolved_at.is_none() && store.pending().len() == 4
        })
        .await,
        "a replayed row that failed again is an open dead letter again: {:?}",
        store.dead_letters()
    );
    // The operator fixes it and replays: the whole aggregate goes, in order.
    sink.heal_aggregate("bad");
    assert_eq!(store.replay("bad"), 1);
    assert!(drained(&store, Duration::from_secs(10)).await);
    relay.shutdown().await.unwrap();
    written.extend(bad);
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_policy_continue_a_poisoned_row_does_not_hold_its_aggregate() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let written = write(&store, &["p".to_string()], 5);
    let poisoned = written["p"][1];
    sink.fail_row(poisoned, FailureKind::Permanent, "malformed_row");
    let mut cfg = config();
    cfg.relay.dead_letter_policy = DeadLetterPolicy::Continue;
    let relay = start(&store, &sink, cfg).await;
    assert!(drained(&store, Duration::from_secs(10)).await);
    relay.shutdown().await.unwrap();
    let dls = store.dead_letters();
    assert_eq!(dls.len(), 1);
    assert_eq!(
        (dls[0].row.id, dls[0].error_class.as_str()),
        (poisoned, "malformed_row")
    );
    let got: Vec<i64> = sink.published().iter().map(|p| p.id).collect();
    let expected: Vec<i64> = written["p"]
        .iter()
        .copied()
        .filter(|id| *id != poisoned)
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_destination_is_held_never_dead_lettered_and_goes_once_created() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    sink.missing_topic("t", true);
    let written = write(&store, &aggregates("m", 3), 3);
    let mut cfg = config();
    cfg.retry.max_attempts = 2;
    let relay = start(&store, &sink, cfg).await;
    let health = relay.health();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !health.destination_problems().is_empty()
        })
        .await,
        "readiness names the destination"
    );
    // Many tries later nothing is dead-lettered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.dead_letters().is_empty());
    assert_eq!(store.pending().len(), 9);
    sink.missing_topic("t", false);
    assert!(drained(&store, Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            health.destination_problems().is_empty()
        })
        .await
    );
    relay.shutdown().await.unwrap();
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_holds_rows_and_uses_up_no_attempts() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let mut cfg = config();
    cfg.retry.max_attempts = 2;
    let relay = start(&store, &sink, cfg).await;
    sink.set_down(true);
    let written = write(&store, &aggregates("o", 10), 5);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        store.pending().len(),
        50,
        "nothing went while the broker was down"
    );
    sink.set_down(false);
    assert!(drained(&store, Duration::from_secs(10)).await);
    relay.shutdown().await.unwrap();
    assert!(
        store.dead_letters().is_empty(),
        "an outage is nobody's fault"
    );
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_reported_and_the_relay_resumes() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let relay = start(&store, &sink, config()).await;
    let health = relay.health();
    let mut written = write(&store, &aggregates("d", 5), 5);
    assert!(drained(&store, Duration::from_secs(10)).await);
    store.set_down(true);
    assert!(
        eventually(Duration::from_secs(5), || async { !health.db_up() }).await,
        "readiness says the database is down"
    );
    store.set_down(false);
    for (a, ids) in write(&store, &aggregates("d", 5), 5) {
        written.get_mut(&a).unwrap().extend(ids);
    }
    assert!(drained(&store, Duration::from_secs(15)).await);
    assert!(eventually(Duration::from_secs(5), || async { health.db_up() }).await);
    relay.shutdown().await.unwrap();
    let l = ledger(&written, &sink.published());
    assert_eq!((l.lost, l.reordered), (0, 0), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_publisher_is_restarted_and_nothing_is_lost_or_reordered() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    sink.panic_every(7);
    let written = write(&store, &aggregates("c", 50), 40);
    let relay = start(&store, &sink, config()).await;
    assert!(drained(&store, Duration::from_secs(30)).await);
    let info = relay.info().await.unwrap();
    relay.shutdown().await.unwrap();
    assert!(info.restarts >= 3, "publishers crashed: {info:?}");
    let l = ledger(&written, &sink.published());
    assert_eq!((l.lost, l.reordered), (0, 0), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_poller_restarts_the_pipeline_from_the_store() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let written = write(&store, &aggregates("p", 50), 30);
    let reads = Arc::new(AtomicU64::new(0));
    let hook_reads = reads.clone();
    let mut cfg = config();
    cfg.poller.batch_size = 100;
    // The read hook runs inside the poller: every 5th read crashes it.
    let hooks = Hooks {
        on_read: Some(Arc::new(move |_, _| {
            if hook_reads.fetch_add(1, Ordering::AcqRel) % 5 == 4 {
                panic!("test: the poller crashes after a read");
            }
        })),
        ..Default::default()
    };
    let relay = spawn(&store, &sink, cfg, hooks).await;
    assert!(drained(&store, Duration::from_secs(30)).await);
    let info = relay.info().await.unwrap();
    relay.shutdown().await.unwrap();
    assert!(info.restarts >= 2, "the pipeline was restarted: {info:?}");
    let l = ledger(&written, &sink.published());
    assert_eq!((l.lost, l.reordered), (0, 0), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_the_holder_stops_and_nothing_is_lost() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let first = start(&store, &sink, config()).await;
    let mut cfg = config();
    cfg.relay.instance_id = "memory-b".into();
    let second = spawn(&store, &sink, cfg, Hooks::default()).await;
    let mut written = write(&store, &aggregates("s", 10), 5);
    assert!(drained(&store, Duration::from_secs(10)).await);
    assert!(!second.info().await.unwrap().active, "one holder at a time");
    assert_eq!(store.lease(RELAY_LEASE).unwrap().0, "memory-a");
    first.shutdown().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            second.info().await.is_ok_and(|i| i.active)
        })
        .await,
        "the standby took over once the lease was released"
    );
    for (a, ids) in write(&store, &aggregates("s", 10), 5) {
        written.get_mut(&a).unwrap().extend(ids);
    }
    assert!(drained(&store, Duration::from_secs(10)).await);
    second.shutdown().await.unwrap();
    assert_eq!(store.lease(RELAY_LEASE).unwrap(), ("memory-b".into(), 2));
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_mode_keeps_published_rows_until_cleanup() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let mut cfg = config();
    cfg.relay.on_publish = OnPublish::Mark;
    cfg.cleanup.published_retention_secs = 0;
    cfg.cleanup.interval_secs = 1;
    let relay = start(&store, &sink, cfg).await;
    let written = write(&store, &aggregates("k", 4), 5);
    assert!(drained(&store, Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            store.published_kept() == 0
        })
        .await,
        "cleanup removed the published rows"
    );
    relay.shutdown().await.unwrap();
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

/// The store's fencing, directly: a holder whose lease was taken over changes nothing.
#[tokio::test]
async fn writes_of_a_fenced_holder_change_nothing() {
    let store = MemoryStore::new();
    let id = store.enqueue(&event("z", "t"));
    let claim = |owner: &'static str| LeaseClaim {
        name: RELAY_LEASE,
        owner,
        ttl: Duration::from_millis(1),
        reclaim: false,
        grace: Duration::ZERO,
    };
    let e1 = store.acquire_lease(&claim("one")).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let e2 = store.acquire_lease(&claim("two")).await.unwrap().unwrap();
    assert_eq!((e1, e2), (1, 2));
    let zombie = Fence {
        name: RELAY_LEASE.into(),
        owner: "one".into(),
        epoch: e1,
    };
    let fenced = |r: Result<u64, StoreError>| matches!(r, Err(StoreError::Fenced(_)));
    assert!(fenced(
        store
            .mark_published(&zombie, &[id], OnPublish::Delete)
            .await
    ));
    assert!(matches!(
        store.dead_letter(&zombie, id, 1, "x", "y").await,
        Err(StoreError::Fenced(_))
    ));
    assert!(
        !store
            .renew_lease(&zombie, Duration::from_secs(1))
            .await
            .unwrap()
    );
    assert_eq!(store.pending().len(), 1, "nothing changed");
    let owner = Fence {
        owner: "two".into(),
        epoch: e2,
        ..zombie
    };
    assert_eq!(
        store
            .mark_published(&owner, &[id], OnPublish::Delete)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_failing_while_others_go_uses_up_its_attempts_and_is_dead_lettered() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    let mut cfg = config();
    cfg.retry.initial_backoff_ms = 20;
    cfg.retry.max_backoff_ms = 20;
    let relay = start(&store, &sink, cfg).await;
    sink.fail_aggregate("stuck", FailureKind::Transient, "request_timed_out");
    let stuck = store.enqueue(&event("stuck", "t"));
    // Other aggregates keep flowing, so each failure is the row's own (counted).
    let mut written = BTreeMap::new();
    for _ in 0..40 {
        for (a, ids) in write(&store, &aggregates("g", 5), 1) {
            written.entry(a).or_insert_with(Vec::new).extend(ids);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(drained(&store, Duration::from_secs(10)).await);
    relay.shutdown().await.unwrap();
    let dls = store.dead_letters();
    assert_eq!(dls.len(), 1);
    assert_eq!((dls[0].row.id, dls[0].attempts), (stuck, 4));
    assert!(
        dls[0].reason.contains("gave up after 4 attempts"),
        "{}",
        dls[0].reason
    );
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_beyond_the_budget_stop_the_relay_with_exit_code_1_and_no_dead_letter() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    sink.panic_every(1);
    write(&store, &aggregates("b", 20), 10);
    let mut cfg = config();
    cfg.supervisor.max_restarts = 2;
    cfg.supervisor.initial_backoff_ms = 10;
    let mut relay = spawn(&store, &sink, cfg, Hooks::default()).await;
    let exit = tokio::time::timeout(Duration::from_secs(20), relay.wait())
        .await
        .expect("the relay stopped by itself");
    let outboxd::actors::messages::RelayExit::RestartBudgetExhausted(why) = &exit else {
        panic!("{exit:?}");
    };
    assert!(why.contains("supervisor.max_restarts = 2"), "{why}");
    assert_eq!(exit.exit_code(), 1);
    assert!(
        store.dead_letters().is_empty(),
        "crashes are not the rows' fault"
    );
    assert_eq!(
        store.lease(RELAY_LEASE).map(|l| l.0),
        Some("memory-a".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_asked_a_missing_destination_is_dead_lettered_and_the_aggregate_held() {
    let store = MemoryStore::new();
    let sink = MemorySink::new();
    sink.missing_topic("gone", true);
    let lost = store.enqueue(&event("m", "gone"));
    let later = store.enqueue(&event("m", "t"));
    let written = write(&store, &aggregates("ok", 3), 3);
    let mut cfg = config();
    cfg.sink.missing_destination = outboxd::config::MissingDestination::DeadLetter;
    let relay = start(&store, &sink, cfg).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            store.pending().len() == 1 && store.dead_letters().len() == 1
        })
        .await,
        "{} pending, {} dead letters",
        store.pending().len(),
        store.dead_letters().len()
    );
    let health = relay.health();
    relay.shutdown().await.unwrap();
    let dl = &store.dead_letters()[0];
    assert_eq!(
        (dl.row.id, dl.error_class.as_str()),
        (lost, "unknown_topic")
    );
    assert_eq!(
        store.pending()[0].id,
        later,
        "the aggregate is held behind it"
    );
    assert!(
        health.destination_problems().is_empty(),
        "nothing is held for the topic"
    );
    assert_eq!(ledger(&written, &sink.published()), Ledger::default());
}
