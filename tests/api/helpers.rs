//! `spawn_app()` and friends: start the service on port 0 with a temp sled dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use incidentpost::config::Settings;
use incidentpost::startup::{open_store, Application};
use incidentpost::store::{Store, StoreError, WriteTx};
use serde_json::Value;
use tempfile::TempDir;

pub const PD_SECRET: &str = "pd-test-secret";
pub const GH_SECRET: &str = "gh-test-secret";
pub const SLACK_SECRET: &str = "slack-test-secret";
pub const DD_TOKEN: &str = "dd-test-token";

pub fn fixture_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(fixture_path(rel)).unwrap_or_else(|e| panic!("reading fixture {rel}: {e}"))
}

pub fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(rel)).unwrap_or_else(|e| panic!("parsing {rel}: {e}"))
}

pub fn pd_sign(secret: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        incidentpost::sources::signature::hmac_sha256_hex(secret.as_bytes(), &[body])
    )
}

/// A running service and what tests need to talk to it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub data_dir: Arc<TempDir>,
    pub handle: actix_web::dev::ServerHandle,
    pub join: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub api_token: Option<String>,
    pub ingest: incidentpost::ingest::Ingest,
    pub store: Arc<dyn Store>,
}

/// True when the suite runs on PostgreSQL (`INCIDENTPOST_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("INCIDENTPOST_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The database of one test data dir on the test server (`INCIDENTPOST_TEST_DATABASE_URL`,
/// an administrative connection): created on first use, the same for a restart on the
/// same dir. `scripts/test` drops them all at the end.
fn pg_database_for(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let admin = std::env::var("INCIDENTPOST_TEST_DATABASE_URL")
        .expect("INCIDENTPOST_TEST_DATABASE_URL is set when INCIDENTPOST_TEST_BACKEND=postgres");
    let name = format!(
        "ipt_{}",
        &hex::encode(Sha256::digest(dir.display().to_string().as_bytes()))[..16]
    );
    let create = name.clone();
    let admin_url = admin.clone();
    // The synchronous client runs its own runtime: not on the test's.
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&admin_url, postgres::NoTls)
            .expect("connecting to INCIDENTPOST_TEST_DATABASE_URL");
        let exists = c
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&create])
            .unwrap()
            .is_some();
        if !exists {
            c.batch_execute(&format!("CREATE DATABASE {create}"))
                .unwrap();
        }
    })
    .join()
    .unwrap();
    let mut config: postgres::Config = admin.parse().unwrap();
    config.dbname(&name);
    // Back to a URL: the service reads one.
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    if host.starts_with('/') {
        format!("postgresql://{user}{password}@/{name}?host={host}&port={port}")
    } else {
        format!("postgresql://{user}{password}@{host}:{port}/{name}")
    }
}

/// The settings every test starts from: port 0, a temp dir, a PagerDuty secret.
pub fn test_settings(dir: &Path, extra: &str) -> Settings {
    let backend = if on_postgres() {
        format!(
            "[storage]\nbackend = 'postgres'\n[storage.postgres]\nurl = '{}'\nmax_connections = 4\n",
            pg_database_for(dir)
        )
    } else {
        String::new()
    };
    let base = format!(
        "[server]\nport = 0\nworkers = 2\nshutdown_timeout_secs = 5\n\
         [storage]\npath = '{}'\n\
         [sources.pagerduty]\nsecret = '{PD_SECRET}'\n\
         [sources.github]\nsecret = '{GH_SECRET}'\n\
         [sources.slack]\nsigning_secret = '{SLACK_SECRET}'\n\
         [sources.datadog]\ntoken = '{DD_TOKEN}'\n",
        dir.display()
    );
    Settings::from_toml_layers(&[&base, &backend, extra]).expect("test settings are valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("", None).await
}

/// Starts the service with a TOML overlay, on a fresh temp dir or a given one.
pub async fn spawn_app_with(extra: &str, dir: Option<Arc<TempDir>>) -> TestApp {
    let dir = dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
    let settings = test_settings(dir.path(), extra);
    // After a stop, the previous server's workers may still be dropping their handle on
    // the store for a moment: sled's directory lock is released when the last one goes.
    let mut tries = 0;
    let store = loop {
        match open_store(&settings) {
            Ok(store) => break store,
            Err(e) if tries < 100 && format!("{e:#}").contains("could not acquire lock") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("opening the test store: {e:#}"),
        }
    };
    spawn_with_store(settings, store, dir).await
}

pub async fn spawn_with_store(
    settings: Settings,
    store: Arc<dyn Store>,
    dir: Arc<TempDir>,
) -> TestApp {
    let api_token = settings
        .api
        .token
        .as_option()
        .map(|t| t.expose().to_owned());
    let app = Application::build_with_store(settings, store)
        .await
        .unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let ingest = app.ingest();
    let store = app.store();
    let join = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        data_dir: dir,
        handle,
        join,
        api_token,
        ingest,
        store,
    }
}

