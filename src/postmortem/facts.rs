//! Facts: a pure function from an incident's events to what the postmortem says. Every
//! fact keeps the ids of the events that support it; a fact without evidence is
//! `unknown`, never guessed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use ulid::Ulid;

use super::enrich::{pr_key, PrIndex};
use super::said_once;
use crate::domain::{undouble_prefix, Event, EventKind, Incident, IncidentStatus, Source};
use crate::people::Roster;

/// A value and the events that prove it. `value: None` is written as unknown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact<T> {
    pub value: Option<T>,
    pub evidence: Vec<Ulid>,
}

impl<T> Fact<T> {
    fn known(value: T, evidence: Vec<Ulid>) -> Self {
        Fact {
            value: Some(value),
            evidence,
        }
    }
    fn unknown() -> Self {
        Fact {
            value: None,
            evidence: Vec::new(),
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// 1-based number, used by citations (`[^3]`).
    pub n: usize,
    pub id: Ulid,
    pub at: DateTime<Utc>,
    pub source: String,
    pub kind: String,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// A time span between two events (time to detect, acknowledge, mitigate, resolve).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub name: String,
    pub minutes: i64,
    pub from: Ulid,
    pub to: Ulid,
}

/// The highest value seen of one measure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peak {
    /// `error rate`, `latency`, `connection pool`, `CPU`, or a series label.
    pub label: String,
    pub value: f64,
    pub unit: String,
    pub evidence: Vec<Ulid>,
}

/// A change that may have caused the incident, with the reasons it ranks where it does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suspect {
    /// `owner/repo#number` of its pull request, when it has one.
    #[serde(skip)]
    pub key: Option<String>,
    /// When the change happened (ties in score go to the most recent).
    pub at: DateTime<Utc>,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub score: u32,
    pub reasons: Vec<String>,
    pub evidence: Vec<Ulid>,
}

/// A mitigation or an action item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    pub evidence: Vec<Ulid>,
}

/// Everything the pack says, with evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    pub incident_id: String,
    pub status: String,
    /// True while the incident is open: the pack is a draft.
    pub draft: bool,
    pub title: Fact<String>,
    pub severity: Fact<String>,
    pub service: Fact<String>,
    pub detected: Fact<DateTime<Utc>>,
    pub triggered: Fact<DateTime<Utc>>,
    pub acknowledged: Fact<DateTime<Utc>>,
    pub mitigated: Fact<DateTime<Utc>>,
    pub resolved: Fact<DateTime<Utc>>,
    /// Trigger (or first detection) to resolve, whole minutes.
    pub duration_minutes: Fact<i64>,
    pub spans: Vec<Span>,
    pub responders: Vec<Item>,
    pub peaks: Vec<Peak>,
    /// The `impact:` annotation as written (`12,400 users affected, 23% of requests …`).
    pub impact: Fact<String>,
    /// The number of users it states (`12,400`), when it states one.
    pub users_affected: Fact<String>,
    /// The share it states (`23%`), when it states one.
    pub impact_share: Fact<String>,
    pub suspects: Vec<Suspect>,
    pub root_cause: Fact<String>,
    /// True when the root cause is the top suspect, not a responder's annotation.
    pub root_cause_suspected: bool,
    pub mitigations: Vec<Item>,
    pub action_items: Vec<Item>,
    pub summary: Fact<String>,
    pub customer_message: Fact<String>,
    pub timeline: Vec<TimelineEntry>,
    /// Webhooks that were missed and recovered from the providers' own records: one
    /// sentence per provider, citing the recovered events.
    pub recoveries: Vec<Item>,
    /// True when the timeline spans more than one UTC day.
    pub multi_day: bool,
}

