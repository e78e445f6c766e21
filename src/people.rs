//! People: one name per human across sources.
//!
//! Each source names the same person its own way: Slack by user id (`U0SARAH`),
//! PagerDuty by the agent's display name (and user id), GitHub by login. A [`Directory`]
//! turns them into one name, from, in order:
//!
//! 1. `[[people]]` in the configuration (any of the person's Slack ids, PagerDuty ids,
//!    GitHub logins or email addresses; or the same name);
//! 2. what Slack's `users.info` said of a Slack id (cached in the store by the enricher);
//! 3. the PagerDuty agent's name; a GitHub `@login`.
//!
//! Without a `[[people]]` entry, people with the same name (case-insensitive) are one,
//! and a GitHub login equal to a Slack user's handle (`name` or display name) is that
//! Slack user. A raw `@U…` id is shown only when nothing better is known. Pure: no I/O.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;

use crate::domain::{Event, Source, ATTR_ACTOR_ID};

/// One person in `[[people]]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PersonEntry {
    /// The name the pack shows.
    pub name: String,
    /// Slack user ids (`U0SARAH`).
    #[serde(default)]
    pub slack: Vec<String>,
    /// PagerDuty user ids (`PSARAH1`).
    #[serde(default)]
    pub pagerduty: Vec<String>,
    /// GitHub logins.
    #[serde(default)]
    pub github: Vec<String>,
    /// Email addresses (matched against Slack profiles).
    #[serde(default)]
    pub email: Vec<String>,
}

/// What Slack's `users.info` says of one user (the parts we use).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct SlackProfile {
    pub id: String,
    /// The handle (`sarah`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub real_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl SlackProfile {
    /// The name to show: the real name, else the display name, else the handle.
    pub fn best_name(&self) -> Option<&str> {
        [&self.real_name, &self.display_name, &self.name]
            .into_iter()
            .filter_map(|n| n.as_deref().map(str::trim))
            .find(|n| !n.is_empty())
    }

    /// Reads a `users.info` answer (`{"ok": true, "user": {…}}`).
    pub fn from_users_info(body: &Value) -> Option<SlackProfile> {
        let user = body.get("user")?;
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let profile = user.get("profile");
        Some(SlackProfile {
            id: text(user.get("id"))?,
            name: text(user.get("name")),
            real_name: text(profile.and_then(|p| p.get("real_name")))
                .or_else(|| text(user.get("real_name"))),
            display_name: text(profile.and_then(|p| p.get("display_name"))),
            email: text(profile.and_then(|p| p.get("email"))),
        })
    }
}

/// Why `[[people]]` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PeopleError {
    #[error("people[{0}].name is empty")]
    NoName(usize),
    #[error("{kind} '{id}' is listed under both '{first}' and '{second}'")]
    Twice {
        kind: &'static str,
        id: String,
        first: String,
        second: String,
    },
}

/// Who did an event, as its source names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub source: Source,
    /// The source's id: Slack user id, PagerDuty user id (else its display name), GitHub login.
    pub id: String,
    /// The actor text stored on the event (`@U0SARAH`, `@Sarah Chen`, `@mike`).
    pub label: String,
}

/// The identity behind an event's actor, if it has one.
pub fn identity(e: &Event) -> Option<Identity> {
    let label = e.actor.as_deref()?.trim();
    if label.is_empty() {
        return None;
    }
    let id = e
        .attrs
        .get(ATTR_ACTOR_ID)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| label.trim_start_matches('@').to_owned());
    Some(Identity {
        source: e.source,
        id,
        label: label.to_owned(),
    })
}

/// The configured people and the Slack profiles known for one render.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    entries: Vec<PersonEntry>,
    /// `(kind, lower-case id)` → entry.
    ids: HashMap<(&'static str, String), usize>,
    slack: HashMap<String, SlackProfile>,
}

