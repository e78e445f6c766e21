//! The sled engine, layout 3. Trees (see README, Storage):
//! `incidents` (id → record), `timeline` (id ++ 0x00 ++ occurred_at ++ big-endian seq →
//! event: an incident's events by time, so one write files an event and one range reads
//! a page), `stream` (ULID → unattached event), `raw` (ULID → payload), `deliveries`
//! (`source:id` → record), `links`, `cursors`, `packs`, `sessions`, `meta` (schema
//! version, incident count) and `index`: the key-range indexes every read pages over, one
//! tree with a one-byte prefix per index (sled transactions take at most 14 trees):
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `o` | incident id | — (open incidents) |
//! | `r` | incident id | resolved_at (resolved incidents, pruned after a day) |
//! | `i` | triggered_at ++ id | — (incidents by trigger time) |
//! | `s` | occurred_at ++ ULID | — (the stream by time) |
//! | `c` | occurred_at ++ ULID | — (the stream's change events by time) |
//! | `f` | incident id ++ 0x00 ++ ULID | — (stream events naming an incident) |
//!
//! Times are big-endian milliseconds with the sign bit flipped, so keys sort by time.

use std::cell::RefCell;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;
use ulid::Ulid;

use super::{
    Chunk, DeliveryRecord, ExportRecord, Keyed, Page, Store, StoreError, StreamPart, WriteTx,
    EXPORT_FORMAT,
};
use crate::domain::{Event, Incident, IncidentId, KEY_INCIDENT_REF, KEY_PAGERDUTY_INCIDENT};

/// The on-disk layout this build reads and writes, checked at open. Older versions are
/// upgraded in place: 1 (before the key-range indexes) and 2 (incident events by append
/// position, with a separate index by time). sled's own; PostgreSQL's is in `pg_store`.
pub(crate) const SCHEMA_VERSION: u32 = 3;

const META_SCHEMA: &[u8] = b"schema_version";
const META_OPEN_V1: &[u8] = b"open_incidents";
const META_RECENT_V1: &[u8] = b"recently_resolved";
const META_INCIDENT_COUNT: &[u8] = b"incident_count";
/// The tree of an incident's events in schemas 1 and 2 (id ++ 0x00 ++ seq).
const EVENTS_V2: &str = "events";

const IX_OPEN: u8 = b'o';
const IX_RECENT: u8 = b'r';
const IX_INCIDENT_TIME: u8 = b'i';
/// Layout 2's index of an incident's events by time (layout 3 keys `timeline` that way).
const IX_EVENT_TIME_V2: u8 = b'e';
const IX_STREAM_TIME: u8 = b's';
const IX_STREAM_CHANGE: u8 = b'c';
const IX_STREAM_REF: u8 = b'f';
const IX_STREAM_FILED: u8 = b'v';

