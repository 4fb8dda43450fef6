//! A `streambus serve` child process for tests of the real binary.

#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_streambus");

/// A `streambus serve` process; killed if the test fails before it is stopped.
pub struct Served {
    pub child: Child,
    pub url: String,
}

impl Served {
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Served {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("streambus listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Served {
            url: format!("http://{addr}"),
            child,
        }
    }

    /// Kills the process with SIGKILL (no shutdown path runs) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits (up to `patience`) for the process to exit; returns its
    /// status.
    pub fn terminate_with_status(mut self, patience: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + crate::harness::PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "serve did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
