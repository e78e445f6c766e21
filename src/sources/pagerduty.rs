//! PagerDuty: Webhooks V3 (one event per POST) and legacy V2 (`messages[]`).
//!
//! Signature: `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 of the raw body;
//! any one match is enough (PagerDuty sends several while a secret rotates).
//! Idempotency: `event.id`, unique per outbound event, shared by every subscription and
//! inside the signed body, so a retry (the same webhook, the same body) and a replay
//! under a new `X-Webhook-Id` both meet it; V2 uses the message ids, also in the body.
//! One key per webhook: the `X-Webhook-Id` header and the body's hash would name the
//! same delivery again, at a read and a write each in the committer's unit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use ulid::Ulid;

use super::{
    parse_json, signature, time, truncate, Headers, NormalizeError, Normalized, VerifyError,
    WebhookSource,
};
use crate::annotations;
use crate::config::Secret;
use crate::domain::{
    Event, EventKind, Severity, Source, ATTR_ACTOR_ID, KEY_PAGERDUTY_INCIDENT,
    KEY_PAGERDUTY_SERVICE,
};

const SIGNATURE_HEADER: &str = "X-PagerDuty-Signature";

/// The PagerDuty webhook source.
pub struct PagerDuty {
    secret: Option<Secret>,
}

impl PagerDuty {
    /// `secret: None` accepts unsigned webhooks (loopback trials only; checked at start-up).
    pub fn new(secret: Option<Secret>) -> Self {
        Self { secret }
    }
}

/// Checks `X-PagerDuty-Signature` against the raw body.
pub fn verify_signature(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::Missing(SIGNATURE_HEADER))?;
    let candidates: Vec<&str> = header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::Malformed(SIGNATURE_HEADER));
    }
    // Check every candidate (no early exit) so timing does not tell which one matched.
    let matched = candidates.iter().fold(false, |acc, sig| {
        signature::verify_hex(secret, &[body], sig) | acc
    });
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

impl WebhookSource for PagerDuty {
    fn source(&self) -> Source {
        Source::Pagerduty
    }

    fn signs_body(&self) -> bool {
        true
    }

    fn body_carries_delivery_key(&self) -> bool {
        // V3 refuses an empty `event.id`, V2 an empty `messages[]`; each message's id is
        // a key.
        true
    }

    fn verify(
        &self,
        headers: &Headers,
        body: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        match &self.secret {
            None => Ok(()),
            Some(secret) => verify_signature(
                secret.expose().as_bytes(),
                headers.get(SIGNATURE_HEADER),
                body,
            ),
        }
    }

    fn normalize(
        &self,
        headers: &Headers,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Normalized, NormalizeError> {
        let value: Value = parse_json(body)?;
        let envelope: Envelope = serde_json::from_value(value.clone())
            .map_err(|e| NormalizeError::Shape(explain_shape(&value, &e)))?;
        match envelope {
            Envelope::V3 { event } => {
                if let Some(webhook) = headers.get("X-Webhook-Id") {
                    tracing::trace!(webhook, event = %event.id, "PagerDuty webhook");
                }
                normalize_v3(event, received_at)
            }
            Envelope::V2 { messages } => normalize_v2(messages, received_at),
        }
    }
}

const V3_HINT: &str = "IncidentPost takes PagerDuty Generic Webhooks (V3): add one under \
     Integrations → Generic Webhooks (v3) and see the README section 'PagerDuty (opens, \
     acknowledges and resolves incidents)'";

/// A message an operator can act on when a body is not a V3 (or V2) webhook: serde's
/// "did not match any variant of untagged enum" says nothing.
fn explain_shape(value: &Value, err: &serde_json::Error) -> String {
    let first_message = value
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.first());
    if first_message.is_some_and(|m| m.get("type").is_some() && m.get("data").is_some()) {
        return format!("this is a legacy PagerDuty V1 webhook, which is not supported. {V3_HINT}");
    }
    if let Some(m) = first_message {
        return format!("a PagerDuty V2 webhook message is incomplete (it needs id, event and incident): {V2_DETAIL}. {V3_HINT}", V2_DETAIL = v2_detail(m));
    }
    match value.get("event") {
        Some(event) => format!(
            "the PagerDuty V3 event is incomplete (it needs id, event_type, occurred_at and data): {}",
            serde_json::from_value::<V3Event>(event.clone())
                .err()
                .map_or_else(|| err.to_string(), |e| e.to_string())
        ),
        None => format!("not a PagerDuty webhook: no 'event' object (V3) or 'messages' list (V2). {V3_HINT}"),
    }
}

