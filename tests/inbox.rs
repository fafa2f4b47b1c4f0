//! The consumer's inbox (`outboxd::inbox`) against the real PostgreSQL: a duplicate is
//! skipped, a failed handler leaves the event to be processed again, racing deliveries of
//! one event give one effect, consumers are independent, cleanup keeps what is recent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use outboxd::inbox::{Handled, Inbox, InboxError};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The consumer's own table, where its handler writes the effect of an event.
async fn effects_table(pool: &PgPool) {
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL, note text NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

async fn effect(tx: &mut PgConnection, event_id: Uuid, note: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (event_id, note) VALUES ($1, $2)")
        .bind(event_id)
        .bind(note)
        .execute(&mut *tx)
        .await
        .map(|_| ())
}

async fn effects_of(pool: &PgPool, event_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_second_delivery_is_skipped_and_writes_nothing() {
    let db = TestDb::new().await;
    effects_table(&db.pool).await;
    let inbox = Inbox::new("mailer");
    let id = Uuid::new_v4();

    let first = inbox
        .process(&db.pool, id, async |tx| {
            effect(tx, id, "first").await.map(|_| 7)
        })
        .await
        .unwrap();
    assert_eq!(first, Handled::Done(7));
    let second = inbox
        .process(&db.pool, id, async |tx| effect(tx, id, "second").await)
        .await
        .unwrap();
    assert_eq!(second, Handled::Duplicate);

    assert_eq!(effects_of(&db.pool, id).await, 1);
    let note: String = sqlx::query_scalar("SELECT note FROM effects WHERE event_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(note, "first");
    assert!(inbox.seen(&db.pool, id).await.unwrap());
}

#[tokio::test]
async fn a_failed_handler_rolls_back_and_the_event_is_processed_on_its_next_delivery() {
    let db = TestDb::new().await;
    effects_table(&db.pool).await;
    let inbox = Inbox::new("mailer");
    let id = Uuid::new_v4();

    let failed = inbox
        .process(&db.pool, id, async |tx| {
            effect(tx, id, "half-done").await.unwrap();
            Err::<(), _>("mail server said 451")
        })
        .await;
    match failed {
        Err(InboxError::Handler(e)) => assert_eq!(e, "mail server said 451"),
        other => panic!("expected the handler's error, got {other:?}"),
    }
    assert_eq!(
        effects_of(&db.pool, id).await,
        0,
        "the handler's write rolled back"
    );
    assert!(
        !inbox.seen(&db.pool, id).await.unwrap(),
        "not marked processed"
    );

    let again = inbox
        .process(&db.pool, id, async |tx| effect(tx, id, "second try").await)
        .await
        .unwrap();
    assert_eq!(again, Handled::Done(()));
    assert_eq!(effects_of(&db.pool, id).await, 1);
}

#[tokio::test]
async fn a_commit_that_fails_leaves_the_event_unprocessed() {
    let db = TestDb::new().await;
    effects_table(&db.pool).await;
    // A deferred constraint fails only at COMMIT, after the handler returned Ok.
    sqlx::query(
        "ALTER TABLE effects ADD CONSTRAINT one_per_note UNIQUE (note) DEFERRABLE INITIALLY DEFERRED",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let inbox = Inbox::new("mailer");
    let id = Uuid::new_v4();
    let outcome = inbox
        .process(&db.pool, id, async |tx| {
            effect(tx, id, "same").await?;
            effect(tx, id, "same").await
        })
        .await;
    assert!(
        matches!(outcome, Err(InboxError::Database(_))),
        "{outcome:?}"
    );
    assert!(!inbox.seen(&db.pool, id).await.unwrap());
    assert_eq!(effects_of(&db.pool, id).await, 0);
}

#[tokio::test]
async fn racing_deliveries_to_two_members_of_a_group_give_one_effect_per_event() {
    let db = TestDb::new().await;
    effects_table(&db.pool).await;
    let ids: Arc<Vec<Uuid>> = Arc::new((0..200).map(|_| Uuid::new_v4()).collect());
    // Two members of the group `mailer` both receive every event (a take-over racing the
    // original member), in opposite orders so that they collide mid-way.
    let member = |reverse: bool| {
        let pool = db.pool.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            let inbox = Inbox::new("mailer");
            let mut order: Vec<Uuid> = ids.to_vec();
            if reverse {
                order.reverse();
            }
            let mut done = 0;
            for id in order {
                let outcome = inbox
                    .process(&pool, id, async |tx| {
                        // Hold the transaction open a little, as a slow handler would.
                        tokio::time::sleep(Duration::from_micros(300)).await;
                        effect(tx, id, if reverse { "b" } else { "a" }).await
                    })
                    .await
                    .unwrap();
                if outcome == Handled::Done(()) {
                    done += 1;
                }
            }
            done
        })
    };
    let (a, b) = (member(false), member(true));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a + b, 200, "every event processed by exactly one member");
    assert!(a > 0 && b > 0, "both members processed some ({a}, {b})");
    let (total, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM effects")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((total, distinct), (200, 200));
}

#[tokio::test]
async fn a_delivery_waits_for_one_in_progress_and_is_skipped_if_it_commits_or_run_if_it_rolls_back()
{
    let db = TestDb::new().await;
    effects_table(&db.pool).await;
    let inbox = Inbox::new("mailer");

    for commit_first in [true, false] {
        let id = Uuid::new_v4();
        let mut first = db.pool.begin().await.unwrap();
        assert!(inbox.record(&mut first, id).await.unwrap());
        effect(&mut first, id, "first").await.unwrap();

        let second = {
            let (pool, inbox) = (db.pool.clone(), inbox.clone());
            tokio::spawn(async move {
                inbox
                    .process(&pool, id, async |tx| effect(tx, id, "second").await)
                    .await
                    .unwrap()
            })
        };
        // The second delivery is blocked on the first one's inbox entry: a lock wait that
        // PostgreSQL shows (not merely "not finished yet", which a task that never
        // started would also be).
        let waiting = common::eventually(Duration::from_secs(10), || {
            let pool = db.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' AND query LIKE '%outbox_inbox%'",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 1
            }
        })
        .await;
        assert!(
            waiting,
            "the second delivery waits for the first one's lock"
        );
        assert!(!second.is_finished(), "and has not finished");
        if commit_first {
            first.commit().await.unwrap();
            assert_eq!(second.await.unwrap(), Handled::Duplicate);
        } else {
            first.rollback().await.unwrap();
            assert_eq!(second.await.unwrap(), Handled::Done(()));
        }
        assert_eq!(effects_of(&db.pool, id).await, 1);
    }
}

#[tokio::test]
async fn consumers_are_independent_each_processes_an_event_once() {
    let db = TestDb::new().await;
    effects_table(&db.pool).await;
    let id = Uuid::new_v4();
    for name in ["mailer", "billing", "mailer", "billing"] {
        Inbox::new(name)
            .process(&db.pool, id, async |tx| effect(tx, id, name).await)
            .await
            .unwrap();
    }
    let notes: Vec<String> =
        sqlx::query_scalar("SELECT note FROM effects WHERE event_id = $1 ORDER BY note")
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(notes, ["billing", "mailer"]);
}

#[tokio::test]
async fn cleanup_deletes_only_this_consumers_entries_past_the_retention() {
    let db = TestDb::new().await;
    let inbox = Inbox::new("mailer").with_retention(Duration::from_secs(3600));
    let other = Inbox::new("billing").with_retention(Duration::from_secs(3600));
    // 12,000 old entries (more than one cleanup batch) and one recent, for each consumer.
    for consumer in ["mailer", "billing"] {
        sqlx::query(
            "INSERT INTO outbox_inbox (consumer, event_id, processed_at) \
             SELECT $1, gen_random_uuid(), now() - interval '2 hours' FROM generate_series(1, 12000)",
        )
        .bind(consumer)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let recent = Uuid::new_v4();
    let mut tx = db.pool.begin().await.unwrap();
    assert!(inbox.record(&mut tx, recent).await.unwrap());
    tx.commit().await.unwrap();

    assert_eq!(inbox.cleanup(&db.pool).await.unwrap(), 12_000);
    assert!(
        inbox.seen(&db.pool, recent).await.unwrap(),
        "recent entry kept"
    );
    let left: Vec<(String, i64)> = sqlx::query_as(
        "SELECT consumer, count(*) FROM outbox_inbox GROUP BY consumer ORDER BY consumer",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, [("billing".into(), 12_000), ("mailer".into(), 1)]);
    assert_eq!(inbox.cleanup(&db.pool).await.unwrap(), 0);
    assert_eq!(other.cleanup(&db.pool).await.unwrap(), 12_000);
}
