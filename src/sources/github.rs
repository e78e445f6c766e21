//! GitHub webhooks. Signature `X-Hub-Signature-256: sha256=<hex>` over the raw body
//! (the legacy SHA-1 header is ignored). Idempotency: `X-GitHub-Hook-ID` +
//! `X-GitHub-Delivery` (the delivery GUID is shared by every hook of the event, and a
//! manual redelivery reuses it). `ping` is answered; unhandled types are kept as raw only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use ulid::Ulid;

use super::{
    incident_ref_in, parse_json, signature, time, truncate, Headers, NormalizeError, Normalized,
    VerifyError, WebhookSource,
};
use crate::annotations;
use crate::config::Secret;
use crate::domain::{
    Event, EventKind, Severity, Source, KEY_GITHUB_PR, KEY_GITHUB_REPO, KEY_INCIDENT_REF,
};

const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// The GitHub webhook source.
pub struct Github {
    secret: Option<Secret>,
}

impl Github {
    /// `secret: None` accepts unsigned deliveries (loopback trials only).
    pub fn new(secret: Option<Secret>) -> Self {
        Self { secret }
    }
}

/// Checks `X-Hub-Signature-256` against the raw body.
pub fn verify_signature(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::Missing(SIGNATURE_HEADER))?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(VerifyError::Malformed(SIGNATURE_HEADER))?;
    if signature::verify_hex(secret, &[body], hex) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|x| !x.is_empty())
}

fn n(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// A version-looking string (`v2.4.0`, `user-sync-2.4.0`) as numbers for comparison.
pub fn parse_version(s: &str) -> Option<Vec<u64>> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let tail = &s[start..];
    let end = tail
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(tail.len());
    let parts: Vec<u64> = tail[..end]
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (parts.len() >= 2).then_some(parts)
}

struct Builder {
    repo: Option<String>,
    received_at: DateTime<Utc>,
    delivery: String,
}

impl Builder {
    fn event(&self, kind: EventKind, title: String, occurred_at: Option<DateTime<Utc>>) -> Event {
        let mut keys = BTreeMap::new();
        if let Some(repo) = &self.repo {
            keys.insert(KEY_GITHUB_REPO.to_owned(), repo.clone());
        }
        Event {
            id: Ulid::new(),
            source: Source::Github,
            kind,
            occurred_at: occurred_at.unwrap_or(self.received_at),
            received_at: self.received_at,
            title,
            service: self
                .repo
                .as_deref()
                .map(|r| r.rsplit('/').next().unwrap_or(r).to_owned()),
            severity: None,
            actor: None,
            url: None,
            keys,
            attrs: Map::new(),
            delivery: Some(self.delivery.clone()),
            raw_id: None,
            incident_id: None,
            correlation: None,
        }
    }
}

fn at(v: &Value, path: &[&str]) -> Option<DateTime<Utc>> {
    s(v, path).and_then(time::parse_rfc3339)
}

fn handle(login: Option<&str>) -> Option<String> {
    login.map(|l| format!("@{l}"))
}

impl WebhookSource for Github {
    fn source(&self) -> Source {
        Source::Github
    }

