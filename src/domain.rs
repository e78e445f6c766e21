//! The event model shared by every part: validated ids, the normalized [`Event`] and the
//! [`Incident`] record. Values here are parsed at the edge and trusted inside.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// Why a string could not become one of the ids in this module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Incident ids are `[A-Za-z0-9_-]{1,64}`.
    #[error("incident id must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    InvalidIncidentId,
    /// The source is not one IncidentPost knows.
    #[error("unknown source '{0}'")]
    UnknownSource(String),
}

/// An incident id: PagerDuty's incident id for incidents opened by PagerDuty, a generated
/// one otherwise. Always `[A-Za-z0-9_-]{1,64}`, so it is safe in paths, keys and file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct IncidentId(String);

impl IncidentId {
    /// Parses and validates an incident id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::InvalidIncidentId)
        }
    }

    /// A fresh id for incidents not opened by PagerDuty (import, API): `IP` + a ULID.
    pub fn generate() -> Self {
        Self(format!("IP{}", Ulid::new()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IncidentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for IncidentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Pagerduty,
    Datadog,
    Github,
    Slack,
    Cloudwatch,
    Manual,
    Import,
}

impl Source {
    /// Every source, in display order.
    pub const ALL: [Source; 7] = [
        Source::Pagerduty,
        Source::Datadog,
        Source::Github,
        Source::Slack,
        Source::Cloudwatch,
        Source::Manual,
        Source::Import,
    ];

    /// The lowercase name used in URLs, keys and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pagerduty => "pagerduty",
            Source::Datadog => "datadog",
            Source::Github => "github",
            Source::Slack => "slack",
            Source::Cloudwatch => "cloudwatch",
            Source::Manual => "manual",
            Source::Import => "import",
        }
    }

    /// The name shown in timelines: `[PagerDuty]`, `[AWS CloudWatch]`.
    pub fn display_name(self) -> &'static str {
        match self {
            Source::Pagerduty => "PagerDuty",
            Source::Datadog => "Datadog",
            Source::Github => "GitHub",
            Source::Slack => "Slack",
            Source::Cloudwatch => "AWS CloudWatch",
            Source::Manual => "Manual",
            Source::Import => "Import",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .into_iter()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| IdError::UnknownSource(s.chars().take(64).collect()))
    }
}

/// What happened, as a closed set. The serialized names are part of the API and the
/// on-disk format; add variants, never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "incident.triggered")]
    IncidentTriggered,
    #[serde(rename = "incident.acknowledged")]
    IncidentAcknowledged,
    #[serde(rename = "incident.unacknowledged")]
    IncidentUnacknowledged,
    #[serde(rename = "incident.resolved")]
    IncidentResolved,
    #[serde(rename = "incident.reopened")]
    IncidentReopened,
    #[serde(rename = "incident.escalated")]
    IncidentEscalated,
    #[serde(rename = "incident.reassigned")]
    IncidentReassigned,
    #[serde(rename = "incident.priority_changed")]
    IncidentPriorityChanged,
    #[serde(rename = "incident.responder_added")]
    IncidentResponderAdded,
    #[serde(rename = "incident.status_update")]
    IncidentStatusUpdate,
    #[serde(rename = "incident.note")]
    IncidentNote,
    #[serde(rename = "alert.firing")]
    AlertFiring,
    #[serde(rename = "alert.warning")]
    AlertWarning,
    #[serde(rename = "alert.recovered")]
    AlertRecovered,
    #[serde(rename = "alert.no_data")]
    AlertNoData,
    #[serde(rename = "metric.sample")]
    MetricSample,
    #[serde(rename = "change.proposed")]
    ChangeProposed,
    #[serde(rename = "change.merged")]
    ChangeMerged,
    #[serde(rename = "change.deploy_started")]
    ChangeDeployStarted,
    #[serde(rename = "change.deployed")]
    ChangeDeployed,
    #[serde(rename = "change.deploy_failed")]
    ChangeDeployFailed,
    #[serde(rename = "change.rolled_back")]
    ChangeRolledBack,
    #[serde(rename = "change.released")]
    ChangeReleased,
    #[serde(rename = "change.pushed")]
    ChangePushed,
    #[serde(rename = "ci.failed")]
    CiFailed,
    #[serde(rename = "ci.succeeded")]
    CiSucceeded,
    #[serde(rename = "ticket.opened")]
    TicketOpened,
    #[serde(rename = "ticket.closed")]
    TicketClosed,
    #[serde(rename = "chat.message")]
    ChatMessage,
    #[serde(rename = "annotation.title")]
    AnnotationTitle,
    #[serde(rename = "annotation.summary")]
    AnnotationSummary,
    #[serde(rename = "annotation.root_cause")]
    AnnotationRootCause,
    #[serde(rename = "annotation.impact")]
    AnnotationImpact,
    #[serde(rename = "annotation.mitigation")]
    AnnotationMitigation,
    #[serde(rename = "annotation.action_item")]
    AnnotationActionItem,
    #[serde(rename = "annotation.customer_message")]
    AnnotationCustomerMessage,
}

