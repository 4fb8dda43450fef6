//! A `streambus serve` child process for tests of the real binary.

#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_streambus");

/// A `streambus serve` process; killed if the test fails before it is stopped.
pub struct Served {
    pub child: Child,
    /// The gRPC server's URL.
    pub url: String,
    /// The admin plane's URL (`http://host:port`), unless `--no-admin` was given.
    pub admin: Option<String>,
    /// The rest of its standard output, kept open so that it never writes to a closed
    /// pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Served {
    /// Starts `streambus serve ARGS`; the admin plane listens on a free port unless
    /// ARGS say otherwise.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Served {
        let mut command = Command::new(BIN);
        command.arg("serve").args(args);
        if !args.iter().any(|a| *a == "--admin-addr" || *a == "--no-admin") {
            command.args(["--admin-addr", "127.0.0.1:0"]);
        }
        let mut child = command
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("streambus listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let url = format!("http://{addr}");
        let admin = if args.contains(&"--no-admin") {
            None
        } else {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let admin = line
                .trim()
                .strip_prefix("streambus admin on ")
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"));
            Some(admin.to_owned())
        };
        Served {
            url,
            admin,
            child,
            _stdout: stdout,
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
