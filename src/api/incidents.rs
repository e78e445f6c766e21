//! The read API: `GET /incidents`, `GET /incidents/{id}`, `GET /incidents/{id}/events`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{blocking, parse_id, ApiError, AppState};
use crate::domain::{Incident, IncidentId};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// Events of one incident per page by default (most incidents fit in one).
const DEFAULT_EVENTS_LIMIT: usize = 500;
const MAX_EVENTS_LIMIT: usize = 1000;
/// Records a filtered list reads at most per request; the cursor continues after them.
pub(crate) const SCAN_PER_PAGE: usize = 5_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `open` (triggered or acknowledged), `triggered`, `acknowledged`, `resolved`, `all`.
    status: Option<String>,
    /// Only incidents of this service.
    service: Option<String>,
    /// Only incidents whose title contains this (case-insensitive).
    q: Option<String>,
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn check_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::InvalidQuery(format!(
            "limit must be between 1 and {max}"
        )))
    }
}

/// The filter of an incident list, shared by the API and the pages.
pub(crate) fn incident_filter(
    status: &str,
    service: Option<String>,
    q: Option<String>,
) -> Result<impl Fn(&Incident) -> bool + Send + 'static, ApiError> {
    let status: fn(&Incident) -> bool = match status {
        "all" | "" => |_| true,
        "open" => |i| i.status.is_open(),
        "triggered" => |i| i.status.as_str() == "triggered",
        "acknowledged" => |i| i.status.as_str() == "acknowledged",
        "resolved" => |i| !i.status.is_open(),
        other => {
            return Err(ApiError::InvalidQuery(format!(
                "status '{}' is not one of open, triggered, acknowledged, resolved, all",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    let service = service.filter(|s| !s.trim().is_empty());
    let q = q.map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
    Ok(move |i: &Incident| {
        status(i)
            && service
                .as_deref()
                .is_none_or(|s| i.service.as_deref() == Some(s))
            && q.as_deref()
                .is_none_or(|q| i.title.to_lowercase().contains(q))
    })
}

async fn load_incident(state: &AppState, id: &IncidentId) -> Result<Incident, ApiError> {
    let store = state.store.clone();
    let key = id.clone();
    blocking(move || store.incident(&key))
        .await?
        .ok_or_else(|| ApiError::IncidentNotFound(id.to_string()))
}

/// `GET /incidents`: newest trigger first, a page at a time (key-range cursor).
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status = q.status.clone().unwrap_or_else(|| "all".into());
    let unfiltered = q.service.is_none() && q.q.is_none();
    let keep = incident_filter(&status, q.service, q.q)?;
    let limit = check_limit(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let store = state.store.clone();
    let cursor = q.cursor;
    let open_now = state.ingest.open_incidents() as u64;
    let (page, total) = blocking(move || {
        let page = store.incidents_page(cursor.as_deref(), limit, SCAN_PER_PAGE, &keep)?;
        // A total only where it is cheap: counters, never a scan.
        let total = match (status.as_str(), unfiltered) {
            ("all", true) => Some(store.incident_count()?),
            ("open", true) => Some(open_now),
            ("resolved", true) => Some(store.incident_count()?.saturating_sub(open_now)),
            _ => None,
        };
        Ok::<_, crate::store::StoreError>((page, total))
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "incidents": page.items,
        "total": total,
        "next_cursor": page.next,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /incidents/{id}/events`: ordered by `occurred_at` (events of the same instant in
/// append order), a page at a time.
pub async fn events(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let q = query.into_inner();
    let limit = check_limit(q.limit, DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT)?;
    let incident = load_incident(&state, &id).await?;
    let store = state.store.clone();
    let key = id.clone();
    let page =
        blocking(move || store.incident_events_page(&key, q.cursor.as_deref(), limit)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "incident_id": id,
        "events": page.items,
        "total": incident.event_count,
        "next_cursor": page.next,
    })))
}

/// `GET /events/unattached`: events no incident has claimed, ordered by `occurred_at`,
/// a page at a time (oldest first).
pub async fn unattached(
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let limit = check_limit(q.limit, 100, MAX_LIMIT)?;
    let store = state.store.clone();
    let page = blocking(move || store.stream_page(q.cursor.as_deref(), limit)).await?;
    Ok(HttpResponse::Ok().json(json!({"events": page.items, "next_cursor": page.next})))
}
