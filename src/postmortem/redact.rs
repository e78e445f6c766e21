//! Redaction of the text made to be posted in public (`hn-post.txt`,
//! `twitter-thread.txt`, the message to users): email addresses, IP addresses, tokens and
//! secrets, and whatever `render.redact_patterns` names, become `[redacted]`.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use regex::Regex;

/// What a redaction leaves in the text.
pub const MARK: &str = "[redacted]";

/// The built-in kinds, in the order they are applied (tokens before the generic
/// secrets, so a whole token goes at once).
const BUILT_IN: &[&str] = &[
    // Bearer tokens: the word and a token (with a digit: "bearer credentials" is prose).
    r"(?i)\bbearer\s+[A-Za-z._~+/=-]*[0-9][A-Za-z0-9._~+/=-]{7,}",
    // Secrets written as key=value or key: value.
    r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|token)\s*[:=]\s*[^\s,;]{4,}",
    // JSON Web Tokens.
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    // Slack incoming-webhook URLs carry their secret in the path.
    r"(?i)https?://hooks\.slack\.com/[A-Za-z0-9/_-]+",
    // Slack tokens (bot, user, app, refresh, config).
    r"\bxox[abprse]-[A-Za-z0-9-]{8,}",
    r"\bxoxe\.xox[a-z]-[A-Za-z0-9-]{8,}",
    r"\bxapp-[A-Za-z0-9-]{8,}",
    // GitHub tokens (classic, fine-grained, OAuth, app, refresh).
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    // AWS access key ids.
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    // Email addresses.
    r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b",
];

/// Hex runs this long are secrets (API keys, hashes used as secrets), except exactly 40
/// digits: a git commit SHA (deploy refs, commit links) is no secret.
const LONG_HEX: &str = r"\b[0-9a-fA-F]{32,}\b";

/// Runs of base64 (or base64url) this long with upper, lower case and digits.
const BASE64_RUN: &str = r"[A-Za-z0-9+/_-]{40,}={0,2}";
/// IPv4 candidates (checked by parsing).
const IPV4: &str = r"\b\d{1,3}(?:\.\d{1,3}){3}\b";
/// IPv6 candidates (checked by parsing, and only with `::` or eight groups).
const IPV6: &str = r"(?i)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:%[0-9a-z]+)?";

/// The compiled redactions.
#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: Vec<Regex>,
    hex: Regex,
    base64: Regex,
    ipv4: Regex,
    ipv6: Regex,
}

impl Redactor {
    /// The built-in kinds plus `extra` (regexes from `render.redact_patterns`).
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let compile = |p: &str| Regex::new(p).map_err(|e| format!("'{p}': {e}"));
        let mut patterns = BUILT_IN
            .iter()
            .map(|p| compile(p))
            .collect::<Result<Vec<_>, _>>()?;
        for p in extra {
            if p.trim().is_empty() {
                return Err("an empty pattern would redact everything".into());
            }
            let re = compile(p)?;
            if re.is_match("") {
                return Err(format!("'{p}' matches the empty string"));
            }
            patterns.push(re);
        }
        Ok(Redactor {
            patterns,
            hex: compile(LONG_HEX)?,
            base64: compile(BASE64_RUN)?,
            ipv4: compile(IPV4)?,
            ipv6: compile(IPV6)?,
        })
    }

    /// The built-in kinds only.
    pub fn built_in() -> Self {
        Self::new(&[]).unwrap_or_else(|e| unreachable!("built-in patterns compile: {e}"))
    }

    /// `text` with every match replaced by [`MARK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        for re in &self.patterns {
            if re.is_match(&out) {
                out = Cow::Owned(re.replace_all(&out, MARK).into_owned());
            }
        }
        let keep = |s: &str| {
            s.chars().any(|c| c.is_ascii_uppercase())
                && s.chars().any(|c| c.is_ascii_lowercase())
                && s.chars().any(|c| c.is_ascii_digit())
        };
        out = replace_checked(out, &self.hex, false, |m| m.len() != 40);
        out = replace_checked(out, &self.base64, true, |m| keep(m));
        out = replace_checked(out, &self.ipv4, false, |m| m.parse::<Ipv4Addr>().is_ok());
        out = replace_checked(out, &self.ipv6, true, |m| {
            let addr = m.split('%').next().unwrap_or(m);
            let groups = addr.split(':').filter(|g| !g.is_empty()).count();
            (addr.contains("::") && groups >= 2 || groups == 8) && addr.parse::<Ipv6Addr>().is_ok()
        });
        out
    }

    /// How many marks `text` holds (what the manifest reports per file).
    pub fn count(text: &str) -> usize {
        text.matches(MARK).count()
    }
}