impl EventKind {
    /// The serialized name, e.g. `incident.triggered`.
    pub fn as_str(self) -> &'static str {
        KIND_NAMES
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("unknown")
    }

    /// True for the kinds that record a change to the system (merges, deploys, …).
    pub fn is_change(self) -> bool {
        matches!(
            self,
            EventKind::ChangeMerged
                | EventKind::ChangeProposed
                | EventKind::ChangeDeployStarted
                | EventKind::ChangeDeployed
                | EventKind::ChangeDeployFailed
                | EventKind::ChangeRolledBack
                | EventKind::ChangeReleased
                | EventKind::ChangePushed
        )
    }
}

const KIND_NAMES: &[(EventKind, &str)] = &[
    (EventKind::IncidentTriggered, "incident.triggered"),
    (EventKind::IncidentAcknowledged, "incident.acknowledged"),
    (EventKind::IncidentUnacknowledged, "incident.unacknowledged"),
    (EventKind::IncidentResolved, "incident.resolved"),
    (EventKind::IncidentReopened, "incident.reopened"),
    (EventKind::IncidentEscalated, "incident.escalated"),
    (EventKind::IncidentReassigned, "incident.reassigned"),
    (
        EventKind::IncidentPriorityChanged,
        "incident.priority_changed",
    ),
    (
        EventKind::IncidentResponderAdded,
        "incident.responder_added",
    ),
    (EventKind::IncidentStatusUpdate, "incident.status_update"),
    (EventKind::IncidentNote, "incident.note"),
    (EventKind::AlertFiring, "alert.firing"),
    (EventKind::AlertWarning, "alert.warning"),
    (EventKind::AlertRecovered, "alert.recovered"),
    (EventKind::AlertNoData, "alert.no_data"),
    (EventKind::MetricSample, "metric.sample"),
    (EventKind::ChangeProposed, "change.proposed"),
    (EventKind::ChangeMerged, "change.merged"),
    (EventKind::ChangeDeployStarted, "change.deploy_started"),
    (EventKind::ChangeDeployed, "change.deployed"),
    (EventKind::ChangeDeployFailed, "change.deploy_failed"),
    (EventKind::ChangeRolledBack, "change.rolled_back"),
    (EventKind::ChangeReleased, "change.released"),
    (EventKind::ChangePushed, "change.pushed"),
    (EventKind::CiFailed, "ci.failed"),
    (EventKind::CiSucceeded, "ci.succeeded"),
    (EventKind::TicketOpened, "ticket.opened"),
    (EventKind::TicketClosed, "ticket.closed"),
    (EventKind::ChatMessage, "chat.message"),
    (EventKind::AnnotationTitle, "annotation.title"),
    (EventKind::AnnotationSummary, "annotation.summary"),
    (EventKind::AnnotationRootCause, "annotation.root_cause"),
    (EventKind::AnnotationImpact, "annotation.impact"),
    (EventKind::AnnotationMitigation, "annotation.mitigation"),
    (EventKind::AnnotationActionItem, "annotation.action_item"),
    (
        EventKind::AnnotationCustomerMessage,
        "annotation.customer_message",
    ),
];

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad an event is. Ordered: `Info < Warning < Error < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// The upper-case label used in timeline titles: `CRITICAL`.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// The rule that attached an event to its incident (see docs/DESIGN-DECISIONS.md, Correlation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationRule {
    /// The event names the incident (PagerDuty incident id, a tag or field carrying it).
    Explicit,
    /// The event matches the incident's service through the `[[services]]` map.
    Service,
    /// Exactly one incident was open.
    SoleOpen,
    /// Pulled in from the unattached stream by the look-back window when the incident opened.
    LookBack,
    /// Attached after resolve, inside the grace window.
    Grace,
}

impl CorrelationRule {
    /// The name it is serialized as (`sole_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationRule::Explicit => "explicit",
            CorrelationRule::Service => "service",
            CorrelationRule::SoleOpen => "sole_open",
            CorrelationRule::LookBack => "look_back",
            CorrelationRule::Grace => "grace",
        }
    }
}

