//! The one HTTP error type. Every module's error maps here to a stable code and status;
//! 5xx bodies are generic and the cause goes to the log.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::ingest::IngestError;
use crate::sources::{NormalizeError, VerifyError};
use crate::store::StoreError;

/// An error answered as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Signature(#[from] VerifyError),
    #[error("{0}")]
    Payload(#[from] NormalizeError),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {0} seconds")]
    BodyTimeout(u64),
    #[error("unknown source '{0}'; webhooks are taken at /webhooks/pagerduty, datadog, github, slack and cloudwatch")]
    UnknownSource(String),
    #[error("source '{0}' is disabled in the configuration")]
    SourceDisabled(String),
    #[error("{0}")]
    InvalidIncidentId(String),
    #[error("no incident with id '{0}'")]
    IncidentNotFound(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("no route for this path")]
    RouteNotFound,
    #[error("this Host is not one of server.allowed_hosts")]
    HostNotAllowed,
    #[error("cross-site requests may not change anything here")]
    CrossSite,
    #[error("compressed request bodies (Content-Encoding) are not accepted; send the body as is")]
    UnsupportedEncoding,
    #[error("too many failed attempts from this address; retry in {0} seconds")]
    TooManyAttempts(u64),
    #[error("storage is unavailable; retry later")]
    StorageUnavailable,
    #[error("the service is overloaded; retry later")]
    Overloaded,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Signature(VerifyError::Missing(_)) => "missing_signature",
            ApiError::Signature(VerifyError::Stale) => "stale_timestamp",
            ApiError::Signature(VerifyError::Unavailable(_)) => "verification_unavailable",
            ApiError::Signature(_) => "invalid_signature",
            ApiError::Payload(NormalizeError::Empty) => "empty_body",
            ApiError::Payload(NormalizeError::Malformed(_)) => "malformed_body",
            ApiError::Payload(NormalizeError::Shape(_)) => "invalid_payload",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyRead(_) => "malformed_body",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::UnknownSource(_) => "unknown_source",
            ApiError::SourceDisabled(_) => "source_disabled",
            ApiError::InvalidIncidentId(_) => "invalid_incident_id",
            ApiError::IncidentNotFound(_) => "incident_not_found",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::RouteNotFound => "not_found",
            ApiError::HostNotAllowed => "host_not_allowed",
            ApiError::CrossSite => "cross_site_request",
            ApiError::UnsupportedEncoding => "unsupported_encoding",
            ApiError::TooManyAttempts(_) => "too_many_attempts",
            ApiError::StorageUnavailable => "storage_unavailable",
            ApiError::Overloaded => "overloaded",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The label used in `incidentpost_webhooks_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        self.code()
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Overloaded => ApiError::Overloaded,
            IngestError::Storage | IngestError::ShuttingDown => ApiError::StorageUnavailable,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::BadCursor = e {
            return ApiError::InvalidQuery("cursor is not one this list handed out".into());
        }
        tracing::error!(error = %e, "store read failed");
        ApiError::StorageUnavailable
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Signature(VerifyError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) | ApiError::Signature(_) => StatusCode::UNAUTHORIZED,
            ApiError::Payload(_)
            | ApiError::BodyRead(_)
            | ApiError::InvalidIncidentId(_)
            | ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnknownSource(_)
            | ApiError::SourceDisabled(_)
            | ApiError::IncidentNotFound(_)
            | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            ApiError::CrossSite => StatusCode::FORBIDDEN,
            ApiError::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StorageUnavailable | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut res = HttpResponse::build(self.status_code());
        if matches!(
            self,
            ApiError::StorageUnavailable
                | ApiError::Overloaded
                | ApiError::Signature(VerifyError::Unavailable(_))
        ) {
            res.insert_header(("Retry-After", "5"));
        }
        if let ApiError::TooManyAttempts(secs) = self {
            res.insert_header(("Retry-After", secs.to_string()));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        res.json(json!({"error": {"code": self.code(), "message": message}}))
    }
}
