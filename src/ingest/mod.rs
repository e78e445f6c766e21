//! Ingest: de-duplicate, correlate, apply the incident lifecycle and append — durably.
//!
//! Every write goes through one committer, on a thread of its own (group commit).
//! Handlers send a [`Submission`] over a bounded channel and await its [`Receipt`]; the
//! committer takes up to `max_batch` waiting submissions, applies them in one atomic store
//! unit, flushes once (a blocking flush: sled's concurrent `flush_async` deadlocks) and
//! only then answers every waiter. A failed unit answers every waiter with an error, and
//! the handler answers 503 so the provider retries; nothing of the failed unit is stored. (A unit that
//! committed but whose flush kept failing is kept: the retry is then a duplicate.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
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
    /// For a body that carries several deliveries (PagerDuty V2's messages), the key of
    /// each event, in the order of `events` (each also in `delivery_keys`): then each
    /// event is de-duplicated on its own, and the submission is a duplicate only when
    /// every event is. Empty: the submission is one delivery.
    pub event_keys: Vec<String>,
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

/// What the committer's queue carries. (`Stop` is sent once; boxing `Submit` would cost an
/// allocation per webhook for nothing.)
#[allow(clippy::large_enum_variant)]
enum Msg {
    Submit(Pending),
    /// Commit what is queued, refuse the rest, flush and stop.
    Stop,
}

/// The handle that submits to the committer. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Msg>,
    changes: broadcast::Sender<LifecycleChange>,
    /// Open incidents, as the committer's index counts them.
    open: Arc<AtomicUsize>,
}

/// The running committer (a thread of its own).
pub struct Committer {
    stop: mpsc::Sender<Msg>,
    stopped: oneshot::Receiver<()>,
}

impl Committer {
    /// Stops taking new submissions, commits what is queued, and waits for the last flush.
    pub async fn shutdown(self) {
        // Behind what is queued; the committer may be gone already (it then failed).
        let _ = self.stop.send(Msg::Stop).await;
        if self.stopped.await.is_err() {
            tracing::error!("the committer thread failed");
        }
    }
}

impl Ingest {
    /// Builds the correlation index from the store and starts the committer on a thread
    /// of its own (it applies units, flushes and answers without a hand-off per unit).
    pub fn start(
        store: Arc<dyn Store>,
        correlator: Arc<Correlator>,
        max_batch: usize,
        queue_depth: usize,
    ) -> Result<(Ingest, Committer), StoreError> {
        // Subscribe before loading: a change made in between is then seen twice, not lost.
        let watch = store.watch();
        let index = IncidentIndex::load(&correlator, store.as_ref(), Utc::now())?;
        let open = Arc::new(AtomicUsize::new(index.open_count()));
        let filing = correlator.map_fingerprint();
        let (queue, rx) = mpsc::channel(queue_depth);
        let (changes, _) = broadcast::channel(1024);
        let (done, stopped) = oneshot::channel();
        let stop = queue.clone();
        let committing = Committing {
            store,
            correlator,
            open: open.clone(),
            filing,
            watch,
        };
        let max_batch = max_batch.max(1);
        let published = changes.clone();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                run_committer(committing, index, rx, max_batch, published);
                let _ = done.send(());
            })
            .map_err(|e| StoreError::Engine(format!("starting the committer thread: {e}")))?;
        Ok((
            Ingest {
                queue,
                changes,
                open,
            },
            Committer { stop, stopped },
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
            .try_send(Msg::Submit(Pending { submission, reply }))
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

    /// Whether the committer takes submissions (false once it stopped, or failed).
    pub fn accepting(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Submissions waiting for the committer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

mod committer;
mod lifecycle;
mod pull_in;
mod rules;
mod unit;

use committer::*;
use lifecycle::*;
use pull_in::*;
use rules::*;
pub use unit::Applied;
use unit::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn raw_only(n: u32) -> Submission {
        Submission {
            event_keys: Vec::new(),
            delivery_keys: vec![format!("test:delivery:{n}")],
            events: Vec::new(),
            raw: b"{}".to_vec(),
            cursors: Vec::new(),
            incident: None,
        }
    }

    #[tokio::test]
    async fn shutdown_commits_everything_queued_before_it_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 500, 1 << 20).unwrap());
        let (ingest, committer) =
            Ingest::start(store.clone(), Arc::new(Correlator::default()), 4, 64).unwrap();
        assert!(ingest.accepting());
        // Twenty submissions queued (each task runs up to its wait for an answer)...
        let waiting: Vec<_> = (0..20)
            .map(|n| {
                let ingest = ingest.clone();
                tokio::spawn(async move { ingest.submit(raw_only(n)).await })
            })
            .collect();
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        // ...then the stop, behind them.
        committer.shutdown().await;
        for task in waiting {
            let receipt = task.await.unwrap().unwrap();
            assert!(matches!(receipt, Receipt::Stored { .. }), "{receipt:?}");
        }
        assert!(!ingest.accepting());
        assert_eq!(
            ingest.submit(raw_only(99)).await,
            Err(IngestError::ShuttingDown)
        );
        for n in 0..20 {
            assert!(store
                .delivery(&format!("test:delivery:{n}"))
                .unwrap()
                .is_some());
        }
        assert!(store.delivery("test:delivery:99").unwrap().is_none());
    }
}
