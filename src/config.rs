//! Layered configuration: embedded `config/default.toml` < `config/<env>.toml` < `--config`
//! file < `INCIDENTPOST__SECTION__KEY` environment variables, then [`Settings::validate`].

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The defaults, compiled in so the binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value had the wrong type; the message names the key.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A secret value: never printed by `Debug`, `Display` or `check-config`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no value was configured (empty string).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Some(self)` when set.
    pub fn as_option(&self) -> Option<&Secret> {
        (!self.is_empty()).then_some(self)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.is_empty() { "" } else { "<redacted>" })
    }
}

/// Every setting. Field docs live beside the keys in `config/default.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
    pub api: ApiSettings,
    pub sources: SourcesSettings,
    pub correlation: CorrelationSettings,
    pub pollers: PollersSettings,
    pub render: RenderSettings,
    pub reconcile: ReconcileSettings,
    /// The service map.
    pub services: Vec<ServiceEntry>,
    /// One name per person across sources (see `[[people]]` in default.toml).
    pub people: Vec<crate::people::PersonEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RenderSettings {
    pub templates_dir: String,
    /// Renders running at once (each on a render thread at a lower CPU priority, off the
    /// request workers).
    pub max_concurrent: usize,
    /// How long a page or download waits for a render slot before 503 + Retry-After.
    pub queue_timeout_secs: u64,
    /// Extra regexes whose matches are redacted from the public files.
    pub redact_patterns: Vec<String>,
    /// Redact `postmortem.md` too (it is internal and keeps them by default).
    pub redact_internal: bool,
}

/// `[reconcile]`: comparing what we stored with the providers' own records.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    pub interval_secs: u64,
    pub max_redeliveries: usize,
    pub max_pages: usize,
    pub settle_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationSettings {
    pub sole_open_incident: bool,
    pub lookback_mins: u32,
    pub change_lookback_hours: u32,
    pub grace_mins: u32,
}

/// One service and its names at each provider (see `[[services]]` in default.toml).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    pub name: String,
    #[serde(default)]
    pub pagerduty: Vec<String>,
    #[serde(default)]
    pub datadog: Vec<String>,
    #[serde(default)]
    pub cloudwatch: Vec<String>,
    #[serde(default)]
    pub github: Vec<String>,
    #[serde(default)]
    pub slack: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PollersSettings {
    pub cloudwatch: CloudWatchPollerSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchPollerSettings {
    pub enabled: bool,
    pub region: String,
    pub endpoint_url: String,
    pub interval_secs: u64,
    pub alarm_name_prefix: String,
    pub metrics: Vec<MetricQuery>,
}

/// A metric series recorded while an incident is open.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricQuery {
    pub id: String,
    #[serde(default)]
    pub label: Option<String>,
    pub namespace: String,
    pub metric_name: String,
    #[serde(default)]
    pub dimensions: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_stat")]
    pub stat: String,
    #[serde(default = "default_period")]
    pub period_secs: u32,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
}

fn default_stat() -> String {
    "Average".into()
}

fn default_period() -> u32 {
    60
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
    pub request_timeout_secs: u64,
    /// Open connections the server holds at most (all workers together); more wait in
    /// the listen backlog.
    pub max_connections: usize,
    /// The address people and providers reach the service at (`https://incidents.example.com`).
    /// Gives the allowed `Host` when `allowed_hosts` is empty, and makes the session
    /// cookie `Secure` when it is https.
    pub public_url: String,
    /// Host names (without port) requests may carry in `Host`; `*` allows any. Empty:
    /// the loopback names on loopback, else the host of `public_url`.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// `sled` (embedded, one node) or `postgres` (N replicas on one database).
    pub backend: StorageBackend,
    pub postgres: PostgresSettings,
    pub path: PathBuf,
    pub flush_every_ms: u64,
    pub cache_capacity_bytes: u64,
    pub max_batch: usize,
    pub queue_depth: usize,
    pub delivery_retention_days: u32,
    /// Unattached events (and their raw payloads) older than this are pruned.
    pub stream_retention_days: u32,
}

