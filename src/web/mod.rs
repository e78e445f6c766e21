//! Server-rendered pages: incident list, incident page (timeline, evidence, postmortem,
//! HN post, thread, edit form, history), paste-a-timeline, login. Handlebars with HTML
//! escaping (event titles come from the internet), plain CSS, one small script for copy
//! buttons, nothing from a CDN.
//!
//! Auth: with `api.token` set, pages need a session: logging in with the token stores a
//! random session (`crate::auth`) and sets its cookie (HttpOnly, SameSite=Strict, Secure
//! behind https); logout deletes it. Every form carries a CSRF token bound to the session.

use std::collections::BTreeSet;

use actix_web::cookie::Cookie;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::packs::{apply_edit, import_text, ActionItem, Edit};
use crate::api::{blocking, parse_id, ApiError, AppState};
use crate::auth::Identity;
use crate::domain::{Event, Incident};
use crate::postmortem::facts::Facts;
use crate::sources::signature::constant_time_eq;

pub use crate::auth::SESSION_COOKIE;

const PAGES: [(&str, &str); 5] = [
    ("layout", include_str!("../../templates/web/layout.hbs")),
    ("list", include_str!("../../templates/web/list.hbs")),
    ("incident", include_str!("../../templates/web/incident.hbs")),
    ("login", include_str!("../../templates/web/login.hbs")),
    ("import", include_str!("../../templates/web/import.hbs")),
];
const CSS: &str = include_str!("../../static/app.css");
const JS: &str = include_str!("../../static/app.js");

/// The page templates (HTML-escaped by default).
pub struct Pages {
    hb: Handlebars<'static>,
}

impl Pages {
    /// Loads the embedded page templates.
    pub fn load() -> Result<Self, handlebars::TemplateError> {
        let mut hb = Handlebars::new();
        hb.register_partial("layout", PAGES[0].1)?;
        for (name, source) in &PAGES[1..] {
            hb.register_template_string(name, *source)?;
        }
        Ok(Pages { hb })
    }

    fn page(&self, name: &str, ctx: &Value) -> HttpResponse {
        html_response(name, self.hb.render(name, ctx))
    }
}

fn html_response(name: &str, html: Result<String, handlebars::RenderError>) -> HttpResponse {
    match html {
        Ok(html) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header(("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'"))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .body(html),
        Err(e) => {
            tracing::error!(error = %e, page = name, "page render failed");
            HttpResponse::InternalServerError().body("internal error")
        }
    }
}

/// Page routes; registered by `api::configure`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(|| async { see_other("/ui") }))
        .route("/ui", web::get().to(list))
        .route("/ui/login", web::get().to(login_form))
        .route("/ui/login", web::post().to(login))
        .route("/ui/logout", web::post().to(logout))
        .route("/ui/import", web::get().to(import_form))
        .route("/ui/import", web::post().to(import))
        .route("/ui/incidents/{id}", web::get().to(incident))
        .route("/ui/incidents/{id}/edit", web::post().to(edit))
        .route(
            "/ui/static/app.css",
            web::get().to(|| async {
                HttpResponse::Ok()
                    .content_type("text/css; charset=utf-8")
                    .insert_header(("Cache-Control", "max-age=3600"))
                    .body(CSS)
            }),
        )
        .route(
            "/ui/static/app.js",
            web::get().to(|| async {
                HttpResponse::Ok()
                    .content_type("text/javascript; charset=utf-8")
                    .insert_header(("Cache-Control", "max-age=3600"))
                    .body(JS)
            }),
        );
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_owned()))
        .finish()
}

/// True when the request carries a valid page session or the bearer token (or no
/// token is configured). [`crate::api::guard`] found that out before the handler ran.
pub fn has_session(req: &HttpRequest, state: &AppState) -> bool {
    !state.auth.required()
        || req
            .extensions()
            .get::<Identity>()
            .is_some_and(|i| i.bearer || i.session.is_some())
}

fn session_of(req: &HttpRequest) -> Option<String> {
    req.extensions()
        .get::<Identity>()
        .and_then(|i| i.session.clone())
}

fn csrf_token(req: &HttpRequest, state: &AppState) -> String {
    state.auth.csrf_token(session_of(req).as_deref())
}

fn session_cookie(value: String, max_age_secs: i64, secure: bool) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, value)
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(actix_web::cookie::SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age_secs))
        .finish()
}

