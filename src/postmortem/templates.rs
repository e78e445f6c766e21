//! The pack's Handlebars templates: embedded, each replaceable from `render.templates_dir`,
//! strict, and checked at load against complete sample views.
//!
//! Two registries: `postmortem.md` escapes every `{{value}}` for Markdown (our own
//! markup, citations and checked links, is written `{{{…}}}`); the `.txt` files and the
//! message to users take values as they are. The partials `summary` and `users-message`
//! are in both, so an override of one changes every file that says it.
//!
//! Helpers: `plural n "word"` (`n` a number or a list: `3 action items`), `join list ", "
//! last=" and "` (strings, or objects by their `text`), `cut text 50` (on a word boundary,
//! with `…`), `sentence text` (capital first letter, a full stop at the end).

use std::path::Path;

use handlebars::{handlebars_helper, Handlebars, JsonValue};
use serde_json::Value;

use super::markdown::escape_markdown;
use super::RenderError;

/// `(name, embedded source, is a partial)`.
const SOURCES: [(&str, &str, bool); 5] = [
    (
        "postmortem.md",
        include_str!("../../templates/postmortem.md.hbs"),
        false,
    ),
    (
        "hn-post.txt",
        include_str!("../../templates/hn-post.txt.hbs"),
        false,
    ),
    (
        "twitter-thread.txt",
        include_str!("../../templates/twitter-thread.txt.hbs"),
        false,
    ),
    (
        "summary",
        include_str!("../../templates/partials/summary.hbs"),
        true,
    ),
    (
        "users-message",
        include_str!("../../templates/partials/users-message.hbs"),
        true,
    ),
];

/// Cuts `text` to at most `max` characters on a word boundary, with `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let room = max.saturating_sub(1);
    let head: String = text.chars().take(room).collect();
    let at_word = match head.rfind(char::is_whitespace) {
        // Keep at least half: one very long word is cut inside.
        Some(i) if head[..i].chars().count() * 2 >= room => head[..i].trim_end().to_owned(),
        _ => head,
    };
    let at_word = at_word.trim_end_matches([',', ';', ':', '.', ' ']);
    format!("{at_word}…")
}

fn count_of(v: &JsonValue) -> i64 {
    match v {
        JsonValue::Array(a) => a.len() as i64,
        JsonValue::Number(n) => n.as_i64().unwrap_or(0),
        JsonValue::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

handlebars_helper!(plural: |n: JsonValue, word: str| {
    let n = count_of(&n);
    if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") }
});

handlebars_helper!(join: |list: JsonValue, sep: str, {last: str = ""}| {
    let items: Vec<String> = match list {
        JsonValue::Array(a) => a.iter().filter_map(|v| match v {
            JsonValue::String(s) => Some(s.clone()),
            JsonValue::Object(o) => o.get("text").and_then(JsonValue::as_str).map(str::to_owned),
            JsonValue::Null => None,
            other => Some(other.to_string()),
        }).collect(),
        _ => Vec::new(),
    };
    match (items.len(), last.is_empty()) {
        (0, _) => String::new(),
        (1, _) => items[0].clone(),
        (_, true) => items.join(sep),
        (n, false) => format!("{}{last}{}", items[..n - 1].join(sep), items[n - 1]),
    }
});

handlebars_helper!(cut_helper: |text: str, max: u64| cut(text, max as usize));

handlebars_helper!(sentence: |text: str| {
    let t = text.trim();
    let mut chars = t.chars();
    let mut out: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.is_empty() && !out.ends_with(['.', '!', '?', '…']) {
        out.push('.');
    }
    out
});

fn registry(markdown: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    if markdown {
        hb.register_escape_fn(escape_markdown);
    } else {
        hb.register_escape_fn(handlebars::no_escape);
    }
    hb.register_helper("plural", Box::new(plural));
    hb.register_helper("join", Box::new(join));
    hb.register_helper("cut", Box::new(cut_helper));
    hb.register_helper("sentence", Box::new(sentence));
    hb
}

/// The loaded templates.
pub struct Registry {
    md: Handlebars<'static>,
    txt: Handlebars<'static>,
}

impl Registry {
    /// The embedded templates, each replaced by `<dir>/<name>.hbs` (a partial by
    /// `<dir>/partials/<name>.hbs`) when that file exists. Each is rendered against
    /// complete sample views in strict mode, so one that names a variable that does not
    /// exist fails here, at start-up, not in front of a customer.
    pub fn load(override_dir: Option<&Path>, samples: &[Value]) -> Result<Self, RenderError> {
        let mut md = registry(true);
        let mut txt = registry(false);
        for (name, embedded, partial) in SOURCES {
            let path = override_dir.map(|d| {
                if partial {
                    d.join("partials").join(format!("{name}.hbs"))
                } else {
                    d.join(format!("{name}.hbs"))
                }
            });
            let source = match path {
                Some(p) if p.exists() => {
                    std::fs::read_to_string(&p).map_err(|e| RenderError::Template {
                        name: p.display().to_string(),
                        message: e.to_string(),
                    })?
                }
                _ => embedded.to_owned(),
            };
            let err = |e: handlebars::TemplateError| RenderError::Template {
                name: name.to_owned(),
                message: e.to_string(),
            };
            if partial {
                md.register_partial(name, source.as_str()).map_err(err)?;
                txt.register_partial(name, source).map_err(err)?;
            } else if name.ends_with(".md") {
                md.register_template_string(name, source).map_err(err)?;
            } else {
                txt.register_template_string(name, source).map_err(err)?;
            }
        }
        txt.register_template_string("users-message.txt", "{{> users-message}}")
            .map_err(|e| RenderError::Template {
                name: "users-message".into(),
                message: e.to_string(),
            })?;
        let templates = Registry { md, txt };
        for sample in samples {
            for name in [
                "postmortem.md",
                "hn-post.txt",
                "twitter-thread.txt",
                "users-message",
            ] {
                templates.render(name, sample)?;
            }
        }
        Ok(templates)
    }

    /// Renders `name` (a template, or the partial `users-message`) with `ctx`.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, RenderError> {
        let err = |e: handlebars::RenderError| RenderError::Template {
            name: name.to_owned(),
            message: e.to_string(),
        };
        let (hb, name) = match name {
            "users-message" => (&self.txt, "users-message.txt"),
            n if n.ends_with(".md") => (&self.md, n),
            n => (&self.txt, n),
        };
        hb.render(name, ctx).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_whole_words_and_marks_the_cut() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(
            cut("Database connection pool exhaustion", 20),
            "Database connection…"
        );
        assert_eq!(cut("Supercalifragilistic", 8), "Superca…");
        assert!(cut("a b c d e f g h", 6).chars().count() <= 6);
    }
}
