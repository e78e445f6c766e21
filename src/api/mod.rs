//! HTTP surface: one route table, thin handlers. Handlers extract, make one call into the
//! core (ingest or store), and map the result; no storage or rendering code lives here.

mod edge;
mod error;
mod incidents;
mod openapi;
mod ops;
pub(crate) mod packs;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::web;
use metrics_exporter_prometheus::PrometheusHandle;

pub use edge::guard;
pub use error::ApiError;
pub(crate) use incidents::{incident_filter, SCAN_PER_PAGE};

use crate::domain::Source;
use crate::ingest::Ingest;
use crate::sources::WebhookSource;
use crate::store::Store;

/// Everything handlers need, shared by every worker.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub ingest: Ingest,
    /// Enabled push sources by name.
    pub sources: BTreeMap<Source, Arc<dyn WebhookSource>>,
    /// Sources that exist but are turned off in config (answered 404 `source_disabled`).
    pub disabled_sources: Vec<Source>,
    /// Bearer token, sessions and failed-attempt limits (checked by [`guard`]).
    pub auth: Arc<crate::auth::Auth>,
    /// Host names accepted in `Host`; `None` accepts any.
    pub allowed_hosts: Option<Vec<String>>,
    /// `scheme://host[:port]` of `server.public_url`: the origin of our own pages behind
    /// a proxy that rewrites `Host`.
    pub public_origin: Option<String>,
    pub max_body_bytes: usize,
    /// How long a webhook body may take to arrive (slow senders are cut off: 408).
    pub request_timeout: std::time::Duration,
    pub metrics: PrometheusHandle,
    /// Health of the running pollers, for `/readyz`.
    pub pollers: Vec<Arc<crate::pollers::PollerHealth>>,
    /// Renders and serves postmortem packs.
    pub renderer: Arc<crate::postmortem::renderer::Renderer>,
    /// The page templates.
    pub pages: Arc<crate::web::Pages>,
    /// The service map's names (the list page's service filter).
    pub services: Vec<String>,
    /// The receipt ledger and the reconcilers (`/deliveries/…`).
    pub reconcile: Arc<crate::reconcile::Reconcile>,
}

/// The route table: every route of the service is registered here. `max_body_bytes`
/// bounds every body extractor ([`guard`] has already read the body under the same bound).
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(web::PayloadConfig::new(max_body_bytes))
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::InvalidQuery(e.to_string()).into()),
        )
        .app_data(
            web::JsonConfig::default()
                .limit(max_body_bytes)
                .error_handler(move |e, _| match e {
                    actix_web::error::JsonPayloadError::Overflow { .. }
                    | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                        ApiError::PayloadTooLarge {
                            limit: max_body_bytes,
                        }
                        .into()
                    }
                    e => ApiError::Payload(crate::sources::NormalizeError::Shape(e.to_string()))
                        .into(),
                }),
        )
        .app_data(
            web::FormConfig::default()
                .limit(max_body_bytes)
                .error_handler(move |e, _| match e {
                    actix_web::error::UrlencodedError::Overflow { .. } => {
                        ApiError::PayloadTooLarge {
                            limit: max_body_bytes,
                        }
                        .into()
                    }
                    e => ApiError::Payload(crate::sources::NormalizeError::Shape(e.to_string()))
                        .into(),
                }),
        )
        .route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/openapi.json", web::get().to(openapi::serve))
        .route("/webhooks/{source}", web::post().to(webhooks::receive))
        .route("/incidents", web::get().to(incidents::list))
        .route("/incidents/import", web::post().to(packs::import_timeline))
        .route("/incidents/{id}", web::get().to(incidents::get))
        .route("/incidents/{id}", web::patch().to(packs::edit))
        .route("/incidents/{id}/events", web::get().to(incidents::events))
        .route("/incidents/{id}/render", web::post().to(packs::render))
        .route("/incidents/{id}/pack.zip", web::get().to(packs::zip))
        .route("/incidents/{id}/{file}", web::get().to(packs::file))
        .configure(crate::web::configure)
        .route("/events/unattached", web::get().to(incidents::unattached))
        .route("/deliveries/report", web::get().to(ops::deliveries_report))
        .route("/deliveries/reconcile", web::post().to(ops::reconcile_now))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::RouteNotFound)
        }));
}

/// Parses an incident id from a path, answering 400 `invalid_incident_id`.
pub(crate) fn parse_id(raw: &str) -> Result<crate::domain::IncidentId, ApiError> {
    crate::domain::IncidentId::parse(raw).map_err(|e| ApiError::InvalidIncidentId(e.to_string()))
}

/// Runs blocking store or render work off the async workers and maps both layers of
/// failure into the API's errors.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    web::block(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(Into::into)
}
