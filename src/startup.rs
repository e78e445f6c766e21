//! Builds the application from settings: store, committer, sources, HTTP server,
//! background tasks. `main` and the tests both go through [`Application::build`].

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::correlate::Correlator;
use crate::domain::Source;
use crate::ingest::{Committer, Ingest};
use crate::pollers::cloudwatch::CloudWatchPoller;
use crate::sources::cloudwatch::CloudWatch;
use crate::sources::datadog::Datadog;
use crate::sources::github::Github;
use crate::sources::pagerduty::PagerDuty;
use crate::sources::slack::Slack;
use crate::sources::WebhookSource;
use crate::store::{SledStore, Store};
use crate::telemetry;

/// Blocking threads per request worker (store reads of the pages and the API). With
/// PostgreSQL this also bounds the request path to workers × 16 connections at once.
const WORKER_BLOCKING_THREADS: usize = 16;

/// A built, bound, not yet running service.
pub struct Application {
    port: u16,
    server: Server,
    committer: Committer,
    ingest: Ingest,
    store: Arc<dyn Store>,
    background: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens the sled store the settings name.
/// Opens the configured store: sled under `storage.path`, or PostgreSQL.
pub fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    match settings.storage.backend {
        crate::config::StorageBackend::Sled => Ok(open_sled(settings)?),
        crate::config::StorageBackend::Postgres => {
            let pg = &settings.storage.postgres;
            let store = crate::store::PgStore::open(pg.url.expose(), pg.max_connections)
                .context("opening the PostgreSQL database (storage.postgres.url)")?;
            Ok(Arc::new(store))
        }
    }
}

/// Opens the sled store under `storage.path`.
pub fn open_sled(settings: &Settings) -> anyhow::Result<Arc<SledStore>> {
    let path = &settings.storage.path;
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating storage.path {}", path.display()))?;
    let store = SledStore::open(
        path,
        settings.storage.flush_every_ms,
        settings.storage.cache_capacity_bytes,
    )
    .with_context(|| format!("opening the database in storage.path {}", path.display()))?;
    Ok(Arc::new(store))
}

