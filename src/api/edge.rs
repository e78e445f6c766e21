//! The HTTP edge: one middleware in front of every route. In order, before any handler
//! runs or any body is read:
//!
//! 1. `Host` must be one of `server.allowed_hosts` (DNS rebinding), except for the probe
//!    and metrics routes, which orchestrators call by IP → 421 `host_not_allowed`;
//! 2. a state-changing request with a cross-site `Origin` or `Sec-Fetch-Site: cross-site`
//!    is refused (a web page driving the loopback default) → 403 `cross_site_request`;
//!    providers' webhooks carry neither header;
//! 3. authentication: bearer token or page session ([`crate::auth`]) for the API and the
//!    pages, with failed attempts limited per client address → 401 / 303 to login / 429;
//! 4. the body is read under `server.request_timeout_secs` and `server.max_body_bytes`
//!    → 408 `request_timeout` / 413 `payload_too_large`, then handed to the handler.
//!
//! Every response gets `X-Content-Type-Options: nosniff`.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::{ApiError, AppState};
use crate::auth::{Identity, SESSION_COOKIE};
use crate::domain::{host_of_authority, Source};

/// Which part of the surface a path belongs to, for authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    /// Probes, metrics, the OpenAPI document: open.
    Ops,
    /// Provider webhooks: authenticated by their signatures, in the handler.
    Webhook,
    /// Login, logout, static files, the root redirect: open.
    PublicPage,
    /// The pages: a session (or the bearer token).
    Page,
    /// The read/edit API, and every unknown path: the bearer token (or a session for GET).
    Api,
}

fn area(path: &str) -> Area {
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" => Area::Ops,
        "/" | "/ui/login" | "/ui/logout" => Area::PublicPage,
        p if p.starts_with("/webhooks/") => Area::Webhook,
        p if p.starts_with("/ui/static/") => Area::PublicPage,
        p if p == "/ui" || p.starts_with("/ui/") => Area::Page,
        _ => Area::Api,
    }
}

/// Routes that answer whatever the `Host`: Kubernetes probes and Prometheus scrape the
/// pod by IP, and none of them reveal incident data.
fn host_exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The authority a request names: the request target's in absolute form (which wins
/// over `Host`, RFC 9112 §3.2.2), else `Host`, else the HTTP/2 `:authority`. `Err` when
/// a `Host` header is present but unreadable.
fn request_authority(req: &ServiceRequest) -> Result<Option<String>, ()> {
    if let Some(a) = req.uri().authority() {
        return Ok(Some(a.as_str().to_owned()));
    }
    match req.headers().get(header::HOST) {
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| ()),
        None => Ok(None),
    }
}

/// The host name a request names, lower-case, without port. `Err` when it names one that
/// cannot be read (refused as if it named another host).
fn request_host(req: &ServiceRequest) -> Result<Option<String>, ()> {
    match request_authority(req)? {
        None => Ok(None),
        Some(a) => host_of_authority(&a).map(Some).ok_or(()),
    }
}

/// True for a request a browser sent on behalf of another origin. Same origin means the
/// same scheme, host and port as this request (or as `server.public_url`, when a proxy
/// in front rewrites `Host`): another port on localhost is another site.
fn is_cross_site(req: &ServiceRequest, public_origin: Option<&str>) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("Sec-Fetch-Site") {
        let site = site.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str().map(|o| o.trim().to_ascii_lowercase()) else {
        return true;
    };
    if public_origin.is_some_and(|p| p == origin) {
        return false;
    }
    let scheme = req.connection_info().scheme().to_ascii_lowercase();
    let own = match request_authority(req) {
        Ok(Some(a)) => format!("{scheme}://{}", a.to_ascii_lowercase()),
        _ => return true,
    };
    // A default port may be left out by either side.
    let strip_default = |o: &str| -> String {
        o.strip_suffix(":80")
            .filter(|_| o.starts_with("http://"))
            .or_else(|| o.strip_suffix(":443").filter(|_| o.starts_with("https://")))
            .unwrap_or(o)
            .to_owned()
    };
    strip_default(&origin) != strip_default(&own)
}

fn refuse<B>(req: ServiceRequest, err: ApiError) -> ServiceResponse<EitherBody<B>> {
    answer(req, err.error_response())
}

fn answer<B>(req: ServiceRequest, mut res: HttpResponse) -> ServiceResponse<EitherBody<B>> {
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    req.into_response(res).map_into_right_body()
}

