//! Renders packs when incidents resolve (and again when late events or edits arrive),
//! stores them, and serves the on-demand renders of the API.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::enrich::{self, GithubEnricher, SlackEnricher};
use super::{render_pack_with, Known, Pack, RenderError, Templates};
use crate::domain::{Event, Incident, IncidentId};
use crate::ingest::{Change, LifecycleChange};
use crate::people::Directory;
use crate::store::{Store, StoreError};

/// Why a render did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    #[error("no incident {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Every render slot stayed busy for the queue timeout.
    #[error("every render slot is busy")]
    Busy,
    #[error("render task failed: {0}")]
    Task(String),
}

/// A rendered pack with what the incident page needs beside it, so a page load after the
/// first reads no events but the page of rows it shows.
pub struct Rendered {
    pub pack: Pack,
    /// Position (1-based, by `occurred_at`) and title of every event a fact cites.
    pub evidence: HashMap<Ulid, (usize, String)>,
    /// The annotation events (the edit history), by `occurred_at`.
    pub history: Vec<Event>,
    /// `postmortem.md` as HTML, made by the first page that shows it.
    pub html: std::sync::OnceLock<String>,
}

/// What a cached render was made from: any new event or edit changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    event_count: u64,
    updated_at: chrono::DateTime<chrono::Utc>,
    open: bool,
    /// Bumped when a lookup names someone (a Slack profile arrived).
    people: u64,
}

/// Renders made lately, newest last; a handful, since one big incident's pack is large.
const CACHED_RENDERS: usize = 8;

/// Renders an incident's pack from the store, on a bounded pool (`render.max_concurrent`
/// slots; a request that waits longer than `render.queue_timeout_secs` is answered 503),
/// off the request workers, once per version of the incident.
pub struct Renderer {
    templates: Templates,
    store: Arc<dyn Store>,
    enricher: Option<GithubEnricher>,
    slack: Option<Arc<SlackEnricher>>,
    people: Directory,
    people_version: Arc<std::sync::atomic::AtomicU64>,
    slots: Arc<Semaphore>,
    /// The threads renders run on (one per slot, at a lower CPU priority).
    pool: super::pool::Pool,
    queue_timeout: Duration,
    cache: Mutex<VecDeque<(IncidentId, Version, Arc<Rendered>)>>,
    /// Reconciliation: a resolved incident is not rendered as final while a recovery
    /// that could add to it is pending (within the grace window).
    gate: std::sync::OnceLock<Arc<crate::reconcile::Reconcile>>,
}

impl Renderer {
    pub fn new(
        templates: Templates,
        store: Arc<dyn Store>,
        enricher: Option<GithubEnricher>,
    ) -> Self {
        Self::with_pool(templates, store, enricher, 2, Duration::from_secs(10))
    }

    /// With `max_concurrent` render slots and how long a request may wait for one.
    pub fn with_pool(
        templates: Templates,
        store: Arc<dyn Store>,
        enricher: Option<GithubEnricher>,
        max_concurrent: usize,
        queue_timeout: Duration,
    ) -> Self {
        Renderer {
            templates,
            store,
            enricher,
            slack: None,
            people: Directory::default(),
            people_version: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            pool: super::pool::Pool::new(max_concurrent.max(1)),
            queue_timeout,
            cache: Mutex::new(VecDeque::new()),
            gate: std::sync::OnceLock::new(),
        }
    }

    /// Waits for `reconcile`'s pending recoveries before a final render.
    pub fn wait_for(&self, reconcile: Arc<crate::reconcile::Reconcile>) {
        let _ = self.gate.set(reconcile);
    }

