//! A private three-node NATS cluster with JetStream (`scripts/nats-cluster.sh`, on the
//! current nats-server `scripts/setup.sh` installs) for the JetStream failover scenario;
//! removed when dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cluster; all down and its directory removed on drop.
pub struct NatsCluster {
    dir: PathBuf,
    /// The client ports, of servers `n1`, `n2`, `n3` in that order.
    pub ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts it in `dir` (emptied first); waits for JetStream and a meta leader.
    pub fn start(dir: &Path) -> anyhow::Result<NatsCluster> {
        let out = script(&["start"], dir)?;
        let ports: Vec<u16> = out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        anyhow::ensure!(ports.len() == 3, "nats-cluster.sh start printed {out:?}");
        Ok(NatsCluster {
            dir: dir.to_path_buf(),
            ports,
        })
    }

    /// `nats.url`: every server, comma-separated.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    /// The client port of the server named `name` (`n1`…).
    pub fn port_of(&self, name: &str) -> Option<u16> {
        let i: usize = name.strip_prefix('n')?.parse().ok()?;
        self.ports.get(i.checked_sub(1)?).copied()
    }

    /// `kill -9` of the server on `port`.
    pub fn kill(&self, port: u16) -> anyhow::Result<()> {
        script(&["kill", &port.to_string()], &self.dir).map(drop)
    }

    /// Starts the server on `port` again, on its store; waits until it is healthy.
    pub fn restart(&self, port: u16) -> anyhow::Result<()> {
        script(&["restart", &port.to_string()], &self.dir).map(drop)
    }

    /// Creates `name` capturing `subjects`, replicated on all three servers.
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.client().await?);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            duplicate_window: Duration::from_secs(120),
            num_replicas: 3,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// The name of the server leading stream `name` now.
    pub async fn stream_leader(&self, name: &str) -> anyhow::Result<String> {
        let js = async_nats::jetstream::new(self.client().await?);
        let info = js.get_stream(name).await?.info().await?.clone();
        info.cluster
            .and_then(|c| c.leader)
            .ok_or_else(|| anyhow::anyhow!("stream {name} has no leader now"))
    }

    async fn client(&self) -> anyhow::Result<async_nats::Client> {
        let servers: Vec<async_nats::ServerAddr> = self
            .ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}").parse())
            .collect::<Result<_, _>>()?;
        Ok(async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(servers)
            .await?)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        let _ = script(&["stop"], &self.dir);
    }
}

fn script(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    crate::script("nats-cluster.sh", args, dir)
}
