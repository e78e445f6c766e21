//! Durable storage behind a trait. Only [`sled_store`] imports sled, so another engine
//! (PostgreSQL for multi-replica deployments) can be added without touching callers.
//!
//! Writes go through [`Store::write`]: one atomic unit that is flushed before it returns.
//! The ingest committer is the only caller, which makes it the single writer and lets a
//! batch of webhooks share one flush (group commit).

mod pg_store;
mod sled_store;

pub use pg_store::PgStore;
pub use sled_store::SledStore;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use crate::domain::{Event, Incident, IncidentId};

/// The version of the NDJSON export format (independent of any engine's on-disk schema).
pub const EXPORT_FORMAT: u32 = 1;

/// One page of a key-range read, and where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque cursor of the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Which part of the unattached stream a look-back reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPart {
    /// Change events only (deploys, merges, rollbacks): the long look-back.
    Changes,
    /// Every event: the short look-back.
    All,
    /// Only events not filed under the service map with this fingerprint (stored without
    /// a map, or under another one): read by time, the others skipped by their index value
    /// without being decoded.
    NotFiledUnder(String),
    /// The events filed under one service of one service map (see
    /// [`WriteTx::file_stream_event`]).
    Filed(String),
}

/// An unattached event with its index key.
pub type Keyed = (Vec<u8>, Event);

/// A chunk of a key-range read of the stream: the events found, and the last index key
/// read when the read stopped at its limit (continue after it), `None` when the range is
/// exhausted. Keys whose event went in between are skipped but still count.
#[derive(Debug, Default)]
pub struct Chunk {
    pub items: Vec<Keyed>,
    pub next: Option<Vec<u8>>,
}

/// A change another process made to the store (PostgreSQL replicas), so this process's
/// in-memory correlation index can follow.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChange {
    /// An incident was written: read it again.
    Incident(IncidentId),
    /// Changes may have been missed (the listening connection was lost): reload all.
    Resync,
}

/// A subscription to [`StoreChange`]s; the listener stops when this is dropped.
pub struct Watcher {
    pub changes: std::sync::mpsc::Receiver<StoreChange>,
    /// Keeps the listener running: it checks for this every second.
    pub alive: std::sync::Arc<()>,
}

/// Storage failures. Callers answer 503 so providers retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, corruption reported by sled).
    #[error("storage engine: {0}")]
    Engine(String),
    /// A stored value could not be decoded.
    #[error("stored value under {key} could not be decoded: {message}")]
    Corrupt { key: String, message: String },
    /// The data directory was written by an incompatible version.
    #[error("data directory has schema version {found}, this build reads version {expected}")]
    SchemaMismatch { found: u32, expected: u32 },
    /// A concurrent writer touched the same keys; the write is retried by the engine.
    #[error("write conflict")]
    Conflict,
    /// The unit committed but could not be flushed: it is kept (a retry is a duplicate),
    /// the caller answers 503 all the same.
    #[error("the unit was committed but not flushed: {0}")]
    NotFlushed(String),
    /// A paging cursor that this store did not hand out.
    #[error("the cursor is not one this list handed out")]
    BadCursor,
    /// The store refuses writes (shutting down, disk full, fault injected in tests).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// What is remembered about a delivery for de-duplication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// When it was first stored; deliveries older than the retention are pruned.
    pub stored_at: DateTime<Utc>,
    /// The events it produced (possibly none).
    pub event_ids: Vec<Ulid>,
}

/// One record of the NDJSON export (`incidentpost export` / `import`): the whole store in
/// an engine-neutral form, so data can move to another store. Packs are not exported:
/// they are rendered again from the events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportRecord {
    /// First line: what wrote the file.
    Header {
        schema: u32,
        generator: String,
    },
    Incident(Box<Incident>),
    /// An event of an incident's log, with its position.
    Event {
        seq: u64,
        event: Box<Event>,
    },
    /// An unattached event.
    Stream(Box<Event>),
    Raw {
        id: Ulid,
        payload_base64: String,
    },
    Delivery {
        key: String,
        record: DeliveryRecord,
    },
    Link {
        key: String,
        incident: IncidentId,
    },
    Cursor {
        key: String,
        value: String,
    },
}