/// `Some(403 page)` unless the form's CSRF token is right.
fn check_csrf(
    req: &HttpRequest,
    state: &AppState,
    form_value: Option<&str>,
) -> Option<HttpResponse> {
    match form_value {
        Some(v) if constant_time_eq(v, &csrf_token(req, state)) => None,
        _ => Some(HttpResponse::Forbidden().content_type("text/plain").body(
            "The form expired or did not come from this site: reload the page and try again.",
        )),
    }
}

/// Percent-encodes a value for a query string.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only local paths are followed after login (no open redirect).
fn safe_next(next: &str) -> &str {
    // A path of this site's pages only: no scheme-relative `//`, no backslashes (browsers
    // read `/\` as `//`), no whitespace or control characters (CR/LF would split the
    // Location header).
    let plain = next.chars().all(|c| c.is_ascii_graphic() && c != '\\');
    if plain && (next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?")) {
        next
    } else {
        "/ui"
    }
}

fn base_ctx(req: &HttpRequest, state: &AppState, title: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("page_title".into(), Value::from(title));
    m.insert("csrf".into(), Value::from(csrf_token(req, state)));
    m.insert(
        "logged_in".into(),
        Value::Bool(state.auth.required() && has_session(req, state)),
    );
    m
}

fn duration_text(i: &Incident) -> String {
    match i.duration_secs() {
        Some(s) if s >= 7200 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        Some(s) => format!("{} min", (s + 30) / 60),
        None => format!(
            "open {} min",
            ((chrono::Utc::now() - i.triggered_at).num_seconds().max(0) + 30) / 60
        ),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    service: Option<String>,
    q: Option<String>,
    /// Where this page starts (`next_cursor` of the page before).
    cursor: Option<String>,
    /// The cursors of the pages before, comma-separated, for the "Newer" link.
    trail: Option<String>,
}

/// Incidents per page of the list.
const LIST_PAGE: usize = 50;
/// Pages of history the "Newer" link remembers.
const TRAIL_PAGES: usize = 20;

async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = query.status.clone().unwrap_or_else(|| "all".into());
    let service = query.service.clone().unwrap_or_default();
    let q = query.q.clone().unwrap_or_default();
    let keep = crate::api::incident_filter(&status, Some(service.clone()), Some(q.clone()))?;
    let store = state.store.clone();
    let cursor = query.cursor.clone().filter(|c| !c.is_empty());
    let at = cursor.clone();
    let (page, total) = blocking(move || {
        let page =
            store.incidents_page(at.as_deref(), LIST_PAGE, crate::api::SCAN_PER_PAGE, &keep)?;
        Ok::<_, crate::store::StoreError>((page, store.incident_count()?))
    })
    .await?;
    let mut services: BTreeSet<String> = state
        .services
        .iter()
        .cloned()
        .chain(page.items.iter().filter_map(|i| i.service.clone()))
        .collect();
    if !service.is_empty() {
        services.insert(service.clone());
    }
    let any_open = page.items.iter().any(|i| i.status.is_open());
    let rows: Vec<Value> = page
        .items
        .iter()
        .map(|i| {
            json!({
                "id": i.id, "title": i.title, "status": i.status.as_str(),
                "service": i.service.clone().unwrap_or_else(|| "—".into()),
                "severity": i.priority.clone().or(i.severity.map(|s| s.label().to_owned())).unwrap_or_else(|| "—".into()),
                "started": i.triggered_at.format("%Y-%m-%d %H:%M").to_string(),
                "duration": duration_text(i),
            })
        })
        .collect();
    // Paging links keep the filters; "Newer" walks back the trail of cursors.
    let mut trail: Vec<String> = query
        .trail
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|c| !c.is_empty() && c.len() <= 300 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    let link = |cursor: Option<&str>, trail: &[String]| {
        let mut l = format!(
            "/ui?status={}&service={}&q={}",
            urlencode(&status),
            urlencode(&service),
            urlencode(&q)
        );
        if let Some(c) = cursor {
            l.push_str(&format!("&cursor={}", urlencode(c)));
        }
        if !trail.is_empty() {
            l.push_str(&format!("&trail={}", urlencode(&trail.join(","))));
        }
        l
    };
    let older = page.next.as_deref().map(|next| {
        let mut t = trail.clone();
        t.push(cursor.clone().unwrap_or_default());
        let start = t.len().saturating_sub(TRAIL_PAGES);
        link(Some(next), &t[start..])
    });
    let newer = cursor.is_some().then(|| {
        let back = trail.pop().filter(|c| !c.is_empty());
        link(back.as_deref(), &trail)
    });
    let mut ctx = base_ctx(&req, &state, "Incidents");
    ctx.insert("incidents".into(), Value::from(rows));
    let unfiltered = status == "all" && service.is_empty() && q.is_empty();
    ctx.insert("total".into(), json!(unfiltered.then_some(total)));
    ctx.insert("one".into(), Value::Bool(total == 1));
    ctx.insert("shown".into(), Value::from(page.items.len()));
    ctx.insert("older".into(), json!(older));
    ctx.insert("newer".into(), json!(newer));
    ctx.insert("q".into(), Value::from(q));
    ctx.insert(
        "statuses".into(),
        json!([["all", "all"], ["open", "open"], ["resolved", "resolved"]]
            .iter()
            .map(|[v, l]| json!({"value": v, "label": l, "selected": *v == status}))
            .collect::<Vec<_>>()),
    );
    ctx.insert(
        "services".into(),
        Value::from(
            services
                .iter()
                .map(|s| json!({"value": s, "selected": *s == service}))
                .collect::<Vec<_>>(),
        ),
    );
    if any_open {
        ctx.insert("refresh".into(), Value::from(30));
    }
    Ok(state.pages.page("list", &Value::Object(ctx)))
}

