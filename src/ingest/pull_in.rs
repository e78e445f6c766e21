//! The look-back pull-in: after a unit commits, the unattached events of the windows of
//! the incidents it opened that match them are moved onto those incidents, in bounded
//! chunks, resumable after a crash. The incidents a unit opened share their reads: an
//! alert storm opens several at once, and each window is read once for all of them.

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
    // In the order they were opened (the marker holds the trigger time), as the
    // committer would have pulled them in.
    let mut ids: Vec<(Option<DateTime<Utc>>, IncidentId)> = pending
        .iter()
        .filter_map(|(key, at)| {
            let id = IncidentId::parse(&key[PULL_IN_PREFIX.len()..]).ok()?;
            let at = DateTime::parse_from_rfc3339(at).ok().map(|t| t.to_utc());
            Some((at, id))
        })
        .collect();
    ids.sort();
    let ids: Vec<IncidentId> = ids.into_iter().map(|(_, id)| id).collect();
    pull_in_each_if_need_be(c, &ids, Utc::now())?;
    Ok(pending.len())
}

/// [`pull_in`] of them all together; if that fails, of each alone, so one incident's
/// failure does not hold back the others' look-backs (a failed one keeps its marker and
/// is retried at the next start). The first error is returned.
pub(super) fn pull_in_each_if_need_be(
    c: &Committing,
    ids: &[IncidentId],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    match pull_in(c, ids, now) {
        Ok(n) => Ok(n),
        Err(e) if ids.len() > 1 => {
            tracing::warn!(error = %e, incidents = ids.len(), "shared look-back failed; pulling each incident in alone");
            let mut moved = 0;
            let mut first = None;
            for id in ids {
                match pull_in(c, std::slice::from_ref(id), now) {
                    Ok(n) => moved += n,
                    Err(e) => {
                        tracing::error!(incident = %id, error = %e, "look-back pull-in failed; retried at the next start");
                        first.get_or_insert(e);
                    }
                }
            }
            first.map_or(Ok(moved), Err)
        }
        Err(e) => Err(e),
    }
}

/// One incident being pulled into: its id, trigger time and service.
struct Target {
    id: IncidentId,
    triggered: DateTime<Utc>,
    service: Option<String>,
}

