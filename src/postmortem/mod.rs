//! The postmortem pack: facts (pure, with evidence) → Handlebars templates (strict,
//! embedded, overridable) + `timeline.svg` + `incident.json` + `events.ndjson` +
//! `manifest.json` → a deterministic zip. Rendering reads a snapshot of one incident and
//! returns bytes; it never touches the store.

pub mod enrich;
pub mod facts;
pub mod import;
pub mod renderer;
pub mod svg;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use handlebars::Handlebars;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use ulid::Ulid;

use crate::domain::{Event, Incident};
use facts::{Fact, Facts};

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

const TEMPLATES: [(&str, &str); 3] = [
    (
        "postmortem.md",
        include_str!("../../templates/postmortem.md.hbs"),
    ),
    (
        "hn-post.txt",
        include_str!("../../templates/hn-post.txt.hbs"),
    ),
    (
        "twitter-thread.txt",
        include_str!("../../templates/twitter-thread.txt.hbs"),
    ),
];

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

/// The loaded templates. Loading renders each against a complete sample context in
/// strict mode, so a template naming a variable that does not exist fails here, at
/// start-up, not in front of a customer.
pub struct Templates {
    /// `postmortem.md`: values escaped for Markdown.
    md: Handlebars<'static>,
    /// The `.txt` files: values as they are.
    txt: Handlebars<'static>,
}

/// Escapes a value for Markdown so that outside text (event titles come from the
/// internet) stays text: no links, images, footnotes, HTML, code or new blocks.
pub fn escape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    // Values often start a line (a summary, a list item's text): a leading block marker
    // would make a heading, quote, list, rule or table of it. Leading spaces would make
    // code, and say nothing.
    let s = s.trim_start();
    if s.starts_with(['#', '>', '+', '-', '*', '=', '|', '~', '_']) {
        out.push('\\');
    } else {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && matches!(s.as_bytes().get(digits), Some(b'.' | b')')) {
            out.push_str(&s[..digits]);
            out.push('\\');
            return out + &escape_markdown_inline(&s[digits..]);
        }
    }
    out.push_str(&escape_markdown_inline(s));
    out
}

fn escape_markdown_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '[' | ']' | '<' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

impl Templates {
    /// The embedded templates, each replaced by `<dir>/<name>.hbs` when that file exists.
    pub fn load(override_dir: Option<&Path>) -> Result<Self, RenderError> {
        let mut md = Handlebars::new();
        md.set_strict_mode(true);
        // Values are escaped for Markdown before they reach the context (see
        // `escaped_for_markdown`), because the context also carries our own markup
        // (citations, emphasis) that must stay markup.
        md.register_escape_fn(handlebars::no_escape);
        let mut txt = Handlebars::new();
        txt.set_strict_mode(true);
        txt.register_escape_fn(handlebars::no_escape);
        for (name, embedded) in TEMPLATES {
            let hb = if name.ends_with(".md") {
                &mut md
            } else {
                &mut txt
            };
            let source = match override_dir.map(|d| d.join(format!("{name}.hbs"))) {
                Some(p) if p.exists() => {
                    std::fs::read_to_string(&p).map_err(|e| RenderError::Template {
                        name: p.display().to_string(),
                        message: e.to_string(),
                    })?
                }
                _ => embedded.to_owned(),
            };
            hb.register_template_string(name, source)
                .map_err(|e| RenderError::Template {
                    name: name.to_owned(),
                    message: e.to_string(),
                })?;
        }
        let templates = Templates { md, txt };
        let sample = sample_context();
        for (name, _) in TEMPLATES {
            templates
                .registry(name)
                .render(name, &sample)
                .map_err(|e| RenderError::Template {
                    name: name.to_owned(),
                    message: e.to_string(),
                })?;
        }
        Ok(templates)
    }

    fn registry(&self, name: &str) -> &Handlebars<'static> {
        if name.ends_with(".md") {
            &self.md
        } else {
            &self.txt
        }
    }

    fn render(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        self.registry(name)
            .render(name, ctx)
            .map_err(|e| RenderError::Template {
                name: name.to_owned(),
                message: e.to_string(),
            })
    }
}