/// The write side of one atomic unit. Implementations buffer everything until
/// [`Store::write`] commits it.
pub trait WriteTx {
    /// The record of a delivery key (`source:id`), if it was stored before.
    fn delivery(&self, key: &str) -> Result<Option<DeliveryRecord>, StoreError>;
    /// Remembers a delivery key.
    fn put_delivery(&mut self, key: &str, record: &DeliveryRecord) -> Result<(), StoreError>;
    /// An incident, as of this unit (including earlier writes in it).
    fn incident(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError>;
    /// Inserts or replaces an incident record (and keeps its indexes: open, recently
    /// resolved, by trigger time).
    fn put_incident(&mut self, incident: &Incident) -> Result<(), StoreError>;
    /// The incident a link key (`datadog_cycle=…`, `slack_thread=…`) was attached to.
    fn link(&self, key: &str) -> Result<Option<IncidentId>, StoreError>;
    /// Records that a link key belongs to an incident.
    fn put_link(&mut self, key: &str, incident: &IncidentId) -> Result<(), StoreError>;
    /// A saved cursor (poller state, last deployed version per repo and environment).
    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Saves a cursor in this unit, atomically with the events it covers.
    fn put_cursor(&mut self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Appends an event to its incident's log under `seq`.
    fn put_incident_event(&mut self, seq: u64, event: &Event) -> Result<(), StoreError>;
    /// Appends an event to the unattached stream.
    fn put_stream_event(&mut self, event: &Event) -> Result<(), StoreError>;
    /// Appends an event to the unattached stream filed under `filed_under` (the service
    /// map's fingerprint and the service it maps the event to), so a look-back with a map
    /// reads only its service's events.
    fn file_stream_event(&mut self, event: &Event, filed_under: &str) -> Result<(), StoreError>;
    /// Files an event already in the unattached stream under `filed_under` instead of
    /// where it was filed (a look-back matched it under a service map it was not filed
    /// under). Only its index moves; an event no longer in the stream stays gone.
    fn refile_stream_event(
        &mut self,
        id: Ulid,
        occurred_at: DateTime<Utc>,
        filed_under: &str,
    ) -> Result<(), StoreError>;
    /// An unattached event, if it is still in the stream.
    fn stream_event(&self, id: Ulid) -> Result<Option<Event>, StoreError>;
    /// Removes an event from the unattached stream and its indexes (when an incident
    /// pulls it in, or retention prunes it); returns it.
    fn remove_stream_event(&mut self, id: Ulid) -> Result<Option<Event>, StoreError>;
    /// Keeps the raw payload an event (or a delivery without events) came from.
    fn put_raw(&mut self, id: Ulid, payload: &[u8]) -> Result<(), StoreError>;
}

/// A durable event store.
pub trait Store: Send + Sync + 'static {
    /// Runs `work` as one atomic unit and flushes it before returning. `work` may be
    /// called again if the engine retries the unit, so it must start from scratch.
    fn write(
        &self,
        work: &mut (dyn FnMut(&mut dyn WriteTx) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError>;
    /// One incident.
    fn incident(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError>;
    /// How many incidents the store holds (kept as a counter: cheap).
    fn incident_count(&self) -> Result<u64, StoreError>;
    /// Incidents newest trigger first, from `cursor` on, that `keep` accepts: at most
    /// `limit` of them, after looking at no more than `scan` records (so a rare filter
    /// costs a bounded read; the cursor then continues where the scan stopped).
    fn incidents_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&Incident) -> bool,
    ) -> Result<Page<Incident>, StoreError>;
    /// The open incidents and those resolved since `resolved_since` (to rebuild the
    /// correlation index at start); older recently-resolved entries are forgotten.
    fn live_incidents(&self, resolved_since: DateTime<Utc>) -> Result<Vec<Incident>, StoreError>;
    /// The number of open incidents (reads the open index: as many keys as open incidents).
    fn open_incident_count(&self) -> Result<usize, StoreError>;
    /// An incident's events in append order.
    fn incident_events(&self, id: &IncidentId) -> Result<Vec<Event>, StoreError>;
    /// A page of an incident's events ordered by `occurred_at` (then append order).
    fn incident_events_page(
        &self,
        id: &IncidentId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Event>, StoreError>;
    /// A page of the unattached stream ordered by `occurred_at`.
    fn stream_page(&self, cursor: Option<&str>, limit: usize) -> Result<Page<Event>, StoreError>;
    /// Unattached events of `part` that occurred in `from..=to`, after the key `after`,
    /// at most `limit`. Never call it from inside [`Store::write`]: sled deadlocks on a
    /// plain read of a tree the running transaction holds.
    fn stream_window(
        &self,
        part: StreamPart,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Chunk, StoreError>;
    /// Unattached events that name `incident` (`incident_ref`, `pagerduty_incident`),
    /// after the key `after`, at most `limit`. Not from inside [`Store::write`].
    fn stream_naming(
        &self,
        incident: &IncidentId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Chunk, StoreError>;
    /// Removes up to `limit` unattached events that occurred before `cutoff` in one
    /// flushed unit; returns how many went. Raw payloads stay: one may be shared with
    /// events of the same delivery that joined an incident.
    fn prune_stream(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StoreError>;
    /// Forgets a saved cursor outside any unit, without a flush (sled's background flush
    /// persists it; losing it in a crash only repeats idempotent work).
    fn forget_cursor(&self, key: &str) -> Result<(), StoreError>;
    /// Saved cursors whose key starts with `prefix`.
    fn cursors_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// A saved cursor, outside any unit.
    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// A raw payload by event (or receipt) id.
    fn raw(&self, id: Ulid) -> Result<Option<Vec<u8>>, StoreError>;
    /// The record of a delivery key, outside any unit (reconciliation asks whether a
    /// provider's delivery was stored).
    fn delivery(&self, key: &str) -> Result<Option<DeliveryRecord>, StoreError>;
    /// Forgets delivery keys stored before `cutoff`; returns how many were removed.
    fn prune_deliveries(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError>;
    /// Remembers a page session under `key` (a hash of the cookie, never the cookie)
    /// until `expires_at`.
    fn put_session(&self, key: &str, expires_at: DateTime<Utc>) -> Result<(), StoreError>;
    /// When a session expires, if it exists.
    fn session(&self, key: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Ends a session (logout).
    fn delete_session(&self, key: &str) -> Result<(), StoreError>;
    /// Forgets sessions expired at `now`; returns how many were removed.
    fn prune_sessions(&self, now: DateTime<Utc>) -> Result<usize, StoreError>;
    /// Stores the rendered pack of an incident (derived data: not flushed here, sled's
    /// background flush persists it within `storage.flush_every_ms`).
    fn put_pack(&self, id: &IncidentId, zip: &[u8]) -> Result<(), StoreError>;
    /// Caches derived data (GitHub PR details) under `key` in the cursors tree, outside
    /// any unit (not flushed here).
    fn put_cache(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// The stored pack of an incident.
    fn pack(&self, id: &IncidentId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Cheap liveness probe of the engine for `/readyz`.
    fn check(&self) -> Result<(), StoreError>;
    /// Flushes everything written so far.
    fn flush(&self) -> Result<(), StoreError>;
    /// Takes, or keeps, the leadership of `role` among the processes that share this
    /// store (one CloudWatch poller among replicas). True while this process holds it; a
    /// process that dies lets it go, and another takes it at its next call. sled: always
    /// true (one process).
    fn lead(&self, role: &str) -> Result<bool, StoreError> {
        let _ = role;
        Ok(true)
    }
    /// Claims a piece of work named `key` for this process: true for the first process
    /// that asks, false for every other (one replica renders each version of a pack).
    /// sled: always true.
    fn claim(&self, key: &str) -> Result<bool, StoreError> {
        let _ = key;
        Ok(true)
    }
    /// Changes other processes make, for stores several processes share. `None` (sled):
    /// this process is the only writer.
    fn watch(&self) -> Option<Watcher> {
        None
    }
    /// Every record of the store, in a stable order (export).
    fn export(
        &self,
        sink: &mut dyn FnMut(ExportRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}
