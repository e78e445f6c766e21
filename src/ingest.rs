//! Ingest: de-duplicate, correlate, apply the incident lifecycle and append — durably.
//!
//! Every write goes through one committer task (group commit). Handlers send a
//! [`Submission`] over a bounded channel and await its [`Receipt`]; the committer takes up
//! to `max_batch` waiting submissions, applies them in one atomic store unit, flushes once
//! (on a blocking thread: sled's concurrent `flush_async` deadlocks) and only then answers
//! every waiter. A failed unit answers every waiter with an error, and the handler answers
//! 503 so the provider retries; nothing of the failed unit is stored.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::domain::{
    CorrelationRule, Event, EventKind, Incident, IncidentId, IncidentStatus, KEY_PAGERDUTY_INCIDENT,
};
use crate::store::{DeliveryRecord, Store, StoreError, WriteTx};

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
    /// Starts the committer on the current tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        max_batch: usize,
        queue_depth: usize,
    ) -> (Ingest, Committer) {
        let (queue, rx) = mpsc::channel(queue_depth);
        let (changes, _) = broadcast::channel(1024);
        let cancel = CancellationToken::new();
        let join = tokio::spawn(run_committer(
            store,
            rx,
            max_batch.max(1),
            changes.clone(),
            cancel.clone(),
        ));
        (Ingest { queue, changes }, Committer { join, cancel })
    }

    /// Stores a submission; returns once it is flushed (or known to be a duplicate).
    pub async fn submit(&self, submission: Submission) -> Result<Receipt, IngestError> {
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

async fn run_committer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    changes: broadcast::Sender<LifecycleChange>,
    cancel: CancellationToken,
) {
    let mut buf = Vec::with_capacity(max_batch);
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut buf, max_batch) => n,
            _ = cancel.cancelled() => {
                // Refuse new work, then commit everything already queued.
                rx.close();
                while rx.recv_many(&mut buf, max_batch).await > 0 {
                    commit_batch(&store, std::mem::take(&mut buf), &changes).await;
                }
                break;
            }
        };
        if n == 0 {
            break;
        }
        commit_batch(&store, std::mem::take(&mut buf), &changes).await;
    }
    if let Err(e) = tokio::task::spawn_blocking(move || store.flush()).await {
        tracing::error!(error = %e, "final flush task failed");
    }
    tracing::info!("committer stopped");
}

async fn commit_batch(
    store: &Arc<dyn Store>,
    batch: Vec<Pending>,
    changes: &broadcast::Sender<LifecycleChange>,
) {
    let (submissions, replies): (Vec<Submission>, Vec<_>) =
        batch.into_iter().map(|p| (p.submission, p.reply)).unzip();
    let store = Arc::clone(store);
    let started = std::time::Instant::now();
    let size = submissions.len();
    let result = tokio::task::spawn_blocking(move || {
        apply_submissions(store.as_ref(), &submissions, Utc::now())
    })
    .await;
    metrics::histogram!("incidentpost_commit_duration_seconds").record(started.elapsed());
    metrics::histogram!("incidentpost_commit_batch_size").record(size as f64);
    match result {
        Ok(Ok(applied)) => {
            for change in applied.changes {
                tracing::info!(incident = %change.incident_id, change = ?change.change, "incident lifecycle");
                // No receiver is fine: nobody is waiting for renders yet.
                let _ = changes.send(change);
            }
            for (reply, receipt) in replies.into_iter().zip(applied.receipts) {
                let _ = reply.send(Ok(receipt));
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

/// What one committed unit produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// One receipt per submission, in order.
    pub receipts: Vec<Receipt>,
    /// Lifecycle transitions, in order.
    pub changes: Vec<LifecycleChange>,
}

/// Applies submissions in one atomic, flushed unit. Public for the offline tools (import).
pub fn apply_submissions(
    store: &dyn Store,
    submissions: &[Submission],
    now: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    store.write(&mut |tx| {
        // The unit may be retried by the engine: start from scratch each time.
        applied = Applied::default();
        let mut seen_in_batch: HashSet<&str> = HashSet::new();
        for sub in submissions {
            if let Some(first) = find_duplicate(tx, sub, &seen_in_batch)? {
                applied.receipts.push(Receipt::Duplicate {
                    event_ids: first.event_ids,
                });
                continue;
            }
            seen_in_batch.extend(sub.delivery_keys.iter().map(String::as_str));
            let raw_id = sub.events.first().map(|e| e.id).unwrap_or_else(Ulid::new);
            tx.put_raw(raw_id, &sub.raw)?;
            let mut event_ids = Vec::with_capacity(sub.events.len());
            let mut incident_ids = Vec::new();
            for event in &sub.events {
                let mut event = event.clone();
                event.raw_id = Some(raw_id);
                if let Some(id) = attach_event(tx, &mut event, now, &mut applied.changes)? {
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
        Ok(())
    })?;
    Ok(applied)
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

/// Attaches one event to its incident (opening, acknowledging, resolving or reopening it
/// as PagerDuty says) or to the unattached stream. Returns the incident it joined.
fn attach_event(
    tx: &mut dyn WriteTx,
    event: &mut Event,
    now: DateTime<Utc>,
    changes: &mut Vec<LifecycleChange>,
) -> Result<Option<IncidentId>, StoreError> {
    let explicit = event
        .keys
        .get(KEY_PAGERDUTY_INCIDENT)
        .and_then(|id| IncidentId::parse(id).ok());
    let Some(id) = explicit else {
        tx.put_stream_event(event)?;
        return Ok(None);
    };
    let mut incident = match tx.incident(&id)? {
        Some(existing) => existing,
        None => {
            // PagerDuty is the source of truth: an event for an incident we have not seen
            // (we started after its trigger) opens it rather than being lost.
            let incident = new_incident(id.clone(), event, now);
            changes.push(LifecycleChange {
                incident_id: id.clone(),
                change: Change::Opened,
            });
            incident
        }
    };
    apply_lifecycle(&mut incident, event, changes);
    refresh_details(&mut incident, event);
    event.incident_id = Some(id.clone());
    event.correlation = Some(CorrelationRule::Explicit);
    let seq = incident.next_seq;
    incident.next_seq += 1;
    incident.event_count += 1;
    incident.updated_at = now;
    tx.put_incident_event(seq, event)?;
    tx.put_incident(&incident)?;
    Ok(Some(id))
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
fn refresh_details(incident: &mut Incident, event: &Event) {
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
        incident.service = event.service.clone();
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

fn apply_lifecycle(incident: &mut Incident, event: &Event, changes: &mut Vec<LifecycleChange>) {
    let at = event.occurred_at;
    let mut push = |change| {
        changes.push(LifecycleChange {
            incident_id: incident.id.clone(),
            change,
        })
    };
    match event.kind {
        EventKind::IncidentTriggered | EventKind::IncidentReopened
            if incident.status == IncidentStatus::Resolved =>
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