impl Facts {
    /// Every event id a fact cites as evidence.
    pub fn cited(&self) -> Vec<Ulid> {
        let mut out: Vec<Ulid> = Vec::new();
        for ids in [
            &self.title.evidence,
            &self.severity.evidence,
            &self.service.evidence,
            &self.detected.evidence,
            &self.triggered.evidence,
            &self.acknowledged.evidence,
            &self.mitigated.evidence,
            &self.resolved.evidence,
            &self.duration_minutes.evidence,
            &self.impact.evidence,
            &self.users_affected.evidence,
            &self.impact_share.evidence,
            &self.root_cause.evidence,
            &self.summary.evidence,
            &self.customer_message.evidence,
        ] {
            out.extend(ids);
        }
        for items in [
            &self.responders,
            &self.mitigations,
            &self.action_items,
            &self.recoveries,
        ] {
            out.extend(items.iter().flat_map(|i| i.evidence.iter()));
        }
        out.extend(self.peaks.iter().flat_map(|p| p.evidence.iter()));
        out.sort();
        out.dedup();
        out
    }
}

fn text_of(e: &Event) -> String {
    e.attrs
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| e.title.clone())
}

/// The annotation of a kind that counts: the one received last. Not the latest
/// `occurred_at`: a sender may date an event up to a day ahead, and it must not outrank
/// a later edit ("the last one wins").
fn last_annotation(events: &[Event], kind: EventKind) -> Option<&Event> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .max_by_key(|e| (e.received_at, e.id))
}

/// Classifies a measurement by what its line talks about.
fn measure_label(e: &Event) -> Option<String> {
    if let Some(label) = e.attrs.get("label").and_then(Value::as_str) {
        return Some(label.to_owned());
    }
    let t = format!(
        "{} {}",
        e.title.to_ascii_lowercase(),
        e.attrs
            .get("metric")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
    );
    let label = if t.contains("error") || t.contains("5xx") || t.contains("503") {
        "error rate"
    } else if t.contains("latency") || t.contains("response time") {
        "latency"
    } else if t.contains("cpu") {
        "CPU"
    } else if t.contains("pool") || t.contains("connection") {
        "connection pool use"
    } else if t.contains("memory") {
        "memory"
    } else {
        return e
            .attrs
            .get("metric")
            .and_then(Value::as_str)
            .map(str::to_owned);
    };
    Some(label.to_owned())
}

fn peaks(events: &[Event]) -> Vec<Peak> {
    let mut best: BTreeMap<String, Peak> = BTreeMap::new();
    for e in events {
        let value = e
            .attrs
            .get("max")
            .or_else(|| e.attrs.get("value"))
            .and_then(Value::as_f64);
        let (Some(value), Some(label)) = (value, measure_label(e)) else {
            continue;
        };
        if e.kind == EventKind::AlertRecovered {
            continue;
        }
        let unit = e
            .attrs
            .get("unit")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let entry = best.entry(label.clone()).or_insert(Peak {
            label,
            value,
            unit: unit.clone(),
            evidence: vec![e.id],
        });
        if value > entry.value {
            entry.value = value;
            entry.unit = unit;
            entry.evidence = vec![e.id];
        }
    }
    // The measures users feel first.
    let order = |label: &str| match label {
        "error rate" => 0,
        "latency" => 1,
        "connection pool use" => 2,
        "CPU" => 3,
        _ => 4,
    };
    let mut out: Vec<Peak> = best.into_values().collect();
    out.sort_by_key(|p| order(&p.label));
    out
}

fn is_detection(e: &Event) -> bool {
    matches!(e.kind, EventKind::AlertFiring | EventKind::AlertWarning)
}

