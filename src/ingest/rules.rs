//! The correlation rules, over the store (explicit keys, links) and the in-memory index
//! (service map, sole open incident).

use super::*;

/// The correlation rules, in order. `None`: the event goes to the unattached stream.
pub(super) fn correlate(
    tx: &mut dyn WriteTx,
    unit: &Unit<'_>,
    event: &Event,
) -> Result<Option<(Incident, CorrelationRule)>, StoreError> {
    // 1. Explicit: the event names an incident, or continues a thread already attached.
    for key in [KEY_PAGERDUTY_INCIDENT, KEY_INCIDENT_REF] {
        if let Some(id) = event.keys.get(key).and_then(|v| IncidentId::parse(v).ok()) {
            if let Some(incident) = tx.incident(&id)? {
                return Ok(Some((incident, CorrelationRule::Explicit)));
            }
        }
    }
    for key in LINK_KEYS {
        let Some(value) = event.keys.get(key) else {
            continue;
        };
        if let Some(id) = tx.link(&format!("{key}={value}"))? {
            if let Some(incident) = tx.incident(&id)? {
                // The service map outranks an old link to another service's incident.
                let mapped = unit
                    .correlator
                    .has_map()
                    .then(|| unit.correlator.service_of(event))
                    .flatten();
                if mapped.is_some() && incident.service.is_some() && mapped != incident.service {
                    continue;
                }
                if incident.status.is_open() {
                    return Ok(Some((incident, CorrelationRule::Explicit)));
                }
                if unit.within_grace(&incident) {
                    return Ok(Some((incident, CorrelationRule::Grace)));
                }
            }
        }
    }
    // 2. to 4. read the index: the cost of one lookup, however many incidents are open.
    let index = &*unit.index;
    let now = unit.now;
    let fetch =
        |tx: &dyn WriteTx, id: Option<&IncidentId>| -> Result<Option<Incident>, StoreError> {
            match id {
                Some(id) => tx.incident(id),
                None => Ok(None),
            }
        };
    let service = unit.correlator.service_of(event);

    // 2. Service map.
    if unit.correlator.has_map() {
        if let Some(svc) = &service {
            if let Some(i) = fetch(tx, index.newest_open_of(svc))? {
                return Ok(Some((i, CorrelationRule::Service)));
            }
            if let Some(i) = fetch(tx, index.newest_graced_of(svc, now))? {
                return Ok(Some((i, CorrelationRule::Grace)));
            }
        }
    }

    // 3. The sole open incident — unless the map says the event is about another service.
    if unit.correlator.sole_open_incident {
        let compatible = |i: &Incident| match (&service, &i.service) {
            (Some(a), Some(b)) if unit.correlator.has_map() => a == b,
            _ => true,
        };
        if let Some(i) = fetch(tx, index.sole_open())? {
            if compatible(&i) {
                return Ok(Some((i, CorrelationRule::SoleOpen)));
            }
        }
        if let Some(i) = fetch(tx, index.sole_graced(now))? {
            if compatible(&i) {
                return Ok(Some((i, CorrelationRule::Grace)));
            }
        }
    }
    Ok(None)
}
