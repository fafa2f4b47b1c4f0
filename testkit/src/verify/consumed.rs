//! An event as read back from a broker.

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (UTF-8).
    pub key: String,
    /// Value.
    pub value: Vec<u8>,
    /// Headers in record order.
    pub headers: Vec<(String, String)>,
}
