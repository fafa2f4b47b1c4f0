//! Loading a configuration: the file and the `OUTBOXD__…` environment laid over the
//! defaults key by key, so that one run reports every unknown key, every value of the
//! wrong type and every value out of range, each naming the key and where it came from;
//! then every check, the chosen sink's section included ([`crate::sink::registry`]).

use std::net::SocketAddr;

use figment::Provider;
use figment::providers::{Format, Toml};
use serde_json::{Map, Value};

use super::database::{check_database_tls, check_database_url};
use super::{Config, ConfigErrors, ConfigSource, ENV_PREFIX};

/// Maps whose keys are the user's own (not checked against a list of known keys).
const FREE_MAPS: &[&str] = &["kafka.producer", "kafka.secret_files", "rate_limit.topics"];

impl Config {
    /// Loads the file (if any) and the `OUTBOXD__…` environment, and checks everything.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_from(source, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        source: &ConfigSource,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut layers: Vec<(String, Value)> = Vec::new();

        if let Some(path) = &source.path {
            if path.exists() {
                match provider_value(Toml::file_exact(path)) {
                    Ok(v) => layers.push((format!("in {}", path.display()), v)),
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                }
            } else if source.required {
                errors.push(format!("config file {} does not exist", path.display()));
            }
        }

        // Each variable on its own, so that problems name the variable. Values are typed
        // the way figment's `Env` provider types them ("8" is a number, "true" a boolean).
        for (name, raw) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                layers.push((
                    format!("from environment variable {name}"),
                    env_value(rest, raw),
                ));
            }
        }

        let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
        let mut merged = defaults.clone();
        for (origin, layer) in &layers {
            overlay(&defaults, &mut merged, layer, "", origin, &mut errors);
        }

        let config: Config = match serde_json::from_value(merged) {
            Ok(c) => c,
            Err(e) => {
                // Every leaf was checked on its own; this only happens for combinations.
                errors.push(format!("configuration: {e}"));
                return Err(ConfigErrors(errors));
            }
        };
        errors.extend(config.validate());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Range and format checks that types alone do not express; every problem is returned.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        let mut range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                e.push(format!("{key}: {value} is out of range ({min}..={max})"));
            }
        };
        range(
            "database.max_connections",
            self.database.max_connections.into(),
            4,
            1_000,
        );
        range(
            "database.connect_timeout_ms",
            self.database.connect_timeout_ms,
            1,
            600_000,
        );
        range("relay.partitions", self.relay.partitions.into(), 1, 1_024);
        range(
            "metrics.topic_labels",
            self.metrics.topic_labels.into(),
            0,
            10_000,
        );
        range(
            "relay.max_in_flight",
            self.relay.max_in_flight.into(),
            1,
            10_000_000,
        );
        range(
            "relay.max_rows_per_aggregate",
            self.relay.max_rows_per_aggregate.into(),
            1,
            10_000_000,
        );
        range(
            "relay.lease_ttl_ms",
            self.relay.lease_ttl_ms,
            500,
            3_600_000,
        );
        range(
            "relay.shutdown_timeout_ms",
            self.relay.shutdown_timeout_ms,
            0,
            3_600_000,
        );
        range(
            "relay.worker_threads",
            self.relay.worker_threads.into(),
            1,
            256,
        );
        range(
            "poller.batch_size",
            self.poller.batch_size.into(),
            1,
            100_000,
        );
        range("poller.interval_ms", self.poller.interval_ms, 1, 3_600_000);
        range("poller.watch_ms", self.poller.watch_ms, 1, 60_000);
        range(
            "poller.gap_grace_ms",
            self.poller.gap_grace_ms,
            10,
            3_600_000,
        );
        range(
            "poller.rescan_interval_ms",
            self.poller.rescan_interval_ms,
            100,
            86_400_000,
        );
        range("poller.coalesce_ms", self.poller.coalesce_ms, 0, 1_000);
        range("poller.gather_ms", self.poller.gather_ms, 0, 1_000);
        range(
            "poller.gather_full_rate",
            u64::from(self.poller.gather_full_rate),
            1,
            10_000_000,
        );
        range(
            "retry.initial_backoff_ms",
            self.retry.initial_backoff_ms,
            1,
            3_600_000,
        );
        range(
            "retry.max_backoff_ms",
            self.retry.max_backoff_ms,
            1,
            86_400_000,
        );
        range(
            "retry.max_attempts",
            self.retry.max_attempts.into(),
            1,
            1_000,
        );
        range(
            "cleanup.interval_secs",
            self.cleanup.interval_secs,
            1,
            86_400,
        );
        range(
            "cleanup.batch_size",
            self.cleanup.batch_size.into(),
            1,
            1_000_000,
        );
        range(
            "supervisor.max_restarts",
            self.supervisor.max_restarts.into(),
            0,
            1_000,
        );
        range(
            "supervisor.restart_window_secs",
            self.supervisor.restart_window_secs,
            1,
            86_400,
        );
        range(
            "supervisor.initial_backoff_ms",
            self.supervisor.initial_backoff_ms,
            1,
            600_000,
        );
        range(
            "supervisor.max_backoff_ms",
            self.supervisor.max_backoff_ms,
            1,
            3_600_000,
        );
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            e.push(format!(
                "retry.max_backoff_ms: {} is below retry.initial_backoff_ms ({})",
                self.retry.max_backoff_ms, self.retry.initial_backoff_ms
            ));
        }
        if self.relay.max_in_flight >= 1
            && self.relay.max_rows_per_aggregate > self.relay.max_in_flight
        {
            e.push(format!(
                "relay.max_rows_per_aggregate: {} is above relay.max_in_flight ({})",
                self.relay.max_rows_per_aggregate, self.relay.max_in_flight
            ));
        }
        if self.supervisor.max_backoff_ms < self.supervisor.initial_backoff_ms {
            e.push(format!(
                "supervisor.max_backoff_ms: {} is below supervisor.initial_backoff_ms ({})",
                self.supervisor.max_backoff_ms, self.supervisor.initial_backoff_ms
            ));
        }
        if let Err(why) = check_database_url(&self.database.url) {
            e.push(format!("database.url: {why}"));
        }
        e.extend(check_database_tls(&self.database));
        e.extend(crate::sink::registry::check_config(self));
        let kind = self.sink.kind;
        if !self.dead_letter.topic.is_empty()
            && let Err(why) = kind.validate_destination(&self.dead_letter.topic)
        {
            e.push(format!(
                "dead_letter.topic: {:?} is not a {kind} {}: {why}",
                self.dead_letter.topic,
                kind.destination_word()
            ));
        }
        for (topic, limit) in &self.rate_limit.topics {
            if let Err(why) = kind.validate_destination(topic) {
                e.push(format!("rate_limit.topics.\"{topic}\": {why}"));
            }
            if *limit == 0 {
                e.push(format!(
                    "rate_limit.topics.\"{topic}\": 0 is not a limit (remove the key for none)"
                ));
            }
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            e.push(format!(
                "metrics.listen: {:?} is not an address like 127.0.0.1:9464",
                self.metrics.listen
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            e.push(format!(
                "log.level: {:?} is not a filter: {err}",
                self.log.level
            ));
        }
        e
    }
}