/// A time as 8 bytes that sort like the time.
fn time_key(t: DateTime<Utc>) -> [u8; 8] {
    ((t.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of_key(b: &[u8]) -> Option<DateTime<Utc>> {
    let raw = u64::from_be_bytes(<[u8; 8]>::try_from(b).ok()?) ^ (1 << 63);
    DateTime::<Utc>::from_timestamp_millis(raw as i64)
}

fn ix_key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn incident_time_key(i: &Incident) -> Vec<u8> {
    ix_key(
        IX_INCIDENT_TIME,
        &[&time_key(i.triggered_at), i.id.as_str().as_bytes()],
    )
}

/// An event's key in `timeline`: its incident's prefix, then its time and position.
fn timeline_key(id: &IncidentId, occurred_at: DateTime<Utc>, seq: u64) -> Vec<u8> {
    let mut k = event_prefix(id);
    k.extend_from_slice(&time_key(occurred_at));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The append position at the end of a `timeline` (or layout 2 `events`) key.
fn seq_of_key(k: &[u8]) -> u64 {
    k.get(k.len().saturating_sub(8)..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// The index keys of an unattached event.
fn stream_index_keys(e: &Event) -> Vec<Vec<u8>> {
    let t = time_key(e.occurred_at);
    let ulid = e.id.to_bytes();
    let mut keys = vec![ix_key(IX_STREAM_TIME, &[&t, &ulid])];
    if e.kind.is_change() {
        keys.push(ix_key(IX_STREAM_CHANGE, &[&t, &ulid]));
    }
    let mut named: Vec<&str> = [KEY_INCIDENT_REF, KEY_PAGERDUTY_INCIDENT]
        .iter()
        .filter_map(|k| e.keys.get(*k).map(String::as_str))
        .filter(|v| IncidentId::parse(v).is_ok())
        .collect();
    named.dedup();
    for r in named {
        keys.push(ix_key(IX_STREAM_REF, &[r.as_bytes(), &[0], &ulid]));
    }
    keys
}

/// The key that files a stream event under `filed_under` (see [`StreamPart::Filed`]).
fn filed_key(filed_under: &[u8], t: &[u8; 8], ulid: &[u8; 16]) -> Vec<u8> {
    ix_key(IX_STREAM_FILED, &[filed_under, &[0], t, ulid])
}

/// The ULID at the end of a stream index key.
fn ulid_of_key(k: &[u8]) -> Option<Ulid> {
    let tail = k.get(k.len().checked_sub(16)?..)?;
    Some(Ulid::from_bytes(<[u8; 16]>::try_from(tail).ok()?))
}

/// The first key past every key that starts with `prefix` (which ends in 0x00).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The first key after `after` (exclusive) when continuing, else `from`.
fn start_after(after: Option<&[u8]>, from: Vec<u8>) -> Vec<u8> {
    match after {
        Some(k) => {
            let mut k = k.to_vec();
            // The smallest key greater than `k`.
            k.push(0);
            k
        }
        None => from,
    }
}

/// The cursor strings of the API: the hex of an index key.
fn cursor_string(k: &[u8]) -> String {
    hex::encode(k)
}

fn cursor_key(cursor: Option<&str>, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(c) = cursor else {
        return Ok(None);
    };
    match hex::decode(c) {
        Ok(k) if k.starts_with(prefix) => Ok(Some(k)),
        _ => Err(StoreError::BadCursor),
    }
}

/// [`cursor_key`] for an incident's events page, which also takes the cursors schema 2
/// handed out: its index key, `e` ++ the key `timeline` has now, so a client paging
/// across the upgrade goes on where it was.
fn events_cursor_key(cursor: Option<&str>, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    match cursor_key(cursor, prefix) {
        Err(StoreError::BadCursor) => {
            let k = cursor.and_then(|c| hex::decode(c).ok()).unwrap_or_default();
            match k.split_first() {
                Some((&IX_EVENT_TIME_V2, rest)) if rest.starts_with(prefix) => {
                    Ok(Some(rest.to_vec()))
                }
                _ => Err(StoreError::BadCursor),
            }
        }
        other => other,
    }
}

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    incidents: sled::Tree,
    timeline: sled::Tree,
    stream: sled::Tree,
    raw: sled::Tree,
    deliveries: sled::Tree,
    links: sled::Tree,
    cursors: sled::Tree,
    packs: sled::Tree,
    sessions: sled::Tree,
    index: sled::Tree,
    meta: sled::Tree,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

impl From<UnabortableTransactionError> for StoreError {
    fn from(e: UnabortableTransactionError) -> Self {
        match e {
            UnabortableTransactionError::Conflict => StoreError::Conflict,
            UnabortableTransactionError::Storage(e) => e.into(),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Engine(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

/// Writes per batch in the upgrades.
const BATCH: u64 = 10_000;

/// Removes the keys `keys` yields from `tree`, [`BATCH`] to a batch: sled keeps what a
/// batch replaces in memory until the batch ends (one batch of a million removals grew
/// the process to 4 GiB).
fn remove_in_batches(tree: &sled::Tree, keys: sled::Iter) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for (n, kv) in (1u64..).zip(keys) {
        let (k, _) = kv?;
        batch.remove(k);
        if n % BATCH == 0 {
            tree.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// `incident id ++ 0x00`: the prefix of an incident's events (ids never contain 0x00).
fn event_prefix(id: &IncidentId) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.as_str().len() + 9);
    k.extend_from_slice(id.as_str().as_bytes());
    k.push(0);
    k
}

impl SledStore {
    /// Opens (or creates) the database under `path` and checks its schema version.
    pub fn open(
        path: &Path,
        flush_every_ms: u64,
        cache_capacity_bytes: u64,
    ) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(flush_every_ms))
            .cache_capacity(cache_capacity_bytes)
            .open()?;
        let store = SledStore {
            incidents: db.open_tree("incidents")?,
            timeline: db.open_tree("timeline")?,
            stream: db.open_tree("stream")?,
            raw: db.open_tree("raw")?,
            deliveries: db.open_tree("deliveries")?,
            links: db.open_tree("links")?,
            cursors: db.open_tree("cursors")?,
            packs: db.open_tree("packs")?,
            sessions: db.open_tree("sessions")?,
            index: db.open_tree("index")?,
            meta: db.open_tree("meta")?,
            db,
        };
        match store.meta.get(META_SCHEMA)? {
            None => {
                store
                    .meta
                    .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                store.db.flush()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                if found == 1 {
                    store.migrate_from_v1()?;
                    store.migrate_from_v2()?;
                } else if found == 2 {
                    store.migrate_from_v2()?;
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                store.remove_v2_leftovers()?;
            }
        }
        Ok(store)
    }

    /// Schema 1 kept the open and recently-resolved sets as one value each and had no
    /// key-range indexes: build them from the records (once; idempotent if interrupted,
    /// the version is written last).
    fn migrate_from_v1(&self) -> Result<(), StoreError> {
        tracing::info!("upgrading the data directory from schema 1 to 2: building indexes");
        let started = std::time::Instant::now();
        let mut incidents = 0u64;
        for kv in self.incidents.iter() {
            let (k, v) = kv?;
            let i: Incident = decode(&k, &v)?;
            self.index.insert(incident_time_key(&i), &[])?;
            if i.status.is_open() {
                self.index
                    .insert(ix_key(IX_OPEN, &[i.id.as_str().as_bytes()]), &[])?;
            } else if let Some(at) = i.resolved_at {
                self.index.insert(
                    ix_key(IX_RECENT, &[i.id.as_str().as_bytes()]),
                    &time_key(at),
                )?;
            }
            incidents += 1;
        }
        // Schema 1 kept an incident's events in `events` (id ++ 0x00 ++ seq), as schema 2
        // did: the next upgrade files them by time (and counts them), so there is no
        // index of them to build.
        let mut streamed = 0u64;
        for kv in self.stream.iter() {
            let (k, v) = kv?;
            let e: Event = decode(&k, &v)?;
            for key in stream_index_keys(&e) {
                self.index.insert(key, &[])?;
            }
            streamed += 1;
        }
        self.meta
            .insert(META_INCIDENT_COUNT, &incidents.to_be_bytes())?;
        self.meta.remove(META_OPEN_V1)?;
        self.meta.remove(META_RECENT_V1)?;
        self.meta.insert(META_SCHEMA, &2u32.to_be_bytes())?;
        self.db.flush()?;
        tracing::info!(
            incidents,
            stream = streamed,
            secs = started.elapsed().as_secs_f64(),
            "upgrade to schema 2 done"
        );
        Ok(())
    }

    /// Schema 2 kept an incident's events in `events` (id ++ 0x00 ++ seq) and indexed them
    /// by time in `index` (prefix `e`): two writes per event, and a page read two
    /// lookups per row. Schema 3 keys `timeline` by time. Copies each event, flushes and
    /// writes the version; only then are the old tree and index keys removed (by
    /// [`Self::remove_v2_leftovers`], which every open runs). An upgrade interrupted
    /// during the copy runs again (the copies are the same keys and values); one
    /// interrupted during the removal is a schema-3 directory whose next open finishes
    /// it. So a directory that says schema 2 always holds all of its schema-2 events:
    /// going back to the previous release before the version is written loses nothing,
    /// and after it that release refuses the directory instead of showing half of it.
    fn migrate_from_v2(&self) -> Result<(), StoreError> {
        let old = self.db.open_tree(EVENTS_V2)?;
        // (No count up front: sled counts a tree by reading all of it.)
        tracing::info!(
            "upgrading the data directory from schema 2 to 3: filing incident events by time"
        );
        let started = std::time::Instant::now();
        let mut copied = 0u64;
        let mut batch = sled::Batch::default();
        for kv in old.iter() {
            let (k, v) = kv?;
            let e: Event = decode(&k, &v)?;
            // The old key names the incident (id ++ 0x00 ++ seq): it is where the event
            // was filed, whatever the record says.
            let id = k
                .len()
                .checked_sub(9)
                .and_then(|end| std::str::from_utf8(&k[..end]).ok())
                .and_then(|id| IncidentId::parse(id).ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    message: "a schema-2 event key that names no incident".into(),
                })?;
            let key = timeline_key(&id, e.occurred_at, seq_of_key(&k));
            if e.incident_id.as_ref() == Some(&id) {
                batch.insert(key, v);
            } else {
                let mut e = e;
                e.incident_id = Some(id);
                batch.insert(key, encode(&e)?);
            }
            copied += 1;
            if copied % BATCH == 0 {
                self.timeline.apply_batch(std::mem::take(&mut batch))?;
            }
            if copied % 100_000 == 0 {
                tracing::info!(events = copied, "upgrade: incident events filed by time");
            }
        }
        self.timeline.apply_batch(batch)?;
        drop(old);
        // The copies and the version are on disk before the originals go.
        self.meta
            .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
        self.db.flush()?;
        tracing::info!(
            events = copied,
            secs = started.elapsed().as_secs_f64(),
            "upgrade to schema 3: events copied; removing the schema-2 copies"
        );
        self.remove_v2_leftovers()?;
        tracing::info!(
            secs = started.elapsed().as_secs_f64(),
            "upgrade to schema 3 done"
        );
        Ok(())
    }

    /// An incident's `timeline` entries (seq, key, value) in append order: they are
    /// filed by time, and the contract (the full list, the export) is append order.
    fn timeline_by_seq(
        &self,
        id: &IncidentId,
    ) -> Result<Vec<(u64, sled::IVec, sled::IVec)>, StoreError> {
        let mut entries = self
            .timeline
            .scan_prefix(event_prefix(id))
            .map(|kv| kv.map(|(k, v)| (seq_of_key(&k), k, v)))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_unstable_by_key(|(seq, _, _)| *seq);
        Ok(entries)
    }

    /// Whether schema 2's `events` tree is still there.
    fn has_v2_events_tree(&self) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|n| n == EVENTS_V2.as_bytes())
    }

    /// Removes what schema 2 kept of incident events once schema 3 holds them (after an
    /// upgrade, or on the open after one interrupted while removing): cheap to ask on
    /// every open, a tree name and one index key.
    fn remove_v2_leftovers(&self) -> Result<(), StoreError> {
        let has_tree = self.has_v2_events_tree();
        let has_keys = self
            .index
            .scan_prefix([IX_EVENT_TIME_V2])
            .next()
            .transpose()?
            .is_some();
        if !has_tree && !has_keys {
            return Ok(());
        }
        remove_in_batches(&self.index, self.index.scan_prefix([IX_EVENT_TIME_V2]))?;
        if has_tree {
            let old = self.db.open_tree(EVENTS_V2)?;
            // Emptied first: `drop_tree` of a full tree reads every node into memory (680
            // MiB of resident memory kept after dropping a million events).
            remove_in_batches(&old, old.iter())?;
            drop(old);
            self.db.drop_tree(EVENTS_V2)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Reads index keys of `prefix` after `after` (exclusive), in order, while `take`
    /// says so, at most `limit`.
    fn index_keys(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for kv in self.index.range(start..end) {
            let (k, _) = kv?;
            out.push(k.to_vec());
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The events of stream index keys read with `limit`: a full read may continue.
    fn stream_chunk(&self, keys: Vec<Vec<u8>>, limit: usize) -> Result<Chunk, StoreError> {
        let next = (keys.len() >= limit)
            .then(|| keys.last().cloned())
            .flatten();
        Ok(Chunk {
            items: self.stream_events_at(keys)?,
            next,
        })
    }

    fn stream_events_at(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Keyed>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(id) = ulid_of_key(&k) else { continue };
            // An index entry without its event (removed in between): skip it.
            if let Some(v) = self.stream.get(&id.to_bytes()[..])? {
                out.push((k, decode(&id.to_bytes(), &v)?));
            }
        }
        Ok(out)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// The transactional view handed to [`Store::write`] callers.
struct SledTx<'a> {
    incidents: &'a TransactionalTree,
    timeline: &'a TransactionalTree,
    stream: &'a TransactionalTree,
    raw: &'a TransactionalTree,
    deliveries: &'a TransactionalTree,
    links: &'a TransactionalTree,
    cursors: &'a TransactionalTree,
    index: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    /// Incident records as this unit has read or written them, decoded: a PagerDuty
    /// event reads its incident three times (the recovered-twin check, the attach, the
    /// old record `put_incident` replaces), and decoding it each time was 8 % of the
    /// committer's CPU. It lives for one attempt of the transaction, never past a retry.
    incident_cache: RefCell<std::collections::HashMap<IncidentId, Option<Incident>>>,
}

impl SledTx<'_> {
    /// Files a stream event: its time key's value remembers where (for its removal), and
    /// the filing key lists it under `filed_under`.
    fn set_filing(
        &self,
        t: &[u8; 8],
        ulid: &[u8; 16],
        filed_under: &str,
    ) -> Result<(), StoreError> {
        self.index
            .insert(ix_key(IX_STREAM_TIME, &[t, ulid]), filed_under.as_bytes())?;
        self.index
            .insert(filed_key(filed_under.as_bytes(), t, ulid), &[])?;
        Ok(())
    }

    fn bump_incident_count(&self) -> Result<(), StoreError> {
        let n = self
            .meta
            .get(META_INCIDENT_COUNT)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        self.meta
            .insert(META_INCIDENT_COUNT, &(n + 1).to_be_bytes())?;
        Ok(())
    }
}

impl WriteTx for SledTx<'_> {
    fn delivery(&self, key: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        self.deliveries
            .get(key.as_bytes())?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    fn put_delivery(&mut self, key: &str, record: &DeliveryRecord) -> Result<(), StoreError> {
        self.deliveries.insert(key.as_bytes(), encode(record)?)?;
        Ok(())
    }

    fn incident(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        if let Some(cached) = self.incident_cache.borrow().get(id) {
            return Ok(cached.clone());
        }
        let read: Option<Incident> = self
            .incidents
            .get(id.as_str().as_bytes())?
            .map(|v| decode(id.as_str().as_bytes(), &v))
            .transpose()?;
        self.incident_cache
            .borrow_mut()
            .insert(id.clone(), read.clone());
        Ok(read)
    }

    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .cursors
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn put_cursor(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.cursors.insert(key.as_bytes(), value.as_bytes())?;
        Ok(())
    }

    fn link(&self, key: &str) -> Result<Option<IncidentId>, StoreError> {
        self.links
            .get(key.as_bytes())?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    fn put_link(&mut self, key: &str, incident: &IncidentId) -> Result<(), StoreError> {
        self.links.insert(key.as_bytes(), encode(incident)?)?;
        Ok(())
    }

    fn put_incident(&mut self, incident: &Incident) -> Result<(), StoreError> {
        let old = self.incident(&incident.id)?;
        self.incidents
            .insert(incident.id.as_str().as_bytes(), encode(incident)?)?;
        self.incident_cache
            .borrow_mut()
            .insert(incident.id.clone(), Some(incident.clone()));
        let id = incident.id.as_str().as_bytes();
        match &old {
            None => self.bump_incident_count()?,
            Some(o) if o.triggered_at != incident.triggered_at => {
                self.index.remove(incident_time_key(o))?;
            }
            Some(_) => {}
        }
        if old
            .as_ref()
            .is_none_or(|o| o.triggered_at != incident.triggered_at)
        {
            self.index.insert(incident_time_key(incident), &[])?;
        }
        let was_open = old.as_ref().is_some_and(|o| o.status.is_open());
        if incident.status.is_open() {
            if !was_open {
                self.index.insert(ix_key(IX_OPEN, &[id]), &[])?;
                self.index.remove(ix_key(IX_RECENT, &[id]))?;
            }
        } else {
            if was_open {
                self.index.remove(ix_key(IX_OPEN, &[id]))?;
            }
            let resolved_changed = old
                .as_ref()
                .is_none_or(|o| o.resolved_at != incident.resolved_at);
            if let (Some(at), true) = (incident.resolved_at, resolved_changed || was_open) {
                self.index.insert(ix_key(IX_RECENT, &[id]), &time_key(at))?;
            }
        }
        Ok(())
    }

    fn put_incident_event(&mut self, seq: u64, event: &Event) -> Result<(), StoreError> {
        let id = event.incident_id.as_ref().ok_or_else(|| {
            StoreError::Engine("put_incident_event: event has no incident id".into())
        })?;
        self.timeline
            .insert(timeline_key(id, event.occurred_at, seq), encode(event)?)?;
        Ok(())
    }

    fn put_stream_event(&mut self, event: &Event) -> Result<(), StoreError> {
        self.stream
            .insert(&event.id.to_bytes()[..], encode(event)?)?;
        for k in stream_index_keys(event) {
            self.index.insert(k, &[])?;
        }
        Ok(())
    }

    fn file_stream_event(&mut self, event: &Event, filed_under: &str) -> Result<(), StoreError> {
        self.put_stream_event(event)?;
        self.set_filing(
            &time_key(event.occurred_at),
            &event.id.to_bytes(),
            filed_under,
        )
    }

    fn refile_stream_event(
        &mut self,
        id: Ulid,
        occurred_at: DateTime<Utc>,
        filed_under: &str,
    ) -> Result<(), StoreError> {
        let t = time_key(occurred_at);
        let ulid = id.to_bytes();
        // The time key's value is where the event is filed; no key: not in the stream.
        let Some(before) = self.index.get(ix_key(IX_STREAM_TIME, &[&t, &ulid]))? else {
            return Ok(());
        };
        if before == filed_under.as_bytes() {
            return Ok(());
        }
        if !before.is_empty() {
            self.index.remove(filed_key(&before, &t, &ulid))?;
        }
        self.set_filing(&t, &ulid, filed_under)
    }

    fn stream_event(&self, id: Ulid) -> Result<Option<Event>, StoreError> {
        let key = id.to_bytes();
        self.stream
            .get(&key[..])?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    fn remove_stream_event(&mut self, id: Ulid) -> Result<Option<Event>, StoreError> {
        let Some(event) = self.stream_event(id)? else {
            return Ok(None);
        };
        self.stream.remove(&id.to_bytes()[..])?;
        let t = time_key(event.occurred_at);
        let ulid = id.to_bytes();
        if let Some(filed) = self.index.get(ix_key(IX_STREAM_TIME, &[&t, &ulid]))? {
            if !filed.is_empty() {
                self.index.remove(filed_key(&filed, &t, &ulid))?;
            }
        }
        for k in stream_index_keys(&event) {
            self.index.remove(k)?;
        }
        Ok(Some(event))
    }

    fn put_raw(&mut self, id: Ulid, payload: &[u8]) -> Result<(), StoreError> {
        self.raw.insert(&id.to_bytes()[..], payload)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn write(
        &self,
        work: &mut (dyn FnMut(&mut dyn WriteTx) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        // sled wants an `Fn` closure; the caller's work is `FnMut`, called once per attempt.
        let work = RefCell::new(work);
        let trees = (
            &self.incidents,
            &self.timeline,
            &self.stream,
            &self.raw,
            &self.deliveries,
            &self.links,
            &self.cursors,
            &self.index,
            &self.meta,
        );
        let started = std::time::Instant::now();
        let result = trees.transaction(
            |(incidents, timeline, stream, raw, deliveries, links, cursors, index, meta)| {
                let mut tx = SledTx {
                    incidents,
                    timeline,
                    stream,
                    raw,
                    deliveries,
                    links,
                    cursors,
                    index,
                    meta,
                    incident_cache: RefCell::default(),
                };
                let mut work = work.borrow_mut();
                match (*work)(&mut tx) {
                    Ok(()) => Ok(()),
                    Err(StoreError::Conflict) => Err(ConflictableTransactionError::Conflict),
                    Err(e) => Err(ConflictableTransactionError::Abort(e)),
                }
            },
        );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        // The durability point: the caller acknowledges webhooks only after this returns.
        // The unit is committed already; a failed flush is retried before giving up (the
        // caller then answers 503 and the provider's retry is recognized as a duplicate).
        let applied = std::time::Instant::now();
        metrics::histogram!("incidentpost_store_apply_duration_seconds").record(applied - started);
        let mut last = None;
        for attempt in 0..3 {
            match self.db.flush() {
                Ok(_) => {
                    metrics::histogram!("incidentpost_store_flush_duration_seconds")
                        .record(applied.elapsed());
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, attempt, "flush failed");
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
                }
            }
        }
        Err(StoreError::NotFlushed(
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "flush failed".into()),
        ))
    }

    fn incident(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        self.incidents
            .get(id.as_str().as_bytes())?
            .map(|v| decode(id.as_str().as_bytes(), &v))
            .transpose()
    }

    fn incident_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(META_INCIDENT_COUNT)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    fn incidents_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&Incident) -> bool,
    ) -> Result<Page<Incident>, StoreError> {
        let start = vec![IX_INCIDENT_TIME];
        let end = match cursor_key(cursor, &[IX_INCIDENT_TIME])? {
            Some(k) => k,
            None => vec![IX_INCIDENT_TIME + 1],
        };
        let mut items = Vec::with_capacity(limit.min(500));
        let mut last: Option<Vec<u8>> = None;
        let mut more = false;
        for (scanned, kv) in self.index.range(start..end).rev().enumerate() {
            let (k, _) = kv?;
            if items.len() >= limit || scanned >= scan {
                more = true;
                break;
            }
            let id_bytes = &k[9..];
            if let Some(v) = self.incidents.get(id_bytes)? {
                let i: Incident = decode(id_bytes, &v)?;
                if keep(&i) {
                    items.push(i);
                }
            }
            last = Some(k.to_vec());
        }
        Ok(Page {
            items,
            next: if more {
                last.as_deref().map(cursor_string)
            } else {
                None
            },
        })
    }

    fn live_incidents(&self, resolved_since: DateTime<Utc>) -> Result<Vec<Incident>, StoreError> {
        let mut out = Vec::new();
        for kv in self.index.scan_prefix([IX_OPEN]) {
            let (k, _) = kv?;
            if let Some(i) = self.incidents.get(&k[1..])? {
                out.push(decode(&k[1..], &i)?);
            }
        }
        for kv in self.index.scan_prefix([IX_RECENT]) {
            let (k, v) = kv?;
            if time_of_key(&v).is_none_or(|at| at < resolved_since) {
                self.index.remove(&k)?;
                continue;
            }
            if let Some(i) = self.incidents.get(&k[1..])? {
                out.push(decode(&k[1..], &i)?);
            }
        }
        Ok(out)
    }

    fn open_incident_count(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.index.scan_prefix([IX_OPEN]) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    fn incident_events(&self, id: &IncidentId) -> Result<Vec<Event>, StoreError> {
        self.timeline_by_seq(id)?
            .into_iter()
            .map(|(_, k, v)| decode(&k, &v))
            .collect()
    }

    fn incident_events_page(
        &self,
        id: &IncidentId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Event>, StoreError> {
        let prefix = event_prefix(id);
        let start = start_after(
            events_cursor_key(cursor, &prefix)?.as_deref(),
            prefix.clone(),
        );
        let end = prefix_end(&prefix);
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut last = None;
        let mut more = false;
        for kv in self.timeline.range(start..end) {
            let (k, v) = kv?;
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(decode(&k, &v)?);
            last = Some(k);
        }
        Ok(Page {
            items,
            next: if more {
                last.as_deref().map(cursor_string)
            } else {
                None
            },
        })
    }

    fn stream_page(&self, cursor: Option<&str>, limit: usize) -> Result<Page<Event>, StoreError> {
        let start = start_after(
            cursor_key(cursor, &[IX_STREAM_TIME])?.as_deref(),
            vec![IX_STREAM_TIME],
        );
        let keys = self.index_keys(start, vec![IX_STREAM_TIME + 1], limit + 1)?;
        let more = keys.len() > limit;
        let last = keys.get(limit.min(keys.len()).saturating_sub(1)).cloned();
        let items = self
            .stream_events_at(keys.into_iter().take(limit).collect())?
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        Ok(Page {
            items,
            next: if more {
                last.as_deref().map(cursor_string)
            } else {
                None
            },
        })
    }

    fn stream_window(
        &self,
        part: StreamPart,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Chunk, StoreError> {
        let prefix = match &part {
            StreamPart::Changes => vec![IX_STREAM_CHANGE],
            StreamPart::All | StreamPart::NotFiledUnder(_) => vec![IX_STREAM_TIME],
            StreamPart::Filed(under) => ix_key(IX_STREAM_FILED, &[under.as_bytes(), &[0]]),
        };
        let start = start_after(after, [prefix.as_slice(), &time_key(from)].concat());
        // Inclusive of `to`: up to the last ULID of that millisecond.
        let end = [prefix.as_slice(), &time_key(to), &[0xff; 17]].concat();
        if start >= end {
            return Ok(Chunk::default());
        }
        let StreamPart::NotFiledUnder(fingerprint) = &part else {
            let keys = self.index_keys(start, end, limit)?;
            return self.stream_chunk(keys, limit);
        };
        // The time key's value names the filing (`fingerprint:service`; empty: none).
        let filed = format!("{fingerprint}:");
        let mut keys = Vec::new();
        let mut scanned = 0;
        let mut last = None;
        for kv in self.index.range(start..end) {
            let (k, v) = kv?;
            if !v.starts_with(filed.as_bytes()) {
                keys.push(k.to_vec());
            }
            scanned += 1;
            if scanned >= limit {
                last = Some(k.to_vec());
                break;
            }
        }
        Ok(Chunk {
            items: self.stream_events_at(keys)?,
            next: last,
        })
    }

    fn stream_naming(
        &self,
        incident: &IncidentId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Chunk, StoreError> {
        let prefix = ix_key(IX_STREAM_REF, &[incident.as_str().as_bytes(), &[0]]);
        let start = start_after(after, prefix.clone());
        let end = prefix_end(&prefix);
        let keys = self.index_keys(start, end, limit)?;
        self.stream_chunk(keys, limit)
    }

    fn prune_stream(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        let keys = self.index_keys(
            vec![IX_STREAM_TIME],
            ix_key(IX_STREAM_TIME, &[&time_key(cutoff)]),
            limit,
        )?;
        let ids: Vec<Ulid> = keys.iter().filter_map(|k| ulid_of_key(k)).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        self.write(&mut |tx| {
            removed = 0;
            for id in &ids {
                if tx.remove_stream_event(*id)?.is_some() {
                    removed += 1;
                }
            }
            Ok(())
        })?;
        Ok(removed)
    }

    fn delivery(&self, key: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        self.deliveries
            .get(key.as_bytes())?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    fn forget_cursor(&self, key: &str) -> Result<(), StoreError> {
        self.cursors.remove(key.as_bytes())?;
        Ok(())
    }

    fn cursors_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.cursors
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .cursors
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn raw(&self, id: Ulid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.raw.get(&id.to_bytes()[..])?.map(|v| v.to_vec()))
    }

    fn prune_deliveries(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in self.deliveries.iter() {
            let (k, v) = kv?;
            let record: DeliveryRecord = decode(&k, &v)?;
            if record.stored_at < cutoff {
                // Compare-and-swap so a concurrent re-store of the same key is not lost.
                if self
                    .deliveries
                    .compare_and_swap(&k, Some(v), None as Option<&[u8]>)?
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn put_session(&self, key: &str, expires_at: DateTime<Utc>) -> Result<(), StoreError> {
        self.sessions
            .insert(key.as_bytes(), &expires_at.timestamp().to_be_bytes())?;
        // A login must survive a restart right after it.
        self.sessions.flush()?;
        Ok(())
    }

    fn session(&self, key: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let Some(v) = self.sessions.get(key.as_bytes())? else {
            return Ok(None);
        };
        let secs = <[u8; 8]>::try_from(v.as_ref())
            .map(i64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                key: format!("sessions/{key}"),
                message: "expiry is not 8 bytes".into(),
            })?;
        Ok(DateTime::<Utc>::from_timestamp(secs, 0))
    }

    fn delete_session(&self, key: &str) -> Result<(), StoreError> {
        self.sessions.remove(key.as_bytes())?;
        self.sessions.flush()?;
        Ok(())
    }

    fn prune_sessions(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let expired = <[u8; 8]>::try_from(v.as_ref())
                .map(i64::from_be_bytes)
                .map_or(true, |secs| secs <= now.timestamp());
            if expired {
                self.sessions.remove(&k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn put_pack(&self, id: &IncidentId, zip: &[u8]) -> Result<(), StoreError> {
        self.packs.insert(id.as_str().as_bytes(), zip)?;
        Ok(())
    }

    fn put_cache(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.cursors.insert(key.as_bytes(), value.as_bytes())?;
        Ok(())
    }

    fn pack(&self, id: &IncidentId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.packs.get(id.as_str().as_bytes())?.map(|v| v.to_vec()))
    }

    fn check(&self) -> Result<(), StoreError> {
        self.meta.get(META_SCHEMA)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn export(
        &self,
        sink: &mut dyn FnMut(ExportRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use base64::Engine;
        sink(ExportRecord::Header {
            schema: EXPORT_FORMAT,
            generator: concat!("incidentpost ", env!("CARGO_PKG_VERSION")).to_owned(),
        })?;
        for kv in self.incidents.iter() {
            let (k, v) = kv?;
            let incident: Incident = decode(&k, &v)?;
            let id = incident.id.clone();
            sink(ExportRecord::Incident(Box::new(incident)))?;
            // In append order, as PostgreSQL exports them: the same data gives the same
            // file whichever store wrote it.
            for (seq, k, v) in self.timeline_by_seq(&id)? {
                sink(ExportRecord::Event {
                    seq,
                    event: Box::new(decode(&k, &v)?),
                })?;
            }
        }
        for kv in self.stream.iter() {
            let (k, v) = kv?;
            sink(ExportRecord::Stream(Box::new(decode(&k, &v)?)))?;
        }
        for kv in self.raw.iter() {
            let (k, v) = kv?;
            let id = <[u8; 16]>::try_from(k.as_ref())
                .map(Ulid::from_bytes)
                .unwrap_or_default();
            sink(ExportRecord::Raw {
                id,
                payload_base64: base64::engine::general_purpose::STANDARD.encode(&v),
            })?;
        }
        for kv in self.deliveries.iter() {
            let (k, v) = kv?;
            sink(ExportRecord::Delivery {
                key: String::from_utf8_lossy(&k).into_owned(),
                record: decode(&k, &v)?,
            })?;
        }
        for kv in self.links.iter() {
            let (k, v) = kv?;
            sink(ExportRecord::Link {
                key: String::from_utf8_lossy(&k).into_owned(),
                incident: decode(&k, &v)?,
            })?;
        }
        for kv in self.cursors.iter() {
            let (k, v) = kv?;
            sink(ExportRecord::Cursor {
                key: String::from_utf8_lossy(&k).into_owned(),
                value: String::from_utf8_lossy(&v).into_owned(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, IncidentStatus, Source};

    fn incident(id: &str, status: IncidentStatus) -> Incident {
        let now = Utc::now();
        Incident {
            id: IncidentId::parse(id).unwrap(),
            title: "t".into(),
            status,
            service: None,
            severity: None,
            urgency: None,
            priority: None,
            url: None,
            opened_by: Source::Pagerduty,
            triggered_at: now,
            acknowledged_at: None,
            resolved_at: None,
            reopen_count: 0,
            event_count: 0,
            next_seq: 0,
            updated_at: now,
        }
    }

    fn event(incident: &str) -> Event {
        Event {
            id: Ulid::new(),
            source: Source::Pagerduty,
            kind: EventKind::IncidentNote,
            occurred_at: Utc::now(),
            received_at: Utc::now(),
            title: "note".into(),
            service: None,
            severity: None,
            actor: None,
            url: None,
            keys: Default::default(),
            attrs: Default::default(),
            delivery: None,
            raw_id: None,
            incident_id: Some(IncidentId::parse(incident).unwrap()),
            correlation: None,
        }
    }

    #[test]
    fn events_of_one_incident_do_not_leak_into_an_id_that_extends_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        store
            .write(&mut |tx| {
                tx.put_incident(&incident("AB", IncidentStatus::Triggered))?;
                tx.put_incident(&incident("ABC", IncidentStatus::Triggered))?;
                tx.put_incident_event(0, &event("AB"))?;
                tx.put_incident_event(0, &event("ABC"))?;
                tx.put_incident_event(1, &event("ABC"))
            })
            .unwrap();
        let ab = IncidentId::parse("AB").unwrap();
        assert_eq!(store.incident_events(&ab).unwrap().len(), 1);
        assert_eq!(store.open_incident_count().unwrap(), 2);
    }

    #[test]
    fn open_index_follows_status_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        store
            .write(&mut |tx| tx.put_incident(&incident("A", IncidentStatus::Triggered)))
            .unwrap();
        assert_eq!(store.open_incident_count().unwrap(), 1);
        store
            .write(&mut |tx| tx.put_incident(&incident("A", IncidentStatus::Resolved)))
            .unwrap();
        assert_eq!(store.open_incident_count().unwrap(), 0);
    }

    #[test]
    fn a_unit_reads_its_own_incident_writes_and_the_next_unit_reads_what_it_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let id = IncidentId::parse("A").unwrap();
        store
            .write(&mut |tx| {
                assert_eq!(tx.incident(&id)?, None);
                tx.put_incident(&incident("A", IncidentStatus::Triggered))?;
                let mut read = tx.incident(&id)?.expect("the unit's own write");
                assert_eq!(read.status, IncidentStatus::Triggered);
                read.status = IncidentStatus::Resolved;
                read.resolved_at = Some(Utc::now());
                // The record it replaces is the unit's first write: open → resolved moves
                // the incident from the open index to the recent one.
                tx.put_incident(&read)?;
                assert_eq!(tx.incident(&id)?.unwrap().status, IncidentStatus::Resolved);
                Ok(())
            })
            .unwrap();
        assert_eq!(store.open_incident_count().unwrap(), 0);
        assert_eq!(store.incident_count().unwrap(), 1);
        store
            .write(&mut |tx| {
                let stored = tx.incident(&id)?.expect("stored by the last unit");
                assert_eq!(stored.status, IncidentStatus::Resolved);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn an_aborted_unit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let err = store
            .write(&mut |tx| {
                tx.put_incident(&incident("A", IncidentStatus::Triggered))?;
                Err(StoreError::Unavailable("boom".into()))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)));
        assert_eq!(store.incident_count().unwrap(), 0);
    }

    /// Neither schema 2's `events` tree nor its index keys of incident events are left.
    fn assert_no_v2_leftovers(store: &SledStore) {
        assert!(!store.has_v2_events_tree());
        assert_eq!(store.index.scan_prefix([IX_EVENT_TIME_V2]).count(), 0);
    }

    /// Files an incident event as schemas 1 and 2 did: `events` by append position, and
    /// (schema 2) its time in the index.
    fn put_v2_event(store: &SledStore, seq: u64, e: &Event, indexed: bool) {
        let id = e.incident_id.as_ref().unwrap();
        let mut key = event_prefix(id);
        key.extend_from_slice(&seq.to_be_bytes());
        let events = store.db.open_tree(EVENTS_V2).unwrap();
        events.insert(key, encode(e).unwrap()).unwrap();
        if indexed {
            let mut ix = vec![IX_EVENT_TIME_V2];
            ix.extend_from_slice(&timeline_key(id, e.occurred_at, seq));
            store.index.insert(ix, &[]).unwrap();
        }
    }

    #[test]
    fn a_schema_1_data_dir_is_upgraded_in_place_with_its_indexes_built() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = reopen(dir.path());
            let mut stream = event("A");
            stream.incident_id = None;
            store
                .write(&mut |tx| {
                    tx.put_incident(&incident("A", IncidentStatus::Triggered))?;
                    tx.put_incident(&incident("B", IncidentStatus::Resolved))?;
                    tx.put_stream_event(&stream)
                })
                .unwrap();
            put_v2_event(&store, 0, &event("A"), false);
            // What schema 1 had: no index tree, no counter.
            store.index.clear().unwrap();
            store.meta.remove(META_INCIDENT_COUNT).unwrap();
            store.meta.insert(META_OPEN_V1, b"[\"A\"]").unwrap();
            store.meta.insert(META_SCHEMA, &1u32.to_be_bytes()).unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.incident_count().unwrap(), 2);
        assert_eq!(store.open_incident_count().unwrap(), 1);
        let page = store.incidents_page(None, 10, 100, &|_| true).unwrap();
        assert_eq!(page.items.len(), 2);
        let a = IncidentId::parse("A").unwrap();
        assert_eq!(
            store
                .incident_events_page(&a, None, 10)
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(store.stream_page(None, 10).unwrap().items.len(), 1);
        assert!(store.meta.get(META_OPEN_V1).unwrap().is_none());
        assert_no_v2_leftovers(&store);
        drop(store);
        // Opened again: already the current schema, nothing to do. (sled's flusher thread
        // may hold the directory lock a moment after the drop.)
        let store = reopen(dir.path());
        assert_eq!(store.incident_count().unwrap(), 2);
    }

    #[test]
    fn a_schema_2_data_dir_files_its_incident_events_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let a = IncidentId::parse("A").unwrap();
        let base = Utc::now();
        // Appended out of time order: the second event happened first.
        let mut late = event("A");
        late.occurred_at = base;
        late.title = "late".into();
        let mut early = event("A");
        early.occurred_at = base - chrono::Duration::minutes(5);
        early.title = "early".into();
        let mut other = event("AB");
        other.occurred_at = base - chrono::Duration::minutes(9);
        {
            let store = reopen(dir.path());
            store
                .write(&mut |tx| {
                    tx.put_incident(&incident("A", IncidentStatus::Triggered))?;
                    tx.put_incident(&incident("AB", IncidentStatus::Triggered))
                })
                .unwrap();
            put_v2_event(&store, 0, &late, true);
            put_v2_event(&store, 1, &early, true);
            put_v2_event(&store, 0, &other, true);
            // A record without its incident id, filed under A: the key says where.
            let mut orphan = event("A");
            orphan.incident_id = None;
            orphan.occurred_at = base + chrono::Duration::minutes(1);
            orphan.title = "orphan".into();
            let mut key = event_prefix(&a);
            key.extend_from_slice(&2u64.to_be_bytes());
            let events = store.db.open_tree(EVENTS_V2).unwrap();
            events.insert(key, encode(&orphan).unwrap()).unwrap();
            store.meta.insert(META_SCHEMA, &2u32.to_be_bytes()).unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        let version = store.meta.get(META_SCHEMA).unwrap().unwrap();
        assert_eq!(version.as_ref(), &SCHEMA_VERSION.to_be_bytes());
        // Pages go by time; the whole list keeps append order.
        let titles = |events: Vec<Event>| events.into_iter().map(|e| e.title).collect::<Vec<_>>();
        let first = store.incident_events_page(&a, None, 1).unwrap();
        assert_eq!(titles(first.items), ["early"]);
        let second = store
            .incident_events_page(&a, first.next.as_deref(), 1)
            .unwrap();
        assert_eq!(titles(second.items), ["late"]);
        let third = store
            .incident_events_page(&a, second.next.as_deref(), 1)
            .unwrap();
        assert_eq!(titles(third.items), ["orphan"]);
        assert_eq!(third.next, None);
        assert_eq!(
            titles(store.incident_events(&a).unwrap()),
            ["late", "early", "orphan"]
        );
        // A cursor schema 2 handed out (its index key after "early") goes on from there.
        let mut v2_cursor = vec![IX_EVENT_TIME_V2];
        v2_cursor.extend_from_slice(&timeline_key(&a, early.occurred_at, 1));
        let resumed = store
            .incident_events_page(&a, Some(&hex::encode(&v2_cursor)), 10)
            .unwrap();
        assert_eq!(titles(resumed.items), ["late", "orphan"]);
        // ... but not in another incident's events.
        let ab = IncidentId::parse("AB").unwrap();
        assert!(matches!(
            store.incident_events_page(&ab, Some(&hex::encode(&v2_cursor)), 10),
            Err(StoreError::BadCursor)
        ));
        // The export lists an incident's events in append order, as PostgreSQL's does.
        let mut exported = Vec::new();
        store
            .export(&mut |r| {
                if let ExportRecord::Event { seq, event } = r {
                    if event.incident_id.as_ref() == Some(&a) {
                        exported.push((seq, event.title));
                    }
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(
            exported,
            [
                (0, "late".to_owned()),
                (1, "early".into()),
                (2, "orphan".into())
            ]
        );
        assert_eq!(
            store
                .incident_events(&IncidentId::parse("AB").unwrap())
                .unwrap()
                .len(),
            1
        );
        // The old tree and the old index keys are gone.
        assert_no_v2_leftovers(&store);
        // The next append goes after the migrated ones.
        let mut next = event("A");
        next.title = "next".into();
        store
            .write(&mut |tx| tx.put_incident_event(3, &next))
            .unwrap();
        assert_eq!(
            titles(store.incident_events(&a).unwrap()),
            ["late", "early", "orphan", "next"]
        );
    }

    #[test]
    fn an_upgrade_stopped_while_removing_the_old_events_is_finished_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let a = IncidentId::parse("A").unwrap();
        let mut e = event("A");
        e.title = "kept".into();
        {
            let store = reopen(dir.path());
            store
                .write(&mut |tx| {
                    tx.put_incident(&incident("A", IncidentStatus::Triggered))?;
                    tx.put_incident_event(0, &e)
                })
                .unwrap();
            // What a crash after the copy and the version leaves: schema 3 says the
            // directory, and schema 2's tree and index keys are still there.
            put_v2_event(&store, 0, &e, true);
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_no_v2_leftovers(&store);
        let events = store.incident_events(&a).unwrap();
        assert_eq!(events.len(), 1, "nothing copied twice, nothing lost");
        assert_eq!(events[0].title, "kept");
    }

    /// Opens a directory just closed, waiting for sled to let go of its lock (its
    /// threads hold the directory a moment after the last handle is dropped).
    fn open_when_unlocked(path: &std::path::Path) -> Result<SledStore, StoreError> {
        for _ in 0..100 {
            match SledStore::open(path, 500, 1 << 20) {
                Err(e) if e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other,
            }
        }
        panic!("the directory stayed locked for 2 s")
    }

    fn reopen(path: &std::path::Path) -> SledStore {
        open_when_unlocked(path).unwrap_or_else(|e| panic!("reopening: {e}"))
    }

    #[test]
    fn a_data_dir_from_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = reopen(dir.path());
            store
                .meta
                .insert(META_SCHEMA, &99u32.to_be_bytes())
                .unwrap();
            store.flush().unwrap();
        }
        let err = open_when_unlocked(dir.path()).err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::SchemaMismatch {
                    found: 99,
                    expected: SCHEMA_VERSION
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn old_deliveries_are_pruned_and_recent_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path());
        let now = Utc::now();
        store
            .write(&mut |tx| {
                let old = DeliveryRecord {
                    stored_at: now - chrono::Duration::days(30),
                    event_ids: vec![],
                };
                let new = DeliveryRecord {
                    stored_at: now,
                    event_ids: vec![],
                };
                tx.put_delivery("pagerduty:old", &old)?;
                tx.put_delivery("pagerduty:new", &new)
            })
            .unwrap();
        assert_eq!(
            store
                .prune_deliveries(now - chrono::Duration::days(7))
                .unwrap(),
            1
        );
        let mut seen = None;
        store
            .write(&mut |tx| {
                seen = Some((
                    tx.delivery("pagerduty:old")?.is_some(),
                    tx.delivery("pagerduty:new")?.is_some(),
                ));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, Some((false, true)));
    }
}
