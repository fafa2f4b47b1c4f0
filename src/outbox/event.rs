//! What applications write: [`NewEvent`], validated when built (written by
//! [`crate::enqueue`] / [`crate::enqueue_batch`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Header names outboxd sets on every record; applications cannot override them.
pub const RESERVED_HEADERS: &[&str] = &[
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "outbox_id",
    "created_at",
];

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// Why an event was refused before anything was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// `aggregate_type` is empty.
    #[error("aggregate type is empty")]
    EmptyAggregateType,
    /// `aggregate_id` is empty.
    #[error("aggregate id is empty")]
    EmptyAggregateId,
    /// `event_type` is empty.
    #[error("event type is empty")]
    EmptyEventType,
    /// The topic is one no sink accepts ([`NewEventBuilder::build`]), or one the sink
    /// named in [`NewEventBuilder::build_for`] refuses.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Neither a JSON nor a byte payload was given.
    #[error("no payload: call json(), json_value() or bytes()")]
    MissingPayload,
    /// The payload could not be serialized to JSON.
    #[error("payload is not serializable to JSON: {0}")]
    PayloadNotJson(String),
    /// Headers given as JSON were not an object.
    #[error("headers must be a JSON object of strings, found {0}")]
    HeadersNotAnObject(String),
    /// A header value was not a string.
    #[error("header {key:?} is not a string (found {found})")]
    HeaderNotString {
        /// The header name.
        key: String,
        /// The JSON kind found instead.
        found: String,
    },
    /// A header would override one outboxd sets itself.
    #[error("header {0:?} is reserved (outboxd or the sink sets it)")]
    ReservedHeader(String),
}

/// What is wrong with a topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The name is longer than 249 characters.
    #[error("longer than 249 characters ({0})")]
    TooLong(usize),
    /// `.` and `..` are not topic names.
    #[error("'.' and '..' are not allowed")]
    Dots,
    /// A character outside `[a-zA-Z0-9._-]`.
    #[error("character {0:?} is not allowed (only a-z A-Z 0-9 . _ -)")]
    BadChar(char),
}

/// Checks a topic name the way Kafka does: `[a-zA-Z0-9._-]`, at most 249 characters,
/// not `.` or `..`.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(topic.len()));
    }
    if topic == "." || topic == ".." {
        return Err(TopicError::Dots);
    }
    // The relay checks every row's topic: a table lookup per byte.
    static ALLOWED: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
            b += 1;
        }
        t
    };
    let allowed = |b: u8| ALLOWED[b as usize];
    if topic.bytes().all(allowed) {
        return Ok(());
    }
    let bad = topic
        .chars()
        .find(|c| !(c.is_ascii() && allowed(*c as u8)))
        .expect("a byte was refused");
    Err(TopicError::BadChar(bad))
}

/// The body of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// JSON text, stored in `payload jsonb`.
    Json(String),
    /// Raw bytes (Avro, Protobuf, …), stored in `payload_bytes bytea`.
    Bytes(Vec<u8>),
}

/// One event, validated: built with [`NewEvent::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    event_id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    topic: String,
    payload: Payload,
    headers: BTreeMap<String, String>,
}

impl NewEvent {
    /// Starts an event for one aggregate (`aggregate_id` is the ordering key and Kafka key).
    pub fn builder(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> NewEventBuilder {
        NewEventBuilder {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: String::new(),
            topic: String::new(),
            payload: None,
            headers: BTreeMap::new(),
            event_id: None,
            error: None,
        }
    }

    /// The event id, also sent as the `event_id` header.
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }
    /// The aggregate type.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// The aggregate id (ordering key, Kafka key).
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// The event type.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The destination topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
    /// The application's headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }
}

/// Builds a [`NewEvent`]; [`NewEventBuilder::build`] validates everything.
#[derive(Debug, Clone)]
pub struct NewEventBuilder {
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    topic: String,
    payload: Option<Payload>,
    headers: BTreeMap<String, String>,
    event_id: Option<Uuid>,
    error: Option<ValidationError>,
}

