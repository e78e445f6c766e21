//! The look-back pull-in: after a trigger commits, the unattached events of its window
//! that match it are moved onto the incident, in bounded chunks, resumable after a crash.

use super::*;

/// The cursor that marks an incident whose look-back pull-in is not finished.
pub(super) fn pull_in_marker(id: &IncidentId) -> String {
    format!("{PULL_IN_PREFIX}{id}")
}

pub(super) const PULL_IN_PREFIX: &str = "pullin:";

/// Stream events read per chunk of a pull-in (and moved per unit).
pub(super) const PULL_IN_CHUNK: usize = 512;

pub(super) fn resume_pull_ins(c: &Committing) -> Result<usize, StoreError> {
    let pending = c.store.cursors_with_prefix(PULL_IN_PREFIX)?;
    let now = Utc::now();
    for (key, _) in &pending {
        if let Ok(id) = IncidentId::parse(&key[PULL_IN_PREFIX.len()..]) {
            pull_in(c, &id, now)?;
        }
    }
    Ok(pending.len())
}

/// Pulls into a newly opened incident the unattached events that name it, the change
/// events of the long look-back and the other events of the short one (with a service
/// map, only its service's). Reads the stream's time index in bounded chunks and moves
/// each chunk in one unit; the cost is the window's, never the stream's.
pub(super) fn pull_in(
    c: &Committing,
    id: &IncidentId,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let store = c.store.as_ref();
    let correlator = &c.correlator;
    let marker = pull_in_marker(id);
    let Some(incident) = store.incident(id)? else {
        store.forget_cursor(&marker)?;
        return Ok(0);
    };
    let triggered = incident.triggered_at;
    let start = |d: chrono::Duration| {
        triggered
            .checked_sub_signed(d)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let in_window = |e: &Event| {
        e.occurred_at >= start(correlator.lookback_for(e))
            && e.occurred_at <= now
            && (!correlator.has_map() || correlator.service_of(e) == incident.service)
    };
    enum Pass {
        Naming,
        Window(StreamPart, DateTime<Utc>, DateTime<Utc>),
    }
    let short = start(correlator.lookback);
    let mut passes = vec![
        Pass::Naming,
        Pass::Window(
            StreamPart::Changes,
            start(correlator.change_lookback.max(correlator.lookback)),
            now,
        ),
    ];
    match &c.filing {
        // With a service map, the short window reads the incident's service's filing, and
        // by time only what is not filed under this map (stored before it, or without
        // one): the filed events of other services are skipped undecoded.
        Some(fp) => {
            let under = correlator.filing_of(fp, incident.service.as_deref());
            passes.push(Pass::Window(StreamPart::Filed(under), short, now));
            passes.push(Pass::Window(
                StreamPart::NotFiledUnder(fp.clone()),
                short,
                now,
            ));
        }
        None => passes.push(Pass::Window(StreamPart::All, short, now)),
    }
    let mut moved = 0;
    for pass in passes {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = match &pass {
                Pass::Naming => store.stream_naming(id, after.as_deref(), PULL_IN_CHUNK)?,
                Pass::Window(part, from, to) => store.stream_window(
                    part.clone(),
                    *from,
                    *to,
                    after.as_deref(),
                    PULL_IN_CHUNK,
                )?,
            };
            let next = chunk.next;
            let take: Vec<Ulid> = chunk
                .items
                .into_iter()
                .filter(|(_, e)| matches!(pass, Pass::Naming) || in_window(e))
                .map(|(_, e)| e.id)
                .collect();
            if !take.is_empty() {
                let mut n = 0;
                store.write(&mut |tx| {
                    n = 0;
                    let Some(mut incident) = tx.incident(id)? else {
                        return Ok(());
                    };
                    for event_id in &take {
                        if let Some(mut event) = tx.remove_stream_event(*event_id)? {
                            append(
                                tx,
                                &mut incident,
                                &mut event,
                                CorrelationRule::LookBack,
                                now,
                            )?;
                            n += 1;
                        }
                    }
                    tx.put_incident(&incident)
                })?;
                moved += n;
            }
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
    }
    // Every chunk moved is flushed already; the marker's removal need not be (a lost one
    // repeats this pull-in, which then finds nothing).
    store.forget_cursor(&marker)?;
    if moved > 0 {
        tracing::info!(incident = %id, events = moved, "pulled in from the look-back window");
    }
    Ok(moved)
}
