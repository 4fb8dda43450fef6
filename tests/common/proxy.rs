//! A TCP proxy on `127.0.0.1` that a test can cut and restore, to make a real server
//! (PostgreSQL) unreachable for a while without touching it.

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
}

impl Proxy {
    /// A proxy to `target` on a free port, up.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            target,
            tasks: Arc::default(),
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
        }
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let target = self.target;
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().push(forward);
            }
        });
        self.tasks.lock().push(accept);
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

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