fn v2_detail(message: &Value) -> String {
    serde_json::from_value::<V2Message>(message.clone())
        .err()
        .map_or_else(String::new, |e| e.to_string())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Envelope {
    V3 { event: V3Event },
    V2 { messages: Vec<V2Message> },
}

#[derive(Deserialize)]
struct V3Event {
    id: String,
    event_type: String,
    #[serde(default)]
    resource_type: Option<String>,
    occurred_at: String,
    #[serde(default)]
    agent: Option<Reference>,
    data: Value,
}

#[derive(Deserialize, Default, Clone)]
struct Reference {
    #[serde(default)]
    id: Option<String>,
    /// `user_reference`, `service_reference`, `integration_reference`, …
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
}

/// `data` of V3 incident events (`data.type == "incident"`), and V2's `incident`.
#[derive(Deserialize, Default)]
struct IncidentData {
    id: String,
    #[serde(default)]
    number: Option<u64>,
    #[serde(default)]
    incident_number: Option<u64>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    urgency: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    service: Option<Reference>,
    #[serde(default)]
    priority: Option<Reference>,
    #[serde(default)]
    assignees: Vec<Reference>,
    #[serde(default)]
    escalation_policy: Option<Reference>,
    #[serde(default)]
    resolve_reason: Option<Value>,
    #[serde(default)]
    last_status_change_by: Option<Reference>,
    #[serde(default)]
    assignments: Vec<Assignment>,
}

#[derive(Deserialize, Default)]
struct Assignment {
    #[serde(default)]
    assignee: Option<Reference>,
}

/// `data` of notes, status updates and responder requests: the incident is nested.
#[derive(Deserialize)]
struct NestedData {
    incident: Reference,
    /// The note's id (`incident.annotated`): the REST API's `notes[].id`.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    user: Option<Reference>,
}

#[derive(Deserialize)]
struct V2Message {
    id: String,
    event: String,
    #[serde(default)]
    created_on: Option<String>,
    incident: IncidentData,
    #[serde(default)]
    log_entries: Vec<V2LogEntry>,
}

#[derive(Deserialize)]
struct V2LogEntry {
    #[serde(default)]
    agent: Option<Reference>,
    #[serde(default)]
    channel: Option<Value>,
}

fn shape(msg: impl Into<String>) -> NormalizeError {
    NormalizeError::Shape(msg.into())
}

/// `@Name` for a person, as timelines show who acted.
fn handle(r: &Reference) -> Option<String> {
    r.summary
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("@{s}"))
}

/// Only a person is an actor: an incident resolved by its integration or service was
/// resolved, not resolved by someone.
fn is_person(r: &Reference) -> bool {
    !r.kind
        .as_deref()
        .is_some_and(|k| k.starts_with("service") || k.starts_with("integration"))
}

/// Severity from priority (`P1`…) when set, else from urgency.
fn severity(priority: Option<&str>, urgency: Option<&str>) -> Option<Severity> {
    let from_priority = priority.and_then(|p| match p.trim().to_ascii_uppercase().as_str() {
        "P1" | "SEV1" | "SEV-1" => Some(Severity::Critical),
        "P2" | "SEV2" | "SEV-2" => Some(Severity::Error),
        "P3" | "SEV3" | "SEV-3" => Some(Severity::Warning),
        "P4" | "P5" | "SEV4" | "SEV5" => Some(Severity::Info),
        _ => None,
    });
    from_priority.or(match urgency {
        Some("high") => Some(Severity::Critical),
        Some("low") => Some(Severity::Warning),
        _ => None,
    })
}

