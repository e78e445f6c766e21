//! Said once: mitigations, action items and suspects that name the same thing become one
//! line. Two texts name the same thing when they are equal up to case, punctuation and
//! the form of a leading verb (`Rolling back user-sync to v2.3.1` = `Rolled back
//! user-sync to v2.3.1`), or when both are rollbacks to the same version.

/// `rolling` → `rol`, `rolled` → `rol`, `increase` → `increas`, `applied` → `apply`: one
/// stem for the forms of a verb (rough, but only ever compared with itself).
fn stem(word: &str) -> String {
    if let Some(base) = word.strip_suffix("ied") {
        return format!("{base}y");
    }
    let mut w = word;
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(base) = w.strip_suffix(suffix) {
            if base.len() >= 3 {
                w = base;
                break;
            }
        }
    }
    let w = w.strip_suffix('e').filter(|b| b.len() >= 3).unwrap_or(w);
    // A doubled final consonant (stopp, roll) counts once. By characters: a text may be
    // in any script.
    let mut tail = w.chars().rev();
    if let (Some(a), Some(b)) = (tail.next(), tail.next()) {
        if a == b && a.is_ascii_alphabetic() && !"aeiou".contains(a) {
            return w[..w.len() - a.len_utf8()].to_owned();
        }
    }
    w.to_owned()
}

/// The words of `text`: lower case, punctuation dropped (dots inside versions kept).
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '.'))
        .map(|w| w.trim_matches('.'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The comparison key of a text: its words, the first one stemmed, run together (so
/// `roll back` and `rollback` agree).
pub fn key(text: &str) -> String {
    let mut w = words(text);
    if let Some(first) = w.first_mut() {
        *first = stem(first);
    }
    w.concat()
}

/// The version a rollback goes to (`v2.3.1` → `2.3.1`), when the text is a rollback or
/// revert to one.
fn rollback_version(text: &str) -> Option<String> {
    let w = words(text);
    let joined = w.concat();
    if !(joined.contains("rollback")
        || joined.contains("rolledback")
        || joined.contains("rollingback")
        || w.iter()
            .any(|w| w.starts_with("revert") || w.starts_with("downgrad")))
    {
        return None;
    }
    w.iter()
        .map(|w| w.trim_start_matches('v'))
        .rfind(|v| {
            v.contains('.')
                && v.split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_owned)
}

/// What a rollback is of: the first word that is not the verb, a filler or the version
/// (`Rolled back user-sync service to v2.3.1` → `user-sync`).
fn rollback_subject(text: &str) -> Option<String> {
    const SKIP: &[&str] = &[
        "roll", "rolled", "rolling", "rollback", "back", "we", "i", "the", "a", "an", "to",
        "service", "our", "from", "of", "version", "previous", "stable", "last", "good",
    ];
    words(text).into_iter().find(|w| {
        !SKIP.contains(&w.as_str())
            && !w.starts_with("revert")
            && !w.starts_with("downgrad")
            && !w
                .trim_start_matches('v')
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
    })
}

/// True when `a` and `b` name the same thing.
pub fn same(a: &str, b: &str) -> bool {
    if key(a) == key(b) {
        return true;
    }
    matches!((rollback_version(a), rollback_version(b)), (Some(x), Some(y)) if x == y)
        && rollback_subject(a) == rollback_subject(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_one_verb_case_and_punctuation_are_the_same() {
        assert!(same(
            "Rolling back user-sync to v2.3.1",
            "Rolled back user-sync to v2.3.1"
        ));
        assert!(same(
            "Rollback user-sync to v2.3.1.",
            "roll back user sync to v2.3.1"
        ));
        assert!(same("Increased pool size", "increase pool size"));
        assert!(same("Stopped the cron job", "stopping the cron job!"));
        assert!(same("Applied the fix", "apply the fix"));
        assert!(same(
            "Rolled back user-sync service to previous stable version (v2.3.1)",
            "Reverting user-sync to 2.3.1"
        ));
    }

    #[test]
    fn different_things_stay_apart() {
        assert!(!same(
            "Rolled back user-sync to v2.3.1",
            "Rolled back user-sync to v2.3.0"
        ));
        assert!(!same("Increased pool size", "Increased pool timeout"));
        assert!(!same("Restarted api", "Restarted worker"));
        assert!(!same("Deployed v2.3.1", "Rolled back to v2.3.1"));
        assert!(!same(
            "Rolled back api to v2.3.1",
            "Rolled back worker to v2.3.1"
        ));
        assert!(!same(
            "Downgraded Postgres to 14.2",
            "Downgraded Redis to 14.2"
        ));
    }

    #[test]
    fn any_script_is_compared_without_panicking() {
        assert!(same("もも 再起動", "もも 再起動"));
        assert!(!same("CO₂₂ alarm", "CO₂ alarm"));
        assert!(same("Ünïcödé ßß", "ünïcödé ßß"));
    }
}
