//! GitHub enrichment (only with `sources.github.token`): for the pull requests behind an
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
