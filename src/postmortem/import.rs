//! Paste a timeline: lines like `14:23 UTC [PagerDuty] CRITICAL: API response time > 5000ms`
//! (or with an ISO-8601 time) become an incident and its events. A date comes from a header
//! line (`Date: 2026-01-10`, `January 10, 2026`) or the caller; times that go backwards
//! cross midnight. Annotation lines (`root cause: …`, `action HIGH: …`) need no time. Lines
//! that cannot be read are reported with their numbers, never dropped silently.
//!
//! Import is deterministic: the same text gives the same incident id and event ids, so
//! the same pack bytes, and importing it twice is recognized as a duplicate.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use ulid::Ulid;

use crate::annotations;
use crate::domain::{
    Event, EventKind, Incident, IncidentId, IncidentStatus, Severity, Source, KEY_INCIDENT_REF,
};
use crate::sources::extract_measure;

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// The result of reading a pasted timeline.
#[derive(Debug, Clone)]
pub struct Imported {
    pub incident: Incident,
    pub events: Vec<Event>,
    pub skipped: Vec<Skipped>,
    /// Hash of the text: the delivery key of an import.
    pub digest: String,
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("no timeline line could be read ({} unreadable)", .0.len())]
    NothingReadable(Vec<Skipped>),
    #[error("the text is empty")]
    Empty,
}

fn source_of(name: &str) -> Source {
    let n = name.trim().to_ascii_lowercase();
    if n.contains("pagerduty") {
        Source::Pagerduty
    } else if n.contains("datadog") {
        Source::Datadog
    } else if n.contains("github") {
        Source::Github
    } else if n.contains("slack") {
        Source::Slack
    } else if n.contains("cloudwatch") || n == "aws" {
        Source::Cloudwatch
    } else {
        Source::Import
    }
}

fn parse_date_header(line: &str) -> Option<NaiveDate> {
    parse_date_line(line).filter(|d| (1970..=2100).contains(&chrono::Datelike::year(d)))
}

fn parse_date_line(line: &str) -> Option<NaiveDate> {
    let l = line.trim().trim_start_matches('#').trim();
    let l = l
        .strip_prefix("Date:")
        .or_else(|| l.strip_prefix("date:"))
        .unwrap_or(l)
        .trim();
    NaiveDate::parse_from_str(l, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(l, "%B %d, %Y"))
        .or_else(|_| NaiveDate::parse_from_str(l, "%b %d, %Y"))
        .ok()
}

/// Splits `14:23 UTC [PagerDuty] text` (or an ISO time) into (time, source name, text).
enum When {
    Clock(NaiveTime),
    Absolute(DateTime<Utc>),
}

fn split_line(line: &str) -> Result<(When, String, String), String> {
    let open = line.find('[').ok_or("no [Source] found")?;
    let close = line[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or("no closing ] after the source")?;
    let time_part = line[..open].trim();
    let source = line[open + 1..close].trim().to_owned();
    let text = line[close + 1..].trim().to_owned();
    if text.is_empty() {
        return Err("nothing after the source".into());
    }
    let t = time_part
        .trim_end_matches("UTC")
        .trim_end_matches("utc")
        .trim();
    let when = if let Some(abs) = crate::sources::time::parse_rfc3339(t)
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M")
                .ok()
                .map(|n| Utc.from_utc_datetime(&n))
        })
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|n| Utc.from_utc_datetime(&n))
        })
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
                .ok()
                .map(|n| Utc.from_utc_datetime(&n))
        }) {
        When::Absolute(abs)
    } else if let Ok(clock) =
        NaiveTime::parse_from_str(t, "%H:%M").or_else(|_| NaiveTime::parse_from_str(t, "%H:%M:%S"))
    {
        When::Clock(clock)
    } else if t.is_empty() {
        return Err("no time before the source".into());
    } else {
        return Err(format!("'{t}' is not a time (HH:MM UTC or ISO-8601)"));
    };
    Ok((when, source, text))
}

fn kind_of(source: Source, text: &str, seen_trigger: bool) -> EventKind {
    let l = text.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| l.contains(w));
    if any(&["acknowledged"]) && !l.contains("unacknowledged") {
        return EventKind::IncidentAcknowledged;
    }
    if any(&["rolling back", "rolled back", "rollback", "revert"]) {
        return EventKind::ChangeRolledBack;
    }
    match source {
        Source::Pagerduty if l.contains("resolved") => EventKind::IncidentResolved,
        Source::Pagerduty if !seen_trigger => EventKind::IncidentTriggered,
        Source::Pagerduty if l.contains("escalat") => EventKind::IncidentEscalated,
        Source::Pagerduty => EventKind::IncidentNote,
        Source::Datadog | Source::Cloudwatch => {
            if any(&[
                "recovered",
                "normal",
                "dropping",
                "resolved",
                "back to",
                " ok",
            ]) {
                EventKind::AlertRecovered
            } else {
                EventKind::AlertFiring
            }
        }
        Source::Github if l.contains("merged") => EventKind::ChangeMerged,
        Source::Github if l.contains("deploy") => EventKind::ChangeDeployed,
        Source::Github if l.contains("release") => EventKind::ChangeReleased,
        _ => EventKind::ChatMessage,
    }
}

