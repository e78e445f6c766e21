//! One unit: de-duplicate each submission, attach each event (to its incident or the
//! unattached stream) and store it, all in one atomic store write.

use super::*;

/// What one committed unit produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// One receipt per submission, in order.
    pub receipts: Vec<Receipt>,
    /// Lifecycle transitions, in order.
    pub changes: Vec<LifecycleChange>,
    /// Incidents PagerDuty opened in this unit: their look-back pull-in follows.
    pub opened: Vec<IncidentId>,
}

/// Applies submissions in one atomic, flushed unit, correlating over `index` (which is
/// left as the unit wrote it, or as it was when the unit fails) and filing unattached
/// events under the service map `fingerprint`.
pub(super) fn apply_submissions(
    store: &dyn Store,
    correlator: &Correlator,
    index: &mut IncidentIndex,
    fingerprint: Option<&str>,
    submissions: &[Submission],
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    let result = store.write(&mut |tx| {
        // The unit may be retried by the engine: start from scratch each time.
        applied = Applied::default();
        index.rollback();
        let mut unit = Unit {
            correlator,
            now,
            index: &mut *index,
            fingerprint,
            placed: std::collections::HashMap::new(),
            changes: Vec::new(),
            opened: Vec::new(),
        };
        let mut seen_in_batch: HashSet<&str> = HashSet::new();
        for sub in submissions {
            // Cursors advance even for a duplicate (the same alarm transition pushed by
            // SNS and then seen by the poller), so the poller does not retry it forever.
            for (key, value) in &sub.cursors {
                tx.put_cursor(key, value)?;
            }
            if !sub.event_keys.is_empty() {
                let receipt = apply_deliveries(tx, &mut unit, sub, &mut seen_in_batch)?;
                applied.receipts.push(receipt);
                continue;
            }
            let mut first = find_duplicate(tx, sub, &seen_in_batch)?;
            if first.is_none() {
                first = recovered_twin(tx, sub, now)?;
                if let Some(record) = &first {
                    // The late webhook's own keys point at the recovered event, so its
                    // retries are duplicates without this check.
                    for key in &sub.delivery_keys {
                        tx.put_delivery(key, record)?;
                    }
                    seen_in_batch.extend(sub.delivery_keys.iter().map(String::as_str));
                }
            }
            if let Some(first) = first {
                applied.receipts.push(Receipt::Duplicate {
                    event_ids: first.event_ids,
                });
                continue;
            }
            seen_in_batch.extend(sub.delivery_keys.iter().map(String::as_str));
            if let Some(new) = &sub.incident {
                if tx.incident(&new.id)?.is_none() {
                    let mut record = new.clone();
                    record.event_count = 0;
                    record.next_seq = 0;
                    record.updated_at = now;
                    save(tx, &mut unit, &record)?;
                    unit.change(&record.id, Change::Opened);
                    if !record.status.is_open() {
                        unit.change(&record.id, Change::Resolved);
                    }
                }
            }
            let raw_id = sub.events.first().map(|e| e.id).unwrap_or_else(Ulid::new);
            if !sub.raw.is_empty() {
                tx.put_raw(raw_id, &sub.raw)?;
            }
            let (event_ids, incident_ids) = store_events(
                tx,
                &mut unit,
                sub.events.iter(),
                (!sub.raw.is_empty()).then_some(raw_id),
            )?;
            let record = DeliveryRecord {
                stored_at: now,
                event_ids: event_ids.clone(),
            };
            for key in &sub.delivery_keys {
                tx.put_delivery(key, &record)?;
            }
            applied.receipts.push(Receipt::Stored {
                raw_id,
                event_ids,
                incident_ids,
            });
        }
        applied.changes = unit.changes;
        applied.opened = unit.opened;
        Ok(())
    });
    match result {
        Ok(()) => {
            index.commit(now);
            Ok(applied)
        }
        // Committed, not flushed: the unit is stored, so is what the index learned (its
        // pull-ins resume from their markers at the next start).
        Err(e @ StoreError::NotFlushed(_)) => {
            index.commit(now);
            Err(e)
        }
        Err(e) => {
            index.rollback();
            Err(e)
        }
    }
}