/// A rendered pack: its files and the zip of them.
#[derive(Debug, Clone)]
pub struct Pack {
    pub files: Vec<(String, Vec<u8>)>,
    pub zip: Vec<u8>,
    pub facts: Facts,
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

fn plural(n: i64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn duration_text(f: &Fact<i64>) -> Option<String> {
    f.value.map(|m| {
        if m >= 120 {
            format!("{} {}", plural(m / 60, "hour"), plural(m % 60, "minute"))
        } else {
            plural(m, "minute")
        }
    })
}

/// Citation labels: `t3` for the third timeline entry, `a1` for the first annotation.
struct Citations {
    labels: HashMap<Ulid, String>,
    used: Vec<Ulid>,
}

impl Citations {
    fn new(facts: &Facts, events: &[Event]) -> Self {
        let mut labels = HashMap::new();
        for t in &facts.timeline {
            labels.insert(t.id, format!("t{}", t.n));
        }
        let mut sorted: Vec<&Event> = events
            .iter()
            .filter(|e| !labels.contains_key(&e.id))
            .collect();
        sorted.sort_by_key(|e| e.occurred_at);
        for (i, e) in sorted.iter().enumerate() {
            labels.insert(e.id, format!("a{}", i + 1));
        }
        Citations {
            labels,
            used: Vec::new(),
        }
    }

    /// `[^t3][^a1]` for the evidence of a fact.
    fn cite(&mut self, ids: &[Ulid]) -> String {
        let mut out = String::new();
        for id in ids {
            if let Some(label) = self.labels.get(id) {
                if !self.used.contains(id) {
                    self.used.push(*id);
                }
                out.push_str(&format!("[^{label}]"));
            }
        }
        out
    }
}

fn time_label(t: DateTime<Utc>, multi_day: bool) -> String {
    if multi_day {
        t.format("%b %d %H:%M UTC").to_string()
    } else {
        t.format("%H:%M UTC").to_string()
    }
}

/// Cuts `text` so that `prefix + text + suffix` is at most `max` characters.
fn fit(prefix: &str, text: &str, suffix: &str, max: usize) -> String {
    let room = max.saturating_sub(prefix.chars().count() + suffix.chars().count());
    let body = if text.chars().count() <= room {
        text.to_owned()
    } else {
        let mut t: String = text.chars().take(room.saturating_sub(1)).collect();
        t.push('…');
        t
    };
    format!("{prefix}{body}{suffix}")
}

/// The template context (everything preformatted) plus the HN post and thread.
fn context(facts: &Facts, events: &[Event]) -> Value {
    let mut c = Citations::new(facts, events);
    let unknown = "unknown".to_owned();
    let title = facts
        .title
        .value
        .clone()
        .unwrap_or_else(|| facts.incident_id.clone());
    let start = facts
        .triggered
        .value
        .or(facts.detected.value)
        .or(facts.timeline.first().map(|t| t.at));
    let date = start
        .map(|t| t.format("%B %-d, %Y").to_string())
        .unwrap_or_else(|| unknown.clone());
    let duration = duration_text(&facts.duration_minutes).unwrap_or_else(|| {
        if facts.draft {
            "unknown (still open)".into()
        } else {
            unknown.clone()
        }
    });
    let service = facts.service.value.clone();
    let users = facts
        .users_affected
        .value
        .clone()
        .unwrap_or_else(|| unknown.clone());
    let severity = facts
        .severity
        .value
        .clone()
        .unwrap_or_else(|| unknown.clone());

    // Root cause.
    let rc_cite = c.cite(&facts.root_cause.evidence);
    let root_cause = match (&facts.root_cause.value, facts.root_cause_suspected) {
        (Some(rc), false) => format!("{rc} {rc_cite}"),
        (Some(rc), true) => {
            format!("*Suspected* (no `root cause:` annotation yet): {rc} {rc_cite}")
        }
        (None, _) => {
            "Unknown: no `root cause:` annotation and no change before detection to suspect."
                .to_owned()
        }
    };
    let suspects: Vec<Value> = facts
        .suspects
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, s)| json!({"rank": i + 1, "title": s.title, "reasons": s.reasons.join("; "), "cite": c.cite(&s.evidence)}))
        .collect();