fn severity_of(text: &str) -> Option<Severity> {
    let upper = text.trim_start().to_ascii_uppercase();
    [
        ("CRITICAL", Severity::Critical),
        ("SEV1", Severity::Critical),
        ("P1", Severity::Critical),
        ("ERROR", Severity::Error),
        ("WARNING", Severity::Warning),
        ("WARN", Severity::Warning),
    ]
    .into_iter()
    .find(|(p, _)| upper.starts_with(p))
    .map(|(_, s)| s)
}

/// A stable id for the n-th line: its time plus a hash of the text and position.
fn stable_id(digest: &[u8], n: usize, at: DateTime<Utc>) -> Ulid {
    let mut h = Sha256::new();
    h.update(digest);
    h.update(n.to_be_bytes());
    let bytes: [u8; 32] = h.finalize().into();
    let random = u128::from_be_bytes(bytes[..16].try_into().unwrap_or([0; 16])) >> 48;
    Ulid::from_parts(u64::try_from(at.timestamp_millis()).unwrap_or(0), random)
}

/// Reads a pasted timeline. `date` is used when the text has no date header. A timeline
/// with no date at all is placed on the latest day that puts none of its times in the
/// future (a 23:10 line pasted at 08:00 happened yesterday).
pub fn parse(
    text: &str,
    date: Option<NaiveDate>,
    id: Option<IncidentId>,
) -> Result<Imported, ImportError> {
    let imported = parse_on(text, date, id.clone())?;
    let undated = date.is_none()
        && !text
            .lines()
            .any(|l| parse_date_header(clean_line(l)).is_some());
    if undated {
        let now = Utc::now();
        if let Some(latest) = imported
            .events
            .iter()
            .map(|e| e.occurred_at)
            .filter(|at| *at > now)
            .max()
        {
            let days = (latest - now).num_days() + 1;
            return parse_on(text, Some(now.date_naive() - Duration::days(days)), id);
        }
    }
    Ok(imported)
}

fn clean_line(raw: &str) -> &str {
    raw.trim().trim_start_matches(['-', '*', '•']).trim()
}

