//! The pack endpoints: `GET /incidents/{id}/pack.zip`, `GET /incidents/{id}/{file}`,
//! `POST /incidents/{id}/render`, `PATCH /incidents/{id}`, `POST /incidents/import`.

use std::io::Read;

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use ulid::Ulid;

use super::{blocking, parse_id, ApiError, AppState};
use crate::domain::{Event, EventKind, IncidentId, Source, KEY_INCIDENT_REF};
use crate::ingest::Submission;
use crate::postmortem::renderer::RenderFailure;
use crate::postmortem::{import, FILES};

impl From<RenderFailure> for ApiError {
    fn from(e: RenderFailure) -> Self {
        match e {
            RenderFailure::NotFound(id) => ApiError::IncidentNotFound(id),
            RenderFailure::Store(e) => e.into(),
            RenderFailure::Render(e) => ApiError::Internal(e.to_string()),
            RenderFailure::Task(e) => ApiError::Internal(e),
            RenderFailure::Busy => ApiError::Overloaded,
        }
    }
}

/// The policy on every pack file: nothing loads, nothing runs (`nosniff` is added to
/// every response by the edge).
const PACK_CSP: (&str, &str) = (
    "Content-Security-Policy",
    "default-src 'none'; style-src 'unsafe-inline'; sandbox",
);

async fn pack_of(state: &web::Data<AppState>, id: IncidentId) -> Result<(Vec<u8>, bool), ApiError> {
    Ok(state.renderer.pack(&id).await?)
}

/// `GET /incidents/{id}/pack.zip`.
pub async fn zip(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let (zip, draft) = pack_of(&state, id.clone()).await?;
    let name = if draft {
        format!("incident-{id}-postmortem-DRAFT.zip")
    } else {
        format!("incident-{id}-postmortem.zip")
    };
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header(PACK_CSP)
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        ))
        .body(zip))
}

/// `GET /incidents/{id}/{file}`: one file of the pack.
pub async fn file(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, name) = path.into_inner();
    let id = parse_id(&raw_id)?;
    let Some(name) = FILES.iter().find(|f| **f == name) else {
        return Err(ApiError::RouteNotFound);
    };
    let (zip, _) = pack_of(&state, id).await?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut entry = archive
        .by_name(name)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let content_type = match name.rsplit('.').next() {
        Some("md") => "text/markdown; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("ndjson") => "application/x-ndjson",
        _ => "text/plain; charset=utf-8",
    };
    // The files hold text from the internet: opened directly (an SVG, a Markdown file a
    // browser sniffs), they must not run script or load anything.
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(PACK_CSP)
        .body(bytes))
}

/// `POST /incidents/{id}/render`: renders now (and stores when resolved).
pub async fn render(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let rendered = state.renderer.render_now(&id).await?;
    let pack = &rendered.pack;
    let manifest: Value = pack
        .file("manifest.json")
        .and_then(|m| serde_json::from_slice(m).ok())
        .unwrap_or(Value::Null);
    Ok(HttpResponse::Ok()
        .json(json!({"incident_id": id, "draft": pack.facts.draft, "manifest": manifest})))
}

/// Body of `PATCH /incidents/{id}`: every field optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    pub title: Option<String>,
    pub summary: Option<String>,
    pub root_cause: Option<String>,
    pub impact: Option<String>,
    pub customer_message: Option<String>,
    pub mitigations: Option<Vec<String>>,
    pub action_items: Option<Vec<ActionItem>>,
    /// Who made the edit, shown in the history.
    pub author: Option<String>,
}

/// Most list entries one edit may carry, and characters per text: a postmortem is read by
/// people, and every later render and page load pays for what an edit stores.
const MAX_EDIT_ITEMS: usize = 200;
const MAX_EDIT_TEXT: usize = 20_000;

