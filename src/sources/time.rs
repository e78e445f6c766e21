//! Provider timestamp formats, parsed in one place.

use chrono::{DateTime, Utc};

/// RFC 3339 (PagerDuty, GitHub, EventBridge `time`), returned in UTC.
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_millis_and_offsets_is_utc() {
        let t = parse_rfc3339("2021-06-04T13:35:29.781Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2021-06-04T13:35:29.781+00:00");
        let t = parse_rfc3339("2021-06-04T15:35:29+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2021-06-04T13:35:29+00:00");
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
