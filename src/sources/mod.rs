//! Push sources: one module per provider, each implementing [`WebhookSource`].
//!
//! A webhook goes `verify(headers, raw bytes)` → `normalize(payload)` → [`Normalized`].
//! Sources never touch storage; what every source does (HMAC checks, timestamps) lives in
//! [`signature`] and [`time`] once.

pub mod pagerduty;
pub mod signature;
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
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo wörld", 6), "héllo…");
    }
}