    // Summary: the responders' own, else composed from facts that have evidence.
    let summary = match &facts.summary.value {
        Some(s) => format!("{s} {}", c.cite(&facts.summary.evidence)),
        None => {
            let mut parts = Vec::new();
            let what = service
                .clone()
                .map(|s| format!("the {s} service"))
                .unwrap_or_else(|| "our service".into());
            match (&facts.duration_minutes.value, start) {
                (Some(_), Some(_)) => parts.push(format!(
                    "On {date}, {what} was impaired for {duration} ({title}). {}",
                    c.cite(&facts.duration_minutes.evidence)
                )),
                _ => parts.push(format!(
                    "On {date}, {what} was impaired ({title}); the incident is {}. {}",
                    facts.status,
                    c.cite(&facts.triggered.evidence)
                )),
            }
            if let Some(u) = &facts.users_affected.value {
                parts.push(format!(
                    "Users affected: {u}. {}",
                    c.cite(&facts.users_affected.evidence)
                ));
            }
            for p in facts.peaks.iter().take(3) {
                parts.push(format!(
                    "At the peak, {} reached {}{}. {}",
                    p.label,
                    fmt_num(p.value),
                    p.unit,
                    c.cite(&p.evidence)
                ));
            }
            match (&facts.root_cause.value, facts.root_cause_suspected) {
                (Some(rc), false) => parts.push(format!(
                    "The root cause: {rc}. {}",
                    c.cite(&facts.root_cause.evidence)
                )),
                (Some(_), true) => parts.push(format!(
                    "The cause is not confirmed; the top suspect is {}. {}",
                    facts.suspects[0].title,
                    c.cite(&facts.suspects[0].evidence)
                )),
                (None, _) => parts.push("The root cause is not known yet.".into()),
            }
            if let Some(m) = facts.mitigations.first() {
                let after = facts
                    .spans
                    .iter()
                    .find(|s| s.name == "Time to mitigate")
                    .map(|s| format!(" {} after detection", plural(s.minutes, "minute")))
                    .unwrap_or_default();
                parts.push(format!(
                    "Mitigated{after}: {}. {}",
                    m.text,
                    c.cite(&m.evidence)
                ));
            }
            if let Some(r) = facts.resolved.value {
                parts.push(format!(
                    "Resolved at {}. {}",
                    time_label(r, facts.multi_day),
                    c.cite(&facts.resolved.evidence)
                ));
            }
            if let Some(a) = facts.action_items.first() {
                parts.push(format!(
                    "Next: {} ({}).",
                    a.text,
                    a.priority.as_deref().unwrap_or("MEDIUM")
                ));
            }
            parts.join(" ").replace(" .", ".").replace("  ", " ")
        }
    };

    let spans: Vec<Value> = facts
        .spans
        .iter()
        .map(|s| json!({"name": s.name, "minutes": s.minutes, "cite": c.cite(&[s.from, s.to])}))
        .collect();
    let timeline: Vec<Value> = facts
        .timeline
        .iter()
        .map(|t| json!({"time": time_label(t.at, facts.multi_day), "source": t.source, "title": t.title, "url": t.url, "ref": format!("t{}", t.n)}))
        .collect();
    // Every timeline entry is cited by its own line.
    for t in &facts.timeline {
        if !c.used.contains(&t.id) {
            c.used.push(t.id);
        }
    }
    let mitigations: Vec<Value> = facts
        .mitigations
        .iter()
        .map(|m| json!({"text": m.text, "cite": c.cite(&m.evidence)}))
        .collect();
    let action_items: Vec<Value> = facts
        .action_items
        .iter()
        .map(|a| json!({"priority": a.priority, "text": a.text, "cite": c.cite(&a.evidence)}))
        .collect();
    let customer_message = match &facts.customer_message.value {
        Some(m) => m.clone(),
        None => {
            let mut m = format!(
                "We are sorry. On {date}, {} was impaired",
                service
                    .clone()
                    .map(|s| format!("our {s} service"))
                    .unwrap_or_else(|| "our service".into())
            );
            if let Some(d) = duration_text(&facts.duration_minutes) {
                m.push_str(&format!(" for {d}"));
            }
            if let Some(u) = &facts.users_affected.value {
                m.push_str(&format!(" ({u})"));
            }
            m.push('.');
            if let (Some(rc), false) = (&facts.root_cause.value, facts.root_cause_suspected) {
                m.push_str(&format!(" The cause was: {rc}."));
            }
            if let Some(mit) = facts.mitigations.first() {
                m.push_str(&format!(" We fixed it: {}.", mit.text));
            }
            m.push_str(" We are working through the action items above so that it does not happen again. Thank you for your patience.");
            m
        }
    };