/// Markdown → HTML with raw HTML shown as text: event titles come from the internet.
pub fn markdown_to_html(md: &str) -> String {
    use pulldown_cmark::{html, Event as MdEvent, Options, Parser, Tag, TagEnd};
    // Links and images keep only http(s), mailto and in-page (#) targets; any other link
    // (javascript:, data:, relative paths) is dropped and its text kept.
    let mut dropped: Vec<bool> = Vec::new();
    let parser = Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_FOOTNOTES)
        .filter_map(|e| match e {
            MdEvent::Html(h) | MdEvent::InlineHtml(h) => Some(MdEvent::Text(h)),
            MdEvent::Start(Tag::Link { ref dest_url, .. })
            | MdEvent::Start(Tag::Image { ref dest_url, .. }) => {
                let keep = safe_link(dest_url);
                dropped.push(!keep);
                keep.then_some(e)
            }
            MdEvent::End(TagEnd::Link) | MdEvent::End(TagEnd::Image) => {
                if dropped.pop().unwrap_or(false) {
                    None
                } else {
                    Some(e)
                }
            }
            other => Some(other),
        });
    let mut out = String::new();
    html::push_html(&mut out, parser);
    out
}

/// A link target the pages may render: absolute http(s), mailto, or an in-page anchor.
fn safe_link(url: &str) -> bool {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let lower = url.to_ascii_lowercase();
    lower.starts_with("https://")
        || lower.starts_with("http://")
        || lower.starts_with("mailto:")
        || url.starts_with('#')
}

fn fact_evidence(
    ids: &[ulid::Ulid],
    index: &std::collections::HashMap<ulid::Ulid, (usize, String)>,
) -> Vec<Value> {
    ids.iter()
        .filter_map(|id| {
            index
                .get(id)
                .map(|(n, title)| json!({"id": id.to_string(), "n": n, "title": title}))
        })
        .collect()
}

