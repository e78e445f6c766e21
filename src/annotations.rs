//! Annotations written where responders already are: a chat message, PagerDuty note or
//! GitHub comment that starts with `root cause:`, `impact:`, `mitigation:`, `summary:`,
//! `title:`, `customer message:` or `action HIGH|MEDIUM|LOW:` (case-insensitive, a
//! leading mention allowed) also becomes an `annotation.*` event.

use serde_json::Value;
use ulid::Ulid;

use crate::domain::{Event, EventKind};

/// A parsed annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub kind: EventKind,
    pub text: String,
    /// `HIGH`, `MEDIUM` or `LOW` for action items.
    pub priority: Option<&'static str>,
}

const PREFIXES: &[(&str, EventKind)] = &[
    ("root cause", EventKind::AnnotationRootCause),
    ("rootcause", EventKind::AnnotationRootCause),
    ("impact", EventKind::AnnotationImpact),
    ("mitigation", EventKind::AnnotationMitigation),
    ("summary", EventKind::AnnotationSummary),
    ("title", EventKind::AnnotationTitle),
    ("customer message", EventKind::AnnotationCustomerMessage),
];

/// Drops leading mentions: `<@U123>`, `<!here>`, `@sarah`, and the punctuation after them.
fn strip_mentions(mut s: &str) -> &str {
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == ':');
        if s.starts_with("<@") || s.starts_with("<!") {
            match s.find('>') {
                Some(end) => s = &s[end + 1..],
                None => return s,
            }
        } else if let Some(rest) = s.strip_prefix('@') {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ',' || c == ':')
                .unwrap_or(rest.len());
            s = &rest[end..];
        } else {
            return s;
        }
    }
}

/// Parses `text` as an annotation, if it is one.
pub fn parse(text: &str) -> Option<Annotation> {
    let s = strip_mentions(text.trim());
    let lower = s.to_ascii_lowercase();
    let body = |prefix_len: usize| s[prefix_len..].trim().to_owned();
    for (prefix, kind) in PREFIXES {
        if let Some(rest) = lower.strip_prefix(prefix) {
            if let Some(after) = rest.trim_start().strip_prefix(':') {
                let text = body(s.len() - after.len());
                return (!text.is_empty()).then_some(Annotation {
                    kind: *kind,
                    text,
                    priority: None,
                });
            }
        }
    }
    let rest = lower.strip_prefix("action")?;
    let (priority, rest) = [("high", "HIGH"), ("medium", "MEDIUM"), ("low", "LOW")]
        .into_iter()
        .find_map(|(p, label)| rest.trim_start().strip_prefix(p).map(|r| (label, r)))
        .unwrap_or(("MEDIUM", rest));
    let after = rest.trim_start().strip_prefix(':')?;
    let text = body(s.len() - after.len());
    (!text.is_empty()).then_some(Annotation {
        kind: EventKind::AnnotationActionItem,
        text,
        priority: Some(priority),
    })
}

/// The label used in titles: `Root cause`, `Action (HIGH)`.
pub fn label(a: &Annotation) -> String {
    match a.kind {
        EventKind::AnnotationRootCause => "Root cause".into(),
        EventKind::AnnotationImpact => "Impact".into(),
        EventKind::AnnotationMitigation => "Mitigation".into(),
        EventKind::AnnotationSummary => "Summary".into(),
        EventKind::AnnotationTitle => "Title".into(),
        EventKind::AnnotationCustomerMessage => "Customer message".into(),
        _ => format!("Action ({})", a.priority.unwrap_or("MEDIUM")),
    }
}

/// When `text` of `event` is an annotation, the `annotation.*` event that goes beside it:
/// same source, time, actor, keys and link, its own id.
pub fn derive(event: &Event, text: &str) -> Option<Event> {
    let a = parse(text)?;
    let mut out = event.clone();
    out.id = Ulid::new();
    out.kind = a.kind;
    out.title = format!("{}: {}", label(&a), crate::sources::truncate(&a.text, 200));
    out.attrs = serde_json::Map::new();
    out.attrs.insert("text".into(), Value::from(a.text));
    if let Some(p) = a.priority {
        out.attrs.insert("priority".into(), Value::from(p));
    }
    out.attrs
        .insert("annotates".into(), Value::from(event.id.to_string()));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_is_recognised_case_insensitively_with_mentions() {
        let cases: &[(&str, EventKind, &str, Option<&str>)] = &[
            (
                "root cause: missing close()",
                EventKind::AnnotationRootCause,
                "missing close()",
                None,
            ),
            (
                "Root Cause : leak",
                EventKind::AnnotationRootCause,
                "leak",
                None,
            ),
            (
                "<@U123> impact: 12% of users",
                EventKind::AnnotationImpact,
                "12% of users",
                None,
            ),
            (
                "@sarah mitigation: rolled back",
                EventKind::AnnotationMitigation,
                "rolled back",
                None,
            ),
            (
                "SUMMARY: db pool exhausted",
                EventKind::AnnotationSummary,
                "db pool exhausted",
                None,
            ),
            (
                "title: Database outage",
                EventKind::AnnotationTitle,
                "Database outage",
                None,
            ),
            (
                "action HIGH: add pool alerts",
                EventKind::AnnotationActionItem,
                "add pool alerts",
                Some("HIGH"),
            ),
            (
                "Action low: docs",
                EventKind::AnnotationActionItem,
                "docs",
                Some("LOW"),
            ),
            (
                "action: review",
                EventKind::AnnotationActionItem,
                "review",
                Some("MEDIUM"),
            ),
        ];
        for (text, kind, body, priority) in cases {
            let a = parse(text).unwrap_or_else(|| panic!("{text} should parse"));
            assert_eq!(a.kind, *kind, "{text}");
            assert_eq!(a.text, *body, "{text}");
            assert_eq!(a.priority, *priority, "{text}");
        }
    }

    #[test]
    fn ordinary_messages_are_not_annotations() {
        for text in [
            "Looks like connection leak from the new user-sync service",
            "the root cause is unclear",
            "impact:",
            "actionable: no",
            "",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
