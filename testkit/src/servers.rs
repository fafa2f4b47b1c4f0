//! Private Redis and NATS servers on free ports: `redis-server` with an append-only file
//! fsynced on every write (a kill loses nothing it acknowledged) or `nats-server -js`
//! (file store), each keeping its data in a directory of its own across restarts, so that
//! a test or a scenario can kill, restart or pause the server without touching the shared
//! local one. One launcher for the tests, the fault harness and the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use outboxd::sink::SinkKind;

use crate::process::{free_port, wait_for_port};

/// A Redis or NATS server process of the caller's own; killed when dropped.
pub struct PrivateServer {
    kind: SinkKind,
    child: Child,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    tls: bool,
    // A temporary data directory, removed with the server (None: the caller's).
    _temp: Option<tempfile::TempDir>,
}

impl PrivateServer {
    /// A server on a free port, its data in a temporary directory.
    pub fn start(kind: SinkKind) -> anyhow::Result<PrivateServer> {
        PrivateServer::start_with(kind, false, |_, _| Vec::new())
    }

    /// As [`start`](Self::start), with the arguments `extra(port, dir)` after the usual
    /// ones (they win); with `tls`, the port is Redis's TLS port (`--tls-port`) and the URL
    /// `rediss://`, or NATS's TLS-only client port.
    pub fn start_with(
        kind: SinkKind,
        tls: bool,
        extra: impl FnOnce(u16, &Path) -> Vec<String>,
    ) -> anyhow::Result<PrivateServer> {
        let temp = tempfile::tempdir()?;
        let port = free_port();
        let extra = extra(port, temp.path());
        let log = temp.path().join("server.log");
        let mut server = PrivateServer::launch(kind, port, temp.path(), &log, extra)?;
        server.tls = tls;
        server._temp = Some(temp);
        Ok(server)
    }

    /// A server on `port`, its data in `dir` (created if missing), its output appended to
    /// `log`: for a harness that keeps the files after the run.
    pub fn start_in(
        kind: SinkKind,
        port: u16,
        dir: &Path,
        log: &Path,
    ) -> anyhow::Result<PrivateServer> {
        std::fs::create_dir_all(dir)?;
        PrivateServer::launch(kind, port, dir, log, Vec::new())
    }

    fn launch(
        kind: SinkKind,
        port: u16,
        dir: &Path,
        log: &Path,
        extra: Vec<String>,
    ) -> anyhow::Result<PrivateServer> {
        let child = spawn(kind, port, dir, log, &extra)?;
        Ok(PrivateServer {
            kind,
            child,
            port,
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            extra,
            tls: false,
            _temp: None,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory (also a place for the caller's own files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of the server itself.
    pub fn url(&self) -> String {
        let scheme = match (self.kind, self.tls) {
            (SinkKind::Redis, true) => "rediss",
            _ => self.kind.name(),
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9`, then the same server again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = spawn(self.kind, self.port, &self.dir, &self.log, &self.extra)?;
        Ok(())
    }

    /// Sends `sig` to the server (SIGSTOP / SIGCONT: the server paused).
    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(
    kind: SinkKind,
    port: u16,
    dir: &Path,
    log: &Path,
    extra: &[String],
) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("{}", log.display()))?;
    let port_s = port.to_string();
    let dir_s = dir.to_string_lossy().into_owned();
    let (program, args): (&str, Vec<&str>) = match kind {
        SinkKind::Redis => (
            "redis-server",
            vec![
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir_s,
            ],
        ),
        SinkKind::Nats => (
            "nats-server",
            vec!["-js", "-a", "127.0.0.1", "-p", &port_s, "-sd", &dir_s],
        ),
        SinkKind::Kafka => anyhow::bail!("Kafka runs on Tansu (broker::LocalBroker)"),
    };
    let child = Command::new(program)
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("{program} (scripts/setup.sh installs it)"))?;
    anyhow::ensure!(
        wait_for_port(port, Duration::from_secs(15)),
        "{program} did not listen on {port}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    Ok(child)
}
