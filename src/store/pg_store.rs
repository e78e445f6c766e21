//! The PostgreSQL engine (`storage.backend = "postgres"`): the same [`Store`] as sled, on
//! a database that managed services and replication already make highly available.
//!
//! - **Schema** in `MIGRATIONS`, embedded and run at open inside one transaction under an
//!   advisory lock (replicas starting together migrate once); `meta.schema_version` is
//!   checked as sled's is.
//! - **A unit is one transaction** (READ COMMITTED): reads inside it see its own writes;
//!   an incident read in a unit is locked (`SELECT … FOR UPDATE`), so two replicas'
//!   updates of one incident serialize and its sequence numbers stay dense. A delivery key
//!   is a primary key: when two replicas store the same delivery at once, the loser's
//!   insert fails, its unit is retried from scratch and finds the delivery: a duplicate.
//!   Serialization failures and deadlocks are retried the same way.
//! - **Connections** come from a small pool (`storage.postgres.max_connections`) of the
//!   synchronous `postgres` client. The client drives its own runtime, which must not be
//!   started inside tokio's: a call from a tokio thread runs on a short-lived scoped
//!   thread, a call from the committer's own thread runs where it is.
//!   A broken connection is replaced on the next call; while the database is down every
//!   call fails with [`StoreError::Unavailable`] (webhooks answer 503, `/readyz` fails)
//!   and the service resumes when it is back, without a restart.
//! - **Keys and cursors** have the shape of sled's (big-endian time with the sign bit
//!   flipped, then the id), so paging cursors stay opaque strings.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{Json, ToSql};
use postgres::{Client, GenericClient, NoTls, Row, Statement};
use ulid::Ulid;

use super::{
    Chunk, DeliveryRecord, ExportRecord, Keyed, Page, Store, StoreChange, StoreError, StreamPart,
    Watcher, WriteTx, EXPORT_FORMAT,
};
use crate::domain::{Event, Incident, IncidentId, KEY_INCIDENT_REF, KEY_PAGERDUTY_INCIDENT};

/// The schema version this build reads and writes (the last migration's). Numbered from
/// 2, sled's version when PostgreSQL came; sled's layout has its own number since.
const SCHEMA_VERSION: u32 = 2;