/// `host[:port]` or `[v6][:port]` → the lower-case host; `None` for anything else.
pub fn host_of_authority(authority: &str) -> Option<String> {
    let a = authority.trim().to_ascii_lowercase();
    let (host, rest) = match a.strip_prefix('[') {
        Some(v6) => {
            let (inner, rest) = v6.split_once(']')?;
            if inner.is_empty()
                || !inner
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            {
                return None;
            }
            (format!("[{inner}]"), rest)
        }
        None => match a.split_once(':') {
            Some((h, _)) => (h.to_owned(), &a[h.len()..]),
            None => (a.clone(), ""),
        },
    };
    let port_ok = match rest.strip_prefix(':') {
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
        None => rest.is_empty(),
    };
    let name_ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    (port_ok && name_ok).then_some(host)
}

/// The scheme and authority (`host[:port]`, no user info) of a clean absolute http(s)
/// URL, lower-case.
pub fn url_origin_parts(url: &str) -> Option<(String, String)> {
    let url = clean_url(url.trim())?;
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some((scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
}

/// A link from outside (a payload's `url`), kept only when it is an absolute http(s) URL
/// without whitespace or control characters: anything else could end a Markdown link in
/// the pack or run script in a page. A refused URL stays in the raw payload.
pub fn clean_url(url: &str) -> Option<String> {
    const MAX_URL_CHARS: usize = 2048;
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return None;
    };
    let host_ok = rest
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|h| !h.is_empty() && !h.starts_with('@'));
    let clean =
        url.len() <= MAX_URL_CHARS && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    (host_ok && clean).then(|| url.to_owned())
}

/// One normalized event, whatever its source. See the event model in the README.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// ULID assigned at ingest: time-sortable and unique.
    pub id: Ulid,
    /// The provider it came from.
    pub source: Source,
    /// What happened.
    pub kind: EventKind,
    /// The source's own time of the event, UTC.
    pub occurred_at: DateTime<Utc>,
    /// When IncidentPost received it.
    pub received_at: DateTime<Utc>,
    /// One human line, as in a postmortem timeline: `CRITICAL: API response time > 5000ms`.
    pub title: String,
    /// The affected service, when the payload names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Severity, when the payload carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// Who did it, e.g. `@sarah`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// A link to the event at its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Correlation keys carried by the payload, e.g. `pagerduty_incident` → `PT4KHLK`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
    /// Structured facts (metric value and unit, PR number, version, priority, …).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attrs: serde_json::Map<String, serde_json::Value>,
    /// The provider's retry-stable delivery id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// Key of the raw payload it was derived from (see `GET /events/{id}/raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_id: Option<Ulid>,
    /// The incident the event is attached to; `None` while in the unattached stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<IncidentId>,
    /// The correlation rule that attached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<CorrelationRule>,
}

impl Event {
    /// An event with a new id, received now, and nothing else set: the start of a
    /// builder-style literal (`Event { service: …, ..Event::new(…) }`).
    pub fn new(source: Source, kind: EventKind, occurred_at: DateTime<Utc>, title: &str) -> Self {
        Event {
            id: Ulid::new(),
            source,
            kind,
            occurred_at,
            received_at: Utc::now(),
            title: title.to_owned(),
            service: None,
            severity: None,
            actor: None,
            url: None,
            keys: BTreeMap::new(),
            attrs: serde_json::Map::new(),
            delivery: None,
            raw_id: None,
            incident_id: None,
            correlation: None,
        }
    }
}

