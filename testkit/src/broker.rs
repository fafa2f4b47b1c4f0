//! The local Kafka-protocol broker (Tansu) for the demo and the tests: find it, start it
//! when nothing listens on the configured address, stop it when we started it.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/setup.sh` links the Tansu binary, relative to the project root.
pub const TANSU_LINK: &str = ".tools/bin/tansu";

/// Whether something accepts TCP connections on every broker of the list.
pub fn reachable(brokers: &str) -> bool {
    brokers
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .all(|b| {
            b.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
        })
}

/// The Tansu binary: `$OUTBOXD_TANSU`, `.tools/bin/tansu` here or above, or `tansu` on PATH.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTBOXD_TANSU") {
        return Some(PathBuf::from(p));
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        let candidate = d.join(TANSU_LINK);
        if candidate.exists() {
            return Some(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(TANSU_LINK);
    if manifest.exists() {
        return Some(manifest);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("tansu"))
            .find(|p| p.exists())
    })
}

/// A broker process this program started; killed on drop.
pub struct LocalBroker {
    child: Child,
    /// Its `host:port`.
    pub addr: String,
}

impl LocalBroker {
    /// Starts Tansu (in-memory storage) listening and advertising `listen`, and waits until
    /// it accepts connections. `advertise` lets a proxy stand in front of it.
    pub fn start(listen: &str, advertise: &str, log: &Path) -> anyhow::Result<LocalBroker> {
        let bin = tansu_binary().ok_or_else(|| {
            anyhow::anyhow!("no Tansu binary: run scripts/setup.sh (or set OUTBOXD_TANSU)")
        })?;
        let log_file = std::fs::File::create(log)?;
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{listen}"),
                "--advertised-listener-url",
                &format!("tcp://{advertise}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        let mut broker = LocalBroker {
            child,
            addr: listen.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reachable(listen) {
            if let Some(status) = broker.child.try_wait()? {
                anyhow::bail!("Tansu exited at start ({status}); see {}", log.display());
            }
            if Instant::now() > deadline {
                anyhow::bail!("Tansu did not listen on {listen} within 20s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the broker now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reuses the broker at `brokers` if it answers; otherwise starts Tansu there when the
/// address is local. Returns the process if one was started.
pub fn ensure_local(brokers: &str) -> anyhow::Result<Option<LocalBroker>> {
    if reachable(brokers) {
        return Ok(None);
    }
    let first = brokers.split(',').next().unwrap_or_default().trim();
    let local = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a: SocketAddr| a.ip().is_loopback());
    if !local {
        anyhow::bail!("cannot reach the broker at {brokers}");
    }
    let log = std::env::temp_dir().join("outboxd-tansu.log");
    LocalBroker::start(first, first, &log).map(Some)
}