struct Draft {
    kind: EventKind,
    title: String,
    actor: Option<String>,
    incident_id: String,
    service: Option<String>,
    severity: Option<Severity>,
    url: Option<String>,
    service_id: Option<String>,
    attrs: Map<String, Value>,
}

impl Draft {
    fn into_event(
        self,
        occurred_at: DateTime<Utc>,
        received_at: DateTime<Utc>,
        delivery: &str,
    ) -> Event {
        let mut keys = BTreeMap::new();
        keys.insert(KEY_PAGERDUTY_INCIDENT.to_owned(), self.incident_id);
        if let Some(service_id) = self.service_id {
            keys.insert(KEY_PAGERDUTY_SERVICE.to_owned(), service_id);
        }
        Event {
            id: Ulid::new(),
            source: Source::Pagerduty,
            kind: self.kind,
            occurred_at,
            received_at,
            title: self.title,
            service: self.service,
            severity: self.severity,
            actor: self.actor,
            url: self.url,
            keys,
            attrs: self.attrs,
            delivery: Some(delivery.to_owned()),
            raw_id: None,
            incident_id: None,
            correlation: None,
        }
    }
}

/// Attributes and title parts every incident-shaped payload carries.
fn incident_draft(kind: EventKind, data: &IncidentData, actor: Option<String>) -> Draft {
    let priority = data.priority.as_ref().and_then(|p| p.summary.clone());
    let severity = severity(priority.as_deref(), data.urgency.as_deref());
    let mut attrs = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            attrs.insert(k.to_owned(), v);
        }
    };
    put("incident_title", data.title.clone().map(Value::from));
    put(
        "incident_number",
        data.number.or(data.incident_number).map(Value::from),
    );
    put("incident_status", data.status.clone().map(Value::from));
    put("incident_url", data.html_url.clone().map(Value::from));
    put(
        "incident_created_at",
        data.created_at.clone().map(Value::from),
    );
    put("urgency", data.urgency.clone().map(Value::from));
    put("priority", priority.clone().map(Value::from));
    put(
        "service_id",
        data.service
            .as_ref()
            .and_then(|s| s.id.clone())
            .map(Value::from),
    );
    put(
        "escalation_policy",
        data.escalation_policy
            .as_ref()
            .and_then(|e| e.summary.clone())
            .map(Value::from),
    );
    let assignees = assignee_handles(data);
    if !assignees.is_empty() {
        attrs.insert("assignees".into(), json!(assignees));
    }
    let title_text = data
        .title
        .clone()
        .unwrap_or_else(|| format!("Incident {}", data.id));
    let by = |verb: &str| match &actor {
        Some(a) => format!("{a} {verb}"),
        None => format!("Incident {verb}"),
    };
    let title = match kind {
        EventKind::IncidentTriggered => match severity {
            Some(sev) => crate::domain::with_prefix(sev.label(), &title_text),
            None => title_text,
        },
        EventKind::IncidentAcknowledged => by("acknowledged"),
        EventKind::IncidentUnacknowledged => {
            "Acknowledgement timed out; incident re-triggered".into()
        }
        EventKind::IncidentResolved => "Incident resolved".into(),
        EventKind::IncidentReopened => by("reopened the incident"),
        EventKind::IncidentEscalated | EventKind::IncidentReassigned => {
            let verb = if kind == EventKind::IncidentEscalated {
                "Escalated"
            } else {
                "Reassigned"
            };
            if assignees.is_empty() {
                format!("{verb} incident")
            } else {
                format!("{verb} to {}", assignees.join(", "))
            }
        }
        EventKind::IncidentPriorityChanged => match &priority {
            Some(p) => format!("Priority set to {p}"),
            None => "Priority removed".into(),
        },
        _ => title_text,
    };
    Draft {
        kind,
        title,
        actor,
        incident_id: data.id.clone(),
        service: data.service.as_ref().and_then(|s| s.summary.clone()),
        severity,
        url: data.html_url.clone(),
        service_id: data.service.as_ref().and_then(|s| s.id.clone()),
        attrs,
    }
}

