//! What applications write: [`NewEvent`], validated when built, and [`enqueue`] /
//! [`enqueue_batch`] on the caller's own transaction or connection.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgExecutor;
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
    /// The topic is one Kafka would refuse.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// What is wrong with it.
        reason: TopicError,
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
    #[error("header {0:?} is reserved by outboxd")]
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

    /// Validates and returns the event.
    pub fn build(self) -> Result<NewEvent, ValidationError> {
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
        validate_topic(&self.topic).map_err(|reason| ValidationError::InvalidTopic {
            topic: self.topic.clone(),
            reason,
        })?;
        if let Some(key) = self
            .headers
            .keys()
            .find(|k| RESERVED_HEADERS.contains(&k.as_str()))
        {
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

/// Writes one event on the caller's transaction or connection; returns its event id.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE orders SET state = 'paid' WHERE id = 42").execute(&mut *tx).await?;
/// let event = outboxd::NewEvent::builder("order", "42")
///     .event_type("order.paid")
///     .topic("orders")
///     .json(&serde_json::json!({"total": 12}))
///     .build()?;
/// outboxd::enqueue(&mut *tx, &event).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn enqueue<'e, E: PgExecutor<'e>>(
    executor: E,
    event: &NewEvent,
) -> Result<Uuid, sqlx::Error> {
    let ids = enqueue_batch(executor, std::slice::from_ref(event)).await?;
    Ok(ids[0])
}

/// Writes many events in one statement (`INSERT … SELECT FROM UNNEST`), in slice order:
/// ids ascend with the slice, so an aggregate's events keep their order. Returns the event
/// ids in the same order.
pub async fn enqueue_batch<'e, E: PgExecutor<'e>>(
    executor: E,
    events: &[NewEvent],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let n = events.len();
    let mut event_ids = Vec::with_capacity(n);
    let mut aggregate_types = Vec::with_capacity(n);
    let mut aggregate_ids = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut topics = Vec::with_capacity(n);
    let mut payloads: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut payload_bytes: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    for e in events {
        event_ids.push(e.event_id);
        aggregate_types.push(e.aggregate_type.as_str());
        aggregate_ids.push(e.aggregate_id.as_str());
        event_types.push(e.event_type.as_str());
        topics.push(e.topic.as_str());
        match &e.payload {
            Payload::Json(text) => {
                payloads.push(Some(text));
                payload_bytes.push(None);
            }
            Payload::Bytes(bytes) => {
                payloads.push(None);
                payload_bytes.push(Some(bytes));
            }
        }
        headers.push(serde_json::to_string(&e.headers).expect("string map serializes"));
    }
    sqlx::query(
        "INSERT INTO outbox \
             (event_id, aggregate_type, aggregate_id, event_type, topic, payload, payload_bytes, headers) \
         SELECT e, at, ai, et, t, p::jsonb, pb, h::jsonb \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::bytea[], $8::text[]) AS u(e, at, ai, et, t, p, pb, h)",
    )
    .bind(&event_ids)
    .bind(&aggregate_types)
    .bind(&aggregate_ids)
    .bind(&event_types)
    .bind(&topics)
    .bind(&payloads)
    .bind(&payload_bytes)
    .bind(&headers)
    .execute(executor)
    .await?;
    Ok(event_ids)
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
        assert!(matches!(
            base().topic("bad/topic").build(),
            Err(ValidationError::InvalidTopic {
                reason: TopicError::BadChar('/'),
                ..
            })
        ));
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
    fn unserializable_payload_is_refused() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1); // non-string map keys cannot be JSON
        assert!(matches!(
            base().json(&bad).build(),
            Err(ValidationError::PayloadNotJson(_))
        ));
    }
}
