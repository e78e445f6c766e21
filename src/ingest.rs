//! Ingest: de-duplicate, correlate, apply the incident lifecycle and append — durably.
//!
//! Every write goes through one committer task (group commit). Handlers send a
//! [`Submission`] over a bounded channel and await its [`Receipt`]; the committer takes up
//! to `max_batch` waiting submissions, applies them in one atomic store unit, flushes once
//! (on a blocking thread: sled's concurrent `flush_async` deadlocks) and only then answers
//! every waiter. A failed unit answers every waiter with an error, and the handler answers
//! 503 so the provider retries; nothing of the failed unit is stored. (A unit that
//! committed but whose flush kept failing is kept: the retry is then a duplicate.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::correlate::{Correlator, IncidentIndex};
use crate::domain::{
    CorrelationRule, Event, EventKind, Incident, IncidentId, IncidentStatus, Source,
    KEY_INCIDENT_REF, KEY_PAGERDUTY_INCIDENT, LINK_KEYS,
};
use crate::store::{DeliveryRecord, Store, StoreError, StreamPart, WriteTx};

/// One webhook delivery (or poll result) ready to store.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Delivery keys, each `source:kind:id`. If any was stored before, the submission is a
    /// duplicate and nothing new is stored. Empty: never de-duplicated.
    pub delivery_keys: Vec<String>,
    /// The normalized events (possibly none: an unhandled type is kept as raw only).
    pub events: Vec<Event>,
    /// The raw payload, kept for audit and re-normalization.
    pub raw: Vec<u8>,
    /// Cursors saved atomically with the events (poller positions).
    pub cursors: Vec<(String, String)>,
    /// An incident to create first, when absent (imports and the API create incidents
    /// that PagerDuty did not open). Its events name it with `incident_ref`.
    pub incident: Option<Incident>,
}

/// The answer to a submission, given once it is on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum Receipt {
    /// Stored now.
    Stored {
        /// Id of the raw payload record.
        raw_id: Ulid,
        /// Ids of the stored events.
        event_ids: Vec<Ulid>,
        /// Incidents the events were attached to.
        incident_ids: Vec<IncidentId>,
    },
    /// A delivery key was seen before; nothing new stored.
    Duplicate {
        /// The events the first delivery produced.
        event_ids: Vec<Ulid>,
    },
}

/// Why a submission was not stored. Every variant means "retry later".
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// The commit queue is full.
    #[error("ingest queue is full")]
    Overloaded,
    /// The store failed; the cause is logged by the committer.
    #[error("storage failed")]
    Storage,
    /// The service is shutting down.
    #[error("service is shutting down")]
    ShuttingDown,
}

/// A lifecycle transition, published after it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleChange {
    pub incident_id: IncidentId,
    pub change: Change,
}

/// Kinds of [`LifecycleChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Acknowledged,
    Resolved,
    Reopened,
    /// An event joined a resolved incident (grace window or explicit reference).
    LateEvent,
}

struct Pending {
    submission: Submission,
    reply: oneshot::Sender<Result<Receipt, IngestError>>,
}

/// The handle that submits to the committer. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Pending>,
    changes: broadcast::Sender<LifecycleChange>,
    /// Open incidents, as the committer's index counts them.
    open: Arc<AtomicUsize>,
}

/// The running committer task.
pub struct Committer {
    join: JoinHandle<()>,
    cancel: CancellationToken,
}

impl Committer {
    /// Stops taking new submissions, commits what is queued, and waits for the last flush.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.join.await {
            tracing::error!(error = %e, "committer task failed");
        }
    }
}

impl Ingest {
    /// Builds the correlation index from the store and starts the committer on the
    /// current tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        correlator: Arc<Correlator>,
        max_batch: usize,
        queue_depth: usize,
    ) -> Result<(Ingest, Committer), StoreError> {
        // Subscribe before loading: a change made in between is then seen twice, not lost.
        let watch = store.watch().map(|w| Arc::new(std::sync::Mutex::new(w)));
        let index = IncidentIndex::load(&correlator, store.as_ref(), Utc::now())?;
        let open = Arc::new(AtomicUsize::new(index.open_count()));
        let filing = correlator.map_fingerprint();
        let (queue, rx) = mpsc::channel(queue_depth);
        let (changes, _) = broadcast::channel(1024);
        let cancel = CancellationToken::new();
        let join = tokio::spawn(run_committer(
            Committing {
                store,
                correlator,
                index: Arc::new(std::sync::Mutex::new(index)),
                open: open.clone(),
                filing: filing.clone(),
                watch,
            },
            rx,
            max_batch.max(1),
            changes.clone(),
            cancel.clone(),
        ));
        Ok((
            Ingest {
                queue,
                changes,
                open,
            },
            Committer { join, cancel },
        ))
    }

    /// How many incidents are open (from the committer's index: no store read).
    pub fn open_incidents(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Stores a submission; returns once it is flushed (or known to be a duplicate).
    pub async fn submit(&self, mut submission: Submission) -> Result<Receipt, IngestError> {
        // Every way in (webhooks, pollers, import, edits) passes here: links from outside
        // are kept only when they are clean absolute http(s) URLs.
        for event in &mut submission.events {
            event.url = event.url.as_deref().and_then(crate::domain::clean_url);
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending { submission, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
            })?;
        answer.await.map_err(|_| IngestError::ShuttingDown)?
    }

    /// Lifecycle transitions, delivered after they are durable.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleChange> {
        self.changes.subscribe()
    }

    /// Submissions waiting for the committer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// What the committer works with. The index is behind a mutex only so the blocking