impl Directory {
    /// Checks and indexes `[[people]]`: every entry has a name, no id is listed twice.
    pub fn new(entries: &[PersonEntry]) -> Result<Self, PeopleError> {
        let mut ids: HashMap<(&'static str, String), usize> = HashMap::new();
        for (i, p) in entries.iter().enumerate() {
            if p.name.trim().is_empty() {
                return Err(PeopleError::NoName(i));
            }
            for (kind, list) in [
                ("slack", &p.slack),
                ("pagerduty", &p.pagerduty),
                ("github", &p.github),
                ("email", &p.email),
            ] {
                for id in list {
                    let key = (kind, id.trim().to_lowercase());
                    if let Some(&j) = ids.get(&key) {
                        if j != i {
                            return Err(PeopleError::Twice {
                                kind,
                                id: id.clone(),
                                first: entries[j].name.clone(),
                                second: p.name.clone(),
                            });
                        }
                    }
                    ids.insert(key, i);
                }
            }
        }
        Ok(Directory {
            entries: entries.to_vec(),
            ids,
            slack: HashMap::new(),
        })
    }

    /// The same directory with what Slack said of some users.
    pub fn with_slack_profiles(&self, profiles: impl IntoIterator<Item = SlackProfile>) -> Self {
        let mut d = self.clone();
        d.slack
            .extend(profiles.into_iter().map(|p| (p.id.clone(), p)));
        d
    }

    /// True when `[[people]]` names this Slack id (no lookup needed).
    pub fn knows_slack(&self, id: &str) -> bool {
        self.ids.contains_key(&("slack", id.to_lowercase()))
    }

    fn entry_of(&self, who: &Identity) -> Option<usize> {
        let id = who.id.to_lowercase();
        let by = |kind: &'static str, id: &str| self.ids.get(&(kind, id.to_owned())).copied();
        let direct = match who.source {
            Source::Slack => by("slack", &id).or_else(|| {
                let email = self.slack.get(&who.id)?.email.as_deref()?.to_lowercase();
                by("email", &email)
            }),
            Source::Pagerduty => by("pagerduty", &id),
            Source::Github => by("github", &id),
            _ => None,
        };
        direct.or_else(|| {
            let name = who.label.trim_start_matches('@');
            self.entries
                .iter()
                .position(|p| p.name.trim().eq_ignore_ascii_case(name))
        })
    }

    /// One name per person for the actors of `events` (in their order).
    pub fn roster(&self, events: &[Event]) -> Roster {
        let mut roster = Roster::default();
        // Lower-case name → person; handles (Slack name / display name) → person.
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut by_handle: HashMap<String, usize> = HashMap::new();
        let mut github_pending: Vec<(Ulid, Identity)> = Vec::new();
        for e in events {
            let Some(who) = identity(e) else { continue };
            let person = match self.entry_of(&who) {
                Some(i) => Some(self.entries[i].name.trim().to_owned()),
                None => match who.source {
                    Source::Slack => self
                        .slack
                        .get(&who.id)
                        .and_then(|p| p.best_name())
                        .map(str::to_owned),
                    Source::Pagerduty => Some(who.label.trim_start_matches('@').to_owned()),
                    Source::Github => {
                        // Decided after every Slack person is known (handle match).
                        github_pending.push((e.id, who));
                        continue;
                    }
                    _ => None,
                },
            };
            let name = person.unwrap_or_else(|| who.label.clone());
            let n = roster.person(&mut by_name, &name);
            if who.source == Source::Slack {
                if let Some(p) = self.slack.get(&who.id) {
                    for h in [&p.name, &p.display_name].into_iter().flatten() {
                        by_handle.entry(h.to_lowercase()).or_insert(n);
                    }
                }
            }
            roster.attach(e.id, n, who.label);
        }
        for (event, who) in github_pending {
            let n = match by_handle.get(&who.id.to_lowercase()) {
                Some(&n) => n,
                None => roster.person(&mut by_name, &format!("@{}", who.id)),
            };
            roster.attach(event, n, who.label);
        }
        roster
    }
}

/// The people of one incident: one name each, and who did which event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roster {
    names: Vec<String>,
    /// Event → (person, the actor text on the event).
    by_event: HashMap<Ulid, (usize, String)>,
}

impl Roster {
    fn person(&mut self, by_name: &mut HashMap<String, usize>, name: &str) -> usize {
        let key = name.trim_start_matches('@').to_lowercase();
        *by_name.entry(key).or_insert_with(|| {
            self.names.push(name.to_owned());
            self.names.len() - 1
        })
    }

    fn attach(&mut self, event: Ulid, person: usize, label: String) {
        self.by_event.insert(event, (person, label));
    }

    /// The name of who did `event`, if anyone.
    pub fn name_of(&self, event: &Ulid) -> Option<&str> {
        self.by_event
            .get(event)
            .map(|(n, _)| self.names[*n].as_str())
    }

