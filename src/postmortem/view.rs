//! The view model: what the templates are given. Rust computes the facts and formats
//! them (times, numbers, durations, citations); the templates say them. Every fact carries
//! its citation (`[^t3]`, empty where nothing proves it), and in the public files (HN
//! post, thread, message to users) every citation is empty.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use ulid::Ulid;

use super::facts::{Fact, Facts};
use super::markdown::safe_url;
use crate::domain::Event;

/// A formatted fact and the footnotes that prove it.
#[derive(Debug, Clone, Serialize)]
pub struct Cited {
    pub text: String,
    pub cite: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub name: String,
    pub minutes: i64,
    pub cite: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeakView {
    /// `error rate`, `latency`, …
    pub label: String,
    /// `23%`, `5200ms`.
    pub value: String,
    pub cite: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuspectView {
    pub rank: usize,
    pub title: String,
    /// Why it ranks where it does, `; `-separated.
    pub reasons: String,
    pub cite: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionView {
    pub priority: String,
    pub text: String,
    pub cite: String,
}

/// One timeline line.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub time: String,
    pub source: String,
    pub title: String,
    pub url: Option<String>,
    /// Its footnote label (`t3`).
    #[serde(rename = "ref")]
    pub label: String,
    /// Its webhook was missed and it was recovered from the provider's records.
    pub recovered: bool,
}

/// One footnote of the Evidence section.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceView {
    #[serde(rename = "ref")]
    pub label: String,
    pub time: String,
    pub source: String,
    pub title: String,
    pub url: Option<String>,
    pub id: String,
}

/// A moment of the incident (`14:23 UTC`) and its proof.
#[derive(Debug, Clone, Serialize)]
pub struct Moment {
    /// `detected`, `acknowledged`, `mitigated`, `resolved`.
    pub label: String,
    pub time: String,
    pub cite: String,
}

/// Everything the templates can say. Absent facts are `null` (so `{{#if …}}` can test
/// them); lists are empty.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub incident_id: String,
    pub title: String,
    /// True while the incident is open.
    pub draft: bool,
    pub status: String,
    /// `January 10, 2026`.
    pub date: Option<String>,
    /// `29 minutes`, `2 hours 5 minutes`; absent while open or unknown.
    pub duration: Option<String>,
    pub duration_cite: String,
    /// The citation of the start (the trigger).
    pub start_cite: String,
    pub service: Option<String>,
    pub severity: Option<String>,
    /// The number of users an `impact:` annotation states (`12,400`).
    pub users_affected: Option<String>,
    /// The share it states (`23%`).
    pub impact_share: Option<String>,
    /// The number with what it counts (`12,400 users`, `40 tenants`), for sentences.
    pub affected: Option<String>,
    /// The `impact:` annotation as written.
    pub impact: Option<Cited>,
    /// One name per person.
    pub responders: Vec<String>,
    /// The responders' own `summary:`, when they wrote one.
    pub summary: Option<Cited>,
    /// The responders' own `customer message:`, when they wrote one.
    pub customer_message: Option<String>,
    pub spans: Vec<SpanView>,
    /// `12 minutes`: detection to the first mitigation.
    pub time_to_mitigate: Option<String>,
    pub peaks: Vec<PeakView>,
    /// A responder's `root cause:`.
    pub root_cause: Option<Cited>,
    /// The top-ranked suspect change, with its reasons, when no root cause is written.
    pub suspected_cause: Option<Cited>,
    /// That change alone, without the reasons (which name people and files): what the
    /// public files say.
    pub suspected_change: Option<String>,
    pub suspects: Vec<SuspectView>,
    pub mitigations: Vec<Cited>,
    pub first_mitigation: Option<Cited>,
    pub action_items: Vec<ActionView>,
    pub first_action: Option<ActionView>,
    /// Detected, acknowledged, mitigated, resolved: those known, in that order.
    pub moments: Vec<Moment>,
    pub resolved: Option<Moment>,
    pub timeline: Vec<Row>,
    /// Gaps in the record that reconciliation filled, cited.
    pub recoveries: Vec<Cited>,
    pub evidence: Vec<EvidenceView>,
    /// The message to users, rendered (and redacted) from the `users-message` partial.
    pub users_message: String,
}