/// thread of each batch can borrow it; the committer is its only user.
#[derive(Clone)]
struct Committing {
    store: Arc<dyn Store>,
    correlator: Arc<Correlator>,
    index: Arc<std::sync::Mutex<IncidentIndex>>,
    open: Arc<AtomicUsize>,
    /// With a service map: its fingerprint, which unattached events are filed under.
    filing: Option<String>,
    /// Other processes' writes (a store several replicas share).
    watch: Option<Arc<std::sync::Mutex<crate::store::Watcher>>>,
}

/// Brings the index up to date with what other replicas wrote since the last batch:
/// each incident they announced is read again (a lost listening connection reloads all).
fn follow_others(
    c: &Committing,
    index: &mut IncidentIndex,
    now: chrono::DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(watch) = &c.watch else {
        return Ok(());
    };
    let watch = watch.lock().unwrap_or_else(|p| p.into_inner());
    let mut ids = std::collections::BTreeSet::new();
    let mut resync = false;
    while let Ok(change) = watch.changes.try_recv() {
        match change {
            crate::store::StoreChange::Incident(id) => {
                ids.insert(id);
            }
            crate::store::StoreChange::Resync => resync = true,
        }
    }
    drop(watch);
    if resync {
        *index = IncidentIndex::load(&c.correlator, c.store.as_ref(), now)?;
        tracing::info!(
            open = index.open_count(),
            "correlation index reloaded after a lost listening connection"
        );
        return Ok(());
    }
    for id in ids {
        if let Some(incident) = c.store.incident(&id)? {
            index.upsert(&incident);
        }
    }
    index.commit(now);
    Ok(())
}

async fn run_committer(
    c: Committing,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    changes: broadcast::Sender<LifecycleChange>,
    cancel: CancellationToken,
) {
    // Pull-ins a crash interrupted are finished before anything new is applied.
    let resume = c.clone();
    match tokio::task::spawn_blocking(move || resume_pull_ins(&resume)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(incidents = n, "finished interrupted look-back pull-ins"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "resuming pull-ins failed; retried at the next trigger")
        }
        Err(e) => tracing::error!(error = %e, "pull-in task failed"),
    }
    let mut buf = Vec::with_capacity(max_batch);
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut buf, max_batch) => n,
            _ = cancel.cancelled() => {
                // Refuse new work, then commit everything already queued.
                rx.close();
                while rx.recv_many(&mut buf, max_batch).await > 0 {
                    commit_batch(&c, std::mem::take(&mut buf), &changes).await;
                }
                break;
            }
        };
        if n == 0 {
            break;
        }
        commit_batch(&c, std::mem::take(&mut buf), &changes).await;
    }
    let store = c.store.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || store.flush()).await {
        tracing::error!(error = %e, "final flush task failed");
    }
    tracing::info!("committer stopped");
}

