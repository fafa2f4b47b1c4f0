//! Sinks: where the relay publishes. One per relay, chosen by `[sink] kind`.
//!
//! The publishers hand a [`Batch`] of rows (distinct aggregates, in id order) to the
//! [`Sink`]; the sink sends every row without waiting for the previous one and settles
//! each row exactly once — acknowledged, or failed with a [`PublishFailure`] it classified
//! itself. When the last row is settled the batch reports to the pipeline.
//!
//! Layout: [`api`] (the interface), [`message`] (the row as most sinks carry it),
//! [`registry`] (the sinks built in, and the configured one), `tls` (shared file and TLS
//! helpers), and one folder per sink, owning its configuration section, validation,
//! connection, record mapping and failure classification:
//!
//! - [`kafka`] (feature `kafka`) — librdkafka's idempotent producer;
//! - [`redis`] (feature `redis`) — one `XADD` per event to the stream named by the row's
//!   topic, pipelined;
//! - [`nats`] (feature `nats`) — a JetStream publish per event with `Nats-Msg-Id =
//!   event_id`, complete on its PubAck.
//!
//! A sink's folder is compiled without its feature too, for its configuration section
//! alone (a configuration file names every sink's section; a build refuses only to *use* a
//! sink it does not have).

pub mod api;
pub mod kafka;
pub mod message;
pub mod nats;
pub mod redis;
pub mod registry;
mod tls;

pub use crate::outbox::{SinkKind, validate_subject};
pub use api::{Batch, FailureKind, PublishFailure, Rows, Sink, SinkSpec, coalescing, enqueue};
pub use message::{Message, user_headers};
pub use registry::{SinkFactory, built_in, check_config, configured, create, location};
pub use tls::{read_pem, tls_hint, unreadable_files};

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::api::*;
    use super::message::*;
    use crate::outbox::SinkKind;
    use crate::store::{OutboxRow, Row};

    #[test]
    #[cfg(not(feature = "kafka"))]
    fn a_sink_left_out_of_the_build_is_refused_naming_its_feature() {
        use super::registry::{built_in, check_config};
        use crate::config::Config;
        let problems = check_config(&Config::default());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("built without the \"kafka\" sink (Cargo feature `kafka`)"),
            "{problems:?}"
        );
        let have: Vec<&str> = built_in().iter().map(|k| k.name()).collect();
        assert!(problems[0].ends_with(&have.join(", ")), "{problems:?}");
    }

    #[test]
    fn each_sink_judges_names_by_its_own_rules() {
        use SinkKind::*;
        for (name, kafka, redis, nats) in [
            ("orders", true, true, true),
            ("orders.v1_x-y", true, true, true),
            ("user:events", false, true, true),
            ("a b", false, true, false),
            ("orders.*", false, true, false),
            ("orders.>", false, true, false),
            ("orders..x", true, true, false),
            (".orders", true, true, false),
            ("", false, false, false),
        ] {
            assert_eq!(
                Kafka.validate_destination(name).is_ok(),
                kafka,
                "kafka {name:?}"
            );
            assert_eq!(
                Redis.validate_destination(name).is_ok(),
                redis,
                "redis {name:?}"
            );
            assert_eq!(
                Nats.validate_destination(name).is_ok(),
                nats,
                "nats {name:?}"
            );
        }
    }

    fn row() -> OutboxRow {
        use chrono::TimeZone;
        OutboxRow {
            id: 7,
            aggregate_type: "user".into(),
            aggregate_id: "u-1".into(),
            event_type: "user.created".into(),
            topic: "user:events".into(),
            payload: Some(br#"{"id": 1}"#.to_vec()),
            payload_bytes: None,
            headers: r#"{"traceparent": "00-abc"}"#.into(),
            event_id: uuid::Uuid::nil(),
            created_at: chrono::Utc.with_ymd_and_hms(2026, 12, 2, 8, 0, 0).unwrap(),
            attempts: 0,
            tries: 0,
        }
    }

    #[test]
    fn a_message_carries_builtins_first_then_the_row_headers() {
        let r = row();
        let m = Message::from_row(&r, SinkKind::Redis).unwrap();
        let names: Vec<&str> = m.headers.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "event_type",
                "aggregate_type",
                "aggregate_id",
                "outbox_id",
                "created_at",
                "traceparent"
            ]
        );
        assert_eq!(m.headers[0].1, "00000000-0000-0000-0000-000000000000");
        assert_eq!(m.headers[5].1, "2026-12-02T08:00:00.000000Z");
        assert_eq!(m.payload, br#"{"id": 1}"#);
    }

    #[test]
    fn a_row_header_the_sink_reserves_is_refused_never_dropped() {
        let mut r = row();
        r.headers = r#"{"event_id": "forged", "traceparent": "00-1"}"#.into();
        for kind in SinkKind::ALL {
            let f = Message::from_row(&r, kind).unwrap_err();
            assert_eq!(
                (f.kind, f.class),
                (FailureKind::Permanent, "reserved_header")
            );
            assert!(f.message.contains("event_id"), "{}", f.message);
        }
        r.headers = r#"{"Nats-Msg-Id": "fixed"}"#.into();
        let f = Message::from_row(&r, SinkKind::Nats).unwrap_err();
        assert_eq!(f.class, "reserved_header");
        assert!(Message::from_row(&r, SinkKind::Redis).is_ok());
        r.headers = r#"{"payload": "x"}"#.into();
        assert_eq!(
            Message::from_row(&r, SinkKind::Redis).unwrap_err().class,
            "reserved_header"
        );
    }

    #[test]
    fn a_dead_letter_copy_says_where_it_was_going_and_why() {
        let mut r = row();
        r.headers = "[1]".into();
        let m = Message::dead_letter(
            &r,
            SinkKind::Redis,
            "dlq",
            "malformed_row",
            "headers: not an object",
        );
        assert_eq!(m.topic, "dlq");
        let get = |k: &str| {
            m.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(get("original_topic").as_deref(), Some("user:events"));
        assert_eq!(get("dead_letter_class").as_deref(), Some("malformed_row"));
        assert_eq!(
            get("event_id").as_deref(),
            Some(uuid::Uuid::nil().to_string().as_str())
        );
    }

    #[test]
    fn a_batch_reports_once_after_its_last_row() {
        use std::sync::atomic::AtomicU32;
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let rows: Vec<Row> = (0..3).map(|_| Arc::new(row())).collect();
        let b = Batch::new(rows, false, move |b| {
            assert_eq!(b.outcomes().count(), 3);
            c.fetch_add(1, Ordering::SeqCst);
        });
        b.acked(0);
        b.acked(0);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        b.fail_rest(&PublishFailure::malformed("x"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        b.fail_rest(&PublishFailure::malformed("x"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