fn plural(n: i64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `29 minutes`, `2 hours 5 minutes`.
pub fn duration_text(minutes: i64) -> String {
    if minutes >= 120 && minutes % 60 == 0 {
        plural(minutes / 60, "hour")
    } else if minutes >= 120 {
        format!(
            "{} {}",
            plural(minutes / 60, "hour"),
            plural(minutes % 60, "minute")
        )
    } else {
        plural(minutes, "minute")
    }
}

pub fn time_label(t: DateTime<Utc>, multi_day: bool) -> String {
    if multi_day {
        t.format("%b %d %H:%M UTC").to_string()
    } else {
        t.format("%H:%M UTC").to_string()
    }
}

/// Citation labels: `t3` for the third timeline entry, `a1` for the first other event
/// (annotations) by time. Remembers which were used, for the Evidence section.
struct Citations {
    /// Event → timeline number (`t<n>`) or annotation number (`a<n>`).
    labels: HashMap<Ulid, (char, usize)>,
    used: Vec<Ulid>,
}

impl Citations {
    fn new(facts: &Facts, events: &[Event]) -> Self {
        let mut labels = HashMap::with_capacity(events.len());
        for t in &facts.timeline {
            labels.insert(t.id, ('t', t.n));
        }
        let mut others: Vec<&Event> = events
            .iter()
            .filter(|e| !labels.contains_key(&e.id))
            .collect();
        others.sort_by_key(|e| e.occurred_at);
        for (i, e) in others.iter().enumerate() {
            labels.insert(e.id, ('a', i + 1));
        }
        Citations {
            labels,
            used: Vec::new(),
        }
    }

    fn label(&self, id: &Ulid) -> Option<String> {
        self.labels.get(id).map(|(k, n)| format!("{k}{n}"))
    }

    /// `[^t3][^a1]` for the evidence of a fact.
    fn cite(&mut self, ids: &[Ulid]) -> String {
        let mut out = String::new();
        for id in ids {
            if let Some(label) = self.label(id) {
                if !self.used.contains(id) {
                    self.used.push(*id);
                }
                out.push_str("[^");
                out.push_str(&label);
                out.push(']');
            }
        }
        out
    }

    fn cited<T: Clone>(&mut self, f: &Fact<T>, text: impl Fn(&T) -> String) -> Option<Cited> {
        let v = f.value.as_ref()?;
        Some(Cited {
            text: text(v),
            cite: self.cite(&f.evidence),
        })
    }
}

/// A text the templates end with their own full stop: without one of its own.
fn clause(s: &str) -> String {
    s.trim().trim_end_matches(['.', ' ']).to_owned()
}

/// The view of `facts` (whose events are `events`).
pub fn build(facts: &Facts, events: &[Event]) -> View {
    let mut c = Citations::new(facts, events);
    let md = facts.multi_day;
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
    let start_cite = c.cite(&facts.triggered.evidence);
    let duration_cite = c.cite(&facts.duration_minutes.evidence);
    let impact = c.cited(&facts.impact, |t| clause(t));
    let summary = c.cited(&facts.summary, String::clone);
    let root_cause = if facts.root_cause_suspected {
        None
    } else {
        c.cited(&facts.root_cause, |t| clause(t))
    };
    let suspected_cause = if facts.root_cause_suspected {
        c.cited(&facts.root_cause, |t| clause(t))
    } else {
        None
    };
    let suspected_change = facts
        .root_cause_suspected
        .then(|| facts.suspects.first().map(|s| clause(&s.title)))
        .flatten();
    let suspects: Vec<SuspectView> = facts
        .suspects
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, s)| SuspectView {
            rank: i + 1,
            title: s.title.clone(),
            reasons: s.reasons.join("; "),
            cite: c.cite(&s.evidence),
        })
        .collect();
    let peaks: Vec<PeakView> = facts
        .peaks
        .iter()
        .map(|p| PeakView {
            label: p.label.clone(),
            value: format!("{}{}", super::fmt_num(p.value), p.unit),
            cite: c.cite(&p.evidence),
        })
        .collect();
    let spans: Vec<SpanView> = facts
        .spans
        .iter()
        .map(|s| SpanView {
            name: s.name.clone(),
            minutes: s.minutes,
            cite: c.cite(&[s.from, s.to]),
        })
        .collect();
    let time_to_mitigate = facts
        .spans
        .iter()
        .find(|s| s.name == "Time to mitigate")
        .map(|s| duration_text(s.minutes));
    let mitigations: Vec<Cited> = facts
        .mitigations
        .iter()
        .map(|m| Cited {
            text: clause(&m.text),
            cite: c.cite(&m.evidence),
        })
        .collect();
    let action_items: Vec<ActionView> = facts
        .action_items
        .iter()
        .map(|a| ActionView {
            priority: a.priority.clone().unwrap_or_else(|| "MEDIUM".into()),
            text: clause(&a.text),
            cite: c.cite(&a.evidence),
        })
        .collect();
    let mut moments = Vec::new();
    for (label, f) in [
        ("detected", &facts.detected),
        ("acknowledged", &facts.acknowledged),
        ("mitigated", &facts.mitigated),
        ("resolved", &facts.resolved),
    ] {
        if let Some(t) = f.value {
            moments.push(Moment {
                label: label.into(),
                time: time_label(t, md),
                cite: c.cite(&f.evidence),
            });
        }
    }
    let resolved = moments.iter().find(|m| m.label == "resolved").cloned();
    let recoveries: Vec<Cited> = facts
        .recoveries
        .iter()
        .map(|r| Cited {
            text: r.text.clone(),
            cite: c.cite(&r.evidence),
        })
        .collect();
    let by_id: HashMap<Ulid, &Event> = events.iter().map(|e| (e.id, e)).collect();
    let timeline: Vec<Row> = facts
        .timeline
        .iter()
        .map(|t| Row {
            time: time_label(t.at, md),
            source: t.source.clone(),
            title: t.title.clone(),
            url: safe_url(t.url.as_deref()),
            label: format!("t{}", t.n),
            recovered: by_id
                .get(&t.id)
                .is_some_and(|e| e.attrs.contains_key(crate::domain::ATTR_RECOVERED)),
        })
        .collect();
    // The Evidence section: the events the claims cite (a timeline line is an event, not
    // a claim: it carries its own source link), in time order.
    let titles: HashMap<Ulid, &str> = facts
        .timeline
        .iter()
        .filter(|t| c.used.contains(&t.id))
        .map(|t| (t.id, t.title.as_str()))
        .collect();
    let mut cited: Vec<&Event> = c
        .used
        .iter()
        .filter_map(|id| by_id.get(id).copied())
        .collect();
    cited.sort_by_key(|e| (e.occurred_at, c.labels.get(&e.id).copied()));
    let evidence = cited
        .iter()
        .map(|e| EvidenceView {
            label: c.label(&e.id).unwrap_or_default(),
            time: time_label(e.occurred_at, md),
            source: e.source.display_name().to_owned(),
            title: titles
                .get(&e.id)
                .map(|t| (*t).to_owned())
                .unwrap_or_else(|| e.title.clone()),
            url: safe_url(e.url.as_deref()),
            id: e.id.to_string(),
        })
        .collect();
    View {
        incident_id: facts.incident_id.clone(),
        title,
        draft: facts.draft,
        status: facts.status.clone(),
        date: start.map(|t| t.format("%B %-d, %Y").to_string()),
        duration: facts.duration_minutes.value.map(duration_text),
        duration_cite,
        start_cite,
        service: facts.service.value.clone(),
        severity: facts.severity.value.clone(),
        users_affected: facts.users_affected.value.clone(),
        impact_share: facts.impact_share.value.clone(),
        affected: facts.impact.value.as_deref().and_then(|t| {
            let (n, noun, _) = super::facts::impact_parts(t);
            Some(format!("{} {}", n?, noun.unwrap_or_else(|| "users".into())))
        }),
        impact,
        responders: facts.responders.iter().map(|r| r.text.clone()).collect(),
        summary,
        customer_message: facts.customer_message.value.clone(),
        spans,
        time_to_mitigate,
        peaks,
        root_cause,
        suspected_cause,
        suspected_change,
        suspects,
        first_mitigation: mitigations.first().cloned(),
        mitigations,
        first_action: action_items.first().cloned(),
        action_items,
        moments,
        resolved,
        timeline,
        recoveries,
        evidence,
        users_message: String::new(),
    }
}