/// The middleware; see the module documentation for what it does in which order.
pub async fn guard<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(refuse(req, ApiError::Internal("AppState missing".into())));
    };
    let path = req.path().to_owned();
    let area = area(&path);
    // A webhook refused here is counted in the receipt ledger like one its handler refuses.
    let webhook = (area == Area::Webhook)
        .then(|| path.strip_prefix("/webhooks/")?.parse::<Source>().ok())
        .flatten();
    let refuse = |req: ServiceRequest, err: ApiError| {
        if let Some(source) = webhook {
            let ledger = state.reconcile.ledger();
            ledger.received(source);
            ledger.rejected(source, err.reason());
        }
        refuse(req, err)
    };

    if !host_exempt(&path) {
        if let Some(allowed) = &state.allowed_hosts {
            // No Host at all (HTTP/1.0) or one that cannot be read: not a name we serve.
            let ok = matches!(request_host(&req), Ok(Some(h)) if allowed.contains(&h));
            if !ok {
                tracing::warn!(host = ?request_authority(&req).ok().flatten().map(|h| h.chars().take(64).collect::<String>()), "request for a host not in server.allowed_hosts refused");
                return Ok(refuse(req, ApiError::HostNotAllowed));
            }
        }
    }
    let method = req.method().clone();
    let safe = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && is_cross_site(&req, state.public_origin.as_deref()) {
        return Ok(refuse(req, ApiError::CrossSite));
    }
    // Compressed request bodies would be inflated after the size check; no provider
    // sends them.
    if let Some(enc) = req.headers().get(header::CONTENT_ENCODING) {
        if !enc
            .to_str()
            .is_ok_and(|e| e.trim().eq_ignore_ascii_case("identity"))
        {
            return Ok(refuse(req, ApiError::UnsupportedEncoding));
        }
    }

    if state.auth.required() && matches!(area, Area::Api | Area::Page | Area::PublicPage) {
        let client = crate::auth::client_ip(req.peer_addr());
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| match v.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    token.trim().to_owned()
                }
                _ => String::new(),
            });
        let logging_in = path == "/ui/login" && method == Method::POST;
        if bearer.is_some() || logging_in {
            if let Some(wait) = state.auth.locked_out(client) {
                return Ok(refuse(
                    req,
                    ApiError::TooManyAttempts(wait.as_secs().max(1)),
                ));
            }
        }
        let cookie = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let identity = if bearer.is_some() || cookie.is_some() {
            let auth = state.auth.clone();
            let now = chrono::Utc::now();
            let b = bearer.clone();
            match web::block(move || auth.identify(b.as_deref(), cookie.as_deref(), now)).await {
                Ok(Ok(identity)) => identity,
                Ok(Err(e)) => return Ok(refuse(req, e.into())),
                Err(e) => return Ok(refuse(req, ApiError::Internal(e.to_string()))),
            }
        } else {
            Identity::default()
        };
        if bearer.is_some() && !identity.bearer {
            state.auth.record_failure(client);
            tracing::warn!(client = %client, path = %path, "wrong bearer token");
            if area == Area::Api {
                return Ok(refuse(
                    req,
                    ApiError::Unauthorized("invalid bearer token".into()),
                ));
            }
        }
        match area {
            Area::Api if !(identity.bearer || (safe && identity.session.is_some())) => {
                return Ok(refuse(
                    req,
                    ApiError::Unauthorized(if identity.session.is_some() {
                        "a page session only authorizes downloads (GET); send the bearer token"
                            .into()
                    } else {
                        "missing bearer token".into()
                    }),
                ));
            }
            Area::Page if !(identity.bearer || identity.session.is_some()) => {
                let next = if method == Method::GET {
                    req.uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "/ui".into())
                } else {
                    "/ui".into()
                };
                let to = format!("/ui/login?next={}", crate::web::urlencode(&next));
                let res = HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, to))
                    .finish();
                return Ok(answer(req, res));
            }
            _ => {}
        }
        req.extensions_mut().insert(identity);
    }

    if !matches!(method, Method::GET | Method::HEAD) {
        match read_body(&mut req, state.max_body_bytes, state.request_timeout).await {
            Ok(body) => req.set_payload(Payload::from(body)),
            Err(e) => return Ok(refuse(req, e)),
        }
    }

    let mut res = next.call(req).await?;
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    Ok(res.map_into_left_body())
}

/// Reads the whole body under the deadline and the size limit (the declared length is
/// checked before anything is read).
async fn read_body(
    req: &mut ServiceRequest,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut payload = req.take_payload();
    let capacity = declared.map_or(0, |n| n as usize).min(limit);
    let read = async move {
        let mut body = web::BytesMut::with_capacity(capacity);
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(deadline.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fall_into_their_areas_and_unknown_ones_need_the_token() {
        for (path, want) in [
            ("/healthz", Area::Ops),
            ("/openapi.json", Area::Ops),
            ("/webhooks/pagerduty", Area::Webhook),
            ("/ui/login", Area::PublicPage),
            ("/ui/static/app.css", Area::PublicPage),
            ("/ui", Area::Page),
            ("/ui/incidents/P1", Area::Page),
            ("/uix", Area::Api),
            ("/incidents", Area::Api),
            ("/anything/else", Area::Api),
        ] {
            assert_eq!(area(path), want, "{path}");
        }
    }

    #[test]
    fn hosts_are_read_without_port_and_case() {
        assert_eq!(
            host_of_authority("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(host_of_authority("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_of_authority("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of_authority(""), None);
    }
}
