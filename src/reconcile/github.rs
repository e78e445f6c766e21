//! GitHub: each hook's delivery log (`GET …/hooks/{id}/deliveries`, newest first, paged)
//! compared with the delivery keys we stored. A delivery we never stored is redelivered
//! once (`POST …/deliveries/{id}/attempts`); it then arrives as a normal signed webhook
//! and is marked recovered. GitHub never retries on its own.
//!
//! Store keys (the cursors tree, written only by the replica that reconciles, except the
//! hooks seen, which any replica records):
//! - `reconcile:github:hook:<id>`: a hook deliveries arrived from (`{repo|org, id}`);
//! - `reconcile:github:log:<id>`: the newest delivery id of the hook checked, so a restart
//!   goes on where it stopped;
//! - `reconcile:github:asked:<id>:<guid>`: a redelivery asked for, until it lands (then
//!   counted recovered and forgotten) or is given up: then it moves to
//!   `reconcile:github:missing:<id>:<guid>`, kept until it is older than the look-back,
//!   so it is never asked for twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{load_state, retry_at, save_state, CallError, RoundSummary};
use crate::config::{GithubHook, ReconcileSettings};
use crate::domain::Source;
use crate::sources::Headers;
use crate::store::{Store, StoreError};

const HOOK_PREFIX: &str = "reconcile:github:hook:";
const LOG_PREFIX: &str = "reconcile:github:log:";
const HOOK_ERROR_PREFIX: &str = "reconcile:github:hook_error:";
const ASKED_PREFIX: &str = "reconcile:github:asked:";
const MISSING_PREFIX: &str = "reconcile:github:missing:";
/// Missing deliveries the report lists at most (the count is always whole).
const REPORT_MISSING: usize = 50;
/// The largest delivery-log page read.
const MAX_PAGE_BYTES: usize = 8 << 20;
/// Delivery ids are JSON numbers: none is at or beyond 2^53.
const MAX_DELIVERY_ID: u64 = 1 << 53;
/// Hooks recorded from deliveries at most (each costs calls every round).
const MAX_SEEN_HOOKS: usize = 200;
/// What redelivered events say they came from.
pub const RECOVERED_FROM_LOG: &str = "github_redelivery";
/// A redelivery that has not landed this long after it was asked for is given up.
const GIVE_UP_AFTER_MINS: i64 = 10;

/// A redelivery asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asked {
    pub hook: u64,
    pub guid: String,
    /// GitHub's id of the delivery attempt that was redelivered.
    pub delivery_id: u64,
    pub event: String,
    /// What we answered the original attempt (0: no answer, e.g. we were down).
    pub status_code: u16,
    pub delivered_at: DateTime<Utc>,
    pub asked_at: DateTime<Utc>,
    /// Given up: the redelivery never arrived, or GitHub refused it.
    #[serde(default)]
    pub missing: bool,
    /// It came, as a duplicate by body (the same delivery through another hook).
    #[serde(default)]
    pub arrived: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One entry of a hook's delivery log.
#[derive(Debug, Clone, Deserialize)]
struct Delivery {
    id: u64,
    guid: String,
    delivered_at: DateTime<Utc>,
    #[serde(default)]
    status_code: u16,
    #[serde(default)]
    event: String,
}

pub struct GithubReconciler {
    client: octocrab::Octocrab,
    shared: Arc<Shared>,
    max_redeliveries: usize,
    max_pages: usize,
    settle: chrono::Duration,
    /// Deliveries older than this are not looked at: their keys may have been pruned
    /// (`storage.delivery_retention_days`), and GitHub keeps about three days anyway.
    lookback: chrono::Duration,
}