/// The schema, one migration per version (index 0 brings an empty database to version 2).
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE incidents (
    id text PRIMARY KEY,
    open boolean NOT NULL,
    triggered_at timestamptz NOT NULL,
    resolved_at timestamptz,
    record jsonb NOT NULL
);
CREATE INDEX incidents_by_time ON incidents (triggered_at DESC, id DESC);
CREATE INDEX incidents_open ON incidents (id) WHERE open;
CREATE INDEX incidents_resolved ON incidents (resolved_at) WHERE NOT open;
CREATE TABLE incident_events (
    incident_id text NOT NULL,
    seq bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    event jsonb NOT NULL,
    PRIMARY KEY (incident_id, seq)
);
CREATE INDEX incident_events_by_time ON incident_events (incident_id, occurred_at, seq);
CREATE TABLE stream (
    id text PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    change boolean NOT NULL,
    filed_under text,
    event jsonb NOT NULL
);
CREATE INDEX stream_by_time ON stream (occurred_at, id);
CREATE INDEX stream_changes ON stream (occurred_at, id) WHERE change;
CREATE INDEX stream_filed ON stream (filed_under, occurred_at, id) WHERE filed_under IS NOT NULL;
CREATE TABLE stream_refs (
    incident_id text NOT NULL,
    event_id text NOT NULL REFERENCES stream (id) ON DELETE CASCADE,
    PRIMARY KEY (incident_id, event_id)
);
CREATE TABLE raw (id text PRIMARY KEY, payload bytea NOT NULL);
CREATE TABLE deliveries (key text PRIMARY KEY, stored_at timestamptz NOT NULL, record jsonb NOT NULL);
CREATE INDEX deliveries_by_time ON deliveries (stored_at);
CREATE TABLE links (key text PRIMARY KEY, incident_id text NOT NULL);
CREATE TABLE cursors (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE sessions (key text PRIMARY KEY, expires_at timestamptz NOT NULL);
CREATE TABLE packs (incident_id text PRIMARY KEY, zip bytea NOT NULL);
CREATE TABLE claims (key text PRIMARY KEY, claimed_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX claims_by_time ON claims (claimed_at);
INSERT INTO meta (key, value) VALUES ('incident_count', '0');
"#];

/// The advisory lock key under which replicas migrate one at a time.
const MIGRATION_LOCK: i64 = 0x1_9C1D_E27F;

/// The channel incident writes are announced on.
const NOTIFY_CHANNEL: &str = "incidentpost_incidents";

/// How often a unit is retried after a conflict (another replica won a race).
const UNIT_ATTEMPTS: usize = 8;

fn time_key(t: DateTime<Utc>) -> [u8; 8] {
    ((t.timestamp_micros() as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of_key(b: &[u8]) -> Option<DateTime<Utc>> {
    let raw = u64::from_be_bytes(<[u8; 8]>::try_from(b.get(..8)?).ok()?) ^ (1 << 63);
    DateTime::<Utc>::from_timestamp_micros(raw as i64)
}

/// `time ++ tail`: the key of a row ordered by `(time, tail)`.
fn key_of(t: DateTime<Utc>, tail: &[u8]) -> Vec<u8> {
    [&time_key(t)[..], tail].concat()
}

/// A `(time, text)` position from a key made by [`key_of`].
fn position(key: &[u8]) -> Result<(DateTime<Utc>, String), StoreError> {
    let t = time_of_key(key).ok_or(StoreError::BadCursor)?;
    let tail = String::from_utf8(key[8..].to_vec()).map_err(|_| StoreError::BadCursor)?;
    Ok((t, tail))
}

fn cursor_position(cursor: Option<&str>) -> Result<Option<(DateTime<Utc>, String)>, StoreError> {
    match cursor {
        None => Ok(None),
        Some(c) => {
            let bytes = hex::decode(c).map_err(|_| StoreError::BadCursor)?;
            if bytes.len() < 9 {
                return Err(StoreError::BadCursor);
            }
            position(&bytes).map(Some)
        }
    }
}

fn cursor_string(t: DateTime<Utc>, tail: &str) -> String {
    hex::encode(key_of(t, tail.as_bytes()))
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.code() {
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::UNIQUE_VIOLATION =>
            {
                StoreError::Conflict
            }
            Some(_) => StoreError::Engine(e.to_string()),
            // No SQL state: the connection (refused, closed, timed out).
            None => StoreError::Unavailable(format!("PostgreSQL: {e}")),
        }
    }
}

/// A pooled connection and the statements prepared on it (a unit's statements are parsed
/// once per connection, not once per use: half the round trips).
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// A bounded pool of synchronous clients; broken ones are replaced when taken.
struct Pool {
    url: String,
    max: usize,
    state: Mutex<(Vec<Conn>, usize)>,
    freed: Condvar,
}

impl Pool {
    fn connect(&self) -> Result<Client, StoreError> {
        let mut config: postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Engine(format!("storage.postgres.url: {e}")))?;
        config.connect_timeout(Duration::from_secs(5));
        if config.get_application_name().is_none() {
            config.application_name("incidentpost");
        }
        config
            .connect(NoTls)
            .map_err(|e| StoreError::Unavailable(format!("connecting to PostgreSQL: {e}")))
    }

    /// A connection (waiting for one when all are busy); give it back with [`Pool::put`].
    fn take(&self) -> Result<Conn, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some(c) = state.0.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                state.1 -= 1;
            }
            if state.1 < self.max {
                state.1 += 1;
                drop(state);
                return self
                    .connect()
                    .map(|client| Conn {
                        client,
                        statements: HashMap::new(),
                    })
                    .inspect_err(|_| {
                        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.1 -= 1;
                    });
            }
            state = self
                .freed
                .wait_timeout(state, Duration::from_secs(30))
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// A taken connection that will not come back (dropped): frees its place.
    fn forget_one(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 -= 1;
        drop(state);
        self.freed.notify_one();
    }

    fn put(&self, conn: Conn) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if conn.client.is_closed() {
            state.1 -= 1;
        } else {
            state.0.push(conn);
        }
        drop(state);
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        drop_off_workers(std::mem::take(
            &mut self.state.get_mut().unwrap_or_else(|p| p.into_inner()).0,
        ));
    }
}

/// Drops connections on a thread of their own: a client closes its connection on its own
/// runtime, which must not happen on an async worker (where the last handle of the store
/// may go).
fn drop_off_workers<T: Send + 'static>(clients: T) {
    let _ = std::thread::spawn(move || drop(clients)).join();
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// A connection per role this process leads: it holds the role's advisory lock.
    leaders: Leaders,
}

/// Connections holding leadership locks (closed off the async workers when dropped).
#[derive(Default)]
struct Leaders(Mutex<HashMap<String, Client>>);

impl Drop for Leaders {
    fn drop(&mut self) {
        drop_off_workers(std::mem::take(
            self.0.get_mut().unwrap_or_else(|p| p.into_inner()),
        ));
    }
}

/// The advisory lock key of a role.
fn role_key(role: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("incidentpost:{role}").as_bytes());
    i64::from_be_bytes(<[u8; 8]>::try_from(&d[..8]).unwrap_or_default())
}

/// Runs `f` with a pooled client, never inside a tokio runtime (where the client's own
/// runtime may not start): see [`scoped`].
fn on_thread<T: Send>(
    pool: &Pool,
    f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
) -> Result<T, StoreError> {
    on_conn(pool, |c| f(&mut c.client))
}

