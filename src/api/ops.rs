//! `/healthz` (the process answers), `/readyz` (it can take webhooks), `/metrics`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.clone();
    let storage = match web::block(move || store.check()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::error!(error = %e, "readiness: storage check failed");
            "failing"
        }
        Err(e) => {
            tracing::error!(error = %e, "readiness: storage check task failed");
            "failing"
        }
    };
    let queued = state.ingest.queued();
    let committer = if state.ingest.accepting() {
        "ok"
    } else {
        tracing::error!("readiness: the committer is not taking submissions");
        "stopped"
    };
    let ready = storage == "ok" && committer == "ok";
    let now = chrono::Utc::now();
    // A stale poller is reported but does not fail readiness: webhooks still work, and
    // taking the instance out of the load balancer would lose them.
    let pollers: serde_json::Map<String, serde_json::Value> = state
        .pollers
        .iter()
        .map(|p| (p.name().to_owned(), p.status(now)))
        .collect();
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": {"storage": storage, "committer": committer, "ingest_queue": queued, "pollers": pollers},
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // From the committer's index: a scrape never reads the store.
    metrics::gauge!("incidentpost_open_incidents").set(state.ingest.open_incidents() as f64);
    metrics::gauge!("incidentpost_ingest_queue_depth").set(state.ingest.queued() as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// `GET /deliveries/report`: per source, deliveries received, stored, rejected (by
/// reason), duplicates, recovered and still missing, with each reconciler's state.
pub async fn deliveries_report(
    state: web::Data<AppState>,
) -> Result<HttpResponse, super::ApiError> {
    let reconcile = state.reconcile.clone();
    let report = super::blocking(move || reconcile.report()).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// `POST /deliveries/reconcile`: one reconciliation round now (after an outage), on this
/// replica if it holds the reconciler lease; answers with what the round did.
pub async fn reconcile_now(state: web::Data<AppState>) -> Result<HttpResponse, super::ApiError> {
    match state.reconcile.run_now().await {
        Some(summary) => Ok(HttpResponse::Ok().json(json!({"round": summary}))),
        None => Err(super::ApiError::Overloaded),
    }
}
