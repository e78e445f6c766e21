//! Markdown escaping for `postmortem.md`: outside text (event titles come from the
//! internet) stays text: no links, images, footnotes, HTML, code or new blocks. It is the
//! escape function of the Markdown templates, so `{{value}}` is always escaped and only
//! our own markup (citations, checked links) is written with `{{{…}}}`.

/// Escapes a value for Markdown.
pub fn escape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    // Values often start a line (a summary, a list item's text): a leading block marker
    // would make a heading, quote, list, rule or table of it. Leading spaces would make
    // code, and say nothing.
    let s = s.trim_start();
    if s.starts_with(['#', '>', '+', '-', '*', '=', '|', '~', '_']) {
        out.push('\\');
    } else {
        // `1. ` or `1) ` starts an ordered list; `87.5` does not.
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let after = s.as_bytes().get(digits + 1);
        if digits > 0
            && matches!(s.as_bytes().get(digits), Some(b'.' | b')'))
            && after.is_none_or(|b| b.is_ascii_whitespace())
        {
            out.push_str(&s[..digits]);
            out.push('\\');
            out.push_str(&escape_inline(&s[digits..]));
            return out;
        }
    }
    out.push_str(&escape_inline(s));
    out
}

fn escape_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '[' | ']' | '<' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Only http(s) links, with the characters that would end a Markdown link escaped.
pub fn safe_url(url: Option<&str>) -> Option<String> {
    url.and_then(crate::domain::clean_url).map(|u| {
        u.replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29")
            .replace('<', "%3C")
            .replace('>', "%3E")
    })
}