    // Evidence section: every cited event, in time order.
    let by_id: HashMap<Ulid, &Event> = events.iter().map(|e| (e.id, e)).collect();
    let mut cited: Vec<&Event> = c
        .used
        .iter()
        .filter_map(|id| by_id.get(id).copied())
        .collect();
    cited.sort_by_key(|e| e.occurred_at);
    let evidence: Vec<Value> = cited
        .iter()
        .map(|e| {
            json!({
                "ref": c.labels.get(&e.id).cloned().unwrap_or_default(),
                "line": format!("{} [{}] {}", time_label(e.occurred_at, facts.multi_day), e.source.display_name(), e.title),
                "url": e.url,
                "id": e.id.to_string(),
            })
        })
        .collect();

    // HN post and thread: the same facts, no citations.
    let what_fixed = format!(
        "What fixed it: {}.",
        facts
            .mitigations
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let rc_plain = facts.root_cause.value.clone().map(|rc| {
        if facts.root_cause_suspected {
            format!("suspected: {rc}")
        } else {
            rc
        }
    });
    let hn_title = fit(
        "Show HN: Postmortem: ",
        &title,
        &format!(" ({duration})"),
        80,
    );
    let mut hn = vec![format!(
        "On {date}, {} was impaired for {duration}.{}",
        service
            .clone()
            .map(|s| format!("our {s} service"))
            .unwrap_or_else(|| "our service".into()),
        facts
            .users_affected
            .value
            .as_ref()
            .map(|u| format!(" Users affected: {u}."))
            .unwrap_or_default()
    )];
    if let Some(p) = facts.peaks.first() {
        hn.push(format!(
            "At the peak, {} reached {}{}.",
            p.label,
            fmt_num(p.value),
            p.unit
        ));
    }
    hn.push(format!(
        "Root cause: {}",
        rc_plain.clone().unwrap_or_else(|| "still unknown.".into())
    ));
    if !facts.mitigations.is_empty() {
        hn.push(what_fixed.clone());
    }
    if !facts.action_items.is_empty() {
        let lessons: Vec<String> = facts
            .action_items
            .iter()
            .take(5)
            .map(|a| format!("- {}", a.text))
            .collect();
        hn.push(format!("Lessons and follow-ups:\n{}", lessons.join("\n")));
    }
    hn.push("Full postmortem with timeline, evidence and action items: [link]".into());
    let hn_body = hn.join("\n\n");

    let mut tweets: Vec<String> = Vec::new();
    tweets.push(format!(
        "Postmortem: {title}. On {date}, {} was impaired for {duration}. What happened, why, and what we're changing:",
        service.clone().map(|s| format!("our {s} service")).unwrap_or_else(|| "our service".into())
    ));
    let mut when = Vec::new();
    for (label, f) in [
        ("detected", &facts.detected),
        ("acknowledged", &facts.acknowledged),
        ("mitigated", &facts.mitigated),
        ("resolved", &facts.resolved),
    ] {
        if let Some(t) = f.value {
            when.push(format!("{label} {}", time_label(t, facts.multi_day)));
        }
    }
    if !when.is_empty() {
        tweets.push(format!("Timeline: {}.", when.join(", ")));
    }
    if let Some(p) = facts.peaks.first() {
        tweets.push(format!(
            "Impact: at the peak, {} reached {}{}.{}",
            p.label,
            fmt_num(p.value),
            p.unit,
            facts
                .users_affected
                .value
                .as_ref()
                .map(|u| format!(" Users affected: {u}."))
                .unwrap_or_default()
        ));
    }
    tweets.push(format!(
        "Root cause: {}",
        rc_plain.unwrap_or_else(|| "still unknown; we will update this thread.".into())
    ));
    if !facts.mitigations.is_empty() {
        tweets.push(what_fixed);
    }
    if !facts.action_items.is_empty() {
        tweets.push(format!(
            "What we're changing: {}.",
            facts
                .action_items
                .iter()
                .take(4)
                .map(|a| a.text.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    tweets.push("Full postmortem, with every claim linked to its evidence: [link]".into());
    let n = tweets.len();
    let tweets: Vec<String> = tweets
        .iter()
        .enumerate()
        .map(|(i, t)| fit("", t, &format!(" {}/{n}", i + 1), 280))
        .collect();

    json!({
        "incident_id": facts.incident_id,
        "title": title,
        "draft": facts.draft,
        "status": facts.status,
        "date": date,
        "duration": duration,
        "users_affected": users,
        "severity": severity,
        "service": service.unwrap_or_else(|| unknown.clone()),
        "responders": if facts.responders.is_empty() { unknown.clone() } else {
            facts.responders.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join(", ")
        },
        "summary": summary,
        "spans": spans,
        "timeline": timeline,
        "root_cause": root_cause,
        "suspects": suspects,
        "mitigations": mitigations,
        "action_items": action_items,
        "customer_message": customer_message,
        "evidence": evidence,
        "hn_title": hn_title,
        "hn_body": hn_body,
        "tweets": tweets,
    })
}

/// Only http(s) links, with the characters that would end a Markdown link escaped.
fn safe_url(url: &Option<String>) -> Option<String> {
    url.as_deref().and_then(crate::domain::clean_url).map(|u| {
        u.replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29")
            .replace('<', "%3C")
            .replace('>', "%3E")
    })
}

/// The facts and events with every outside text escaped for Markdown and every link
/// checked: what `postmortem.md` is rendered from.
fn escaped_for_markdown(facts: &Facts, events: &[Event]) -> (Facts, Vec<Event>) {
    let e = |s: &mut String| *s = escape_markdown(s);
    let fe = |f: &mut Fact<String>| {
        if let Some(v) = f.value.as_mut() {
            *v = escape_markdown(v);
        }
    };
    let mut f = facts.clone();
    for fact in [
        &mut f.title,
        &mut f.severity,
        &mut f.service,
        &mut f.users_affected,
        &mut f.root_cause,
        &mut f.summary,
        &mut f.customer_message,
    ] {
        fe(fact);
    }
    for s in &mut f.suspects {
        e(&mut s.title);
        s.reasons.iter_mut().for_each(e);
        s.url = safe_url(&s.url);
    }
    for i in f
        .mitigations
        .iter_mut()
        .chain(f.action_items.iter_mut())
        .chain(f.responders.iter_mut())
    {
        e(&mut i.text);
    }
    for p in &mut f.peaks {
        e(&mut p.label);
        e(&mut p.unit);
    }
    for t in &mut f.timeline {
        e(&mut t.title);
        t.url = safe_url(&t.url);
    }
    let events = events
        .iter()
        .map(|ev| {
            let mut ev = ev.clone();
            ev.title = escape_markdown(&ev.title);
            ev.url = safe_url(&ev.url);
            if let Some(a) = ev.actor.as_mut() {
                *a = escape_markdown(a);
            }
            ev
        })
        .collect();
    (f, events)
}

/// A context with every variable present, used to check templates at load.
fn sample_context() -> Value {
    use crate::domain::{EventKind, IncidentId, IncidentStatus, Severity, Source};
    let t = DateTime::parse_from_rfc3339("2026-01-10T14:23:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    let ev = |kind, title: &str, mins: i64| Event {
        id: Ulid::from_parts(t.timestamp_millis() as u64 + mins as u64, 1),
        source: Source::Pagerduty,
        kind,
        occurred_at: t + chrono::Duration::minutes(mins),
        received_at: t,
        title: title.into(),
        service: Some("api".into()),
        severity: Some(Severity::Critical),
        actor: Some("@sample".into()),
        url: Some("https://example.com".into()),
        keys: Default::default(),
        attrs: Default::default(),
        delivery: None,
        raw_id: None,
        incident_id: None,
        correlation: None,
    };
    let mut rc = ev(EventKind::AnnotationRootCause, "Root cause: sample", 5);
    rc.attrs.insert("text".into(), "sample".into());
    let mut action = ev(EventKind::AnnotationActionItem, "Action: sample", 6);
    action.attrs.insert("text".into(), "sample".into());
    action.attrs.insert("priority".into(), "HIGH".into());
    let events = vec![
        ev(EventKind::IncidentTriggered, "CRITICAL: sample", 0),
        ev(EventKind::IncidentAcknowledged, "@sample acknowledged", 2),
        rc,
        action,
        ev(EventKind::ChangeRolledBack, "Rolled back sample", 8),
        ev(EventKind::IncidentResolved, "Incident resolved", 29),
    ];
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
    let mut draft = context(&facts::facts(&incident, &events), &events);
    draft["draft"] = Value::Bool(true);
    draft
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

/// Renders the whole pack of an incident from its events.
pub fn render_pack(
    templates: &Templates,
    incident: &Incident,
    events: &[Event],
) -> Result<Pack, RenderError> {
    render_pack_with(templates, incident, events, &enrich::PrIndex::new())
}

/// Like [`render_pack`], with what the GitHub API said about the pull requests.
pub fn render_pack_with(
    templates: &Templates,
    incident: &Incident,
    events: &[Event],
    prs: &enrich::PrIndex,
) -> Result<Pack, RenderError> {
    let mut events: Vec<Event> = events.to_vec();
    events.sort_by_key(|e| e.occurred_at);
    let facts = facts::facts_with(incident, &events, prs);
    let ctx = context(&facts, &events);
    let (md_facts, md_events) = escaped_for_markdown(&facts, &events);
    let md_ctx = context(&md_facts, &md_events);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "postmortem.md".into(),
            templates.render("postmortem.md", &md_ctx)?.into_bytes(),
        ),
        (
            "timeline.svg".into(),
            svg::render(&facts, &events).into_bytes(),
        ),
        (
            "hn-post.txt".into(),
            templates.render("hn-post.txt", &ctx)?.into_bytes(),
        ),
        (
            "twitter-thread.txt".into(),
            templates.render("twitter-thread.txt", &ctx)?.into_bytes(),
        ),
    ];
    let mut record = serde_json::to_value(incident).unwrap_or(Value::Null);
    if let Some(o) = record.as_object_mut() {
        o.remove("updated_at");
        o.remove("next_seq");
    }
    let incident_file = IncidentFile {
        incident: record,
        facts: &facts,
        generator: GENERATOR,
    };
    files.push((
        "incident.json".into(),
        serde_json::to_vec_pretty(&incident_file).unwrap_or_default(),
    ));
    let mut ndjson = Vec::new();
    for e in &events {
        if let Ok(line) = serde_json::to_vec(e) {
            ndjson.extend_from_slice(&line);
            ndjson.push(b'\n');
        }
    }
    files.push(("events.ndjson".into(), ndjson));
    let manifest = json!({
        "generator": GENERATOR,
        "incident_id": incident.id,
        "draft": facts.draft,
        "files": files.iter().map(|(name, bytes)| json!({
            "name": name,
            "bytes": bytes.len(),
            "sha256": hex::encode(Sha256::digest(bytes)),
        })).collect::<Vec<_>>(),
    });
    files.push((
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    ));
    let zip = zip_files(&files)?;
    Ok(Pack { files, zip, facts })
}

/// A zip with fixed timestamps and a fixed order, so the same files give the same bytes.
fn zip_files(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, RenderError> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    for (name, bytes) in files {
        w.start_file(name.as_str(), options)
            .map_err(|e| RenderError::Zip(e.to_string()))?;
        w.write_all(bytes)
            .map_err(|e| RenderError::Zip(e.to_string()))?;
    }
    let cursor = w.finish().map_err(|e| RenderError::Zip(e.to_string()))?;
    Ok(cursor.into_inner())
}
