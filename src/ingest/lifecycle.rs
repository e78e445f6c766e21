//! The incident lifecycle: pure functions of an incident and an event (open, refresh,
//! acknowledge, resolve, reopen).

use super::*;

pub(super) fn new_incident(id: IncidentId, event: &Event, now: DateTime<Utc>) -> Incident {
    let triggered_at = attr_str(event, "incident_created_at")
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t <= event.occurred_at)
        .unwrap_or(event.occurred_at);
    Incident {
        id,
        title: attr_str(event, "incident_title")
            .unwrap_or(&event.title)
            .to_owned(),
        status: IncidentStatus::Triggered,
        service: event.service.clone(),
        severity: event.severity,
        urgency: None,
        priority: None,
        url: None,
        opened_by: event.source,
        triggered_at,
        acknowledged_at: None,
        resolved_at: None,
        reopen_count: 0,
        event_count: 0,
        next_seq: 0,
        updated_at: now,
    }
}

/// Keeps the record's descriptive fields current with what PagerDuty last said.
pub(super) fn refresh_details(incident: &mut Incident, event: &Event, correlator: &Correlator) {
    if let Some(title) = attr_str(event, "incident_title") {
        incident.title = title.to_owned();
    }
    if let Some(urgency) = attr_str(event, "urgency") {
        incident.urgency = Some(urgency.to_owned());
    }
    if let Some(priority) = attr_str(event, "priority") {
        incident.priority = Some(priority.to_owned());
    }
    if let Some(url) = attr_str(event, "incident_url") {
        incident.url = Some(url.to_owned());
    }
    if event.service.is_some() && incident.service.is_none() {
        incident.service = correlator
            .service_of(event)
            .or_else(|| event.service.clone());
    }
    if let Some(sev) = event.severity {
        if matches!(
            event.kind,
            EventKind::IncidentTriggered | EventKind::IncidentPriorityChanged
        ) || incident.severity.is_none()
        {
            incident.severity = Some(sev);
        }
    }
}

pub(super) fn apply_lifecycle(incident: &mut Incident, event: &Event, unit: &mut Unit<'_>) {
    let at = event.occurred_at;
    let id = incident.id.clone();
    let mut push = |change| unit.change(&id, change);
    match event.kind {
        EventKind::IncidentTriggered | EventKind::IncidentReopened
            if incident.status == IncidentStatus::Resolved
                && incident.resolved_at.is_none_or(|r| at > r) =>
        {
            incident.status = IncidentStatus::Triggered;
            incident.resolved_at = None;
            incident.reopen_count += 1;
            push(Change::Reopened);
        }
        // A trigger for an incident we opened from a later event: trust its time.
        EventKind::IncidentTriggered if at < incident.triggered_at => {
            incident.triggered_at = at;
        }
        EventKind::IncidentAcknowledged if incident.status.is_open() => {
            incident.status = IncidentStatus::Acknowledged;
            if incident.acknowledged_at.is_none() {
                incident.acknowledged_at = Some(at);
                push(Change::Acknowledged);
            }
        }
        EventKind::IncidentUnacknowledged if incident.status == IncidentStatus::Acknowledged => {
            incident.status = IncidentStatus::Triggered;
        }
        EventKind::IncidentResolved if incident.status.is_open() => {
            incident.status = IncidentStatus::Resolved;
            incident.resolved_at = Some(at.max(incident.triggered_at));
            push(Change::Resolved);
        }
        _ => {}
    }
}
