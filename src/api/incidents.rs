//! The read API: `GET /incidents`, `GET /incidents/{id}`, `GET /incidents/{id}/events`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{blocking, parse_id, ApiError, AppState};
use crate::domain::{Incident, IncidentId};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `open` (triggered or acknowledged), `triggered`, `acknowledged`, `resolved`, `all`.
    status: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn load_incident(state: &AppState, id: &IncidentId) -> Result<Incident, ApiError> {
    let store = state.store.clone();
    let key = id.clone();
    blocking(move || store.incident(&key))
        .await?
        .ok_or_else(|| ApiError::IncidentNotFound(id.to_string()))
}

pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status = q.status.as_deref().unwrap_or("all");
    let keep: fn(&Incident) -> bool = match status {
        "all" => |_| true,
        "open" => |i| i.status.is_open(),
        "triggered" => |i| i.status.as_str() == "triggered",
        "acknowledged" => |i| i.status.as_str() == "acknowledged",
        "resolved" => |i| !i.status.is_open(),
        other => {
            return Err(ApiError::InvalidQuery(format!(
                "status '{other}' is not one of open, triggered, acknowledged, resolved, all"
            )))
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    let store = state.store.clone();
    let mut incidents: Vec<Incident> = blocking(move || store.incidents())
        .await?
        .into_iter()
        .filter(keep)
        .collect();
    // Newest first; ties broken by id so pages are stable.
    incidents.sort_by(|a, b| {
        b.triggered_at
            .cmp(&a.triggered_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let total = incidents.len();
    let page: Vec<Incident> = incidents.into_iter().skip(offset).take(limit).collect();
    let next_offset = (offset + page.len() < total).then_some(offset + page.len());
    Ok(HttpResponse::Ok().json(json!({
        "incidents": page,
        "total": total,
        "offset": offset,
        "next_offset": next_offset,
    })))
}

pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let incident = load_incident(&state, &id).await?;
    let duration = incident.duration_secs();
    let mut body =
        serde_json::to_value(&incident).map_err(|e| ApiError::Internal(e.to_string()))?;
    body["duration_secs"] = json!(duration);
    Ok(HttpResponse::Ok().json(body))
}

pub async fn events(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    load_incident(&state, &id).await?;
    let store = state.store.clone();
    let key = id.clone();
    let mut events = blocking(move || store.incident_events(&key)).await?;
    // Stable: events of the same instant keep their append order.
    events.sort_by_key(|e| e.occurred_at);
    Ok(HttpResponse::Ok().json(json!({"incident_id": id, "events": events})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    limit: Option<usize>,
}

/// `GET /events/unattached`: events no incident has claimed, ordered by `occurred_at`
/// (the most recent `limit` of them).
pub async fn unattached(
    state: web::Data<AppState>,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let store = state.store.clone();
    let mut events = blocking(move || store.stream_events()).await?;
    // Stable: events of the same instant keep their append order.
    events.sort_by_key(|e| e.occurred_at);
    let total = events.len();
    let events: Vec<_> = events
        .into_iter()
        .skip(total.saturating_sub(limit))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"events": events, "total": total})))
}