async fn commit_batch(
    c: &Committing,
    batch: Vec<Pending>,
    changes: &broadcast::Sender<LifecycleChange>,
) {
    let (submissions, replies): (Vec<Submission>, Vec<_>) =
        batch.into_iter().map(|p| (p.submission, p.reply)).unzip();
    let started = std::time::Instant::now();
    let size = submissions.len();
    let work = c.clone();
    let result = tokio::task::spawn_blocking(move || {
        let now = Utc::now();
        let mut index = work.index.lock().unwrap_or_else(|p| p.into_inner());
        follow_others(&work, &mut index, now)?;
        let applied = apply_submissions(
            work.store.as_ref(),
            &work.correlator,
            &mut index,
            work.filing.as_deref(),
            &submissions,
            now,
        )?;
        work.open.store(index.open_count(), Ordering::Relaxed);
        drop(index);
        // The look-back of incidents this unit opened: the trigger is durable already; a
        // failed pull-in keeps its marker and is retried at the next start.
        for id in &applied.opened {
            if let Err(e) = pull_in(&work, id, now) {
                tracing::error!(incident = %id, error = %e, "look-back pull-in failed; retried at the next start");
            }
        }
        Ok::<_, StoreError>(applied)
    })
    .await;
    metrics::histogram!("incidentpost_commit_duration_seconds").record(started.elapsed());
    metrics::histogram!("incidentpost_commit_batch_size").record(size as f64);
    match result {
        Ok(Ok(applied)) => {
            for (reply, receipt) in replies.into_iter().zip(applied.receipts) {
                let _ = reply.send(Ok(receipt));
            }
            for change in applied.changes {
                tracing::info!(incident = %change.incident_id, change = ?change.change, "incident lifecycle");
                // No receiver is fine: nobody is waiting for renders yet.
                let _ = changes.send(change);
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, batch = size, "commit failed; answering 503");
            metrics::counter!("incidentpost_commit_failures_total").increment(1);
            for reply in replies {
                let _ = reply.send(Err(IngestError::Storage));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit task panicked; answering 503");
            for reply in replies {
                let _ = reply.send(Err(IngestError::Storage));
            }
        }
    }
}

/// The cursor that marks an incident whose look-back pull-in is not finished.
fn pull_in_marker(id: &IncidentId) -> String {
    format!("{PULL_IN_PREFIX}{id}")
}

const PULL_IN_PREFIX: &str = "pullin:";

/// Stream events read per chunk of a pull-in (and moved per unit).
const PULL_IN_CHUNK: usize = 512;

fn resume_pull_ins(c: &Committing) -> Result<usize, StoreError> {
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
fn pull_in(c: &Committing, id: &IncidentId, now: DateTime<Utc>) -> Result<usize, StoreError> {
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
fn apply_submissions(
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
            if let Some(first) = find_duplicate(tx, sub, &seen_in_batch)? {
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
            let mut event_ids = Vec::with_capacity(sub.events.len());
            let mut incident_ids = Vec::new();
            for event in &sub.events {
                let mut event = event.clone();
                event.raw_id = (!sub.raw.is_empty()).then_some(raw_id);
                detect_rollback(tx, &mut event)?;
                if let Some(id) = attach_event(tx, &mut unit, &mut event)? {
                    if !incident_ids.contains(&id) {
                        incident_ids.push(id);
                    }
                }
                event_ids.push(event.id);
            }
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

/// Stores an incident record and keeps the correlation index in step with it.
fn save(tx: &mut dyn WriteTx, unit: &mut Unit<'_>, incident: &Incident) -> Result<(), StoreError> {
    tx.put_incident(incident)?;
    unit.index.upsert(incident);
    Ok(())
}

fn find_duplicate(
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

/// Per-unit state of the correlation pass.
struct Unit<'a> {
    correlator: &'a Correlator,
    now: DateTime<Utc>,
    /// Open and in-grace incidents, as of this unit's writes.
    index: &'a mut IncidentIndex,
    /// The service map's fingerprint, to file unattached events under.
    fingerprint: Option<&'a str>,
    /// Incidents PagerDuty opened in this unit (their pull-in follows the commit).
    opened: Vec<IncidentId>,
    /// Where each event of this unit went, so an annotation follows the message it was
    /// derived from (same incident, same rule).
    placed: std::collections::HashMap<Ulid, (IncidentId, CorrelationRule)>,
    changes: Vec<LifecycleChange>,
}

impl Unit<'_> {
    fn change(&mut self, incident: &IncidentId, change: Change) {
        self.changes.push(LifecycleChange {
            incident_id: incident.clone(),
            change,
        });
    }

    fn within_grace(&self, incident: &Incident) -> bool {
        incident
            .resolved_at
            .is_some_and(|at| self.now <= at + self.correlator.grace)
    }
}

/// Attaches one event to its incident (PagerDuty events open, acknowledge, resolve and
/// reopen it) or to the unattached stream. Returns the incident it joined.
fn attach_event(
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
fn detect_rollback(tx: &mut dyn WriteTx, event: &mut Event) -> Result<(), StoreError> {
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

/// The correlation rules, in order. `None`: the event goes to the unattached stream.
fn correlate(
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

/// Appends an event to an incident (the caller stores the incident record).
fn append(
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
            tx.put_link(&format!("{key}={value}"), &incident.id)?;
        }
    }
    Ok(())
}

fn attr_str<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event.attrs.get(key).and_then(Value::as_str)
}

fn new_incident(id: IncidentId, event: &Event, now: DateTime<Utc>) -> Incident {
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
fn refresh_details(incident: &mut Incident, event: &Event, correlator: &Correlator) {
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

fn apply_lifecycle(incident: &mut Incident, event: &Event, unit: &mut Unit<'_>) {
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
