//! Slack Events API. Signature `X-Slack-Signature: v0=<hex>`, HMAC-SHA256 over
//! `v0:{X-Slack-Request-Timestamp}:{raw body}`; timestamps further than
//! `sources.slack.max_skew_secs` from now are rejected (replays). `url_verification` is
//! answered with its challenge. Idempotency: `event_id` (retries carry
//! `X-Slack-Retry-Num`), plus channel + ts so the `message` and `app_mention` events of one
//! message are stored once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use ulid::Ulid;

use super::{
    incident_ref_in, parse_json, signature, time, truncate, Headers, NormalizeError, Normalized,
    VerifyError, WebhookSource,
};
use crate::annotations;
use crate::config::Secret;
use crate::domain::{
    Event, EventKind, Source, KEY_INCIDENT_REF, KEY_SLACK_CHANNEL, KEY_SLACK_THREAD,
};

const SIGNATURE_HEADER: &str = "X-Slack-Signature";
const TIMESTAMP_HEADER: &str = "X-Slack-Request-Timestamp";

/// The Slack Events API source.
pub struct Slack {
    secret: Option<Secret>,
    include_bots: bool,
    max_skew_secs: i64,
}

impl Slack {
    /// `secret: None` accepts unsigned posts (loopback trials only).
    pub fn new(secret: Option<Secret>, include_bots: bool, max_skew_secs: u64) -> Self {
        Self {
            secret,
            include_bots,
            max_skew_secs: i64::try_from(max_skew_secs).unwrap_or(300),
        }
    }
}

/// Checks Slack's signature and timestamp window.
pub fn verify_signature(
    secret: &[u8],
    timestamp: Option<&str>,
    header: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
    max_skew_secs: i64,
) -> Result<(), VerifyError> {
    let ts = timestamp
        .ok_or(VerifyError::Missing(TIMESTAMP_HEADER))?
        .trim();
    let header = header.ok_or(VerifyError::Missing(SIGNATURE_HEADER))?;
    let secs: i64 = ts
        .parse()
        .map_err(|_| VerifyError::Malformed(TIMESTAMP_HEADER))?;
    let hex = header
        .trim()
        .strip_prefix("v0=")
        .ok_or(VerifyError::Malformed(SIGNATURE_HEADER))?;
    // Signature first, so a forged request learns nothing from the timestamp check.
    if !signature::verify_hex(secret, &[b"v0:", ts.as_bytes(), b":", body], hex) {
        return Err(VerifyError::Mismatch);
    }
    if now.timestamp().abs_diff(secs) > max_skew_secs.unsigned_abs() {
        return Err(VerifyError::Stale);
    }
    Ok(())
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    challenge: Option<String>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    event_time: Option<Value>,
    #[serde(default)]
    team_id: Option<String>,
    #[serde(default)]
    event: Option<Value>,
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|x| !x.is_empty())
}