impl Target {
    fn start(&self, d: chrono::Duration) -> DateTime<Utc> {
        self.triggered
            .checked_sub_signed(d)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// A read of the stream: the events naming one incident, or a time window of a part of
/// the stream with the incidents it is read for.
enum Pass {
    Naming(usize),
    Window {
        part: StreamPart,
        from: DateTime<Utc>,
        targets: Vec<usize>,
    },
}

/// Pulls into newly opened incidents the unattached events that name them, the change
/// events of the long look-back and the other events of the short one (with a service
/// map, only each incident's service's). Reads the stream's indexes in bounded chunks —
/// first the events naming each incident, then each window once for every incident in
/// `ids`, an event two could take going to the first in `ids` — and moves each chunk in
/// one unit. The cost is the windows', never the stream's.
pub(super) fn pull_in(
    c: &Committing,
    ids: &[IncidentId],
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let store = c.store.as_ref();
    let correlator = &c.correlator;
    let mut targets = Vec::with_capacity(ids.len());
    for id in ids {
        if targets.iter().any(|t: &Target| &t.id == id) {
            continue;
        }
        match store.incident(id)? {
            Some(incident) => targets.push(Target {
                id: id.clone(),
                triggered: incident.triggered_at,
                service: incident.service,
            }),
            None => store.forget_cursor(&pull_in_marker(id))?,
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    let long = correlator.change_lookback.max(correlator.lookback);
    let earliest = |of: &[usize], d: chrono::Duration| {
        of.iter().map(|&i| targets[i].start(d)).min().unwrap_or(now)
    };
    let all: Vec<usize> = (0..targets.len()).collect();
    let mut passes: Vec<Pass> = (0..targets.len()).map(Pass::Naming).collect();
    passes.push(Pass::Window {
        part: StreamPart::Changes,
        from: earliest(&all, long),
        targets: all.clone(),
    });
    match &c.filing {
        // With a service map, the short window reads each incident's service's filing,
        // and by time only what is not filed under this map (stored before it, or without
        // one): the filed events of other services are skipped undecoded.
        Some(fp) => {
            let mut services: Vec<(String, Vec<usize>)> = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                let under = correlator.filing_of(fp, t.service.as_deref());
                match services.iter_mut().find(|(u, _)| *u == under) {
                    Some((_, of)) => of.push(i),
                    None => services.push((under, vec![i])),
                }
            }
            for (under, of) in services {
                passes.push(Pass::Window {
                    part: StreamPart::Filed(under),
                    from: earliest(&of, correlator.lookback),
                    targets: of,
                });
            }
            passes.push(Pass::Window {
                part: StreamPart::NotFiledUnder(fp.clone()),
                from: earliest(&all, correlator.lookback),
                targets: all,
            });
        }
        None => passes.push(Pass::Window {
            part: StreamPart::All,
            from: earliest(&all, correlator.lookback),
            targets: all,
        }),
    }
    // The first of `of` whose window holds the event.
    let taker = |e: &Event, of: &[usize]| {
        of.iter().copied().find(|&i| {
            let t = &targets[i];
            e.occurred_at >= t.start(correlator.lookback_for(e))
                && e.occurred_at <= now
                && (!correlator.has_map() || correlator.service_of(e) == t.service)
        })
    };
    let mut moved = vec![0usize; targets.len()];
    for pass in &passes {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = match pass {
                Pass::Naming(i) => {
                    store.stream_naming(&targets[*i].id, after.as_deref(), PULL_IN_CHUNK)?
                }
                Pass::Window { part, from, .. } => store.stream_window(
                    part.clone(),
                    *from,
                    now,
                    after.as_deref(),
                    PULL_IN_CHUNK,
                )?,
            };
            let next = chunk.next;
            // Events stored before this service map (or under another one) were decoded
            // to be matched: they are filed under this map now, so the next look-back
            // skips them undecoded (the cost of a map change is paid once).
            let refiling = match pass {
                Pass::Window {
                    part: StreamPart::NotFiledUnder(fp),
                    ..
                } => Some(fp),
                _ => None,
            };
            // What each target takes of this chunk, by position in `targets`.
            let mut take: Vec<Vec<Ulid>> = vec![Vec::new(); targets.len()];
            let mut refile: Vec<(Ulid, DateTime<Utc>, String)> = Vec::new();
            for (_, e) in chunk.items {
                let at = match pass {
                    Pass::Naming(i) => Some(*i),
                    Pass::Window { targets: of, .. } => taker(&e, of),
                };
                match (at, refiling) {
                    (Some(i), _) => take[i].push(e.id),
                    (None, Some(fp)) => {
                        let under = correlator.filing_of(fp, correlator.service_of(&e).as_deref());
                        refile.push((e.id, e.occurred_at, under));
                    }
                    (None, None) => {}
                }
            }
            if take.iter().any(|t| !t.is_empty()) || !refile.is_empty() {
                let mut n = vec![0usize; targets.len()];
                store.write(&mut |tx| {
                    n.iter_mut().for_each(|n| *n = 0);
                    for (id, occurred_at, under) in &refile {
                        tx.refile_stream_event(*id, *occurred_at, under)?;
                    }
                    for ((t, mine), n) in targets.iter().zip(&take).zip(n.iter_mut()) {
                        if mine.is_empty() {
                            continue;
                        }
                        let Some(mut incident) = tx.incident(&t.id)? else {
                            continue;
                        };
                        for event_id in mine {
                            if let Some(mut event) = tx.remove_stream_event(*event_id)? {
                                append(
                                    tx,
                                    &mut incident,
                                    &mut event,
                                    CorrelationRule::LookBack,
                                    now,
                                )?;
                                *n += 1;
                            }
                        }
                        tx.put_incident(&incident)?;
                    }
                    Ok(())
                })?;
                moved.iter_mut().zip(&n).for_each(|(m, n)| *m += n);
            }
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
    }
    // Every chunk moved is flushed already; the markers' removal need not be (a lost one
    // repeats its pull-in, which then finds nothing).
    for (t, moved) in targets.iter().zip(&moved) {
        store.forget_cursor(&pull_in_marker(&t.id))?;
        if *moved > 0 {
            tracing::info!(incident = %t.id, events = moved, "pulled in from the look-back window");
        }
    }
    Ok(moved.iter().sum())
}
