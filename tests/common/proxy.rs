//! A TCP proxy on `127.0.0.1` that a test can cut and restore, to make a real server
//! (PostgreSQL) unreachable for a while without touching it, or freeze, to make a peer
//! a black hole: connections stay open, nothing more is read or forwarded either way.

#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards connections from `addr` to `target` while up.
pub struct Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    /// The accept loop and every forwarding task; aborted by `stop`.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// While set, the forwarding tasks neither read nor write.
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// A proxy to `target` on a free port, up.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            target,
            tasks: Arc::default(),
            frozen: tokio::sync::watch::Sender::new(false),
        };
        proxy.serve(listener);
        proxy
    }

    /// A proxy to `target` on a free port, down until [`Proxy::resume`].
    pub async fn stopped(target: SocketAddr) -> Proxy {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        Proxy {
            addr,
            target,
            tasks: Arc::default(),
            frozen: tokio::sync::watch::Sender::new(false),
        }
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let target = self.target;
        let frozen = self.frozen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let frozen = frozen.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, frozen.subscribe()),
                            pump(out_read, in_write, frozen.subscribe())
                        );
                    }
                });
                tasks.lock().push(forward);
            }
        });
        self.tasks.lock().push(accept);
    }

    /// Stops forwarding on every connection, open or new, without closing any: the
    /// peers see a black hole (their sends fill the socket buffers, then wait).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Refuses new connections and cuts every open one.
    pub fn stop(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    /// Accepts connections again, on the same port.
    pub async fn resume(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

/// Copies `from` to `to` until either closes, holding still while `frozen` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.wait_for(|f| *f) => continue,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
