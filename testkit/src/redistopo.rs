//! Private Redis topologies for the cluster and Sentinel tests and fault scenarios: a
//! six-node Redis Cluster (`scripts/redis-cluster.sh`) and a master, replica and three
//! sentinels (`scripts/redis-sentinel.sh`), on free ports, removed when dropped; and a
//! reader of streams that asks the topology where each stream is.

use std::path::{Path, PathBuf};

/// Three masters and a replica each; all down and the directory removed on drop.
pub struct RedisCluster {
    dir: PathBuf,
    /// The six nodes' ports.
    pub ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts it in `dir` (emptied first) and waits until every replica is in sync.
    pub fn start(dir: &Path) -> anyhow::Result<RedisCluster> {
        let out = crate::script("redis-cluster.sh", &["start"], dir)?;
        let ports = ports(&out, 6, "redis-cluster.sh start")?;
        Ok(RedisCluster {
            dir: dir.to_path_buf(),
            ports,
        })
    }

    /// The current masters' ports.
    pub fn masters(&self) -> anyhow::Result<Vec<u16>> {
        let out = crate::script("redis-cluster.sh", &["masters"], &self.dir)?;
        out.split_whitespace()
            .map(|p| Ok(p.parse::<u16>()?))
            .collect()
    }

    /// `kill -9` of the node on `port`.
    pub fn kill(&self, port: u16) -> anyhow::Result<()> {
        crate::script("redis-cluster.sh", &["kill", &port.to_string()], &self.dir).map(drop)
    }

    /// Starts the node on `port` again and waits until it is a replica in sync (its
    /// slots were failed over).
    pub fn restart(&self, port: u16) -> anyhow::Result<()> {
        crate::script(
            "redis-cluster.sh",
            &["restart", &port.to_string()],
            &self.dir,
        )
        .map(drop)
    }

    /// `redis.url` for the relay: every node, comma-separated.
    pub fn seeds(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis://{}", nodes.join(","))
    }

    /// The nodes as URLs, for the `redis` crate's cluster client.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = crate::script("redis-cluster.sh", &["stop"], &self.dir);
    }
}

/// A master (`outboxd`), its replica and three sentinels; all down on drop.
pub struct RedisSentinel {
    dir: PathBuf,
    /// The first master's port.
    pub master: u16,
    /// The replica's port.
    pub replica: u16,
    /// The sentinels' ports.
    pub sentinels: Vec<u16>,
}

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "outboxd";

impl RedisSentinel {
    /// Starts it in `dir` (emptied first); waits for the replica's sync and for the
    /// sentinels to know each other.
    pub fn start(dir: &Path) -> anyhow::Result<RedisSentinel> {
        let out = crate::script("redis-sentinel.sh", &["start"], dir)?;
        let p = ports(&out, 5, "redis-sentinel.sh start")?;
        Ok(RedisSentinel {
            dir: dir.to_path_buf(),
            master: p[0],
            replica: p[1],
            sentinels: p[2..].to_vec(),
        })
    }

    /// The port the sentinels name as master now.
    pub fn current_master(&self) -> anyhow::Result<u16> {
        let out = crate::script("redis-sentinel.sh", &["master"], &self.dir)?;
        Ok(out.trim().parse()?)
    }

    /// `kill -9` of the server on `port`.
    pub fn kill(&self, port: u16) -> anyhow::Result<()> {
        crate::script("redis-sentinel.sh", &["kill", &port.to_string()], &self.dir).map(drop)
    }

    /// Starts the server on `port` again and waits until the sentinels made it a
    /// replica, in sync.
    pub fn restart(&self, port: u16) -> anyhow::Result<()> {
        crate::script(
            "redis-sentinel.sh",
            &["restart", &port.to_string()],
            &self.dir,
        )
        .map(drop)
    }

    /// The sentinels' URLs (`redis.sentinels`).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = crate::script("redis-sentinel.sh", &["stop"], &self.dir);
    }
}

fn ports(out: &str, n: usize, what: &str) -> anyhow::Result<Vec<u16>> {
    let ports: Vec<u16> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    anyhow::ensure!(ports.len() == n, "{what} printed {out:?}, not {n} ports");
    Ok(ports)
}

/// Where a reader finds the streams.
#[derive(Clone, Debug)]
pub enum Topology {
    /// One server's URL.
    Single(String),
    /// A cluster's nodes.
    Cluster(Vec<String>),
    /// The sentinels' URLs.
    Sentinel(Vec<String>),
}

/// A blocking connection to wherever `topology` keeps the streams (for the master, by
/// asking the sentinels).
pub fn connect(topology: &Topology) -> redis::RedisResult<Box<dyn redis::ConnectionLike>> {
    use redis::sentinel::{SentinelClient, SentinelServerType};
    let timeout = std::time::Duration::from_secs(2);
    Ok(match topology {
        Topology::Single(url) => {
            let c = redis::Client::open(url.as_str())?.get_connection_with_timeout(timeout)?;
            c.set_read_timeout(Some(timeout * 3))?;
            Box::new(c)
        }
        Topology::Cluster(nodes) => Box::new(
            redis::cluster::ClusterClient::builder(nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout * 3)
                .build()?
                .get_connection()?,
        ),
        Topology::Sentinel(sentinels) => {
            let mut client = SentinelClient::build(
                sentinels.clone(),
                MASTER_NAME,
                None,
                SentinelServerType::Master,
            )?;
            let c = client.get_connection()?;
            c.set_read_timeout(Some(timeout * 3))?;
            Box::new(c)
        }
    })
}
