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
//!   counted recovered and forgotten) or is given up (kept as missing until it is older
//!   than the delivery retention, so it is never asked for twice).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{backoff, load_state, retry_at, save_state, CallError, RoundSummary};
use crate::config::{GithubHook, ReconcileSettings};
use crate::domain::Source;
use crate::sources::Headers;
use crate::store::{Store, StoreError};

const HOOK_PREFIX: &str = "reconcile:github:hook:";
const LOG_PREFIX: &str = "reconcile:github:log:";
const ASKED_PREFIX: &str = "reconcile:github:asked:";
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
    /// Hooks this process already recorded.
    seen: Mutex<HashSet<u64>>,
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
            shared: Arc::new(Shared { store, configured }),
            max_redeliveries: settings.max_redeliveries,
            max_pages: settings.max_pages,
            settle: chrono::Duration::seconds(settings.settle_secs as i64),
            lookback: (delivery_retention - chrono::Duration::hours(1))
                .clamp(chrono::Duration::hours(1), chrono::Duration::days(3)),
            seen: Mutex::new(HashSet::new()),
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
        if self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return;
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
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
            }
            Err(e) => tracing::warn!(error = %e, hook = id, "recording a GitHub hook failed"),
        }
    }

    /// True when we asked GitHub to redeliver this delivery.
    pub fn asked_for(&self, hook: &str, guid: &str) -> Result<bool, StoreError> {
        Ok(self
            .shared
            .store
            .cursor(&format!("{ASKED_PREFIX}{hook}:{guid}"))?
            .is_some())
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
        if self
            .shared
            .asked()?
            .iter()
            .any(|a| !a.missing && a.asked_at > recent)
        {
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
    pub fn outstanding(&self) -> Result<(Vec<Asked>, usize, Vec<Value>), StoreError> {
        let asked = self.shared.asked()?;
        let waiting = asked.iter().filter(|a| !a.missing).count();
        let missing = asked.into_iter().filter(|a| a.missing).collect();
        let mut hooks = Vec::new();
        for h in self.shared.hooks()? {
            let checked = self.shared.store.cursor(&format!("{LOG_PREFIX}{}", h.id))?;
            hooks.push(json!({
                "id": h.id,
                "repo": h.repo,
                "org": h.org,
                "checked_through_delivery": checked.and_then(|c| c.parse::<u64>().ok()),
            }));
        }
        Ok((missing, waiting, hooks))
    }

    /// One round over every hook, bounded by `max_pages` per hook and `max_redeliveries`.
    pub async fn round(&self) -> RoundSummary {
        match self.round_inner().await {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(error = %e, "GitHub reconciliation failed");
                RoundSummary {
                    error: Some(e.to_string()),
                    ..Default::default()
                }
            }
        }
    }

    async fn round_inner(&self) -> Result<RoundSummary, StoreError> {
        let now = Utc::now();
        let mut state = self
            .sync(|s| load_state(s.store.as_ref(), Source::Github))
            .await?;
        let mut summary = RoundSummary::default();
        if let Some(until) = state.backoff_until.filter(|u| *u > now) {
            summary.skipped = Some(format!("rate limited by GitHub until {until}"));
            return Ok(summary);
        }
        // Redeliveries asked for earlier: landed (recovered) or given up (missing).
        let asked = self.sync(Shared::asked).await?;
        let mut asked_guids = HashSet::new();
        for mut a in asked {
            let (hook, guid) = (a.hook, a.guid.clone());
            let landed = self.sync(move |s| s.stored(hook, &guid)).await?;
            if landed && !a.missing {
                state.recovered += 1;
                summary.recovered += 1;
                metrics::counter!("incidentpost_deliveries_recovered_total", "source" => "github")
                    .increment(1);
                tracing::info!(hook = a.hook, guid = %a.guid, event = %a.event, "missed GitHub delivery recovered");
                self.forget(&a).await?;
                continue;
            }
            if a.missing && (landed || a.delivered_at < now - self.lookback) {
                // Out of reach now (or it came after all): no longer reported.
                self.forget(&a).await?;
                continue;
            }
            if !a.missing && a.asked_at < now - chrono::Duration::minutes(GIVE_UP_AFTER_MINS) {
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

        let mut budget = self.max_redeliveries;
        let mut complete = true;
        let hooks = self.sync(Shared::hooks).await?;
        for hook in hooks {
            match self
                .check_hook(&hook, &mut budget, &asked_guids, now, &mut summary)
                .await
            {
                Ok(done) => complete &= done,
                Err(CallError::RateLimited(until)) => {
                    tracing::warn!(hook = hook.id, %until, "GitHub rate limit: reconciliation backs off");
                    state.backoff_until = Some(until);
                    state.last_error = Some(format!("rate limited until {until}"));
                    complete = false;
                    summary.error = state.last_error.clone();
                    break;
                }
                Err(CallError::Refused(message)) => {
                    tracing::warn!(hook = hook.id, error = %message, "GitHub refused the token");
                    state.refused = true;
                    state.last_error = Some(format!("hook {}: {message}", hook.id));
                    summary.error = state.last_error.clone();
                    complete = false;
                    break;
                }
                Err(CallError::Failed(message)) => {
                    tracing::warn!(hook = hook.id, error = %message, "reading a GitHub hook's deliveries failed");
                    state.last_error = Some(format!("hook {}: {message}", hook.id));
                    summary.error = state.last_error.clone();
                    complete = false;
                }
                Err(CallError::Store(e)) => return Err(e),
            }
        }
        state.last_round_at = Some(now);
        state.checked += summary.checked;
        state.requested += summary.requested;
        if complete {
            state.covered_until = Some(now - self.settle);
            state.last_error = None;
            state.refused = false;
            state.failures = 0;
            state.last_round = Some("complete".into());
        } else if summary.error.is_some() {
            state.failures += 1;
            if state.backoff_until.is_none_or(|u| u <= now) {
                state.backoff_until = Some(now + backoff(state.failures.saturating_sub(1)));
            }
            state.last_round = Some("failed".into());
        } else {
            state.last_round = Some("partial".into());
        }
        summary.complete = complete;
        summary.missing = self
            .sync(Shared::asked)
            .await?
            .iter()
            .filter(|a| a.missing)
            .count() as u64;
        metrics::gauge!("incidentpost_deliveries_missing", "source" => "github")
            .set(summary.missing as f64);
        metrics::counter!("incidentpost_reconcile_rounds_total", "source" => "github", "result" => state.last_round.clone().unwrap_or_default())
            .increment(1);
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

    /// Checks one hook's log from its cursor on; true when everything settled was
    /// checked (no bound reached).
    async fn check_hook(
        &self,
        hook: &GithubHook,
        budget: &mut usize,
        asked: &HashSet<(u64, String)>,
        now: DateTime<Utc>,
        summary: &mut RoundSummary,
    ) -> Result<bool, CallError> {
        let path = hook
            .path()
            .ok_or_else(|| CallError::Failed("bad hook".into()))?;
        let log_key = format!("{LOG_PREFIX}{}", hook.id);
        let checked = {
            let key = log_key.clone();
            self.sync(move |s| s.store.cursor(&key))
                .await?
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let oldest = now - self.lookback;
        let mut listed: Vec<Delivery> = Vec::new();
        let mut next = Some(format!("{path}/deliveries?per_page=100"));
        let mut pages = 0;
        let mut reached = false;
        while let Some(url) = next.take() {
            let (items, link) = self.list_page(&url, now).await?;
            pages += 1;
            reached = items
                .iter()
                .any(|d| d.id <= checked || d.delivered_at < oldest);
            listed.extend(items);
            if reached || pages >= self.max_pages {
                break;
            }
            next = link;
            if next.is_none() {
                reached = true;
            }
        }
        let mut complete = reached;
        if !reached {
            tracing::warn!(
                hook = hook.id,
                pages,
                "more deliveries since the last check than reconcile.max_pages reads; the oldest were not checked"
            );
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
            .filter(|d| d.id > checked && d.delivered_at >= oldest)
            .collect();
        candidates.sort_by_key(|d| d.id);
        let mut handled: HashSet<String> = HashSet::new();
        let settled = now - self.settle;
        for d in candidates {
            if d.delivered_at > settled {
                break;
            }
            summary.checked += 1;
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
                if *budget == 0 {
                    complete = false;
                    break;
                }
                self.redeliver(hook, &path, &d, now).await?;
                *budget -= 1;
                summary.requested += 1;
            }
            handled.insert(d.guid.clone());
            let (key, value) = (log_key.clone(), d.id.to_string());
            self.sync(move |s| s.store.put_cache(&key, &value)).await?;
        }
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
            Ok(Err(e)) => {
                self.forget(&record).await?;
                return Err(CallError::Failed(format!("asking for a redelivery: {e}")));
            }
            Err(_) => {
                self.forget(&record).await?;
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
            .and_then(next_link);
        let body = self
            .client
            .body_to_string(response)
            .await
            .map_err(|e| CallError::Failed(format!("reading the delivery list: {e}")))?;
        match status {
            200 => {}
            401 | 403 => {
                return Err(CallError::Refused(format!(
                    "GitHub answered {status}: sources.github.token may not read this hook's deliveries (it needs admin:repo_hook, or the fine-grained \"Webhooks\" permission)"
                )))
            }
            404 => {
                return Err(CallError::Failed(
                    "GitHub answered 404: the hook is gone, or the token cannot see it (it needs admin:repo_hook, or the fine-grained \"Webhooks\" permission)"
                        .into(),
                ))
            }
            _ => {
                return Err(CallError::Failed(format!(
                    "GitHub answered {status}: {}",
                    crate::sources::truncate(&body, 200)
                )))
            }
        }
        let items: Vec<Delivery> = serde_json::from_str(&body)
            .map_err(|e| CallError::Failed(format!("the delivery list did not parse: {e}")))?;
        Ok((items, next))
    }
}

/// What the blocking side of a round reads and writes.
struct Shared {
    store: Arc<dyn Store>,
    configured: Vec<GithubHook>,
}

impl Shared {
    fn asked(&self) -> Result<Vec<Asked>, StoreError> {
        Ok(self
            .store
            .cursors_with_prefix(ASKED_PREFIX)?
            .into_iter()
            .filter_map(|(_, raw)| serde_json::from_str(&raw).ok())
            .collect())
    }

    fn put_asked(&self, a: &Asked) -> Result<(), StoreError> {
        let raw = serde_json::to_string(a).map_err(|e| StoreError::Engine(e.to_string()))?;
        self.store
            .put_cache(&format!("{ASKED_PREFIX}{}:{}", a.hook, a.guid), &raw)
    }

    fn forget_asked(&self, a: &Asked) -> Result<(), StoreError> {
        self.store
            .forget_cursor(&format!("{ASKED_PREFIX}{}:{}", a.hook, a.guid))
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