    /// Why a resolved incident is not final yet (a recovery is pending), if it is not.
    pub fn pending(&self, incident: &Incident) -> Option<&'static str> {
        self.gate
            .get()
            .and_then(|g| g.pending(incident, chrono::Utc::now()))
    }

    /// [`Renderer::pending`] off the async workers (it reads the store).
    pub async fn pending_async(&self, incident: &Incident) -> Option<&'static str> {
        match self.gate.get() {
            Some(gate) if !incident.status.is_open() => gate.pending_async(incident).await,
            _ => None,
        }
    }

    /// True when the incident's pack is final: resolved, and no recovery pending. Reads
    /// the store: call it on a blocking thread.
    fn is_final(&self, incident: &Incident) -> bool {
        !incident.status.is_open() && self.pending(incident).is_none()
    }

    /// With `[[people]]` and, when a Slack bot token is configured, `users.info`.
    pub fn with_people(mut self, people: Directory, slack: Option<SlackEnricher>) -> Self {
        self.people = people;
        self.slack = slack.map(Arc::new);
        self
    }

    fn version_of(&self, i: &Incident) -> Version {
        Version {
            event_count: i.event_count,
            updated_at: i.updated_at,
            open: i.status.is_open(),
            people: self
                .people_version
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Fetches GitHub details of the incident's pull requests and Slack names of its
    /// people into the cache (when tokens are configured). Never fails: the render goes
    /// on without them.
    pub async fn enrich(&self, id: &IncidentId) {
        if self.enricher.is_none() && self.slack.is_none() {
            return;
        }
        let store = self.store.clone();
        let key = id.clone();
        let read = tokio::task::spawn_blocking(move || store.incident_events(&key))
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))
            .and_then(|r| r);
        let events = match read {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "reading events for enrichment failed");
                return;
            }
        };
        if let Some(enricher) = &self.enricher {
            enricher.refresh(&events).await;
        }
        if let Some(slack) = &self.slack {
            refresh_people(slack, &events, &self.people_version).await;
        }
    }

    /// Claims the background render of the incident's current version: with replicas on
    /// one database, the first to claim it renders and stores the pack; the others serve
    /// the stored one. A failed claim check renders anyway (the bytes are the same).
    async fn claim(&self, id: &IncidentId) -> bool {
        let store = self.store.clone();
        let key = id.clone();
        tokio::task::spawn_blocking(move || match store.incident(&key)? {
            Some(i) => store.claim(&format!(
                "render:{}:{}:{}",
                i.id,
                i.event_count,
                i.updated_at.timestamp_micros()
            )),
            None => Ok(false),
        })
        .await
        .map_err(|e| StoreError::Engine(e.to_string()))
        .and_then(|r| r)
        .unwrap_or_else(|e| {
            tracing::warn!(incident = %id, error = %e, "claiming the render failed; rendering");
            true
        })
    }

    /// Looks the incident's Slack people up in the background (page loads never wait
    /// for Slack); a later load shows the names.
    fn enrich_people_later(&self, id: &IncidentId) {
        let Some(slack) = self.slack.clone() else {
            return;
        };
        let store = self.store.clone();
        let version = self.people_version.clone();
        let key = id.clone();
        tokio::spawn(async move {
            if let Ok(Ok(events)) =
                tokio::task::spawn_blocking(move || store.incident_events(&key)).await
            {
                refresh_people(&slack, &events, &version).await;
            }
        });
    }

    fn cached(&self, id: &IncidentId, version: &Version) -> Option<Arc<Rendered>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .find(|(i, v, _)| i == id && v == version)
            .map(|(_, _, r)| r.clone())
    }

    fn remember(&self, id: &IncidentId, version: Version, rendered: Arc<Rendered>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(i, _, _)| i != id);
        cache.push_back((id.clone(), version, rendered));
        while cache.len() > CACHED_RENDERS {
            cache.pop_front();
        }
    }

    async fn incident(&self, id: &IncidentId) -> Result<Incident, RenderFailure> {
        let store = self.store.clone();
        let key = id.clone();
        tokio::task::spawn_blocking(move || store.incident(&key))
            .await
            .map_err(|e| RenderFailure::Task(e.to_string()))??
            .ok_or_else(|| RenderFailure::NotFound(id.to_string()))
    }

    /// The incident's render, from the cache when nothing changed since, else made now
    /// on a render slot. A resolved incident's fresh render is also stored.
    pub async fn rendered(
        self: &Arc<Self>,
        id: &IncidentId,
    ) -> Result<Arc<Rendered>, RenderFailure> {
        let incident = self.incident(id).await?;
        if let Some(hit) = self.cached(id, &self.version_of(&incident)) {
            return Ok(hit);
        }
        self.enrich_people_later(id);
        self.render_now(id).await
    }

    /// Renders now on a render slot (waiting at most the queue timeout), stores a
    /// resolved incident's pack and caches the result.
    pub async fn render_now(
        self: &Arc<Self>,
        id: &IncidentId,
    ) -> Result<Arc<Rendered>, RenderFailure> {
        let permit = self.slot().await?;
        self.render_with(id, permit).await
    }

    /// A render slot, waiting at most the queue timeout.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, RenderFailure> {
        tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| RenderFailure::Busy)?
            .map_err(|_| RenderFailure::Busy)
    }

    /// Runs other heavy read work (assembling a big page from a render) on a render slot
    /// and a render thread, waiting at most the queue timeout for the slot.
    pub async fn heavy<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RenderFailure> {
        let permit = self.slot().await?;
        self.on_pool(permit, work).await
    }

    /// Runs `work` on a render thread, holding `permit` (its render slot) until it ends.
    async fn on_pool<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RenderFailure> {
        self.pool
            .run(move || {
                let _permit = permit;
                work()
            })
            .await
            .map_err(|e| RenderFailure::Task(e.to_string()))
    }

    /// Like [`Renderer::render_now`], waiting as long as it takes (background renders).
    pub async fn render_queued(
        self: &Arc<Self>,
        id: &IncidentId,
    ) -> Result<Arc<Rendered>, RenderFailure> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RenderFailure::Busy)?;
        self.render_with(id, permit).await
    }

    async fn render_with(
        self: &Arc<Self>,
        id: &IncidentId,
        permit: OwnedSemaphorePermit,
    ) -> Result<Arc<Rendered>, RenderFailure> {
        let this = self.clone();
        let key = id.clone();
        self.on_pool(permit, move || this.render_blocking(&key))
            .await?
    }

    /// The render itself, on the calling (blocking) thread.
    pub fn render_blocking(&self, id: &IncidentId) -> Result<Arc<Rendered>, RenderFailure> {
        let started = Instant::now();
        let (incident, mut events) = self.load(id)?;
        // The version before reading what it is rendered from: a Slack name that arrives
        // during the render makes the next load render again.
        let version = self.version_of(&incident);
        let result = self.preview_of(&incident, &events);
        let label = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("incidentpost_pack_renders_total", "result" => label).increment(1);
        metrics::histogram!("incidentpost_pack_render_duration_seconds").record(started.elapsed());
        let pack = result?;
        let is_final = self.is_final(&incident);
        if is_final {
            self.store.put_pack(id, &pack.zip)?;
        }
        tracing::info!(incident = %id, events = events.len(), draft = !is_final, ms = started.elapsed().as_millis() as u64, "pack rendered");
        events.sort_by_key(|e| e.occurred_at);
        let cited: std::collections::HashSet<Ulid> = pack.facts.cited().into_iter().collect();
        let evidence = events
            .iter()
            .enumerate()
            .filter(|(_, e)| cited.contains(&e.id))
            .map(|(i, e)| (e.id, (i + 1, super::facts::shown_title(e, &pack.roster))))
            .collect();
        let history = events
            .into_iter()
            .filter(|e| e.kind.as_str().starts_with("annotation."))
            .collect();
        let rendered = Arc::new(Rendered {
            pack,
            evidence,
            history,
            html: std::sync::OnceLock::new(),
        });
        self.remember(id, version, rendered.clone());
        Ok(rendered)
    }

    /// A fresh render of an incident and events the caller already read (not stored).
    pub fn preview_of(&self, incident: &Incident, events: &[Event]) -> Result<Pack, RenderFailure> {
        let known = Known {
            prs: enrich::cached(self.store.as_ref(), events),
            people: self
                .people
                .with_slack_profiles(enrich::cached_profiles(self.store.as_ref(), events)),
        };
        Ok(render_pack_with(&self.templates, incident, events, &known)?)
    }

    fn load(&self, id: &IncidentId) -> Result<(Incident, Vec<Event>), RenderFailure> {
        let incident = self
            .store
            .incident(id)?
            .ok_or_else(|| RenderFailure::NotFound(id.to_string()))?;
        let events = self.store.incident_events(id)?;
        Ok((incident, events))
    }

    /// The stored pack of a resolved incident, else its (cached) render: a draft when
    /// open. Returns the zip and whether it is a draft.
    pub async fn pack(self: &Arc<Self>, id: &IncidentId) -> Result<(Vec<u8>, bool), RenderFailure> {
        let incident = self.incident(id).await?;
        if !incident.status.is_open() {
            let store = self.store.clone();
            let key = id.clone();
            let stored = tokio::task::spawn_blocking(move || store.pack(&key))
                .await
                .map_err(|e| RenderFailure::Task(e.to_string()))??;
            if let Some(zip) = stored {
                return Ok((zip, false));
            }
        }
        let rendered = self.rendered(id).await?;
        let draft = incident.status.is_open() || self.pending_async(&incident).await.is_some();
        Ok((rendered.pack.zip.clone(), draft))
    }
}

