//! Push sources: one module per provider, each implementing [`WebhookSource`].
//!
//! A webhook goes `verify(headers, raw bytes)` → `normalize(payload)` → [`Normalized`].
//! Sources never touch storage; what every source does (HMAC checks, timestamps) lives in
//! [`signature`] and [`time`] once.

pub mod cloudwatch;
pub mod datadog;
pub mod github;
pub mod pagerduty;
pub mod signature;
pub mod slack;
pub mod time;

use chrono::{DateTime, Utc};

use crate::domain::Source;

/// Request headers, names lower-cased, decoupled from the HTTP framework.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// Builds from (name, value) pairs; names are lower-cased, non-UTF-8 values dropped.
    pub fn new<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        Headers(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into()))
                .collect(),
        )
    }

    /// The first value of a header (name case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Authentication failures: the request is answered 401 and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature (or token) header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// The header is present but cannot be read.
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// No signature matched the body.
    #[error("signature does not match the request body")]
    Mismatch,
    /// The signed timestamp is outside the accepted window (replay protection).
    #[error("request timestamp is outside the accepted window")]
    Stale,
    /// What verification needs could not be had now (an SNS certificate); retry later.
    #[error("cannot verify the request now: {0}")]
    Unavailable(String),
}

/// Payload failures: the request is answered 400 and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// Zero-length body.
    #[error("request body is empty")]
    Empty,
    /// Not JSON (or not UTF-8).
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    /// JSON, but not the shape this provider sends.
    #[error("payload does not have the expected shape: {0}")]
    Shape(String),
}

/// What a verified payload turned into.
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    /// Delivery keys for idempotency, `source:kind:id`.
    pub delivery_keys: Vec<String>,
    /// The key of each event when the body carries several deliveries (see
    /// `ingest::Submission::event_keys`); empty when it is one.
    pub event_keys: Vec<String>,
    /// Events to store (may be empty: the raw payload is still recorded).
    pub events: Vec<crate::domain::Event>,
    /// A body to answer with instead of storing anything (handshakes, pings).
    pub reply: Option<serde_json::Value>,
    /// Why no event came out of a stored payload, for the response and the log.
    pub ignored: Option<String>,
}

/// A provider that pushes webhooks.
pub trait WebhookSource: Send + Sync + 'static {
    /// Which source this is.
    fn source(&self) -> Source;

    /// True when the provider signs the whole body with an HMAC: then a body stored
    /// once is a replay whatever its (unsigned) delivery header says.
    fn signs_body(&self) -> bool {
        false
    }

    /// True when every delivery this source accepts carries a delivery key read from its
    /// signed body (an id the provider gives each event): a replay of the body then
    /// already meets that key, and a key for the body's hash would be a second write
    /// and a second lookup per webhook for the same thing.
    fn body_carries_delivery_key(&self) -> bool {
        false
    }

    /// Fetches what verification needs (SNS signing certificates), before `verify`.
    fn prefetch<'a>(
        &'a self,
        _headers: &'a Headers,
        _body: &'a [u8],
    ) -> futures_util::future::BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(async { Ok(()) })
    }

    /// Checks the request's signature or token on the raw body, before any parsing.
    /// `now` is passed in so replay windows are testable.
    fn verify(&self, headers: &Headers, body: &[u8], now: DateTime<Utc>)
        -> Result<(), VerifyError>;

    /// Parses a verified body into events.
    fn normalize(
        &self,
        headers: &Headers,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Normalized, NormalizeError>;
}

/// Refuses event times no real incident has (before 2000, or more than a day ahead):
/// they would only corrupt timelines and overflow time arithmetic downstream.
pub fn check_times(n: &Normalized, now: DateTime<Utc>) -> Result<(), NormalizeError> {
    let earliest = DateTime::<Utc>::from_timestamp(946_684_800, 0).unwrap_or(now);
    let latest = now + chrono::Duration::days(1);
    match n
        .events
        .iter()
        .find(|e| e.occurred_at < earliest || e.occurred_at > latest)
    {
        Some(e) => Err(NormalizeError::Shape(format!(
            "event time {} is outside 2000-01-01 .. now + 1 day",
            e.occurred_at.to_rfc3339()
        ))),
        None => Ok(()),
    }
}

