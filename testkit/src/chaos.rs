//! Fault injection for tests and the fault harness: a TCP proxy that can pass traffic,
//! refuse it (cut every connection, reset new ones) or blackhole it (accept, forward
//! nothing, hold connections open) — between the relay and the broker or PostgreSQL.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Close every connection and every new one at once (like a crashed peer).
    Refuse,
    /// Forward nothing and hold connections open (like a cut cable): peers find out only
    /// through their own timeouts. Connections held are closed when the mode changes.
    Blackhole,
}

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and forwards to `target`.
    pub async fn start(listen: &str, target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(tx);
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let rx = m.subscribe();
                tokio::spawn(serve(client, target, rx));
            }
        });
        Ok(TcpProxy { addr, mode, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the proxy does, for existing and new connections.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => return,
        Mode::Blackhole => {
            // Hold the connection, forward nothing, until the mode changes.
            let _ = mode.changed().await;
            return;
        }
        Mode::Pass => {}
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut upstream) => {}
        _ = async {
            while mode.changed().await.is_ok() {
                if *mode.borrow() != Mode::Pass {
                    break;
                }
            }
        } => {
            if *mode.borrow() == Mode::Blackhole {
                // Stall: keep both sockets open without forwarding.
                let _ = mode.changed().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn proxy_passes_refuses_and_blackholes() {
        let target = echo_server().await;
        let proxy = TcpProxy::start("127.0.0.1:0", target).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");

        proxy.set(Mode::Refuse);
        let mut buf = [0u8; 2];
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), c.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "existing connection cut: {r:?}"
        );

        proxy.set(Mode::Blackhole);
        let mut c2 = TcpStream::connect(proxy.addr()).await.unwrap();
        c2.write_all(b"yo").await.unwrap();
        let r =
            tokio::time::timeout(std::time::Duration::from_millis(300), c2.read(&mut buf)).await;
        assert!(r.is_err(), "nothing comes back from a blackhole");

        proxy.set(Mode::Pass);
        let mut c3 = TcpStream::connect(proxy.addr()).await.unwrap();
        c3.write_all(b"ok").await.unwrap();
        c3.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    }
}