/// Attribute: the actor's stable id at its source when `actor` is only a display name
/// (a PagerDuty agent's user id, `PSARAH1`). Slack and GitHub actors are their ids.
pub const ATTR_ACTOR_ID: &str = "actor_id";
/// Set on an event whose webhook was missed and that was recovered from the provider's
/// own records: `github_redelivery` (GitHub's delivery log) or `pagerduty_api`.
pub const ATTR_RECOVERED: &str = "recovered";

/// The delivery key of a PagerDuty status change in one trigger-to-resolve cycle of an
/// incident: a resolve, or an acknowledge by one person (`actor`: the agent's user id;
/// several people may acknowledge). A change recovered from the REST API is stored under
/// it, so the late webhook of the same change is a duplicate.
pub fn transition_key(
    incident: &IncidentId,
    status: IncidentStatus,
    reopen_count: u32,
    actor: Option<&str>,
) -> String {
    match status {
        IncidentStatus::Acknowledged => format!(
            "pagerduty:status:{incident}:acknowledged:{reopen_count}:{}",
            actor.unwrap_or("-")
        ),
        other => format!(
            "pagerduty:status:{incident}:{}:{reopen_count}",
            other.as_str()
        ),
    }
}

/// `label: text`, unless `text` already starts with that label or another severity or
/// status prefix (`CRITICAL: …`, `[P1] …`, `SEV1 - …`): a prefix is never doubled.
pub fn with_prefix(label: &str, text: &str) -> String {
    if has_status_prefix(text) {
        text.trim().to_owned()
    } else {
        format!("{label}: {}", text.trim())
    }
}

/// The words a title may already start with that say severity or status.
const STATUS_WORDS: &[&str] = &[
    "critical",
    "crit",
    "error",
    "warning",
    "warn",
    "info",
    "high",
    "low",
    "medium",
    "major",
    "minor",
    "alert",
    "alarm",
    "triggered",
    "firing",
    "resolved",
    "recovered",
    "ok",
    "p1",
    "p2",
    "p3",
    "p4",
    "p5",
    "sev1",
    "sev2",
    "sev3",
    "sev4",
    "sev5",
    "sev-1",
    "sev-2",
    "sev-3",
    "sev-4",
    "sev-5",
    "sev 1",
    "sev 2",
    "sev 3",
    "sev 4",
    "sev 5",
];

/// True when `text` opens with a severity or status word followed by `:`, `-`, `]` or
/// `)` (`CRITICAL: …`, `[Triggered] …`, `(P1) …`, `SEV2 - …`).
pub fn has_status_prefix(text: &str) -> bool {
    let t = text
        .trim_start()
        .trim_start_matches(['[', '('])
        .to_ascii_lowercase();
    STATUS_WORDS.iter().any(|w| {
        t.strip_prefix(w).is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.starts_with([':', ']', ')']) || rest.starts_with("- ")
        })
    })
}

/// Removes a doubled leading prefix (`CRITICAL: CRITICAL: x` → `CRITICAL: x`), as
/// titles stored before [`with_prefix`] may carry one.
pub fn undouble_prefix(title: &str) -> std::borrow::Cow<'_, str> {
    if let Some((head, rest)) = title.split_once(": ") {
        let word = head.trim();
        if !word.is_empty() && word.len() <= 12 && !word.contains(' ') {
            let rest_trim = rest.trim_start();
            if rest_trim.len() > word.len()
                && rest_trim.is_char_boundary(word.len())
                && rest_trim[..word.len()].eq_ignore_ascii_case(word)
                && rest_trim[word.len()..].starts_with(':')
            {
                return std::borrow::Cow::Owned(rest_trim.to_owned());
            }
        }
    }
    std::borrow::Cow::Borrowed(title)
}