impl TestApp {
    /// Signs and posts a PagerDuty webhook.
    pub async fn post_pagerduty(&self, body: &[u8]) -> reqwest::Response {
        self.post_pagerduty_with(body, Some(&pd_sign(PD_SECRET, body)), None)
            .await
    }

    pub async fn post_pagerduty_with(
        &self,
        body: &[u8],
        signature: Option<&str>,
        webhook_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/webhooks/pagerduty", self.address))
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header("X-PagerDuty-Signature", sig);
        }
        if let Some(id) = webhook_id {
            req = req.header("X-Webhook-Id", id);
        }
        let res = req.send().await.expect("request reaches the server");
        self.settle_pull_ins().await;
        res
    }

    /// Waits until the look-back pull-ins of opened incidents are done: a trigger is
    /// answered once it is durable, and its pull-in follows (the `pullin:` markers go).
    pub async fn settle_pull_ins(&self) {
        let started = std::time::Instant::now();
        // An unreachable store (the database-down tests) runs no pull-in either.
        while self
            .store
            .cursors_with_prefix("pullin:")
            .is_ok_and(|pending| !pending.is_empty())
        {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "pull-ins still pending after 20 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Posts a body to `/webhooks/{source}` with the given headers.
    pub async fn post_webhook(
        &self,
        source: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/webhooks/{source}", self.address))
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send().await.expect("request reaches the server")
    }

    /// Signs and posts a GitHub delivery.
    pub async fn post_github(&self, event: &str, delivery: &str, body: &[u8]) -> reqwest::Response {
        let sig = format!(
            "sha256={}",
            incidentpost::sources::signature::hmac_sha256_hex(GH_SECRET.as_bytes(), &[body])
        );
        self.post_webhook(
            "github",
            body,
            &[
                ("X-GitHub-Event", event.to_owned()),
                ("X-GitHub-Delivery", delivery.to_owned()),
                ("X-GitHub-Hook-ID", "4242".to_owned()),
                ("X-Hub-Signature-256", sig),
                ("Content-Type", "application/json".to_owned()),
            ],
        )
        .await
    }

    /// Signs (timestamp now) and posts a Slack Events API request.
    pub async fn post_slack(&self, body: &[u8]) -> reqwest::Response {
        let ts = chrono::Utc::now().timestamp().to_string();
        self.post_slack_at(body, &ts).await
    }

    pub async fn post_slack_at(&self, body: &[u8], ts: &str) -> reqwest::Response {
        let sig = format!(
            "v0={}",
            incidentpost::sources::signature::hmac_sha256_hex(
                SLACK_SECRET.as_bytes(),
                &[b"v0:", ts.as_bytes(), b":", body]
            )
        );
        self.post_webhook(
            "slack",
            body,
            &[
                ("X-Slack-Request-Timestamp", ts.to_owned()),
                ("X-Slack-Signature", sig),
                ("Content-Type", "application/json".to_owned()),
            ],
        )
        .await
    }

    /// Posts a Datadog webhook with the shared token.
    pub async fn post_datadog(&self, body: &[u8]) -> reqwest::Response {
        self.post_webhook(
            "datadog",
            body,
            &[
                ("X-IncidentPost-Token", DD_TOKEN.to_owned()),
                ("Content-Type", "application/json".to_owned()),
            ],
        )
        .await
    }

    /// Unattached events, ordered by `occurred_at`.
    pub async fn unattached(&self) -> Vec<Value> {
        self.get_json("/events/unattached?limit=500").await["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{}", self.address, path));
        if let Some(t) = &self.api_token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request reaches the server")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.unwrap()
    }

    pub async fn incidents(&self) -> Vec<Value> {
        self.get_json("/incidents?limit=500").await["incidents"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        self.get_json(&format!("/incidents/{id}/events")).await["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Stops gracefully (as SIGTERM would) and waits for the final flush.
    pub async fn stop(self) -> Arc<TempDir> {
        self.handle.stop(true).await;
        self.join.await.unwrap().unwrap();
        self.data_dir
    }
}

/// A PagerDuty V3 payload built from the recorded `incident.triggered` capture with the
/// given type, incident id, event id and time patched in.
pub fn pd_v3(event_type: &str, incident_id: &str, event_id: &str, occurred_at: &str) -> Vec<u8> {
    let mut v = fixture_json("pagerduty/v3-incident.triggered.zulip.json");
    let e = &mut v["event"];
    e["event_type"] = event_type.into();
    e["id"] = event_id.into();
    e["occurred_at"] = occurred_at.into();
    e["data"]["id"] = incident_id.into();
    e["data"]["title"] = "API response time > 5000ms".into();
    e["data"]["status"] = match event_type {
        "incident.acknowledged" => "acknowledged",
        "incident.resolved" => "resolved",
        _ => "triggered",
    }
    .into();
    serde_json::to_vec(&v).unwrap()
}

/// Wraps the real sled store and fails writes on demand: the store-failure path without
/// replacing storage with a mock.
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub fail_writes: AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fail_writes: AtomicBool::new(false),
        })
    }
}

