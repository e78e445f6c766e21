//! Enrichment before a render, from outside APIs into the store's cache (the render reads
//! only the cache). Slack (only with `sources.slack.bot_token`): `users.info` names the
//! people behind messages. GitHub (only with `sources.github.token`): for the pull requests behind an
//! incident's changes, fetch title, author, merge time and changed files with octocrab,
//! cache them in the store, and let the renderer read the cache. A failure never blocks a
//! render: the pack is written with what the webhooks said.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{Event, KEY_GITHUB_REPO};
use crate::store::Store;

/// What the GitHub API says about one pull request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrDetails {
    pub title: String,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub merged_at: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    pub files: Vec<String>,
    #[serde(default)]
    pub additions: Option<u64>,
    #[serde(default)]
    pub deletions: Option<u64>,
    /// The PR's own count of changed files (`files` holds the first page of names).
    #[serde(default)]
    pub changed_files: Option<u64>,
}

/// Pull request details by `owner/repo#number`.
pub type PrIndex = BTreeMap<String, PrDetails>;

const CACHE_PREFIX: &str = "github_pr_details:";

/// `owner/repo#number` of the pull request an event is about, if any.
pub fn pr_key(e: &Event) -> Option<String> {
    let repo = e.keys.get(KEY_GITHUB_REPO)?;
    let n = e.attrs.get("pr_number").and_then(Value::as_u64)?;
    Some(format!("{repo}#{n}"))
}

/// The cached details of the pull requests behind `events`.
pub fn cached(store: &dyn Store, events: &[Event]) -> PrIndex {
    let mut out = PrIndex::new();
    for key in events.iter().filter_map(pr_key) {
        if let Ok(Some(raw)) = store.cursor(&format!("{CACHE_PREFIX}{key}")) {
            if let Ok(d) = serde_json::from_str::<PrDetails>(&raw) {
                out.insert(key, d);
            }
        }
    }
    out
}

/// Fetches and caches pull request details.
pub struct GithubEnricher {
    client: octocrab::Octocrab,
    store: Arc<dyn Store>,
}

impl GithubEnricher {
    /// `api_url` is `https://api.github.com` (or a GitHub Enterprise / test server).
    pub fn new(token: &str, api_url: &str, store: Arc<dyn Store>) -> Result<Self, octocrab::Error> {
        let client = octocrab::Octocrab::builder()
            .base_uri(api_url)?
            .personal_token(token.to_owned())
            .set_connect_timeout(Some(Duration::from_secs(5)))
            .set_read_timeout(Some(Duration::from_secs(5)))
            .build()?;
        Ok(GithubEnricher { client, store })
    }

    /// Fetches the details not cached yet. Returns how many were fetched; failures are
    /// logged and skipped.
    pub async fn refresh(&self, events: &[Event]) -> usize {
        let mut fetched = 0;
        let mut keys: Vec<String> = events.iter().filter_map(pr_key).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let cache_key = format!("{CACHE_PREFIX}{key}");
            if matches!(self.store.cursor(&cache_key), Ok(Some(_))) {
                continue;
            }
            let Some((repo, n)) = key.rsplit_once('#') else {
                continue;
            };
            let Some((owner, name)) = repo.split_once('/') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match tokio::time::timeout(Duration::from_secs(10), self.fetch(owner, name, n)).await {
                Ok(Ok(details)) => {
                    let json = serde_json::to_string(&details).unwrap_or_default();
                    if let Err(e) = self.store.put_cache(&cache_key, &json) {
                        tracing::warn!(error = %e, pr = %key, "caching PR details failed");
                    }
                    metrics::counter!("incidentpost_github_enrichments_total", "result" => "ok")
                        .increment(1);
                    fetched += 1;
                }
                Ok(Err(e)) => {
                    metrics::counter!("incidentpost_github_enrichments_total", "result" => "failed").increment(1);
                    tracing::warn!(error = %e, pr = %key, "fetching PR details failed; rendering without them");
                }
                Err(_) => {
                    metrics::counter!("incidentpost_github_enrichments_total", "result" => "timeout").increment(1);
                    tracing::warn!(pr = %key, "fetching PR details timed out; rendering without them");
                }
            }
        }
        fetched
    }

    async fn fetch(&self, owner: &str, repo: &str, n: u64) -> Result<PrDetails, octocrab::Error> {
        let pulls = self.client.pulls(owner, repo);
        let pr = pulls.get(n).await?;
        let files = pulls.list_files(n).await?;
        Ok(PrDetails {
            title: pr.title.unwrap_or_default(),
            author: pr.user.map(|u| format!("@{}", u.login)),
            merged_at: pr.merged_at.map(|t| t.to_rfc3339()),
            url: pr.html_url.map(|u| u.to_string()),
            files: files.items.into_iter().map(|f| f.filename).collect(),
            additions: pr.additions,
            deletions: pr.deletions,
            changed_files: pr.changed_files,
        })
    }
}

const SLACK_CACHE_PREFIX: &str = "slack_user:";

