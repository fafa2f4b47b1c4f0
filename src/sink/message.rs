//! The message most sinks build from a row: the payload and named string fields (the
//! built-in headers, then the row's own), shared by every sink so that each carries the
//! same fields and refuses the same headers.

use std::borrow::Cow;

use crate::outbox::SinkKind;
use crate::sink::api::PublishFailure;
use crate::store::OutboxRow;

/// A row as most sinks carry it: the payload, and named string fields — the built-ins
/// first, then the row's own headers (a row's header with a built-in's name is dropped).
#[derive(Debug)]
pub struct Message<'a> {
    /// Destination: topic, stream key or subject.
    pub topic: &'a str,
    /// JSON text or raw bytes.
    pub payload: &'a [u8],
    /// Built-ins, then the row's headers.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Message<'a> {
    /// The message for `kind` of a row, or why the row cannot be one (`malformed_row`,
    /// `reserved_header`).
    pub fn from_row(row: &'a OutboxRow, kind: SinkKind) -> Result<Message<'a>, PublishFailure> {
        let payload: &[u8] = match (&row.payload, &row.payload_bytes) {
            (Some(text), None) => text,
            (None, Some(bytes)) => bytes,
            _ => {
                return Err(PublishFailure::malformed(
                    "row must have exactly one of payload and payload_bytes",
                ));
            }
        };
        let mut headers = builtin_headers(row);
        if let Some(user) = user_headers(row, kind)? {
            headers.extend(
                user.into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v))),
            );
        }
        Ok(Message {
            topic: &row.topic,
            payload,
            headers,
        })
    }

    /// The dead-letter copy of a row: its message (or, for a row that cannot be one, its
    /// payload and ids) sent to `topic`, with where it was going and why it was not.
    pub fn dead_letter(
        row: &'a OutboxRow,
        kind: SinkKind,
        topic: &'a str,
        class: &'a str,
        reason: &'a str,
    ) -> Message<'a> {
        let mut message = Message::from_row(row, kind).unwrap_or_else(|_| Message {
            topic,
            payload: row
                .payload
                .as_deref()
                .or(row.payload_bytes.as_deref())
                .unwrap_or_default(),
            headers: builtin_headers(row),
        });
        message.topic = topic;
        message.headers.extend([
            ("original_topic".into(), Cow::Borrowed(row.topic.as_str())),
            ("dead_letter_class".into(), Cow::Borrowed(class)),
            ("dead_letter_reason".into(), Cow::Borrowed(reason)),
        ]);
        message
    }
}

/// A row's own headers (`None` when it has none), or why they cannot be sent: not a JSON
/// object of strings (`malformed_row`), or a name the sink reserves (`reserved_header`,
/// never silently dropped: a header the application meant for the broker would otherwise
/// change what the broker does, or vanish).
pub fn user_headers(
    row: &OutboxRow,
    kind: SinkKind,
) -> Result<Option<std::collections::BTreeMap<String, String>>, PublishFailure> {
    if row.headers.is_empty() || row.headers == "{}" {
        return Ok(None);
    }
    let parsed: serde_json::Value = serde_json::from_str(&row.headers)
        .map_err(|e| PublishFailure::malformed(format!("headers are not JSON: {e}")))?;
    let user = crate::outbox::headers_from_json(&parsed)
        .map_err(|e| PublishFailure::malformed(format!("headers: {e}")))?;
    if let Some(name) = user.keys().find(|k| kind.reserves_header(k)) {
        return Err(PublishFailure::reserved_header(kind, name));
    }
    Ok(Some(user))
}

/// `event_id`, `event_type`, `aggregate_type`, `aggregate_id`, `outbox_id`, `created_at`.
fn builtin_headers(row: &OutboxRow) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    vec![
        (
            "event_id".into(),
            row.event_id.hyphenated().to_string().into(),
        ),
        ("event_type".into(), row.event_type.as_str().into()),
        ("aggregate_type".into(), row.aggregate_type.as_str().into()),
        ("aggregate_id".into(), row.aggregate_id.as_str().into()),
        ("outbox_id".into(), row.id.to_string().into()),
        (
            "created_at".into(),
            row.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        ),
    ]
}