impl Edit {
    fn check_size(&self) -> Result<(), ApiError> {
        let too_big = |what: &str| {
            ApiError::Payload(crate::sources::NormalizeError::Shape(format!(
                "{what}: an edit takes at most {MAX_EDIT_ITEMS} list entries and {MAX_EDIT_TEXT} characters per text"
            )))
        };
        let texts = [
            &self.title,
            &self.summary,
            &self.root_cause,
            &self.impact,
            &self.customer_message,
            &self.author,
        ];
        if texts.iter().any(|t| {
            t.as_ref()
                .is_some_and(|t| t.chars().count() > MAX_EDIT_TEXT)
        }) {
            return Err(too_big("a text is too long"));
        }
        if self.mitigations.as_ref().is_some_and(|m| {
            m.len() > MAX_EDIT_ITEMS || m.iter().any(|t| t.chars().count() > MAX_EDIT_TEXT)
        }) {
            return Err(too_big("mitigations"));
        }
        if self.action_items.as_ref().is_some_and(|a| {
            a.len() > MAX_EDIT_ITEMS || a.iter().any(|t| t.text.chars().count() > MAX_EDIT_TEXT)
        }) {
            return Err(too_big("action_items"));
        }
        Ok(())
    }
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionItem {
    pub priority: String,
    pub text: String,
}

fn annotation(
    id: &IncidentId,
    kind: EventKind,
    title: String,
    attrs: Map<String, Value>,
    actor: Option<String>,
) -> Event {
    let now = Utc::now();
    let mut keys = std::collections::BTreeMap::new();
    keys.insert(KEY_INCIDENT_REF.to_owned(), id.to_string());
    Event {
        id: Ulid::new(),
        source: Source::Manual,
        kind,
        occurred_at: now,
        received_at: now,
        title,
        service: None,
        severity: None,
        actor,
        url: None,
        keys,
        attrs,
        delivery: None,
        raw_id: None,
        incident_id: None,
        correlation: None,
    }
}

/// `PATCH /incidents/{id}`: each field becomes an annotation event (the last one wins,
/// the history stays in the log), then the pack is rendered again.
pub async fn edit(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Edit>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let (n, draft) = apply_edit(&state, &id, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(json!({"incident_id": id, "annotations": n, "draft": draft})))
}

/// Appends the annotation events of an edit and renders the pack again; returns how many
/// annotations were written and whether the pack is a draft. Shared by the API and pages.
pub(crate) async fn apply_edit(
    state: &AppState,
    id: &IncidentId,
    edit: Edit,
) -> Result<(usize, bool), ApiError> {
    edit.check_size()?;
    let id = id.clone();
    let store = state.store.clone();
    let key = id.clone();
    if blocking(move || store.incident(&key)).await?.is_none() {
        return Err(ApiError::IncidentNotFound(id.to_string()));
    }
    let actor = edit
        .author
        .clone()
        .map(|a| format!("@{}", a.trim_start_matches('@')));
    let mut events = Vec::new();
    let text_attrs = |t: &str| {
        let mut m = Map::new();
        m.insert("text".into(), Value::from(t.trim()));
        m
    };
    for (value, kind, label) in [
        (&edit.title, EventKind::AnnotationTitle, "Title"),
        (&edit.summary, EventKind::AnnotationSummary, "Summary"),
        (
            &edit.root_cause,
            EventKind::AnnotationRootCause,
            "Root cause",
        ),
        (&edit.impact, EventKind::AnnotationImpact, "Impact"),
        (
            &edit.customer_message,
            EventKind::AnnotationCustomerMessage,
            "Customer message",
        ),
    ] {
        if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            events.push(annotation(
                &id,
                kind,
                format!("{label} (edited): {}", crate::sources::truncate(v, 200)),
                text_attrs(v),
                actor.clone(),
            ));
        }
    }
    if let Some(list) = &edit.mitigations {
        let mut attrs = Map::new();
        attrs.insert(
            "items".into(),
            json!(list
                .iter()
                .map(|m| m.trim())
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()),
        );
        attrs.insert("replace".into(), Value::Bool(true));
        events.push(annotation(
            &id,
            EventKind::AnnotationMitigation,
            format!("Mitigations edited ({} items)", list.len()),
            attrs,
            actor.clone(),
        ));
    }
    if let Some(list) = &edit.action_items {
        for item in list {
            if !matches!(
                item.priority.to_ascii_uppercase().as_str(),
                "HIGH" | "MEDIUM" | "LOW"
            ) {
                return Err(ApiError::Payload(crate::sources::NormalizeError::Shape(
                    format!(
                        "action item priority '{}' is not HIGH, MEDIUM or LOW",
                        item.priority
                    ),
                )));
            }
        }
        let mut attrs = Map::new();
        attrs.insert(
            "items".into(),
            serde_json::to_value(list).unwrap_or(Value::Null),
        );
        attrs.insert("replace".into(), Value::Bool(true));
        events.push(annotation(
            &id,
            EventKind::AnnotationActionItem,
            format!("Action items edited ({} items)", list.len()),
            attrs,
            actor.clone(),
        ));
    }
    if events.is_empty() {
        return Err(ApiError::Payload(crate::sources::NormalizeError::Shape(
            "nothing to change".into(),
        )));
    }
    let n = events.len();
    state
        .ingest
        .submit(Submission {
            event_keys: Vec::new(),
            delivery_keys: Vec::new(),
            events,
            raw: Vec::new(),
            cursors: Vec::new(),
            incident: None,
        })
        .await?;
    let rendered = state.renderer.render_now(&id).await?;
    Ok((n, rendered.pack.facts.draft))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// `YYYY-MM-DD` when the text has no date header.
    date: Option<String>,
    /// The incident id to use (default: derived from the text).
    id: Option<String>,
}

