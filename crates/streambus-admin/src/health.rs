//! The probes (`/healthz`, `/readyz`) and the `/metrics` handler.
//!
//! - `/healthz` (liveness): 200 when the bus's supervisors answer a call in time, 503
//!   otherwise; an orchestrator restarts a process that fails it.
//! - `/readyz` (readiness): 200 while the bus takes new streams; 503 while it drains
//!   for shutdown, and, with `admin.ready_requires_sinks`, while a sink is quarantined,
//!   so that a load balancer stops sending devices to it.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::AdminState;
use crate::error::ApiError;
use crate::metrics::{Scrape, render};

/// `GET /healthz`.
pub(crate) async fn healthz(state: web::Data<AdminState>) -> HttpResponse {
    match state.bus.counters().await {
        Ok(c) => HttpResponse::Ok().json(json!({ "status": "ok", "uptime_seconds": c.uptime_seconds })),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({ "status": "unavailable", "reason": e.to_string() })),
    }
}

/// `GET /readyz`.
pub(crate) async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    if !state.bus.is_accepting() {
        return HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": "draining" }));
    }
    if state.config.ready_requires_sinks {
        let sinks = match state.bus.sinks().await {
            Ok(s) => s,
            Err(e) => {
                return HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": e.to_string() }));
            }
        };
        let quarantined = crate::api::quarantined(&sinks);
        if !quarantined.is_empty() {
            return HttpResponse::ServiceUnavailable().json(json!({
                "ready": false,
                "reason": format!("sink quarantined: {}", quarantined.join(", ")),
            }));
        }
    }
    HttpResponse::Ok().json(json!({ "ready": true }))
}

/// `GET /metrics`.
pub(crate) async fn metrics(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    let scrape = Scrape::read(&state.bus, &state.config.metrics_topics, state.cluster.as_ref()).await?;
    Ok(HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .body(render(&scrape)))
}