/// `<@U123>` → `@U123`, `<#C1|general>` → `#general`, `<https://x|label>` → `label`.
pub fn plain_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 1..start + end];
        let (target, label) = inner.split_once('|').unwrap_or((inner, ""));
        if let Some(user) = target.strip_prefix('@') {
            out.push('@');
            out.push_str(if label.is_empty() { user } else { label });
        } else if let Some(ch) = target.strip_prefix('#') {
            out.push('#');
            out.push_str(if label.is_empty() { ch } else { label });
        } else if let Some(special) = target.strip_prefix('!') {
            out.push('@');
            out.push_str(special);
        } else {
            out.push_str(if label.is_empty() { target } else { label });
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

impl WebhookSource for Slack {
    fn source(&self) -> Source {
        Source::Slack
    }

    fn signs_body(&self) -> bool {
        true
    }

    fn verify(
        &self,
        headers: &Headers,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        match &self.secret {
            None => Ok(()),
            Some(secret) => verify_signature(
                secret.expose().as_bytes(),
                headers.get(TIMESTAMP_HEADER),
                headers.get(SIGNATURE_HEADER),
                body,
                now,
                self.max_skew_secs,
            ),
        }
    }

    fn normalize(
        &self,
        headers: &Headers,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Normalized, NormalizeError> {
        let env: Envelope = parse_json(body)?;
        match env.kind.as_str() {
            "url_verification" => {
                let challenge = env.challenge.ok_or_else(|| {
                    NormalizeError::Shape("url_verification without challenge".into())
                })?;
                return Ok(Normalized {
                    reply: Some(serde_json::json!({ "challenge": challenge })),
                    ..Default::default()
                });
            }
            "event_callback" => {}
            other => {
                return Ok(Normalized {
                    reply: Some(serde_json::json!({"status": "ignored", "type": other})),
                    ..Default::default()
                })
            }
        }
        // Without `event_id` the delivery is still taken: channel + ts (below) and the
        // signed body's hash (added by the webhook handler) identify its retries.
        let mut delivery_keys: Vec<String> = env
            .event_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(|id| format!("slack:{id}"))
            .into_iter()
            .collect();
        let Some(ev) = env.event.filter(Value::is_object) else {
            return Ok(Normalized {
                delivery_keys,
                ignored: Some("event_callback without an event object".into()),
                ..Default::default()
            });
        };
        if let Some(retry) = headers.get("X-Slack-Retry-Num") {
            tracing::debug!(
                retry,
                reason = headers.get("X-Slack-Retry-Reason"),
                "Slack retry"
            );
        }
        let ignore = |why: String, keys: Vec<String>| {
            Ok(Normalized {
                delivery_keys: keys,
                ignored: Some(why),
                ..Default::default()
            })
        };
        let ev_type = s(&ev, "type").unwrap_or("");
        if ev_type != "message" && ev_type != "app_mention" {
            return ignore(
                format!("Slack event type '{ev_type}' is not recorded"),
                delivery_keys,
            );
        }
        let subtype = s(&ev, "subtype");
        let is_bot = subtype == Some("bot_message") || s(&ev, "bot_id").is_some();
        if is_bot && !self.include_bots {
            return ignore(
                "bot message (sources.slack.include_bots is off)".into(),
                delivery_keys,
            );
        }
        // Edits carry the new text under `message`, deletes the old one under `previous_message`.
        let (message, verb) = match subtype {
            Some("message_changed") => {
                (ev.get("message").cloned().unwrap_or(Value::Null), "edited")
            }
            Some("message_deleted") => (
                ev.get("previous_message").cloned().unwrap_or(Value::Null),
                "deleted",
            ),
            None
            | Some("bot_message")
            | Some("thread_broadcast")
            | Some("file_share")
            | Some("me_message") => (ev.clone(), ""),
            Some(other) => {
                return ignore(
                    format!("Slack message subtype '{other}' is not recorded"),
                    delivery_keys,
                )
            }
        };
        let channel = s(&ev, "channel").unwrap_or("");
        // For edits and deletes, the message's own ts (the event's ts is the edit's).
        let ts = s(&message, "ts").or(s(&ev, "ts")).unwrap_or("");
        let event_ts = s(&ev, "ts").unwrap_or(ts);
        let raw_text = s(&message, "text").unwrap_or("");
        let text = plain_text(raw_text);
        let user = s(&message, "user")
            .or(s(&ev, "user"))
            .or(s(&message, "username"))
            .or(s(&message, "bot_id"));
        let actor = user.map(|u| format!("@{u}"));
        if !channel.is_empty() && !event_ts.is_empty() {
            delivery_keys.push(format!("slack:msg:{channel}:{event_ts}"));
        }
        let occurred_at = time::parse_epoch_seconds(event_ts)
            .or_else(|| {
                env.event_time.as_ref().and_then(|t| match t {
                    Value::Number(n) => time::parse_epoch_seconds(&n.to_string()),
                    Value::String(s) => time::parse_epoch_seconds(s),
                    _ => None,
                })
            })
            .unwrap_or(received_at);
        let who = actor.clone().unwrap_or_else(|| "someone".into());
        let title = match verb {
            "edited" => format!("{who} (edited): '{}'", truncate(&text, 200)),
            "deleted" => format!("{who} deleted a message: '{}'", truncate(&text, 120)),
            _ => format!("{who}: '{}'", truncate(&text, 200)),
        };
        let mut keys = BTreeMap::new();
        if !channel.is_empty() {
            keys.insert(KEY_SLACK_CHANNEL.to_owned(), channel.to_owned());
            let root = s(&message, "thread_ts")
                .or(s(&ev, "thread_ts"))
                .unwrap_or(ts);
            if !root.is_empty() {
                keys.insert(KEY_SLACK_THREAD.to_owned(), format!("{channel}:{root}"));
            }
        }
        if let Some(r) = incident_ref_in(raw_text) {
            keys.insert(KEY_INCIDENT_REF.to_owned(), r);
        }
        let mut attrs = Map::new();
        attrs.insert("text".into(), Value::from(text.clone()));
        attrs.insert("channel".into(), Value::from(channel));
        attrs.insert("ts".into(), Value::from(ts));
        if let Some(team) = &env.team_id {
            attrs.insert("team".into(), Value::from(team.clone()));
        }
        if !verb.is_empty() {
            attrs.insert(verb.into(), Value::from(true));
        }
        let event = Event {
            id: Ulid::new(),
            source: Source::Slack,
            kind: EventKind::ChatMessage,
            occurred_at,
            received_at,
            title,
            service: None,
            severity: None,
            actor,
            // Slack's own redirect opens the message for anyone in the workspace.
            url: (!channel.is_empty() && !ts.is_empty()).then(|| {
                format!(
                    "https://slack.com/archives/{channel}/p{}",
                    ts.replace('.', "")
                )
            }),
            keys,
            attrs,
            delivery: Some(
                env.event_id
                    .clone()
                    .filter(|id| !id.trim().is_empty())
                    .unwrap_or_else(|| format!("{channel}:{event_ts}")),
            ),
            raw_id: None,
            incident_id: None,
            correlation: None,
        };
        let annotation = (verb != "deleted")
            .then(|| annotations::derive(&event, &text))
            .flatten();
        let mut events = vec![event];
        events.extend(annotation);
        Ok(Normalized {
            delivery_keys,
            events,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_markup_becomes_plain_text() {
        assert_eq!(
            plain_text("<@U123> look at <#C1|ops>"),
            "@U123 look at #ops"
        );
        assert_eq!(
            plain_text("see <https://x.io|the graph> <!here>"),
            "see the graph @here"
        );
        assert_eq!(plain_text("a < b"), "a < b");
    }
}