/// A submission whose events are each a delivery of their own (`event_keys`): stores
/// the events whose key is new, with the raw payload, and their keys; a duplicate when
/// none is new. (A body mixing messages stored before with new ones would otherwise be
/// taken for a retry and the new ones lost.)
fn apply_deliveries<'s>(
    tx: &mut dyn WriteTx,
    unit: &mut Unit<'_>,
    sub: &'s Submission,
    seen_in_batch: &mut HashSet<&'s str>,
) -> Result<Receipt, StoreError> {
    let mut fresh = Vec::new();
    let mut known = Vec::new();
    for (event, key) in sub.events.iter().zip(&sub.event_keys) {
        if seen_in_batch.contains(key.as_str()) {
            continue;
        }
        match tx.delivery(key)? {
            Some(record) => known.extend(record.event_ids),
            None => fresh.push((event, key)),
        }
    }
    if fresh.is_empty() {
        return Ok(Receipt::Duplicate { event_ids: known });
    }
    let raw_id = fresh[0].0.id;
    tx.put_raw(raw_id, &sub.raw)?;
    let (event_ids, incident_ids) =
        store_events(tx, unit, fresh.iter().map(|(e, _)| *e), Some(raw_id))?;
    for ((_, key), id) in fresh.into_iter().zip(&event_ids) {
        tx.put_delivery(
            key,
            &DeliveryRecord {
                stored_at: unit.now,
                event_ids: vec![*id],
            },
        )?;
        seen_in_batch.insert(key);
    }
    // The body's other keys (messages of types not recorded) name no event.
    let event_keys: HashSet<&str> = sub.event_keys.iter().map(String::as_str).collect();
    for key in &sub.delivery_keys {
        if !event_keys.contains(key.as_str()) && tx.delivery(key)?.is_none() {
            tx.put_delivery(
                key,
                &DeliveryRecord {
                    stored_at: unit.now,
                    event_ids: Vec::new(),
                },
            )?;
            seen_in_batch.insert(key);
        }
    }
    Ok(Receipt::Stored {
        raw_id,
        event_ids,
        incident_ids,
    })
}

/// Attaches and stores each event (to its incident or the unattached stream), carrying
/// `raw_id`; returns the events' ids and the incidents they joined, each once.
fn store_events<'e>(
    tx: &mut dyn WriteTx,
    unit: &mut Unit<'_>,
    events: impl ExactSizeIterator<Item = &'e Event>,
    raw_id: Option<Ulid>,
) -> Result<(Vec<Ulid>, Vec<IncidentId>), StoreError> {
    let mut event_ids = Vec::with_capacity(events.len());
    let mut incident_ids = Vec::new();
    for event in events {
        let mut event = event.clone();
        event.raw_id = raw_id;
        detect_rollback(tx, &mut event)?;
        if let Some(id) = attach_event(tx, unit, &mut event)? {
            if !incident_ids.contains(&id) {
                incident_ids.push(id);
            }
        }
        event_ids.push(event.id);
    }
    Ok((event_ids, incident_ids))
}

/// Stores an incident record and keeps the correlation index in step with it.
pub(super) fn save(
    tx: &mut dyn WriteTx,
    unit: &mut Unit<'_>,
    incident: &Incident,
) -> Result<(), StoreError> {
    tx.put_incident(incident)?;
    unit.index.upsert(incident);
    Ok(())
}