/// Like [`on_thread`], with the connection's prepared statements.
fn on_conn<T: Send>(
    pool: &Pool,
    f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send,
) -> Result<T, StoreError> {
    scoped(|| {
        let mut lent = Lent {
            pool,
            conn: Some(pool.take()?),
        };
        let result = f(lent.conn.as_mut().expect("a lent connection"));
        if let Some(conn) = lent.conn.take() {
            pool.put(conn);
        }
        result
    })
}

/// A connection out of the pool. If the work panics, the connection is dropped and its
/// place in the pool freed; without that, each panic would shrink the pool for good,
/// until every `take` waited forever.
struct Lent<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.forget_one();
        }
    }
}

/// Runs `f` where the client's own runtime may start: here on a thread outside any tokio
/// runtime (the committer's), else on a scoped thread (an async worker or a blocking-pool
/// thread, which are inside one). A panic in `f` is an error either way.
fn scoped<T: Send>(f: impl FnOnce() -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(StoreError::Engine("a storage call panicked".into())));
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(StoreError::Engine("a storage thread panicked".into())))
    })
}

impl PgStore {
    /// Connects, migrates an empty database (under an advisory lock, so replicas that
    /// start together migrate once) and checks the schema version.
    pub fn open(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let store = PgStore {
            leaders: Leaders::default(),
            pool: Pool {
                url: url.to_owned(),
                max: max_connections.max(1),
                state: Mutex::new((Vec::new(), 0)),
                freed: Condvar::new(),
            },
        };
        on_thread(&store.pool, |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)",
            )?;
            let found: u32 = tx
                .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?
                .and_then(|r| r.get::<_, String>(0).parse().ok())
                .unwrap_or(SCHEMA_VERSION - MIGRATIONS.len() as u32);
            if found > SCHEMA_VERSION {
                return Err(StoreError::SchemaMismatch {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
            let first = (found + MIGRATIONS.len() as u32).saturating_sub(SCHEMA_VERSION) as usize;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(first) {
                tracing::info!(
                    version = SCHEMA_VERSION - (MIGRATIONS.len() - 1 - i) as u32,
                    "migrating the PostgreSQL schema"
                );
                tx.batch_execute(sql)?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&SCHEMA_VERSION.to_string()],
            )?;
            tx.commit()?;
            Ok(())
        })?;
        Ok(store)
    }

    fn run<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        on_thread(&self.pool, f)
    }

    fn stream_chunk(
        c: &mut impl GenericClient,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        limit: usize,
        key: impl Fn(&Event) -> Vec<u8>,
    ) -> Result<Chunk, StoreError> {
        let rows = c.query(sql, params)?;
        let mut items: Vec<Keyed> = Vec::with_capacity(rows.len());
        for r in &rows {
            let Json(e): Json<Event> = r.try_get(0)?;
            items.push((key(&e), e));
        }
        let next = (items.len() >= limit)
            .then(|| items.last().map(|(k, _)| k.clone()))
            .flatten();
        Ok(Chunk { items, next })
    }
}

/// One unit: a transaction on one connection. The reads of [`WriteTx`] take `&self` and
/// the client wants `&mut`: the cell hands both the same transaction (a unit runs on one
/// thread).
struct PgTx<'a> {
    tx: std::cell::RefCell<postgres::Transaction<'a>>,
    statements: std::cell::RefCell<&'a mut HashMap<&'static str, Statement>>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl PgTx<'_> {
    /// `sql`, prepared once per connection.
    fn statement(&self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.borrow_mut().prepare(sql)?;
        self.statements.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    fn q_opt(&self, sql: &'static str, params: Params) -> Result<Option<Row>, StoreError> {
        let s = self.statement(sql)?;
        Ok(self.tx.borrow_mut().query_opt(&s, params)?)
    }

    fn q_one(&self, sql: &'static str, params: Params) -> Result<Row, StoreError> {
        let s = self.statement(sql)?;
        Ok(self.tx.borrow_mut().query_one(&s, params)?)
    }

    fn exec(&self, sql: &'static str, params: Params) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        Ok(self.tx.borrow_mut().execute(&s, params)?)
    }
}

fn stream_key(e: &Event) -> Vec<u8> {
    key_of(e.occurred_at, e.id.to_string().as_bytes())
}