/// Where the events live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Sled,
    Postgres,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:5432/db`; empty: `DATABASE_URL`.
    pub url: Secret,
    /// Connections this replica opens at most.
    pub max_connections: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub token: Secret,
    /// How long a page login lasts.
    pub session_ttl_hours: u32,
    /// Marks the session cookie `Secure` even when `server.public_url` is not https
    /// (TLS ended by a proxy that forwards plain http).
    pub cookie_secure: bool,
    /// Failed logins or bearer tokens one client address may make per minute before
    /// it gets 429.
    pub auth_failures_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesSettings {
    pub pagerduty: PagerDutySettings,
    pub github: GithubSettings,
    pub slack: SlackSettings,
    pub datadog: DatadogSettings,
    pub cloudwatch: CloudWatchSourceSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutySettings {
    pub enabled: bool,
    pub secret: Secret,
    /// A read-only REST API key: open incidents and their notes are reconciled with it.
    pub api_token: Secret,
    pub api_url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    pub enabled: bool,
    pub secret: Secret,
    pub token: Secret,
    pub api_url: String,
    /// Hooks whose delivery logs are reconciled besides those seen in `X-GitHub-Hook-ID`.
    pub hooks: Vec<GithubHook>,
}

/// A GitHub webhook: of a repository (`repo = "owner/name"`) or an organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GithubHook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub id: u64,
}

impl GithubHook {
    /// The hook's REST path (`/repos/{owner}/{repo}/hooks/{id}` or `/orgs/{org}/hooks/{id}`).
    pub fn path(&self) -> Option<String> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && s != "."
                && s != ".."
        };
        match (&self.repo, &self.org) {
            (Some(repo), None) => {
                let (owner, name) = repo.split_once('/')?;
                (ok(owner) && ok(name)).then(|| format!("/repos/{owner}/{name}/hooks/{}", self.id))
            }
            (None, Some(org)) => ok(org).then(|| format!("/orgs/{org}/hooks/{}", self.id)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    pub enabled: bool,
    pub signing_secret: Secret,
    pub include_bots: bool,
    pub max_skew_secs: u64,
    /// A bot token (`xoxb-…`, scope `users:read`): Slack user ids are named with
    /// `users.info`. Empty: ids stay ids unless `[[people]]` names them.
    pub bot_token: Secret,
    pub api_url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatadogSettings {
    pub enabled: bool,
    pub token: Secret,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchSourceSettings {
    pub enabled: bool,
    pub token: Secret,
    pub sns_base_url: String,
    pub sns_auto_confirm: bool,
    pub sns_topic_arns: Vec<String>,
}

/// An outbound API's base URL, which carries a token: https, or plain http on loopback.
fn check_api_url(key: &'static str, url: &str, example: &str) -> Result<(), ConfigError> {
    let host = crate::domain::url_origin_parts(url)
        .and_then(|(_, authority)| crate::domain::host_of_authority(&authority));
    let loopback = host.as_deref().is_some_and(is_loopback_host);
    if host.is_none() || !(url.to_ascii_lowercase().starts_with("https://") || loopback) {
        return Err(ConfigError::Invalid {
            key,
            message: format!(
                "must be an https URL ({example}); plain http only on loopback, as it carries the token"
            ),
        });
    }
    Ok(())
}

/// `localhost`, `127.0.0.1`, `::1` (bracketed or not).
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where to read the optional layers from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// `config/<env>.toml`, relative to the working directory, when set.
    pub env: Option<String>,
    /// An explicit file, read after the env file.
    pub file: Option<PathBuf>,
    /// Read `INCIDENTPOST__…` environment variables (tests turn this off).
    pub use_environment: bool,
}

impl Settings {
    /// Loads every layer and validates the result.
    pub fn load(from: &ConfigSources) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(env) = &from.env {
            let path = Path::new("config").join(format!("{env}.toml"));
            builder = builder.add_source(config::File::from(path).required(true));
        }
        if let Some(file) = &from.file {
            builder = builder.add_source(config::File::from(file.clone()).required(true));
        }
        if from.use_environment {
            builder = builder.add_source(
                config::Environment::with_prefix("INCIDENTPOST")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        if from.use_environment && settings.storage.postgres.url.is_empty() {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                settings.storage.postgres.url = Secret::new(url);
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Loads only the embedded defaults plus a TOML overlay (for tests and tools).
    pub fn from_toml_overlay(overlay: &str) -> Result<Self, ConfigError> {
        Self::from_toml_layers(&[overlay])
    }

    /// Loads the embedded defaults plus TOML layers, later ones winning.
    pub fn from_toml_layers(layers: &[&str]) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        for layer in layers {
            builder = builder.add_source(config::File::from_str(layer, config::FileFormat::Toml));
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The host names accepted in `Host`, lower-case; `None` accepts any (`*`).
    pub fn allowed_hosts(&self) -> Option<Vec<String>> {
        let s = &self.server;
        let mut hosts: Vec<String> = s
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.iter().any(|h| h == "*") {
            return None;
        }
        let listed = !hosts.is_empty();
        if let Some(h) = public_url_host(&s.public_url) {
            hosts.push(h);
        }
        // The loopback names are the default; a list of the operator's replaces them.
        if self.is_loopback() && !listed {
            for h in ["localhost", "127.0.0.1", "::1", "[::1]"] {
                hosts.push(h.to_owned());
            }
            hosts.push(s.host.to_ascii_lowercase());
        }
        hosts.sort();
        hosts.dedup();
        Some(hosts)
    }

    /// `scheme://host[:port]` of `server.public_url`, lower-case, if set.
    pub fn public_origin(&self) -> Option<String> {
        let (scheme, authority) = crate::domain::url_origin_parts(&self.server.public_url)?;
        Some(format!("{scheme}://{authority}"))
    }

    /// True when the session cookie must carry `Secure`.
    pub fn cookie_secure(&self) -> bool {
        self.api.cookie_secure
            || self
                .server
                .public_url
                .trim()
                .to_ascii_lowercase()
                .starts_with("https://")
    }

    /// Every configured secret by key, for the checks that compare them.
    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        let s = &self.sources;
        vec![
            ("api.token", &self.api.token),
            ("sources.pagerduty.secret", &s.pagerduty.secret),
            ("sources.pagerduty.api_token", &s.pagerduty.api_token),
            ("sources.github.secret", &s.github.secret),
            ("sources.github.token", &s.github.token),
            ("sources.slack.signing_secret", &s.slack.signing_secret),
            ("sources.slack.bot_token", &s.slack.bot_token),
            ("sources.datadog.token", &s.datadog.token),
            ("sources.cloudwatch.token", &s.cloudwatch.token),
        ]
    }

    /// True when the server binds only to the local machine.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.server.host)
    }

    /// The enabled sources that have no secret configured, by config key.
    pub fn unsigned_sources(&self) -> Vec<&'static str> {
        let s = &self.sources;
        [
            (s.pagerduty.enabled && s.pagerduty.secret.is_empty())
                .then_some("sources.pagerduty.secret"),
            (s.github.enabled && s.github.secret.is_empty()).then_some("sources.github.secret"),
            (s.slack.enabled && s.slack.signing_secret.is_empty())
                .then_some("sources.slack.signing_secret"),
            (s.datadog.enabled && s.datadog.token.is_empty()).then_some("sources.datadog.token"),
            (s.cloudwatch.enabled && s.cloudwatch.token.is_empty())
                .then_some("sources.cloudwatch.token"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        if self.server.host.trim().is_empty() {
            return Err(invalid("server.host", "must not be empty"));
        }
        if self.server.host != "localhost" && self.server.host.parse::<IpAddr>().is_err() {
            return Err(invalid(
                "server.host",
                format!("'{}' is not an IP address or 'localhost'", self.server.host),
            ));
        }
        if !(1..=300).contains(&self.server.request_timeout_secs) {
            return Err(invalid(
                "server.request_timeout_secs",
                "must be between 1 and 300",
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        let url = self.server.public_url.trim();
        if !url.is_empty() && public_url_host(url).is_none() {
            return Err(invalid(
                "server.public_url",
                format!("'{url}' is not an absolute http(s) URL"),
            ));
        }
        if !(1..=24 * 30).contains(&self.api.session_ttl_hours) {
            return Err(invalid(
                "api.session_ttl_hours",
                "must be between 1 and 720",
            ));
        }
        if self.api.auth_failures_per_minute == 0 {
            return Err(invalid(
                "api.auth_failures_per_minute",
                "must be at least 1",
            ));
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(invalid("storage.path", "must not be empty"));
        }
        if !(1..=60_000).contains(&self.storage.flush_every_ms) {
            return Err(invalid(
                "storage.flush_every_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(1..=4096).contains(&self.storage.max_batch) {
            return Err(invalid("storage.max_batch", "must be between 1 and 4096"));
        }
        if self.storage.queue_depth == 0 {
            return Err(invalid("storage.queue_depth", "must be at least 1"));
        }
        if self.storage.delivery_retention_days == 0 {
            return Err(invalid(
                "storage.delivery_retention_days",
                "must be at least 1 (providers retry for up to 48 hours)",
            ));
        }
        if !(1..=64).contains(&self.render.max_concurrent) {
            return Err(invalid("render.max_concurrent", "must be between 1 and 64"));
        }
        if !(1..=300).contains(&self.render.queue_timeout_secs) {
            return Err(invalid(
                "render.queue_timeout_secs",
                "must be between 1 and 300",
            ));
        }
        if !(1..=3650).contains(&self.storage.stream_retention_days) {
            return Err(invalid(
                "storage.stream_retention_days",
                "must be between 1 and 3650",
            ));
        }
        if u64::from(self.storage.stream_retention_days) * 24
            < u64::from(self.correlation.change_lookback_hours)
        {
            return Err(invalid(
                "storage.stream_retention_days",
                "must cover correlation.change_lookback_hours (a trigger pulls in changes that old)",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("'{}' is not a valid filter", self.log.level),
            ));
        }
        let c = &self.correlation;
        if c.lookback_mins > 24 * 60 {
            return Err(invalid("correlation.lookback_mins", "must be at most 1440"));
        }
        if c.change_lookback_hours > 24 * 30 {
            return Err(invalid(
                "correlation.change_lookback_hours",
                "must be at most 720",
            ));
        }
        if c.grace_mins > 24 * 60 {
            return Err(invalid("correlation.grace_mins", "must be at most 1440"));
        }
        if self.storage.backend == StorageBackend::Postgres {
            let url = self.storage.postgres.url.expose();
            if url.trim().is_empty() {
                return Err(invalid(
                    "storage.postgres.url",
                    "must be set (or DATABASE_URL) with storage.backend = \"postgres\"",
                ));
            }
            if url.parse::<postgres::Config>().is_err() {
                return Err(invalid(
                    "storage.postgres.url",
                    "is not a PostgreSQL connection string (postgres://user@host:5432/db)",
                ));
            }
        }
        if !(1..=256).contains(&self.storage.postgres.max_connections) {
            return Err(invalid(
                "storage.postgres.max_connections",
                "must be between 1 and 256",
            ));
        }
        if let Err(e) = crate::people::Directory::new(&self.people) {
            return Err(invalid("people", e.to_string()));
        }
        if let Err(e) = crate::postmortem::redact::Redactor::new(&self.render.redact_patterns) {
            return Err(invalid("render.redact_patterns", e));
        }
        if !self.sources.slack.bot_token.is_empty() {
            check_api_url(
                "sources.slack.api_url",
                &self.sources.slack.api_url,
                "https://slack.com/api",
            )?;
        }
        if !self.sources.github.token.is_empty() {
            check_api_url(
                "sources.github.api_url",
                &self.sources.github.api_url,
                "https://api.github.com",
            )?;
        }
        if !self.sources.pagerduty.api_token.is_empty() {
            check_api_url(
                "sources.pagerduty.api_url",
                &self.sources.pagerduty.api_url,
                "https://api.pagerduty.com",
            )?;
        }
        for hook in &self.sources.github.hooks {
            if hook.path().is_none() {
                return Err(invalid(
                    "sources.github.hooks",
                    format!(
                        "{hook:?} needs exactly one of repo = \"owner/name\" or org = \"name\", and an id"
                    ),
                ));
            }
        }
        let r = &self.reconcile;
        if !(10..=86_400).contains(&r.interval_secs) {
            return Err(invalid(
                "reconcile.interval_secs",
                "must be between 10 and 86400",
            ));
        }
        if !(1..=1000).contains(&r.max_redeliveries) {
            return Err(invalid(
                "reconcile.max_redeliveries",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=100).contains(&r.max_pages) {
            return Err(invalid("reconcile.max_pages", "must be between 1 and 100"));
        }
        if r.settle_secs > 3600 {
            return Err(invalid("reconcile.settle_secs", "must be at most 3600"));
        }
        if !(1..=3600).contains(&self.sources.slack.max_skew_secs) {
            return Err(invalid(
                "sources.slack.max_skew_secs",
                "must be between 1 and 3600",
            ));
        }
        let cw = &self.pollers.cloudwatch;
        if cw.enabled {
            if cw.region.trim().is_empty() {
                return Err(invalid("pollers.cloudwatch.region", "must be set"));
            }
            if !(1..=86_400).contains(&cw.interval_secs) {
                return Err(invalid(
                    "pollers.cloudwatch.interval_secs",
                    "must be between 1 and 86400",
                ));
            }
        }
        for m in &cw.metrics {
            let ok = m.id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && m.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(invalid(
                    "pollers.cloudwatch.metrics.id",
                    format!("'{}' must match [a-z][a-zA-Z0-9_]*", m.id),
                ));
            }
            if m.period_secs == 0 || m.period_secs % 60 != 0 {
                return Err(invalid(
                    "pollers.cloudwatch.metrics.period_secs",
                    format!("{} must be a positive multiple of 60", m.period_secs),
                ));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(invalid("services.name", format!("entry {i} has no name")));
            }
        }
        if !self.is_loopback() {
            if let Some(key) = self.unsigned_sources().first() {
                return Err(invalid(
                    key,
                    format!(
                        "must be set when listening on non-loopback address {} \
                         (or disable the source)",
                        self.server.host
                    ),
                ));
            }
            if self.api.token.is_empty() {
                return Err(invalid(
                    "api.token",
                    format!(
                        "must be set when listening on non-loopback address {}",
                        self.server.host
                    ),
                ));
            }
            if let Some(why) = weak_token(self.api.token.expose()) {
                return Err(invalid(
                    "api.token",
                    format!("{why} (it guards every incident off loopback)"),
                ));
            }
            let secrets = self.secrets();
            for (i, (key, secret)) in secrets.iter().enumerate() {
                if secret.is_empty() {
                    continue;
                }
                if let Some((first, _)) = secrets[..i].iter().find(|(_, other)| other == secret) {
                    return Err(invalid(
                        key,
                        format!(
                            "repeats {first}: give each provider and the API a secret of its own"
                        ),
                    ));
                }
            }
            if self.server.allowed_hosts.is_empty() && self.server.public_url.trim().is_empty() {
                return Err(invalid(
                    "server.allowed_hosts",
                    format!(
                        "set it (or server.public_url) when listening on non-loopback address {}: \
                         requests naming any other Host are refused (DNS rebinding)",
                        self.server.host
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The host of an absolute http(s) URL, lower-case, without port.
pub fn public_url_host(url: &str) -> Option<String> {
    let (_, authority) = crate::domain::url_origin_parts(url)?;
    crate::domain::host_of_authority(&authority)
}

/// Why an API token is too weak to guard a service off loopback, if it is.
fn weak_token(token: &str) -> Option<&'static str> {
    const MIN_CHARS: usize = 16;
    if token.chars().any(char::is_whitespace) {
        return Some("must not contain whitespace");
    }
    if token.chars().count() < MIN_CHARS {
        return Some("must be at least 16 characters");
    }
    let mut chars = token.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Some("must not be one character repeated");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load_and_listen_on_loopback() {
        let s = Settings::from_toml_overlay("").unwrap();
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.storage.path, PathBuf::from("./data"));
        assert!(s.is_loopback());
        assert_eq!(s.unsigned_sources().len(), 5);
    }

    #[test]
    fn non_loopback_without_secrets_names_the_missing_key() {
        let err = Settings::from_toml_overlay("[server]\nhost = \"0.0.0.0\"").unwrap_err();
        assert!(
            err.to_string().contains("sources.pagerduty.secret"),
            "{err}"
        );
    }

    #[test]
    fn non_loopback_without_api_token_is_refused() {
        let overlay = r#"
            [server]
            host = "0.0.0.0"
            [sources.pagerduty]
            secret = "a"
            [sources.github]
            secret = "b"
            [sources.slack]
            signing_secret = "c"
            [sources.datadog]
            enabled = false
            [sources.cloudwatch]
            enabled = false
        "#;
        let err = Settings::from_toml_overlay(overlay).unwrap_err();
        assert!(err.to_string().contains("api.token"), "{err}");
    }

    const STRONG: &str = r#"
            [server]
            host = "0.0.0.0"
            public_url = "https://incidents.example.com"
            [api]
            token = "an-api-token-of-some-length"
            [sources.pagerduty]
            secret = "pd-secret-1"
            [sources.github]
            secret = "gh-secret-2"
            [sources.slack]
            signing_secret = "slack-secret-3"
            [sources.datadog]
            token = "dd-token-4"
            [sources.cloudwatch]
            enabled = false
        "#;

    #[test]
    fn a_strong_public_configuration_is_accepted() {
        let s = Settings::from_toml_overlay(STRONG).unwrap();
        assert_eq!(
            s.allowed_hosts(),
            Some(vec!["incidents.example.com".to_owned()])
        );
        assert!(s.cookie_secure());
    }

    #[test]
    fn weak_tokens_off_loopback_are_refused_naming_the_key() {
        for token in [
            "x",
            "                    ",
            "short-token",
            "has a space in it ok",
            "aaaaaaaaaaaaaaaaaaaa",
        ] {
            let overlay = STRONG.replace("an-api-token-of-some-length", token);
            let err = Settings::from_toml_overlay(&overlay)
                .unwrap_err()
                .to_string();
            assert!(err.contains("api.token"), "{token:?}: {err}");
        }
    }

    #[test]
    fn secrets_that_repeat_one_another_are_refused_naming_the_key() {
        let overlay = STRONG.replace("gh-secret-2", "pd-secret-1");
        let err = Settings::from_toml_overlay(&overlay)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sources.github.secret"), "{err}");
        assert!(err.contains("sources.pagerduty.secret"), "{err}");
        let overlay = STRONG.replace("dd-token-4", "an-api-token-of-some-length");
        let err = Settings::from_toml_overlay(&overlay)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sources.datadog.token"), "{err}");
    }

    #[test]
    fn off_loopback_a_host_list_or_public_url_is_required() {
        let overlay = STRONG.replace("public_url = \"https://incidents.example.com\"", "");
        let err = Settings::from_toml_overlay(&overlay)
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.allowed_hosts"), "{err}");
        let overlay = overlay.replace(
            "[api]",
            "allowed_hosts = [\"Incidents.Example.com\"]\n[api]",
        );
        let s = Settings::from_toml_overlay(&overlay).unwrap();
        assert_eq!(
            s.allowed_hosts(),
            Some(vec!["incidents.example.com".to_owned()])
        );
        assert!(!s.cookie_secure());
    }

    #[test]
    fn on_loopback_the_loopback_names_are_allowed() {
        let hosts = Settings::from_toml_overlay("")
            .unwrap()
            .allowed_hosts()
            .unwrap();
        for h in ["localhost", "127.0.0.1", "[::1]"] {
            assert!(hosts.iter().any(|x| x == h), "{h}: {hosts:?}");
        }
        assert!(!hosts.iter().any(|x| x == "rebind.evil.test"));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Settings::from_toml_overlay("[server]\nport = \"eighty\"").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::from_toml_overlay("[server]\nprot = 1").unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_serialized_output() {
        let s = Settings::from_toml_overlay("[api]\ntoken = \"hunter2\"").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
        assert_eq!(s.api.token.expose(), "hunter2");
    }
}