fn assignee_handles(data: &IncidentData) -> Vec<String> {
    let from_assignees = data.assignees.iter().filter_map(handle);
    let from_assignments = data
        .assignments
        .iter()
        .filter_map(|a| a.assignee.as_ref().and_then(handle));
    let mut out: Vec<String> = from_assignees.chain(from_assignments).collect();
    out.dedup();
    out
}

fn normalize_v3(event: V3Event, received_at: DateTime<Utc>) -> Result<Normalized, NormalizeError> {
    let occurred_at = time::parse_rfc3339(&event.occurred_at).ok_or_else(|| {
        shape(format!(
            "event.occurred_at '{}' is not RFC 3339",
            event.occurred_at
        ))
    })?;
    if event.id.trim().is_empty() {
        return Err(shape("event.id is empty"));
    }
    let mut delivery_keys = vec![format!("pagerduty:event:{}", event.id)];
    let delivery = event.id.clone();
    // Only a person is an actor: an incident resolved by its integration or service
    // was resolved, not resolved by someone.
    let actor = event
        .agent
        .as_ref()
        .filter(|a| is_person(a))
        .and_then(handle);

    if event
        .resource_type
        .as_deref()
        .is_some_and(|t| t != "incident")
        || !event.event_type.starts_with("incident.")
    {
        return Ok(Normalized {
            delivery_keys,
            ignored: Some(format!(
                "event type {} is not about an incident",
                event.event_type
            )),
            ..Default::default()
        });
    }

    let incident_kind = match event.event_type.as_str() {
        "incident.triggered" => Some(EventKind::IncidentTriggered),
        "incident.acknowledged" => Some(EventKind::IncidentAcknowledged),
        "incident.unacknowledged" => Some(EventKind::IncidentUnacknowledged),
        "incident.resolved" => Some(EventKind::IncidentResolved),
        "incident.reopened" => Some(EventKind::IncidentReopened),
        "incident.escalated" => Some(EventKind::IncidentEscalated),
        "incident.reassigned" | "incident.delegated" => Some(EventKind::IncidentReassigned),
        "incident.priority_updated" => Some(EventKind::IncidentPriorityChanged),
        _ => None,
    };
    let draft = if let Some(kind) = incident_kind {
        let data: IncidentData = serde_json::from_value(event.data)
            .map_err(|e| shape(format!("event.data of {}: {e}", event.event_type)))?;
        if crate::domain::IncidentId::parse(&data.id).is_err() {
            return Err(shape(format!(
                "event.data.id '{}' is not a valid incident id ([A-Za-z0-9_-]{{1,64}})",
                super::truncate(&data.id, 70)
            )));
        }
        let mut draft = incident_draft(kind, &data, actor);
        if event.event_type == "incident.delegated" {
            draft.attrs.insert("delegated".into(), Value::Bool(true));
        }
        if let Some(reason) = data.resolve_reason.filter(|r| !r.is_null()) {
            draft.attrs.insert("resolve_reason".into(), reason);
        }
        draft
    } else {
        let kind = match event.event_type.as_str() {
            "incident.annotated" => EventKind::IncidentNote,
            "incident.status_update_published" => EventKind::IncidentStatusUpdate,
            "incident.responder.added" | "incident.responder.replied" => {
                EventKind::IncidentResponderAdded
            }
            other => {
                return Ok(Normalized {
                    delivery_keys,
                    ignored: Some(format!("event type {other} is not recorded")),
                    ..Default::default()
                })
            }
        };
        let data: NestedData = serde_json::from_value(event.data)
            .map_err(|e| shape(format!("event.data of {}: {e}", event.event_type)))?;
        let incident_id = data
            .incident
            .id
            .clone()
            .filter(|id| crate::domain::IncidentId::parse(id).is_ok())
            .ok_or_else(|| shape("event.data.incident.id is missing or not a valid incident id"))?;
        let note_id = data
            .id
            .as_deref()
            .map(str::trim)
            .filter(|id| kind == EventKind::IncidentNote && !id.is_empty() && id.len() <= 64)
            .map(str::to_owned);
        if let Some(id) = &note_id {
            // Shared with a note recovered from the REST API, so whichever comes second is
            // a duplicate.
            delivery_keys.push(note_key(&incident_id, id));
        }
        let text = data.content.or(data.message).unwrap_or_default();
        let who = actor.clone().unwrap_or_else(|| "PagerDuty".into());
        let title = match kind {
            EventKind::IncidentNote => format!("{who}: '{}'", truncate(&text, 200)),
            EventKind::IncidentStatusUpdate => format!("Status update: '{}'", truncate(&text, 200)),
            _ => match data.user.as_ref().and_then(handle) {
                Some(user) => format!("{who} added {user} as a responder"),
                None => format!("{who} requested a responder"),
            },
        };
        let mut attrs = Map::new();
        if !text.is_empty() {
            attrs.insert("text".into(), Value::from(text));
        }
        if let Some(summary) = &data.incident.summary {
            attrs.insert("incident_title".into(), Value::from(summary.clone()));
        }
        if let Some(url) = &data.incident.html_url {
            attrs.insert("incident_url".into(), Value::from(url.clone()));
        }
        if let Some(id) = note_id {
            attrs.insert("note_id".into(), Value::from(id));
        }
        Draft {
            kind,
            title,
            actor,
            incident_id,
            service: None,
            severity: None,
            url: data.incident.html_url,
            service_id: None,
            attrs,
        }
    };
    let mut ev = draft.into_event(occurred_at, received_at, &delivery);
    ev.attrs
        .insert("pagerduty_event_type".into(), Value::from(event.event_type));
    // The agent's user id: what `[[people]]` maps (the summary is only a display name).
    if let Some(id) = event.agent.as_ref().and_then(|a| a.id.as_deref()) {
        if ev.actor.is_some() && !id.trim().is_empty() {
            ev.attrs
                .insert(ATTR_ACTOR_ID.into(), Value::from(id.trim().to_owned()));
        }
    }
    let annotation = match (ev.kind, ev.attrs.get("text").and_then(Value::as_str)) {
        (EventKind::IncidentNote, Some(text)) => annotations::derive(&ev, text),
        _ => None,
    };
    let mut events = vec![ev];
    events.extend(annotation);
    Ok(Normalized {
        delivery_keys,
        events,
        ..Default::default()
    })
}