fn facts_view(
    f: &Facts,
    index: &std::collections::HashMap<ulid::Ulid, (usize, String)>,
) -> Vec<Value> {
    let unknown = || "unknown".to_owned();
    let t = |v: &Option<chrono::DateTime<chrono::Utc>>| {
        v.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(unknown)
    };
    let mut out = vec![
        json!({"label": "Title", "value": f.title.value.clone().unwrap_or_else(unknown), "evidence": fact_evidence(&f.title.evidence, index)}),
        json!({"label": "Severity", "value": f.severity.value.clone().unwrap_or_else(unknown), "evidence": fact_evidence(&f.severity.evidence, index)}),
        json!({"label": "Detected", "value": t(&f.detected.value), "evidence": fact_evidence(&f.detected.evidence, index)}),
        json!({"label": "Acknowledged", "value": t(&f.acknowledged.value), "evidence": fact_evidence(&f.acknowledged.evidence, index)}),
        json!({"label": "Mitigated", "value": t(&f.mitigated.value), "evidence": fact_evidence(&f.mitigated.evidence, index)}),
        json!({"label": "Resolved", "value": t(&f.resolved.value), "evidence": fact_evidence(&f.resolved.evidence, index)}),
        json!({"label": "Duration", "value": f.duration_minutes.value.map(|m| format!("{m} minutes")).unwrap_or_else(unknown), "evidence": fact_evidence(&f.duration_minutes.evidence, index)}),
        json!({"label": "Users affected", "value": f.users_affected.value.clone().unwrap_or_else(unknown), "evidence": fact_evidence(&f.users_affected.evidence, index)}),
        json!({"label": "Impact", "value": f.impact.value.clone().unwrap_or_else(unknown), "evidence": fact_evidence(&f.impact.evidence, index)}),
        json!({"label": if f.root_cause_suspected { "Root cause (suspected)" } else { "Root cause" }, "value": f.root_cause.value.clone().unwrap_or_else(unknown), "evidence": fact_evidence(&f.root_cause.evidence, index)}),
    ];
    for p in &f.peaks {
        out.push(json!({"label": format!("Peak {}", p.label), "value": format!("{}{}", crate::postmortem::fmt_num(p.value), p.unit), "evidence": fact_evidence(&p.evidence, index)}));
    }
    for m in &f.mitigations {
        out.push(json!({"label": "Mitigation", "value": m.text, "evidence": fact_evidence(&m.evidence, index)}));
    }
    for a in &f.action_items {
        out.push(json!({"label": format!("Action ({})", a.priority.clone().unwrap_or_default()), "value": a.text, "evidence": fact_evidence(&a.evidence, index)}));
    }
    for r in &f.recoveries {
        out.push(json!({"label": "Gap recovered", "value": r.text, "evidence": fact_evidence(&r.evidence, index)}));
    }
    out
}

#[derive(Deserialize)]
pub struct IncidentQuery {
    /// Where the timeline table starts (`next` of the page before).
    events: Option<String>,
}

/// Timeline rows per incident page.
const TIMELINE_ROWS: usize = 500;
/// Largest `timeline.svg` and `postmortem.md` the incident page shows inline; bigger
/// ones are linked (the img loads the SVG from the pack).
const INLINE_MAX_BYTES: usize = 256 * 1024;

