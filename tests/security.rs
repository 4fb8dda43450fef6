//! Security end to end over real TLS on loopback, with certificates made by the test:
//! TLS and mutual TLS handshakes, each authentication mode admitted and refused,
//! per-topic permissions with the identity in them, deny over allow, a certificate
//! reload under live streams, and per-identity quotas (counted, not timed).

#[path = "common/harness.rs"]
mod harness;
#[path = "common/served.rs"]
mod served;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::TestServer;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use streambus::client::{Client, ClientError, ClientOptions, ClientTls};
use streambus::proto::streambus::v1 as pb;
use streambus::types::config::{AuthConfig, QuotaAction, QuotaConfig, RoleConfig, Rules, TlsConfig, UserConfig};
use streambus::{BusConfig, ErrorCode, Event, Message, SubscriptionOptions, Topic};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and key (PEM): a server's for `localhost` and 127.0.0.1, or a
    /// client's with common name `cn`.
    fn leaf(&self, cn: &str, server: bool) -> (String, String) {
        let names = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Files of a server's TLS configuration.
struct ServerFiles {
    dir: tempfile::TempDir,
}

impl ServerFiles {
    fn new(ca: &Ca, client_ca: Option<&Ca>) -> ServerFiles {
        let files = ServerFiles {
            dir: tempfile::tempdir().unwrap(),
        };
        files.install(ca);
        if let Some(client_ca) = client_ca {
            std::fs::write(files.path("client-ca.pem"), client_ca.pem()).unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a server certificate signed by `ca` (key first, then certificate, each
    /// by rename, so the server never reads half a file).
    fn install(&self, ca: &Ca) {
        let (cert, key) = ca.leaf("streambus-test", true);
        for (name, text) in [("key.pem", key), ("cert.pem", cert)] {
            let tmp = self.path(&format!("{name}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(name)).unwrap();
        }
    }

    fn config(&self, mutual: bool) -> TlsConfig {
        let s = |p: PathBuf| p.to_str().unwrap().to_owned();
        TlsConfig {
            cert_file: s(self.path("cert.pem")),
            key_file: s(self.path("key.pem")),
            client_ca_file: mutual.then(|| s(self.path("client-ca.pem"))),
            require_client_cert: true,
            reload_check_ms: 100,
        }
    }
}

/// Client options for the server over TLS, trusting `ca`, with an optional client
/// certificate.
fn tls_options(server: &TestServer, ca: &Ca, client: Option<(String, String)>) -> ClientOptions {
    let url = format!("https://127.0.0.1:{}", server.handle.local_addr().port());
    let tls = ClientTls {
        ca_pem: ca.pem().into_bytes(),
        identity: client.map(|(c, k)| (c.into_bytes(), k.into_bytes())),
        domain: Some("localhost".into()),
    };
    ClientOptions::new(url).name("sec-test").reconnect(false).tls(tls)
}

fn rules(allow: &[&str], deny: &[&str]) -> Rules {
    Rules {
        allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        deny: deny.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn role(name: &str, publish: Rules, subscribe: Rules) -> RoleConfig {
    RoleConfig {
        name: name.into(),
        publish,
        subscribe,
        ..RoleConfig::default()
    }
}

fn user(name: &str, roles: &[&str]) -> UserConfig {
    UserConfig {
        name: name.into(),
        password_hash: None,
        token_hash: None,
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        disabled: false,
    }
}

/// The roles every test uses: `all` (anything but system topics), and `device` (its
/// own sensor topics and commands; never anything `secret`).
fn roles() -> Vec<RoleConfig> {
    vec![
        role("all", rules(&[">"], &[]), rules(&[">"], &[])),
        role(
            "device",
            rules(&["sensors.{name}.>"], &["sensors.*.secret"]),
            rules(&["commands.{name}", "sensors.{name}.>"], &[]),
        ),
    ]
}

/// What a failed connect says: the server's refusal as a gRPC code, or `None` when no
/// call got through (a failed handshake, or plain text to a TLS port, which the client
/// reports as a transport failure: UNAVAILABLE, CANCELLED, UNKNOWN or INTERNAL,
/// depending on where it broke).
async fn connect_error(options: ClientOptions) -> Option<tonic::Code> {
    use tonic::Code;
    match tokio::time::timeout(harness::PATIENCE, Client::connect_with(options)).await {
        Err(_) => panic!("connect neither succeeded nor failed"),
        Ok(Ok(_)) => panic!("connected, but should have been refused"),
        Ok(Err(ClientError::Status(status))) => match status.code() {
            code @ (Code::Unauthenticated
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::InvalidArgument) => Some(code),
            _ => None,
        },
        Ok(Err(_)) => None,
    }
}

/// The code of a refused request.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn message(topic: &str, payload: &str) -> Message {
    Message::new(Topic::new(topic).unwrap(), payload.to_owned())
}

/// Over TLS: a token, a user and password, a revoked user; nothing, bad or revoked
/// credentials are UNAUTHENTICATED; plain text and an untrusted CA get no connection.
/// The unary `Publish` call is authenticated the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_tokens_and_passwords() {
    let ca = Ca::new("test-ca");
    let files = ServerFiles::new(&ca, None);
    let (ops_token, ops_hash) = streambus::auth::new_token();
    let (_, old_hash) = streambus::auth::new_token();
    let mut config = BusConfig::default();
    config.grpc.tls = Some(files.config(false));
    config.auth = AuthConfig {
        enabled: true,
        users: vec![
            UserConfig {
                token_hash: Some(ops_hash),
                ..user("ops", &["all"])
            },
            UserConfig {
                password_hash: Some(streambus::auth::hash_password("s3cret").unwrap()),
                ..user("dev1", &["device"])
            },
            UserConfig {
                token_hash: Some(old_hash),
                disabled: true,
                ..user("old", &["all"])
            },
        ],
        roles: roles(),
        ..AuthConfig::default()
    };
    let server = TestServer::start_with(config).await;

    let ops = Client::connect_with(tls_options(&server, &ca, None).token(&ops_token))
        .await
        .unwrap();
    let dev1 = Client::connect_with(tls_options(&server, &ca, None).user("dev1", "s3cret"))
        .await
        .unwrap();
    let mut sub = dev1
        .subscribe("sensors.dev1.>", SubscriptionOptions::default())
        .await
        .unwrap();
    ops.publish_acked("sensors.dev1.temp", "21.5").await.unwrap();
    let Some(Event::Delivery(d)) = harness::within("a delivery over TLS", sub.next()).await else {
        panic!("no delivery")
    };
    assert_eq!(&d.payload[..], b"21.5");

    let unauthenticated = Some(tonic::Code::Unauthenticated);
    assert_eq!(connect_error(tls_options(&server, &ca, None)).await, unauthenticated);
    assert_eq!(
        connect_error(tls_options(&server, &ca, None).token("guess")).await,
        unauthenticated
    );
    assert_eq!(
        connect_error(tls_options(&server, &ca, None).user("dev1", "wrong")).await,
        unauthenticated
    );
    let (old_token, _) = streambus::auth::new_token();
    assert_eq!(
        connect_error(tls_options(&server, &ca, None).token(old_token)).await,
        unauthenticated
    );
    // Plain text to a TLS port, and a server certificate from an unknown CA.
    let plain = ClientOptions::new(format!("http://127.0.0.1:{}", server.handle.local_addr().port())).reconnect(false);
    assert_eq!(connect_error(plain.token(&ops_token)).await, None);
    assert_eq!(
        connect_error(tls_options(&server, &Ca::new("other-ca"), None).token(&ops_token)).await,
        None
    );

    // The unary call: refused without credentials, admitted with them.
    let channel = tls_options(&server, &ca, None)
        .endpoint()
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut unary = pb::bus_client::BusClient::new(channel);
    let batch = || pb::PublishBatch {
        messages: vec![pb::PublishMessage {
            topic: "sensors.dev1.temp".into(),
            payload: b"22".to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = unary.publish(batch()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(batch());
    streambus::client::ClientAuth::Token(ops_token.clone()).apply(&mut request);
    assert_eq!(unary.publish(request).await.unwrap().into_inner().accepted, 1);
    server.shutdown().await;
}

/// Mutual TLS: no certificate, no connection; the certificate's common name is the
/// identity, whose permissions name it. A device publishes its own topics, is refused
/// another device's (PERMISSION_DENIED, the stream stays open) and a denied one that
/// its allow list covers (deny wins), and cannot subscribe beyond its rights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_identity_and_permissions() {
    let ca = Ca::new("server-ca");
    let clients = Ca::new("client-ca");
    let files = ServerFiles::new(&ca, Some(&clients));
    let mut config = BusConfig::default();
    config.grpc.tls = Some(files.config(true));
    config.auth = AuthConfig {
        enabled: true,
        users: vec![user("ops", &["all"])],
        roles: roles(),
        default_roles: vec!["device".into()],
        ..AuthConfig::default()
    };
    let server = TestServer::start_with(config).await;
    assert_eq!(
        connect_error(tls_options(&server, &ca, None)).await,
        None,
        "no client certificate"
    );
    let stranger = Ca::new("stranger").leaf("dev1", false);
    assert_eq!(connect_error(tls_options(&server, &ca, Some(stranger))).await, None);

    let dev1 = Client::connect_with(tls_options(&server, &ca, Some(clients.leaf("dev1", false))))
        .await
        .unwrap();
    let ops = Client::connect_with(tls_options(&server, &ca, Some(clients.leaf("ops", false))))
        .await
        .unwrap();
    let mut watch = ops
        .subscribe("sensors.>", SubscriptionOptions::default())
        .await
        .unwrap();
    dev1.publish_acked("sensors.dev1.temp", "1").await.unwrap();
    assert_eq!(
        refused(dev1.publish_acked("sensors.dev2.temp", "2").await),
        ErrorCode::PermissionDenied
    );
    assert_eq!(
        refused(dev1.publish_acked("sensors.dev1.secret", "3").await),
        ErrorCode::PermissionDenied
    );
    // A batch with one denied message is refused whole.
    let mixed = vec![message("sensors.dev1.temp", "4"), message("sensors.dev2.temp", "5")];
    assert_eq!(
        refused(dev1.publish_batch(mixed, true).await),
        ErrorCode::PermissionDenied
    );
    dev1.publish_acked("sensors.dev1.temp", "6").await.unwrap();
    for want in ["1", "6"] {
        let Some(Event::Delivery(d)) = harness::within("the device's own readings", watch.next()).await else {
            panic!("no delivery")
        };
        assert_eq!(
            (d.topic.as_str(), &d.payload[..]),
            ("sensors.dev1.temp", want.as_bytes())
        );
    }
    let denied = dev1.subscribe("sensors.>", SubscriptionOptions::default()).await;
    assert_eq!(refused(denied), ErrorCode::PermissionDenied);
    let denied = dev1.subscribe("commands.dev2", SubscriptionOptions::default()).await;
    assert_eq!(refused(denied), ErrorCode::PermissionDenied);
    let mut commands = dev1
        .subscribe("commands.dev1", SubscriptionOptions::default())
        .await
        .unwrap();
    ops.publish_acked("commands.dev1", "reboot").await.unwrap();
    let Some(Event::Delivery(d)) = harness::within("a command", commands.next()).await else {
        panic!("no command")
    };
    assert_eq!(&d.payload[..], b"reboot");
    let metrics = server.bus().metrics();
    let denied = metrics.refused.iter().find(|(c, _)| *c == ErrorCode::PermissionDenied);
    assert!(denied.is_some_and(|(_, n)| *n >= 5), "{:?}", metrics.refused);
    server.shutdown().await;
}

/// New certificate files are picked up for new handshakes while a stream opened under
/// the old certificate goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_keeps_streams() {
    let (old_ca, new_ca) = (Ca::new("old-ca"), Ca::new("new-ca"));
    let files = ServerFiles::new(&old_ca, None);
    let mut config = BusConfig::default();
    config.grpc.tls = Some(files.config(false));
    let server = TestServer::start_with(config).await;
    let early = Client::connect_with(tls_options(&server, &old_ca, None)).await.unwrap();
    let mut sub = early
        .subscribe("reload.>", SubscriptionOptions::default())
        .await
        .unwrap();

    files.install(&new_ca);
    let deadline = Instant::now() + harness::PATIENCE;
    let late = loop {
        if let Ok(client) = Client::connect_with(tls_options(&server, &new_ca, None)).await {
            break client;
        }
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        connect_error(tls_options(&server, &old_ca, None)).await,
        None,
        "the old CA no longer fits"
    );
    late.publish_acked("reload.x", "after").await.unwrap();
    let Some(Event::Delivery(d)) = harness::within("a delivery on the old stream", sub.next()).await else {
        panic!("no delivery")
    };
    assert_eq!(&d.payload[..], b"after");
    early.publish_acked("reload.y", "still").await.unwrap();
    server.shutdown().await;
}

/// A refusing quota holds a flooding identity to its rate (what it got through is
/// bounded by the bucket, whatever the time it took) while another identity publishes
/// everything; a session quota refuses a second session of the same identity, and a
/// subscription quota a third subscription until one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_one_identity_not_another() {
    let (flood_token, flood_hash) = streambus::auth::new_token();
    let (calm_token, calm_hash) = streambus::auth::new_token();
    let mut limited = role("limited", rules(&[">"], &[]), rules(&[">"], &[]));
    limited.quota = Some(QuotaConfig {
        messages_per_second: 20,
        burst_messages: 40,
        when_exceeded: QuotaAction::Refuse,
        max_sessions: 1,
        max_subscriptions: 2,
        ..QuotaConfig::default()
    });
    let config = BusConfig {
        auth: AuthConfig {
            enabled: true,
            users: vec![
                UserConfig {
                    token_hash: Some(flood_hash),
                    ..user("flood", &["limited"])
                },
                UserConfig {
                    token_hash: Some(calm_hash),
                    ..user("calm", &["all"])
                },
            ],
            roles: vec![limited, role("all", rules(&[">"], &[]), rules(&[">"], &[]))],
            ..AuthConfig::default()
        },
        ..BusConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let options = |token: &str| ClientOptions::new(server.url()).reconnect(false).token(token);
    let flood = Client::connect_with(options(&flood_token)).await.unwrap();
    let calm = Client::connect_with(options(&calm_token)).await.unwrap();
    assert_eq!(
        connect_error(options(&flood_token)).await,
        Some(tonic::Code::ResourceExhausted),
        "one session per flooding identity"
    );

    // Two subscriptions at once, then a third is refused until one goes.
    let first = flood.subscribe("a.>", SubscriptionOptions::default()).await.unwrap();
    let _second = flood.subscribe("b.>", SubscriptionOptions::default()).await.unwrap();
    let third = flood.subscribe("c.>", SubscriptionOptions::default()).await;
    assert_eq!(refused(third), ErrorCode::ResourceExhausted);
    drop(first);
    let deadline = Instant::now() + harness::PATIENCE;
    while flood.subscribe("c.>", SubscriptionOptions::default()).await.is_err() {
        assert!(Instant::now() < deadline, "the subscription slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let (mut accepted, mut limited) = (0u32, 0u32);
    for i in 0..400 {
        let (a, b) = tokio::join!(
            flood.publish_acked("flood.x", i.to_string()),
            calm.publish_acked("calm.x", i.to_string())
        );
        b.unwrap();
        match a {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert_eq!(refused::<()>(Err(e)), ErrorCode::ResourceExhausted);
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The bucket: the burst, plus the rate over the time taken.
    let bound = 40.0 + 20.0 * elapsed + 1.0;
    assert!(
        f64::from(accepted) <= bound,
        "{accepted} accepted in {elapsed:.2} s (bound {bound:.0})"
    );
    assert_eq!(accepted + limited, 400);
    assert!(limited > 0 || elapsed > 17.0, "nothing was limited in {elapsed:.2} s");
    drop(flood);
    // The session slot comes back once the first session is gone.
    let deadline = Instant::now() + harness::PATIENCE;
    while Client::connect_with(options(&flood_token)).await.is_err() {
        assert!(Instant::now() < deadline, "the session slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// `streambus passwd` prints a hash that the server takes for that password, and
/// `--token` a token with its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_makes_working_secrets() {
    use std::io::Write as _;
    let bin = Path::new(env!("CARGO_BIN_EXE_streambus"));
    let mut child = std::process::Command::new(bin)
        .arg("passwd")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"correct horse\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let out = std::process::Command::new(bin)
        .args(["passwd", "--token"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap()
    };
    let (token, token_hash) = (field("token:"), field("token_hash:"));

    let config = BusConfig {
        auth: AuthConfig {
            enabled: true,
            users: vec![UserConfig {
                password_hash: Some(hash),
                token_hash: Some(token_hash),
                ..user("someone", &["all"])
            }],
            roles: roles(),
            ..AuthConfig::default()
        },
        ..BusConfig::default()
    };
    config.validate().unwrap();
    let server = TestServer::start_with(config).await;
    let options = || ClientOptions::new(server.url()).reconnect(false);
    Client::connect_with(options().user("someone", "correct horse"))
        .await
        .unwrap();
    Client::connect_with(options().token(token)).await.unwrap();
    assert_eq!(
        connect_error(options().user("someone", "wrong horse")).await,
        Some(tonic::Code::Unauthenticated)
    );
    server.shutdown().await;
}

/// The admin plane asks for the same identities: probes stay open, no credentials get
/// 401 with a Basic challenge, a read-only role reads but is refused actions (403), an
/// admin acts. The CLI reaches the same server with a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_plane_roles() {
    let (viewer_token, viewer_hash) = streambus::auth::new_token();
    let (ops_token, ops_hash) = streambus::auth::new_token();
    let mut viewer = role("viewer", rules(&[">"], &[]), rules(&[">"], &[]));
    viewer.admin = streambus::types::config::AdminAccess::Read;
    let mut operator = role("operator", rules(&[">"], &[]), rules(&[">"], &[]));
    operator.admin = streambus::types::config::AdminAccess::Admin;
    let config = BusConfig {
        auth: AuthConfig {
            enabled: true,
            users: vec![
                UserConfig {
                    token_hash: Some(viewer_hash),
                    ..user("viewer", &["viewer"])
                },
                UserConfig {
                    token_hash: Some(ops_hash),
                    password_hash: Some(streambus::auth::hash_password("pw").unwrap()),
                    ..user("ops", &["operator"])
                },
            ],
            roles: vec![viewer, operator],
            ..AuthConfig::default()
        },
        ..BusConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("streambus.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let served = served::Served::start(&["--grpc-addr", "127.0.0.1:0", "--config", path.to_str().unwrap()], &[]);
    let admin = served.admin.clone().unwrap();
    let http = reqwest::Client::new();
    let status = |request: reqwest::RequestBuilder| async move { request.send().await.unwrap() };

    assert_eq!(status(http.get(format!("{admin}/healthz"))).await.status(), 200);
    let anonymous = status(http.get(format!("{admin}/api/v1/overview"))).await;
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().get("www-authenticate").is_some());
    let bad = status(http.get(format!("{admin}/metrics")).bearer_auth("guess")).await;
    assert_eq!(bad.status(), 401);
    let read = status(http.get(format!("{admin}/api/v1/overview")).bearer_auth(&viewer_token)).await;
    assert_eq!(read.status(), 200);
    let metrics = status(http.get(format!("{admin}/metrics")).bearer_auth(&viewer_token)).await;
    assert_eq!(metrics.status(), 200);
    let publish = |token: &str| {
        http.post(format!("{admin}/api/v1/publish"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "topic": "admin.x", "payload": "hi" }))
    };
    let refused = status(publish(&viewer_token)).await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "permission_denied");
    assert_eq!(status(publish(&ops_token)).await.status(), 200);
    let basic = http
        .get(format!("{admin}/api/v1/sessions"))
        .basic_auth("ops", Some("pw"));
    assert_eq!(status(basic).await.status(), 200);

    // The CLI, with a token, and refused without one.
    let bin = Path::new(env!("CARGO_BIN_EXE_streambus"));
    let cli = |extra: &[&str]| {
        std::process::Command::new(bin)
            .args(["pub", "admin.cli", "hello", "--url", &served.url])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = cli(&["--token", &ops_token]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let no = cli(&[]);
    assert!(!no.status.success());
    assert!(
        String::from_utf8_lossy(&no.stderr).contains("Unauthenticated")
            || String::from_utf8_lossy(&no.stderr).contains("credentials"),
        "{}",
        String::from_utf8_lossy(&no.stderr)
    );
    served.terminate();
}

/// A client in another language: Python's grpcio over TLS with a bearer token
/// (`tests/python/tls_client.py`, Debian's python3-grpcio and python3-grpc-tools, which
/// `.ci/packages` installs). Skipped where they are missing, unless `CI=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_over_tls_with_a_token() {
    let python = "/usr/bin/python3";
    let present = std::process::Command::new(python)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Python grpcio is not installed (.ci/packages installs it)"
        );
        eprintln!("skipped: Python grpcio is not installed");
        return;
    }
    let ca = Ca::new("py-ca");
    let files = ServerFiles::new(&ca, None);
    std::fs::write(files.path("ca.pem"), ca.pem()).unwrap();
    let (token, hash) = streambus::auth::new_token();
    let mut config = BusConfig::default();
    config.grpc.tls = Some(files.config(false));
    config.auth = AuthConfig {
        enabled: true,
        users: vec![UserConfig {
            token_hash: Some(hash),
            ..user("python", &["all"])
        }],
        roles: roles(),
        ..AuthConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tls_client.py");
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .env("STREAMBUS_ADDR", server.handle.local_addr().to_string())
        .env("STREAMBUS_CA", files.path("ca.pem"))
        .env("STREAMBUS_TOKEN", &token)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "python client: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown().await;
}

/// JWT bearer tokens: signed by the configured key, from the configured issuer, not
/// expired; the identity, roles and extra permissions come from claims; a stream
/// opened with a token that expires ends with UNAUTHENTICATED when it does. The token
/// goes in the `hello` frame here (for clients that cannot set metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claims_and_expiry() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use streambus::types::config::{JwtAlgorithm, JwtConfig};

    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let public = dir.path().join("jwt.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let config = BusConfig {
        auth: AuthConfig {
            enabled: true,
            roles: roles(),
            jwt: Some(JwtConfig {
                public_key_file: public.to_str().unwrap().to_owned(),
                algorithm: JwtAlgorithm::ES256,
                issuer: Some("test-issuer".into()),
                audience: None,
                identity_claim: "sub".into(),
                roles_claim: Some("roles".into()),
                permissions_claim: Some("streambus".into()),
                leeway_s: 0,
            }),
            ..AuthConfig::default()
        },
        ..BusConfig::default()
    };
    let server = TestServer::start_with(config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signer = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let sign = |claims: serde_json::Value, signer: &EncodingKey| {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, signer).unwrap()
    };
    let device = |exp: u64| {
        serde_json::json!({
            "sub": "dev3", "iss": "test-issuer", "exp": exp, "roles": ["device"],
            "streambus": { "publish": { "allow": ["extra.{name}"] } }
        })
    };
    let options = || ClientOptions::new(server.url()).reconnect(false);
    let dev3 = Client::connect_with(options().token(sign(device(now + 600), &signer)))
        .await
        .unwrap();
    dev3.publish_acked("sensors.dev3.temp", "1").await.unwrap();
    dev3.publish_acked("extra.dev3", "2").await.unwrap();
    assert_eq!(
        refused(dev3.publish_acked("sensors.dev4.temp", "3").await),
        ErrorCode::PermissionDenied
    );

    let unauthenticated = Some(tonic::Code::Unauthenticated);
    let expired = sign(device(now - 60), &signer);
    assert_eq!(connect_error(options().token(expired)).await, unauthenticated);
    let mut foreign = device(now + 600);
    foreign["iss"] = "someone-else".into();
    assert_eq!(
        connect_error(options().token(sign(foreign, &signer))).await,
        unauthenticated
    );
    let other_key = EncodingKey::from_ec_pem(KeyPair::generate().unwrap().serialize_pem().as_bytes()).unwrap();
    assert_eq!(
        connect_error(options().token(sign(device(now + 600), &other_key))).await,
        unauthenticated
    );

    // A token with three seconds left, in the hello frame: admitted, then cut off.
    let mut raw = harness::RawSession::open(server.channel().await).await;
    raw.send(harness::Out::Hello(pb::Hello {
        client_name: "short-lived".into(),
        token: sign(device(now + 3), &signer),
        ..Default::default()
    }))
    .await;
    raw.start().await.unwrap();
    assert!(matches!(raw.next().await, harness::In::Welcome(_)));
    let status = tokio::time::timeout(Duration::from_secs(15), raw.end_status())
        .await
        .expect("the stream outlived its token")
        .expect("the stream ended with a status");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    server.shutdown().await;
}

/// The admin plane over HTTPS (`[admin.tls]`): a client trusting the CA gets its probes
/// over TLS, and the served address says `https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_plane_over_https() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let ca = Ca::new("admin-ca");
    let files = ServerFiles::new(&ca, None);
    let mut config = BusConfig::default();
    config.admin.tls = Some(files.config(false));
    let path = files.path("streambus.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let served = served::Served::start(&["--grpc-addr", "127.0.0.1:0", "--config", path.to_str().unwrap()], &[]);
    let admin = served.admin.clone().unwrap();
    let addr = admin.strip_prefix("https://").expect("the admin plane says https");

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = streambus::tls::install_crypto_provider();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    harness::within("the health answer", tls.read_to_string(&mut response))
        .await
        .ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Plain HTTP to the HTTPS port gets no answer of the admin plane.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    served.terminate();
}

/// SIGHUP reloads the certificate of `streambus serve` at once (here with the polling
/// turned off, `reload_check_ms = 0`): new handshakes need the new CA, and a stream
/// opened before goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let (old_ca, new_ca) = (Ca::new("hup-old"), Ca::new("hup-new"));
    let files = ServerFiles::new(&old_ca, None);
    let mut config = BusConfig::default();
    let mut tls = files.config(false);
    tls.reload_check_ms = 0;
    config.grpc.tls = Some(tls);
    let path = files.path("streambus.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let served = served::Served::start(
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--no-admin",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    let port = served.url.rsplit(':').next().unwrap().to_owned();
    let options = |ca: &Ca| {
        let tls = ClientTls {
            ca_pem: ca.pem().into_bytes(),
            identity: None,
            domain: Some("localhost".into()),
        };
        ClientOptions::new(format!("https://127.0.0.1:{port}"))
            .reconnect(false)
            .tls(tls)
    };
    let early = Client::connect_with(options(&old_ca)).await.unwrap();
    let mut sub = early.subscribe("hup.>", SubscriptionOptions::default()).await.unwrap();
    files.install(&new_ca);
    // Nothing polls: the old certificate is still served until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Client::connect_with(options(&old_ca)).await.unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + harness::PATIENCE;
    let late = loop {
        if let Ok(client) = Client::connect_with(options(&new_ca)).await {
            break client;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not load the new certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    late.publish_acked("hup.x", "after").await.unwrap();
    let Some(Event::Delivery(d)) = harness::within("a delivery on the old stream", sub.next()).await else {
        panic!("no delivery")
    };
    assert_eq!(&d.payload[..], b"after");
    drop((early, late));
    served.terminate();
}