impl GithubReconciler {
    pub fn new(
        token: &str,
        api_url: &str,
        configured: Vec<GithubHook>,
        settings: &ReconcileSettings,
        delivery_retention: chrono::Duration,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        // No retries inside octocrab: a 429 stops the round and the backoff is ours.
        let client = octocrab::Octocrab::builder()
            .base_uri(api_url)?
            .personal_token(token.to_owned())
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_connect_timeout(Some(Duration::from_secs(5)))
            .set_read_timeout(Some(Duration::from_secs(10)))
            .build()?;
        Ok(GithubReconciler {
            client,
            shared: Arc::new(Shared {
                store,
                configured,
                seen: Mutex::new(HashSet::new()),
            }),
            max_redeliveries: settings.max_redeliveries,
            max_pages: settings.max_pages,
            settle: chrono::Duration::seconds(settings.settle_secs as i64),
            lookback: (delivery_retention - chrono::Duration::hours(1))
                .clamp(chrono::Duration::hours(1), chrono::Duration::days(3)),
        })
    }

    /// True when this delivery's hook is not recorded by this process yet.
    pub fn is_new_hook(&self, headers: &Headers) -> bool {
        headers
            .get("X-GitHub-Hook-ID")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|id| {
                !self
                    .shared
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&id)
            })
    }

    /// Records the hook of a verified delivery (its repository or organization comes
    /// from the payload). App hooks (`integration`) have no per-repository log: skipped.
    pub fn saw_hook(&self, headers: &Headers, body: &[u8]) {
        let Some(id) = headers
            .get("X-GitHub-Hook-ID")
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            return;
        };
        {
            let seen = self.shared.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(&id) {
                return;
            }
            if seen.len() >= MAX_SEEN_HOOKS {
                tracing::warn!(hook = id, "more GitHub hooks seen than are reconciled ({MAX_SEEN_HOOKS}); list it in sources.github.hooks");
                return;
            }
        }
        let target = headers
            .get("X-GitHub-Hook-Installation-Target-Type")
            .map(str::trim)
            .unwrap_or("repository");
        let Ok(payload) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let text = |path: &[&str]| {
            let mut v = &payload;
            for p in path {
                v = v.get(p)?;
            }
            v.as_str().map(str::to_owned)
        };
        let hook = match target {
            "repository" => GithubHook {
                repo: text(&["repository", "full_name"]),
                org: None,
                id,
            },
            "organization" => GithubHook {
                repo: None,
                org: text(&["organization", "login"]),
                id,
            },
            _ => return,
        };
        if hook.path().is_none() {
            return;
        }
        let raw = serde_json::to_string(&hook).unwrap_or_default();
        match self
            .shared
            .store
            .put_cache(&format!("{HOOK_PREFIX}{id}"), &raw)
        {
            Ok(()) => {
                self.shared
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
            }
            Err(e) => tracing::warn!(error = %e, hook = id, "recording a GitHub hook failed"),
        }
    }

    /// True when we asked GitHub to redeliver this delivery.
    pub fn asked_for(&self, hook: &str, guid: &str) -> Result<bool, StoreError> {
        let store = &self.shared.store;
        Ok(store
            .cursor(&format!("{ASKED_PREFIX}{hook}:{guid}"))?
            .is_some()
            || store
                .cursor(&format!("{MISSING_PREFIX}{hook}:{guid}"))?
                .is_some())
    }

    /// A redelivery we asked for came as a duplicate: it is here.
    pub fn arrived(&self, hook: &str, guid: &str) -> Result<(), StoreError> {
        let store = &self.shared.store;
        for prefix in [ASKED_PREFIX, MISSING_PREFIX] {
            let key = format!("{prefix}{hook}:{guid}");
            if let Some(mut a) = store
                .cursor(&key)?
                .and_then(|raw| serde_json::from_str::<Asked>(&raw).ok())
            {
                a.arrived = true;
                a.missing = false;
                return self.shared.put_asked(&a);
            }
        }
        Ok(())
    }

    /// Why an incident resolved at `resolved` must wait: the log was not checked past
    /// its resolve yet, or a redelivery asked for lately has not landed.
    pub fn pending(
        &self,
        resolved: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<&'static str>, StoreError> {
        let state = load_state(self.shared.store.as_ref(), Source::Github)?;
        // Only a reconciler that works is waited for, and for a bounded time: the round
        // after a resolve comes `settle_secs` later.
        let healthy =
            !state.refused && matches!(state.last_round.as_deref(), Some("complete" | "partial"));
        let soon =
            now < resolved + self.settle + chrono::Duration::seconds(super::REDELIVERY_WAIT_SECS);
        if healthy && soon && state.covered_until.is_none_or(|c| c < resolved) {
            return Ok(Some(
                "GitHub's delivery log has not been checked up to the resolve",
            ));
        }
        let recent = now - chrono::Duration::seconds(super::REDELIVERY_WAIT_SECS);
        if self.shared.asked()?.iter().any(|a| a.asked_at > recent) {
            return Ok(Some("a GitHub redelivery is on its way"));
        }
        Ok(None)
    }

    /// How long after a resolve the round that covers it runs.
    pub fn settle_wait(&self) -> Duration {
        Duration::from_secs(self.settle.num_seconds().max(0) as u64 + 1)
    }

    /// Runs `f` on the shared state on a blocking thread.
    async fn sync<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))?
    }

    /// For the report: given-up deliveries, redeliveries waiting, and the hooks.
    /// For the report: how many are missing and the newest of them, redeliveries
    /// waiting, and the hooks.
    pub fn outstanding(&self) -> Result<(usize, Vec<Asked>, usize, Vec<Value>), StoreError> {
        let waiting = self.shared.asked()?.len();
        let mut missing = self.shared.missing()?;
        let count = missing.len();
        missing.sort_by_key(|a| std::cmp::Reverse(a.delivered_at));
        missing.truncate(REPORT_MISSING);
        let mut hooks = Vec::new();
        for h in self.shared.hooks()? {
            let cursor = self.shared.hook_cursor(h.id)?;
            hooks.push(json!({
                "id": h.id,
                "repo": h.repo,
                "org": h.org,
                "checked_through_delivery": cursor.checked,
                "catching_up": cursor.gap.is_some(),
                "error": self.shared.store.cursor(&format!("{HOOK_ERROR_PREFIX}{}", h.id))?,
            }));
        }
        Ok((count, missing, waiting, hooks))
    }

    /// One round over every hook, bounded by `max_pages` per hook and `max_redeliveries`.
    pub async fn round(&self) -> RoundSummary {
        super::summary_or_failure(self.round_inner().await, Source::Github)
    }

    async fn round_inner(&self) -> Result<RoundSummary, StoreError> {
        let now = Utc::now();
        let mut state = self
            .sync(|s| load_state(s.store.as_ref(), Source::Github))
            .await?;
        let mut summary = RoundSummary::default();
        if let Some(until) = state.backoff_until.filter(|u| *u > now) {
            summary.skipped = Some(format!(
                "backing off until {until} ({})",
                state.last_error.as_deref().unwrap_or("rate limited")
            ));
            return Ok(summary);
        }
        // Redeliveries asked for earlier: landed (recovered) or given up (missing).
        let mut asked_guids = HashSet::new();
        for mut a in self.sync(Shared::asked).await? {
            let (hook, guid) = (a.hook, a.guid.clone());
            let landed = a.arrived || self.sync(move |s| s.stored(hook, &guid)).await?;
            if landed {
                state.recovered += 1;
                summary.recovered += 1;
                metrics::counter!("incidentpost_deliveries_recovered_total", "source" => "github")
                    .increment(1);
                tracing::info!(hook = a.hook, guid = %a.guid, event = %a.event, "missed GitHub delivery recovered");
                self.forget(&a).await?;
                continue;
            }
            if a.asked_at < now - chrono::Duration::minutes(GIVE_UP_AFTER_MINS) {
                a.missing = true;
                a.reason = Some(format!(
                    "redelivered at {}, but it never arrived here",
                    a.asked_at
                ));
                tracing::warn!(hook = a.hook, guid = %a.guid, "a GitHub redelivery never arrived; counted missing");
                self.put(&a).await?;
            }
            asked_guids.insert((a.hook, a.guid.clone()));
        }
        for a in self.sync(Shared::missing).await? {
            let (hook, guid) = (a.hook, a.guid.clone());
            let landed = a.arrived || self.sync(move |s| s.stored(hook, &guid)).await?;
            if landed || a.asked_at < now - self.lookback {
                // It came after all, or is out of the log's reach: no longer reported.
                self.forget(&a).await?;
                continue;
            }
            asked_guids.insert((a.hook, a.guid.clone()));
        }

        let mut budget = self.max_redeliveries;
        let mut complete = true;
        let mut failed = false;
        let deadline = tokio::time::Instant::now() + super::ROUND_DEADLINE;
        let hooks = self.sync(Shared::hooks).await?;
        let mut refused = 0;
        let total = hooks.len();
        for hook in hooks {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("GitHub reconciliation round out of time; the next round goes on");
                complete = false;
                break;
            }
            let result = self
                .check_hook(
                    &hook,
                    &mut budget,
                    &asked_guids,
                    now,
                    deadline,
                    &mut summary,
                )
                .await;
            let error = match &result {
                Ok(_) | Err(CallError::RateLimited(_)) | Err(CallError::Store(_)) => None,
                Err(e) => Some((e.to_string(), matches!(e, CallError::Gone(_)))),
            };
            let (id, configured) = (hook.id, self.shared.configured.contains(&hook));
            self.sync(move |s| s.set_hook_error(id, error, configured))
                .await?;
            match result {
                Ok(done) => complete &= done,
                Err(CallError::RateLimited(until)) => {
                    tracing::warn!(hook = hook.id, %until, "GitHub rate limit: reconciliation backs off");
                    state.backoff_until = Some(until);
                    summary.error = Some(format!("rate limited until {until}"));
                    complete = false;
                    break;
                }
                // One hook's problem is reported with it; the other hooks go on.
                Err(CallError::Refused(message)) => {
                    tracing::warn!(hook = hook.id, error = %message, "GitHub refused the token for a hook");
                    refused += 1;
                    summary.error = Some(format!("hook {}: {message}", hook.id));
                }
                Err(CallError::Gone(message)) => {
                    tracing::warn!(hook = hook.id, error = %message, "a GitHub hook is gone");
                    summary.error = Some(format!("hook {}: {message}", hook.id));
                }
                Err(CallError::Failed(message)) => {
                    tracing::warn!(hook = hook.id, error = %message, "reading a GitHub hook's deliveries failed");
                    summary.error = Some(format!("hook {}: {message}", hook.id));
                    complete = false;
                    failed = true;
                }
                Err(CallError::Store(e)) => return Err(e),
            }
        }
        state.refused = total > 0 && refused == total;
        state.last_error = summary.error.clone();
        state.checked += summary.checked;
        state.requested += summary.requested;
        let limited = state.backoff_until.is_some_and(|u| u > now);
        if complete {
            state.covered_until = Some(now - self.settle);
        }
        state.end_round(
            Source::Github,
            now,
            !complete && (failed || limited),
            complete,
        );
        summary.complete = complete;
        summary.missing = self.sync(Shared::missing).await?.len() as u64;
        metrics::gauge!("incidentpost_deliveries_missing", "source" => "github")
            .set(summary.missing as f64);
        self.sync(move |s| {
            save_state(s.store.as_ref(), Source::Github, &state)?;
            s.store.flush()
        })
        .await?;
        Ok(summary)
    }

    async fn put(&self, a: &Asked) -> Result<(), StoreError> {
        let a = a.clone();
        self.sync(move |s| s.put_asked(&a)).await
    }

    async fn forget(&self, a: &Asked) -> Result<(), StoreError> {
        let a = a.clone();
        self.sync(move |s| s.forget_asked(&a)).await
    }

    /// Checks one hook's log from its cursor on: the head of the log (newest first, down
    /// to the last delivery checked), or, when an earlier round hit `max_pages` before
    /// reaching it, the gap it left. True when everything settled was checked.
    async fn check_hook(
        &self,
        hook: &GithubHook,
        budget: &mut usize,
        asked: &HashSet<(u64, String)>,
        now: DateTime<Utc>,
        deadline: tokio::time::Instant,
        summary: &mut RoundSummary,
    ) -> Result<bool, CallError> {
        let path = hook
            .path()
            .ok_or_else(|| CallError::Failed("bad hook".into()))?;
        let id = hook.id;
        let mut cursor = self.sync(move |s| s.hook_cursor(id)).await?;
        let oldest = now - self.lookback;
        let (start, stop_at) = match &cursor.gap {
            Some(gap) => (gap.next.clone(), gap.stop_at),
            None => (format!("{path}/deliveries?per_page=100"), cursor.checked),
        };
        let mut listed: Vec<Delivery> = Vec::new();
        let mut next = Some(start);
        let mut pages = 0;
        let mut reached = false;
        let mut after_last: Option<String> = None;
        while let Some(url) = next.take() {
            let (items, link) = self.list_page(&url, now).await?;
            pages += 1;
            reached = link.is_none()
                || items
                    .iter()
                    .any(|d| d.id <= stop_at || d.delivered_at < oldest);
            listed.extend(items);
            if reached {
                break;
            }
            if pages >= self.max_pages || tokio::time::Instant::now() > deadline {
                after_last = link;
                break;
            }
            next = link;
        }
        let mut attempts: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for d in &listed {
            attempts
                .entry(d.guid.clone())
                .or_default()
                .push(d.status_code);
        }
        let mut candidates: Vec<Delivery> = listed
            .into_iter()
            .filter(|d| d.id > stop_at && d.delivered_at >= oldest)
            .collect();
        candidates.sort_by_key(|d| d.id);
        let mut handled: HashSet<String> = HashSet::new();
        let settled = now - self.settle;
        let mut last_done: Option<u64> = None;
        let mut out_of_budget = false;
        for d in candidates {
            if d.delivered_at > settled {
                // Newer ones wait for the next round (the cursor stays before them).
                break;
            }
            let answered_2xx = attempts
                .get(&d.guid)
                .is_some_and(|codes| codes.iter().any(|c| (200..300).contains(c)));
            let skip = d.event == "ping"
                || handled.contains(&d.guid)
                || answered_2xx
                || asked.contains(&(hook.id, d.guid.clone()))
                || {
                    let (id, guid) = (hook.id, d.guid.clone());
                    self.sync(move |s| s.stored(id, &guid)).await?
                };
            if !skip {
                if *budget == 0 || tokio::time::Instant::now() > deadline {
                    out_of_budget = true;
                    break;
                }
                self.redeliver(hook, &path, &d, now).await?;
                *budget -= 1;
                summary.requested += 1;
            }
            summary.checked += 1;
            handled.insert(d.guid.clone());
            last_done = Some(d.id);
        }
        // Where the next round starts. Work done before a stop is never undone: what was
        // asked for is skipped by its record when read again.
        match cursor.gap.take() {
            Some(mut gap) => {
                if out_of_budget {
                    if let Some(done) = last_done {
                        gap.stop_at = gap.stop_at.max(done);
                    }
                    cursor.gap = Some(gap);
                } else if reached {
                    cursor.checked = gap.high;
                } else {
                    gap.next = after_last.unwrap_or(gap.next);
                    cursor.gap = Some(gap);
                }
            }
            None => {
                if reached {
                    if let Some(done) = last_done {
                        cursor.checked = cursor.checked.max(done);
                    }
                } else if out_of_budget {
                    // Older deliveries beyond this read are unchecked: read it all again.
                } else if let Some(next) = after_last {
                    tracing::warn!(
                        hook = hook.id,
                        pages,
                        "more deliveries since the last check than reconcile.max_pages reads; the older ones are checked in the next rounds"
                    );
                    cursor.gap = Some(Gap {
                        next,
                        stop_at: cursor.checked,
                        high: last_done.unwrap_or(cursor.checked).max(cursor.checked),
                    });
                }
            }
        }
        let complete = reached && !out_of_budget && cursor.gap.is_none();
        self.sync(move |s| s.put_hook_cursor(id, &cursor)).await?;
        Ok(complete)
    }

    /// Asks GitHub to redeliver; the record is written first, so a crash between the
    /// two never asks twice (at worst the delivery is reported missing).
    async fn redeliver(
        &self,
        hook: &GithubHook,
        path: &str,
        d: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<(), CallError> {
        let mut record = Asked {
            hook: hook.id,
            guid: d.guid.clone(),
            delivery_id: d.id,
            event: d.event.clone(),
            status_code: d.status_code,
            delivered_at: d.delivered_at,
            asked_at: now,
            missing: false,
            arrived: false,
            reason: None,
        };
        let first = record.clone();
        self.sync(move |s| {
            s.put_asked(&first)?;
            s.store.flush()
        })
        .await?;
        let url = format!("{path}/deliveries/{}/attempts", d.id);
        let answer = tokio::time::timeout(
            Duration::from_secs(15),
            self.client._post(url.as_str(), None::<&()>),
        )
        .await;
        let response = match answer {
            Ok(Ok(r)) => r,
            // The request may have reached GitHub: the record stays, so it is never asked
            // for twice (if it does not come, it is reported missing).
            Ok(Err(e)) => {
                return Err(CallError::Failed(format!("asking for a redelivery: {e}")));
            }
            Err(_) => {
                return Err(CallError::Failed(
                    "asking for a redelivery timed out".into(),
                ));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(until) = rate_limited(status, header, now) {
            self.forget(&record).await?;
            return Err(CallError::RateLimited(until));
        }
        if status >= 500 || matches!(status, 401 | 403) {
            // Not done: asked again next round.
            self.forget(&record).await?;
            return Err(if status >= 500 {
                CallError::Failed(format!("GitHub answered {status} to a redelivery"))
            } else {
                CallError::Refused(format!(
                    "GitHub answered {status} to a redelivery: sources.github.token may not redeliver (it needs admin:repo_hook, or \"Webhooks\" write)"
                ))
            });
        }
        if (200..300).contains(&status) {
            metrics::counter!("incidentpost_redeliveries_requested_total", "source" => "github")
                .increment(1);
            tracing::info!(hook = hook.id, guid = %d.guid, event = %d.event, answered = d.status_code, "missed GitHub delivery: redelivery asked for");
            return Ok(());
        }
        // Refused (gone from the log, no permission): reported missing, never asked again.
        record.missing = true;
        record.reason = Some(format!("GitHub refused the redelivery ({status})"));
        tracing::warn!(hook = hook.id, guid = %d.guid, status, "GitHub refused a redelivery; counted missing");
        self.put(&record).await?;
        Ok(())
    }

    /// One page of a hook's log and the next page's path.
    async fn list_page(
        &self,
        url: &str,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Delivery>, Option<String>), CallError> {
        let response = tokio::time::timeout(Duration::from_secs(15), self.client._get(url))
            .await
            .map_err(|_| CallError::Failed("listing deliveries timed out".into()))?
            .map_err(|e| CallError::Failed(format!("listing deliveries: {e}")))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(until) = rate_limited(status, header, now) {
            return Err(CallError::RateLimited(until));
        }
        let next = response
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
            .filter(|next| next_within(next, url));
        match status {
            200 => {}
            401 | 403 => {
                return Err(CallError::Refused(format!(
                    "GitHub answered {status}: sources.github.token may not read this hook's deliveries (it needs admin:repo_hook, or the fine-grained \"Webhooks\" permission)"
                )))
            }
            404 => {
                return Err(CallError::Gone(
                    "GitHub answered 404: the hook is gone, or the token cannot see it (it needs admin:repo_hook, or the fine-grained \"Webhooks\" permission)"
                        .into(),
                ))
            }
            // The body is not quoted: an echoing proxy could put the token in it.
            _ => return Err(CallError::Failed(format!("GitHub answered {status}"))),
        }
        let body = tokio::time::timeout(
            Duration::from_secs(15),
            read_capped(response.into_body(), MAX_PAGE_BYTES),
        )
        .await
        .map_err(|_| CallError::Failed("reading the delivery list timed out".into()))??;
        let items: Vec<Delivery> = serde_json::from_slice(&body)
            .map_err(|e| CallError::Failed(format!("the delivery list did not parse: {e}")))?;
        // Entries no real log has are ignored: a future time would hold the cursor back
        // for ever, an id beyond JSON's exact integers would move it past everything.
        let latest = now + chrono::Duration::minutes(5);
        let items = items
            .into_iter()
            .filter(|d| {
                d.id > 0
                    && d.id < MAX_DELIVERY_ID
                    && d.delivered_at <= latest
                    && !d.guid.trim().is_empty()
                    && d.guid.len() <= 100
            })
            .collect();
        Ok((items, next))
    }
}

/// Where a hook's log was checked to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct HookCursor {
    /// Every delivery up to this id was checked.
    checked: u64,
    /// Deliveries older than the last head read, newer than `checked`, still to check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gap: Option<Gap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Gap {
    /// The page to read next (older deliveries).
    next: String,
    /// Read down to this id.
    stop_at: u64,
    /// The newest delivery checked by the head read: `checked` once the gap is done.
    high: u64,
}

/// What the blocking side of a round reads and writes.
struct Shared {
    store: Arc<dyn Store>,
    configured: Vec<GithubHook>,
    /// Hooks this process already recorded.
    seen: Mutex<HashSet<u64>>,
}

impl Shared {
    fn read(&self, prefix: &str) -> Result<Vec<Asked>, StoreError> {
        Ok(self
            .store
            .cursors_with_prefix(prefix)?
            .into_iter()
            .filter_map(|(_, raw)| serde_json::from_str(&raw).ok())
            .collect())
    }

    /// Redeliveries asked for, not landed yet.
    fn asked(&self) -> Result<Vec<Asked>, StoreError> {
        self.read(ASKED_PREFIX)
    }

    /// Deliveries given up.
    fn missing(&self) -> Result<Vec<Asked>, StoreError> {
        self.read(MISSING_PREFIX)
    }

    /// Writes the record under the prefix of its state and removes it from the other.
    fn put_asked(&self, a: &Asked) -> Result<(), StoreError> {
        let raw = serde_json::to_string(a).map_err(|e| StoreError::Engine(e.to_string()))?;
        let (to, from) = if a.missing {
            (MISSING_PREFIX, ASKED_PREFIX)
        } else {
            (ASKED_PREFIX, MISSING_PREFIX)
        };
        self.store
            .put_cache(&format!("{to}{}:{}", a.hook, a.guid), &raw)?;
        self.store
            .forget_cursor(&format!("{from}{}:{}", a.hook, a.guid))
    }

    fn forget_asked(&self, a: &Asked) -> Result<(), StoreError> {
        for prefix in [ASKED_PREFIX, MISSING_PREFIX] {
            self.store
                .forget_cursor(&format!("{prefix}{}:{}", a.hook, a.guid))?;
        }
        Ok(())
    }

    fn hook_cursor(&self, hook: u64) -> Result<HookCursor, StoreError> {
        Ok(match self.store.cursor(&format!("{LOG_PREFIX}{hook}"))? {
            None => HookCursor::default(),
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(checked) => HookCursor { checked, gap: None },
                Err(_) => serde_json::from_str(&raw).unwrap_or_default(),
            },
        })
    }

    fn put_hook_cursor(&self, hook: u64, cursor: &HookCursor) -> Result<(), StoreError> {
        let raw = serde_json::to_string(cursor).map_err(|e| StoreError::Engine(e.to_string()))?;
        self.store.put_cache(&format!("{LOG_PREFIX}{hook}"), &raw)
    }

    /// Records (or clears) a hook's last error. A hook that is gone and was only seen (not
    /// configured) is forgotten: a new delivery from it records it again.
    fn set_hook_error(
        &self,
        hook: u64,
        error: Option<(String, bool)>,
        configured: bool,
    ) -> Result<(), StoreError> {
        let key = format!("{HOOK_ERROR_PREFIX}{hook}");
        match error {
            None => self.store.forget_cursor(&key),
            Some((_, true)) if !configured => {
                self.store.forget_cursor(&key)?;
                self.store.forget_cursor(&format!("{HOOK_PREFIX}{hook}"))?;
                // Its next delivery records it again.
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&hook);
                Ok(())
            }
            Some((e, _)) => self.store.put_cache(&key, &e),
        }
    }

    /// True when we stored the delivery `guid` from `hook`.
    fn stored(&self, hook: u64, guid: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .delivery(&format!("github:{hook}:{guid}"))?
            .is_some())
    }

    /// Every hook to reconcile: configured ones and those deliveries came from.
    fn hooks(&self) -> Result<Vec<GithubHook>, StoreError> {
        let mut hooks: BTreeMap<u64, GithubHook> = BTreeMap::new();
        for (_, raw) in self.store.cursors_with_prefix(HOOK_PREFIX)? {
            if let Ok(h) = serde_json::from_str::<GithubHook>(&raw) {
                hooks.insert(h.id, h);
            }
        }
        for h in &self.configured {
            hooks.insert(h.id, h.clone());
        }
        Ok(hooks.into_values().filter(|h| h.path().is_some()).collect())
    }
}