pub(super) fn find_duplicate(
    tx: &dyn WriteTx,
    sub: &Submission,
    seen_in_batch: &HashSet<&str>,
) -> Result<Option<DeliveryRecord>, StoreError> {
    for key in &sub.delivery_keys {
        if seen_in_batch.contains(key.as_str()) {
            // Same delivery twice in one batch: the first one's ids are not known yet
            // outside this unit, so report none.
            return Ok(Some(DeliveryRecord {
                stored_at: Utc::now(),
                event_ids: Vec::new(),
            }));
        }
        if let Some(record) = tx.delivery(key)? {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

/// A PagerDuty status change already recovered from the REST API (its late webhook:
/// same change, same cycle, same person for an acknowledge, whatever the status is now),
/// or a recovered change the incident already shows (its webhook won the race): a
/// duplicate of what is stored.
pub(super) fn recovered_twin(
    tx: &dyn WriteTx,
    sub: &Submission,
    now: DateTime<Utc>,
) -> Result<Option<DeliveryRecord>, StoreError> {
    let [event] = sub.events.as_slice() else {
        return Ok(None);
    };
    let target = match event.kind {
        EventKind::IncidentAcknowledged => IncidentStatus::Acknowledged,
        EventKind::IncidentResolved => IncidentStatus::Resolved,
        _ => return Ok(None),
    };
    let Some(id) = (event.source == Source::Pagerduty)
        .then(|| event.keys.get(KEY_PAGERDUTY_INCIDENT))
        .flatten()
        .and_then(|id| IncidentId::parse(id).ok())
    else {
        return Ok(None);
    };
    let Some(incident) = tx.incident(&id)? else {
        return Ok(None);
    };
    let actor = attr_str(event, crate::domain::ATTR_ACTOR_ID);
    let key = crate::domain::transition_key(&id, target, incident.reopen_count, actor);
    if let Some(record) = tx.delivery(&key)? {
        return Ok(Some(record));
    }
    let shown = match target {
        IncidentStatus::Resolved => incident.status == IncidentStatus::Resolved,
        _ => incident.status != IncidentStatus::Triggered || incident.acknowledged_at.is_some(),
    };
    let recovered = event.attrs.contains_key(crate::domain::ATTR_RECOVERED);
    Ok((recovered && shown).then(|| DeliveryRecord {
        stored_at: now,
        event_ids: Vec::new(),
    }))
}

/// Per-unit state of the correlation pass.
pub(super) struct Unit<'a> {
    pub(super) correlator: &'a Correlator,
    pub(super) now: DateTime<Utc>,
    /// Open and in-grace incidents, as of this unit's writes.
    pub(super) index: &'a mut IncidentIndex,
    /// The service map's fingerprint, to file unattached events under.
    pub(super) fingerprint: Option<&'a str>,
    /// Incidents PagerDuty opened in this unit (their pull-in follows the commit).
    pub(super) opened: Vec<IncidentId>,
    /// Where each event of this unit went, so an annotation follows the message it was
    /// derived from (same incident, same rule).
    pub(super) placed: std::collections::HashMap<Ulid, (IncidentId, CorrelationRule)>,
    pub(super) changes: Vec<LifecycleChange>,
}

impl Unit<'_> {
    pub(super) fn change(&mut self, incident: &IncidentId, change: Change) {
        self.changes.push(LifecycleChange {
            incident_id: incident.clone(),
            change,
        });
    }

    pub(super) fn within_grace(&self, incident: &Incident) -> bool {
        incident
            .resolved_at
            .is_some_and(|at| self.now <= at + self.correlator.grace)
    }
}

/// Attaches one event to its incident (PagerDuty events open, acknowledge, resolve and
/// reopen it) or to the unattached stream. Returns the incident it joined.
pub(super) fn attach_event(
    tx: &mut dyn WriteTx,
    unit: &mut Unit<'_>,
    event: &mut Event,
) -> Result<Option<IncidentId>, StoreError> {
    let pagerduty_id = (event.source == Source::Pagerduty)
        .then(|| event.keys.get(KEY_PAGERDUTY_INCIDENT))
        .flatten()
        .and_then(|id| IncidentId::parse(id).ok());
    if let Some(id) = pagerduty_id {
        let (mut incident, opened) = match tx.incident(&id)? {
            Some(existing) => (existing, false),
            None => {
                // PagerDuty is the source of truth: an event for an incident we have not
                // seen (we started after its trigger) opens it rather than being lost.
                let mut incident = new_incident(id.clone(), event, unit.now);
                incident.service = unit.correlator.service_of(event).or(incident.service);
                unit.change(&id, Change::Opened);
                (incident, true)
            }
        };
        let was_open = incident.status.is_open();
        apply_lifecycle(&mut incident, event, unit);
        refresh_details(&mut incident, event, unit.correlator);
        append(
            tx,
            &mut incident,
            event,
            CorrelationRule::Explicit,
            unit.now,
        )?;
        if !was_open && !incident.status.is_open() {
            // A note or annotation on a resolved incident: its pack must be rewritten.
            unit.change(&id, Change::LateEvent);
        }
        if opened {
            // Durable intent: the look-back pull-in runs after this unit commits (it
            // reads the stream's index, which a unit cannot), and resumes after a crash.
            tx.put_cursor(&pull_in_marker(&id), &incident.triggered_at.to_rfc3339())?;
            unit.opened.push(id.clone());
        }
        save(tx, unit, &incident)?;
        return Ok(Some(id));
    }
    let parent = attr_str(event, "annotates")
        .and_then(|id| id.parse::<Ulid>().ok())
        .and_then(|id| unit.placed.get(&id).cloned());
    let target = match parent {
        Some((id, rule)) => tx.incident(&id)?.map(|incident| (incident, rule)),
        None => correlate(tx, unit, event)?,
    };
    match target {
        Some((mut incident, rule)) => {
            append(tx, &mut incident, event, rule, unit.now)?;
            unit.placed.insert(event.id, (incident.id.clone(), rule));
            save(tx, unit, &incident)?;
            if !incident.status.is_open() {
                unit.change(&incident.id, Change::LateEvent);
            }
            Ok(Some(incident.id))
        }
        None => {
            match unit.fingerprint {
                Some(fp) => {
                    let service = unit.correlator.service_of(event);
                    let under = unit.correlator.filing_of(fp, service.as_deref());
                    tx.file_stream_event(event, &under)?;
                }
                None => tx.put_stream_event(event)?,
            }
            Ok(None)
        }
    }
}

/// A deploy of an older version than the one last deployed to the same repository and
/// environment is a rollback. Keeps the last deployed version as a cursor.
pub(super) fn detect_rollback(tx: &mut dyn WriteTx, event: &mut Event) -> Result<(), StoreError> {
    if !matches!(
        event.kind,
        EventKind::ChangeDeployed | EventKind::ChangeRolledBack
    ) {
        return Ok(());
    }
    let (Some(repo), Some(env), Some(version)) = (
        event.keys.get(crate::domain::KEY_GITHUB_REPO).cloned(),
        attr_str(event, "environment").map(str::to_owned),
        attr_str(event, "version").map(str::to_owned),
    ) else {
        return Ok(());
    };
    let key = format!("deploy:{repo}:{env}");
    if let Some(previous) = tx.cursor(&key)? {
        let older = match (
            crate::sources::github::parse_version(&version),
            crate::sources::github::parse_version(&previous),
        ) {
            (Some(new), Some(old)) => new < old,
            _ => false,
        };
        if older && event.kind == EventKind::ChangeDeployed {
            let name = event.service.clone().unwrap_or_else(|| repo.clone());
            event.kind = EventKind::ChangeRolledBack;
            event.title = format!("Rolled back {name} to {version}");
            event
                .attrs
                .insert("previous_version".into(), Value::from(previous));
        }
    }
    tx.put_cursor(&key, &version)
}

/// Appends an event to an incident (the caller stores the incident record).
pub(super) fn append(
    tx: &mut dyn WriteTx,
    incident: &mut Incident,
    event: &mut Event,
    rule: CorrelationRule,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    event.incident_id = Some(incident.id.clone());
    event.correlation = Some(rule);
    let seq = incident.next_seq;
    incident.next_seq += 1;
    incident.event_count += 1;
    incident.updated_at = now;
    tx.put_incident_event(seq, event)?;
    for key in LINK_KEYS {
        if let Some(value) = event.keys.get(key) {
            // An alert storm repeats the same cycle or thread: rewrite a link only when it
            // changes (the read is one the write would make anyway).
            let link = format!("{key}={value}");
            if tx.link(&link)?.as_ref() != Some(&incident.id) {
                tx.put_link(&link, &incident.id)?;
            }
        }
    }
    Ok(())
}

pub(super) fn attr_str<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event.attrs.get(key).and_then(Value::as_str)
}
