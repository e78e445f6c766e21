//! Datadog Webhooks integration. Datadog cannot sign; the webhook sends a shared token in
//! `X-IncidentPost-Token` (configure it under the webhook's custom headers).
//!
//! Accepts Datadog's default payload template and the richer one in the README (with
//! `$ALERT_TRANSITION`, `$ALERT_CYCLE_KEY`, `$ALERT_ID`, `$ALERT_METRIC`, `$ALERT_QUERY`,
//! `$TAGS`, `$ALERT_PRIORITY`). Unexpanded variables (`$ALERT_ID`) count as absent.
//! Idempotency: the notification id (`$ID`) plus the transition.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use ulid::Ulid;

use super::{
    extract_measure, incident_ref_in, is_unset, parse_json, signature, time, truncate, Headers,
    NormalizeError, Normalized, VerifyError, WebhookSource,
};
use crate::config::Secret;
use crate::domain::{
    Event, EventKind, Severity, Source, KEY_DATADOG_CYCLE, KEY_DATADOG_MONITOR, KEY_INCIDENT_REF,
};

/// The header Datadog is configured to send the token in.
pub const TOKEN_HEADER: &str = "X-IncidentPost-Token";

/// The Datadog webhook source.
pub struct Datadog {
    token: Option<Secret>,
}

impl Datadog {
    /// `token: None` accepts unauthenticated posts (loopback trials only).
    pub fn new(token: Option<Secret>) -> Self {
        Self { token }
    }
}

/// The fields read from a payload. Every field is optional and read by name from the
/// JSON object, so a user's template is never refused for its shape: the first non-empty
/// field of each alias group wins, any scalar type is taken as text, anything else (and
/// every unknown field) stays in the raw payload only.
#[derive(Default)]
struct Payload {
    id: Option<String>,
    title: Option<String>,
    body: Option<String>,
    date: Option<String>,
    event_type: Option<String>,
    alert_transition: Option<String>,
    alert_type: Option<String>,
    alert_query: Option<String>,
    alert_metric: Option<String>,
    monitor_id: Option<String>,
    alert_cycle_key: Option<String>,
    aggreg_key: Option<String>,
    scopes: Option<String>,
    tags: Option<Value>,
    severity: Option<String>,
    url: Option<String>,
    incident_id: Option<String>,
}

/// Alias groups, in the order they are tried. `config/datadog-payload-template.json`
/// uses `alert_id`, Keep's template `monitor_id`; both may appear in one payload.
const MONITOR: &[&str] = &["monitor_id", "alert_id"];
const SEVERITY: &[&str] = &["severity", "priority"];
const URL: &[&str] = &["url", "link"];
const DATE: &[&str] = &["date", "last_updated"];

impl Payload {
    fn from_object(o: &Map<String, Value>) -> Self {
        let f = |names: &[&str]| names.iter().find_map(|n| o.get(*n).and_then(scalar_text));
        Payload {
            id: f(&["id"]),
            title: f(&["title"]),
            body: f(&["body"]),
            date: f(DATE),
            event_type: f(&["event_type"]),
            alert_transition: f(&["alert_transition"]),
            alert_type: f(&["alert_type"]),
            alert_query: f(&["alert_query"]),
            alert_metric: f(&["alert_metric"]),
            monitor_id: f(MONITOR),
            alert_cycle_key: f(&["alert_cycle_key"]),
            aggreg_key: f(&["aggreg_key"]),
            scopes: f(&["scopes"]),
            tags: o.get("tags").cloned(),
            severity: f(SEVERITY),
            url: f(URL),
            incident_id: f(&["incident_id"]),
        }
    }
}

/// A JSON scalar as text; null, arrays, objects and unexpanded variables (`$ALERT_ID`)
/// count as absent.
fn scalar_text(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!is_unset(&s)).then_some(s)
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !is_unset(s))
}

fn text(v: &Option<String>) -> Option<String> {
    set(v).map(str::to_owned)
}

