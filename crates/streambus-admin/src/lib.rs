//! The streambus admin plane, on actix-web: health probes, Prometheus metrics, a JSON
//! API and a live dashboard, all read from a running [`Bus`] through its public handles
//! and snapshots (this crate knows nothing of gRPC).
//!
//! ```no_run
//! # async fn demo(bus: streambus_core::Bus) -> std::io::Result<()> {
//! let admin = streambus_admin::Admin::start(bus, Default::default())?;
//! println!("admin on http://{}", admin.addr());
//! admin.stop().await;
//! # Ok(()) }
//! ```
//!
//! Endpoints (every error answers with the one body of [`ApiError`]):
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /healthz` | alive: the bus's supervisors answer |
//! | `GET /readyz` | ready for streams: not draining, and (if configured) no sink quarantined |
//! | `GET /metrics` | Prometheus text format (module [`metrics`]) |
//! | `GET /api/v1/overview` | version, uptime, configuration summary, totals |
//! | `GET /api/v1/sessions`, `/sessions/{id}` | sessions, paged like NATS `connz` |
//! | `POST /api/v1/sessions/{id}/close` | close a session gracefully |
//! | `GET /api/v1/topics`, `/subscriptions`, `/sinks`, `/tree` | the rest of the bus |
//! | `POST /api/v1/sinks/{name}/restart` | restart a quarantined sink |
//! | `POST /api/v1/publish` | publish one message (JSON body) |
//! | `GET /api/v1/cluster` | the cluster backplane: node, NATS connection, forwarded, received, gaps (404 on a lone node) |
//! | `GET /` | the dashboard; `GET /api/v1/dashboard` its data, `/api/v1/dashboard/stream` the same as server-sent events |
//!
//! Modules: `api` (the JSON API), [`metrics`] (the Prometheus exposition),
//! `dashboard` (the page and its live feed), `health` (the probes), [`error`].
//!
//! The server runs one actix worker (a thread of its own with its own runtime), so an
//! operator's request never competes with the bus's tokio workers for a slot, and
//! the bus's hot path pays nothing for the admin plane beyond the counters it keeps
//! anyway.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use streambus_core::{Bus, SessionHandle};
use streambus_types::config::AdminConfig;

mod api;
mod dashboard;
pub mod error;
pub mod gate;
mod health;
pub mod metrics;

pub use error::ApiError;
pub use gate::{Gate, SharedGate};

/// What every handler shares.
pub struct AdminState {
    /// The bus it shows and steers.
    bus: Bus,
    /// Its `[admin]` section.
    config: AdminConfig,
    /// The session `POST /api/v1/publish` publishes through (named `http`), opened on
    /// first use; the async lock serializes only its (re)opening.
    http_session: tokio::sync::Mutex<Option<SessionHandle>>,
    /// Checks credentials when authentication is on (see [`gate`]).
    gate: Option<SharedGate>,
    /// The node's cluster backplane, when it federates.
    cluster: Option<streambus_cluster::Cluster>,
}

impl AdminState {
    /// The state for `bus` with `config`.
    pub fn new(bus: Bus, config: AdminConfig) -> Self {
        AdminState {
            bus,
            config,
            http_session: tokio::sync::Mutex::new(None),
            gate: None,
            cluster: None,
        }
    }

    /// Shows the node's cluster backplane (`/api/v1/cluster`, `streambus_cluster_*`).
    pub fn with_cluster(mut self, cluster: streambus_cluster::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Asks every request but the probes for credentials, checked by `gate`.
    pub fn with_gate(mut self, gate: SharedGate) -> Self {
        self.gate = Some(gate);
        self
    }
}

/// Registers every route on an actix app; what [`Admin::start`] serves, and what
/// handler tests mount with `actix_web::test::init_service`.
pub fn routes(state: web::Data<AdminState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(state)
            .route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(health::readyz))
            .service(
                web::scope("")
                    .wrap(actix_web::middleware::from_fn(gate::check))
                    .route("/metrics", web::get().to(health::metrics))
                    .route("/", web::get().to(dashboard::page))
                    .service(api_routes())
                    .default_service(web::to(not_found)),
            );
    }
}

/// The JSON API under `/api/v1`.
fn api_routes() -> actix_web::Scope {
    web::scope("/api/v1")
        .route("/overview", web::get().to(api::overview))
        .route("/sessions", web::get().to(api::sessions))
        .route("/sessions/{id}", web::get().to(api::session))
        .route("/sessions/{id}/close", web::post().to(api::close_session))
        .route("/topics", web::get().to(api::topics))
        .route("/subscriptions", web::get().to(api::subscriptions))
        .route("/sinks", web::get().to(api::sinks))
        .route("/sinks/{name}/restart", web::post().to(api::restart_sink))
        .route("/tree", web::get().to(api::supervision_tree))
        .route("/publish", web::post().to(api::publish))
        .route("/cluster", web::get().to(api::cluster))
        .route("/dashboard", web::get().to(dashboard::state))
        .route("/dashboard/stream", web::get().to(dashboard::stream))
}

/// Any other path.
async fn not_found(request: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no endpoint {} {}",
        request.method(),
        request.path()
    )))
}

/// The running admin server.
pub struct Admin {
    /// Where it listens (the real port, also when configured with port 0).
    addr: SocketAddr,
    /// Stops the server; dropping it stops nothing.
    handle: ServerHandle,
    /// The server's task on the caller's runtime (it waits for the worker thread).
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Admin {
    /// Binds `config.addr` and serves the admin plane for `bus` on one worker thread.
    /// Must be called within a tokio runtime.
    pub fn start(bus: Bus, config: AdminConfig) -> std::io::Result<Admin> {
        Admin::start_with(bus, config, None, None, None)
    }

    /// Like [`Admin::start`], with every endpoint but the probes behind `gate`, over
    /// HTTPS with `tls` (HTTP/1.1 and HTTP/2 are offered by ALPN), showing `cluster`.
    pub fn start_with(
        bus: Bus,
        config: AdminConfig,
        gate: Option<SharedGate>,
        tls: Option<tokio_rustls::rustls::ServerConfig>,
        cluster: Option<streambus_cluster::Cluster>,
    ) -> std::io::Result<Admin> {
        let listener = std::net::TcpListener::bind(config.addr)?;
        let addr = listener.local_addr()?;
        let mut state = AdminState::new(bus, config);
        state.gate = gate;
        state.cluster = cluster;
        let state = web::Data::new(state);
        let server = HttpServer::new(move || App::new().configure(routes(state.clone())))
            .workers(1)
            // The process's one shutdown path owns the signals.
            .disable_signals()
            .shutdown_timeout(2);
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        }
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        tracing::info!(%addr, "admin plane listening");
        Ok(Admin { addr, handle, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it: open requests get two seconds, live dashboard streams are cut.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}
