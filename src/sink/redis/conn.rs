//! The sink's connection, whatever the topology: one server (the crate's reconnecting
//! `ConnectionManager`), a Redis Cluster (its async cluster client, which follows `MOVED`,
//! `ASK` and failovers), or a master named by sentinels (asked again after a failover).
//! All three are `ConnectionLike`, so a command or pipeline is sent the same way.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Makes a connection (to the cluster's seeds, or to the master the sentinels name).
pub(super) type Make<C> = Box<dyn Fn() -> BoxFuture<'static, RedisResult<C>> + Send + Sync>;

/// A connection made on first use and kept; a `Follow` one is forgotten after a failure
/// that may mean the server is no longer the master, so the next use asks again.
pub(super) struct Lazy<C> {
    current: tokio::sync::Mutex<Option<C>>,
    make: Make<C>,
}

impl<C: Clone> Lazy<C> {
    pub(super) fn new(make: Make<C>) -> Self {
        Self {
            current: tokio::sync::Mutex::new(None),
            make,
        }
    }

    async fn get(&self) -> RedisResult<C> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let c = (self.make)().await?;
        *current = Some(c.clone());
        Ok(c)
    }

    async fn forget(&self) {
        *self.current.lock().await = None;
    }
}

/// One connection of the sink.
#[derive(Clone)]
pub enum Conn {
    /// One server (`redis.url`).
    Single(ConnectionManager),
    /// A Redis Cluster (`redis.cluster`).
    Cluster(Arc<Lazy<ClusterConnection>>),
    /// The master the sentinels name (`redis.sentinels`).
    Sentinel(Arc<Lazy<MultiplexedConnection>>),
}

/// Whether, after `result`, the master the sentinels named may have changed: the
/// connection broke or timed out, or the server has become a replica (`READONLY`).
fn master_may_have_moved<T>(result: &RedisResult<T>, replies: impl Fn(&T) -> bool) -> bool {
    match result {
        Ok(v) => replies(v),
        Err(e) => {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.code() == Some("READONLY")
        }
    }
}

fn read_only(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "READONLY")
}

impl Conn {
    /// What `INFO server` says, from one node (any node of a cluster).
    pub async fn info_server(&mut self) -> RedisResult<String> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        match self {
            Conn::Cluster(lazy) => {
                let mut c = lazy.get().await?;
                let v = c
                    .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await?;
                redis::from_redis_value(v).map_err(Into::into)
            }
            _ => cmd.query_async(self).await,
        }
    }

    /// `CLUSTER INFO`'s state and the number of masters, for a cluster.
    pub async fn cluster_state(&mut self) -> Option<String> {
        let Conn::Cluster(lazy) = self else {
            return None;
        };
        let mut c = lazy.get().await.ok()?;
        let v = c
            .route_command(
                redis::cmd("CLUSTER").arg("INFO").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .ok()?;
        let text: String = redis::from_redis_value(v).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        Some(format!(
            "cluster_state {}, {} masters",
            field("cluster_state:")?,
            field("cluster_size:")?
        ))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }
            .boxed(),
            Conn::Sentinel(lazy) => async move {
                let mut c = lazy.get().await?;
                let result = c.req_packed_command(cmd).await;
                if master_may_have_moved(&result, read_only) {
                    lazy.forget().await;
                }
                result
            }
            .boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }
            .boxed(),
            Conn::Sentinel(lazy) => async move {
                let mut c = lazy.get().await?;
                let result = c.req_packed_commands(pipeline, offset, count).await;
                if master_may_have_moved(&result, |vs: &Vec<Value>| vs.iter().any(read_only)) {
                    lazy.forget().await;
                }
                result
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) | Conn::Sentinel(_) => 0,
        }
    }
}