/// Splits `[P2] [Triggered on {service:api}] Error monitor` into (`Triggered`,
/// `Error monitor`): leading bracket groups are dropped, the one naming a transition kept.
fn split_title(title: &str) -> (Option<&str>, &str) {
    let mut t = title.trim();
    let mut transition = None;
    while let Some(rest) = t.strip_prefix('[') {
        let Some(end) = rest.find(']') else { break };
        let tag = &rest[..end];
        let name = tag.split(" on ").next().unwrap_or(tag).trim();
        if kind_of(name).is_some() {
            transition = Some(name);
        }
        t = rest[end + 1..].trim_start();
    }
    (transition, t.trim())
}

fn kind_of(transition: &str) -> Option<EventKind> {
    match transition.trim().to_ascii_lowercase().as_str() {
        "triggered" | "re-triggered" | "retriggered" | "renotify" | "alert" => {
            Some(EventKind::AlertFiring)
        }
        "warn" | "re-warn" | "warning" => Some(EventKind::AlertWarning),
        "recovered" | "resolved" | "ok" => Some(EventKind::AlertRecovered),
        "no data" | "re-no data" | "nodata" => Some(EventKind::AlertNoData),
        _ => None,
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

impl WebhookSource for Datadog {
    fn source(&self) -> Source {
        Source::Datadog
    }

    fn verify(
        &self,
        headers: &Headers,
        _body: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        match &self.token {
            None => Ok(()),
            Some(t) => signature::verify_token(t.expose(), headers.get(TOKEN_HEADER), TOKEN_HEADER),
        }
    }

    fn normalize(
        &self,
        _headers: &Headers,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Normalized, NormalizeError> {
        let value: Value = parse_json(body)?;
        let Value::Object(object) = &value else {
            return Err(NormalizeError::Shape(
                "payload is not a JSON object (see the README's Datadog payload template)".into(),
            ));
        };
        let p = Payload::from_object(object);
        // No title in the user's template: still an alert, named by what there is.
        let raw_title = set(&p.title)
            .or(set(&p.event_type))
            .unwrap_or("Datadog notification");
        let (title_transition, core) = split_title(raw_title);
        let transition = set(&p.alert_transition)
            .map(str::to_owned)
            .or_else(|| title_transition.map(str::to_owned));
        let kind = transition
            .as_deref()
            .and_then(kind_of)
            .or_else(|| match set(&p.alert_type) {
                Some("error") => Some(EventKind::AlertFiring),
                Some("warning") => Some(EventKind::AlertWarning),
                Some("success") => Some(EventKind::AlertRecovered),
                _ => None,
            })
            .unwrap_or(EventKind::AlertFiring);
        let occurred_at = text(&p.date)
            .and_then(|s| time::parse_epoch_millis(&s).or_else(|| time::parse_rfc3339(&s)))
            .unwrap_or(received_at);

        let mut tags = set(&p.scopes).map(list).unwrap_or_default();
        let scopes = tags.clone();
        match &p.tags {
            Some(Value::String(s)) if !is_unset(s) => tags.extend(list(s)),
            Some(Value::Array(a)) => {
                tags.extend(a.iter().filter_map(|t| t.as_str().map(str::to_owned)))
            }
            _ => {}
        }
        tags.sort();
        tags.dedup();
        let service = tags
            .iter()
            .find_map(|t| t.strip_prefix("service:"))
            .map(str::to_owned);

        let mut keys = BTreeMap::new();
        if let Some(cycle) = text(&p.alert_cycle_key) {
            keys.insert(KEY_DATADOG_CYCLE.to_owned(), cycle);
        }
        let monitor = text(&p.monitor_id);
        if let Some(m) = &monitor {
            keys.insert(KEY_DATADOG_MONITOR.to_owned(), m.clone());
        }
        let incident_ref = set(&p.incident_id)
            .map(str::to_owned)
            .or_else(|| {
                tags.iter().find_map(|t| {
                    t.strip_prefix("incident:")
                        .or_else(|| t.strip_prefix("pagerduty_incident:"))
                        .map(str::to_owned)
                })
            })
            .or_else(|| set(&p.body).and_then(incident_ref_in));
        if let Some(r) = incident_ref {
            keys.insert(KEY_INCIDENT_REF.to_owned(), r);
        }

        let mut attrs = Map::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                attrs.insert(k.to_owned(), Value::from(v));
            }
        };
        put("transition", transition.clone());
        put("monitor_id", monitor);
        put("event_type", set(&p.event_type).map(str::to_owned));
        put("alert_type", set(&p.alert_type).map(str::to_owned));
        put("query", set(&p.alert_query).map(str::to_owned));
        put("metric", set(&p.alert_metric).map(str::to_owned));
        put("aggregation_key", set(&p.aggreg_key).map(str::to_owned));
        put("priority", set(&p.severity).map(str::to_owned));
        if let Some((value, unit)) = extract_measure(core) {
            attrs.insert("value".into(), Value::from(value));
            attrs.insert("unit".into(), Value::from(unit));
        }
        if !tags.is_empty() {
            attrs.insert("tags".into(), Value::from(tags));
        }
        if !scopes.is_empty() {
            attrs.insert("scopes".into(), Value::from(scopes));
        }

        let severity = match (kind, set(&p.severity)) {
            (EventKind::AlertRecovered, _) => Some(Severity::Info),
            (_, Some(p)) if p.eq_ignore_ascii_case("P1") => Some(Severity::Critical),
            (EventKind::AlertWarning | EventKind::AlertNoData, _) => Some(Severity::Warning),
            _ => Some(Severity::Error),
        };
        let prefix = match kind {
            EventKind::AlertRecovered => "Recovered",
            EventKind::AlertWarning => "Warning",
            EventKind::AlertNoData => "No data",
            _ => "Alert",
        };
        let id = text(&p.id);
        let transition_key = transition
            .clone()
            .unwrap_or_else(|| kind.as_str().to_owned());
        let delivery = match &id {
            Some(id) => format!("datadog:{id}:{transition_key}"),
            // No notification id in the template: the body itself identifies a retry.
            None => format!(
                "datadog:body:{}",
                signature::hmac_sha256_hex(b"datadog", &[body])
            ),
        };
        let event = Event {
            id: Ulid::new(),
            source: Source::Datadog,
            kind,
            occurred_at,
            received_at,
            title: format!("{prefix}: {}", truncate(core, 200)),
            service,
            severity,
            actor: None,
            url: set(&p.url).map(str::to_owned),
            keys,
            attrs,
            delivery: Some(delivery.clone()),
            raw_id: None,
            incident_id: None,
            correlation: None,
        };
        Ok(Normalized {
            delivery_keys: vec![delivery],
            events: vec![event],
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_split_into_transition_and_text() {
        assert_eq!(
            split_title("[Triggered on {service:api}] Error monitor"),
            (Some("Triggered"), "Error monitor")
        );
        assert_eq!(
            split_title("[Recovered] DB pool"),
            (Some("Recovered"), "DB pool")
        );
        assert_eq!(split_title("Plain"), (None, "Plain"));
        assert_eq!(
            split_title("[P2] [Warn] Unauthorized"),
            (Some("Warn"), "Unauthorized")
        );
    }

    #[test]
    fn transitions_map_to_alert_kinds() {
        for (t, k) in [
            ("Triggered", EventKind::AlertFiring),
            ("Re-Triggered", EventKind::AlertFiring),
            ("Warn", EventKind::AlertWarning),
            ("Recovered", EventKind::AlertRecovered),
            ("No Data", EventKind::AlertNoData),
        ] {
            assert_eq!(kind_of(t), Some(k), "{t}");
        }
        assert_eq!(kind_of("Bogus"), None);
    }
}