/// Ranks the changes before detection (see README, Postmortem).
fn suspects(
    events: &[Event],
    incident: &Incident,
    detected: DateTime<Utc>,
    prs: &PrIndex,
    roster: &Roster,
) -> Vec<Suspect> {
    let chat: Vec<&Event> = events
        .iter()
        .filter(|e| {
            matches!(e.kind, EventKind::ChatMessage | EventKind::IncidentNote)
                || e.kind.as_str().starts_with("annotation.")
        })
        .collect();
    let rollbacks: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::ChangeRolledBack)
        .collect();
    let mut out = Vec::new();
    for e in events.iter().filter(|e| {
        matches!(
            e.kind,
            EventKind::ChangeMerged
                | EventKind::ChangeDeployed
                | EventKind::ChangeReleased
                | EventKind::ChangePushed
        ) && e.occurred_at <= detected
    }) {
        let mut score = 1;
        let mut reasons = Vec::new();
        let mut evidence = vec![e.id];
        let verb = match e.kind {
            EventKind::ChangeMerged => "merged",
            EventKind::ChangeDeployed => "deployed",
            EventKind::ChangeReleased => "released",
            _ => "pushed",
        };
        let before = detected - e.occurred_at;
        let ago = if before.num_hours() >= 1 {
            format!("{} h", before.num_hours())
        } else {
            format!("{} min", before.num_minutes())
        };
        reasons.push(format!("{verb} {ago} before detection"));
        if matches!(e.kind, EventKind::ChangeMerged | EventKind::ChangeDeployed) {
            score += 2;
        }
        if before.num_hours() < 24 {
            score += 1;
        }
        let same_service = match (&e.service, &incident.service) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        };
        if same_service {
            score += 2;
            reasons.push("on the affected service".into());
        }
        // Named in chat: its PR number, version or service name.
        let mut names: Vec<String> = Vec::new();
        if let Some(n) = e.attrs.get("pr_number").and_then(Value::as_u64) {
            names.push(format!("#{n}"));
        }
        if let Some(v) = e.attrs.get("version").and_then(Value::as_str) {
            names.push(v.to_owned());
        }
        if let Some(s) = &e.service {
            names.push(s.clone());
        }
        if let Some(c) = chat.iter().find(|c| {
            let t = text_of(c).to_ascii_lowercase();
            names
                .iter()
                .any(|n| n.len() >= 2 && t.contains(&n.to_ascii_lowercase()))
        }) {
            score += 3;
            reasons.push(format!(
                "named in chat ({})",
                roster
                    .name_of(&c.id)
                    .map(str::to_owned)
                    .or_else(|| c.actor.clone())
                    .unwrap_or_else(|| c.source.display_name().to_owned())
            ));
            evidence.push(c.id);
        }
        if let Some(r) = rollbacks.iter().find(|r| {
            r.occurred_at > e.occurred_at
                && (r.service == e.service
                    || e.attrs
                        .get("pr_title")
                        .and_then(Value::as_str)
                        .is_some_and(|t| r.title.contains(t)))
        }) {
            score += 4;
            reasons.push("later rolled back".into());
            evidence.push(r.id);
        }
        let details = pr_key(e).and_then(|k| prs.get(&k));
        if let Some(d) = details {
            if !d.files.is_empty() {
                let total = d
                    .changed_files
                    .map(|n| n as usize)
                    .unwrap_or(d.files.len())
                    .max(d.files.len());
                let shown: Vec<&str> = d.files.iter().take(3).map(String::as_str).collect();
                let more = total.saturating_sub(shown.len());
                reasons.push(format!(
                    "changed {} file{}: {}{}",
                    total,
                    if total == 1 { "" } else { "s" },
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ));
            }
            if let Some(author) = &d.author {
                reasons.push(format!("by {author}"));
            }
        }
        let title = shown_title(e, roster);
        let same = out.iter().position(|s: &Suspect| {
            s.key.is_some() && s.key == pr_key(e) || said_once::same(&s.title, &title)
        });
        if let Some(i) = same {
            // The same change twice (a merge and its push, two deliveries of one deploy):
            // one suspect, with every event and the higher score.
            let s = &mut out[i];
            s.score = s.score.max(score);
            for r in reasons {
                if !s.reasons.contains(&r) {
                    s.reasons.push(r);
                }
            }
            for id in evidence {
                if !s.evidence.contains(&id) {
                    s.evidence.push(id);
                }
            }
            continue;
        }
        out.push(Suspect {
            key: pr_key(e),
            at: e.occurred_at,
            title,
            url: e
                .url
                .clone()
                .or_else(|| details.and_then(|d| d.url.clone())),
            score,
            reasons,
            evidence,
        });
    }
    // Highest score first; ties: the most recent change first.
    out.sort_by_key(|s| (std::cmp::Reverse(s.score), std::cmp::Reverse(s.at)));
    out
}