async fn incident(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<IncidentQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    // The render (cached per version of the incident, made on the render pool) and one
    // page of timeline rows: a page load never holds all of a big incident's events.
    let rendered = state.renderer.rendered(&id).await?;
    let store = state.store.clone();
    let key = id.clone();
    let cursor = query.events.clone().filter(|c| !c.is_empty());
    let at = cursor.clone();
    let (incident, page) = blocking(move || {
        let incident = store.incident(&key)?;
        let page = store.incident_events_page(&key, at.as_deref(), TIMELINE_ROWS)?;
        Ok::<_, crate::store::StoreError>((incident, page))
    })
    .await?;
    let incident = incident.ok_or_else(|| ApiError::IncidentNotFound(id.to_string()))?;
    let mut ctx = base_ctx(&req, &state, &incident.title);
    // Assembling a big incident's page costs tens of milliseconds of CPU: it runs on a
    // render slot, off the request workers, so webhooks never queue behind it.
    let pages = state.pages.clone();
    let html = state
        .renderer
        .heavy(move || {
    let pack = &rendered.pack;
    let file =
        |name: &str| String::from_utf8_lossy(pack.file(name).unwrap_or_default()).into_owned();
    let index = &rendered.evidence;
    let roster = &pack.roster;
    let rows: Vec<Value> = page.items.iter().map(|e| event_row(e, roster)).collect();
    let history: Vec<Value> = rendered
        .history
        .iter()
        .map(|e| event_row(e, roster))
        .collect();
    let thread = file("twitter-thread.txt");
    let tweets: Vec<Value> = thread
        .split("\n\n")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| json!({"text": t, "chars": t.chars().count(), "over": t.chars().count() > 280}))
        .collect();
    let hn = file("hn-post.txt");
    let f = &pack.facts;
    let mut action_rows: Vec<Value> = f
        .action_items
        .iter()
        .map(|a| {
            let p = a.priority.clone().unwrap_or_else(|| "MEDIUM".into());
            json!({"text": a.text, "high": p == "HIGH", "medium": p == "MEDIUM", "low": p == "LOW"})
        })
        .collect();
    for _ in 0..3 {
        action_rows.push(json!({"text": "", "high": false, "medium": true, "low": false}));
    }
    let title = f
        .title
        .value
        .clone()
        .unwrap_or_else(|| incident.title.clone());
    ctx.insert("title".into(), Value::from(title.clone()));
    ctx.insert("id".into(), Value::from(incident.id.to_string()));
    ctx.insert("status".into(), Value::from(incident.status.as_str()));
    ctx.insert("draft".into(), Value::Bool(f.draft));
    ctx.insert("duration".into(), Value::from(duration_text(&incident)));
    ctx.insert(
        "users_affected".into(),
        Value::from(
            f.users_affected
                .value
                .clone()
                .or_else(|| f.impact.value.as_deref().map(|t| crate::postmortem::templates::cut(t, 60)))
                .unwrap_or_else(|| "unknown".into()),
        ),
    );
    ctx.insert(
        "severity".into(),
        Value::from(f.severity.value.clone().unwrap_or_else(|| "unknown".into())),
    );
    ctx.insert(
        "service".into(),
        Value::from(f.service.value.clone().unwrap_or_else(|| "unknown".into())),
    );
    ctx.insert(
        "responders".into(),
        Value::from(if f.responders.is_empty() {
            "unknown".to_owned()
        } else {
            f.responders
                .iter()
                .map(|r| r.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }),
    );
    // Our own SVG: every text in it is XML-escaped when drawn. A big one (and a long
    // postmortem) is linked rather than inlined: the page stays a page.
    let svg = pack.file("timeline.svg").unwrap_or_default();
    ctx.insert(
        "svg".into(),
        Value::from(if svg.len() <= INLINE_MAX_BYTES {
            String::from_utf8_lossy(svg).into_owned()
        } else {
            String::new()
        }),
    );
    ctx.insert("events".into(), Value::from(rows));
    ctx.insert("events_total".into(), Value::from(incident.event_count));
    ctx.insert(
        "events_next".into(),
        json!(page
            .next
            .as_deref()
            .map(|n| format!("/ui/incidents/{id}?events={}", urlencode(n)))),
    );
    ctx.insert(
        "events_first".into(),
        json!(cursor.is_some().then(|| format!("/ui/incidents/{id}"))),
    );
    ctx.insert("facts".into(), Value::from(facts_view(f, index)));
    ctx.insert(
        "postmortem_html".into(),
        Value::from(if pack.file("postmortem.md").unwrap_or_default().len() <= INLINE_MAX_BYTES {
            rendered
                .html
                .get_or_init(|| markdown_to_html(&file("postmortem.md")))
                .clone()
        } else {
            String::new()
        }),
    );
    ctx.insert("hn_chars".into(), Value::from(hn.chars().count()));
    ctx.insert("hn".into(), Value::from(hn));
    ctx.insert("tweets".into(), Value::from(tweets));
    ctx.insert("history".into(), Value::from(history));
    ctx.insert(
        "edit".into(),
        json!({
            "title": title,
            "summary": f.summary.value.clone().unwrap_or_default(),
            "root_cause": if f.root_cause_suspected { String::new() } else { f.root_cause.value.clone().unwrap_or_default() },
            "impact": f.impact.value.clone().unwrap_or_default(),
            "mitigations": f.mitigations.iter().map(|m| m.text.as_str()).collect::<Vec<_>>().join("\n"),
            "action_items": action_rows,
            "customer_message": f.customer_message.value.clone().unwrap_or_default(),
        }),
    );
            pages.hb.render("incident", &Value::Object(ctx))
        })
        .await?;
    Ok(html_response("incident", html))
}

/// A timeline row: its actor by name (one name per person, as in the pack).
fn event_row(e: &Event, roster: &crate::people::Roster) -> Value {
    json!({
        "id": e.id.to_string(),
        "time": e.occurred_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        "source": e.source.display_name(),
        "title": crate::postmortem::facts::shown_title(e, roster),
        "actor": roster.name_of(&e.id).map(str::to_owned).or_else(|| e.actor.clone()).unwrap_or_default(),
        "url": e.url.as_deref().and_then(crate::domain::clean_url),
        "rule": e.correlation.map(|c| c.as_str()).unwrap_or_default(),
        "kind_class": if e.kind.as_str().starts_with("annotation.") { "annotation" } else { "" },
    })
}

