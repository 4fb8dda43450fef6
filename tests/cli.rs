//! The `streambus` binary: `serve` with no config, flags and `STREAMBUS_*` overrides,
//! `pub`, `sub` and `chat` against it, and a graceful exit on SIGTERM.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/served.rs"]
mod served;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};

use served::{BIN, Served};
use streambus::client::{Client, ClientOptions};

fn run(args: &[&str], url: &str) -> String {
    let output = Command::new(BIN).args(args).args(["--url", url]).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Starts `args` (a `sub`) against `url` and returns once it says it is subscribed, with
/// the rest of its stderr.
fn subscribed(args: &[&str], url: &str, stdout: Stdio) -> (Child, BufReader<ChildStderr>) {
    let mut sub = Command::new(BIN)
        .args(args)
        .args(["--url", url])
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("subscribed"), "{line:?}");
    (sub, stderr)
}

/// The config file and environment overrides reach the server (seen in `welcome`), and
/// `pub`, `sub` and `chat` work against it; SIGTERM ends it cleanly.
#[test]
fn serve_pub_sub_chat() {
    let dir = std::env::temp_dir().join(format!("streambus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("streambus.toml");
    std::fs::write(&config, "[limits]\nmax_batch_messages = 7\nmax_message_bytes = 2048\n").unwrap();
    let served = Served::start(
        &["--grpc-addr", "127.0.0.1:0", "--config", config.to_str().unwrap()],
        &[("STREAMBUS_LIMITS__MAX_MESSAGE_BYTES", "4096")],
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let welcome = runtime.block_on(async {
        let client = Client::connect_with(ClientOptions::new(served.url.clone()).reconnect(false))
            .await
            .unwrap();
        client.welcome().unwrap()
    });
    assert_eq!(welcome.max_batch_messages, 7, "from the file");
    assert_eq!(welcome.max_message_bytes, 4096, "the environment overrides the file");

    // `sub` reports on stderr once subscribed; publish only then.
    let (mut sub, _) = subscribed(&["sub", "sensors.>", "--count", "3"], &served.url, Stdio::piped());
    let published = run(&["pub", "sensors.dev1.temp", "21.5", "--count", "3"], &served.url);
    assert_eq!(published.trim(), "published 3 message(s) to sensors.dev1.temp");
    let mut received = String::new();
    std::io::Read::read_to_string(&mut sub.stdout.take().unwrap(), &mut received).unwrap();
    assert!(sub.wait().unwrap().success());
    assert_eq!(
        received.lines().collect::<Vec<_>>(),
        [
            "[#1] sensors.dev1.temp: 21.5",
            "[#2] sensors.dev1.temp: 21.5",
            "[#3] sensors.dev1.temp: 21.5"
        ]
    );

    let chat = run(&["chat", "--interval-ms", "10", "hello", "world"], &served.url);
    assert_eq!(chat, "Received: echo: hello\nReceived: echo: world\n");
    served.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sub` whose server dies says why on stderr and exits with a failure.
#[test]
fn sub_says_why_its_server_went_away() {
    let served = Served::start(&["--grpc-addr", "127.0.0.1:0"], &[]);
    let (mut sub, mut sub_err) = subscribed(&["sub", "lamp.>"], &served.url, Stdio::null());
    served.kill();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut sub_err, &mut rest).unwrap();
    let status = sub.wait().unwrap();
    assert!(!status.success(), "{rest}");
    assert!(rest.contains("connection lost; not reconnecting"), "{rest}");
    assert!(rest.contains("error: subscription closed: session_closed"), "{rest}");
}

/// A bad configuration is refused at start with the field named, and nothing listens.
#[test]
fn bad_config_names_the_field() {
    let output = Command::new(BIN)
        .args(["serve", "--grpc-addr", "127.0.0.1:0"])
        .env("STREAMBUS_TOPICS__MAILBOX_MESSAGES", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("topics.mailbox_messages"), "{stderr}");

    let output = Command::new(BIN)
        .args(["serve", "--grpc-addr", "127.0.0.1:0"])
        .env("STREAMBUS_LIMITS__NO_SUCH_KEY", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no_such_key"), "{stderr}");
}

/// Start-up errors name what the user must change, as a one-line chain with no
/// backtrace even when `RUST_BACKTRACE` is set: a mistyped environment value by its
/// field (no profile prefix), a data directory that is a file as `storage.data_dir`.
#[test]
fn start_up_errors_name_what_to_change() {
    let serve = |envs: &[(&str, &str)], args: &[&str]| {
        let output = Command::new(BIN)
            .args(["serve", "--grpc-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "error")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = serve(&[("STREAMBUS_LIMITS__MAX_MESSAGE_BYTES", "lots")], &[]);
    assert!(stderr.contains("limits.max_message_bytes: invalid type"), "{stderr}");
    assert!(!stderr.contains("default."), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let config = dir.path().join("streambus.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = {:?}\n[[sinks]]\nname = \"f\"\ntype = \"file\"\ntopics = [\"a\"]\npath = {:?}\nbuffer = {{ type = \"disk\" }}\n",
            not_a_dir.display().to_string(),
            dir.path().join("out").display().to_string()
        ),
    )
    .unwrap();
    let stderr = serve(&[], &["--config", config.to_str().unwrap()]);
    assert!(stderr.contains("storage.data_dir"), "{stderr}");
    assert!(!stderr.contains("internal error"), "{stderr}");
}

/// `serve` prints the admin plane's address on its second line, names the admin
/// address when it cannot listen there, and `--log-format json` writes one JSON object
/// per log line.
#[test]
fn admin_address_and_json_logs() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(BIN)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", &addr])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot start the admin plane on {addr}")),
        "{stderr}"
    );

    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = [String::new(), String::new()];
    for line in &mut lines {
        stdout.read_line(line).unwrap();
    }
    assert!(lines[0].starts_with("streambus listening on 127.0.0.1:"), "{lines:?}");
    assert!(
        lines[1].starts_with("streambus admin on http://127.0.0.1:"),
        "{lines:?}"
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let log: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first:?}"));
    assert_eq!(log["level"], "INFO", "{log}");
    assert!(log["fields"]["message"].is_string(), "{log}");
}
