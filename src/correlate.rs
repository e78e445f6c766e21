//! Which service an event is about, by the `[[services]]` map, and the correlation
//! settings. The rules themselves run inside the ingest unit (see `ingest.rs`), in order:
//! explicit key → service map → sole open incident → unattached stream.

use chrono::Duration;

use crate::config::{ServiceEntry, Settings};
use crate::domain::{
    Event, Source, KEY_CLOUDWATCH_ALARM, KEY_GITHUB_REPO, KEY_PAGERDUTY_SERVICE, KEY_SLACK_CHANNEL,
};

/// Correlation settings plus the service map.
#[derive(Debug, Clone)]
pub struct Correlator {
    pub services: Vec<ServiceEntry>,
    pub sole_open_incident: bool,
    pub lookback: Duration,
    pub change_lookback: Duration,
    pub grace: Duration,
}

impl Default for Correlator {
    fn default() -> Self {
        Correlator {
            services: Vec::new(),
            sole_open_incident: true,
            lookback: Duration::minutes(30),
            change_lookback: Duration::hours(72),
            grace: Duration::minutes(15),
        }
    }
}

impl Correlator {
    /// From the `[correlation]` and `[[services]]` settings.
    pub fn from_settings(s: &Settings) -> Self {
        Correlator {
            services: s.services.clone(),
            sole_open_incident: s.correlation.sole_open_incident,
            lookback: Duration::minutes(i64::from(s.correlation.lookback_mins)),
            change_lookback: Duration::hours(i64::from(s.correlation.change_lookback_hours)),
            grace: Duration::minutes(i64::from(s.correlation.grace_mins)),
        }
    }

    /// True when a service map is configured.
    pub fn has_map(&self) -> bool {
        !self.services.is_empty()
    }

    /// The service an event is about: the map's name when an entry matches; without a
    /// map, the service the payload names.
    pub fn service_of(&self, event: &Event) -> Option<String> {
        if !self.has_map() {
            return event.service.clone();
        }
        self.services
            .iter()
            .find(|entry| matches(entry, event))
            .map(|entry| entry.name.clone())
    }

    /// How far before a trigger an unattached event may have happened to be pulled in.
    pub fn lookback_for(&self, event: &Event) -> Duration {
        if event.kind.is_change() {
            self.change_lookback.max(self.lookback)
        } else {
            self.lookback
        }
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

fn any_eq(list: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| list.iter().any(|x| eq(x, v)))
}

fn matches(entry: &ServiceEntry, event: &Event) -> bool {
    let key = |k: &str| event.keys.get(k).map(String::as_str);
    match event.source {
        Source::Pagerduty => {
            any_eq(&entry.pagerduty, key(KEY_PAGERDUTY_SERVICE))
                || any_eq(&entry.pagerduty, event.service.as_deref())
        }
        Source::Datadog => {
            let tags = event
                .attrs
                .get("tags")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str());
            let scopes = event
                .attrs
                .get("scopes")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str());
            tags.chain(scopes).any(|t| any_eq(&entry.datadog, Some(t)))
                || event
                    .service
                    .as_deref()
                    .is_some_and(|s| any_eq(&entry.datadog, Some(&format!("service:{s}"))))
        }
        Source::Cloudwatch => key(KEY_CLOUDWATCH_ALARM).is_some_and(|alarm| {
            entry
                .cloudwatch
                .iter()
                .any(|prefix| !prefix.is_empty() && alarm.starts_with(prefix.as_str()))
        }),
        Source::Github => any_eq(&entry.github, key(KEY_GITHUB_REPO)),
        Source::Slack => any_eq(&entry.slack, key(KEY_SLACK_CHANNEL)),
        Source::Manual | Source::Import => {
            event.service.as_deref().is_some_and(|s| eq(s, &entry.name))
        }
    }
}
