//! Processes and ports: the `outboxd` binary built beside this one, `outboxd run` as a
//! child process, free ports, the relay's HTTP endpoint.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The `outboxd` binary of this build: `$OUTBOXD_BIN` if set, else the one in the target
/// directory this program (a testkit binary, or a test in `deps/`) was built into. Cargo
/// builds it with the workspace (`cargo build`, `cargo nextest run --workspace`); a build
/// of the testkit alone does not, hence the error naming the command.
pub fn find_outboxd() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("OUTBOXD_BIN") {
        return Ok(bin.into());
    }
    built_beside_me("outboxd")
}

/// A program of the workspace built into the same target directory as this one (a
/// testkit binary, or a test in `deps/`); the error names the command that builds it.
pub fn built_beside_me(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let mut dir = me
        .parent()
        .expect("a program is in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it first (cargo build --bin {name}, in the same profile)",
        bin.display()
    );
    Ok(bin)
}

/// [`find_outboxd`] for tests: panics with its message.
pub fn outboxd_bin() -> PathBuf {
    find_outboxd().unwrap_or_else(|e| panic!("{e}"))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free local port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Waits up to `timeout` for something to listen on `port`; false if nothing did.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// An `outboxd run` process; killed when dropped.
pub struct RelayProcess {
    /// The child.
    pub child: std::process::Child,
    /// Its combined output.
    pub log: std::path::PathBuf,
}

impl RelayProcess {
    /// Starts `outboxd run` in an empty directory (no config file), configured only by
    /// the given environment variables.
    pub fn spawn(env: &[(&str, String)]) -> RelayProcess {
        let dir = std::env::temp_dir();
        let log = dir.join(format!(
            "outboxd-test-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(outboxd_bin());
        cmd.arg("run")
            .current_dir(&dir)
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, _) in std::env::vars() {
            if k.starts_with("OUTBOXD") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        RelayProcess {
            child: cmd.spawn().expect("spawn outboxd run"),
            log,
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for exit up to `timeout`; None if it is still running.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `GET path` from the relay's HTTP endpoint: status code and body.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}