impl WriteTx for PgTx<'_> {
    fn delivery(&self, key: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        let row = self.q_opt("SELECT record FROM deliveries WHERE key = $1", &[&key])?;
        Ok(row.map(|r| r.get::<_, Json<DeliveryRecord>>(0).0))
    }

    fn put_delivery(&mut self, key: &str, record: &DeliveryRecord) -> Result<(), StoreError> {
        // A primary key: a replica that stored it first makes this fail (Conflict), and
        // the unit is retried, finding the delivery.
        self.exec(
            "INSERT INTO deliveries (key, stored_at, record) VALUES ($1, $2, $3)",
            &[&key, &record.stored_at, &Json(record)],
        )?;
        Ok(())
    }

    fn incident(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        let row = self.q_opt(
            "SELECT record FROM incidents WHERE id = $1 FOR UPDATE",
            &[&id.as_str()],
        )?;
        Ok(row.map(|r| r.get::<_, Json<Incident>>(0).0))
    }

    fn put_incident(&mut self, incident: &Incident) -> Result<(), StoreError> {
        let inserted: bool = self
            .q_one(
                "INSERT INTO incidents (id, open, triggered_at, resolved_at, record)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET open = EXCLUDED.open,
                   triggered_at = EXCLUDED.triggered_at, resolved_at = EXCLUDED.resolved_at,
                   record = EXCLUDED.record
                 RETURNING (xmax = 0)",
                &[
                    &incident.id.as_str(),
                    &incident.status.is_open(),
                    &incident.triggered_at,
                    &incident.resolved_at,
                    &Json(incident),
                ],
            )?
            .get(0);
        if inserted {
            self.exec(
                "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'incident_count'",
                &[],
            )?;
        }
        // Delivered at commit to every process listening (see `PgStore::watch`).
        self.exec(
            "SELECT pg_notify($1, $2)",
            &[&NOTIFY_CHANNEL, &incident.id.as_str()],
        )?;
        Ok(())
    }

    fn link(&self, key: &str) -> Result<Option<IncidentId>, StoreError> {
        let row = self.q_opt("SELECT incident_id FROM links WHERE key = $1", &[&key])?;
        row.map(|r| {
            let id: String = r.get(0);
            IncidentId::parse(&id).map_err(|e| StoreError::Corrupt {
                key: format!("links/{key}"),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    fn put_link(&mut self, key: &str, incident: &IncidentId) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO links (key, incident_id) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET incident_id = EXCLUDED.incident_id",
            &[&key, &incident.as_str()],
        )?;
        Ok(())
    }

    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = self.q_opt("SELECT value FROM cursors WHERE key = $1", &[&key])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn put_cursor(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.exec(UPSERT_CURSOR, &[&key, &value])?;
        Ok(())
    }

    fn put_incident_event(&mut self, seq: u64, event: &Event) -> Result<(), StoreError> {
        let id = event.incident_id.as_ref().ok_or_else(|| {
            StoreError::Engine("put_incident_event: event has no incident id".into())
        })?;
        self.exec(
            "INSERT INTO incident_events (incident_id, seq, occurred_at, event) VALUES ($1, $2, $3, $4)",
            &[&id.as_str(), &(seq as i64), &event.occurred_at, &Json(event)],
        )?;
        Ok(())
    }

    fn put_stream_event(&mut self, event: &Event) -> Result<(), StoreError> {
        insert_stream(&mut |sql, p| self.exec(sql, p), event, None)
    }

    fn file_stream_event(&mut self, event: &Event, filed_under: &str) -> Result<(), StoreError> {
        insert_stream(&mut |sql, p| self.exec(sql, p), event, Some(filed_under))
    }

    fn refile_stream_event(
        &mut self,
        id: Ulid,
        _occurred_at: DateTime<Utc>,
        filed_under: &str,
    ) -> Result<(), StoreError> {
        // An UPDATE: a row another process removed in between is not brought back.
        self.exec(
            "UPDATE stream SET filed_under = $2 WHERE id = $1",
            &[&id.to_string(), &filed_under],
        )?;
        Ok(())
    }

    fn stream_event(&self, id: Ulid) -> Result<Option<Event>, StoreError> {
        let row = self.q_opt("SELECT event FROM stream WHERE id = $1", &[&id.to_string()])?;
        Ok(row.map(|r| r.get::<_, Json<Event>>(0).0))
    }

    fn remove_stream_event(&mut self, id: Ulid) -> Result<Option<Event>, StoreError> {
        let row = self.q_opt(
            "DELETE FROM stream WHERE id = $1 RETURNING event",
            &[&id.to_string()],
        )?;
        Ok(row.map(|r| r.get::<_, Json<Event>>(0).0))
    }

    fn put_raw(&mut self, id: Ulid, payload: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO raw (id, payload) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload",
            &[&id.to_string(), &payload],
        )?;
        Ok(())
    }
}

const UPSERT_CURSOR: &str = "INSERT INTO cursors (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

fn upsert_cursor(c: &mut impl GenericClient, key: &str, value: &str) -> Result<(), StoreError> {
    c.execute(UPSERT_CURSOR, &[&key, &value])?;
    Ok(())
}

/// Runs one statement with its parameters (in a unit: prepared once per connection).
type Exec<'e> = dyn FnMut(&'static str, Params) -> Result<u64, StoreError> + 'e;