fn minutes(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    ((to - from).num_seconds().max(0) + 30) / 60
}

/// Builds the facts of an incident from its events (any order).
pub fn facts(incident: &Incident, events: &[Event]) -> Facts {
    let roster = crate::people::Directory::default().roster(events);
    facts_with(incident, events, &PrIndex::new(), &roster)
}

/// The users and the share an `impact:` text states: `12,400 users affected, 23% of
/// requests failed` → (`12,400`, `23%`).
pub fn impact_numbers(text: &str) -> (Option<String>, Option<String>) {
    let (users, _, share) = impact_parts(text);
    (users, share)
}

/// Like [`impact_numbers`], with the word the number counts (`users`, `tenants`).
pub fn impact_parts(text: &str) -> (Option<String>, Option<String>, Option<String>) {
    use std::sync::LazyLock;
    // A number right before the people it counts: `12,400 users`, `~3k customers`.
    static USERS: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(?i)(?:^|[^\d.,])(~?\d{1,3}(?:,\d{3})+|~?\d+(?:\.\d+)?\s?[km]?)\+?\s+(users?|customers?|accounts?|people|tenants?|merchants?|clients?|members?|subscribers?|players?|visitors?|sellers?|buyers?|drivers?|riders?)\b")
            .unwrap_or_else(|e| unreachable!("static regex: {e}"))
    });
    static SHARE: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(\d+(?:\.\d+)?)\s?%")
            .unwrap_or_else(|e| unreachable!("static regex: {e}"))
    });
    let found = USERS.captures(text);
    let users = found
        .as_ref()
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().replace(' ', ""));
    let noun = found
        .as_ref()
        .and_then(|c| c.get(2))
        .map(|m| m.as_str().to_lowercase());
    // The worst share stated ("from 0.1% to 23%": 23%).
    let share = SHARE
        .captures_iter(text)
        .filter_map(|c| c.get(1))
        .filter_map(|m| m.as_str().parse::<f64>().ok().map(|v| (v, m.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| format!("{s}%"));
    (users, noun, share)
}

/// The title an event shows: its actor by name, a doubled prefix removed.
pub fn shown_title(e: &Event, roster: &Roster) -> String {
    undouble_prefix(&roster.title(e)).into_owned()
}

/// Like [`facts`], with GitHub's details of the pull requests behind the changes and the
/// people behind the actors.
/// The events in time order; the renderer passes them sorted already (no copy then).
pub(crate) fn by_time(events: &[Event]) -> std::borrow::Cow<'_, [Event]> {
    if events.is_sorted_by_key(|e| e.occurred_at) {
        std::borrow::Cow::Borrowed(events)
    } else {
        let mut sorted = events.to_vec();
        sorted.sort_by_key(|e| e.occurred_at);
        std::borrow::Cow::Owned(sorted)
    }
}