/// A rate-limited answer (429, or 403 with the limit spent) and when to come back.
fn rate_limited<'a>(
    status: u16,
    header: impl Fn(&str) -> Option<&'a str>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let spent = header("x-ratelimit-remaining").is_some_and(|v| v.trim() == "0");
    let limited = status == 429 || (status == 403 && (spent || header("retry-after").is_some()));
    limited.then(|| retry_at(header("retry-after"), header("x-ratelimit-reset"), now))
}

/// Reads a body up to `cap` bytes; a bigger one is refused as it streams in.
async fn read_capped<B>(mut body: B, cap: usize) -> Result<Vec<u8>, CallError>
where
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CallError::Failed(format!("reading an answer: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.remaining() > cap {
                return Err(CallError::Failed(format!(
                    "an answer is larger than {cap} bytes"
                )));
            }
            use bytes::Buf;
            out.extend_from_slice(data.chunk());
        }
    }
    Ok(out)
}

/// A next-page link stays on the same list: the path of the page it came from, without
/// `..` segments.
fn next_within(next: &str, current: &str) -> bool {
    let path = |u: &str| u.split('?').next().unwrap_or("").to_owned();
    path(next) == path(current) && !next.contains("/../") && !next.contains("/./")
}

/// The path and query of the `rel="next"` link (the host is always the configured API).
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        if !params.split(';').any(|p| p.trim() == "rel=\"next\"") {
            return None;
        }
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let path = &rest[rest.find('/')?..];
        Some(path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_keeps_only_the_path() {
        let link = "<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_9>; rel=\"next\", <https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100>; rel=\"first\"";
        assert_eq!(
            next_link(link).as_deref(),
            Some("/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_9")
        );
        assert_eq!(next_link("<https://x/y>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn only_a_spent_limit_or_429_is_a_rate_limit() {
        let now = Utc::now();
        let none = |_: &str| None;
        assert!(rate_limited(429, none, now).is_some());
        assert!(
            rate_limited(403, none, now).is_none(),
            "a plain 403 is a permission problem"
        );
        let spent = |h: &str| (h == "x-ratelimit-remaining").then_some("0");
        assert!(rate_limited(403, spent, now).is_some());
        assert!(rate_limited(200, spent, now).is_none());
    }

    #[test]
    fn hooks_name_a_repository_or_an_organization() {
        let repo = GithubHook {
            repo: Some("acme/api".into()),
            org: None,
            id: 7,
        };
        assert_eq!(repo.path().as_deref(), Some("/repos/acme/api/hooks/7"));
        let org = GithubHook {
            repo: None,
            org: Some("acme".into()),
            id: 8,
        };
        assert_eq!(org.path().as_deref(), Some("/orgs/acme/hooks/8"));
        let both = GithubHook {
            repo: Some("acme/api".into()),
            org: Some("acme".into()),
            id: 9,
        };
        assert_eq!(both.path(), None);
        let traversal = GithubHook {
            repo: Some("../x".into()),
            org: None,
            id: 1,
        };
        assert_eq!(traversal.path(), None);
    }
}