async fn edit(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let fields = form.into_inner();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_owned())
    };
    if let Some(r) = check_csrf(&req, &state, get("csrf").as_deref()) {
        return Ok(r);
    }
    let id = parse_id(&path)?;
    let rendered = state.renderer.rendered(&id).await?;
    let current = &rendered.pack.facts;
    // Only what changed becomes an annotation, so the history stays readable.
    let changed = |new: Option<String>, old: Option<String>| {
        new.filter(|n| Some(n.as_str()) != old.as_deref() && !n.is_empty())
    };
    let priorities: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "action_priority")
        .map(|(_, v)| v.clone())
        .collect();
    let texts: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "action_text")
        .map(|(_, v)| v.trim().to_owned())
        .collect();
    let actions: Vec<ActionItem> = texts
        .iter()
        .zip(
            priorities
                .iter()
                .chain(std::iter::repeat(&"MEDIUM".to_owned())),
        )
        .filter(|(t, _)| !t.is_empty())
        .map(|(t, p)| ActionItem {
            priority: p.to_ascii_uppercase(),
            text: t.clone(),
        })
        .collect();
    let old_actions: Vec<(String, String)> = current
        .action_items
        .iter()
        .map(|a| (a.priority.clone().unwrap_or_default(), a.text.clone()))
        .collect();
    let new_actions: Vec<(String, String)> = actions
        .iter()
        .map(|a| (a.priority.clone(), a.text.clone()))
        .collect();
    let mitigations: Vec<String> = get("mitigations")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let old_mitigations: Vec<String> = current.mitigations.iter().map(|m| m.text.clone()).collect();
    let edit = Edit {
        title: changed(get("title"), current.title.value.clone()),
        summary: changed(get("summary"), current.summary.value.clone()),
        root_cause: changed(
            get("root_cause"),
            if current.root_cause_suspected {
                None
            } else {
                current.root_cause.value.clone()
            },
        ),
        impact: changed(get("impact"), current.impact.value.clone()),
        customer_message: changed(
            get("customer_message"),
            current.customer_message.value.clone(),
        ),
        mitigations: (mitigations != old_mitigations).then_some(mitigations),
        action_items: (new_actions != old_actions).then_some(actions),
        author: get("author").filter(|a| !a.is_empty()),
    };
    let nothing = edit.title.is_none()
        && edit.summary.is_none()
        && edit.root_cause.is_none()
        && edit.impact.is_none()
        && edit.customer_message.is_none()
        && edit.mitigations.is_none()
        && edit.action_items.is_none();
    if !nothing {
        apply_edit(&state, &id, edit).await?;
    }
    Ok(see_other(&format!("/ui/incidents/{id}#h-pm")))
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

async fn login_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<LoginQuery>,
) -> HttpResponse {
    if !state.auth.required() {
        return see_other("/ui");
    }
    let mut ctx = base_ctx(&req, &state, "Log in");
    ctx.insert(
        "next".into(),
        Value::from(safe_next(query.next.as_deref().unwrap_or("/ui"))),
    );
    state.pages.page("login", &Value::Object(ctx))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    if !state.auth.required() {
        return see_other("/ui");
    }
    if !state.auth.token_matches(&form.token) {
        let client = crate::auth::client_ip(req.peer_addr());
        state.auth.record_failure(client);
        tracing::warn!(client = %client, "failed page login");
        let mut ctx = base_ctx(&req, &state, "Log in");
        ctx.insert("error".into(), Value::from("That token is not right."));
        ctx.insert(
            "next".into(),
            Value::from(safe_next(form.next.as_deref().unwrap_or("/ui"))),
        );
        let mut res = state.pages.page("login", &Value::Object(ctx));
        *res.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
        return res;
    }
    let auth = state.auth.clone();
    let session = match web::block(move || auth.start_session(chrono::Utc::now())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "storing a page session failed");
            return HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("Could not start a session (storage unavailable); try again.");
        }
        Err(e) => {
            tracing::error!(error = %e, "session task failed");
            return HttpResponse::InternalServerError().body("internal error");
        }
    };
    HttpResponse::SeeOther()
        .cookie(session_cookie(
            session.cookie_value,
            session.max_age_secs,
            state.auth.cookie_secure(),
        ))
        .insert_header((
            header::LOCATION,
            safe_next(form.next.as_deref().unwrap_or("/ui")).to_owned(),
        ))
        .finish()
}