impl NewEventBuilder {
    /// The event type, e.g. `order.created`.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }

    /// The destination topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// A JSON payload from any `Serialize` value.
    pub fn json<T: Serialize + ?Sized>(mut self, payload: &T) -> Self {
        match serde_json::to_string(payload) {
            Ok(text) => self.payload = Some(Payload::Json(text)),
            Err(e) => self.fail(ValidationError::PayloadNotJson(e.to_string())),
        }
        self
    }

    /// A JSON payload from a `serde_json::Value`.
    pub fn json_value(mut self, payload: serde_json::Value) -> Self {
        self.payload = Some(Payload::Json(payload.to_string()));
        self
    }

    /// A binary payload (stored in `payload_bytes`).
    pub fn bytes(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = Some(Payload::Bytes(payload.into()));
        self
    }

    /// One header, sent as a Kafka header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Headers from a JSON object whose values must all be strings.
    pub fn headers_json(mut self, headers: &serde_json::Value) -> Self {
        match headers_from_json(headers) {
            Ok(map) => self.headers.extend(map),
            Err(e) => self.fail(e),
        }
        self
    }

    /// Uses this event id instead of a fresh random one (for idempotent writers).
    pub fn event_id(mut self, id: Uuid) -> Self {
        self.event_id = Some(id);
        self
    }

    fn fail(&mut self, e: ValidationError) {
        self.error.get_or_insert(e);
    }

    /// Validates and returns the event. The topic must be a name some sink accepts (any
    /// non-empty name: Redis takes any key); the relay checks it by its own sink's rules
    /// and dead-letters a row whose topic that sink refuses. Use
    /// [`NewEventBuilder::build_for`] to be told at once.
    pub fn build(self) -> Result<NewEvent, ValidationError> {
        self.build_checked(None)
    }

    /// As [`NewEventBuilder::build`], with the topic checked by the rules of the sink the
    /// relay publishes to: a Kafka topic name, a Redis stream key, a NATS subject.
    ///
    /// ```
    /// use outboxd::{NewEvent, SinkKind};
    /// let event = NewEvent::builder("user", "42")
    ///     .event_type("user.created")
    ///     .topic("user:events")
    ///     .json(&serde_json::json!({"id": 42}));
    /// assert!(event.clone().build_for(SinkKind::Redis).is_ok());
    /// assert!(event.build_for(SinkKind::Kafka).is_err());
    /// ```
    pub fn build_for(self, sink: SinkKind) -> Result<NewEvent, ValidationError> {
        self.build_checked(Some(sink))
    }

    fn build_checked(self, sink: Option<SinkKind>) -> Result<NewEvent, ValidationError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.aggregate_type.is_empty() {
            return Err(ValidationError::EmptyAggregateType);
        }
        if self.aggregate_id.is_empty() {
            return Err(ValidationError::EmptyAggregateId);
        }
        if self.event_type.is_empty() {
            return Err(ValidationError::EmptyEventType);
        }
        let checked = match sink {
            Some(kind) => kind.validate_destination(&self.topic),
            None if self.topic.is_empty() => Err("empty".into()),
            None => Ok(()),
        };
        checked.map_err(|reason| ValidationError::InvalidTopic {
            topic: self.topic.clone(),
            reason,
        })?;
        let reserved = |name: &str| match sink {
            Some(kind) => kind.reserves_header(name),
            None => RESERVED_HEADERS.contains(&name),
        };
        if let Some(key) = self.headers.keys().find(|k| reserved(k)) {
            return Err(ValidationError::ReservedHeader(key.clone()));
        }
        let payload = self.payload.ok_or(ValidationError::MissingPayload)?;
        Ok(NewEvent {
            event_id: self.event_id.unwrap_or_else(Uuid::new_v4),
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            topic: self.topic,
            payload,
            headers: self.headers,
        })
    }
}

