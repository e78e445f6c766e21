//! Pull sources. Each poller has a `poll_once()` that tests call directly and a `run()`
//! loop that stops on the shared shutdown token and reports its health for `/readyz`.

pub mod cloudwatch;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Health of one poller, shared with `/readyz` and `/metrics`.
#[derive(Debug)]
pub struct PollerHealth {
    name: &'static str,
    interval: Duration,
    started: DateTime<Utc>,
    last_success: Mutex<Option<DateTime<Utc>>>,
    failures: AtomicU32,
}

impl PollerHealth {
    /// A poller that has not polled yet.
    pub fn new(name: &'static str, interval: Duration) -> Self {
        PollerHealth {
            name,
            interval,
            started: Utc::now(),
            last_success: Mutex::new(None),
            failures: AtomicU32::new(0),
        }
    }

    /// Records a successful round.
    pub fn record_success(&self) {
        let now = Utc::now();
        if let Ok(mut t) = self.last_success.lock() {
            *t = Some(now);
        }
        self.failures.store(0, Ordering::Relaxed);
        metrics::gauge!("incidentpost_poller_last_success_timestamp_seconds", "poller" => self.name)
            .set(now.timestamp() as f64);
    }

    /// Records a failed round (the error itself goes to the log; `/readyz` is public).
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("incidentpost_poller_errors_total", "poller" => self.name).increment(1);
    }

    /// Failed rounds in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// No success for three intervals (counted from start-up until the first one).
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let since = self
            .last_success
            .lock()
            .ok()
            .and_then(|t| *t)
            .unwrap_or(self.started);
        let limit =
            chrono::Duration::from_std(self.interval * 3).unwrap_or(chrono::Duration::minutes(5));
        now - since > limit.max(chrono::Duration::seconds(30))
    }

    /// The poller's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The `/readyz` view.
    pub fn status(&self, now: DateTime<Utc>) -> Value {
        let last = self.last_success.lock().ok().and_then(|t| *t);
        json!({
            "status": if self.is_stale(now) { "stale" } else if self.consecutive_failures() > 0 { "failing" } else { "ok" },
            "last_success": last,
            "consecutive_failures": self.consecutive_failures(),
        })
    }
}
