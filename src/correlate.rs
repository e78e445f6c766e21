//! Which service an event is about, by the `[[services]]` map, the correlation settings,
//! and the in-memory [`IncidentIndex`] of open and recently resolved incidents the rules
//! read. The rules run inside the ingest unit (see `ingest.rs`), in order: explicit key →
//! service map → sole open incident → unattached stream.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};

use crate::config::{ServiceEntry, Settings};
use crate::domain::{
    Event, Incident, IncidentId, Source, KEY_CLOUDWATCH_ALARM, KEY_GITHUB_REPO,
    KEY_PAGERDUTY_SERVICE, KEY_SLACK_CHANNEL,
};
use crate::store::{Store, StoreError};

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

    /// A short fingerprint of the service map, `None` without one. Unattached events are
    /// filed under it (with their mapped service), so a changed map is told apart.
    pub fn map_fingerprint(&self) -> Option<String> {
        if !self.has_map() {
            return None;
        }
        let json = serde_json::to_vec(&self.services).unwrap_or_default();
        Some(crate::sources::signature::sha256_hex(&json)[..12].to_owned())
    }

    /// What an unattached event is filed under with a service map: fingerprint and the
    /// service the map gives it (empty when none).
    pub fn filing_of(&self, fingerprint: &str, service: Option<&str>) -> String {
        format!("{fingerprint}:{}", service.unwrap_or(""))
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

/// What correlation needs of a live incident: open, or resolved (a candidate for the
/// grace window).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    open: bool,
    service: Option<String>,
    triggered_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

type ByTime = BTreeSet<(DateTime<Utc>, IncidentId)>;

/// Open and recently resolved incidents, indexed by trigger time and by service, so one
/// event's correlation costs the same with 10 or 10,000 incidents open. Kept in memory by
/// the committer (the only writer): rebuilt from the store at start, updated as units
/// apply, rolled back when a unit fails or is retried.
#[derive(Debug)]
pub struct IncidentIndex {
    grace: Duration,
    live: HashMap<IncidentId, Live>,
    /// Open incidents by trigger time, all and per service.
    open: ByTime,
    open_by_service: HashMap<String, ByTime>,
    /// Resolved incidents by resolve time (for expiry and the sole-graced rule), and by
    /// trigger time per service.
    resolved: ByTime,
    resolved_by_service: HashMap<String, ByTime>,
    /// The state before the running unit touched each incident, to roll back.
    undo: Vec<(IncidentId, Option<Live>)>,
    touched: HashSet<IncidentId>,
}

impl IncidentIndex {
    /// An empty index with the grace window of `correlator`.
    pub fn new(correlator: &Correlator) -> Self {
        IncidentIndex {
            grace: correlator.grace,
            live: HashMap::new(),
            open: BTreeSet::new(),
            open_by_service: HashMap::new(),
            resolved: BTreeSet::new(),
            resolved_by_service: HashMap::new(),
            undo: Vec::new(),
            touched: HashSet::new(),
        }
    }

    /// The index of the store's open and recently resolved incidents.
    pub fn load(
        correlator: &Correlator,
        store: &dyn Store,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let mut index = Self::new(correlator);
        let since = now - correlator.grace.max(Duration::hours(24));
        for incident in store.live_incidents(since)? {
            index.upsert(&incident);
        }
        index.commit(now);
        Ok(index)
    }

    /// How many incidents are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Records an incident's state as the running unit wrote it.
    pub fn upsert(&mut self, incident: &Incident) {
        let new = (incident.status.is_open() || incident.resolved_at.is_some()).then(|| Live {
            open: incident.status.is_open(),
            service: incident.service.clone(),
            triggered_at: incident.triggered_at,
            resolved_at: incident.resolved_at,
        });
        if self.live.get(&incident.id) == new.as_ref() {
            return;
        }
        if self.touched.insert(incident.id.clone()) {
            self.undo
                .push((incident.id.clone(), self.live.get(&incident.id).cloned()));
        }
        self.set(&incident.id, new);
    }

    fn set(&mut self, id: &IncidentId, new: Option<Live>) {
        if let Some(old) = self.live.remove(id) {
            self.unlink(id, &old);
        }
        if let Some(new) = new {
            self.link(id, &new);
            self.live.insert(id.clone(), new);
        }
    }

    fn link(&mut self, id: &IncidentId, l: &Live) {
        let by_trigger = (l.triggered_at, id.clone());
        if l.open {
            self.open.insert(by_trigger.clone());
            if let Some(s) = &l.service {
                self.open_by_service
                    .entry(s.clone())
                    .or_default()
                    .insert(by_trigger);
            }
        } else if let Some(at) = l.resolved_at {
            self.resolved.insert((at, id.clone()));
            if let Some(s) = &l.service {
                self.resolved_by_service
                    .entry(s.clone())
                    .or_default()
                    .insert(by_trigger);
            }
        }
    }

    fn unlink(&mut self, id: &IncidentId, l: &Live) {
        let by_trigger = (l.triggered_at, id.clone());
        fn remove(
            map: &mut HashMap<String, ByTime>,
            service: &str,
            key: &(DateTime<Utc>, IncidentId),
        ) {
            if let Some(set) = map.get_mut(service) {
                set.remove(key);
                if set.is_empty() {
                    map.remove(service);
                }
            }
        }
        if l.open {
            self.open.remove(&by_trigger);
            if let Some(s) = &l.service {
                remove(&mut self.open_by_service, s, &by_trigger);
            }
        } else if let Some(at) = l.resolved_at {
            self.resolved.remove(&(at, id.clone()));
            if let Some(s) = &l.service {
                remove(&mut self.resolved_by_service, s, &by_trigger);
            }
        }
    }

    /// Undoes what the running unit changed (it failed, or the engine retries it).
    pub fn rollback(&mut self) {
        for (id, old) in std::mem::take(&mut self.undo).into_iter().rev() {
            self.set(&id, old);
        }
        self.touched.clear();
    }

    /// Keeps what the unit changed, and forgets incidents resolved longer ago than the
    /// grace window.
    pub fn commit(&mut self, now: DateTime<Utc>) {
        self.undo.clear();
        self.touched.clear();
        let cutoff = now - self.grace;
        let expired: Vec<IncidentId> = self
            .resolved
            .iter()
            .take_while(|(at, _)| *at < cutoff)
            .map(|(_, id)| id.clone())
            .collect();
        for id in expired {
            self.set(&id, None);
        }
    }

    fn in_grace(&self, id: &IncidentId, now: DateTime<Utc>) -> bool {
        self.live
            .get(id)
            .and_then(|l| l.resolved_at)
            .is_some_and(|at| now <= at + self.grace)
    }

    /// The most recently triggered open incident of a service.
    pub fn newest_open_of(&self, service: &str) -> Option<&IncidentId> {
        self.open_by_service
            .get(service)
            .and_then(|s| s.last())
            .map(|(_, id)| id)
    }

    /// The most recently triggered incident of a service resolved within the grace window.
    pub fn newest_graced_of(&self, service: &str, now: DateTime<Utc>) -> Option<&IncidentId> {
        self.resolved_by_service
            .get(service)?
            .iter()
            .rev()
            .map(|(_, id)| id)
            .find(|id| self.in_grace(id, now))
    }

    /// The open incident, when exactly one is open.
    pub fn sole_open(&self) -> Option<&IncidentId> {
        (self.open.len() == 1)
            .then(|| self.open.first().map(|(_, id)| id))
            .flatten()
    }

    /// The resolved incident in its grace window, when none is open and exactly one is.
    pub fn sole_graced(&self, now: DateTime<Utc>) -> Option<&IncidentId> {
        if !self.open.is_empty() {
            return None;
        }
        let mut graced = self
            .resolved
            .iter()
            .rev()
            .take_while(|(at, _)| now <= *at + self.grace)
            .map(|(_, id)| id);
        let first = graced.next()?;
        graced.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IncidentStatus;

    fn incident(
        id: &str,
        service: &str,
        open: bool,
        mins_ago: i64,
        now: DateTime<Utc>,
    ) -> Incident {
        let at = now - Duration::minutes(mins_ago);
        Incident {
            id: IncidentId::parse(id).unwrap(),
            title: id.into(),
            status: if open {
                IncidentStatus::Triggered
            } else {
                IncidentStatus::Resolved
            },
            service: Some(service.into()),
            severity: None,
            urgency: None,
            priority: None,
            url: None,
            opened_by: Source::Pagerduty,
            triggered_at: at - Duration::minutes(30),
            acknowledged_at: None,
            resolved_at: (!open).then_some(at),
            reopen_count: 0,
            event_count: 0,
            next_seq: 0,
            updated_at: at,
        }
    }

    #[test]
    fn the_index_answers_each_rule_and_rolls_back_a_failed_unit() {
        let now = Utc::now();
        let mut index = IncidentIndex::new(&Correlator::default());
        index.upsert(&incident("A", "api", true, 10, now));
        index.commit(now);
        assert_eq!(index.sole_open().map(IncidentId::as_str), Some("A"));
        index.upsert(&incident("B", "api", true, 5, now));
        assert_eq!(
            index.newest_open_of("api").map(IncidentId::as_str),
            Some("B")
        );
        assert_eq!(index.sole_open(), None);
        index.rollback();
        assert_eq!(index.sole_open().map(IncidentId::as_str), Some("A"));
        assert_eq!(index.open_count(), 1);
        // A resolves: graced for 15 minutes, then forgotten.
        index.upsert(&incident("A", "api", false, 5, now));
        index.commit(now);
        assert_eq!(index.open_count(), 0);
        assert_eq!(
            index.newest_graced_of("api", now).map(IncidentId::as_str),
            Some("A")
        );
        assert_eq!(index.sole_graced(now).map(IncidentId::as_str), Some("A"));
        let later = now + Duration::minutes(11);
        assert_eq!(index.sole_graced(later), None);
        index.commit(later);
        assert!(index.live.is_empty());
    }

    #[test]
    fn ten_thousand_open_incidents_cost_a_lookup_not_a_scan() {
        let now = Utc::now();
        let mut index = IncidentIndex::new(&Correlator::default());
        for i in 0..10_000 {
            index.upsert(&incident(
                &format!("P{i}"),
                &format!("svc{}", i % 100),
                true,
                10_000 - i,
                now,
            ));
        }
        index.commit(now);
        assert_eq!(index.open_count(), 10_000);
        assert_eq!(
            index.newest_open_of("svc7").map(IncidentId::as_str),
            Some("P9907")
        );
        assert_eq!(index.sole_open(), None);
    }
}
