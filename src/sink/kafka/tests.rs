//! The Kafka sink's unit tests.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::check::*;
use super::classify::*;
use super::config::KafkaConfig;
use super::producer::*;
use super::record::*;
use crate::SinkKind;
use crate::sink::api::*;
use crate::store::OutboxRow;
use chrono::{TimeZone, Timelike};

fn row() -> OutboxRow {
    OutboxRow {
        id: 7,
        aggregate_type: "order".into(),
        aggregate_id: "o-42".into(),
        event_type: "order.created".into(),
        topic: "orders".into(),
        payload: Some(br#"{"total": 12}"#.to_vec()),
        payload_bytes: None,
        headers: r#"{"traceparent": "00-abc"}"#.into(),
        event_id: uuid::Uuid::nil(),
        created_at: chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .unwrap(),
        attempts: 0,
        tries: 0,
    }
}

#[test]
fn record_carries_key_value_and_every_header_with_builtins_first() {
    let r = row();
    let rec = build_record(&r).unwrap();
    assert_eq!(rec.topic, "orders");
    assert_eq!(rec.key, b"o-42");
    assert_eq!(rec.value, br#"{"total": 12}"#);
    let headers = rec.header_pairs();
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
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
    assert_eq!(headers[0].1, "00000000-0000-0000-0000-000000000000");
    assert_eq!(headers[1].1, "order.created");
    // A row's own header named like a built-in is refused, never dropped or sent.
    let mut spoofed = row();
    spoofed.headers = r#"{"traceparent": "00-abc", "event_type": "spoofed"}"#.into();
    assert_eq!(build_record(&spoofed).unwrap_err().class, "reserved_header");
    assert_eq!(headers[4].1, "7");
    assert_eq!(headers[5].1, "2026-11-22T12:00:00.000000Z");
}

/// The hot path writes the headers straight into librdkafka's list; every other sink (and
/// Kafka's dead-letter copy) goes through the shared `Message`. Both must carry the same.
#[test]
fn the_hot_path_record_equals_the_record_made_from_the_shared_message() {
    let mut r = row();
    r.created_at = r.created_at.with_nanosecond(123_456_000).unwrap();
    r.headers = r#"{"traceparent": "00-abc", "tenant": "t-1"}"#.into();
    let fast = build_record(&r).unwrap();
    let message = crate::sink::message::Message::from_row(&r, SinkKind::Kafka).unwrap();
    let shared = Record::from_message(&message, r.aggregate_id.as_bytes());
    assert_eq!(fast.header_pairs(), shared.header_pairs());
    assert_eq!(fast.topic, shared.topic);
    assert_eq!(fast.key, shared.key);
    assert_eq!(fast.value, shared.value);
}

#[test]
fn created_at_is_rfc3339_with_microseconds_like_chrono() {
    let t = chrono::Utc
        .with_ymd_and_hms(987, 1, 2, 3, 4, 5)
        .unwrap()
        .with_nanosecond(123_456_789)
        .unwrap();
    let mut buf = [0u8; 27];
    assert_eq!(
        rfc3339_micros(&t, &mut buf),
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
}

#[test]
fn binary_payload_is_sent_as_is() {
    let mut r = row();
    r.payload = None;
    r.payload_bytes = Some(vec![0, 159, 146, 150]);
    assert_eq!(build_record(&r).unwrap().value, &[0, 159, 146, 150]);
}

#[test]
fn headers_that_are_not_a_string_map_make_a_malformed_row() {
    for bad in [r#"{"n": 1}"#, r#"[1, 2]"#, r#""text""#] {
        let mut r = row();
        r.headers = bad.into();
        let f = build_record(&r).unwrap_err();
        assert_eq!(
            (f.kind, f.class),
            (FailureKind::Permanent, "malformed_row"),
            "{bad}"
        );
    }
}

#[test]
fn invalid_topic_is_permanent() {
    let mut r = row();
    r.topic = "bad topic!".into();
    let f = build_record(&r).unwrap_err();
    assert_eq!((f.kind, f.class), (FailureKind::Permanent, "invalid_topic"));
}

#[test]
fn oversized_record_goes_to_dead_letter() {
    let f = classify(&KafkaError::MessageProduction(
        RDKafkaErrorCode::MessageSizeTooLarge,
    ));
    assert_eq!(
        (f.kind, f.class),
        (FailureKind::Permanent, "record_too_large")
    );
}

#[test]
fn broker_trouble_is_transient_and_idempotence_loss_is_fatal() {
    for code in [
        RDKafkaErrorCode::MessageTimedOut,
        RDKafkaErrorCode::QueueFull,
        RDKafkaErrorCode::AllBrokersDown,
        RDKafkaErrorCode::NotEnoughReplicas,
        RDKafkaErrorCode::LeaderNotAvailable,
    ] {
        let f = classify(&KafkaError::MessageProduction(code));
        assert_eq!(f.kind, FailureKind::Transient, "{code:?}");
    }
    for code in [
        RDKafkaErrorCode::InvalidTopic,
        RDKafkaErrorCode::InvalidRecord,
    ] {
        let f = classify(&KafkaError::MessageProduction(code));
        assert_eq!(f.kind, FailureKind::Permanent, "{code:?}");
    }
    // A topic that does not exist, or that the relay may not write, holds its rows as on
    // every sink; only the missing one can be dead-lettered on request.
    for (code, missing) in [
        (RDKafkaErrorCode::TopicAuthorizationFailed, false),
        (RDKafkaErrorCode::ClusterAuthorizationFailed, false),
        (RDKafkaErrorCode::UnknownTopicOrPartition, true),
    ] {
        let f = classify(&KafkaError::MessageProduction(code));
        assert_eq!(f.kind, FailureKind::Destination, "{code:?}");
        assert_eq!(f.is_missing_destination(), missing, "{code:?}");
    }
    assert_eq!(
        classify(&KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)).kind,
        FailureKind::Fatal
    );
}

#[test]
fn this_build_offers_tls_and_scram_and_oauthbearer() {
    let features = builtin_features();
    for f in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
        assert!(features.split(',').any(|x| x == f), "{f} in {features}");
    }
}

#[test]
fn secret_bearing_options_are_recognised() {
    for k in [
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
    ] {
        assert!(is_secret(k), "{k}");
    }
    for k in [
        "sasl.username",
        "ssl.ca.location",
        "security.protocol",
        "linger.ms",
    ] {
        assert!(!is_secret(k), "{k}");
    }
}

#[test]
fn bad_producer_options_name_their_key_and_never_a_secret_value() {
    let mut cfg = KafkaConfig::default();
    for (k, v) in [
        ("security.protocol", "tls"),
        ("sasl.mechanism", "SCRAM-MD5"),
        ("ssl.ca.location", "/nonexistent/ca.pem"),
        ("no.such.option", "1"),
        ("sasl.password", "hunter2-secret"),
    ] {
        cfg.producer.insert(k.into(), v.into());
    }
    cfg.secret_files
        .insert("ssl.key.password".into(), "/nonexistent/keypass".into());
    let problems = check_options(&cfg).join("\n");
    for needle in [
        "kafka.producer.\"security.protocol\": librdkafka refuses it",
        "kafka.producer.\"sasl.mechanism\": \"SCRAM-MD5\" is not a SASL mechanism",
        "kafka.producer.\"ssl.ca.location\": cannot read",
        "kafka.producer.\"no.such.option\": librdkafka refuses it",
        "kafka.secret_files.\"ssl.key.password\": cannot read",
    ] {
        assert!(problems.contains(needle), "{needle} in\n{problems}");
    }
    assert!(!problems.contains("hunter2-secret"), "{problems}");
    assert_eq!(problems.lines().count(), 5, "{problems}");
}

#[test]
fn tls_and_sasl_failures_get_words_an_operator_acts_on() {
    let reason = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured (after 3ms in state SSL_HANDSHAKE)";
    assert_eq!(
        security_hint(reason),
        Some(
            "the broker's certificate is not signed by the CA in ssl.ca.location (or has expired, or is not issued for this host name)"
        )
    );
    assert!(!without_timing(reason).contains("after 3ms"));
    assert!(
        security_hint(
            "SASL authentication error: Authentication failed: Invalid username or password"
        )
        .unwrap()
        .contains("sasl.password")
    );
}

#[test]
fn guarantees_are_forced_on_the_producer() {
    let mut cfg = KafkaConfig::default();
    cfg.producer.insert("linger.ms".into(), "9".into());
    let cc = producer_config(&cfg).unwrap();
    assert_eq!(cc.get("enable.idempotence"), Some("true"));
    assert_eq!(cc.get("acks"), Some("all"));
    assert_eq!(cc.get("linger.ms"), Some("9"));
}
