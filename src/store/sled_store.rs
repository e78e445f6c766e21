//! The sled engine. Trees (see README, Storage):
//! `incidents` (id → record), `events` (id ++ 0x00 ++ big-endian seq → event),
//! `stream` (ULID → unattached event), `raw` (ULID → payload), `deliveries`
//! (`source:id` → record), `meta` (schema version, open-incident index).
//! Later issues add `packs` and `cursors`.

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

use super::{DeliveryRecord, ExportRecord, Store, StoreError, WriteTx, SCHEMA_VERSION};
use crate::domain::{Event, Incident, IncidentId};

const META_SCHEMA: &[u8] = b"schema_version";
const META_OPEN: &[u8] = b"open_incidents";
const META_RECENT: &[u8] = b"recently_resolved";
/// How long a resolved incident stays in the recently-resolved index.
const RECENT_HOURS: i64 = 24;

/// sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    incidents: sled::Tree,
    events: sled::Tree,
    stream: sled::Tree,
    raw: sled::Tree,
    deliveries: sled::Tree,
    links: sled::Tree,
    cursors: sled::Tree,
    packs: sled::Tree,
    sessions: sled::Tree,
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

/// `incident id ++ 0x00`: the prefix of an incident's events (ids never contain 0x00).
fn event_prefix(id: &IncidentId) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.as_str().len() + 9);
    k.extend_from_slice(id.as_str().as_bytes());
    k.push(0);
    k
}

