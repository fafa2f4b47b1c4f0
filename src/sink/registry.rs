//! The registry: the sinks this build has, and what the relay asks of the configured one
//! — build it, check its configuration section, say where it is. Adding a sink is a folder
//! under `sink/` with its configuration section, one entry in [`SINKS`] and a Cargo
//! feature.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::Config;
use crate::health::Health;
use crate::outbox::SinkKind;
use crate::sink::api::{Sink, SinkSpec};

/// Builds a sink from the configuration: [`create`], or an embedder's own (the pipeline's
/// tests use an in-memory sink). Called again when a sink's client must be replaced.
pub type SinkFactory = Arc<
    dyn Fn(&Config, Arc<Health>) -> BoxFuture<'static, anyhow::Result<Arc<dyn Sink>>> + Send + Sync,
>;

/// The configured sink, as a [`SinkFactory`].
pub fn configured() -> SinkFactory {
    Arc::new(|config: &Config, health: Arc<Health>| {
        let config = config.clone();
        Box::pin(async move { create(&config, health).await })
    })
}

/// The sinks this build has, one line each (a sink's folder defines its `SPEC`).
pub const SINKS: &[SinkSpec] = &[
    #[cfg(feature = "kafka")]
    crate::sink::kafka::SPEC,
    #[cfg(feature = "redis")]
    crate::sink::redis::SPEC,
    #[cfg(feature = "nats")]
    crate::sink::nats::SPEC,
];

/// The configured sink's entry, or why this build cannot use it.
fn spec(kind: SinkKind) -> Result<&'static SinkSpec, String> {
    SINKS
        .iter()
        .find(|s| s.kind == kind)
        .ok_or_else(|| not_built(kind))
}

/// Builds the configured sink. Connections are made in the background: a broker that is
/// down only delays publishing (rows stay pending); a configuration it cannot use at all
/// (an unreadable certificate, a bad URL) is an error here.
pub async fn create(config: &Config, health: Arc<Health>) -> anyhow::Result<Arc<dyn Sink>> {
    let spec = spec(config.sink.kind).map_err(anyhow::Error::msg)?;
    (spec.create)(config, health).await
}

/// Problems with the chosen sink's section of the configuration, each naming its key.
pub fn check_config(config: &Config) -> Vec<String> {
    match spec(config.sink.kind) {
        Ok(spec) => (spec.check)(config),
        Err(why) => vec![why],
    }
}

/// Where the configured sink is, for logs and `status`: Kafka's bootstrap brokers, or the
/// Redis / NATS URL without its password.
pub fn location(config: &Config) -> String {
    match spec(config.sink.kind) {
        Ok(spec) => (spec.location)(config),
        Err(_) => format!("{} (not built in)", config.sink.kind),
    }
}

/// The sinks this build of outboxd has (Cargo features `kafka`, `redis`, `nats`).
pub fn built_in() -> Vec<SinkKind> {
    SINKS.iter().map(|s| s.kind).collect()
}

/// The message for a sink this build does not have.
fn not_built(kind: SinkKind) -> String {
    let have: Vec<&str> = built_in().iter().map(|k| k.name()).collect();
    format!(
        "sink.kind: this outboxd was built without the \"{0}\" sink (Cargo feature `{0}`); \
         it has: {1}",
        kind.name(),
        if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        }
    )
}