/// The correlation key under which PagerDuty events carry their incident id.
pub const KEY_PAGERDUTY_INCIDENT: &str = "pagerduty_incident";
/// PagerDuty service id.
pub const KEY_PAGERDUTY_SERVICE: &str = "pagerduty_service";
/// An incident id named by another source (a tag `incident:P…`, a PagerDuty URL in chat).
pub const KEY_INCIDENT_REF: &str = "incident_ref";
/// Datadog `$ALERT_CYCLE_KEY`: links a trigger to its recovery.
pub const KEY_DATADOG_CYCLE: &str = "datadog_cycle";
/// Datadog monitor id.
pub const KEY_DATADOG_MONITOR: &str = "datadog_monitor";
/// GitHub repository, `owner/name`.
pub const KEY_GITHUB_REPO: &str = "github_repo";
/// GitHub pull request, `owner/name#123`.
pub const KEY_GITHUB_PR: &str = "github_pr";
/// Slack channel id.
pub const KEY_SLACK_CHANNEL: &str = "slack_channel";
/// Slack thread, `channel:thread_ts`.
pub const KEY_SLACK_THREAD: &str = "slack_thread";
/// CloudWatch alarm name.
pub const KEY_CLOUDWATCH_ALARM: &str = "cloudwatch_alarm";

/// Keys that, once an event carrying them joins an incident, send later events with the
/// same key to that incident (a Datadog recovery after its trigger, replies in a thread).
pub const LINK_KEYS: [&str; 4] = [
    KEY_DATADOG_CYCLE,
    KEY_SLACK_THREAD,
    KEY_GITHUB_PR,
    KEY_CLOUDWATCH_ALARM,
];

/// Lifecycle state of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    Triggered,
    Acknowledged,
    Resolved,
}

impl IncidentStatus {
    /// True unless resolved.
    pub fn is_open(self) -> bool {
        self != IncidentStatus::Resolved
    }

    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Triggered => "triggered",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }
}

/// The stored incident record. Events live beside it, keyed by incident id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub title: String,
    pub status: IncidentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// PagerDuty urgency (`high` / `low`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
    /// PagerDuty priority label (`P1`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The source that opened it.
    pub opened_by: Source,
    /// When it was triggered (the trigger event's `occurred_at`).
    pub triggered_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// How many times it was reopened after a resolve.
    #[serde(default)]
    pub reopen_count: u32,
    /// Number of events attached.
    pub event_count: u64,
    /// Sequence number the next attached event gets (the key suffix in the events tree).
    pub next_seq: u64,
    /// Last change to this record.
    pub updated_at: DateTime<Utc>,
}

impl Incident {
    /// Duration from trigger to resolve, in whole seconds, once resolved.
    pub fn duration_secs(&self) -> Option<i64> {
        self.resolved_at
            .map(|r| (r - self.triggered_at).num_seconds().max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_absolute_http_urls_are_kept() {
        for ok in ["https://x.test/a?b#c", "http://x.test", "HTTPS://X.test/p"] {
            assert_eq!(clean_url(ok).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "https://x.test/a\n# Heading",
            "https://x.test/a b",
            "https:///path",
            "/relative",
            "ftp://x.test",
            "https://x.test/\u{7f}",
            "",
        ] {
            assert_eq!(clean_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn incident_ids_accept_pagerduty_ids_and_reject_path_tricks() {
        for ok in ["PT4KHLK", "Q3B15VLMF3ASBD", "a_b-c", &"x".repeat(64)] {
            assert!(IncidentId::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in ["", "../etc", "a b", "a/b", "é", &"x".repeat(65)] {
            assert_eq!(
                IncidentId::parse(bad),
                Err(IdError::InvalidIncidentId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn generated_incident_ids_are_valid() {
        let id = IncidentId::generate();
        assert!(IncidentId::parse(id.as_str()).is_ok());
    }

    #[test]
    fn every_kind_has_a_name_that_round_trips() {
        for (kind, name) in KIND_NAMES {
            assert_eq!(kind.as_str(), *name);
            let back: EventKind = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(back, *kind);
        }
    }

    #[test]
    fn sources_parse_from_their_names() {
        for s in Source::ALL {
            assert_eq!(s.as_str().parse::<Source>().unwrap(), s);
        }
        assert!("nagios".parse::<Source>().is_err());
    }
}
