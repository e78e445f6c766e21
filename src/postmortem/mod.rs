//! The postmortem pack: facts (pure, with evidence) → Handlebars templates (strict,
//! embedded, overridable) + `timeline.svg` + `incident.json` + `events.ndjson` +
//! `manifest.json` → a deterministic zip. Rendering reads a snapshot of one incident and
//! returns bytes; it never touches the store.

pub mod archive;
pub mod enrich;
pub mod facts;
pub mod import;
pub mod markdown;
pub mod pool;
pub mod redact;
pub mod renderer;
pub mod said_once;
pub mod svg;
pub mod templates;
pub mod view;

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ulid::Ulid;

use crate::domain::{Event, Incident};
use crate::people::Directory;
use facts::Facts;
pub use markdown::escape_markdown;
use redact::Redactor;

/// The files of a pack, in zip order.
pub const FILES: [&str; 7] = [
    "postmortem.md",
    "timeline.svg",
    "hn-post.txt",
    "twitter-thread.txt",
    "incident.json",
    "events.ndjson",
    "manifest.json",
];

/// The files made to be posted in public: always redacted.
const PUBLIC_FILES: [&str; 2] = ["hn-post.txt", "twitter-thread.txt"];

/// Why templates could not be loaded or a pack rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("writing the zip: {0}")]
    Zip(String),
}

/// `12.0` → `12`, `87.456` → `87.5`.
pub fn fmt_num(v: f64) -> String {
    crate::sources::cloudwatch::format_number(v)
}

/// The templates and how the public files are redacted.
pub struct Templates {
    registry: templates::Registry,
    redactor: Redactor,
    redact_internal: bool,
}

impl Templates {
    /// The embedded templates, each replaced by `<dir>/<name>.hbs` (partials:
    /// `<dir>/partials/<name>.hbs`) when that file exists; checked against sample views.
    /// Redaction: the built-in kinds, public files only.
    pub fn load(override_dir: Option<&Path>) -> Result<Self, RenderError> {
        Ok(Templates {
            registry: templates::Registry::load(override_dir, &sample_views())?,
            redactor: Redactor::built_in(),
            redact_internal: false,
        })
    }

    /// The templates and redaction `[render]` configures.
    pub fn from_settings(render: &crate::config::RenderSettings) -> Result<Self, RenderError> {
        Self::from_settings_in(render, None)
    }

    /// Like [`Templates::from_settings`], with templates from `dir` instead of
    /// `render.templates_dir` when given (the offline CLI's `--templates`).
    pub fn from_settings_in(
        render: &crate::config::RenderSettings,
        dir: Option<&Path>,
    ) -> Result<Self, RenderError> {
        let dir = dir.map(Path::to_path_buf).or_else(|| {
            Some(render.templates_dir.trim())
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from)
        });
        let redactor =
            Redactor::new(&render.redact_patterns).map_err(|message| RenderError::Template {
                name: "render.redact_patterns".into(),
                message,
            })?;
        Ok(Self::load(dir.as_deref())?.with_redaction(redactor, render.redact_internal))
    }

    /// With `render.redact_patterns` (compiled) and `render.redact_internal`.
    pub fn with_redaction(mut self, redactor: Redactor, redact_internal: bool) -> Self {
        self.redactor = redactor;
        self.redact_internal = redact_internal;
        self
    }
}

/// What is known beside the events: GitHub's details of the pull requests, and the
/// people (`[[people]]` and cached Slack profiles).
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub prs: enrich::PrIndex,
    pub people: Directory,
}

/// A rendered pack: its files and the zip of them.
#[derive(Debug, Clone)]
pub struct Pack {
    pub files: Vec<(String, Vec<u8>)>,
    pub zip: Vec<u8>,
    pub facts: Facts,
    /// One name per person, for the pages.
    pub roster: crate::people::Roster,
}

impl Pack {
    /// One file by name.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// Every text of `v` redacted, and with `blank_cites` every citation emptied.
fn redact_value(v: &mut Value, redactor: &Redactor, blank_cites: bool) {
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(r) = redactor.redact(s) {
                *s = r;
            }
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|v| redact_value(v, redactor, blank_cites)),
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if blank_cites && k.ends_with("cite") {
                    *v = Value::from("");
                } else {
                    redact_value(v, redactor, blank_cites);
                }
            }
        }
        _ => {}
    }
}

