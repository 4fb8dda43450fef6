//! A private NATS cluster for federation tests: Debian's `nats-server`, one process per
//! node on free loopback ports, JetStream on (each node with its own temporary store),
//! routes between all of them. Killed when dropped.
//!
//! Without `nats-server` on the machine a test is skipped with a message, unless
//! `CI=true`, where that is a failure.

#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The running servers.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    /// Client ports, one per server.
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> Option<&'static str> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

impl NatsCluster {
    /// Starts `n` servers forming one cluster, or `None` (after saying why) when the
    /// test must be skipped.
    pub fn start(n: usize) -> Option<NatsCluster> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let Some(bin) = binary() else {
            assert!(!ci, "CI=true: nats-server must be installed (.ci/packages)");
            eprintln!("skipped: nats-server is not installed");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers = (0..n)
            .map(|i| {
                let store = dir.path().join(format!("n{i}"));
                let log = dir.path().join(format!("n{i}.log"));
                Some(
                    Command::new(bin)
                        .args(["-a", "127.0.0.1", "-p", &ports[i].to_string(), "-n", &format!("n{i}")])
                        .args(["--cluster_name", "streambus-test"])
                        .args(["--cluster", &format!("nats://127.0.0.1:{}", cluster_ports[i])])
                        .args(["--routes", &routes, "-js", "-sd"])
                        .arg(&store)
                        .arg("-l")
                        .arg(&log)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        let cluster = NatsCluster {
            servers,
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &cluster.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "nats-server on {port} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(cluster)
    }

    /// `nats://` URLs of the servers, comma-separated, starting with server `first`.
    pub fn urls_from(&self, first: usize) -> String {
        let n = self.ports.len();
        (0..n)
            .map(|k| format!("nats://127.0.0.1:{}", self.ports[(first + k) % n]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