/// Normalizes what the REST API says as if its webhook had come: `data` is the incident
/// object (or, for `incident.annotated`, `{incident, id, content}`), `agent` who acted.
/// Recovered events so read the same as webhook ones.
pub fn normalize_recovered(
    event_type: &str,
    synthetic_id: &str,
    occurred_at: DateTime<Utc>,
    agent: Option<Value>,
    data: Value,
    received_at: DateTime<Utc>,
) -> Result<Normalized, NormalizeError> {
    let event = V3Event {
        id: synthetic_id.to_owned(),
        event_type: event_type.to_owned(),
        resource_type: Some("incident".into()),
        occurred_at: occurred_at.to_rfc3339(),
        agent: agent.and_then(|a| serde_json::from_value(a).ok()),
        data,
    };
    normalize_v3(event, received_at)
}

/// The delivery key of a PagerDuty note, whether its webhook or the REST API brought it.
pub fn note_key(incident: &str, note: &str) -> String {
    format!("pagerduty:note:{incident}:{note}")
}

fn normalize_v2(
    messages: Vec<V2Message>,
    received_at: DateTime<Utc>,
) -> Result<Normalized, NormalizeError> {
    if messages.is_empty() {
        return Err(shape("messages[] is empty"));
    }
    let mut out = Normalized::default();
    let mut seen = std::collections::HashSet::new();
    for m in messages {
        if m.id.trim().is_empty() {
            // The id is the delivery key (see `body_carries_delivery_key`).
            return Err(shape("messages[].id is empty"));
        }
        if !seen.insert(m.id.clone()) {
            // The same message twice in one body is one message.
            continue;
        }
        let kind = match m.event.as_str() {
            "incident.trigger" => EventKind::IncidentTriggered,
            "incident.acknowledge" => EventKind::IncidentAcknowledged,
            "incident.unacknowledge" => EventKind::IncidentUnacknowledged,
            "incident.resolve" => EventKind::IncidentResolved,
            "incident.assign" | "incident.delegate" => EventKind::IncidentReassigned,
            "incident.escalate" => EventKind::IncidentEscalated,
            "incident.annotate" => EventKind::IncidentNote,
            other => {
                out.delivery_keys.push(format!("pagerduty:v2:{}", m.id));
                tracing::debug!(event = other, "ignoring PagerDuty V2 message type");
                continue;
            }
        };
        if crate::domain::IncidentId::parse(&m.incident.id).is_err() {
            return Err(shape("messages[].incident.id is not a valid incident id"));
        }
        let occurred_at = m
            .created_on
            .as_deref()
            .and_then(time::parse_rfc3339)
            .ok_or_else(|| {
                shape(format!(
                    "messages[].created_on of {} is missing or not RFC 3339",
                    m.id
                ))
            })?;
        let agent = m
            .log_entries
            .iter()
            .find_map(|l| l.agent.as_ref().filter(|a| is_person(a)))
            .or(m
                .incident
                .last_status_change_by
                .as_ref()
                .filter(|a| is_person(a)));
        let actor = agent.and_then(handle);
        let actor_id = agent.and_then(|a| a.id.clone());
        let mut draft = incident_draft(kind, &m.incident, actor);
        if kind == EventKind::IncidentNote {
            let text = m
                .log_entries
                .iter()
                .find_map(|l| {
                    l.channel
                        .as_ref()?
                        .get("summary")?
                        .as_str()
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let who = draft.actor.clone().unwrap_or_else(|| "PagerDuty".into());
            draft.title = format!("{who}: '{}'", truncate(&text, 200));
            draft.attrs.insert("text".into(), Value::from(text));
        }
        let mut ev = draft.into_event(occurred_at, received_at, &m.id);
        ev.attrs
            .insert("pagerduty_event_type".into(), Value::from(m.event.clone()));
        if let (Some(id), true) = (actor_id, ev.actor.is_some()) {
            ev.attrs.insert(ATTR_ACTOR_ID.into(), Value::from(id));
        }
        let key = format!("pagerduty:v2:{}", m.id);
        out.event_keys.push(key.clone());
        out.delivery_keys.push(key);
        out.events.push(ev);
    }
    if out.events.len() < 2 {
        // One message is one delivery, as a V3 webhook is.
        out.event_keys.clear();
    }
    if out.events.is_empty() {
        out.ignored = Some("no incident messages".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_prefers_priority_over_urgency() {
        assert_eq!(severity(Some("P1"), Some("low")), Some(Severity::Critical));
        assert_eq!(severity(Some("P3"), Some("high")), Some(Severity::Warning));
        assert_eq!(severity(None, Some("high")), Some(Severity::Critical));
        assert_eq!(
            severity(Some("custom"), Some("low")),
            Some(Severity::Warning)
        );
        assert_eq!(severity(None, None), None);
    }

    #[test]
    fn signature_header_may_carry_several_values() {
        let body = b"{}";
        let good = signature::hmac_sha256_hex(b"s", &[body]);
        let header = format!("v1={},v1={good}", "0".repeat(64));
        assert_eq!(verify_signature(b"s", Some(&header), body), Ok(()));
        assert_eq!(
            verify_signature(b"s", Some("v1=00"), body),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s", Some("sha256=00"), body),
            Err(VerifyError::Malformed(SIGNATURE_HEADER))
        );
        assert_eq!(
            verify_signature(b"s", None, body),
            Err(VerifyError::Missing(SIGNATURE_HEADER))
        );
    }
}
