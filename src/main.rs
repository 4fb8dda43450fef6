//! The `streambus` command: run the server, publish, subscribe, and the article's chat
//! client.
//!
//! ```text
//! streambus serve                          # gRPC on 127.0.0.1:50051, admin on :8080
//! streambus sub 'sensors.>'                # print what arrives, like `nats sub`
//! streambus pub sensors.dev1.temp 21.5     # publish and wait for the ack
//! streambus chat hello world               # stream.ChatService/BidirectionalChat
//! streambus passwd < password.txt          # a password hash for [[auth.users]]
//! ```
//!
//! Exit status: 0 when the command did what it was asked (for `serve`: it stopped on a
//! signal and delivered everything it had admitted), 1 on an error (printed as one line
//! with its causes, no backtrace), 3 when `serve` stopped but its drain did not complete
//! (messages were left undelivered; the log says which subscriptions).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use streambus::client::{Client, ClientOptions, ClientTls};
use streambus::proto::stream::Message as ChatMessage;
use streambus::proto::stream::chat_service_client::ChatServiceClient;
use streambus::{Bus, Event, Message, OverflowPolicy, SubscriptionOptions, Topic};
use tokio::io::AsyncBufReadExt;
use tracing_subscriber::EnvFilter;

/// An actor-model message bus on gRPC bidirectional streams.
#[derive(Debug, Parser)]
#[command(name = "streambus", version, about)]
struct Cli {
    /// Log format on standard error: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "STREAMBUS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (gRPC on 127.0.0.1:50051 and the admin plane on 127.0.0.1:8080
    /// unless configured otherwise).
    Serve {
        /// Address to listen on (overrides `grpc.addr`).
        #[arg(long, env = "STREAMBUS_GRPC_ADDR")]
        grpc_addr: Option<SocketAddr>,
        /// Address of the admin plane: health, metrics, JSON API, dashboard (overrides
        /// `admin.addr`).
        #[arg(long, env = "STREAMBUS_ADMIN_ADDR", conflicts_with = "no_admin")]
        admin_addr: Option<SocketAddr>,
        /// Do not start the admin plane (overrides `admin.enabled`).
        #[arg(long)]
        no_admin: bool,
        /// NATS servers of the cluster to federate over, comma-separated
        /// (`nats://127.0.0.1:4222,nats://127.0.0.1:4223`; overrides `cluster.servers`).
        #[arg(long, env = "STREAMBUS_CLUSTER", value_delimiter = ',')]
        cluster: Vec<String>,
        /// This node's name in the cluster (overrides `cluster.node`; the host name by default).
        #[arg(long, env = "STREAMBUS_NODE")]
        node: Option<String>,
        /// TOML configuration file (see streambus.example.toml). `STREAMBUS_<SECTION>__<KEY>`
        /// environment variables override it.
        #[arg(long, env = "STREAMBUS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Publish a message and wait for the server's ack.
    Pub {
        /// Concrete topic, e.g. `sensors.dev1.temperature`.
        topic: String,
        /// The payload (UTF-8).
        message: String,
        /// Publish it this many times (in batches).
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// A header `KEY=VALUE`; repeat for more.
        #[arg(long = "header", value_name = "KEY=VALUE")]
        headers: Vec<String>,
        /// Keep it as the topic's retained value.
        #[arg(long)]
        retain: bool,
        /// Wait for the durable ack: every durable sink matching the topic has it on disk.
        #[arg(long)]
        durable: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Subscribe and print what arrives until interrupted (or `--count` messages).
    Sub {
        /// Filter; `*` matches one token, a final `>` the rest.
        filter: String,
        /// Join this queue group (each message goes to one member).
        #[arg(long)]
        group: Option<String>,
        /// What the server does when this subscriber falls behind.
        #[arg(long, value_enum)]
        overflow: Option<Overflow>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print an argon2id hash of a password read from standard input (one line), for
    /// `password_hash` in `[[auth.users]]`; with `--token`, make a random token and print
    /// it with its hash, for `token_hash`.
    Passwd {
        /// Make a token instead of hashing a password.
        #[arg(long)]
        token: bool,
    },
    /// The article's chat client: sends each message, prints each echo.
    Chat {
        /// Messages to send; with none, each line of standard input is one.
        messages: Vec<String>,
        /// Pause between messages, as in the article (500 ms).
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, clap::Args)]
struct ServerArg {
    /// Server URL (`https://…` for TLS); several, comma-separated, to fail over between
    /// the nodes of one bus.
    #[arg(
        long,
        env = "STREAMBUS_URL",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ','
    )]
    url: Vec<String>,
    /// Bearer token.
    #[arg(long, env = "STREAMBUS_TOKEN", hide_env_values = true, conflicts_with = "user")]
    token: Option<String>,
    /// User name (the password from `--password` or STREAMBUS_PASSWORD).
    #[arg(long, env = "STREAMBUS_USER", requires = "password")]
    user: Option<String>,
    /// Password of `--user`.
    #[arg(long, env = "STREAMBUS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// CA certificate (PEM) that signs the server's certificate.
    #[arg(long, env = "STREAMBUS_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, env = "STREAMBUS_TLS_CERT", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// Client key (PEM), for mutual TLS.
    #[arg(long, env = "STREAMBUS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name to check the server's certificate against (default: the URL's host).
    #[arg(long)]
    tls_domain: Option<String>,
}

impl ServerArg {
    /// Client options for a client called `name`.
    fn options(&self, name: &str) -> anyhow::Result<ClientOptions> {
        let (first, rest) = self.url.split_first().context("no server URL")?;
        let mut options = ClientOptions::new(first).name(name).reconnect(false);
        for url in rest {
            options = options.fallback(url);
        }
        if let Some(token) = &self.token {
            options = options.token(token);
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user(user, password);
        }
        if let Some(ca) = &self.tls_ca {
            let mut tls = ClientTls::from_files(ca, self.tls_cert.as_deref(), self.tls_key.as_deref())?;
            tls.domain = self.tls_domain.clone();
            options = options.tls(tls);
        }
        Ok(options)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Overflow {
    Block,
    DropOldest,
    DropNewest,
    Disconnect,
}

impl From<Overflow> for OverflowPolicy {
    fn from(o: Overflow) -> Self {
        match o {
            Overflow::Block => OverflowPolicy::Block,
            Overflow::DropOldest => OverflowPolicy::DropOldest,
            Overflow::DropNewest => OverflowPolicy::DropNewest,
            Overflow::Disconnect => OverflowPolicy::Disconnect,
        }
    }
}

/// The binary's allocator: jemalloc with its background threads, which give freed
/// pages back to the system within its decay time (10 s). After a flood of sessions and
/// subscriptions has gone, the server's memory comes back down, where glibc's malloc
/// (and mimalloc, whose pages wait for their idle owning thread) keep it; see
/// docs/RELIABILITY.md. The library leaves the choice to the program that embeds it.
/// Built without the `jemalloc` feature, the binary uses the system allocator (what
/// heap profilers such as valgrind's DHAT see).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status of a `serve` whose drain left messages undelivered.
const EXIT_DRAIN_INCOMPLETE: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = log_filter(std::env::var("RUST_LOG").ok(), default_level);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    // One crypto provider for every TLS user in the process (ring), before any of them.
    streambus::tls::install_crypto_provider();
    match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            // The chain on one line, as the user needs it; backtraces are for panics.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter: `RUST_LOG` if set and valid, else `default_level`; with `ractor=warn`
/// added unless the filter names ractor itself. The actor runtime opens an INFO span per
/// actor and enters it at every message: at 100,000 topic actors that span alone holds
/// about 80 MB and costs every message an enter and an exit, and it says nothing the
/// bus's own logs do not (they carry the session or topic).
fn log_filter(env: Option<String>, default_level: &str) -> EnvFilter {
    let spec = env
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default_level.to_owned());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(default_level));
    if spec.contains("ractor") {
        filter
    } else {
        filter.add_directive("ractor=warn".parse().expect("a valid directive"))
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let done = ExitCode::SUCCESS;
    match command {
        Command::Serve {
            grpc_addr,
            admin_addr,
            no_admin,
            cluster,
            node,
            config,
        } => serve(grpc_addr, admin_addr, no_admin, cluster, node, config).await,
        Command::Pub {
            topic,
            message,
            count,
            headers,
            retain,
            durable,
            server,
        } => publish(&server, &topic, message, count, headers, retain, durable)
            .await
            .map(|()| done),
        Command::Sub {
            filter,
            group,
            overflow,
            count,
            server,
        } => subscribe(&server, &filter, group, overflow, count).await.map(|()| done),
        Command::Passwd { token } => passwd(token).map(|()| done),
        Command::Chat {
            messages,
            interval_ms,
            server,
        } => chat(&server, messages, Duration::from_millis(interval_ms))
            .await
            .map(|()| done),
    }
}

async fn serve(
    grpc_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    no_admin: bool,
    cluster: Vec<String>,
    node: Option<String>,
    config_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut config = streambus::config::load(config_file.as_deref())?;
    if let Some(addr) = grpc_addr {
        config.grpc.addr = addr;
    }
    if let Some(addr) = admin_addr {
        config.admin.addr = addr;
    }
    if no_admin {
        config.admin.enabled = false;
    }
    if !cluster.is_empty() {
        config.cluster.servers = cluster;
    }
    if let Some(node) = node {
        config.cluster.node = node;
    }
    let listener =
        streambus::server::bind(config.grpc.addr).with_context(|| format!("cannot listen on {}", config.grpc.addr))?;
    let addr = listener.local_addr()?;
    let admin_config = config.admin.clone();
    // With authentication on, the admin plane asks for the same identities, checked by
    // the one authenticator the gRPC API uses.
    let authenticator = match config.auth.enabled {
        true => Some(std::sync::Arc::new(
            streambus::auth::Authenticator::new(config.auth.clone()).map_err(|e| anyhow::anyhow!("auth: {e}"))?,
        )),
        false => None,
    };
    let gate = authenticator
        .clone()
        .map(|a| std::sync::Arc::new(streambus::auth::AdminGate(a)) as streambus_admin::SharedGate);
    let admin_tls = match &admin_config.tls {
        Some(tls) => Some(streambus::tls::server_config(tls).context("admin.tls")?),
        None => None,
    };
    let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
    let federate = config.cluster.enabled();
    let bus = Bus::start(config).await?;
    let cluster = if federate {
        match streambus_cluster::Cluster::start(&bus).await {
            Ok(cluster) => Some(cluster),
            Err(e) => {
                bus.shutdown().await;
                return Err(anyhow::Error::new(e).context("cannot join the cluster"));
            }
        }
    } else {
        None
    };
    let admin = if admin_config.enabled {
        let at = admin_config.addr;
        match streambus_admin::Admin::start_with(bus.clone(), admin_config, gate, admin_tls, cluster.clone()) {
            Ok(admin) => Some(admin),
            Err(e) => {
                if let Some(cluster) = &cluster {
                    cluster.shutdown().await;
                }
                bus.shutdown().await;
                return Err(anyhow::Error::new(e).context(format!("cannot start the admin plane on {at}")));
            }
        }
    } else {
        None
    };
    // The lines scripts wait for (the ports are real even when configured as port 0),
    // written at once: a reader that stops after the first line loses nothing.
    let mut banner = format!("streambus listening on {addr}\n");
    if let Some(admin) = &admin {
        banner.push_str(&format!("streambus admin on {admin_scheme}://{}\n", admin.addr()));
    }
    if let Some(cluster) = &cluster {
        banner.push_str(&format!("streambus cluster node {}\n", cluster.snapshot().origin));
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    // On the signal the node leaves the cluster first (what it published is forwarded,
    // nothing more comes in), then drains its own clients.
    let leave = cluster.clone();
    let signal = async move {
        shutdown_signal().await;
        if let Some(cluster) = leave {
            cluster.shutdown().await;
        }
    };
    let report = streambus::server::serve_with_auth(bus, listener, signal, authenticator).await;
    // The admin plane answers (`/readyz` says draining) until the server has drained.
    if let Some(admin) = admin {
        admin.stop().await;
    }
    let report = report?;
    Ok(if report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRAIN_INCOMPLETE)
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

async fn connect(server: &ServerArg, name: &str) -> anyhow::Result<Client> {
    Client::connect_with(server.options(name)?)
        .await
        .with_context(|| format!("cannot reach a streambus server at {}", server.url.join(", ")))
}

/// `streambus passwd`: a password hash, or a new token and its hash.
fn passwd(token: bool) -> anyhow::Result<()> {
    if token {
        let (token, hash) = streambus::auth::new_token();
        println!("token:      {token}");
        println!("token_hash: {hash}");
        return Ok(());
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    let hash = streambus::auth::hash_password(password).map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    println!("{hash}");
    Ok(())
}

async fn publish(
    server: &ServerArg,
    topic: &str,
    payload: String,
    count: u64,
    headers: Vec<String>,
    retain: bool,
    durable: bool,
) -> anyhow::Result<()> {
    let headers = headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("header {h:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut message = Message::new(Topic::new(topic)?, payload).with_headers(headers);
    message.retain = retain;
    let client = connect(server, "streambus-pub").await?;
    let per_batch = client.welcome().map_or(1, |w| w.max_batch_messages.max(1));
    let mut accepted = 0;
    while accepted < count {
        let n = (count - accepted).min(per_batch);
        let batch = (0..n).map(|_| message.clone()).collect();
        accepted += if durable {
            client.publish_durable(batch).await?
        } else {
            client.publish_batch(batch, true).await?
        };
    }
    client.close();
    let how = if durable { " (durable)" } else { "" };
    println!("published {accepted} message(s) to {topic}{how}");
    Ok(())
}

async fn subscribe(
    server: &ServerArg,
    filter: &str,
    group: Option<String>,
    overflow: Option<Overflow>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let mut options = SubscriptionOptions::default();
    if let Some(group) = group {
        options = options.queue_group(group);
    }
    if let Some(o) = overflow {
        options = options.overflow(o.into());
    }
    let client = connect(server, "streambus-sub").await?;
    let mut subscription = client.subscribe(filter, options).await?;
    eprintln!("subscribed to {filter}");
    let mut received = 0;
    loop {
        let event = tokio::select! {
            event = subscription.next() => event,
            () = shutdown_signal() => break,
        };
        match event {
            Some(Event::Delivery(d)) => {
                received += 1;
                let retained = if d.retained { " (retained)" } else { "" };
                println!(
                    "[#{}] {}{}: {}",
                    d.sequence,
                    d.topic.as_str(),
                    retained,
                    String::from_utf8_lossy(&d.payload)
                );
                if count.is_some_and(|c| received >= c) {
                    break;
                }
            }
            Some(Event::Gap(g)) => println!(
                "[gap] {}: {} message(s) dropped (#{}..#{})",
                g.topic.as_str(),
                g.dropped,
                g.first_sequence,
                g.last_sequence
            ),
            Some(Event::Closed(reason)) => {
                // Not the user's doing (a count reached, Ctrl-C): a failure, so a script
                // or supervisor running `sub` sees it.
                client.close();
                anyhow::bail!("subscription closed: {}", reason.as_str());
            }
            None => break,
        }
    }
    client.close();
    Ok(())
}

/// The article's client: one task sends (pausing between messages), this one prints
/// the echoes until the server ends the stream.
async fn chat(server: &ServerArg, messages: Vec<String>, interval: Duration) -> anyhow::Result<()> {
    let options = server.options("chat")?;
    let mut client = chat_client(&options).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<ChatMessage>(64);
    let sender = tokio::spawn(async move {
        let send = |content: String| {
            let tx = tx.clone();
            async move { tx.send(ChatMessage { content, timestamp: 0 }).await.is_ok() }
        };
        if messages.is_empty() {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !send(line).await {
                    break;
                }
            }
        } else {
            for (i, content) in messages.into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                if !send(content).await {
                    break;
                }
            }
        }
        // Dropping the last sender ends the request stream (CloseSend).
    });
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    options.auth.apply(&mut request);
    let mut echoes = client.bidirectional_chat(request).await?.into_inner();
    while let Some(reply) = echoes.message().await? {
        println!("Received: {}", reply.content);
    }
    sender.await?;
    Ok(())
}

/// A chat client for `url`. (Generated clients have no `connect(url)` here: it would
/// clash with the bus service's `Connect` rpc.)
async fn chat_client(options: &ClientOptions) -> anyhow::Result<ChatServiceClient<tonic::transport::Channel>> {
    let channel = options
        .endpoint()?
        .connect()
        .await
        .with_context(|| format!("cannot reach a streambus server at {}", options.url))?;
    Ok(ChatServiceClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    /// The actor runtime's per-actor span is off unless the filter asks for ractor; a
    /// filter that does not parse falls back to the default level.
    #[test]
    fn log_filter_quiets_the_actor_runtime() {
        let shown = |env: Option<&str>| log_filter(env.map(str::to_owned), "info").to_string();
        assert!(shown(None).contains("ractor=warn"));
        assert!(shown(None).contains("info"));
        assert!(shown(Some("debug")).contains("ractor=warn"));
        let explicit = shown(Some("info,ractor=trace"));
        assert!(explicit.contains("ractor=trace") && !explicit.contains("ractor=warn"));
        let fallback = shown(Some("=not a filter="));
        assert!(
            fallback.contains("info") && fallback.contains("ractor=warn"),
            "{fallback}"
        );
    }
}
