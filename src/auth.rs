//! Who may use the read/edit API and the pages: the bearer token, page sessions kept in
//! the store, and a limit on failed attempts per client address. The HTTP edge
//! (`api::edge`) calls this once per request, before any body is read; `api` and `web`
//! only read the outcome.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::{Secret, Settings};
use crate::sources::signature::{constant_time_eq, hmac_sha256_hex, sha256_hex};
use crate::store::{Store, StoreError};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "incidentpost_session";

/// What the edge found out about a request, kept in its extensions for handlers.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// A valid `Authorization: Bearer` token was presented.
    pub bearer: bool,
    /// The cookie value of a valid, unexpired page session.
    pub session: Option<String>,
}

/// Authentication settings and state shared by every worker.
pub struct Auth {
    token: Option<Secret>,
    store: Arc<dyn Store>,
    ttl: chrono::Duration,
    cookie_secure: bool,
    limiter: FailureLimiter,
    /// Signs CSRF tokens of requests without a session (no token configured).
    anonymous_key: String,
}

/// A new page session: the cookie to set.
pub struct NewSession {
    pub cookie_value: String,
    pub max_age_secs: i64,
}

impl Auth {
    pub fn new(settings: &Settings, store: Arc<dyn Store>) -> Self {
        Auth {
            token: settings.api.token.as_option().cloned(),
            store,
            ttl: chrono::Duration::hours(i64::from(settings.api.session_ttl_hours)),
            cookie_secure: settings.cookie_secure(),
            limiter: FailureLimiter::new(settings.api.auth_failures_per_minute, 65_536),
            anonymous_key: random_hex(32),
        }
    }

    /// True when an `api.token` is configured (else everything is open: loopback trials).
    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    /// Whether the session cookie must be marked `Secure`.
    pub fn cookie_secure(&self) -> bool {
        self.cookie_secure
    }

    /// Checks a presented API token in constant time.
    pub fn token_matches(&self, presented: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| constant_time_eq(presented.trim(), t.expose()))
    }

    /// The identity of a request's credentials. Reads the store when a session cookie
    /// is presented (blocking: call off the async workers).
    pub fn identify(
        &self,
        bearer: Option<&str>,
        cookie: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Identity, StoreError> {
        let mut id = Identity {
            bearer: bearer.is_some_and(|b| self.token_matches(b)),
            session: None,
        };
        if let Some(c) = cookie.filter(|c| is_session_shaped(c)) {
            if let Some(expires) = self.store.session(&session_key(c))? {
                if expires > now {
                    id.session = Some(c.to_owned());
                }
            }
        }
        Ok(id)
    }

    /// Starts a page session (the caller checked the token).
    pub fn start_session(&self, now: DateTime<Utc>) -> Result<NewSession, StoreError> {
        let cookie_value = random_hex(32);
        self.store
            .put_session(&session_key(&cookie_value), now + self.ttl)?;
        Ok(NewSession {
            cookie_value,
            max_age_secs: self.ttl.num_seconds(),
        })
    }

    /// Ends a session; the cookie is worthless afterwards.
    pub fn end_session(&self, cookie_value: &str) -> Result<(), StoreError> {
        if is_session_shaped(cookie_value) {
            self.store.delete_session(&session_key(cookie_value))?;
        }
        Ok(())
    }

    /// Ends every session when `api.token` changed since the last start (rotating a
    /// leaked token must log out whoever logged in with it). Returns how many ended.
    pub fn end_sessions_of_an_old_token(&self) -> Result<usize, StoreError> {
        const KEY: &str = "auth:token_fingerprint";
        let fingerprint = self
            .token
            .as_ref()
            .map(|t| {
                hmac_sha256_hex(
                    t.expose().as_bytes(),
                    &[b"incidentpost-token-fingerprint-v1"],
                )
            })
            .unwrap_or_default();
        if self.store.cursor(KEY)?.as_deref() == Some(fingerprint.as_str()) {
            return Ok(0);
        }
        let ended = self.store.prune_sessions(DateTime::<Utc>::MAX_UTC)?;
        self.store.put_cache(KEY, &fingerprint)?;
        self.store.flush()?;
        Ok(ended)
    }

    /// Forgets expired sessions.
    pub fn prune(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.store.prune_sessions(now)
    }

    /// The CSRF token of forms shown in a session. Derived from the session's random
    /// value, so it reveals nothing about `api.token` and dies with the session.
    pub fn csrf_token(&self, session: Option<&str>) -> String {
        match session {
            Some(s) => hmac_sha256_hex(s.as_bytes(), &[b"incidentpost-csrf-v2"]),
            None => hmac_sha256_hex(self.anonymous_key.as_bytes(), &[b"incidentpost-csrf-v2"]),
        }
    }

    /// `Some(wait)` while a client address has used up its failed attempts.
    pub fn locked_out(&self, client: IpAddr) -> Option<Duration> {
        self.limiter.retry_after(client, Instant::now())
    }

    /// Counts one failed login or bearer token of a client address.
    pub fn record_failure(&self, client: IpAddr) {
        self.limiter.record(client, Instant::now());
    }
}

