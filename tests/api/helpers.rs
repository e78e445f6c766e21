//! `spawn_app()` and friends: start the service on port 0 with a temp sled dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use incidentpost::config::Settings;
use incidentpost::startup::{open_store, Application};
use incidentpost::store::{Store, StoreError, WriteTx};
use serde_json::Value;
use tempfile::TempDir;

pub const PD_SECRET: &str = "pd-test-secret";

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
}

/// The settings every test starts from: port 0, a temp dir, a PagerDuty secret.
pub fn test_settings(dir: &Path, extra: &str) -> Settings {
    let base = format!(
        "[server]\nport = 0\nworkers = 2\nshutdown_timeout_secs = 5\n\
         [storage]\npath = '{}'\n\
         [sources.pagerduty]\nsecret = '{PD_SECRET}'\n",
        dir.display()
    );
    Settings::from_toml_layers(&[&base, extra]).expect("test settings are valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("", None).await
}

/// Starts the service with a TOML overlay, on a fresh temp dir or a given one.
pub async fn spawn_app_with(extra: &str, dir: Option<Arc<TempDir>>) -> TestApp {
    let dir = dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
    let settings = test_settings(dir.path(), extra);
    let store = open_store(&settings).unwrap();
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
    let join = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        data_dir: dir,
        handle,
        join,
        api_token,
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
        req.send().await.expect("request reaches the server")
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
        work: &mut dyn FnMut(&mut dyn WriteTx) -> Result<(), StoreError>,
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
    fn incidents(&self) -> Result<Vec<incidentpost::domain::Incident>, StoreError> {
        self.inner.incidents()
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
    fn stream_events(&self) -> Result<Vec<incidentpost::domain::Event>, StoreError> {
        self.inner.stream_events()
    }
    fn stream_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<incidentpost::domain::Event>, StoreError> {
        self.inner.stream_since(since)
    }
    fn cursor(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.cursor(key)
    }
    fn raw(&self, id: ulid::Ulid) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.raw(id)
    }
    fn prune_deliveries(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Result<usize, StoreError> {
        self.inner.prune_deliveries(cutoff)
    }
    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
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