/// Reads one figment provider into a JSON tree.
fn provider_value(provider: impl Provider) -> Result<Value, String> {
    let data = provider.data().map_err(|e| e.to_string())?;
    let dict = data.into_values().next().unwrap_or_default();
    serde_json::to_value(dict).map_err(|e| e.to_string())
}

/// One environment variable (`SECTION__KEY` after the prefix) as a JSON tree, with the
/// value typed the way figment's `Env` provider types it.
fn env_value(rest: &str, raw: &str) -> Value {
    let leaf = match raw.trim().parse::<figment::value::Value>() {
        Ok(v) => serde_json::to_value(v).unwrap_or_else(|_| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    };
    rest.split("__")
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .fold(leaf, |acc, part| {
            let mut m = Map::new();
            m.insert(part.to_ascii_lowercase(), acc);
            Value::Object(m)
        })
}

/// Lays `layer` over `merged`, checking each key against `defaults` on its own.
fn overlay(
    defaults: &Value,
    merged: &mut Value,
    layer: &Value,
    prefix: &str,
    origin: &str,
    errors: &mut Vec<String>,
) {
    let Value::Object(entries) = layer else {
        return;
    };
    for (key, value) in entries {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let free = FREE_MAPS.contains(&prefix);
        let Some(default_child) =
            pointer(defaults, &path).or(if free { Some(&Value::Null) } else { None })
        else {
            let hint = suggestion(defaults, prefix, key)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            errors.push(format!("{path}: unknown key ({origin}){hint}"));
            continue;
        };
        let is_table = default_child.is_object();
        if is_table && !FREE_MAPS.contains(&path.as_str()) {
            if value.is_object() {
                overlay(defaults, merged, value, &path, origin, errors);
            } else {
                errors.push(format!(
                    "{path}: expected a table [{path}], found {} ({origin})",
                    describe(value)
                ));
            }
            continue;
        }
        if is_table {
            // A free map: every entry is a leaf of the map's value type.
            if let Value::Object(_) = value {
                overlay(defaults, merged, value, &path, origin, errors);
            } else {
                errors.push(format!(
                    "{path}: expected a table, found {} ({origin})",
                    describe(value)
                ));
            }
            continue;
        }
        match accept_leaf(merged, &path, value) {
            Ok(()) => {}
            Err(why) => errors.push(format!("{path}: {why} ({origin})")),
        }
    }
}

/// Sets one leaf if the whole configuration still deserializes with it (trying the usual
/// coercions of environment strings), and otherwise says why not.
fn accept_leaf(merged: &mut Value, path: &str, value: &Value) -> Result<(), String> {
    let mut first_err = None;
    for candidate in coercions(value) {
        let mut trial = merged.clone();
        set_pointer(&mut trial, path, candidate.clone());
        match serde_json::from_value::<Config>(trial) {
            Ok(_) => {
                set_pointer(merged, path, candidate);
                return Ok(());
            }
            Err(e) => {
                first_err.get_or_insert_with(|| clean_serde_error(&e.to_string(), value));
            }
        }
    }
    Err(first_err.unwrap_or_else(|| "invalid value".into()))
}

fn coercions(value: &Value) -> Vec<Value> {
    let mut out = vec![value.clone()];
    match value {
        Value::Number(n) => out.push(Value::String(n.to_string())),
        Value::Bool(b) => out.push(Value::String(b.to_string())),
        Value::String(s) => {
            if let Ok(n) = s.trim().parse::<u64>() {
                out.push(Value::from(n));
            }
            if let Ok(b) = s.trim().parse::<bool>() {
                out.push(Value::Bool(b));
            }
        }
        _ => {}
    }
    out
}

fn clean_serde_error(msg: &str, value: &Value) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    format!("{msg}, found {}", describe(value))
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Number(n) => format!("number {n}"),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "a table".into(),
        Value::Null => "nothing".into(),
    }
}