/// Names the Slack people of `events`; a new name makes cached renders stale.
async fn refresh_people(
    slack: &SlackEnricher,
    events: &[Event],
    version: &std::sync::atomic::AtomicU64,
) {
    if slack.refresh(events).await > 0 {
        version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Renders on resolve, on late events and on annotation edits, until `stop`. A resolved
/// incident with a recovery pending waits (checked every few seconds) until the recovery
/// is done or its grace window ends.
pub fn spawn(
    renderer: Arc<Renderer>,
    mut changes: broadcast::Receiver<LifecycleChange>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut waiting: BTreeSet<IncidentId> = BTreeSet::new();
        loop {
            let recheck = tokio::time::sleep(Duration::from_secs(2));
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                c = changes.recv() => Some(c),
                _ = recheck, if !waiting.is_empty() => None,
            };
            let mut due = std::mem::take(&mut waiting);
            let mut take = |c: Result<LifecycleChange, broadcast::error::RecvError>| match c {
                Ok(c) if matches!(c.change, Change::Resolved | Change::LateEvent) => {
                    due.insert(c.incident_id);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "renderer lagged behind lifecycle changes")
                }
                Err(broadcast::error::RecvError::Closed) => {}
            };
            if let Some(first) = first {
                take(first);
            }
            // Coalesce a burst (an import, a batch) into one render per incident.
            while let Ok(c) = changes.try_recv() {
                take(Ok(c));
            }
            for id in due {
                if let Ok(incident) = renderer.incident(&id).await {
                    if let Some(why) = renderer.pending_async(&incident).await {
                        tracing::debug!(incident = %id, why, "final render waits for reconciliation");
                        waiting.insert(id);
                        continue;
                    }
                }
                if !renderer.claim(&id).await {
                    tracing::debug!(incident = %id, "another replica renders this version");
                    continue;
                }
                renderer.enrich(&id).await;
                if let Err(e) = renderer.render_queued(&id).await {
                    tracing::error!(incident = %id, error = %e, "rendering a pack failed");
                }
            }
        }
    })
}