fn insert_stream(
    exec: &mut Exec,
    event: &Event,
    filed_under: Option<&str>,
) -> Result<(), StoreError> {
    let id = event.id.to_string();
    exec(
        "INSERT INTO stream (id, occurred_at, change, filed_under, event) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET filed_under = EXCLUDED.filed_under, event = EXCLUDED.event",
        &[&id, &event.occurred_at, &event.kind.is_change(), &filed_under, &Json(event)],
    )?;
    let mut named: Vec<&str> = [KEY_INCIDENT_REF, KEY_PAGERDUTY_INCIDENT]
        .iter()
        .filter_map(|k| event.keys.get(*k).map(String::as_str))
        .filter(|v| IncidentId::parse(v).is_ok())
        .collect();
    named.dedup();
    for r in named {
        exec(
            "INSERT INTO stream_refs (incident_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&r, &id],
        )?;
    }
    Ok(())
}

fn incidents_of(rows: &[postgres::Row]) -> Result<Vec<Incident>, StoreError> {
    rows.iter()
        .map(|r| Ok(r.try_get::<_, Json<Incident>>(0)?.0))
        .collect()
}

fn events_of(rows: &[postgres::Row]) -> Result<Vec<Event>, StoreError> {
    rows.iter()
        .map(|r| Ok(r.try_get::<_, Json<Event>>(0)?.0))
        .collect()
}

impl Store for PgStore {
    fn write(
        &self,
        work: &mut (dyn FnMut(&mut dyn WriteTx) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = on_conn(&self.pool, |c| {
                let tx = c.client.transaction()?;
                let mut unit = PgTx {
                    tx: std::cell::RefCell::new(tx),
                    statements: std::cell::RefCell::new(&mut c.statements),
                };
                work(&mut unit)?;
                // Committed is durable: PostgreSQL's commit waits for its WAL flush.
                unit.tx.into_inner().commit()?;
                Ok(())
            });
            match result {
                Err(StoreError::Conflict) if attempt < UNIT_ATTEMPTS => {
                    metrics::counter!("incidentpost_store_conflicts_total").increment(1);
                    std::thread::sleep(Duration::from_millis(2 << attempt.min(6)));
                }
                other => return other,
            }
        }
    }

    fn incident(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        self.run(|c| {
            let row = c.query_opt(
                "SELECT record FROM incidents WHERE id = $1",
                &[&id.as_str()],
            )?;
            Ok(row.map(|r| r.get::<_, Json<Incident>>(0).0))
        })
    }

    fn incident_count(&self) -> Result<u64, StoreError> {
        self.run(|c| {
            let row = c.query_opt("SELECT value FROM meta WHERE key = 'incident_count'", &[])?;
            Ok(row
                .and_then(|r| r.get::<_, String>(0).parse().ok())
                .unwrap_or(0))
        })
    }