/// The view for the public files: no citations, no timeline or evidence lists (they are
/// not said in public), every text redacted.
fn public_view(full: &Value, redactor: &Redactor) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    if let (Value::Object(src), Value::Object(dst)) = (full, &mut out) {
        for (k, v) in src {
            let v = if k == "timeline" || k == "evidence" {
                Value::Array(Vec::new())
            } else {
                v.clone()
            };
            dst.insert(k.clone(), v);
        }
    }
    redact_value(&mut out, redactor, true);
    out
}

/// The thread as posts: one per paragraph of the template's output, each cut to 280
/// characters on a word boundary with its number.
fn number_posts(text: &str) -> String {
    let posts: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let n = posts.len();
    let mut out = String::new();
    for (i, p) in posts.iter().enumerate() {
        let suffix = format!(" {}/{n}", i + 1);
        let body = templates::cut(p, 280 - suffix.chars().count());
        out.push_str(&body);
        out.push_str(&suffix);
        out.push_str("\n\n");
    }
    out
}

/// Complete views, used to check templates at load: one with every annotation (a
/// draft), one with none (the suspected-cause and composed-summary branches).
fn sample_views() -> Vec<Value> {
    use crate::domain::{EventKind, IncidentId, IncidentStatus, Severity, Source};
    let t = DateTime::parse_from_rfc3339("2026-01-10T14:23:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    let n = std::cell::Cell::new(0u128);
    let ev = |source, kind, title: &str, mins: i64| Event {
        id: Ulid::from_parts(t.timestamp_millis() as u64, {
            n.set(n.get() + 1);
            n.get()
        }),
        received_at: t,
        service: Some("api".into()),
        severity: Some(Severity::Critical),
        actor: Some("@sample".into()),
        url: Some("https://example.com".into()),
        ..Event::new(source, kind, t + chrono::Duration::minutes(mins), title)
    };
    let note = |kind, text: &str, mins: i64| {
        let mut e = ev(Source::Slack, kind, text, mins);
        e.attrs.insert("text".into(), text.into());
        e
    };
    let mut action = note(EventKind::AnnotationActionItem, "sample", 6);
    action.attrs.insert("priority".into(), "HIGH".into());
    let mut metric = ev(
        Source::Datadog,
        EventKind::AlertFiring,
        "Error rate: 23%",
        1,
    );
    metric.attrs.insert("value".into(), 23.into());
    metric.attrs.insert("unit".into(), "%".into());
    let mut latency = ev(Source::Datadog, EventKind::AlertFiring, "Latency high", 1);
    latency.attrs.insert("value".into(), 900.into());
    latency.attrs.insert("unit".into(), "ms".into());
    let mut deploy = ev(
        Source::Github,
        EventKind::ChangeDeployed,
        "Deployed api v2",
        -30,
    );
    deploy.attrs.insert("version".into(), "v2".into());
    let bare = vec![
        deploy,
        metric,
        latency,
        ev(
            Source::Pagerduty,
            EventKind::IncidentTriggered,
            "CRITICAL: sample",
            0,
        ),
        ev(
            Source::Pagerduty,
            EventKind::IncidentAcknowledged,
            "@sample acknowledged",
            2,
        ),
        ev(
            Source::Github,
            EventKind::ChangeRolledBack,
            "Rolled back sample",
            8,
        ),
        action.clone(),
        ev(
            Source::Pagerduty,
            EventKind::IncidentResolved,
            "Incident resolved",
            29,
        ),
    ];
    let mut full = bare.clone();
    full.extend([
        note(EventKind::AnnotationRootCause, "sample", 5),
        note(
            EventKind::AnnotationImpact,
            "12,400 users affected, 23% of requests failed",
            5,
        ),
        note(EventKind::AnnotationMitigation, "sample mitigation", 7),
        note(EventKind::AnnotationSummary, "sample", 9),
        note(EventKind::AnnotationCustomerMessage, "sample", 9),
        note(EventKind::AnnotationTitle, "sample", 9),
    ]);
    let mut second = action;
    second.id = Ulid::from_parts(t.timestamp_millis() as u64, 999);
    second.attrs.insert("text".into(), "another".into());
    full.push(second);
    let incident = Incident {
        id: IncidentId::parse("SAMPLE").unwrap_or_else(|_| IncidentId::generate()),
        title: "Sample".into(),
        status: IncidentStatus::Resolved,
        service: Some("api".into()),
        severity: Some(Severity::Critical),
        urgency: None,
        priority: Some("P1".into()),
        url: None,
        opened_by: Source::Pagerduty,
        triggered_at: t,
        acknowledged_at: None,
        resolved_at: Some(t + chrono::Duration::minutes(29)),
        reopen_count: 0,
        event_count: 6,
        next_seq: 6,
        updated_at: t,
    };
    let view_of = |events: &[Event], draft: bool| {
        let mut v = serde_json::to_value(view::build(&facts::facts(&incident, events), events))
            .unwrap_or(Value::Null);
        v["draft"] = Value::Bool(draft);
        v
    };
    vec![view_of(&full, true), view_of(&bare, false)]
}

/// The public view of an incident in `incident.json` (no bookkeeping fields, so the same
/// events give the same bytes).
#[derive(Serialize)]
struct IncidentFile<'a> {
    incident: Value,
    facts: &'a Facts,
    generator: &'a str,
}

