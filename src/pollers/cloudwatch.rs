//! The CloudWatch poller: alarm state changes (`DescribeAlarms`, diffed against a cursor
//! per alarm kept in the store) and, while an incident is open, the configured metric
//! series (`GetMetricData`). Cursors are saved in the same unit as the events they cover,
//! so a restart never re-emits a transition. A failed round is logged and retried with
//! backoff; the loop never exits until shutdown.
//!
//! `DescribeAlarmHistory` would add transitions that happen between two polls on AWS, but
//! the test server (moto) does not implement it; diffing states works on both.

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use aws_sdk_cloudwatch::Client;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::PollerHealth;
use crate::config::{CloudWatchPollerSettings, MetricQuery};
use crate::domain::{Event, EventKind, Source};
use crate::ingest::{Ingest, IngestError, Submission};
use crate::sources::cloudwatch::{format_number, AlarmChange};
use crate::store::{Store, StoreError};

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("CloudWatch {call} failed: {message}")]
    Aws { call: &'static str, message: String },
    #[error("reading cursors: {0}")]
    Store(#[from] StoreError),
    #[error("storing the round: {0}")]
    Ingest(#[from] IngestError),
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollReport {
    /// API calls made (DescribeAlarms pages + GetMetricData pages).
    pub calls: u32,
    /// Alarm transitions stored.
    pub alarm_events: usize,
    /// Metric series events stored.
    pub metric_events: usize,
}

/// Polls one AWS account/region.
pub struct CloudWatchPoller {
    client: Client,
    settings: CloudWatchPollerSettings,
    store: Arc<dyn Store>,
    ingest: Ingest,
    health: Arc<PollerHealth>,
}

fn to_chrono(t: &AwsDateTime) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single()
}

/// Builds the SDK client from settings: the standard credential chain, the configured
/// region and, when set, another endpoint. One TLS stack: rustls with ring.
pub async fn client_from_settings(settings: &CloudWatchPollerSettings) -> Client {
    let http = http_client();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .http_client(http);
    if !settings.endpoint_url.trim().is_empty() {
        loader = loader.endpoint_url(settings.endpoint_url.trim());
    }
    Client::new(&loader.load().await)
}

/// The SDK's HTTP client: rustls with ring, the one TLS stack of the whole binary.
pub fn http_client() -> aws_sdk_cloudwatch::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The delay before the next round after `failures` failed ones in a row.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let exp = Duration::from_secs(2).saturating_mul(1 << failures.min(16).saturating_sub(1));
    exp.min(interval.max(Duration::from_secs(300)))
}

impl CloudWatchPoller {
    /// A poller using `client` (built by [`client_from_settings`], or by a test).
    pub fn new(
        client: Client,
        settings: CloudWatchPollerSettings,
        store: Arc<dyn Store>,
        ingest: Ingest,
    ) -> Self {
        let health = Arc::new(PollerHealth::new(
            "cloudwatch",
            Duration::from_secs(settings.interval_secs),
        ));
        CloudWatchPoller {
            client,
            settings,
            store,
            ingest,
            health,
        }
    }

    /// Its health, for `/readyz`.
    pub fn health(&self) -> Arc<PollerHealth> {
        self.health.clone()
    }

    fn aws<E: std::fmt::Display>(call: &'static str) -> impl FnOnce(E) -> PollError {
        move |e| PollError::Aws {
            call,
            message: e.to_string(),
        }
    }

    /// One round: alarms, then metric series if an incident is open.
    pub async fn poll_once(&self) -> Result<PollReport, PollError> {
        let mut report = PollReport::default();
        let now = Utc::now();
        let alarms = self.changed_alarms(&mut report).await?;
        let mut submissions = Vec::new();
        for (change, cursor) in alarms {
            let (events, keys) = match &change {
                Some(c) => (
                    vec![c.to_event(now, &c.delivery_key())],
                    vec![c.delivery_key()],
                ),
                None => (Vec::new(), Vec::new()),
            };
            report.alarm_events += events.len();
            submissions.push(Submission {
                event_keys: Vec::new(),
                delivery_keys: keys,
                events,
                raw: Vec::new(),
                cursors: vec![cursor],
                incident: None,
            });
        }
        if !self.settings.metrics.is_empty() && self.ingest.open_incidents() > 0 {
            for sub in self.metric_series(&mut report, now).await? {
                report.metric_events += sub.events.len();
                submissions.push(sub);
            }
        }
        for sub in submissions {
            self.ingest.submit(sub).await?;
        }
        Ok(report)
    }

    /// Alarms whose state differs from the stored cursor: (event to emit, cursor to save).
    /// On first sight only an alarm already in ALARM is emitted; others just set a cursor.
    async fn changed_alarms(
        &self,
        report: &mut PollReport,
    ) -> Result<Vec<(Option<AlarmChange>, (String, String))>, PollError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.client.describe_alarms().max_records(100);
            if !self.settings.alarm_name_prefix.is_empty() {
                req = req.alarm_name_prefix(&self.settings.alarm_name_prefix);
            }
            if let Some(t) = token.take() {
                req = req.next_token(t);
            }
            let page = req.send().await.map_err(|e| {
                Self::aws("DescribeAlarms")(aws_sdk_cloudwatch::error::DisplayErrorContext(e))
            })?;
            report.calls += 1;
            metrics::counter!("incidentpost_poller_calls_total", "poller" => "cloudwatch", "call" => "DescribeAlarms").increment(1);
            for a in page.metric_alarms() {
                let (Some(name), Some(state)) = (a.alarm_name(), a.state_value()) else {
                    continue;
                };
                // The transition time, not StateUpdatedTimestamp (which also moves when
                // only the evaluation state changes); SNS and EventBridge carry the same.
                let at = a
                    .state_transitioned_timestamp()
                    .or(a.state_updated_timestamp())
                    .and_then(to_chrono)
                    .unwrap_or_else(Utc::now);
                let key = format!("cloudwatch:alarm_state:{name}");
                let value = format!("{}@{}", state.as_str(), at.timestamp_millis());
                let previous = self.store.cursor(&key)?;
                if previous.as_deref() == Some(value.as_str()) {
                    continue;
                }
                let previous_state = previous
                    .as_deref()
                    .and_then(|p| p.split('@').next())
                    .map(str::to_owned);
                let emit = match &previous_state {
                    Some(p) => p != state.as_str(),
                    None => state.as_str() == "ALARM",
                };
                let change = emit.then(|| AlarmChange {
                    name: name.to_owned(),
                    state: state.as_str().to_owned(),
                    previous_state,
                    reason: a.state_reason().map(str::to_owned),
                    reason_data: a.state_reason_data().map(str::to_owned),
                    at,
                    namespace: a.namespace().map(str::to_owned),
                    metric: a.metric_name().map(str::to_owned),
                    threshold: a.threshold(),
                    comparison: a.comparison_operator().map(|c| c.as_str().to_owned()),
                    unit: a.unit().map(|u| u.as_str().to_owned()),
                    description: a.alarm_description().map(str::to_owned),
                    region: Some(self.settings.region.clone()),
                    arn: a.alarm_arn().map(str::to_owned),
                });
                out.push((change, (key, value)));
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// New samples of each configured series since its cursor (at most the last hour).
    async fn metric_series(
        &self,
        report: &mut PollReport,
        now: DateTime<Utc>,
    ) -> Result<Vec<Submission>, PollError> {
        let queries: Vec<MetricDataQuery> = self.settings.metrics.iter().map(to_query).collect();
        let start = now - chrono::Duration::hours(1);
        let mut series: std::collections::BTreeMap<String, Vec<(DateTime<Utc>, f64)>> =
            Default::default();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .get_metric_data()
                .set_metric_data_queries(Some(queries.clone()))
                .start_time(AwsDateTime::from_secs(start.timestamp()))
                .end_time(AwsDateTime::from_secs(now.timestamp() + 1));
            if let Some(t) = token.take() {
                req = req.next_token(t);
            }
            let page = req.send().await.map_err(|e| {
                Self::aws("GetMetricData")(aws_sdk_cloudwatch::error::DisplayErrorContext(e))
            })?;
            report.calls += 1;
            metrics::counter!("incidentpost_poller_calls_total", "poller" => "cloudwatch", "call" => "GetMetricData").increment(1);
            for r in page.metric_data_results() {
                let Some(id) = r.id() else { continue };
                let points = series.entry(id.to_owned()).or_default();
                for (t, v) in r.timestamps().iter().zip(r.values()) {
                    if let Some(t) = to_chrono(t) {
                        points.push((t, *v));
                    }
                }
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let mut out = Vec::new();
        for q in &self.settings.metrics {
            let key = format!("cloudwatch:metric:{}", q.id);
            let since = self
                .store
                .cursor(&key)?
                .and_then(|c| c.parse::<i64>().ok())
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            let mut points: Vec<(DateTime<Utc>, f64)> = series
                .remove(&q.id)
                .unwrap_or_default()
                .into_iter()
                .filter(|(t, _)| since.is_none_or(|s| *t > s))
                .collect();
            points.sort_by_key(|p| p.0);
            points.dedup_by(|a, b| a.0 == b.0);
            let Some(last) = points.last().map(|p| p.0) else {
                continue;
            };
            out.push(Submission {
                event_keys: Vec::new(),
                delivery_keys: vec![format!(
                    "cloudwatch:metric:{}:{}",
                    q.id,
                    last.timestamp_millis()
                )],
                events: vec![metric_event(q, &points, now)],
                raw: Vec::new(),
                cursors: vec![(key, last.timestamp_millis().to_string())],
                incident: None,
            });
        }
        Ok(out)
    }

    /// Polls until `stop`, backing off after failures.
    pub async fn run(self, stop: CancellationToken) {
        let interval = Duration::from_secs(self.settings.interval_secs);
        let mut failures = 0u32;
        let mut leading = false;
        loop {
            // Replicas on one database poll one at a time: the leader polls, the others
            // stand by and take over within one interval when it is gone.
            let store = self.store.clone();
            let lead = tokio::task::spawn_blocking(move || store.lead("cloudwatch-poller"))
                .await
                .unwrap_or_else(|e| Err(crate::store::StoreError::Engine(e.to_string())));
            match lead {
                Ok(true) => {
                    if !leading {
                        tracing::info!("this replica runs the CloudWatch poller");
                    }
                    leading = true;
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!("another replica took over the CloudWatch poller");
                    }
                    leading = false;
                    // Standing by is healthy.
                    self.health.record_success();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not tell which replica polls CloudWatch; polling");
                }
            }
            let delay = match self.poll_once().await {
                Ok(report) => {
                    failures = 0;
                    self.health.record_success();
                    tracing::debug!(?report, "CloudWatch poll round");
                    interval
                }
                Err(e) => {
                    failures += 1;
                    self.health.record_failure();
                    let delay = backoff(interval, failures);
                    tracing::warn!(error = %e, failures, retry_in_secs = delay.as_secs(), "CloudWatch poll failed; backing off");
                    delay
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!("CloudWatch poller stopped");
    }
}

fn to_query(q: &MetricQuery) -> MetricDataQuery {
    let mut metric = Metric::builder()
        .namespace(&q.namespace)
        .metric_name(&q.metric_name);
    for (k, v) in &q.dimensions {
        metric = metric.dimensions(Dimension::builder().name(k).value(v).build());
    }
    MetricDataQuery::builder()
        .id(&q.id)
        .label(q.label.clone().unwrap_or_else(|| q.metric_name.clone()))
        .return_data(true)
        .metric_stat(
            MetricStat::builder()
                .metric(metric.build())
                .period(i32::try_from(q.period_secs).unwrap_or(60))
                .stat(&q.stat)
                .build(),
        )
        .build()
}

/// One `metric.sample` event per series per round: `RDS CPU: 5 samples, max 87%`.
fn metric_event(q: &MetricQuery, points: &[(DateTime<Utc>, f64)], now: DateTime<Utc>) -> Event {
    let unit = q.unit.clone().unwrap_or_default();
    let label = q.label.clone().unwrap_or_else(|| q.metric_name.clone());
    let max = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let mut attrs = Map::new();
    attrs.insert("metric_id".into(), Value::from(q.id.clone()));
    attrs.insert("label".into(), Value::from(label.clone()));
    attrs.insert("namespace".into(), Value::from(q.namespace.clone()));
    attrs.insert("metric".into(), Value::from(q.metric_name.clone()));
    attrs.insert("stat".into(), Value::from(q.stat.clone()));
    attrs.insert("unit".into(), Value::from(unit.clone()));
    attrs.insert("max".into(), Value::from(max));
    attrs.insert(
        "samples".into(),
        Value::from(
            points
                .iter()
                .map(|(t, v)| json!([t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), v]))
                .collect::<Vec<_>>(),
        ),
    );
    let n = points.len();
    Event {
        id: Ulid::new(),
        source: Source::Cloudwatch,
        kind: EventKind::MetricSample,
        occurred_at: points.last().map(|p| p.0).unwrap_or(now),
        received_at: now,
        title: format!(
            "{label}: {n} sample{}, max {}{unit}",
            if n == 1 { "" } else { "s" },
            format_number(max)
        ),
        service: q.service.clone(),
        severity: None,
        actor: None,
        url: None,
        keys: Default::default(),
        attrs,
        delivery: None,
        raw_id: None,
        incident_id: None,
        correlation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_secs(60);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), Duration::from_secs(2));
        assert_eq!(backoff(i, 2), Duration::from_secs(4));
        assert_eq!(backoff(i, 30), Duration::from_secs(300));
    }
}
