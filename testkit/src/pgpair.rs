//! A private PostgreSQL primary and synchronous streaming replica (`scripts/pg-pair.sh`)
//! for the failover tests and fault scenarios: started on free ports, crashed or stopped,
//! promoted, and removed when dropped.

use std::path::{Path, PathBuf};

/// The pair; both down and its directory removed on drop.
pub struct PgPair {
    dir: PathBuf,
    /// The first primary's port.
    pub primary: u16,
    /// The replica's port (the primary after [`PgPair::promote`]).
    pub replica: u16,
}

impl PgPair {
    /// Starts both in `dir` (emptied first) and waits until the replica is synchronous.
    pub fn start(dir: &Path) -> anyhow::Result<PgPair> {
        let out = script("start", dir)?;
        let mut ports = out.split_whitespace().map(str::parse::<u16>);
        match (ports.next(), ports.next()) {
            (Some(Ok(primary)), Some(Ok(replica))) => Ok(PgPair {
                dir: dir.to_path_buf(),
                primary,
                replica,
            }),
            _ => anyhow::bail!("scripts/pg-pair.sh start printed {out:?}, not two ports"),
        }
    }

    /// A crash of the primary (`pg_ctl stop -m immediate`).
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        script("kill-primary", &self.dir).map(drop)
    }

    /// A planned stop of the primary (`pg_ctl stop -m fast`).
    pub fn stop_primary(&self) -> anyhow::Result<()> {
        script("stop-primary", &self.dir).map(drop)
    }

    /// Starts the old primary again as it was: a primary on the old timeline, beside the
    /// promoted replica (split brain, as an operator's mistake makes it).
    pub fn restart_old_primary(&self) -> anyhow::Result<()> {
        script("restart-primary", &self.dir).map(drop)
    }

    /// A crash of the replica (the primary, once promoted).
    pub fn kill_replica(&self) -> anyhow::Result<()> {
        script("kill-replica", &self.dir).map(drop)
    }

    /// Promotes the replica (which then waits for no standby).
    pub fn promote(&self) -> anyhow::Result<()> {
        script("promote", &self.dir).map(drop)
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(port: u16, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{database}")
    }

    /// Both hosts, primary first, as libpq's multi-host URL.
    pub fn both(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
            self.primary, self.replica
        )
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        let _ = script("stop", &self.dir);
    }
}

fn script(command: &str, dir: &Path) -> anyhow::Result<String> {
    crate::script("pg-pair.sh", &[command], dir)
}