/// `POST /incidents/import`: a pasted timeline becomes an incident and its pack.
pub async fn import_timeline(
    state: web::Data<AppState>,
    query: web::Query<ImportQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::Payload(crate::sources::NormalizeError::Malformed(
            "the timeline is not UTF-8 text".into(),
        ))
    })?;
    let date = match &query.date {
        Some(d) => Some(
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| ApiError::InvalidQuery(format!("date '{d}' is not YYYY-MM-DD")))?,
        ),
        None => None,
    };
    let id = query.id.as_deref().map(parse_id).transpose()?;
    let outcome = match import_text(&state, text, date, id).await? {
        Ok(o) => o,
        Err(skipped) => {
            return Ok(HttpResponse::BadRequest().json(json!({
                "error": {"code": "unreadable_timeline", "message": "no line could be read as `HH:MM UTC [Source] text`"},
                "skipped": skipped,
            })))
        }
    };
    let ImportOutcome {
        id,
        events,
        skipped,
        duplicate,
    } = outcome;
    let status = if duplicate {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::CREATED
    };
    Ok(HttpResponse::build(status)
        .insert_header(("Location", format!("/incidents/{id}")))
        .json(json!({
            "incident_id": id,
            "status": if duplicate { "duplicate" } else { "imported" },
            "events": events,
            "skipped": skipped,
            "pack": format!("/incidents/{id}/pack.zip"),
        })))
}

/// What an import did.
pub(crate) struct ImportOutcome {
    pub id: IncidentId,
    pub events: usize,
    pub skipped: Vec<import::Skipped>,
    pub duplicate: bool,
}

/// Imports a pasted timeline and renders its pack. `Ok(Err(skipped))` when no line could
/// be read. Shared by the API and the pages.
pub(crate) async fn import_text(
    state: &AppState,
    text: &str,
    date: Option<chrono::NaiveDate>,
    id: Option<IncidentId>,
) -> Result<Result<ImportOutcome, Vec<import::Skipped>>, ApiError> {
    let imported = match import::parse(text, date, id) {
        Ok(i) => i,
        Err(import::ImportError::Empty) => {
            return Err(ApiError::Payload(crate::sources::NormalizeError::Empty))
        }
        Err(import::ImportError::NothingReadable(skipped)) => return Ok(Err(skipped)),
    };
    let id = imported.incident.id.clone();
    let events = imported.events.len();
    let receipt = state
        .ingest
        .submit(Submission {
            event_keys: Vec::new(),
            delivery_keys: vec![format!("import:{}", imported.digest)],
            events: imported.events,
            raw: text.as_bytes().to_vec(),
            cursors: Vec::new(),
            incident: Some(imported.incident),
        })
        .await?;
    let duplicate = matches!(receipt, crate::ingest::Receipt::Duplicate { .. });
    state.renderer.render_now(&id).await?;
    Ok(Ok(ImportOutcome {
        id,
        events,
        skipped: imported.skipped,
        duplicate,
    }))
}
