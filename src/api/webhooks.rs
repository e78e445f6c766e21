//! `POST /webhooks/{source}`: the raw body (read by the edge under the deadline and the
//! size limit), verify, normalize, submit, answer 2xx only once the events are flushed.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::json;

use super::{ApiError, AppState};
use crate::domain::Source;
use crate::ingest::{Receipt, Submission};
use crate::sources::Headers;

pub async fn receive(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let Ok(source) = name.parse::<Source>() else {
        return Err(ApiError::UnknownSource(name.chars().take(64).collect()));
    };
    let label = source.as_str();
    metrics::counter!("incidentpost_webhooks_received_total", "source" => label).increment(1);
    let ledger = state.reconcile.ledger();
    ledger.received(source);
    let result = handle(&state, source, &req, body).await;
    match &result {
        Ok(_) => {}
        Err(e) => {
            ledger.rejected(source, e.reason());
            metrics::counter!("incidentpost_webhooks_rejected_total", "source" => label, "reason" => e.reason())
                .increment(1);
            tracing::warn!(source = label, code = e.code(), error = %e, "webhook rejected");
        }
    }
    result
}

async fn handle(
    state: &AppState,
    source: Source,
    req: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let Some(handler) = state.sources.get(&source) else {
        return Err(if state.disabled_sources.contains(&source) {
            ApiError::SourceDisabled(source.to_string())
        } else {
            ApiError::UnknownSource(source.to_string())
        });
    };
    let headers = Headers::new(
        req.headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?.to_owned()))),
    );
    let now = Utc::now();
    handler.prefetch(&headers, &body).await?;
    handler.verify(&headers, &body, now)?;
    let mut normalized = handler.normalize(&headers, &body, now)?;
    if handler.signs_body() && !handler.body_carries_delivery_key() {
        // Replay protection: the same signed body under a fresh delivery header is the
        // same delivery (the header is not covered by the signature).
        normalized.delivery_keys.push(format!(
            "{}:body:{}",
            source.as_str(),
            crate::sources::signature::sha256_hex(&body)
        ));
    }
    crate::sources::check_times(&normalized, now)?;
    if let Some(reply) = normalized.reply {
        return Ok(HttpResponse::Ok().json(reply));
    }
    let redelivered = if source == Source::Github && state.reconcile.reconciles_github() {
        mark_github_redelivery(state, &headers, &mut normalized.events).await?
    } else {
        false
    };
    let receipt = state
        .ingest
        .submit(Submission {
            delivery_keys: normalized.delivery_keys,
            event_keys: normalized.event_keys,
            events: normalized.events,
            raw: body.to_vec(),
            cursors: Vec::new(),
            incident: None,
        })
        .await?;
    let label = source.as_str();
    Ok(match receipt {
        Receipt::Stored {
            event_ids,
            incident_ids,
            ..
        } => {
            let event_count = event_ids.len();
            metrics::counter!("incidentpost_events_stored_total", "source" => label)
                .increment(event_count as u64);
            state.reconcile.ledger().stored(source);
            if source == Source::Github && state.reconcile.is_new_github_hook(&headers) {
                // Only a stored delivery records its hook: the header is not signed, so a
                // replay under other hook ids (a duplicate) records nothing.
                let reconcile = state.reconcile.clone();
                let (headers, body) = (headers.clone(), body.clone());
                super::blocking(move || {
                    reconcile.saw_github_hook(&headers, &body);
                    Ok::<_, ApiError>(())
                })
                .await?;
            }
            tracing::info!(source = label, events = event_count, incidents = ?incident_ids, "webhook stored");
            HttpResponse::Accepted().json(json!({
                "status": "stored",
                "event_ids": event_ids,
                "incident_ids": incident_ids,
                "ignored": normalized.ignored,
            }))
        }
        Receipt::Duplicate { event_ids } => {
            metrics::counter!("incidentpost_webhook_duplicates_total", "source" => label)
                .increment(1);
            state.reconcile.ledger().duplicate(source);
            if let (true, Some((hook, guid))) = (redelivered, github_delivery(&headers)) {
                // The same delivery through another hook was stored: this one is here.
                let reconcile = state.reconcile.clone();
                super::blocking(move || reconcile.redelivery_arrived(&hook, &guid)).await?;
            }
            tracing::info!(source = label, "duplicate delivery; nothing stored");
            HttpResponse::Ok().json(json!({"status": "duplicate", "event_ids": event_ids}))
        }
    })
}

/// With GitHub reconciliation on: marks the events of a redelivery we asked for as
/// recovered. True when it is one.
async fn mark_github_redelivery(
    state: &AppState,
    headers: &Headers,
    events: &mut [crate::domain::Event],
) -> Result<bool, ApiError> {
    let Some((hook, guid)) = github_delivery(headers) else {
        return Ok(false);
    };
    let reconcile = state.reconcile.clone();
    let asked = super::blocking(move || reconcile.is_redelivery(&hook, &guid)).await?;
    if asked {
        for event in events {
            event.attrs.insert(
                crate::domain::ATTR_RECOVERED.into(),
                serde_json::Value::from(crate::reconcile::github::RECOVERED_FROM_LOG),
            );
        }
    }
    Ok(asked)
}

/// The hook id and delivery GUID of a GitHub delivery, when it has both.
fn github_delivery(headers: &Headers) -> Option<(String, String)> {
    let get = |name: &str| {
        headers
            .get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    Some((get("X-GitHub-Hook-ID")?, get("X-GitHub-Delivery")?))
}
