//! Reconciliation: what we stored, compared with the providers' own records, so a webhook
//! that never arrived (we were down, or answered 408/503 and the provider gave up) is
//! recovered instead of silently missing from the postmortem.
//!
//! - GitHub ([`github`]): the delivery log of every hook we have seen (or that
//!   `sources.github.hooks` lists) is read; a delivery we never stored is redelivered
//!   once, and arrives as a normal signed webhook.
//! - PagerDuty ([`pagerduty`]): each open incident, and once more on resolve, is read
//!   with its notes; a status change or a note we do not have is added through the same
//!   ingest path and dedupe, marked `recovered`, so its late webhook is a duplicate.
//!
//! One replica reconciles (`Store::lead("reconciler")`). The [`Ledger`] counts what each
//! source delivered; `GET /deliveries/report` shows it with the reconcilers' state.

pub mod github;
pub mod pagerduty;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::{Incident, Source};
use crate::ingest::{Change, Ingest, LifecycleChange};
use crate::store::{Store, StoreError};

/// Counts of one source's deliveries since this process started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub received: u64,
    pub stored: u64,
    pub duplicates: u64,
    /// Rejected deliveries by reason (the error code of the answer).
    pub rejected: BTreeMap<&'static str, u64>,
}

/// What every source delivered to this process: received, stored, duplicates, rejected
/// by reason. Kept in memory (a rejected delivery stores nothing); the reconcilers'
/// counts (recovered, missing) are in the store.
pub struct Ledger {
    since: DateTime<Utc>,
    counts: Mutex<BTreeMap<&'static str, Counts>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            since: Utc::now(),
            counts: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Ledger {
    fn with(&self, source: Source, f: impl FnOnce(&mut Counts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        f(counts.entry(source.as_str()).or_default());
    }
    pub fn received(&self, source: Source) {
        self.with(source, |c| c.received += 1);
    }
    pub fn stored(&self, source: Source) {
        self.with(source, |c| c.stored += 1);
    }
    pub fn duplicate(&self, source: Source) {
        self.with(source, |c| c.duplicates += 1);
    }
    pub fn rejected(&self, source: Source, reason: &'static str) {
        self.with(source, |c| *c.rejected.entry(reason).or_default() += 1);
    }
    fn snapshot(&self) -> BTreeMap<&'static str, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A reconciler's durable state (`reconcile:state:<source>`), written only by the
/// replica that reconciles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round_at: Option<DateTime<Utc>>,
    /// `complete`, `partial` (a bound was reached; the next round goes on) or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Rate limited: no call before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<DateTime<Utc>>,
    /// Every delivery the provider logged before this was checked (GitHub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_until: Option<DateTime<Utc>>,
    /// Deliveries (GitHub) or incidents (PagerDuty) checked, all rounds together.
    #[serde(default)]
    pub checked: u64,
    /// Redeliveries asked for (GitHub).
    #[serde(default)]
    pub requested: u64,
    /// Missed deliveries (GitHub) or changes and notes (PagerDuty) recovered.
    #[serde(default)]
    pub recovered: u64,
    /// Consecutive failed rounds (the backoff doubles with each).
    #[serde(default)]
    pub failures: u32,
    /// The provider refused the token (401/403) at the last call: nothing can be
    /// recovered until it is fixed, so final renders do not wait for it.
    #[serde(default)]
    pub refused: bool,
}

impl SourceState {
    /// Ends a round: counts it, and after a failed one sets the next round's wait (30 s,
    /// doubling with each failure in a row, unless a rate limit already says longer).
    fn end_round(&mut self, source: Source, now: DateTime<Utc>, failed: bool, complete: bool) {
        self.last_round_at = Some(now);
        let result = if failed {
            self.failures += 1;
            if self.backoff_until.is_none_or(|u| u <= now) {
                self.backoff_until = Some(now + backoff(self.failures.saturating_sub(1)));
            }
            "failed"
        } else if complete {
            self.failures = 0;
            "complete"
        } else {
            "partial"
        };
        self.last_round = Some(result.into());
        metrics::counter!("incidentpost_reconcile_rounds_total", "source" => source.as_str(), "result" => result)
            .increment(1);
    }
}

/// A round's summary, or the storage failure that stopped it.
fn summary_or_failure(result: Result<RoundSummary, StoreError>, source: Source) -> RoundSummary {
    result.unwrap_or_else(|e| {
        tracing::warn!(source = source.as_str(), error = %e, "reconciliation failed");
        RoundSummary {
            error: Some(e.to_string()),
            ..Default::default()
        }
    })
}

fn state_key(source: Source) -> String {
    format!("reconcile:state:{}", source.as_str())
}

/// Reads a reconciler's state (a missing or unreadable one is a fresh start).
pub fn load_state(store: &dyn Store, source: Source) -> Result<SourceState, StoreError> {
    Ok(store
        .cursor(&state_key(source))?
        .and_then(|raw| serde_json::from_str(&raw).ok())
        .unwrap_or_default())
}

fn save_state(store: &dyn Store, source: Source, state: &SourceState) -> Result<(), StoreError> {
    let raw = serde_json::to_string(state).map_err(|e| StoreError::Engine(e.to_string()))?;
    store.put_cache(&state_key(source), &raw)
}

/// The backoff after `failures` failed rounds in a row: 30 s doubling, at most an hour.
fn backoff(failures: u32) -> chrono::Duration {
    chrono::Duration::seconds(30_i64 << failures.min(7)).min(chrono::Duration::hours(1))
}

/// What a round reports, by source (`github`, `pagerduty`).
pub type Round = BTreeMap<&'static str, RoundSummary>;
type RunRequest = oneshot::Sender<Round>;

/// How one round went, per source (`POST /deliveries/reconcile` answers with it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundSummary {
    /// Why nothing was done (not configured, backing off, another replica reconciles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub checked: u64,
    pub requested: u64,
    pub recovered: u64,
    pub missing: u64,
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Outbound-call failures of a reconciler.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// 429, or 403 with the rate limit spent: wait until then.
    #[error("rate limited until {0}")]
    RateLimited(DateTime<Utc>),
    /// 401/403: the token is wrong or lacks the scope.
    #[error("{0}")]
    Refused(String),
    /// 404: the hook (or incident) is gone, or the token cannot see it.
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When a rate-limited answer says to come back: `Retry-After` seconds, else
/// `X-RateLimit-Reset` (epoch seconds), else a minute.
fn retry_at(retry_after: Option<&str>, reset: Option<&str>, now: DateTime<Utc>) -> DateTime<Utc> {
    if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<i64>().ok()) {
        return now + chrono::Duration::seconds(secs.clamp(1, 3600));
    }
    if let Some(at) = reset
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
    {
        return at.clamp(
            now + chrono::Duration::seconds(1),
            now + chrono::Duration::hours(1),
        );
    }
    now + chrono::Duration::seconds(60)
}

/// Both reconcilers, the ledger, and the gate that keeps a final render waiting while a
/// recovery may still change the incident.
pub struct Reconcile {
    store: Arc<dyn Store>,
    ledger: Arc<Ledger>,
    github: Option<github::GithubReconciler>,
    pagerduty: Option<pagerduty::PagerDutyReconciler>,
    interval: Duration,
    grace: chrono::Duration,
    /// This replica held the reconciler lease at its last check.
    leading: std::sync::atomic::AtomicBool,
    runs: mpsc::Sender<RunRequest>,
    run_queue: Mutex<Option<mpsc::Receiver<RunRequest>>>,
}

/// One source's round stops after this long (each call has its own timeout too); the
/// next round goes on.
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

/// How long after a redelivery was asked for a final render still waits for it.
const REDELIVERY_WAIT_SECS: i64 = 120;

impl Reconcile {
    pub fn from_settings(
        settings: &Settings,
        store: Arc<dyn Store>,
        ingest: Ingest,
    ) -> anyhow::Result<Self> {
        let gh = &settings.sources.github;
        let github = match (gh.enabled, gh.token.as_option()) {
            (true, Some(token)) => Some(github::GithubReconciler::new(
                token.expose(),
                &gh.api_url,
                gh.hooks.clone(),
                &settings.reconcile,
                chrono::Duration::days(i64::from(settings.storage.delivery_retention_days)),
                store.clone(),
            )?),
            _ => None,
        };
        let pd = &settings.sources.pagerduty;
        let pagerduty = match (pd.enabled, pd.api_token.as_option()) {
            (true, Some(token)) => Some(pagerduty::PagerDutyReconciler::new(
                token.expose(),
                &pd.api_url,
                store.clone(),
                ingest,
                chrono::Duration::minutes(i64::from(settings.correlation.grace_mins)),
            )?),
            _ => None,
        };
        let (runs, run_queue) = mpsc::channel(4);
        Ok(Reconcile {
            store,
            ledger: Arc::new(Ledger::default()),
            github,
            pagerduty,
            interval: Duration::from_secs(settings.reconcile.interval_secs),
            grace: chrono::Duration::minutes(i64::from(settings.correlation.grace_mins)),
            leading: std::sync::atomic::AtomicBool::new(false),
            runs,
            run_queue: Mutex::new(Some(run_queue)),
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// True when GitHub deliveries are reconciled (a webhook handler then marks the
    /// redeliveries it asked for).
    pub fn reconciles_github(&self) -> bool {
        self.github.is_some()
    }

    /// Remembers the hook a verified GitHub delivery came from, so its log is reconciled.
    pub fn saw_github_hook(&self, headers: &crate::sources::Headers, body: &[u8]) {
        if let Some(gh) = &self.github {
            gh.saw_hook(headers, body);
        }
    }

    /// True when GitHub is reconciled and this delivery's hook is not recorded yet (in
    /// memory: no store read).
    pub fn is_new_github_hook(&self, headers: &crate::sources::Headers) -> bool {
        self.github
            .as_ref()
            .is_some_and(|gh| gh.is_new_hook(headers))
    }

    /// True when a GitHub delivery is one of the redeliveries we asked for.
    pub fn is_redelivery(&self, hook: &str, guid: &str) -> Result<bool, StoreError> {
        match &self.github {
            Some(gh) => gh.asked_for(hook, guid),
            None => Ok(false),
        }
    }

    /// Why a resolved incident's pack must not be rendered as final yet, if it must not:
    /// a recovery that could still add to it is pending and the grace window is open.
    pub fn pending(&self, incident: &Incident, now: DateTime<Utc>) -> Option<&'static str> {
        let resolved = incident
            .resolved_at
            .filter(|_| !incident.status.is_open())?;
        if now > resolved + self.grace {
            return None;
        }
        let answer = |r: Result<Option<&'static str>, StoreError>| {
            r.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "reading the reconciliation state failed; not waiting");
                None
            })
        };
        if let Some(pd) = &self.pagerduty {
            if let Some(why) = answer(pd.pending(incident)) {
                return Some(why);
            }
        }
        // The round that covers a resolve runs on the replica that reconciles, after a
        // resolve it saw: only there is it waited for.
        let leading = self.leading.load(std::sync::atomic::Ordering::Relaxed);
        if let (Some(gh), true) = (&self.github, leading) {
            if let Some(why) = answer(gh.pending(resolved, now)) {
                return Some(why);
            }
        }
        None
    }

    /// [`Reconcile::pending`] off the async workers (it reads the store).
    pub async fn pending_async(self: &Arc<Self>, incident: &Incident) -> Option<&'static str> {
        let this = self.clone();
        let incident = incident.clone();
        tokio::task::spawn_blocking(move || this.pending(&incident, Utc::now()))
            .await
            .unwrap_or(None)
    }

    /// Marks a redelivery we asked for as arrived when it came as a duplicate (by body,
    /// through another hook): it is recovered, not missing.
    pub fn redelivery_arrived(&self, hook: &str, guid: &str) -> Result<(), StoreError> {
        match &self.github {
            Some(gh) => gh.arrived(hook, guid),
            None => Ok(()),
        }
    }

    /// Runs a round now on this replica (`POST /deliveries/reconcile`), if the background
    /// task is running.
    pub async fn run_now(&self) -> Option<Round> {
        let (tx, rx) = oneshot::channel();
        self.runs.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Takes or keeps the reconciler lease; remembers the answer for [`Reconcile::pending`].
    async fn leads(&self) -> bool {
        let store = self.store.clone();
        let leads = tokio::task::spawn_blocking(move || store.lead("reconciler"))
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))
            .and_then(|r| r)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "checking the reconciler lease failed");
                false
            });
        self.leading
            .store(leads, std::sync::atomic::Ordering::Relaxed);
        leads
    }

    async fn round(&self) -> Round {
        let mut out = BTreeMap::new();
        let lead = self.leads().await;
        let not_leader = || RoundSummary {
            skipped: Some("another replica reconciles".into()),
            ..Default::default()
        };
        out.insert(
            "github",
            match &self.github {
                None => skipped(Source::Github),
                Some(_) if !lead => not_leader(),
                Some(gh) => gh.round().await,
            },
        );
        out.insert(
            "pagerduty",
            match &self.pagerduty {
                None => skipped(Source::Pagerduty),
                Some(_) if !lead => not_leader(),
                Some(pd) => pd.round().await,
            },
        );
        out
    }

    /// The `GET /deliveries/report` body: per source, what arrived here, what the
    /// reconcilers recovered and what is still missing.
    pub fn report(&self) -> Result<Value, StoreError> {
        let counts = self.ledger.snapshot();
        let mut sources = serde_json::Map::new();
        let webhooks = Source::ALL
            .into_iter()
            .filter(|s| !matches!(s, Source::Manual | Source::Import));
        for source in webhooks {
            let c = counts.get(source.as_str()).cloned().unwrap_or_default();
            let state = load_state(self.store.as_ref(), source)?;
            let (enabled, why_not) = self.reconciled(source);
            let (missing_count, missing, waiting, hooks) = match (&self.github, source) {
                (Some(gh), Source::Github) => gh.outstanding()?,
                _ => (0, Vec::new(), 0, Vec::new()),
            };
            let rejected_total: u64 = c.rejected.values().sum();
            let mut entry = json!({
                "received": c.received,
                "stored": c.stored,
                "duplicates": c.duplicates,
                "rejected": rejected_total,
                "rejected_by_reason": c.rejected,
                "recovered": state.recovered,
                "missing": missing_count,
                "reconciliation": {
                    "enabled": enabled,
                },
            });
            let r = &mut entry["reconciliation"];
            if let Some(why) = why_not {
                r["why_not"] = json!(why);
            }
            if enabled {
                r["interval_secs"] = json!(self.interval.as_secs());
                r["state"] = json!(state);
                if source == Source::Github {
                    r["redeliveries_waiting"] = json!(waiting);
                    r["hooks"] = json!(hooks);
                    r["missing_deliveries"] = json!(missing);
                }
            }
            sources.insert(source.as_str().to_owned(), entry);
        }
        Ok(json!({
            "generated_at": Utc::now(),
            "counted_since": self.ledger.since,
            "note": "received, stored, duplicates and rejected count what reached this replica since it started; recovered and missing come from the store and cover every replica",
            "sources": sources,
        }))
    }

    fn reconciled(&self, source: Source) -> (bool, Option<&'static str>) {
        match source {
            Source::Github if self.github.is_some() => (true, None),
            Source::Github => (false, Some("sources.github.token is not set: GitHub's delivery log is not read, and a delivery GitHub could not make is not recovered")),
            Source::Pagerduty if self.pagerduty.is_some() => (true, None),
            Source::Pagerduty => (false, Some("sources.pagerduty.api_token is not set: open incidents are not compared with PagerDuty, and a missed status change or note is not recovered")),
            _ => (false, Some("this provider keeps no record of its deliveries to reconcile against")),
        }
    }
}