fn pointer<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, part| v.as_object()?.get(part))
}

fn set_pointer(value: &mut Value, path: &str, leaf: Value) {
    let mut parts: Vec<&str> = Vec::new();
    // Free-map keys may contain dots ("linger.ms"): split only the known prefix.
    let mut rest = path;
    for free in FREE_MAPS {
        if let Some(key) = path.strip_prefix(&format!("{free}.")) {
            parts.extend(free.split('.'));
            parts.push(key);
            rest = "";
            break;
        }
    }
    if !rest.is_empty() {
        parts.extend(rest.split('.'));
    }
    let mut cur = value;
    for part in &parts[..parts.len() - 1] {
        cur = cur
            .as_object_mut()
            .expect("parent is a table")
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    cur.as_object_mut()
        .expect("parent is a table")
        .insert(parts[parts.len() - 1].to_string(), leaf);
}

fn suggestion(defaults: &Value, prefix: &str, key: &str) -> Option<String> {
    let siblings = if prefix.is_empty() {
        defaults.as_object()?
    } else {
        pointer(defaults, prefix)?.as_object()?
    };
    siblings
        .keys()
        .map(|k| (strsim::levenshtein(k, key), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| {
            if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            }
        })
}

// The defaults publish to Kafka: a build without it refuses them (sink::tests).
#[cfg(all(test, feature = "kafka"))]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_CONFIG_PATH, OnPublish};
    use std::io::Write;
    use std::path::{Path, PathBuf};

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(
            &ConfigSource {
                path: Some(file.path().to_path_buf()),
                required: true,
            },
            &env,
        )
    }

    #[test]
    fn debug_of_a_configuration_shows_no_secret() {
        let mut c = Config::default();
        c.database.url = "postgres://u:dbpw1@h/d?password=dbpw2".into();
        c.kafka
            .producer
            .insert("sasl.password".into(), "kafkapw".into());
        c.kafka.producer.insert("linger.ms".into(), "5".into());
        c.redis.url = "rediss://relay:redispw@h:6380".into();
        c.nats.url = "nats://natstoken@h:4222,nats://u:natspw@h2:4222".into();
        let shown = format!("{c:?}");
        for secret in [
            "dbpw1",
            "dbpw2",
            "kafkapw",
            "redispw",
            "natstoken",
            "natspw",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("linger.ms"), "{shown}");
        assert!(shown.contains("postgres://u:***@h/d"), "{shown}");
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(load("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn shipped_config_file_is_valid_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let config = Config::load_from(
            &ConfigSource {
                path: Some(path),
                required: true,
            },
            &[],
        )
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load(
            "[relay]\npartitions = 4\n[kafka]\nbrokers = \"a:1\"\n",
            &[
                ("OUTBOXD__RELAY__PARTITIONS", "16"),
                ("OUTBOXD__DATABASE__URL", "postgres://u@h:1/db"),
                ("OUTBOXD__KAFKA__PRODUCER__LINGER.MS", "7"),
                ("OUTBOXD__RATE_LIMIT__TOPICS__ORDERS", "500"),
                ("OUTBOXD__RELAY__ON_PUBLISH", "mark"),
            ],
        )
        .unwrap();
        assert_eq!(c.relay.partitions, 16);
        assert_eq!(c.database.url, "postgres://u@h:1/db");
        assert_eq!(c.kafka.brokers, "a:1");
        assert_eq!(
            c.kafka.producer.get("linger.ms").map(String::as_str),
            Some("7")
        );
        assert_eq!(c.rate_limit.topics.get("orders"), Some(&500));
        assert_eq!(c.relay.on_publish, OnPublish::Mark);
    }

    #[test]
    fn producer_options_keep_dotted_keys_and_accept_numbers() {
        let c = load(
            "[kafka.producer]\n\"linger.ms\" = 5\n\"batch.size\" = \"100000\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.kafka.producer["linger.ms"], "5");
        assert_eq!(c.kafka.producer["batch.size"], "100000");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            "[relay]\npartitons = 3\npartitions = 0\n[database]\nurl = \"mongodb://x\"\n[poller]\nbatch_size = \"many\"\n",
            &[("OUTBOXD__RETRY__MAX_ATTEMPTS", "lots"), ("OUTBOXD__NOPE__X", "1")],
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 6, "{text}");
        assert!(text.contains("relay.partitons: unknown key"), "{text}");
        assert!(text.contains("did you mean `relay.partitions`"), "{text}");
        assert!(
            text.contains("relay.partitions: 0 is out of range"),
            "{text}"
        );
        assert!(text.contains("database.url"), "{text}");
        assert!(text.contains("poller.batch_size"), "{text}");
        assert!(
            text.contains("retry.max_attempts") && text.contains("OUTBOXD__RETRY__MAX_ATTEMPTS"),
            "{text}"
        );
        assert!(text.contains("nope: unknown key"), "{text}");
    }

    #[test]
    fn bad_enum_value_names_the_key_and_the_choices() {
        let err = load("[relay]\non_publish = \"archive\"\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("relay.on_publish"), "{text}");
        assert!(text.contains("delete") && text.contains("mark"), "{text}");
    }

    #[test]
    fn guarantees_cannot_be_switched_off_through_producer_options() {
        let err = load(
            "[kafka.producer]\n\"enable.idempotence\" = \"false\"\nacks = \"1\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let missing = ConfigSource {
            path: Some(PathBuf::from("/nonexistent/outboxd.toml")),
            required: true,
        };
        assert!(Config::load_from(&missing, &[]).is_err());
        let optional = ConfigSource {
            path: Some(PathBuf::from("/nonexistent/outboxd.toml")),
            required: false,
        };
        assert_eq!(
            Config::load_from(&optional, &[]).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn toml_syntax_error_is_reported_with_the_file() {
        let err = load("[relay\npartitions = 1", &[]).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].contains(".toml"), "{err}");
    }

    #[test]
    fn broker_list_is_checked() {
        assert!(crate::sink::kafka::check_brokers("a:1,b:2").is_ok());
        assert!(crate::sink::kafka::check_brokers("").is_err());
        assert!(crate::sink::kafka::check_brokers("localhost").is_err());
        assert!(crate::sink::kafka::check_brokers("h:0").is_err());
    }
}