impl Store for FaultyStore {
    fn write(
        &self,
        work: &mut (dyn FnMut(&mut dyn WriteTx) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected disk failure".into()));
        }
        self.inner.write(work)
    }
    fn incident(
        &self,
        id: &incidentpost::domain::IncidentId,
    ) -> Result<Option<incidentpost::domain::Incident>, StoreError> {
        self.inner.incident(id)
    }
    fn incident_count(&self) -> Result<u64, StoreError> {
        self.inner.incident_count()
    }
    fn incidents_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&incidentpost::domain::Incident) -> bool,
    ) -> Result<incidentpost::store::Page<incidentpost::domain::Incident>, StoreError> {
        self.inner.incidents_page(cursor, limit, scan, keep)
    }
    fn live_incidents(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<incidentpost::domain::Incident>, StoreError> {
        self.inner.live_incidents(since)
    }
    fn open_incident_count(&self) -> Result<usize, StoreError> {
        self.inner.open_incident_count()
    }
    fn incident_events(
        &self,
        id: &incidentpost::domain::IncidentId,
    ) -> Result<Vec<incidentpost::domain::Event>, StoreError> {
        self.inner.incident_events(id)
    }
    fn incident_events_page(
        &self,
        id: &incidentpost::domain::IncidentId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<incidentpost::store::Page<incidentpost::domain::Event>, StoreError> {
        self.inner.incident_events_page(id, cursor, limit)
    }
    fn stream_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<incidentpost::store::Page<incidentpost::domain::Event>, StoreError> {
        self.inner.stream_page(cursor, limit)
    }
    fn stream_window(
        &self,
        part: incidentpost::store::StreamPart,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<incidentpost::store::Chunk, StoreError> {
        self.inner.stream_window(part, from, to, after, limit)
    }
    fn stream_naming(
        &self,
        incident: &incidentpost::domain::IncidentId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<incidentpost::store::Chunk, StoreError> {
        self.inner.stream_naming(incident, after, limit)
    }
    fn prune_stream(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.inner.prune_stream(cutoff, limit)
    }
    fn forget_cursor(&self, key: &str) -> Result<(), StoreError> {
        self.inner.forget_cursor(key)
    }
    fn cursors_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.cursors_with_prefix(prefix)
    }
    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.cursor(key)
    }
    fn raw(&self, id: ulid::Ulid) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.raw(id)
    }
    fn delivery(
        &self,
        key: &str,
    ) -> Result<Option<incidentpost::store::DeliveryRecord>, StoreError> {
        self.inner.delivery(key)
    }
    fn prune_deliveries(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<usize, StoreError> {
        self.inner.prune_deliveries(cutoff)
    }
    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }
    fn put_session(
        &self,
        key: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.inner.put_session(key, expires_at)
    }
    fn session(&self, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.inner.session(key)
    }
    fn delete_session(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete_session(key)
    }
    fn prune_sessions(&self, now: chrono::DateTime<chrono::Utc>) -> Result<usize, StoreError> {
        self.inner.prune_sessions(now)
    }
    fn put_pack(
        &self,
        id: &incidentpost::domain::IncidentId,
        zip: &[u8],
    ) -> Result<(), StoreError> {
        self.inner.put_pack(id, zip)
    }
    fn put_cache(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.put_cache(key, value)
    }
    fn pack(&self, id: &incidentpost::domain::IncidentId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.pack(id)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn export(
        &self,
        sink: &mut dyn FnMut(incidentpost::store::ExportRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.export(sink)
    }
}

/// A free loopback port for a child process.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Slack `event_callback` message built from the recorded capture.
pub fn slack_message(event_id: &str, channel: &str, ts: &str, text: &str) -> Vec<u8> {
    let mut v = fixture_json("slack/event_callback.message.zulip.json");
    v["event_id"] = event_id.into();
    v["event"]["channel"] = channel.into();
    v["event"]["ts"] = ts.into();
    v["event"]["event_ts"] = ts.into();
    v["event"]["text"] = text.into();
    v["event"]["user"] = "sarah".into();
    serde_json::to_vec(&v).unwrap()
}

/// A Datadog payload in the recommended template (config/datadog-payload-template.json),
/// rendered with the given values.
pub fn datadog_alert(
    id: &str,
    transition: &str,
    title: &str,
    cycle: &str,
    tags: &str,
    date: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/datadog-payload-template.json"),
    )
    .unwrap();
    let ms = date.timestamp_millis().to_string();
    let values = [
        ("$ID", id),
        ("$EVENT_TITLE", title),
        ("$EVENT_MSG", "%%%\\nMonitor body\\n%%%"),
        ("$DATE", &ms),
        ("$LAST_UPDATED", &ms),
        ("$EVENT_TYPE", "query_alert_monitor"),
        ("$ALERT_TRANSITION", transition),
        (
            "$ALERT_TYPE",
            if transition == "Recovered" {
                "success"
            } else {
                "error"
            },
        ),
        ("$ALERT_ID", "160076582"),
        ("$ALERT_CYCLE_KEY", cycle),
        ("$AGGREG_KEY", "agg-1"),
        ("$ALERT_METRIC", "postgresql.percent_usage_connections"),
        (
            "$ALERT_QUERY",
            "avg(last_5m):avg:postgresql.percent_usage_connections{*} > 0.9",
        ),
        ("$ALERT_SCOPE", ""),
        ("$TAGS", tags),
        ("$ALERT_PRIORITY", "P1"),
        ("$LINK", "https://app.datadoghq.com/event/event?id=1"),
        ("$ORG_ID", "1"),
        ("$ORG_NAME", "Acme"),
    ];
    let mut out = template;
    // Longest names first so $ALERT_TYPE does not clobber $ALERT_TYPE_x and the like.
    let mut sorted = values.to_vec();
    sorted.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in sorted {
        out = out.replace(k, v);
    }
    out.into_bytes()
}

/// Like [`pd_v3`], on another PagerDuty service.
pub fn pd_v3_on(
    service: &str,
    event_type: &str,
    incident_id: &str,
    event_id: &str,
    occurred_at: &str,
) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(&pd_v3(event_type, incident_id, event_id, occurred_at)).unwrap();
    v["event"]["data"]["service"]["summary"] = service.into();
    v["event"]["data"]["service"]["id"] = format!("PSVC{}", service.len()).into();
    serde_json::to_vec(&v).unwrap()
}