    /// The person index of who did `event` (same index, same person).
    pub fn person_of(&self, event: &Ulid) -> Option<usize> {
        self.by_event.get(event).map(|(n, _)| *n)
    }

    /// `e`'s title with its actor text replaced by the person's name
    /// (`@U0SARAH: 'hi'` → `Sarah Chen: 'hi'`).
    pub fn title<'a>(&self, e: &'a Event) -> Cow<'a, str> {
        match self.by_event.get(&e.id) {
            Some((n, label)) if self.names[*n] != *label && e.title.contains(label.as_str()) => {
                Cow::Owned(e.title.replacen(label.as_str(), &self.names[*n], 1))
            }
            _ => Cow::Borrowed(&e.title),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    fn ev(source: Source, actor: &str, actor_id: Option<&str>) -> Event {
        let mut e = Event::new(source, EventKind::ChatMessage, chrono::Utc::now(), "x");
        e.title = format!("{actor}: 'hello'");
        e.actor = Some(actor.into());
        if let Some(id) = actor_id {
            e.attrs.insert(ATTR_ACTOR_ID.into(), id.into());
        }
        e
    }

    fn sarah() -> PersonEntry {
        PersonEntry {
            name: "Sarah Chen".into(),
            slack: vec!["U0SARAH".into()],
            pagerduty: vec!["PSARAH1".into()],
            github: vec!["sarah".into()],
            email: vec![],
        }
    }

    #[test]
    fn configured_ids_across_sources_are_one_person() {
        let d = Directory::new(&[sarah()]).unwrap();
        let events = vec![
            ev(Source::Slack, "@U0SARAH", None),
            ev(Source::Pagerduty, "@S. Chen", Some("PSARAH1")),
            ev(Source::Github, "@Sarah", None),
        ];
        let r = d.roster(&events);
        assert_eq!(r.names, ["Sarah Chen"]);
        assert_eq!(r.title(&events[0]), "Sarah Chen: 'hello'");
    }

    #[test]
    fn without_config_slack_profiles_names_and_handles_merge() {
        let d = Directory::new(&[])
            .unwrap()
            .with_slack_profiles([SlackProfile {
                id: "U0MIKE".into(),
                name: Some("mike".into()),
                real_name: Some("Mike Ross".into()),
                ..Default::default()
            }]);
        let events = vec![
            ev(Source::Slack, "@U0MIKE", None),
            ev(Source::Github, "@mike", None),
            ev(Source::Pagerduty, "@Mike Ross", Some("PMIKE")),
            ev(Source::Slack, "@U0OTHER", None),
        ];
        let r = d.roster(&events);
        assert_eq!(r.names, ["Mike Ross", "@U0OTHER"]);
        assert_eq!(r.name_of(&events[1].id), Some("Mike Ross"));
    }

    #[test]
    fn an_email_in_the_slack_profile_finds_the_configured_person() {
        let mut p = sarah();
        p.slack.clear();
        p.email = vec!["sarah@example.com".into()];
        let d = Directory::new(&[p])
            .unwrap()
            .with_slack_profiles([SlackProfile {
                id: "U9".into(),
                email: Some("Sarah@Example.com".into()),
                ..Default::default()
            }]);
        let r = d.roster(&[ev(Source::Slack, "@U9", None)]);
        assert_eq!(r.names, ["Sarah Chen"]);
    }

    #[test]
    fn an_id_listed_twice_or_a_missing_name_is_refused() {
        let mut other = sarah();
        other.name = "Other".into();
        assert!(matches!(
            Directory::new(&[sarah(), other]),
            Err(PeopleError::Twice { .. })
        ));
        assert_eq!(
            Directory::new(&[PersonEntry::default()]).err(),
            Some(PeopleError::NoName(0))
        );
    }

    #[test]
    fn users_info_is_read_from_slacks_answer() {
        let body = serde_json::json!({"ok": true, "user": {"id": "U0SARAH", "name": "sarah",
            "real_name": "Sarah C", "profile": {"real_name": "Sarah Chen", "display_name": "", "email": "s@x.io"}}});
        let p = SlackProfile::from_users_info(&body).unwrap();
        assert_eq!(p.best_name(), Some("Sarah Chen"));
        assert_eq!(p.display_name, None);
        assert_eq!(p.email.as_deref(), Some("s@x.io"));
    }
}