/// Which sink a relay publishes to (`[sink] kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Kafka topics (the default).
    #[default]
    Kafka,
    /// Redis Streams: the topic is the stream key.
    Redis,
    /// NATS JetStream: the topic is the subject.
    Nats,
}

impl SinkKind {
    /// Every sink.
    pub const ALL: [SinkKind; 3] = [SinkKind::Kafka, SinkKind::Redis, SinkKind::Nats];

    /// The name used in configuration, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Kafka => "kafka",
            SinkKind::Redis => "redis",
            SinkKind::Nats => "nats",
        }
    }

    /// What a destination is called on this sink, for messages.
    pub fn destination_word(self) -> &'static str {
        match self {
            SinkKind::Kafka => "topic",
            SinkKind::Redis => "stream key",
            SinkKind::Nats => "subject",
        }
    }

    /// Whether a row's own header may not use this name on this sink: the built-ins
    /// ([`RESERVED_HEADERS`]) everywhere; on Redis also `payload` (the entry's payload
    /// field); on NATS also every `Nats-` name, compared case-insensitively, because
    /// JetStream reads them as instructions (`Nats-Msg-Id` would replace the event's
    /// de-duplication id, `Nats-Expected-*` and `Nats-Rollup` change what the stream does).
    pub fn reserves_header(self, name: &str) -> bool {
        RESERVED_HEADERS.contains(&name)
            || match self {
                SinkKind::Kafka => false,
                SinkKind::Redis => name == "payload",
                SinkKind::Nats => name
                    .get(..5)
                    .is_some_and(|p| p.eq_ignore_ascii_case("nats-")),
            }
    }

    /// Checks a destination name by this sink's rules: Kafka topic names, any non-empty
    /// Redis key, NATS subjects one can publish to (dot-separated non-empty tokens, no
    /// wildcards, no white space).
    pub fn validate_destination(self, name: &str) -> Result<(), String> {
        match self {
            SinkKind::Kafka => validate_topic(name).map_err(|e| e.to_string()),
            SinkKind::Redis => {
                if name.is_empty() {
                    Err("empty".into())
                } else {
                    Ok(())
                }
            }
            SinkKind::Nats => validate_subject(name),
        }
    }
}