/// Parses a JSON body with the errors every source reports the same way.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, NormalizeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(NormalizeError::Empty);
    }
    // Syntax first, so "not JSON" and "wrong shape" get different answers.
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| NormalizeError::Malformed(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| NormalizeError::Shape(e.to_string()))
}

/// The first measurement in a line of text: `98% capacity` → (98, "%"),
/// `response time > 5000ms` → (5000, "ms"). Feeds "peak error rate 23%".
pub fn extract_measure(text: &str) -> Option<(f64, String)> {
    const UNITS: &[&str] = &["%", "ms", "req/s", "rps", "s", "MB", "GB", "KB"];
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'#'));
        if !starts_number {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.' || bytes[i] == b',')
        {
            i += 1;
        }
        let number: String = text[start..i].chars().filter(|c| *c != ',').collect();
        let number = number.trim_end_matches('.');
        let rest = text[i..].trim_start_matches(' ');
        for unit in UNITS {
            if let Some(after) = rest.strip_prefix(unit) {
                let boundary = after
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_ascii_alphanumeric());
                if boundary {
                    if let Ok(v) = number.parse::<f64>() {
                        return Some((v, (*unit).to_owned()));
                    }
                }
            }
        }
    }
    None
}

/// A PagerDuty incident id named in free text (an incident URL), if any.
pub fn incident_ref_in(text: &str) -> Option<String> {
    let idx = text.find(".pagerduty.com/incidents/")?;
    let rest = &text[idx + ".pagerduty.com/incidents/".len()..];
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// True for a Datadog/Slack template variable that was not expanded (`$ALERT_ID`) or an
/// empty value.
pub fn is_unset(value: &str) -> bool {
    let v = value.trim();
    v.is_empty()
        || (v.starts_with('$') && v[1..].chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

/// Cuts a text to at most `max` characters, adding an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive() {
        let h = Headers::new([("X-PagerDuty-Signature", "v1=ab")]);
        assert_eq!(h.get("x-pagerduty-signature"), Some("v1=ab"));
        assert_eq!(h.get("X-PAGERDUTY-SIGNATURE"), Some("v1=ab"));
        assert_eq!(h.get("x-other"), None);
    }

    #[test]
    fn json_errors_distinguish_empty_syntax_and_shape() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            a: u32,
        }
        assert_eq!(parse_json::<S>(b"  ").unwrap_err(), NormalizeError::Empty);
        assert!(matches!(
            parse_json::<S>(b"{nope").unwrap_err(),
            NormalizeError::Malformed(_)
        ));
        assert!(matches!(
            parse_json::<S>(b"{\"b\":1}").unwrap_err(),
            NormalizeError::Shape(_)
        ));
        assert_eq!(parse_json::<S>(b"{\"a\":1}").unwrap().a, 1);
    }

    #[test]
    fn measures_are_found_in_alert_titles() {
        let cases: &[(&str, Option<(f64, &str)>)] = &[
            (
                "PostgreSQL connection pool at 98% capacity",
                Some((98.0, "%")),
            ),
            (
                "Error rate: 23% of requests returning 503",
                Some((23.0, "%")),
            ),
            ("API response time > 5000ms", Some((5000.0, "ms"))),
            ("RDS CPU spike to 87.5 %", Some((87.5, "%"))),
            ("PR #2847 merged", None),
            ("HTTP 503 errors", None),
        ];
        for (text, want) in cases {
            let got = extract_measure(text);
            assert_eq!(got.as_ref().map(|(v, u)| (*v, u.as_str())), *want, "{text}");
        }
    }

    #[test]
    fn incident_urls_in_text_name_the_incident() {
        assert_eq!(
            incident_ref_in("see https://acme.pagerduty.com/incidents/PT4KHLK for details")
                .as_deref(),
            Some("PT4KHLK")
        );
        assert_eq!(incident_ref_in("no link here"), None);
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo wörld", 6), "héllo…");
    }
}