pub fn facts_with(incident: &Incident, events: &[Event], prs: &PrIndex, roster: &Roster) -> Facts {
    let events = by_time(events);
    let events: &[Event] = &events;

    let first = |k: EventKind| events.iter().find(|e| e.kind == k);
    let trigger = first(EventKind::IncidentTriggered);
    let ack = first(EventKind::IncidentAcknowledged);
    let resolve = events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::IncidentResolved);
    let detection = events
        .iter()
        .find(|e| is_detection(e) && trigger.is_none_or(|t| e.occurred_at <= t.occurred_at))
        .or(trigger);
    let mitigation = events.iter().find(|e| {
        matches!(
            e.kind,
            EventKind::ChangeRolledBack | EventKind::AnnotationMitigation
        )
    });

    let triggered = match trigger {
        Some(t) => Fact::known(t.occurred_at, vec![t.id]),
        None => Fact::unknown(),
    };
    let at = |e: Option<&Event>| match e {
        Some(e) => Fact::known(e.occurred_at, vec![e.id]),
        None => Fact::unknown(),
    };
    let detected = at(detection);
    let acknowledged = at(ack);
    let mitigated = at(mitigation);
    let resolved = if incident.status == IncidentStatus::Resolved {
        at(resolve)
    } else {
        Fact::unknown()
    };
    let start = detection.or(trigger);
    let duration_minutes = match (trigger.or(start), resolve) {
        (Some(s), Some(r)) if incident.status == IncidentStatus::Resolved => {
            Fact::known(minutes(s.occurred_at, r.occurred_at), vec![s.id, r.id])
        }
        _ => Fact::unknown(),
    };
    let mut spans = Vec::new();
    let mut span = |name: &str, a: Option<&Event>, b: Option<&Event>| {
        if let (Some(a), Some(b)) = (a, b) {
            spans.push(Span {
                name: name.to_owned(),
                minutes: minutes(a.occurred_at, b.occurred_at),
                from: a.id,
                to: b.id,
            });
        }
    };
    if detection.map(|d| d.id) != trigger.map(|t| t.id) {
        span("Time to page", detection, trigger);
    }
    span("Time to acknowledge", trigger, ack);
    span("Time to mitigate", start, mitigation);
    span(
        "Time to resolve",
        start,
        resolve.filter(|_| incident.status == IncidentStatus::Resolved),
    );

    let annotation =
        |kind| last_annotation(events, kind).map(|e| Fact::known(text_of(e), vec![e.id]));
    let title = annotation(EventKind::AnnotationTitle).unwrap_or_else(|| match trigger {
        Some(t) => Fact::known(incident.title.clone(), vec![t.id]),
        None => Fact::known(incident.title.clone(), Vec::new()),
    });
    let severity = match (&incident.priority, incident.severity, trigger) {
        (Some(p), _, t) => Fact::known(p.clone(), t.map(|t| vec![t.id]).unwrap_or_default()),
        (None, Some(s), t) => Fact::known(
            s.label().to_owned(),
            t.map(|t| vec![t.id]).unwrap_or_default(),
        ),
        _ => Fact::unknown(),
    };
    let service = match &incident.service {
        Some(s) => Fact::known(s.clone(), trigger.map(|t| vec![t.id]).unwrap_or_default()),
        None => Fact::unknown(),
    };
    let impact = annotation(EventKind::AnnotationImpact).unwrap_or_else(Fact::unknown);
    let (users, share) = impact
        .value
        .as_deref()
        .map(impact_numbers)
        .unwrap_or_default();
    let stated = |v: Option<String>| match v {
        Some(v) => Fact::known(v, impact.evidence.clone()),
        None => Fact::unknown(),
    };
    let users_affected = stated(users);
    let impact_share = stated(share);

    // Responders: who acted in PagerDuty (not who or what opened the incident) or Slack,
    // or rolled back; one line a person.
    let mut responders: Vec<Item> = Vec::new();
    let mut responder_of: Vec<usize> = Vec::new();
    for e in events.iter().filter(|e| {
        e.source == Source::Pagerduty && e.kind != EventKind::IncidentTriggered
            || e.source == Source::Slack
            || e.kind == EventKind::ChangeRolledBack
    }) {
        let (Some(person), Some(name)) = (roster.person_of(&e.id), roster.name_of(&e.id)) else {
            continue;
        };
        match responder_of.iter().position(|&p| p == person) {
            Some(i) => {
                if responders[i].evidence.len() < 3 {
                    responders[i].evidence.push(e.id)
                }
            }
            None => {
                responder_of.push(person);
                responders.push(Item {
                    text: name.to_owned(),
                    priority: None,
                    evidence: vec![e.id],
                });
            }
        }
    }

    let peaks = peaks(events);
    let detected_at = detection
        .map(|d| d.occurred_at)
        .unwrap_or(incident.triggered_at);
    let suspects = suspects(events, incident, detected_at, prs, roster);
    let (root_cause, root_cause_suspected) = match annotation(EventKind::AnnotationRootCause) {
        Some(f) => (f, false),
        None => match suspects.first() {
            Some(s) => (
                Fact::known(
                    format!("{} ({})", s.title, s.reasons.join("; ")),
                    s.evidence.clone(),
                ),
                true,
            ),
            None => (Fact::unknown(), false),
        },
    };

    // An edit through the API replaces a whole list: only it and entries received after
    // it count.
    let replaced_from = |kind: EventKind| {
        events
            .iter()
            .filter(|e| {
                e.kind == kind && e.attrs.get("replace").and_then(Value::as_bool) == Some(true)
            })
            .map(|e| (e.received_at, e.id))
            .max()
    };
    let superseded = |e: &Event, from: Option<(DateTime<Utc>, Ulid)>| {
        from.is_some_and(|f| (e.received_at, e.id) < f)
    };
    let list_items = |e: &Event| -> Option<Vec<(String, Option<String>)>> {
        let items = e.attrs.get("items")?.as_array()?;
        Some(
            items
                .iter()
                .filter_map(|i| match i {
                    Value::String(t) => Some((t.clone(), None)),
                    Value::Object(o) => Some((
                        o.get("text")?.as_str()?.to_owned(),
                        o.get("priority")
                            .and_then(Value::as_str)
                            .map(str::to_ascii_uppercase),
                    )),
                    _ => None,
                })
                .collect(),
        )
    };
    let mitigation_from = replaced_from(EventKind::AnnotationMitigation);
    let mut mitigations: Vec<Item> = Vec::new();
    // Per mitigation: whether its text is what a change event said (past tense, "Rolled
    // back …"), which reads better than the chat's "Rolling back …".
    let mut from_change: Vec<bool> = Vec::new();
    for e in events {
        if e.kind == EventKind::AnnotationMitigation && superseded(e, mitigation_from) {
            continue;
        }
        let texts: Vec<String> = match (e.kind, list_items(e)) {
            (EventKind::AnnotationMitigation, Some(items)) => {
                items.into_iter().map(|(t, _)| t).collect()
            }
            (EventKind::AnnotationMitigation, None) => vec![text_of(e)],
            (EventKind::ChangeRolledBack, _) => vec![shown_title(e, roster)],
            _ => continue,
        };
        let is_change = e.kind == EventKind::ChangeRolledBack;
        for text in texts {
            match mitigations
                .iter()
                .position(|m| said_once::same(&m.text, &text))
            {
                Some(i) => {
                    if !mitigations[i].evidence.contains(&e.id) {
                        mitigations[i].evidence.push(e.id);
                    }
                    if is_change && !from_change[i] {
                        mitigations[i].text = text;
                        from_change[i] = true;
                    }
                }
                None => {
                    mitigations.push(Item {
                        text,
                        priority: None,
                        evidence: vec![e.id],
                    });
                    from_change.push(is_change);
                }
            }
        }
    }

    let action_from = replaced_from(EventKind::AnnotationActionItem);
    let mut action_items: Vec<Item> = Vec::new();
    let mut entries: Vec<(String, String, Ulid)> = Vec::new();
    for e in events {
        if e.kind != EventKind::AnnotationActionItem || superseded(e, action_from) {
            continue;
        }
        match list_items(e) {
            Some(items) => {
                for (text, priority) in items {
                    entries.push((text, priority.unwrap_or_else(|| "MEDIUM".into()), e.id));
                }
            }
            None => entries.push((
                text_of(e),
                e.attrs
                    .get("priority")
                    .and_then(Value::as_str)
                    .unwrap_or("MEDIUM")
                    .to_owned(),
                e.id,
            )),
        }
    }
    for (text, priority, id) in entries {
        let e_id = id;
        match action_items
            .iter_mut()
            .find(|a| said_once::same(&a.text, &text))
        {
            Some(existing) => {
                if !existing.evidence.contains(&e_id) {
                    existing.evidence.push(e_id);
                }
                if rank(&priority) < rank(existing.priority.as_deref().unwrap_or("MEDIUM")) {
                    existing.priority = Some(priority);
                }
            }
            None => action_items.push(Item {
                text,
                priority: Some(priority),
                evidence: vec![e_id],
            }),
        }
    }
    action_items.sort_by_key(|a| rank(a.priority.as_deref().unwrap_or("MEDIUM")));

    let on_timeline: Vec<&Event> = events
        .iter()
        .filter(|e| !e.kind.as_str().starts_with("annotation."))
        .collect();
    let multi_day = match (on_timeline.first(), on_timeline.last()) {
        (Some(a), Some(b)) => a.occurred_at.date_naive() != b.occurred_at.date_naive(),
        _ => false,
    };
    let timeline: Vec<TimelineEntry> = events
        .iter()
        .filter(|e| !e.kind.as_str().starts_with("annotation."))
        .enumerate()
        .map(|(i, e)| TimelineEntry {
            n: i + 1,
            id: e.id,
            at: e.occurred_at,
            source: e.source.display_name().to_owned(),
            kind: e.kind.as_str().to_owned(),
            title: shown_title(e, roster),
            url: e.url.clone(),
            correlation: e.correlation.map(|c| c.as_str().to_owned()),
            severity: e.severity.map(|s| s.label().to_owned()),
        })
        .collect();

    let summary = annotation(EventKind::AnnotationSummary).unwrap_or_else(Fact::unknown);
    let customer_message =
        annotation(EventKind::AnnotationCustomerMessage).unwrap_or_else(Fact::unknown);

    Facts {
        incident_id: incident.id.to_string(),
        status: incident.status.as_str().to_owned(),
        draft: incident.status.is_open(),
        title,
        severity,
        service,
        detected,
        triggered,
        acknowledged,
        mitigated,
        resolved,
        duration_minutes,
        spans,
        responders,
        peaks,
        impact,
        users_affected,
        impact_share,
        suspects,
        root_cause,
        root_cause_suspected,
        mitigations,
        action_items,
        summary,
        customer_message,
        timeline,
        recoveries: recoveries(events),
        multi_day,
    }
}