fn event_key(id: &IncidentId, seq: u64) -> Vec<u8> {
    let mut k = event_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
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
            events: db.open_tree("events")?,
            stream: db.open_tree("stream")?,
            raw: db.open_tree("raw")?,
            deliveries: db.open_tree("deliveries")?,
            links: db.open_tree("links")?,
            cursors: db.open_tree("cursors")?,
            packs: db.open_tree("packs")?,
            sessions: db.open_tree("sessions")?,
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
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(store)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// The transactional view handed to [`Store::write`] callers.
struct SledTx<'a> {
    incidents: &'a TransactionalTree,
    events: &'a TransactionalTree,
    stream: &'a TransactionalTree,
    raw: &'a TransactionalTree,
    deliveries: &'a TransactionalTree,
    links: &'a TransactionalTree,
    cursors: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

impl SledTx<'_> {
    fn open_set(&self) -> Result<Vec<IncidentId>, StoreError> {
        match self.meta.get(META_OPEN)? {
            Some(v) => decode(META_OPEN, &v),
            None => Ok(Vec::new()),
        }
    }

    fn recent_set(&self) -> Result<Vec<(IncidentId, DateTime<Utc>)>, StoreError> {
        match self.meta.get(META_RECENT)? {
            Some(v) => decode(META_RECENT, &v),
            None => Ok(Vec::new()),
        }
    }

    /// Keeps the recently-resolved index: resolved incidents enter it, reopened ones
    /// leave it, entries older than a day fall out.
    fn update_recent(&self, incident: &Incident) -> Result<(), StoreError> {
        let mut recent = self.recent_set()?;
        let before = recent.clone();
        recent.retain(|(id, _)| id != &incident.id);
        if let (false, Some(at)) = (incident.status.is_open(), incident.resolved_at) {
            recent.push((incident.id.clone(), at));
        }
        let cutoff = Utc::now() - chrono::Duration::hours(RECENT_HOURS);
        recent.retain(|(_, at)| *at >= cutoff);
        if recent != before {
            self.meta.insert(META_RECENT, encode(&recent)?)?;
        }
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
        self.incidents
            .get(id.as_str().as_bytes())?
            .map(|v| decode(id.as_str().as_bytes(), &v))
            .transpose()
    }

    fn open_incidents(&self) -> Result<Vec<IncidentId>, StoreError> {
        self.open_set()
    }

    fn recently_resolved(&self) -> Result<Vec<IncidentId>, StoreError> {
        Ok(self.recent_set()?.into_iter().map(|(id, _)| id).collect())
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
        self.incidents
            .insert(incident.id.as_str().as_bytes(), encode(incident)?)?;
        let mut open = self.open_set()?;
        let was_open = open.contains(&incident.id);
        if incident.status.is_open() != was_open {
            if was_open {
                open.retain(|id| id != &incident.id);
            } else {
                open.push(incident.id.clone());
                open.sort();
            }
            self.meta.insert(META_OPEN, encode(&open)?)?;
        }
        self.update_recent(incident)
    }

    fn put_incident_event(&mut self, seq: u64, event: &Event) -> Result<(), StoreError> {
        let id = event.incident_id.as_ref().ok_or_else(|| {
            StoreError::Engine("put_incident_event: event has no incident id".into())
        })?;
        self.events.insert(event_key(id, seq), encode(event)?)?;
        Ok(())
    }

    fn put_stream_event(&mut self, event: &Event) -> Result<(), StoreError> {
        self.stream
            .insert(&event.id.to_bytes()[..], encode(event)?)?;
        Ok(())
    }

    fn remove_stream_event(&mut self, id: Ulid) -> Result<(), StoreError> {
        self.stream.remove(&id.to_bytes()[..])?;
        Ok(())
    }

    fn put_raw(&mut self, id: Ulid, payload: &[u8]) -> Result<(), StoreError> {
        self.raw.insert(&id.to_bytes()[..], payload)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn write(
        &self,
        work: &mut dyn FnMut(&mut dyn WriteTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // sled wants an `Fn` closure; the caller's work is `FnMut`, called once per attempt.
        let work = RefCell::new(work);
        let trees = (
            &self.incidents,
            &self.events,
            &self.stream,
            &self.raw,
            &self.deliveries,
            &self.links,
            &self.cursors,
            &self.meta,
        );
        let result = trees.transaction(
            |(incidents, events, stream, raw, deliveries, links, cursors, meta)| {
                let mut tx = SledTx {
                    incidents,
                    events,
                    stream,
                    raw,
                    deliveries,
                    links,
                    cursors,
                    meta,
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
        let mut last = None;
        for attempt in 0..3 {
            match self.db.flush() {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, attempt, "flush failed");
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
                }
            }
        }
        Err(last
            .map(StoreError::from)
            .unwrap_or(StoreError::Unavailable("flush failed".into())))
    }

    fn incident(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        self.incidents
            .get(id.as_str().as_bytes())?
            .map(|v| decode(id.as_str().as_bytes(), &v))
            .transpose()
    }

    fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.incidents
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn open_incident_count(&self) -> Result<usize, StoreError> {
        match self.meta.get(META_OPEN)? {
            Some(v) => Ok(decode::<Vec<IncidentId>>(META_OPEN, &v)?.len()),
            None => Ok(0),
        }
    }

    fn incident_events(&self, id: &IncidentId) -> Result<Vec<Event>, StoreError> {
        self.events
            .scan_prefix(event_prefix(id))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn stream_since(&self, since: DateTime<Utc>) -> Result<Vec<Event>, StoreError> {
        let ms = u64::try_from(since.timestamp_millis()).unwrap_or(0);
        let start = Ulid::from_parts(ms, 0).to_bytes();
        self.stream
            .range(&start[..]..)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn stream_events(&self) -> Result<Vec<Event>, StoreError> {
        self.stream
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
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
            schema: SCHEMA_VERSION,
            generator: concat!("incidentpost ", env!("CARGO_PKG_VERSION")).to_owned(),
        })?;
        for kv in self.incidents.iter() {
            let (k, v) = kv?;
            let incident: Incident = decode(&k, &v)?;
            let id = incident.id.clone();
            sink(ExportRecord::Incident(Box::new(incident)))?;
            for kv in self.events.scan_prefix(event_prefix(&id)) {
                let (k, v) = kv?;
                let seq = k
                    .get(k.len().saturating_sub(8)..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
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
        let store = SledStore::open(dir.path(), 500, 1 << 20).unwrap();
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
        let store = SledStore::open(dir.path(), 500, 1 << 20).unwrap();
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
    fn an_aborted_unit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 500, 1 << 20).unwrap();
        let err = store
            .write(&mut |tx| {
                tx.put_incident(&incident("A", IncidentStatus::Triggered))?;
                Err(StoreError::Unavailable("boom".into()))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)));
        assert!(store.incidents().unwrap().is_empty());
    }

    #[test]
    fn a_data_dir_from_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 500, 1 << 20).unwrap();
            store
                .meta
                .insert(META_SCHEMA, &99u32.to_be_bytes())
                .unwrap();
            store.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), 500, 1 << 20).err().unwrap();
        assert!(matches!(
            err,
            StoreError::SchemaMismatch {
                found: 99,
                expected: SCHEMA_VERSION
            }
        ));
    }

    #[test]
    fn old_deliveries_are_pruned_and_recent_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 500, 1 << 20).unwrap();
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