const GENERATOR: &str = concat!("incidentpost ", env!("CARGO_PKG_VERSION"));

/// `timeline.svg`, `incident.json` and `events.ndjson`.
fn data_files(
    incident: &Incident,
    facts: &Facts,
    events: &[Event],
    roster: &crate::people::Roster,
) -> [Vec<u8>; 3] {
    let svg = svg::render(facts, events, roster).into_bytes();
    let mut record = serde_json::to_value(incident).unwrap_or(Value::Null);
    if let Some(o) = record.as_object_mut() {
        o.remove("updated_at");
        o.remove("next_seq");
    }
    let incident_file = IncidentFile {
        incident: record,
        facts,
        generator: GENERATOR,
    };
    let incident_json = serde_json::to_vec_pretty(&incident_file).unwrap_or_default();
    // Written straight into one buffer: no allocation per event.
    let mut ndjson = Vec::with_capacity(events.len() * 512);
    for e in events {
        let mark = ndjson.len();
        if serde_json::to_writer(&mut ndjson, e).is_ok() {
            ndjson.push(b'\n');
        } else {
            ndjson.truncate(mark);
        }
    }
    [svg, incident_json, ndjson]
}

/// Renders the whole pack of an incident from its events.
pub fn render_pack(
    templates: &Templates,
    incident: &Incident,
    events: &[Event],
) -> Result<Pack, RenderError> {
    render_pack_with(templates, incident, events, &Known::default())
}

/// Like [`render_pack`], with what is known beside the events.
pub fn render_pack_with(
    templates: &Templates,
    incident: &Incident,
    events: &[Event],
    known: &Known,
) -> Result<Pack, RenderError> {
    let events = facts::by_time(events);
    let events: &[Event] = &events;
    let roster = known.people.roster(events);
    let facts = facts::facts_with(incident, events, &known.prs, &roster);
    let view = view::build(&facts, events);
    let redactor = &templates.redactor;
    let reg = &templates.registry;

    let mut full = serde_json::to_value(&view).unwrap_or(Value::Null);
    let mut public = public_view(&full, redactor);
    let users_message = redactor
        .redact(reg.render("users-message", &public)?.trim())
        .into_owned();
    public["users_message"] = Value::from(users_message.clone());
    full["users_message"] = Value::from(users_message);
    if templates.redact_internal {
        redact_value(&mut full, redactor, false);
    }
    // With `redact_internal` the values were redacted above, before Markdown escaping (a
    // pass over the finished file could turn `[redacted](…)` into a link).
    let md = reg.render("postmortem.md", &full)?;
    let hn = redactor
        .redact(&reg.render("hn-post.txt", &public)?)
        .into_owned();
    let thread = number_posts(&redactor.redact(&reg.render("twitter-thread.txt", &public)?));
    let [svg, incident_json, ndjson] = data_files(incident, &facts, events, &roster);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("postmortem.md".into(), md.into_bytes()),
        ("timeline.svg".into(), svg),
        ("hn-post.txt".into(), hn.into_bytes()),
        ("twitter-thread.txt".into(), thread.into_bytes()),
        ("incident.json".into(), incident_json),
        ("events.ndjson".into(), ndjson),
    ];
    let manifest = json!({
        "generator": GENERATOR,
        "incident_id": incident.id,
        "draft": facts.draft,
        "files": files.iter().map(|(name, bytes)| {
            let mut entry = json!({
                "name": name,
                "bytes": bytes.len(),
                "sha256": hex::encode(Sha256::digest(bytes)),
            });
            // The text files: how many [redacted] marks each holds.
            if name.ends_with(".md") || name.ends_with(".txt") {
                entry["redactions"] = Value::from(Redactor::count(&String::from_utf8_lossy(bytes)));
            }
            entry
        }).collect::<Vec<_>>(),
        "public_files": PUBLIC_FILES,
    });
    files.push((
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    ));
    let zip = archive::zip_files(&files)?;
    Ok(Pack {
        files,
        zip,
        facts,
        roster,
    })
}