    fn incidents_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&Incident) -> bool,
    ) -> Result<Page<Incident>, StoreError> {
        let mut at = cursor_position(cursor)?;
        let mut items = Vec::with_capacity(limit.min(500));
        let mut scanned = 0;
        loop {
            let batch = (scan - scanned).min(500) as i64;
            if batch <= 0 || items.len() >= limit {
                break;
            }
            let rows = self.run(|c| {
                Ok(match &at {
                    None => c.query(
                        "SELECT record FROM incidents ORDER BY triggered_at DESC, id DESC LIMIT $1",
                        &[&batch],
                    )?,
                    Some((t, id)) => c.query(
                        "SELECT record FROM incidents WHERE (triggered_at, id) < ($1, $2)
                         ORDER BY triggered_at DESC, id DESC LIMIT $3",
                        &[t, id, &batch],
                    )?,
                })
            })?;
            let done = (rows.len() as i64) < batch;
            for i in incidents_of(&rows)? {
                if items.len() >= limit {
                    // Stop before this one: the next page starts with it.
                    return Ok(Page {
                        items,
                        next: at.map(|(t, id)| cursor_string(t, &id)),
                    });
                }
                scanned += 1;
                at = Some((i.triggered_at, i.id.to_string()));
                if keep(&i) {
                    items.push(i);
                }
            }
            if done {
                return Ok(Page { items, next: None });
            }
        }
        Ok(Page {
            items,
            next: at.map(|(t, id)| cursor_string(t, &id)),
        })
    }

    fn live_incidents(&self, resolved_since: DateTime<Utc>) -> Result<Vec<Incident>, StoreError> {
        self.run(|c| {
            let rows = c.query(
                "SELECT record FROM incidents WHERE open UNION ALL
                 SELECT record FROM incidents WHERE NOT open AND resolved_at >= $1",
                &[&resolved_since],
            )?;
            incidents_of(&rows)
        })
    }

    fn open_incident_count(&self) -> Result<usize, StoreError> {
        self.run(|c| {
            let n: i64 = c
                .query_one("SELECT count(*) FROM incidents WHERE open", &[])?
                .get(0);
            Ok(n as usize)
        })
    }

    fn incident_events(&self, id: &IncidentId) -> Result<Vec<Event>, StoreError> {
        self.run(|c| {
            let rows = c.query(
                "SELECT event FROM incident_events WHERE incident_id = $1 ORDER BY seq",
                &[&id.as_str()],
            )?;
            events_of(&rows)
        })
    }

    fn incident_events_page(
        &self,
        id: &IncidentId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Event>, StoreError> {
        let after = cursor_position(cursor)?
            .map(|(t, seq)| seq.parse::<i64>().map(|s| (t, s)))
            .transpose()
            .map_err(|_| StoreError::BadCursor)?;
        let n = limit as i64 + 1;
        let rows = self.run(|c| {
            Ok(match &after {
                None => c.query(
                    "SELECT event, occurred_at, seq FROM incident_events WHERE incident_id = $1
                     ORDER BY occurred_at, seq LIMIT $2",
                    &[&id.as_str(), &n],
                )?,
                Some((t, seq)) => c.query(
                    "SELECT event, occurred_at, seq FROM incident_events WHERE incident_id = $1
                     AND (occurred_at, seq) > ($2, $3) ORDER BY occurred_at, seq LIMIT $4",
                    &[&id.as_str(), t, seq, &n],
                )?,
            })
        })?;
        let more = rows.len() > limit;
        let mut items = Vec::with_capacity(rows.len().min(limit));
        let mut last = None;
        for r in rows.iter().take(limit) {
            items.push(r.try_get::<_, Json<Event>>(0)?.0);
            let t: DateTime<Utc> = r.try_get(1)?;
            let seq: i64 = r.try_get(2)?;
            last = Some(cursor_string(t, &seq.to_string()));
        }
        Ok(Page {
            items,
            next: if more { last } else { None },
        })
    }

    fn stream_page(&self, cursor: Option<&str>, limit: usize) -> Result<Page<Event>, StoreError> {
        let after = cursor_position(cursor)?;
        let n = limit as i64 + 1;
        let rows = self.run(|c| {
            Ok(match &after {
                None => c.query(
                    "SELECT event FROM stream ORDER BY occurred_at, id LIMIT $1",
                    &[&n],
                )?,
                Some((t, id)) => c.query(
                    "SELECT event FROM stream WHERE (occurred_at, id) > ($1, $2)
                     ORDER BY occurred_at, id LIMIT $3",
                    &[t, id, &n],
                )?,
            })
        })?;
        let more = rows.len() > limit;
        let items: Vec<Event> = events_of(&rows)?.into_iter().take(limit).collect();
        let next = if more {
            items
                .last()
                .map(|e| cursor_string(e.occurred_at, &e.id.to_string()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    fn stream_window(
        &self,
        part: StreamPart,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Chunk, StoreError> {
        let (t0, id0) = match after {
            Some(k) => position(k)?,
            // Before every id of `from`.
            None => (from, String::new()),
        };
        let n = limit as i64;
        let (filter, extra): (&str, Option<String>) = match &part {
            StreamPart::Changes => ("change", None),
            StreamPart::All => ("true", None),
            StreamPart::NotFiledUnder(fp) => (
                "(filed_under IS NULL OR NOT starts_with(filed_under, $5))",
                Some(format!("{fp}:")),
            ),
            StreamPart::Filed(under) => ("filed_under = $5", Some(under.clone())),
        };
        let sql = format!(
            "SELECT event FROM stream WHERE (occurred_at, id) > ($1, $2) AND occurred_at <= $3
             AND {filter} ORDER BY occurred_at, id LIMIT $4"
        );
        self.run(|c| match &extra {
            None => Self::stream_chunk(c, &sql, &[&t0, &id0, &to, &n], limit, stream_key),
            Some(x) => Self::stream_chunk(c, &sql, &[&t0, &id0, &to, &n, x], limit, stream_key),
        })
    }

    fn stream_naming(
        &self,
        incident: &IncidentId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Chunk, StoreError> {
        let after = match after {
            Some(k) => String::from_utf8(k.to_vec()).map_err(|_| StoreError::BadCursor)?,
            None => String::new(),
        };
        let n = limit as i64;
        self.run(|c| {
            Self::stream_chunk(
                c,
                "SELECT s.event FROM stream_refs r JOIN stream s ON s.id = r.event_id
                 WHERE r.incident_id = $1 AND r.event_id > $2 ORDER BY r.event_id LIMIT $3",
                &[&incident.as_str(), &after, &n],
                limit,
                |e| e.id.to_string().into_bytes(),
            )
        })
    }

    fn prune_stream(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        let n = limit as i64;
        self.run(|c| {
            let gone = c.execute(
                "DELETE FROM stream WHERE id IN (
                   SELECT id FROM stream WHERE occurred_at < $1 ORDER BY occurred_at, id LIMIT $2
                   FOR UPDATE SKIP LOCKED)",
                &[&cutoff, &n],
            )?;
            Ok(gone as usize)
        })
    }

    fn delivery(&self, key: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        self.run(|c| {
            let row = c.query_opt("SELECT record FROM deliveries WHERE key = $1", &[&key])?;
            Ok(row.map(|r| r.get::<_, Json<DeliveryRecord>>(0).0))
        })
    }

    fn forget_cursor(&self, key: &str) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute("DELETE FROM cursors WHERE key = $1", &[&key])?;
            Ok(())
        })
    }

    fn cursors_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.run(|c| {
            let rows = c.query(
                "SELECT key, value FROM cursors WHERE starts_with(key, $1) ORDER BY key",
                &[&prefix],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.run(|c| {
            let row = c.query_opt("SELECT value FROM cursors WHERE key = $1", &[&key])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn raw(&self, id: Ulid) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|c| {
            let row = c.query_opt("SELECT payload FROM raw WHERE id = $1", &[&id.to_string()])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn prune_deliveries(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.run(|c| {
            let n = c.execute("DELETE FROM deliveries WHERE stored_at < $1", &[&cutoff])?;
            // Work claims age out with the deliveries that caused them.
            c.execute("DELETE FROM claims WHERE claimed_at < $1", &[&cutoff])?;
            Ok(n as usize)
        })
    }

    fn claim(&self, key: &str) -> Result<bool, StoreError> {
        self.run(|c| {
            let n = c.execute(
                "INSERT INTO claims (key) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&key],
            )?;
            Ok(n == 1)
        })
    }

    fn put_session(&self, key: &str, expires_at: DateTime<Utc>) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute(
                "INSERT INTO sessions (key, expires_at) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                &[&key, &expires_at],
            )?;
            Ok(())
        })
    }

    fn session(&self, key: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.run(|c| {
            let row = c.query_opt("SELECT expires_at FROM sessions WHERE key = $1", &[&key])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn delete_session(&self, key: &str) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute("DELETE FROM sessions WHERE key = $1", &[&key])?;
            Ok(())
        })
    }

    fn prune_sessions(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.run(|c| {
            let n = c.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])?;
            Ok(n as usize)
        })
    }

    fn put_pack(&self, id: &IncidentId, zip: &[u8]) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute(
                "INSERT INTO packs (incident_id, zip) VALUES ($1, $2)
                 ON CONFLICT (incident_id) DO UPDATE SET zip = EXCLUDED.zip",
                &[&id.as_str(), &zip],
            )?;
            Ok(())
        })
    }

    fn put_cache(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.run(|c| upsert_cursor(c, key, value))
    }

    fn pack(&self, id: &IncidentId) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|c| {
            let row = c.query_opt(
                "SELECT zip FROM packs WHERE incident_id = $1",
                &[&id.as_str()],
            )?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        self.run(|c| {
            c.query_one("SELECT 1", &[])?;
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every commit is durable already.
        Ok(())
    }

    /// A session advisory lock per role, on a connection of its own: held as long as the
    /// connection lives, so a process that dies (or loses the database) lets it go.
    fn lead(&self, role: &str) -> Result<bool, StoreError> {
        scoped(|| {
            let mut held = self.leaders.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = held.get_mut(role) {
                if !c.is_closed() && c.simple_query("SELECT 1").is_ok() {
                    return Ok(true);
                }
                held.remove(role);
            }
            let mut c = self.pool.connect()?;
            let got: bool = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&role_key(role)])?
                .get(0);
            if got {
                held.insert(role.to_owned(), c);
            }
            Ok(got)
        })
    }

    /// `LISTEN` on a connection of its own, on a thread of its own: every incident any
    /// process writes is announced at its commit. When the connection drops, it
    /// reconnects and asks for a [`StoreChange::Resync`] (notifications sent meanwhile
    /// are lost).
    fn watch(&self) -> Option<Watcher> {
        let (tx, changes) = std::sync::mpsc::channel();
        let alive = std::sync::Arc::new(());
        let token = std::sync::Arc::downgrade(&alive);
        let url = self.pool.url.clone();
        std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || listen(&url, &tx, &token))
            .ok()?;
        Some(Watcher { changes, alive })
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
        // Paged reads (by key), so a big database is never one result set in memory.
        let mut after = String::new();
        loop {
            let page = self.run(|c| {
                let rows = c.query(
                    "SELECT id, record FROM incidents WHERE id > $1 ORDER BY id LIMIT 200",
                    &[&after],
                )?;
                let mut out = Vec::new();
                for r in &rows {
                    let id: String = r.get(0);
                    let Json(incident): Json<Incident> = r.try_get(1)?;
                    let events = c.query(
                        "SELECT seq, event FROM incident_events WHERE incident_id = $1 ORDER BY seq",
                        &[&id],
                    )?;
                    let mut evs = Vec::new();
                    for e in &events {
                        let seq: i64 = e.get(0);
                        evs.push((seq as u64, e.try_get::<_, Json<Event>>(1)?.0));
                    }
                    out.push((id, incident, evs));
                }
                Ok(out)
            })?;
            if page.is_empty() {
                break;
            }
            for (id, incident, events) in page {
                sink(ExportRecord::Incident(Box::new(incident)))?;
                for (seq, event) in events {
                    sink(ExportRecord::Event {
                        seq,
                        event: Box::new(event),
                    })?;
                }
                after = id;
            }
        }
        let mut after = String::new();
        loop {
            let rows = self.run(|c| {
                let rows = c.query(
                    "SELECT id, event FROM stream WHERE id > $1 ORDER BY id LIMIT 1000",
                    &[&after],
                )?;
                rows.iter()
                    .map(|r| Ok((r.get::<_, String>(0), r.try_get::<_, Json<Event>>(1)?.0)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })?;
            if rows.is_empty() {
                break;
            }
            for (id, e) in rows {
                sink(ExportRecord::Stream(Box::new(e)))?;
                after = id;
            }
        }
        let mut after = String::new();
        loop {
            let rows = self.run(|c| {
                let rows = c.query(
                    "SELECT id, payload FROM raw WHERE id > $1 ORDER BY id LIMIT 500",
                    &[&after],
                )?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                    .collect::<Vec<_>>())
            })?;
            if rows.is_empty() {
                break;
            }
            for (id, payload) in rows {
                sink(ExportRecord::Raw {
                    id: Ulid::from_string(&id).unwrap_or_default(),
                    payload_base64: base64::engine::general_purpose::STANDARD.encode(&payload),
                })?;
                after = id;
            }
        }
        for (table, kind) in [("deliveries", 0), ("links", 1), ("cursors", 2)] {
            let mut after = String::new();
            loop {
                let sql = match kind {
                    0 => "SELECT key, record::text FROM deliveries WHERE key > $1 ORDER BY key LIMIT 1000",
                    1 => "SELECT key, incident_id FROM links WHERE key > $1 ORDER BY key LIMIT 1000",
                    _ => "SELECT key, value FROM cursors WHERE key > $1 ORDER BY key LIMIT 1000",
                };
                let rows = self.run(|c| {
                    let rows = c.query(sql, &[&after])?;
                    Ok(rows
                        .iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                        .collect::<Vec<_>>())
                })?;
                if rows.is_empty() {
                    break;
                }
                for (key, value) in rows {
                    let corrupt = |m: String| StoreError::Corrupt {
                        key: format!("{table}/{key}"),
                        message: m,
                    };
                    sink(match kind {
                        0 => ExportRecord::Delivery {
                            key: key.clone(),
                            record: serde_json::from_str(&value)
                                .map_err(|e| corrupt(e.to_string()))?,
                        },
                        1 => ExportRecord::Link {
                            key: key.clone(),
                            incident: IncidentId::parse(&value)
                                .map_err(|e| corrupt(e.to_string()))?,
                        },
                        _ => ExportRecord::Cursor {
                            key: key.clone(),
                            value,
                        },
                    })?;
                    after = key;
                }
            }
        }
        Ok(())
    }
}

/// The listener behind [`PgStore::watch`]: runs until `alive` is gone.
fn listen(url: &str, tx: &std::sync::mpsc::Sender<StoreChange>, alive: &std::sync::Weak<()>) {
    let mut connected_before = false;
    while alive.strong_count() > 0 {
        let client = url
            .parse::<postgres::Config>()
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.connect_timeout(Duration::from_secs(5));
                c.connect(NoTls).map_err(|e| e.to_string())
            })
            .and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                    .map(|_| c)
                    .map_err(|e| e.to_string())
            });
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listening for other replicas' changes failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if connected_before && tx.send(StoreChange::Resync).is_err() {
            return;
        }
        connected_before = true;
        loop {
            if alive.strong_count() == 0 {
                return;
            }
            let next = client
                .notifications()
                .timeout_iter(Duration::from_secs(1))
                .next();
            match next {
                Ok(Some(n)) => {
                    if let Ok(id) = IncidentId::parse(n.payload()) {
                        if tx.send(StoreChange::Incident(id)).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the listening connection was lost; reconnecting");
                    break;
                }
            }
        }
    }
}
