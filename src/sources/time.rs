//! Provider timestamp formats, parsed in one place.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

/// RFC 3339 (PagerDuty, GitHub, EventBridge `time`), returned in UTC.
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// CloudWatch's `2015-06-03T17:43:27.123+0000` (offset without a colon), or RFC 3339.
pub fn parse_aws(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    parse_rfc3339(s)
        .or_else(|| {
            DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| Utc.from_utc_datetime(&n))
        })
}

/// Epoch milliseconds, as a number or a string (Datadog's `$DATE`, `$LAST_UPDATED`).
pub fn parse_epoch_millis(s: &str) -> Option<DateTime<Utc>> {
    let ms: i64 = s.trim().parse().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}

/// Epoch seconds with an optional fraction: Slack's `ts` (`"1719209506.817929"`).
pub fn parse_epoch_seconds(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let micros: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(6).collect();
        let padded = format!("{digits:0<6}");
        padded.parse().ok()?
    };
    Utc.timestamp_opt(secs, micros * 1000).single()
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

    #[test]
    fn aws_offsets_without_colon_parse() {
        let t = parse_aws("2015-06-03T17:43:27.123+0000").unwrap();
        assert_eq!(t.to_rfc3339(), "2015-06-03T17:43:27.123+00:00");
        assert!(parse_aws("2015-06-03T17:43:27Z").is_some());
        assert!(parse_aws("12: 36: 15").is_none());
    }

    #[test]
    fn epoch_forms_parse() {
        let t = parse_epoch_millis("1733930133000").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-12-11T15:15:33+00:00");
        let t = parse_epoch_seconds("1719209506.817929").unwrap();
        assert_eq!(t.timestamp_subsec_micros(), 817_929);
        assert_eq!(t.timestamp(), 1_719_209_506);
        assert!(parse_epoch_seconds("abc").is_none());
        assert!(parse_epoch_millis("$DATE").is_none());
    }
}