impl std::fmt::Display for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A NATS subject a message can be published to.
pub fn validate_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{c:?} is not allowed in a NATS subject"));
    }
    for token in subject.split('.') {
        match token {
            "" => return Err("empty token (leading, trailing or double '.')".into()),
            "*" | ">" => {
                return Err(format!(
                    "wildcard token {token:?}: one cannot publish to a wildcard subject"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads a `headers` JSON value: an object whose values are all strings.
pub fn headers_from_json(
    value: &serde_json::Value,
) -> Result<BTreeMap<String, String>, ValidationError> {
    let serde_json::Value::Object(map) = value else {
        return Err(ValidationError::HeadersNotAnObject(json_kind(value).into()));
    };
    map.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(ValidationError::HeaderNotString {
                key: k.clone(),
                found: json_kind(other).into(),
            }),
        })
        .collect()
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> NewEventBuilder {
        NewEvent::builder("order", "o-1")
            .event_type("order.created")
            .topic("orders")
            .json(&json!({"total": 12}))
    }

    #[test]
    fn valid_event_builds_with_a_fresh_id() {
        let a = base().build().unwrap();
        let b = base().build().unwrap();
        assert_ne!(a.event_id(), b.event_id());
        assert_eq!(a.payload(), &Payload::Json(r#"{"total":12}"#.into()));
    }

    #[test]
    fn empty_fields_are_refused() {
        assert_eq!(
            NewEvent::builder("order", "")
                .event_type("x")
                .topic("t")
                .bytes(vec![1])
                .build(),
            Err(ValidationError::EmptyAggregateId)
        );
        assert_eq!(
            NewEvent::builder("", "1")
                .event_type("x")
                .topic("t")
                .bytes(vec![1])
                .build(),
            Err(ValidationError::EmptyAggregateType)
        );
        assert_eq!(
            base().event_type("").build(),
            Err(ValidationError::EmptyEventType)
        );
        assert_eq!(
            NewEvent::builder("order", "1")
                .event_type("x")
                .topic("t")
                .build(),
            Err(ValidationError::MissingPayload)
        );
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic("orders.v1_x-y").is_ok());
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic("."), Err(TopicError::Dots));
        assert_eq!(validate_topic(".."), Err(TopicError::Dots));
        assert_eq!(validate_topic("a b"), Err(TopicError::BadChar(' ')));
        assert_eq!(validate_topic("é"), Err(TopicError::BadChar('é')));
        assert!(validate_topic(&"a".repeat(249)).is_ok());
        assert_eq!(
            validate_topic(&"a".repeat(250)),
            Err(TopicError::TooLong(250))
        );
        assert_eq!(
            base().topic("bad/topic").build_for(SinkKind::Kafka),
            Err(ValidationError::InvalidTopic {
                topic: "bad/topic".into(),
                reason: "character '/' is not allowed (only a-z A-Z 0-9 . _ -)".into(),
            })
        );
        // Any sink's name passes `build`; only an empty one is nobody's.
        assert!(base().topic("user:events").build().is_ok());
        assert!(
            base()
                .topic("user:events")
                .build_for(SinkKind::Nats)
                .is_ok()
        );
        assert!(base().topic("a b").build_for(SinkKind::Nats).is_err());
        assert!(base().topic("").build().is_err());
    }

    #[test]
    fn headers_must_be_a_string_map_without_reserved_names() {
        let ok = base()
            .headers_json(&json!({"traceparent": "00-1"}))
            .build()
            .unwrap();
        assert_eq!(ok.headers()["traceparent"], "00-1");
        assert_eq!(
            base().headers_json(&json!({"n": 1})).build(),
            Err(ValidationError::HeaderNotString {
                key: "n".into(),
                found: "a number".into()
            })
        );
        assert_eq!(
            base().headers_json(&json!(["a"])).build(),
            Err(ValidationError::HeadersNotAnObject("an array".into()))
        );
        assert_eq!(
            base().header("event_id", "x").build(),
            Err(ValidationError::ReservedHeader("event_id".into()))
        );
    }

    #[test]
    fn each_sink_refuses_the_header_names_it_reserves() {
        for name in [
            "Nats-Msg-Id",
            "nats-msg-id",
            "NATS-Expected-Stream",
            "Nats-Rollup",
            "Nats-TTL",
        ] {
            assert_eq!(
                base().header(name, "x").build_for(SinkKind::Nats),
                Err(ValidationError::ReservedHeader(name.into())),
                "{name}"
            );
            // Only NATS reads them.
            assert!(base().header(name, "x").build_for(SinkKind::Kafka).is_ok());
            assert!(base().header(name, "x").build_for(SinkKind::Redis).is_ok());
        }
        assert!(
            base()
                .header("natsy", "x")
                .build_for(SinkKind::Nats)
                .is_ok()
        );
        assert_eq!(
            base().header("payload", "x").build_for(SinkKind::Redis),
            Err(ValidationError::ReservedHeader("payload".into()))
        );
        for kind in SinkKind::ALL {
            assert!(kind.reserves_header("outbox_id"), "{kind}");
            assert!(!kind.reserves_header("traceparent"), "{kind}");
        }
    }

    #[test]
    fn unserializable_payload_is_refused() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1); // non-string map keys cannot be JSON
        assert!(matches!(
            base().json(&bad).build(),
            Err(ValidationError::PayloadNotJson(_))
        ));
    }
}