impl Application {
    /// Opens the store under `storage.path` and binds `server.host:server.port`.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = open_store(&settings)?;
        Self::build_with_store(settings, store).await
    }

    /// Like [`Application::build`] on a store the caller opened (tests wrap the real
    /// store to inject faults).
    pub async fn build_with_store(
        settings: Settings,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        let unsigned = settings.unsigned_sources();
        if !unsigned.is_empty() {
            tracing::warn!(
                missing = ?unsigned,
                "UNSIGNED WEBHOOKS ACCEPTED: these sources have no secret, so anyone who can reach \
                 {}:{} can post events. Allowed only on loopback; set the keys before exposing the service.",
                settings.server.host,
                settings.server.port
            );
        }
        if settings.api.token.is_empty() {
            tracing::warn!("api.token is not set: the read API is open to anyone who can reach it");
        }

        let correlator = Arc::new(Correlator::from_settings(&settings));
        let (ingest, committer) = Ingest::start(
            store.clone(),
            correlator,
            settings.storage.max_batch,
            settings.storage.queue_depth,
        )
        .context("building the correlation index from the store")?;

        let (sources, disabled_sources) = build_sources(&settings);
        let background = CancellationToken::new();
        // Background tasks, awaited at shutdown so nothing holds the store afterwards.
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut pollers = Vec::new();
        if settings.pollers.cloudwatch.enabled {
            let cw = &settings.pollers.cloudwatch;
            let client = crate::pollers::cloudwatch::client_from_settings(cw).await;
            let poller = CloudWatchPoller::new(client, cw.clone(), store.clone(), ingest.clone());
            pollers.push(poller.health());
            tracing::info!(region = %cw.region, interval_secs = cw.interval_secs, metrics = cw.metrics.len(), "CloudWatch poller started");
            tasks.push(tokio::spawn(poller.run(background.clone())));
        }

        let templates = crate::postmortem::Templates::from_settings(&settings.render)
            .context("loading templates (render.templates_dir)")?;
        let people = crate::people::Directory::new(&settings.people).context("people")?;
        let slack = &settings.sources.slack;
        let slack_names = match slack.bot_token.as_option() {
            Some(token) => Some(
                crate::postmortem::enrich::SlackEnricher::new(
                    token.expose(),
                    &slack.api_url,
                    store.clone(),
                    people.clone(),
                )
                .context("building the Slack client (sources.slack.api_url)")?,
            ),
            None => None,
        };
        let gh = &settings.sources.github;
        let enricher = match gh.token.as_option() {
            Some(token) => Some(
                crate::postmortem::enrich::GithubEnricher::new(
                    token.expose(),
                    &gh.api_url,
                    store.clone(),
                )
                .context("building the GitHub client (sources.github.api_url)")?,
            ),
            None => None,
        };
        let renderer = Arc::new(
            crate::postmortem::renderer::Renderer::with_pool(
                templates,
                store.clone(),
                enricher,
                settings.render.max_concurrent,
                Duration::from_secs(settings.render.queue_timeout_secs),
            )
            .with_people(people, slack_names),
        );
        tasks.push(crate::postmortem::renderer::spawn(
            renderer.clone(),
            ingest.subscribe(),
            background.clone(),
        ));

        let reconcile = Arc::new(
            crate::reconcile::Reconcile::from_settings(&settings, store.clone(), ingest.clone())
                .context(
                    "building the reconcilers (sources.github.api_url, sources.pagerduty.api_url)",
                )?,
        );
        renderer.wait_for(reconcile.clone());
        tasks.extend(crate::reconcile::spawn(
            reconcile.clone(),
            ingest.subscribe(),
            background.clone(),
        ));

        let auth = Arc::new(crate::auth::Auth::new(&settings, store.clone()));
        match auth.end_sessions_of_an_old_token() {
            Ok(0) => {}
            Ok(n) => tracing::info!(ended = n, "api.token changed: page sessions ended"),
            Err(e) => return Err(e).context("ending the page sessions of the previous api.token"),
        }
        let state = web::Data::new(AppState {
            store: store.clone(),
            ingest: ingest.clone(),
            sources,
            disabled_sources,
            auth: auth.clone(),
            allowed_hosts: settings.allowed_hosts(),
            public_origin: settings.public_origin(),
            max_body_bytes: settings.server.max_body_bytes,
            request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
            metrics: telemetry::metrics_handle(),
            pollers,
            renderer,
            pages: Arc::new(crate::web::Pages::load().context("loading the page templates")?),
            services: settings.services.iter().map(|s| s.name.clone()).collect(),
            reconcile,
        });

        tasks.push(spawn_delivery_pruner(
            store.clone(),
            settings.storage.delivery_retention_days,
            background.clone(),
        ));
        tasks.push(spawn_session_pruner(auth, background.clone()));
        tasks.push(spawn_stream_pruner(
            store.clone(),
            settings.storage.stream_retention_days,
            background.clone(),
        ));
        tasks.push(spawn_lifecycle_logger(ingest.clone(), background.clone()));
        let ingest_handle = ingest.clone();

        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address)
            .with_context(|| format!("binding server.host:server.port {address}"))?;
        let port = listener.local_addr()?.port();
        let max_body_bytes = settings.server.max_body_bytes;
        let mut server = HttpServer::new(move || {
            App::new()
                // The last wrap runs first: metrics see every answer, refusals included.
                .wrap(from_fn(api::guard))
                .wrap(from_fn(telemetry::record_request))
                .app_data(state.clone())
                .configure(|cfg| api::configure(cfg, max_body_bytes))
        })
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        // Slow clients (slowloris) get this long to send their request head, and a
        // stalled body is cut off by the same bound on each read.
        .client_request_timeout(Duration::from_secs(settings.server.request_timeout_secs))
        .client_disconnect_timeout(Duration::from_secs(1))
        .listen(listener)?;
        let workers = match settings.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // actix counts connections per worker.
        server = server
            .workers(workers)
            .max_connections(settings.server.max_connections.div_ceil(workers).max(1))
            // Store reads off the request workers: a few threads each, not actix's 256 (every
            // extra thread keeps an allocator heap: 40 reads at once had made 40 more).
            .worker_max_blocking_threads(WORKER_BLOCKING_THREADS);
        tracing::info!(
            address = %format!("{}:{port}", settings.server.host),
            storage = %settings.storage.path.display(),
            "incidentpost listening"
        );
        Ok(Application {
            port,
            server: server.run(),
            committer,
            ingest: ingest_handle,
            store,
            background,
            tasks,
        })
    }

    /// The bound port (useful with `server.port = 0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ingest handle (pollers and tools submit through it).
    pub fn ingest(&self) -> Ingest {
        self.ingest.clone()
    }

    /// The store the application writes to.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// A handle that stops the server gracefully (as SIGTERM does).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or [`ServerHandle::stop`]), then drains in-flight
    /// requests, commits what is queued, flushes, and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await.context("HTTP server failed")?;
        tracing::info!("HTTP server stopped; draining the ingest queue");
        self.background.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a background task failed");
            }
        }
        self.committer.shutdown().await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .context("final flush task")?
            .context("final flush")?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The enabled push sources, and the disabled ones (answered 404 `source_disabled`).