/// RFC 3339 for `now + minutes` (negative: in the past), second precision.
pub fn at_offset(minutes: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::minutes(minutes))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The real binary, started on a free port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment that points the binary at this test's store: nothing for sled (the
/// data dir is passed), the test database of `dir` on PostgreSQL.
pub fn backend_env(dir: &std::path::Path) -> Vec<(String, String)> {
    if on_postgres() {
        vec![
            ("INCIDENTPOST__STORAGE__BACKEND".into(), "postgres".into()),
            (
                "INCIDENTPOST__STORAGE__POSTGRES__URL".into(),
                pg_database_for(dir),
            ),
        ]
    } else {
        Vec::new()
    }
}

/// Starts `incidentpost serve` on `dir` with the PagerDuty secret set.
pub fn start_binary(dir: &std::path::Path) -> Server {
    start_binary_with(dir, &[])
}

/// Like [`start_binary`], with more environment variables.
pub fn start_binary_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_incidentpost"))
        .arg("serve")
        .env("INCIDENTPOST__SERVER__PORT", port.to_string())
        .env("INCIDENTPOST__STORAGE__PATH", dir)
        .env("INCIDENTPOST__SOURCES__PAGERDUTY__SECRET", PD_SECRET)
        .env("INCIDENTPOST__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .envs(backend_env(dir))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the incidentpost binary starts");
    Server {
        child,
        address: format!("http://127.0.0.1:{port}"),
    }
}

/// Waits until `/readyz` answers 200.
pub async fn wait_ready(client: &reqwest::Client, server: &Server) {
    for _ in 0..200 {
        if let Ok(res) = client
            .get(format!("{}/readyz", server.address))
            .send()
            .await
        {
            if res.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {} did not become ready", server.address);
}

/// A client that shows redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in on the pages with `token`; returns the `Cookie` header value of the session.
pub async fn login_cookie(app: &TestApp, token: &str) -> String {
    let res = no_redirects()
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", token), ("next", "/ui")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "login with the right token");
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}
