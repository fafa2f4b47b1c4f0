//! A row as a Kafka record (design.md §4): key, value, and the headers — built-ins first,
//! then the row's own.

use std::sync::Arc;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use crate::outbox::SinkKind;
use crate::outbox::validate_topic;
use crate::sink::api::PublishFailure;
use crate::sink::message::Message;
use crate::store::OutboxRow;

/// Receives the outcome of records it sent, by index.
pub trait DeliveryTarget: Send + Sync {
    /// Record `index` was acknowledged (`Ok`) or failed for good (`Err`).
    fn delivered(&self, index: usize, result: Result<(), KafkaError>);
}

/// What rides with each record through librdkafka and comes back with its delivery report.
pub struct DeliveryToken {
    /// Who wants to know.
    pub target: Arc<dyn DeliveryTarget>,
    /// Which of its records this is.
    pub index: usize,
}

/// A row turned into a Kafka record (design.md §4): borrowed key and value, headers
/// already handed to librdkafka.
pub struct Record<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// `aggregate_id`.
    pub key: &'a [u8],
    /// JSON text or raw bytes.
    pub value: &'a [u8],
    /// Built-in headers first, then the row's own.
    pub headers: OwnedHeaders,
}

impl<'a> Record<'a> {
    /// Adds a header after the others.
    /// The shared [`Message`] as a Kafka record keyed by `key` — for the dead-letter copy,
    /// which carries the same fields on every sink. (The hot path, [`build_record`],
    /// writes the same headers straight into librdkafka's list instead.)
    pub fn from_message(message: &Message<'a>, key: &'a [u8]) -> Record<'a> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (k, v) in &message.headers {
            headers = headers.insert(Header {
                key: k.as_ref(),
                value: Some(v.as_bytes()),
            });
        }
        Record {
            topic: message.topic,
            key,
            value: message.payload,
            headers,
        }
    }

    /// The record with one more header.
    pub fn with_header(mut self, key: &str, value: &str) -> Self {
        self.headers = self.headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
        self
    }

    /// The record as librdkafka takes it, with the token its delivery report brings back.
    pub fn into_base_record(
        self,
        token: Box<DeliveryToken>,
    ) -> BaseRecord<'a, [u8], [u8], Box<DeliveryToken>> {
        BaseRecord::with_opaque_to(self.topic, token)
            .key(self.key)
            .payload(self.value)
            .headers(self.headers)
    }

    /// The headers as (name, value) pairs, in order.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        use rdkafka::message::Headers;
        self.headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("key", &String::from_utf8_lossy(self.key))
            .field("value_len", &self.value.len())
            .field("headers", &self.header_pairs())
            .finish()
    }
}

/// `created_at` as RFC 3339 with microseconds in UTC, written into `buf` (no allocation).
pub(super) fn rfc3339_micros<'b>(
    t: &chrono::DateTime<chrono::Utc>,
    buf: &'b mut [u8; 27],
) -> &'b str {
    use chrono::{Datelike, Timelike};
    // The naive UTC value once: each getter on `DateTime<Utc>` would apply the (zero)
    // offset again, seven times per record.
    let t = t.naive_utc();
    fn put(buf: &mut [u8], mut v: u32, width: usize) {
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let year = t.year().clamp(0, 9999) as u32;
    put(&mut buf[0..4], year, 4);
    buf[4] = b'-';
    put(&mut buf[5..7], t.month(), 2);
    buf[7] = b'-';
    put(&mut buf[8..10], t.day(), 2);
    buf[10] = b'T';
    put(&mut buf[11..13], t.hour(), 2);
    buf[13] = b':';
    put(&mut buf[14..16], t.minute(), 2);
    buf[16] = b':';
    put(&mut buf[17..19], t.second(), 2);
    buf[19] = b'.';
    put(&mut buf[20..26], t.nanosecond().min(999_999_999) / 1_000, 6);
    buf[26] = b'Z';
    std::str::from_utf8(buf).expect("ASCII")
}

/// Builds the record for a row, or says why the row cannot be published (a permanent,
/// `malformed_row` or `invalid_topic` failure). Built-in headers are written straight into
/// librdkafka's header list, without intermediate strings.
pub fn build_record(row: &OutboxRow) -> Result<Record<'_>, PublishFailure> {
    build_record_with(row, false)
}

/// [`build_record`], skipping the topic-name check when the caller already made it for
/// this topic (`topic_checked`).
pub fn build_record_with(
    row: &OutboxRow,
    topic_checked: bool,
) -> Result<Record<'_>, PublishFailure> {
    if !topic_checked && let Err(why) = validate_topic(&row.topic) {
        return Err(PublishFailure::invalid_destination(
            SinkKind::Kafka,
            &row.topic,
            &why.to_string(),
        ));
    }
    let value: &[u8] = match (&row.payload, &row.payload_bytes) {
        (Some(text), None) => text,
        (None, Some(bytes)) => bytes,
        _ => {
            return Err(PublishFailure::malformed(
                "row must have exactly one of payload and payload_bytes",
            ));
        }
    };
    let user = crate::sink::message::user_headers(row, SinkKind::Kafka)?;
    let mut id_buf = uuid::Uuid::encode_buffer();
    let event_id = row.event_id.hyphenated().encode_lower(&mut id_buf);
    let mut outbox_id = itoa::Buffer::new();
    let mut ts_buf = [0u8; 27];
    let created_at = rfc3339_micros(&row.created_at, &mut ts_buf);
    let builtins: [(&str, &str); 6] = [
        ("event_id", event_id),
        ("event_type", &row.event_type),
        ("aggregate_type", &row.aggregate_type),
        ("aggregate_id", &row.aggregate_id),
        ("outbox_id", outbox_id.format(row.id)),
        ("created_at", created_at),
    ];
    let extra = user.as_ref().map_or(0, |u| u.len());
    let mut headers = OwnedHeaders::new_with_capacity(builtins.len() + extra);
    for (key, v) in builtins {
        headers = headers.insert(Header {
            key,
            value: Some(v.as_bytes()),
        });
    }
    // A row's own header never has a built-in's name (refused by `user_headers`).
    for (key, v) in user.iter().flatten() {
        headers = headers.insert(Header {
            key,
            value: Some(v.as_bytes()),
        });
    }
    Ok(Record {
        topic: &row.topic,
        key: row.aggregate_id.as_bytes(),
        value,
        headers,
    })
}