fn parse_on(
    text: &str,
    date: Option<NaiveDate>,
    id: Option<IncidentId>,
) -> Result<Imported, ImportError> {
    if text.trim().is_empty() {
        return Err(ImportError::Empty);
    }
    let digest_bytes: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let digest = hex::encode(digest_bytes);
    let mut day = date;
    let mut last: Option<DateTime<Utc>> = None;
    let mut skipped = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut pending_annotations: Vec<(usize, String)> = Vec::new();
    let mut seen_trigger = false;
    let id = id.unwrap_or_else(|| {
        IncidentId::parse(&format!("IMP{}", &digest[..16].to_ascii_uppercase()))
            .unwrap_or_else(|_| IncidentId::generate())
    });

    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = clean_line(raw);
        if line.is_empty() || line.starts_with("```") {
            continue;
        }
        if let Some(d) = parse_date_header(line) {
            day = Some(d);
            continue;
        }
        if !line.contains('[') {
            if annotations::parse(line).is_some() {
                pending_annotations.push((n, line.to_owned()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            skipped.push(Skipped {
                line: n,
                text: raw.to_owned(),
                reason: "not a timeline line (HH:MM UTC [Source] text), a date or an annotation"
                    .into(),
            });
            continue;
        }
        let (when, source_name, body) = match split_line(line) {
            Ok(parts) => parts,
            Err(reason) => {
                skipped.push(Skipped {
                    line: n,
                    text: raw.to_owned(),
                    reason,
                });
                continue;
            }
        };
        let at = match when {
            When::Absolute(t) if !(1970..=2100).contains(&chrono::Datelike::year(&t)) => {
                skipped.push(Skipped {
                    line: n,
                    text: raw.to_owned(),
                    reason: "the year is outside 1970..2100".into(),
                });
                continue;
            }
            When::Absolute(t) => t,
            When::Clock(clock) => {
                let base = day.unwrap_or_else(|| {
                    last.map(|l| l.date_naive())
                        .unwrap_or_else(|| Utc::now().date_naive())
                });
                let mut t = Utc.from_utc_datetime(&base.and_time(clock));
                // Going back in time on the same day means midnight was crossed.
                if let Some(prev) = last {
                    if t < prev - Duration::minutes(1) {
                        let days = (prev - t).num_days() + 1;
                        t += Duration::days(days);
                        if t < prev - Duration::minutes(1) {
                            t += Duration::days(1);
                        }
                    }
                }
                day = Some(t.date_naive());
                t
            }
        };
        last = Some(at);
        let source = source_of(&source_name);
        let kind = kind_of(source, &body, seen_trigger);
        seen_trigger |= kind == EventKind::IncidentTriggered;
        let actor = body.strip_prefix('@').map(|rest| {
            format!(
                "@{}",
                rest.split(|c: char| c.is_whitespace() || c == ':')
                    .next()
                    .unwrap_or("")
            )
        });
        let mut attrs = serde_json::Map::new();
        attrs.insert("imported_line".into(), Value::from(n));
        if source == Source::Import {
            attrs.insert("source_name".into(), Value::from(source_name.clone()));
        }
        let chat_text = match (&actor, body.split_once(": ")) {
            (Some(_), Some((_, said))) => said.trim_matches(['\'', '"']).to_owned(),
            _ => body.clone(),
        };
        attrs.insert("text".into(), Value::from(chat_text.clone()));
        if matches!(kind, EventKind::AlertFiring | EventKind::AlertRecovered) {
            if let Some((v, u)) = extract_measure(&body) {
                attrs.insert("value".into(), Value::from(v));
                attrs.insert("unit".into(), Value::from(u));
            }
        }
        let mut keys = std::collections::BTreeMap::new();
        keys.insert(KEY_INCIDENT_REF.to_owned(), id.to_string());
        let event = Event {
            id: stable_id(&digest_bytes, n, at),
            source,
            kind,
            occurred_at: at,
            received_at: at,
            title: body.clone(),
            service: None,
            severity: severity_of(&body).or(match kind {
                EventKind::AlertFiring => Some(Severity::Error),
                _ => None,
            }),
            actor,
            url: None,
            keys,
            attrs,
            delivery: Some(format!("import:{digest}:{n}")),
            raw_id: None,
            incident_id: None,
            correlation: None,
        };
        // "Identified: …" in a timeline is how responders write down the cause.
        let annotation_text = match chat_text.to_ascii_lowercase().strip_prefix("identified:") {
            Some(_) => format!("root cause: {}", chat_text["identified:".len()..].trim()),
            None => chat_text.clone(),
        };
        let mut derived = annotations::derive(&event, &annotation_text);
        if let Some(d) = derived.as_mut() {
            d.id = stable_id(&digest_bytes, n + 1_000_000, at);
        }
        events.push(event);
        events.extend(derived);
    }
    if events.is_empty() {
        return Err(ImportError::NothingReadable(skipped));
    }
    let end = last.unwrap_or_else(Utc::now);
    for (n, line) in pending_annotations {
        let carrier = Event {
            id: stable_id(&digest_bytes, n, end),
            source: Source::Import,
            kind: EventKind::ChatMessage,
            occurred_at: end,
            received_at: end,
            title: line.clone(),
            service: None,
            severity: None,
            actor: None,
            url: None,
            keys: events[0].keys.clone(),
            attrs: Default::default(),
            delivery: None,
            raw_id: None,
            incident_id: None,
            correlation: None,
        };
        if let Some(a) = annotations::derive(&carrier, &line) {
            events.push(Event {
                id: carrier.id,
                ..a
            });
        }
    }
    events.sort_by_key(|e| e.occurred_at);

    let first = |k: EventKind| events.iter().find(|e| e.kind == k);
    let trigger = first(EventKind::IncidentTriggered).or(events.first());
    let triggered_at = trigger.map(|e| e.occurred_at).unwrap_or(end);
    let resolved_at = events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::IncidentResolved)
        .map(|e| e.occurred_at);
    let title_text = trigger.map(|t| t.title.clone()).unwrap_or_default();
    let title = match title_text.split_once(": ") {
        Some((prefix, rest)) if severity_of(prefix).is_some() => rest.to_owned(),
        _ => title_text,
    };
    let incident = Incident {
        id,
        title,
        status: if resolved_at.is_some() {
            IncidentStatus::Resolved
        } else {
            IncidentStatus::Triggered
        },
        service: None,
        severity: trigger.and_then(|t| t.severity),
        urgency: None,
        priority: None,
        url: None,
        opened_by: Source::Import,
        triggered_at,
        acknowledged_at: first(EventKind::IncidentAcknowledged).map(|e| e.occurred_at),
        resolved_at,
        reopen_count: 0,
        event_count: events.len() as u64,
        next_seq: events.len() as u64,
        updated_at: end,
    };
    for e in &mut events {
        e.incident_id = Some(incident.id.clone());
        e.correlation = Some(crate::domain::CorrelationRule::Explicit);
    }
    Ok(Imported {
        incident,
        events,
        skipped,
        digest,
    })
}
