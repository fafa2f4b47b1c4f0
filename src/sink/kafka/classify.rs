//! The one place where Kafka's publish failures are classified, and the words an
//! operator acts on for TLS and SASL failures.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::sink::api::{FailureKind, PublishFailure};

/// librdkafka ends connection errors with how long the attempt took; without it the same
/// problem reads the same on every attempt (logged once).
pub(super) fn without_timing(reason: &str) -> &str {
    reason.rfind(" (after ").map_or(reason, |i| &reason[..i])
}

/// What an operator should do about a TLS or SASL failure, in words.
pub fn security_hint(reason: &str) -> Option<&'static str> {
    const HINTS: &[(&str, &str)] = &[
        (
            "certificate verify failed",
            "the broker's certificate is not signed by the CA in ssl.ca.location (or has expired, or is not issued for this host name)",
        ),
        (
            "broker certificate could not be verified",
            "the broker's certificate is not signed by the CA in ssl.ca.location",
        ),
        (
            "certificate required",
            "the broker wants a client certificate: set ssl.certificate.location and ssl.key.location",
        ),
        (
            "client SSL authentication might be required",
            "the broker wants a client certificate: set ssl.certificate.location and ssl.key.location",
        ),
        (
            "wrong version number",
            "the broker does not speak TLS on this port: check security.protocol and kafka.brokers",
        ),
        (
            "Authentication failed",
            "the broker refused the SASL credentials: check sasl.username and sasl.password",
        ),
        (
            "Unsupported SASL mechanism",
            "the broker does not offer this sasl.mechanism",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| reason.contains(needle))
        .map(|(_, hint)| *hint)
}

/// Classifies a Kafka error, once, for the whole relay.
pub fn classify(error: &KafkaError) -> PublishFailure {
    use RDKafkaErrorCode as C;
    let message = error.to_string();
    let code = error.rdkafka_error_code();
    let (kind, class) = match code {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            (FailureKind::Permanent, "record_too_large")
        }
        Some(C::InvalidTopic) => (FailureKind::Permanent, "invalid_topic"),
        // The destination cannot take anything until an operator acts (creates the topic,
        // grants the ACL): held, as on every sink (`sink.missing_destination`).
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            (FailureKind::Destination, "unknown_topic")
        }
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed,
        ) => (FailureKind::Destination, "not_authorized"),
        Some(
            C::InvalidMessage
            | C::BadMessage
            | C::InvalidRecord
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation
            | C::InvalidTimestamp,
        ) => (FailureKind::Permanent, "invalid_record"),
        Some(C::Fatal | C::GaplessGuarantee | C::InvalidProducerEpoch) => {
            (FailureKind::Fatal, "producer_fatal")
        }
        Some(C::QueueFull) => (FailureKind::Transient, "queue_full"),
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue) => {
            (FailureKind::Transient, "timeout")
        }
        Some(
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::Resolve,
        ) => (FailureKind::Transient, "broker_unavailable"),
        _ => (FailureKind::Transient, "transient"),
    };
    PublishFailure {
        kind,
        class,
        message,
    }
}