fn build_sources(settings: &Settings) -> (BTreeMap<Source, Arc<dyn WebhookSource>>, Vec<Source>) {
    let s = &settings.sources;
    let candidates: Vec<(bool, Arc<dyn WebhookSource>)> = vec![
        (
            s.pagerduty.enabled,
            Arc::new(PagerDuty::new(s.pagerduty.secret.as_option().cloned())),
        ),
        (
            s.github.enabled,
            Arc::new(Github::new(s.github.secret.as_option().cloned())),
        ),
        (
            s.slack.enabled,
            Arc::new(Slack::new(
                s.slack.signing_secret.as_option().cloned(),
                s.slack.include_bots,
                s.slack.max_skew_secs,
            )),
        ),
        (
            s.datadog.enabled,
            Arc::new(Datadog::new(s.datadog.token.as_option().cloned())),
        ),
        (
            s.cloudwatch.enabled,
            Arc::new(CloudWatch::new(&s.cloudwatch)),
        ),
    ];
    let mut enabled = BTreeMap::new();
    let mut disabled = Vec::new();
    for (on, source) in candidates {
        if on {
            enabled.insert(source.source(), source);
        } else {
            disabled.push(source.source());
        }
    }
    (enabled, disabled)
}

/// Runs `round` every hour (the first at once) until `stop`; a failed round logs and
/// the next one retries.
fn spawn_hourly<F, Fut>(
    what: &'static str,
    stop: CancellationToken,
    mut round: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<usize>> + Send,
{
    tokio::spawn(async move {
        // The first round a minute after start, not at once: a process that has just
        // started is busy with the webhooks that queued while it was down (and an event
        // dated long ago that arrives now is not pruned under its sender's feet).
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            match round().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "pruned {what}"),
                Err(e) => tracing::warn!(error = %e, "pruning {what} failed; will retry"),
            }
        }
    })
}

fn spawn_delivery_pruner(
    store: Arc<dyn Store>,
    retention_days: u32,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    spawn_hourly("old delivery keys", stop, move || {
        let store = store.clone();
        async move {
            let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
            Ok(tokio::task::spawn_blocking(move || store.prune_deliveries(cutoff)).await??)
        }
    })
}

/// Unattached events per pruning unit: small, so the committer never waits long.
const STREAM_PRUNE_BATCH: usize = 500;

fn spawn_stream_pruner(
    store: Arc<dyn Store>,
    retention_days: u32,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let rounds = stop.clone();
    spawn_hourly("old unattached events", stop, move || {
        let (store, stop) = (store.clone(), rounds.clone());
        async move {
            let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
            prune_stream_before(&store, cutoff, &stop).await
        }
    })
}

/// Prunes unattached events older than `cutoff` in small units until none is left (or
/// the service stops); returns how many went.
pub async fn prune_stream_before(
    store: &Arc<dyn Store>,
    cutoff: chrono::DateTime<chrono::Utc>,
    stop: &CancellationToken,
) -> anyhow::Result<usize> {
    let mut total = 0;
    while !stop.is_cancelled() {
        let s = store.clone();
        let n = tokio::task::spawn_blocking(move || s.prune_stream(cutoff, STREAM_PRUNE_BATCH))
            .await??;
        total += n;
        if n < STREAM_PRUNE_BATCH {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(total)
}

fn spawn_session_pruner(
    auth: Arc<crate::auth::Auth>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    spawn_hourly("expired page sessions", stop, move || {
        let auth = auth.clone();
        async move { Ok(tokio::task::spawn_blocking(move || auth.prune(chrono::Utc::now())).await??) }
    })
}

fn spawn_lifecycle_logger(ingest: Ingest, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let mut changes = ingest.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                change = changes.recv() => match change {
                    Ok(c) => metrics::counter!(
                        "incidentpost_incident_transitions_total",
                        "change" => format!("{:?}", c.change).to_lowercase()
                    ).increment(1),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "lifecycle listener lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    })
}