async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    let csrf = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    if let Some(r) = check_csrf(&req, &state, csrf) {
        return r;
    }
    if let Some(session) = session_of(&req) {
        let auth = state.auth.clone();
        match web::block(move || auth.end_session(&session)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "ending a page session failed");
                return HttpResponse::ServiceUnavailable()
                    .content_type("text/plain; charset=utf-8")
                    .body("Could not end the session (storage unavailable); try again.");
            }
            Err(e) => {
                tracing::error!(error = %e, "session task failed");
                return HttpResponse::InternalServerError().body("internal error");
            }
        }
    }
    let mut cookie = session_cookie(String::new(), 0, state.auth.cookie_secure());
    cookie.make_removal();
    HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, "/ui/login"))
        .finish()
}

async fn import_form(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    state.pages.page(
        "import",
        &Value::Object(base_ctx(&req, &state, "Paste a timeline")),
    )
}

#[derive(Deserialize)]
pub struct ImportForm {
    csrf: Option<String>,
    timeline: String,
    date: Option<String>,
}

async fn import(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<ImportForm>,
) -> Result<HttpResponse, ApiError> {
    if let Some(r) = check_csrf(&req, &state, form.csrf.as_deref()) {
        return Ok(r);
    }
    let mut ctx = base_ctx(&req, &state, "Paste a timeline");
    ctx.insert("text".into(), Value::from(form.timeline.clone()));
    ctx.insert(
        "date".into(),
        Value::from(form.date.clone().unwrap_or_default()),
    );
    let date = form
        .date
        .as_deref()
        .filter(|d| !d.is_empty())
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let outcome = match import_text(&state, &form.timeline, date, None).await {
        Ok(o) => o,
        Err(ApiError::Payload(_)) => {
            ctx.insert("error".into(), Value::from("The timeline is empty."));
            let mut res = state.pages.page("import", &Value::Object(ctx));
            *res.status_mut() = actix_web::http::StatusCode::BAD_REQUEST;
            return Ok(res);
        }
        Err(e) => return Err(e),
    };
    match outcome {
        Err(skipped) => {
            ctx.insert(
                "error".into(),
                Value::from("No line could be read as `HH:MM UTC [Source] text`."),
            );
            ctx.insert(
                "skipped".into(),
                serde_json::to_value(skipped).unwrap_or(Value::Null),
            );
            let mut res = state.pages.page("import", &Value::Object(ctx));
            *res.status_mut() = actix_web::http::StatusCode::BAD_REQUEST;
            Ok(res)
        }
        Ok(o) if o.skipped.is_empty() => Ok(see_other(&format!("/ui/incidents/{}", o.id))),
        Ok(o) => {
            // Show what was not read, then go on to the incident.
            let next = format!("/ui/incidents/{}", o.id);
            ctx.insert(
                "skipped".into(),
                serde_json::to_value(&o.skipped).unwrap_or(Value::Null),
            );
            ctx.insert("next".into(), Value::from(next.clone()));
            ctx.insert("refresh".into(), Value::from(format!("8; url={next}")));
            Ok(state.pages.page("import", &Value::Object(ctx)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_markdown_keeps_only_http_mailto_and_anchor_links() {
        let html = markdown_to_html(
            "[a](https://x.test) [b](javascript:alert(1)) [c](mailto:x@x.test) [d](#ev-1) \
             ![e](data:image/png;base64,AAAA) [f](JAVASCRIPT:x)",
        );
        assert!(html.contains(r#"href="https://x.test""#), "{html}");
        assert!(html.contains(r#"href="mailto:x@x.test""#), "{html}");
        assert!(html.contains(r##"href="#ev-1""##), "{html}");
        assert!(!html.to_ascii_lowercase().contains("javascript"), "{html}");
        assert!(!html.contains("data:"), "{html}");
        assert!(
            html.contains('b') && html.contains('f'),
            "text of dropped links kept"
        );
    }

    #[test]
    fn next_values_outside_the_pages_fall_back_to_the_list() {
        for bad in [
            "//evil.test",
            "/\\evil.test",
            "https://evil.test",
            "/ui\r\nSet-Cookie: x",
            "/uix",
            "/ui/ a",
        ] {
            assert_eq!(safe_next(bad), "/ui", "{bad:?}");
        }
        for good in ["/ui", "/ui/incidents/P1", "/ui?status=open"] {
            assert_eq!(safe_next(good), good);
        }
    }
}
