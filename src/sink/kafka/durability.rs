//! What a topic's replication promises once the relay's `acks=all` record is acknowledged,
//! checked once per topic the first time the relay sends to it: the replication factor
//! (from the topic's metadata) and `min.insync.replicas` (from DescribeConfigs, when the
//! broker answers it and the relay may ask). A set-up that can lose an acknowledged record,
//! or stop every write when one broker goes, is logged once, with what to set.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use tracing::{debug, warn};

/// The topics checked so far, and how to reach the cluster.
pub struct Durability {
    checked: Mutex<HashSet<String>>,
    config: ClientConfig,
    /// How long a check waits for each answer.
    patience: Duration,
}

impl Durability {
    /// Checks with a client made from `producer`'s configuration (without its producer-only
    /// guarantees, which an admin client does not need).
    pub fn new(producer: &ClientConfig, patience: Duration) -> Arc<Self> {
        let mut config = producer.clone();
        config.remove("enable.idempotence");
        config.remove("transactional.id");
        Arc::new(Self {
            checked: Mutex::new(HashSet::new()),
            config,
            patience,
        })
    }

    /// Checks `topic` in the background unless it was already.
    pub fn sending_to(self: &Arc<Self>, topic: &str) {
        {
            let mut checked = self.checked.lock().expect("checked topics");
            if checked.contains(topic) {
                return;
            }
            checked.insert(topic.to_string());
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let this = self.clone();
            let topic = topic.to_string();
            rt.spawn(async move {
                match this.check(&topic).await {
                    Ok(Some(advice)) => warn!(%topic, "{advice}"),
                    Ok(None) => debug!(%topic, "Topic replication checked."),
                    Err(e) => {
                        let error = super::check::hide_secrets(&e.to_string(), &this.config);
                        debug!(%topic, %error, "Could not check the topic's replication.");
                    }
                }
            });
        }
    }

    /// `topic`'s replication judged ([`advise`]); `Ok(None)` when it is sound, or does not
    /// exist yet.
    pub async fn check(&self, topic: &str) -> anyhow::Result<Option<String>> {
        let config = self.config.clone();
        let name = topic.to_string();
        let patience = self.patience;
        // librdkafka's metadata call blocks.
        let (admin, replicas) = tokio::task::spawn_blocking(move || {
            let admin: AdminClient<DefaultClientContext> = config.create()?;
            let md = admin
                .inner()
                .fetch_metadata(Some(&name), patience)
                .map_err(|e| anyhow::anyhow!("metadata: {e}"))?;
            let replicas = md
                .topics()
                .iter()
                .flat_map(|t| t.partitions())
                .map(|p| p.replicas().len())
                .min();
            anyhow::Ok((admin, replicas))
        })
        .await??;
        let Some(replicas) = replicas else {
            return Ok(None); // not created yet: the send will say so
        };
        if replicas < 2 {
            return Ok(advise(replicas, None));
        }
        let opts = AdminOptions::new().request_timeout(Some(self.patience));
        let min_insync = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
            .await
            .ok()
            .and_then(|results| results.into_iter().next())
            .and_then(Result::ok)
            .and_then(|r| r.get("min.insync.replicas").and_then(|e| e.value.clone()))
            .and_then(|v| v.parse::<usize>().ok());
        Ok(advise(replicas, min_insync))
    }
}

/// What to tell an operator about a topic with `replicas` copies of each partition and
/// this `min.insync.replicas` (`None`: unknown), the relay producing with `acks=all`.
pub fn advise(replicas: usize, min_insync: Option<usize>) -> Option<String> {
    if replicas < 2 {
        return Some(format!(
            "The topic has replication factor {replicas}: an acknowledged record lives on \
             one broker, and is lost with its disk. Create it with replication factor 3 and \
             min.insync.replicas 2."
        ));
    }
    match min_insync {
        Some(m) if m < 2 => Some(format!(
            "The topic has min.insync.replicas {m} (replication factor {replicas}): with \
             acks=all a record is acknowledged once one broker has it, and a leader that \
             fails before its followers copy it loses it. Set min.insync.replicas 2."
        )),
        Some(m) if m >= replicas => Some(format!(
            "The topic has min.insync.replicas {m} and replication factor {replicas}: one \
             broker down stops every write to it (the relay waits and retries). Set \
             min.insync.replicas {} or raise the replication factor.",
            replicas - 1
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Durability, advise};

    #[tokio::test]
    async fn a_topic_on_one_broker_is_named_and_three_replicas_are_not() {
        let mock = rdkafka::mocking::MockCluster::new(3).unwrap();
        mock.create_topic("single", 2, 1).unwrap();
        mock.create_topic("replicated", 2, 3).unwrap();
        let mut cc = rdkafka::config::ClientConfig::new();
        cc.set("bootstrap.servers", mock.bootstrap_servers());
        let d = Durability::new(&cc, std::time::Duration::from_secs(2));
        let advice = d.check("single").await.unwrap().expect("advice");
        assert!(advice.contains("replication factor 1"), "{advice}");
        // The mock cluster does not answer DescribeConfigs: judged on the factor alone.
        assert_eq!(d.check("replicated").await.unwrap(), None);
    }

    #[test]
    fn replication_that_can_lose_or_stall_an_acknowledged_record_is_named() {
        assert!(advise(1, None).unwrap().contains("replication factor 1"));
        assert!(advise(1, Some(1)).unwrap().contains("replication factor 3"));
        assert!(
            advise(3, Some(1))
                .unwrap()
                .contains("min.insync.replicas 2")
        );
        assert!(advise(3, Some(3)).unwrap().contains("one broker down"));
        assert!(
            advise(2, Some(2))
                .unwrap()
                .contains("min.insync.replicas 1 or")
        );
        assert_eq!(advise(3, Some(2)), None);
        // Unknown (the broker does not answer DescribeConfigs): only the factor is judged.
        assert_eq!(advise(3, None), None);
    }
}
