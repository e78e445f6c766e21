//! Renders packs when incidents resolve (and again when late events or edits arrive),
//! stores them, and serves the on-demand renders of the API.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::enrich::{self, GithubEnricher};
use super::{render_pack_with, Pack, RenderError, Templates};
use crate::domain::{Event, Incident, IncidentId};
use crate::ingest::{Change, LifecycleChange};
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
}

/// Renders an incident's pack from the store.
pub struct Renderer {
    templates: Templates,
    store: Arc<dyn Store>,
    enricher: Option<GithubEnricher>,
}

impl Renderer {
    pub fn new(
        templates: Templates,
        store: Arc<dyn Store>,
        enricher: Option<GithubEnricher>,
    ) -> Self {
        Renderer {
            templates,
            store,
            enricher,
        }
    }

    /// Fetches GitHub details of the incident's pull requests into the cache (when a
    /// token is configured). Never fails: the render goes on without them.
    pub async fn enrich(&self, id: &IncidentId) {
        let Some(enricher) = &self.enricher else {
            return;
        };
        match self.store.incident_events(id) {
            Ok(events) => {
                enricher.refresh(&events).await;
            }
            Err(e) => tracing::warn!(error = %e, "reading events for enrichment failed"),
        }
    }

    /// Renders the pack now; a resolved incident's pack is also stored.
    pub fn render(&self, id: &IncidentId) -> Result<Pack, RenderFailure> {
        let started = Instant::now();
        let (incident, events) = self.load(id)?;
        let result = self.preview_of(&incident, &events);
        let label = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("incidentpost_pack_renders_total", "result" => label).increment(1);
        metrics::histogram!("incidentpost_pack_render_duration_seconds").record(started.elapsed());
        let pack = result?;
        if !incident.status.is_open() {
            self.store.put_pack(id, &pack.zip)?;
        }
        tracing::info!(incident = %id, events = events.len(), draft = incident.status.is_open(), ms = started.elapsed().as_millis() as u64, "pack rendered");
        Ok(pack)
    }

    /// A fresh render, not stored (the pages show it).
    pub fn preview(&self, id: &IncidentId) -> Result<Pack, RenderFailure> {
        let (incident, events) = self.load(id)?;
        self.preview_of(&incident, &events)
    }

    /// A fresh render of an incident and events the caller already read.
    pub fn preview_of(&self, incident: &Incident, events: &[Event]) -> Result<Pack, RenderFailure> {
        let prs = enrich::cached(self.store.as_ref(), events);
        Ok(render_pack_with(&self.templates, incident, events, &prs)?)
    }

    fn load(&self, id: &IncidentId) -> Result<(Incident, Vec<Event>), RenderFailure> {
        let incident = self
            .store
            .incident(id)?
            .ok_or_else(|| RenderFailure::NotFound(id.to_string()))?;
        let events = self.store.incident_events(id)?;
        Ok((incident, events))
    }

    /// The stored pack of a resolved incident, else a fresh render (a draft when open).
    pub fn pack(&self, id: &IncidentId) -> Result<(Vec<u8>, bool), RenderFailure> {
        let incident = self
            .store
            .incident(id)?
            .ok_or_else(|| RenderFailure::NotFound(id.to_string()))?;
        if !incident.status.is_open() {
            if let Some(zip) = self.store.pack(id)? {
                return Ok((zip, false));
            }
        }
        let pack = self.render(id)?;
        Ok((pack.zip, incident.status.is_open()))
    }
}

/// Renders on resolve, on late events and on annotation edits, until `stop`.
pub fn spawn(
    renderer: Arc<Renderer>,
    mut changes: broadcast::Receiver<LifecycleChange>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                c = changes.recv() => c,
            };
            let mut due = BTreeSet::new();
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
            take(first);
            // Coalesce a burst (an import, a batch) into one render per incident.
            while let Ok(c) = changes.try_recv() {
                take(Ok(c));
            }
            for id in due {
                renderer.enrich(&id).await;
                let r = renderer.clone();
                match tokio::task::spawn_blocking(move || r.render(&id)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "rendering a pack failed"),
                    Err(e) => tracing::error!(error = %e, "render task failed"),
                }
            }
        }
    })
}