/// The Slack user ids behind `events` (their messages' actors).
fn slack_ids(events: &[Event]) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .filter_map(crate::people::identity)
        .filter(|who| who.source == crate::domain::Source::Slack)
        .map(|who| who.id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The cached Slack profiles of the users behind `events`.
pub fn cached_profiles(store: &dyn Store, events: &[Event]) -> Vec<crate::people::SlackProfile> {
    slack_ids(events)
        .into_iter()
        .filter_map(|id| {
            let raw = store.cursor(&format!("{SLACK_CACHE_PREFIX}{id}")).ok()??;
            serde_json::from_str(&raw).ok()
        })
        .collect()
}

/// Most `users.info` calls one enrichment makes (an incident rarely has more people).
const SLACK_LOOKUPS_PER_RENDER: usize = 50;

/// Names Slack user ids with `users.info` (only with `sources.slack.bot_token`) and
/// caches what Slack said in the store. Ids `[[people]]` already names are not looked up.
pub struct SlackEnricher {
    /// Until when Slack is not asked (after a rate limit or a refused token).
    paused_until: std::sync::Mutex<Option<std::time::Instant>>,
    client: reqwest::Client,
    token: String,
    api_url: String,
    store: Arc<dyn Store>,
    people: crate::people::Directory,
}

impl SlackEnricher {
    /// `api_url` is `https://slack.com/api` (or a test server).
    pub fn new(
        token: &str,
        api_url: &str,
        store: Arc<dyn Store>,
        people: crate::people::Directory,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(SlackEnricher {
            paused_until: std::sync::Mutex::new(None),
            client,
            token: token.to_owned(),
            api_url: api_url.trim_end_matches('/').to_owned(),
            store,
            people,
        })
    }

    fn pause(&self, for_: Duration) {
        *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now() + for_);
    }

    /// Looks up the users not cached yet, for at most 10 seconds in all. Returns how many
    /// were newly named; failures are logged and skipped (the pack shows the id). A rate
    /// limit pauses lookups for its `Retry-After`, a refused token for ten minutes.
    pub async fn refresh(&self, events: &[Event]) -> usize {
        let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_some_and(|t| t > std::time::Instant::now()) {
            return 0;
        }
        tokio::time::timeout(Duration::from_secs(10), self.lookups(events))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    "Slack users.info lookups took over 10 s; the rest wait for the next render"
                );
                0
            })
    }

    async fn lookups(&self, events: &[Event]) -> usize {
        let mut fetched = 0;
        let todo: Vec<String> = slack_ids(events)
            .into_iter()
            .filter(|id| !self.people.knows_slack(id))
            .filter(|id| {
                !matches!(
                    self.store.cursor(&format!("{SLACK_CACHE_PREFIX}{id}")),
                    Ok(Some(_))
                )
            })
            .take(SLACK_LOOKUPS_PER_RENDER)
            .collect();
        for id in todo {
            let result = self
                .client
                .get(format!("{}/users.info", self.api_url))
                .bearer_auth(&self.token)
                .query(&[("user", id.as_str())])
                .send()
                .await;
            let outcome = match result {
                Ok(res) if res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    let after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?")
                        .to_owned();
                    metrics::counter!("incidentpost_slack_lookups_total", "result" => "rate_limited").increment(1);
                    tracing::warn!(user = %id, retry_after = %after, "Slack users.info is rate limited; names wait for the next render");
                    self.pause(Duration::from_secs(
                        after.parse().unwrap_or(60).clamp(1, 3600),
                    ));
                    break;
                }
                Ok(res) => res.json::<Value>().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let body = match outcome {
                Ok(body) => body,
                Err(e) => {
                    metrics::counter!("incidentpost_slack_lookups_total", "result" => "failed")
                        .increment(1);
                    tracing::warn!(user = %id, error = %e, "Slack users.info failed; the pack shows the id");
                    continue;
                }
            };
            let profile = if body.get("ok").and_then(Value::as_bool) == Some(true) {
                crate::people::SlackProfile::from_users_info(&body)
            } else {
                let error = body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                metrics::counter!("incidentpost_slack_lookups_total", "result" => "refused")
                    .increment(1);
                tracing::warn!(user = %id, error, "Slack refused users.info (the bot token needs users:read)");
                if matches!(
                    error,
                    "invalid_auth"
                        | "not_authed"
                        | "missing_scope"
                        | "account_inactive"
                        | "token_revoked"
                ) {
                    // Every other id would be refused the same way.
                    self.pause(Duration::from_secs(600));
                    break;
                }
                // An unknown user stays unknown: remember it, so it is not asked again.
                (error == "user_not_found").then(|| crate::people::SlackProfile {
                    id: id.clone(),
                    ..Default::default()
                })
            };
            let Some(profile) = profile.filter(|p| p.id == id) else {
                continue;
            };
            let json = serde_json::to_string(&profile).unwrap_or_default();
            if let Err(e) = self
                .store
                .put_cache(&format!("{SLACK_CACHE_PREFIX}{id}"), &json)
            {
                tracing::warn!(error = %e, user = %id, "caching a Slack profile failed");
                continue;
            }
            metrics::counter!("incidentpost_slack_lookups_total", "result" => "ok").increment(1);
            if profile.best_name().is_some() {
                fetched += 1;
            }
        }
        fetched
    }
}