    fn signs_body(&self) -> bool {
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
        let event_type = headers
            .get("X-GitHub-Event")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| NormalizeError::Shape("X-GitHub-Event header is missing".into()))?
            .to_owned();
        let p: Value = parse_json(body)?;
        if !p.is_object() {
            return Err(NormalizeError::Shape("payload is not a JSON object".into()));
        }
        let delivery_id = headers
            .get("X-GitHub-Delivery")
            .map(str::trim)
            .unwrap_or("");
        let hook_id = headers
            .get("X-GitHub-Hook-ID")
            .map(str::trim)
            .unwrap_or("-");
        let mut delivery_keys = Vec::new();
        if !delivery_id.is_empty() {
            delivery_keys.push(format!("github:{hook_id}:{delivery_id}"));
        }
        if event_type == "ping" {
            return Ok(Normalized {
                reply: Some(serde_json::json!({"status": "pong", "zen": s(&p, &["zen"])})),
                ..Default::default()
            });
        }
        let b = Builder {
            repo: s(&p, &["repository", "full_name"]).map(str::to_owned),
            received_at,
            delivery: if delivery_id.is_empty() {
                event_type.clone()
            } else {
                delivery_id.to_owned()
            },
        };
        let action = s(&p, &["action"]).unwrap_or("");
        let sender = handle(s(&p, &["sender", "login"]));
        let mut events = Vec::new();
        let mut ignored = None;
        match event_type.as_str() {
            "pull_request" => {
                let pr = &p["pull_request"];
                let number = n(pr, &["number"]).or(n(&p, &["number"])).ok_or_else(|| {
                    NormalizeError::Shape("pull_request.number is missing".into())
                })?;
                let title = s(pr, &["title"]).unwrap_or("");
                let author = handle(s(pr, &["user", "login"]));
                let merged = pr["merged"].as_bool().unwrap_or(false);
                let is_revert = title.to_ascii_lowercase().starts_with("revert");
                let (kind, verb, when) = match action {
                    "closed" if merged && is_revert => (
                        EventKind::ChangeRolledBack,
                        "merged (revert)",
                        at(pr, &["merged_at"]),
                    ),
                    "closed" if merged => {
                        (EventKind::ChangeMerged, "merged", at(pr, &["merged_at"]))
                    }
                    "closed" => (
                        EventKind::ChangeProposed,
                        "closed without merging",
                        at(pr, &["closed_at"]),
                    ),
                    "opened" | "reopened" | "ready_for_review" => (
                        EventKind::ChangeProposed,
                        action,
                        at(pr, &["updated_at"]).or(at(pr, &["created_at"])),
                    ),
                    other => {
                        ignored = Some(format!("pull_request action '{other}' is not recorded"));
                        (EventKind::ChangeProposed, "", None)
                    }
                };
                if ignored.is_none() {
                    let verb = verb.replace('_', " ");
                    let mut e = b.event(
                        kind,
                        format!(
                            "PR #{number} {verb}: {}{}",
                            truncate(title, 120),
                            author
                                .as_deref()
                                .map(|a| format!(" ({a})"))
                                .unwrap_or_default()
                        ),
                        when,
                    );
                    e.actor = if kind == EventKind::ChangeMerged {
                        handle(s(pr, &["merged_by", "login"])).or(author.clone())
                    } else {
                        sender.clone()
                    };
                    e.url = s(pr, &["html_url"]).map(str::to_owned);
                    if let Some(repo) = &b.repo {
                        e.keys
                            .insert(KEY_GITHUB_PR.to_owned(), format!("{repo}#{number}"));
                    }
                    if let Some(r) = s(pr, &["body"]).and_then(incident_ref_in) {
                        e.keys.insert(KEY_INCIDENT_REF.to_owned(), r);
                    }
                    let a = &mut e.attrs;
                    a.insert("pr_number".into(), Value::from(number));
                    a.insert("pr_title".into(), Value::from(title));
                    if let Some(x) = author {
                        a.insert("author".into(), Value::from(x));
                    }
                    for (k, path) in [
                        ("merge_commit_sha", &["merge_commit_sha"][..]),
                        ("base_ref", &["base", "ref"]),
                        ("head_sha", &["head", "sha"]),
                    ] {
                        if let Some(v) = s(pr, path) {
                            a.insert(k.into(), Value::from(v));
                        }
                    }
                    a.insert("merged".into(), Value::from(merged));
                    if is_revert {
                        a.insert("revert".into(), Value::from(true));
                    }
                    events.push(e);
                }
            }
            "push" => {
                let r = s(&p, &["ref"]).unwrap_or("");
                let short = r
                    .trim_start_matches("refs/heads/")
                    .trim_start_matches("refs/tags/");
                let pusher = s(&p, &["pusher", "name"])
                    .map(|x| format!("@{x}"))
                    .or(sender.clone());
                let count = p["commits"].as_array().map(Vec::len).unwrap_or(0);
                let title = if p["deleted"].as_bool().unwrap_or(false) {
                    format!("Deleted {short}")
                } else {
                    let msg = s(&p, &["head_commit", "message"])
                        .map(first_line)
                        .unwrap_or("");
                    let forced = if p["forced"].as_bool().unwrap_or(false) {
                        "Force-pushed"
                    } else {
                        "Pushed"
                    };
                    let plural = if count == 1 { "" } else { "s" };
                    if msg.is_empty() {
                        format!("{forced} {count} commit{plural} to {short}")
                    } else {
                        format!(
                            "{forced} {count} commit{plural} to {short}: {}",
                            truncate(msg, 100)
                        )
                    }
                };
                let mut e = b.event(
                    EventKind::ChangePushed,
                    title,
                    at(&p, &["head_commit", "timestamp"]),
                );
                e.actor = pusher;
                e.url = s(&p, &["compare"]).map(str::to_owned);
                e.attrs.insert("ref".into(), Value::from(r));
                e.attrs.insert("commits".into(), Value::from(count));
                if let Some(after) = s(&p, &["after"]) {
                    e.attrs.insert("after".into(), Value::from(after));
                }
                events.push(e);
            }
            "deployment" => {
                let d = &p["deployment"];
                let env = s(d, &["environment"]).unwrap_or("unknown");
                let version = s(d, &["ref"]).unwrap_or("?");
                let name = b
                    .event(EventKind::ChangeDeployStarted, String::new(), None)
                    .service
                    .unwrap_or_default();
                let mut e = b.event(
                    EventKind::ChangeDeployStarted,
                    format!("Deploying {name} {version} to {env}"),
                    at(d, &["created_at"]),
                );
                e.actor = handle(s(d, &["creator", "login"])).or(sender.clone());
                e.attrs.insert("environment".into(), Value::from(env));
                e.attrs.insert("version".into(), Value::from(version));
                if let Some(id) = n(d, &["id"]) {
                    e.attrs.insert("deployment_id".into(), Value::from(id));
                }
                events.push(e);
            }
            "deployment_status" => {
                let st = &p["deployment_status"];
                let d = &p["deployment"];
                let state = s(st, &["state"]).unwrap_or("");
                let env = s(st, &["environment"])
                    .or(s(d, &["environment"]))
                    .unwrap_or("unknown");
                let version = s(d, &["ref"]).unwrap_or("?");
                let name = b
                    .event(EventKind::ChangeDeployed, String::new(), None)
                    .service
                    .unwrap_or_default();
                let description = format!(
                    "{} {}",
                    s(d, &["description"]).unwrap_or(""),
                    s(st, &["description"]).unwrap_or("")
                )
                .to_ascii_lowercase();
                let says_rollback = description.contains("rollback")
                    || description.contains("roll back")
                    || description.contains("revert");
                let (kind, title) = match state {
                    "success" if says_rollback => (
                        EventKind::ChangeRolledBack,
                        format!("Rolled back {name} to {version}"),
                    ),
                    "success" => (
                        EventKind::ChangeDeployed,
                        format!("Deployed {name} {version} to {env}"),
                    ),
                    "failure" | "error" => (
                        EventKind::ChangeDeployFailed,
                        format!("Deploy of {name} {version} to {env} failed"),
                    ),
                    other => {
                        ignored = Some(format!("deployment_status '{other}' is not recorded"));
                        (EventKind::ChangeDeployed, String::new())
                    }
                };
                if ignored.is_none() {
                    let mut e = b.event(kind, title, at(st, &["created_at"]));
                    e.actor = handle(s(st, &["creator", "login"])).or(sender.clone());
                    e.url = s(st, &["target_url"])
                        .or(s(st, &["log_url"]))
                        .map(str::to_owned);
                    e.severity = (kind == EventKind::ChangeDeployFailed).then_some(Severity::Error);
                    e.attrs.insert("environment".into(), Value::from(env));
                    e.attrs.insert("version".into(), Value::from(version));
                    if let Some(sha) = s(d, &["sha"]) {
                        e.attrs.insert("sha".into(), Value::from(sha));
                    }
                    events.push(e);
                }
            }
            "workflow_run" | "check_run" => {
                let run = &p[event_type.as_str()];
                let conclusion = s(run, &["conclusion"]).unwrap_or("");
                let name = s(run, &["name"]).unwrap_or(event_type.as_str());
                let branch = s(run, &["head_branch"]).or(s(run, &["check_suite", "head_branch"]));
                let on = branch.map(|br| format!(" on {br}")).unwrap_or_default();
                let kind = match (action, conclusion) {
                    ("completed", "failure" | "timed_out" | "startup_failure") => {
                        Some((EventKind::CiFailed, "failed"))
                    }
                    ("completed", "success") => Some((EventKind::CiSucceeded, "succeeded")),
                    _ => None,
                };
                match kind {
                    Some((kind, verb)) => {
                        let mut e = b.event(
                            kind,
                            format!(
                                "{} {name} {verb}{on}",
                                if event_type == "workflow_run" {
                                    "Workflow"
                                } else {
                                    "Check"
                                }
                            ),
                            at(run, &["updated_at"]).or(at(run, &["completed_at"])),
                        );
                        e.actor = sender.clone();
                        e.url = s(run, &["html_url"]).map(str::to_owned);
                        e.severity = (kind == EventKind::CiFailed).then_some(Severity::Warning);
                        e.attrs.insert("conclusion".into(), Value::from(conclusion));
                        if let Some(sha) = s(run, &["head_sha"]) {
                            e.attrs.insert("sha".into(), Value::from(sha));
                        }
                        events.push(e);
                    }
                    None => {
                        ignored = Some(format!(
                            "{event_type} {action}/{conclusion} is not recorded"
                        ))
                    }
                }
            }
            "release" if action == "published" || action == "released" => {
                let r = &p["release"];
                let tag = s(r, &["tag_name"]).unwrap_or("?");
                let name = s(r, &["name"]).filter(|n| *n != tag);
                let mut e = b.event(
                    EventKind::ChangeReleased,
                    match name {
                        Some(n) => format!("Released {tag}: {}", truncate(n, 100)),
                        None => format!("Released {tag}"),
                    },
                    at(r, &["published_at"]),
                );
                e.actor = handle(s(r, &["author", "login"])).or(sender.clone());
                e.url = s(r, &["html_url"]).map(str::to_owned);
                e.attrs.insert("version".into(), Value::from(tag));
                // `published` and `released` both arrive for one release: keep one.
                if let Some(id) = n(r, &["id"]) {
                    delivery_keys.push(format!("github:release:{id}"));
                }
                events.push(e);
            }
            "issues" if matches!(action, "opened" | "closed" | "reopened") => {
                let i = &p["issue"];
                let number = n(i, &["number"]).unwrap_or(0);
                let kind = if action == "closed" {
                    EventKind::TicketClosed
                } else {
                    EventKind::TicketOpened
                };
                let mut e = b.event(
                    kind,
                    format!(
                        "Issue #{number} {action}: {}",
                        truncate(s(i, &["title"]).unwrap_or(""), 120)
                    ),
                    at(
                        i,
                        &[if action == "closed" {
                            "closed_at"
                        } else {
                            "updated_at"
                        }],
                    )
                    .or(at(i, &["created_at"])),
                );
                e.actor = sender.clone();
                e.url = s(i, &["html_url"]).map(str::to_owned);
                if let Some(repo) = &b.repo {
                    e.keys
                        .insert(KEY_GITHUB_PR.to_owned(), format!("{repo}#{number}"));
                }
                if let Some(r) = s(i, &["body"]).and_then(incident_ref_in) {
                    e.keys.insert(KEY_INCIDENT_REF.to_owned(), r);
                }
                e.attrs.insert("issue_number".into(), Value::from(number));
                events.push(e);
            }
            "issue_comment" if action == "created" || action == "edited" => {
                let c = &p["comment"];
                let text = s(c, &["body"]).unwrap_or("");
                let number = n(&p, &["issue", "number"]).unwrap_or(0);
                let who = handle(s(c, &["user", "login"])).or(sender.clone());
                let mut e = b.event(
                    EventKind::ChatMessage,
                    format!(
                        "{} on #{number}: '{}'",
                        who.as_deref().unwrap_or("someone"),
                        truncate(first_line(text), 160)
                    ),
                    at(c, &["updated_at"]).or(at(c, &["created_at"])),
                );
                e.actor = who;
                e.url = s(c, &["html_url"]).map(str::to_owned);
                if let Some(repo) = &b.repo {
                    e.keys
                        .insert(KEY_GITHUB_PR.to_owned(), format!("{repo}#{number}"));
                }
                if let Some(r) = incident_ref_in(text) {
                    e.keys.insert(KEY_INCIDENT_REF.to_owned(), r);
                }
                e.attrs.insert("text".into(), Value::from(text));
                let annotation = annotations::derive(&e, text);
                events.push(e);
                events.extend(annotation);
            }
            other => {
                ignored = Some(format!("GitHub event '{other}' ({action}) is not recorded"));
            }
        }
        Ok(Normalized {
            delivery_keys,
            events,
            ignored,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("v2.4.0"), Some(vec![2, 4, 0]));
        assert_eq!(parse_version("user-sync-2.3.1"), Some(vec![2, 3, 1]));
        assert!(parse_version("v2.3.1") < parse_version("v2.10.0"));
        assert_eq!(parse_version("master"), None);
        assert_eq!(parse_version("v3"), None);
    }
}