fn skipped(source: Source) -> RoundSummary {
    RoundSummary {
        skipped: Some(format!(
            "not configured (sources.{}.{} is not set)",
            source.as_str(),
            if source == Source::Github {
                "token"
            } else {
                "api_token"
            }
        )),
        ..Default::default()
    }
}

/// Runs the reconcilers every `reconcile.interval_secs` (the first round shortly after
/// start: a restart follows an outage), on demand, and for PagerDuty once more as soon
/// as an incident resolves here. Nothing runs when neither is configured.
pub fn spawn(
    reconcile: Arc<Reconcile>,
    mut changes: broadcast::Receiver<LifecycleChange>,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut runs = reconcile
        .run_queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()?;
    // Without either reconciler only POST /deliveries/reconcile is answered ("not
    // configured").
    let configured = reconcile.github.is_some() || reconcile.pagerduty.is_some();
    if configured {
        tracing::info!(
            github = reconcile.github.is_some(),
            pagerduty = reconcile.pagerduty.is_some(),
            interval_secs = reconcile.interval.as_secs(),
            "reconciliation started"
        );
    }
    Some(tokio::spawn(async move {
        let first = reconcile.interval.min(Duration::from_secs(20));
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + first, reconcile.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A GitHub round soon after a resolve (once deliveries up to it have settled), so
        // its final pack waits seconds, not an interval.
        let mut github_due: Option<tokio::time::Instant> = None;
        loop {
            let github_round = async {
                match github_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick(), if configured => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        summary = reconcile.round() => tracing::debug!(?summary, "reconciliation round"),
                    }
                }
                _ = github_round => {
                    github_due = None;
                    if let Some(gh) = &reconcile.github {
                        if reconcile.leads().await {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                summary = gh.round() => tracing::debug!(?summary, "GitHub reconciliation after a resolve"),
                            }
                        }
                    }
                }
                asked = runs.recv() => match asked {
                    Some(reply) => {
                        // Requests that came meanwhile share this round.
                        let mut replies = vec![reply];
                        while let Ok(more) = runs.try_recv() {
                            replies.push(more);
                        }
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            summary = reconcile.round() => {
                                for reply in replies {
                                    let _ = reply.send(summary.clone());
                                }
                            }
                        }
                    }
                    None => break,
                },
                change = changes.recv() => match change {
                    Ok(LifecycleChange { incident_id, change: Change::Resolved }) => {
                        if let Some(gh) = &reconcile.github {
                            github_due.get_or_insert_with(|| {
                                tokio::time::Instant::now() + gh.settle_wait()
                            });
                        }
                        // The replica that saw the resolve reads PagerDuty once more itself
                        // (idempotent through the shared keys): the one that reconciles
                        // may never hear of it.
                        if let Some(pd) = &reconcile.pagerduty {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = pd.check_resolved(&incident_id) => {}
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "reconciler lagged behind lifecycle changes");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_answers_say_when_to_come_back() {
        let now = Utc::now();
        assert_eq!(
            retry_at(Some("120"), None, now),
            now + chrono::Duration::seconds(120)
        );
        let reset = (now + chrono::Duration::seconds(300)).timestamp();
        let at = retry_at(None, Some(&reset.to_string()), now);
        assert_eq!(at.timestamp(), reset);
        assert_eq!(
            retry_at(None, None, now),
            now + chrono::Duration::seconds(60)
        );
        // A reset in the past still waits a moment; one far ahead at most an hour.
        assert!(retry_at(None, Some("0"), now) > now);
        assert_eq!(
            retry_at(Some("999999"), None, now),
            now + chrono::Duration::seconds(3600)
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), chrono::Duration::seconds(30));
        assert_eq!(backoff(1), chrono::Duration::seconds(60));
        assert_eq!(backoff(20), chrono::Duration::hours(1));
    }
}