/// One sentence per provider whose missed deliveries reconciliation recovered
/// (`2 GitHub deliveries were missed and recovered from GitHub's delivery log`).
fn recoveries(events: &[Event]) -> Vec<Item> {
    let mut by: BTreeMap<String, (BTreeSet<String>, Vec<Ulid>)> = BTreeMap::new();
    for e in events {
        let Some(from) = e
            .attrs
            .get(crate::domain::ATTR_RECOVERED)
            .and_then(Value::as_str)
        else {
            continue;
        };
        let entry = by.entry(from.to_owned()).or_default();
        entry
            .0
            .insert(e.delivery.clone().unwrap_or_else(|| e.id.to_string()));
        entry.1.push(e.id);
    }
    by.into_iter()
        .map(|(from, (deliveries, evidence))| {
            let n = deliveries.len();
            let were = if n == 1 { "was" } else { "were" };
            let text = match from.as_str() {
                crate::reconcile::github::RECOVERED_FROM_LOG => format!(
                    "{n} GitHub {} {were} missed and recovered from GitHub's delivery log",
                    if n == 1 { "delivery" } else { "deliveries" }
                ),
                crate::reconcile::pagerduty::RECOVERED_FROM_API => format!(
                    "{n} PagerDuty {} (status changes and notes) {were} missed and recovered from PagerDuty's API",
                    if n == 1 { "update" } else { "updates" }
                ),
                other => format!("{n} missed {} {were} recovered ({other})", if n == 1 { "delivery" } else { "deliveries" }),
            };
            Item {
                text,
                priority: None,
                evidence,
            }
        })
        .collect()
}

fn rank(priority: &str) -> u8 {
    match priority {
        "HIGH" => 0,
        "MEDIUM" => 1,
        _ => 2,
    }
}