/// Replaces the matches of `re` for which `check` holds and that stand alone (not inside
/// a longer word or number; with `colon_is_word`, not next to a `:` either, as for IPv6,
/// while an IPv4 may be followed by its `:port`). A secret may sit after a `/` or a `.`
/// (in a URL, a dotted token), a number not after a digit and a dot (`1.2.3.4.5`).
fn replace_checked<'a>(
    text: Cow<'a, str>,
    re: &Regex,
    colon_is_word: bool,
    check: impl Fn(&str) -> bool,
) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || (colon_is_word && b == b':');
    let standalone = |start: usize, end: usize| {
        let dotted_number =
            start >= 2 && bytes[start - 1] == b'.' && bytes[start - 2].is_ascii_digit();
        let before_ok = start == 0 || !(word(bytes[start - 1]) || dotted_number);
        // A full stop ends a sentence unless a word goes on right after it.
        let after_ok = end == bytes.len()
            || !(word(bytes[end])
                || bytes[end] == b'.' && bytes.get(end + 1).is_some_and(|&b| word(b)));
        before_ok && after_ok
    };
    let hits: Vec<(usize, usize)> = re
        .find_iter(&text)
        .filter(|m| standalone(m.start(), m.end()) && check(m.as_str()))
        .map(|m| (m.start(), m.end()))
        .collect();
    if hits.is_empty() {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e) in hits {
        out.push_str(&text[at..s]);
        out.push_str(MARK);
        at = e;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_kind_is_redacted() {
        let r = Redactor::built_in();
        let cases = [
            "mail sarah.chen@example.com now",
            "db at 10.0.12.7. It is down",
            "v6 fe80::1ff:fe23:4567:890a here",
            "token xoxb-1234567890-abcdefghij",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            "key AKIAIOSFODNN7EXAMPLE",
            "Authorization: Bearer abc.def1.ghi-jkl",
            "secret 0123456789abcdef0123456789abcdef",
            "b64 wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY12",
            "db at 10.0.12.7:5432 refused",
            "see http://10.0.0.1:8080/status",
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "hook https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
            "set password=hunter22 on the replica",
            "app token xapp-1-A0123-4567-abcdef",
        ];
        for c in cases {
            let out = r.redact(c);
            assert!(out.contains(MARK), "{c} → {out}");
            assert_eq!(Redactor::count(&out), 1, "{c} → {out}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let r = Redactor::built_in();
        for c in [
            "At 14:23:05 UTC the error rate reached 23%.",
            "Rolled back user-sync to v2.3.1",
            "PR #2847 missing connection.close() in error handler",
            "std::io::Error and Vec::new",
            "@sarah acknowledged",
            "12,400 users affected",
            "Deployed api 0123456789abcdef0123456789abcdef01234567 to production",
            "bearer authentication failed for the API",
        ] {
            assert_eq!(r.redact(c), c);
        }
    }

    #[test]
    fn configured_patterns_are_applied_and_bad_ones_refused() {
        let r = Redactor::new(&[r"[a-z0-9-]+\.corp\.example\.com".into()]).unwrap();
        assert_eq!(
            r.redact("db-7.corp.example.com is slow"),
            "[redacted] is slow"
        );
        assert!(Redactor::new(&["(".into()]).is_err());
        assert!(Redactor::new(&["a*".into()]).is_err());
    }
}