/// The address failed attempts are counted under: the TCP peer (forwarded headers are not
/// trusted: nothing says which proxy set them).
pub fn client_ip(peer: Option<std::net::SocketAddr>) -> IpAddr {
    peer.map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// The store key of a session: a hash of the cookie, so a copy of the store (an export,
/// a backup) holds no usable cookie.
fn session_key(cookie_value: &str) -> String {
    sha256_hex(cookie_value.as_bytes())
}

/// 64 lower-case hex characters, as [`Auth::start_session`] makes them.
fn is_session_shaped(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `bytes` random bytes from the operating system, as hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    hex::encode(buf)
}

/// Failed attempts per client address in a fixed one-minute window.
struct FailureLimiter {
    max_per_window: u32,
    window: Duration,
    max_clients: usize,
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    fn new(max_per_window: u32, max_clients: usize) -> Self {
        FailureLimiter {
            max_per_window,
            window: Duration::from_secs(60),
            max_clients,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn retry_after(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = clients.get(&client)?;
        let elapsed = now.saturating_duration_since(*start);
        (*count >= self.max_per_window && elapsed < self.window).then(|| self.window - elapsed)
    }

    fn record(&self, client: IpAddr, now: Instant) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= self.max_clients && !clients.contains_key(&client) {
            // Bounded memory under a spray of addresses: forget finished windows first,
            // then addresses not locked out, and only then the oldest half: a spray must
            // not unlock a guesser.
            let window = self.window;
            clients.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if clients.len() >= self.max_clients {
                let max = self.max_per_window;
                clients.retain(|_, (_, count)| *count >= max);
            }
            if clients.len() >= self.max_clients {
                let mut starts: Vec<Instant> = clients.values().map(|(s, _)| *s).collect();
                starts.sort();
                let cutoff = starts[starts.len() / 2];
                clients.retain(|_, (start, _)| *start > cutoff);
            }
        }
        let entry = clients.entry(client).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_locks_a_client_after_its_failures_for_the_rest_of_the_window() {
        let limiter = FailureLimiter::new(3, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.retry_after(a, t0), None);
            limiter.record(a, t0);
        }
        let wait = limiter
            .retry_after(a, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(
            limiter.retry_after(b, t0),
            None,
            "other clients are not locked"
        );
        assert_eq!(limiter.retry_after(a, t0 + Duration::from_secs(61)), None);
        limiter.record(a, t0 + Duration::from_secs(61));
        assert_eq!(limiter.retry_after(a, t0 + Duration::from_secs(62)), None);
    }

    #[test]
    fn a_spray_of_addresses_does_not_unlock_a_locked_client() {
        let limiter = FailureLimiter::new(3, 100);
        let guesser: IpAddr = "192.0.2.9".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.record(guesser, t0);
        }
        for i in 0..10_000u32 {
            limiter.record(
                IpAddr::from((i + 1).to_be_bytes()),
                t0 + Duration::from_secs(1),
            );
        }
        assert!(limiter
            .retry_after(guesser, t0 + Duration::from_secs(2))
            .is_some());
    }

    #[test]
    fn the_limiter_stays_bounded_under_many_addresses() {
        let limiter = FailureLimiter::new(3, 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            limiter.record(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(limiter.clients.lock().unwrap().len() <= 100);
    }

    #[test]
    fn session_values_are_random_and_hex() {
        let a = random_hex(32);
        let b = random_hex(32);
        assert_ne!(a, b);
        assert!(is_session_shaped(&a) && is_session_shaped(&b));
        assert!(!is_session_shaped("not-a-session"));
    }
}
