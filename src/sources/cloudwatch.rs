//! CloudWatch alarms pushed to `POST /webhooks/cloudwatch`, two ways:
//!
//! - **SNS** (HTTPS subscription): the body is signed by SNS with RSA; the certificate is
//!   fetched from `SigningCertURL`, whose host must be `sns.<region>.amazonaws.com`, and
//!   cached. Only `SignatureVersion` 2 (SHA256) is accepted. `SubscriptionConfirmation` is
//!   confirmed by fetching `SubscribeURL`. Idempotency: `MessageId`.
//! - **EventBridge** API destination (`detail-type: CloudWatch Alarm State Change`): the
//!   connection sends the shared token in `X-IncidentPost-Token`. Idempotency: envelope `id`.
//!
//! Both, and the poller, also key each transition by alarm + state + time, so the same
//! transition arriving by two paths is stored once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value};
use ulid::Ulid;

use super::{
    parse_json, signature, time, truncate, Headers, NormalizeError, Normalized, VerifyError,
    WebhookSource,
};
use crate::config::{CloudWatchSourceSettings, Secret};
use crate::domain::{Event, EventKind, Severity, Source, KEY_CLOUDWATCH_ALARM, KEY_INCIDENT_REF};

const TOKEN_HEADER: &str = "X-IncidentPost-Token";

/// One alarm state change, whichever way it arrived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlarmChange {
    pub name: String,
    /// `ALARM`, `OK` or `INSUFFICIENT_DATA`.
    pub state: String,
    pub previous_state: Option<String>,
    pub reason: Option<String>,
    /// CloudWatch's `StateReasonData` JSON (carries `recentDatapoints`, `threshold`).
    pub reason_data: Option<String>,
    pub at: DateTime<Utc>,
    pub namespace: Option<String>,
    pub metric: Option<String>,
    pub threshold: Option<f64>,
    pub comparison: Option<String>,
    pub unit: Option<String>,
    pub description: Option<String>,
    pub region: Option<String>,
    pub arn: Option<String>,
}

fn comparison_symbol(op: &str) -> &'static str {
    match op {
        "GreaterThanThreshold" => ">",
        "GreaterThanOrEqualToThreshold" => ">=",
        "LessThanThreshold" => "<",
        "LessThanOrEqualToThreshold" => "<=",
        "LessThanLowerOrGreaterThanUpperThreshold" => "outside",
        "GreaterThanUpperThreshold" => ">",
        "LessThanLowerThreshold" => "<",
        _ => "vs",
    }
}

/// The comparison CloudWatch states in a reason ("was greater than the threshold").
fn comparison_in_reason(reason: &str) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    [
        ("greater than or equal to the threshold", ">="),
        ("greater than the threshold", ">"),
        ("less than or equal to the threshold", "<="),
        ("less than the threshold", "<"),
    ]
    .into_iter()
    .find(|(text, _)| r.contains(text) && !r.contains(&format!("not {text}")))
    .map(|(_, op)| op)
}

/// `12.0` → `12`, `87.456` → `87.5`.
pub fn format_number(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// `%` for utilization/percent metrics, else the unit CloudWatch gives (or none).
fn display_unit(metric: Option<&str>, unit: Option<&str>) -> &'static str {
    let m = metric.unwrap_or("");
    if unit == Some("Percent") || m.contains("Utilization") || m.contains("Percent") {
        "%"
    } else {
        match unit {
            Some("Milliseconds") => "ms",
            Some("Seconds") => "s",
            _ => "",
        }
    }
}

impl AlarmChange {
    /// The datapoint that caused the transition: the latest of `recentDatapoints`, else
    /// the first bracketed number of the reason text.
    pub fn value(&self) -> Option<f64> {
        let from_data = self
            .reason_data
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .and_then(|d| d.get("recentDatapoints")?.as_array()?.last()?.as_f64());
        from_data.or_else(|| {
            let reason = self.reason.as_deref()?;
            let start = reason.find('[')? + 1;
            let rest = &reason[start..];
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))?;
            rest[..end].parse().ok()
        })
    }

    fn threshold_value(&self) -> Option<f64> {
        self.threshold.or_else(|| {
            self.reason_data
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .and_then(|d| d.get("threshold")?.as_f64())
        })
    }

    /// A delivery key shared by every path a transition can arrive by.
    pub fn delivery_key(&self) -> String {
        format!(
            "cloudwatch:alarm:{}:{}:{}",
            self.name,
            self.state,
            self.at.timestamp()
        )
    }

    /// The timeline event: `RDS CPUUtilization 87% > 80% (ALARM)`.
    pub fn to_event(&self, received_at: DateTime<Utc>, delivery: &str) -> Event {
        let kind = match self.state.as_str() {
            "ALARM" => EventKind::AlertFiring,
            "OK" => EventKind::AlertRecovered,
            _ => EventKind::AlertNoData,
        };
        let unit = display_unit(self.metric.as_deref(), self.unit.as_deref());
        let ns = self
            .namespace
            .as_deref()
            .map(|n| n.trim_start_matches("AWS/").to_owned());
        let value = self.value();
        let title = match (&self.metric, value) {
            (Some(metric), Some(v)) => {
                let head = match &ns {
                    Some(ns) => format!("{ns} {metric}"),
                    None => metric.clone(),
                };
                let op = self
                    .comparison
                    .as_deref()
                    .map(comparison_symbol)
                    .or_else(|| self.reason.as_deref().and_then(comparison_in_reason));
                let cmp = match (self.state.as_str(), self.threshold_value(), op) {
                    ("ALARM", Some(t), Some(op)) => format!(" {op} {}{unit}", format_number(t)),
                    _ => String::new(),
                };
                format!("{head} {}{unit}{cmp} ({})", format_number(v), self.state)
            }
            _ => format!("{} ({})", self.name, self.state),
        };
        let mut keys = BTreeMap::new();
        keys.insert(KEY_CLOUDWATCH_ALARM.to_owned(), self.name.clone());
        if let Some(r) = self.description.as_deref().and_then(super::incident_ref_in) {
            keys.insert(KEY_INCIDENT_REF.to_owned(), r);
        }
        let mut attrs = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                attrs.insert(k.to_owned(), v);
            }
        };
        put("alarm", Some(Value::from(self.name.clone())));
        put("state", Some(Value::from(self.state.clone())));
        put(
            "previous_state",
            self.previous_state.clone().map(Value::from),
        );
        put(
            "reason",
            self.reason
                .as_deref()
                .map(|r| Value::from(truncate(r, 500))),
        );
        put("namespace", self.namespace.clone().map(Value::from));
        put("metric", self.metric.clone().map(Value::from));
        put("value", value.map(Value::from));
        put("threshold", self.threshold_value().map(Value::from));
        put("unit", (!unit.is_empty()).then(|| Value::from(unit)));
        put("region", self.region.clone().map(Value::from));
        Event {
            id: Ulid::new(),
            source: Source::Cloudwatch,
            kind,
            occurred_at: self.at,
            received_at,
            title,
            service: None,
            severity: Some(match kind {
                EventKind::AlertFiring => Severity::Error,
                EventKind::AlertRecovered => Severity::Info,
                _ => Severity::Warning,
            }),
            actor: None,
            url: self.region.as_deref().filter(|r| r.contains('-')).map(|region| {
                format!(
                    "https://console.aws.amazon.com/cloudwatch/home?region={region}#alarmsV2:alarm/{}",
                    self.name
                )
            }),
            keys,
            attrs,
            delivery: Some(delivery.to_owned()),
            raw_id: None,
            incident_id: None,
            correlation: None,
        }
    }
}

/// The alarm JSON SNS carries in `Message`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SnsAlarm {
    alarm_name: String,
    #[serde(default)]
    alarm_description: Option<String>,
    new_state_value: String,
    #[serde(default)]
    new_state_reason: Option<String>,
    state_change_time: String,
    #[serde(default)]
    old_state_value: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    alarm_arn: Option<String>,
    #[serde(default)]
    trigger: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SnsEnvelope {
    #[serde(rename = "Type")]
    kind: String,
    message_id: String,
    topic_arn: String,
    #[serde(default)]
    subject: Option<String>,
    message: String,
    timestamp: String,
    signature_version: String,
    signature: String,
    #[serde(default, rename = "SubscribeURL")]
    subscribe_url: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// The CloudWatch push source.
pub struct CloudWatch {
    token: Option<Secret>,
    topics: Vec<String>,
    base_override: Option<String>,
    auto_confirm: bool,
    http: reqwest::Client,
    /// Certificates by SigningCertURL, DER.
    certs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl CloudWatch {
    /// From `[sources.cloudwatch]`.
    pub fn new(settings: &CloudWatchSourceSettings) -> Self {
        CloudWatch {
            token: settings.token.as_option().cloned(),
            topics: settings.sns_topic_arns.clone(),
            base_override: Some(settings.sns_base_url.trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty()),
            auto_confirm: settings.sns_auto_confirm,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a TLS client can be built"),
            certs: Mutex::new(HashMap::new()),
        }
    }

    /// Checks an SNS URL (https, host `sns.<region>.amazonaws.com`) and returns where to
    /// fetch it: itself, or the same path under the configured override base.
    fn sns_fetch_url(&self, url: &str) -> Result<String, VerifyError> {
        let rest = url
            .strip_prefix("https://")
            .ok_or(VerifyError::Malformed("SigningCertURL"))?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let region = host
            .strip_prefix("sns.")
            .and_then(|h| {
                h.strip_suffix(".amazonaws.com")
                    .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
            })
            .ok_or(VerifyError::Malformed("SigningCertURL"))?;
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(VerifyError::Malformed("SigningCertURL"));
        }
        Ok(match &self.base_override {
            Some(base) => format!("{base}{path}"),
            None => url.to_owned(),
        })
    }

    fn is_sns(headers: &Headers, body: &[u8]) -> bool {
        headers.get("x-amz-sns-message-type").is_some()
            || serde_json::from_slice::<Value>(body)
                .ok()
                .is_some_and(|v| v.get("SigningCertURL").is_some())
    }

    fn cached_cert(&self, url: &str) -> Option<Arc<Vec<u8>>> {
        self.certs.lock().ok()?.get(url).cloned()
    }
}

/// The exact text SNS signs (fields in this order, each `Name\nvalue\n`).
fn string_to_sign(env: &SnsEnvelope) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        out.push_str(name);
        out.push('\n');
        out.push_str(value);
        out.push('\n');
    };
    field("Message", &env.message);
    field("MessageId", &env.message_id);
    if env.kind == "Notification" {
        if let Some(subject) = &env.subject {
            field("Subject", subject);
        }
    } else {
        field("SubscribeURL", env.subscribe_url.as_deref().unwrap_or(""));
    }
    field("Timestamp", &env.timestamp);
    if env.kind != "Notification" {
        field("Token", env.token.as_deref().unwrap_or(""));
    }
    field("TopicArn", &env.topic_arn);
    field("Type", &env.kind);
    out
}

/// Verifies an SNS signature with the signing certificate (DER).
pub fn verify_sns(cert_der: &[u8], body: &[u8]) -> Result<(), VerifyError> {
    let env: SnsEnvelope =
        serde_json::from_slice(body).map_err(|_| VerifyError::Malformed("SNS envelope"))?;
    if env.signature_version != "2" {
        // SignatureVersion 1 is SHA1withRSA, which we do not accept.
        return Err(VerifyError::Malformed(
            "SignatureVersion (set the topic to 2)",
        ));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(env.signature.trim())
        .map_err(|_| VerifyError::Malformed("Signature"))?;
    let der = rustls_pki_types::CertificateDer::from(cert_der.to_vec());
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| VerifyError::Mismatch)?;
    cert.verify_signature(
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        string_to_sign(&env).as_bytes(),
        &sig,
    )
    .map_err(|_| VerifyError::Mismatch)
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .ok()
        .map(|c| c.as_ref().to_vec())
}

/// The alarm change carried by an EventBridge `CloudWatch Alarm State Change` event.
fn eventbridge_alarm(v: &Value) -> Option<AlarmChange> {
    let d = v.get("detail")?;
    let st = d.get("state")?;
    let metric = d
        .pointer("/configuration/metrics/0/metricStat/metric")
        .cloned()
        .unwrap_or(Value::Null);
    Some(AlarmChange {
        name: d.get("alarmName")?.as_str()?.to_owned(),
        state: st.get("value")?.as_str()?.to_owned(),
        previous_state: d
            .pointer("/previousState/value")
            .and_then(Value::as_str)
            .map(str::to_owned),
        reason: st.get("reason").and_then(Value::as_str).map(str::to_owned),
        reason_data: st
            .get("reasonData")
            .and_then(Value::as_str)
            .map(str::to_owned),
        at: st
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(time::parse_aws)
            .or_else(|| {
                v.get("time")
                    .and_then(Value::as_str)
                    .and_then(time::parse_aws)
            })?,
        namespace: metric
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_owned),
        metric: metric
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        threshold: None,
        comparison: None,
        unit: None,
        description: d
            .pointer("/configuration/description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        region: v.get("region").and_then(Value::as_str).map(str::to_owned),
        arn: v
            .pointer("/resources/0")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn sns_alarm(a: SnsAlarm) -> Option<AlarmChange> {
    let t = a.trigger.unwrap_or(Value::Null);
    Some(AlarmChange {
        at: time::parse_aws(&a.state_change_time)?,
        name: a.alarm_name,
        state: a.new_state_value,
        previous_state: a.old_state_value,
        reason: a.new_state_reason,
        reason_data: None,
        namespace: t
            .get("Namespace")
            .and_then(Value::as_str)
            .map(str::to_owned),
        metric: t
            .get("MetricName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        threshold: t.get("Threshold").and_then(Value::as_f64),
        comparison: t
            .get("ComparisonOperator")
            .and_then(Value::as_str)
            .map(str::to_owned),
        unit: t.get("Unit").and_then(Value::as_str).map(str::to_owned),
        description: a.alarm_description,
        region: a.region,
        arn: a.alarm_arn,
    })
}

impl WebhookSource for CloudWatch {
    fn source(&self) -> Source {
        Source::Cloudwatch
    }

    fn prefetch<'a>(
        &'a self,
        headers: &'a Headers,
        body: &'a [u8],
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(async move {
            if !Self::is_sns(headers, body) {
                return Ok(());
            }
            let url = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("SigningCertURL")?.as_str().map(str::to_owned))
                .ok_or(VerifyError::Missing("SigningCertURL"))?;
            let topic = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("TopicArn")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            // Refuse foreign topics before any outbound fetch.
            if !self.topics.iter().any(|t| t == &topic) {
                return Err(VerifyError::Mismatch);
            }
            if self.cached_cert(&url).is_some() {
                return Ok(());
            }
            let path_ok = url.rsplit('/').next().is_some_and(|f| {
                f.starts_with("SimpleNotificationService-") && f.ends_with(".pem")
            });
            if !path_ok {
                return Err(VerifyError::Malformed("SigningCertURL"));
            }
            let fetch = self.sns_fetch_url(&url)?;
            let pem = async {
                let res = self.http.get(&fetch).send().await?.error_for_status()?;
                res.bytes().await
            }
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, url = %fetch, "fetching the SNS certificate failed");
                VerifyError::Unavailable("the SNS signing certificate could not be fetched".into())
            })?;
            let der = pem_to_der(&pem).ok_or(VerifyError::Malformed("SNS certificate"))?;
            if let Ok(mut certs) = self.certs.lock() {
                certs.insert(url, Arc::new(der));
            }
            Ok(())
        })
    }

    fn verify(
        &self,
        headers: &Headers,
        body: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        if Self::is_sns(headers, body) {
            let url = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("SigningCertURL")?.as_str().map(str::to_owned))
                .ok_or(VerifyError::Missing("SigningCertURL"))?;
            let cert = self.cached_cert(&url).ok_or(VerifyError::Unavailable(
                "SNS certificate not fetched".into(),
            ))?;
            return verify_sns(&cert, body);
        }
        match &self.token {
            None => Ok(()),
            Some(t) => signature::verify_token(t.expose(), headers.get(TOKEN_HEADER), TOKEN_HEADER),
        }
    }

    fn normalize(
        &self,
        headers: &Headers,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Normalized, NormalizeError> {
        if Self::is_sns(headers, body) {
            let env: SnsEnvelope = parse_json(body)?;
            match env.kind.as_str() {
                "SubscriptionConfirmation" => {
                    let url = env
                        .subscribe_url
                        .ok_or_else(|| NormalizeError::Shape("SubscribeURL is missing".into()))?;
                    let fetch = self.sns_fetch_url(&url).map_err(|_| {
                        NormalizeError::Shape("SubscribeURL is not an SNS URL".into())
                    })?;
                    if self.auto_confirm {
                        let http = self.http.clone();
                        tokio::spawn(async move {
                            match http
                                .get(&fetch)
                                .send()
                                .await
                                .and_then(|r| r.error_for_status())
                            {
                                Ok(_) => {
                                    tracing::info!(topic = %env.topic_arn, "SNS subscription confirmed")
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, topic = %env.topic_arn, "confirming the SNS subscription failed")
                                }
                            }
                        });
                    } else {
                        tracing::warn!(topic = %env.topic_arn, url = %url, "SNS subscription awaits manual confirmation");
                    }
                    return Ok(Normalized {
                        reply: Some(
                            serde_json::json!({"status": if self.auto_confirm { "confirming" } else { "awaiting_manual_confirmation" }}),
                        ),
                        ..Default::default()
                    });
                }
                "Notification" => {}
                other => {
                    return Ok(Normalized {
                        reply: Some(serde_json::json!({"status": "ignored", "type": other})),
                        ..Default::default()
                    })
                }
            }
            let mut delivery_keys = vec![format!("cloudwatch:sns:{}", env.message_id)];
            let alarm = serde_json::from_str::<SnsAlarm>(&env.message)
                .ok()
                .and_then(sns_alarm);
            let Some(alarm) = alarm else {
                return Ok(Normalized {
                    delivery_keys,
                    ignored: Some("SNS message is not a CloudWatch alarm".into()),
                    ..Default::default()
                });
            };
            delivery_keys.push(alarm.delivery_key());
            return Ok(Normalized {
                events: vec![alarm.to_event(received_at, &env.message_id)],
                delivery_keys,
                ..Default::default()
            });
        }
        let v: Value = parse_json(body)?;
        let id = v.get("id").and_then(Value::as_str).ok_or_else(|| {
            NormalizeError::Shape("neither an SNS message nor an EventBridge event (no id)".into())
        })?;
        let detail_type = v.get("detail-type").and_then(Value::as_str).unwrap_or("");
        let mut delivery_keys = vec![format!("cloudwatch:eventbridge:{id}")];
        if detail_type != "CloudWatch Alarm State Change" {
            return Ok(Normalized {
                delivery_keys,
                ignored: Some(format!(
                    "EventBridge detail-type '{detail_type}' is not recorded"
                )),
                ..Default::default()
            });
        }
        let alarm = eventbridge_alarm(&v).ok_or_else(|| {
            NormalizeError::Shape("detail.alarmName / detail.state is missing".into())
        })?;
        delivery_keys.push(alarm.delivery_key());
        Ok(Normalized {
            events: vec![alarm.to_event(received_at, id)],
            delivery_keys,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_reason_data_or_the_reason_text() {
        let a = AlarmChange {
            reason_data: Some(r#"{"recentDatapoints":[80.1,87.2],"threshold":80.0}"#.into()),
            ..Default::default()
        };
        assert_eq!(a.value(), Some(87.2));
        let b = AlarmChange {
            reason: Some("Threshold Crossed: 1 out of the last 1 datapoints [99.5 (02/10/19 16:59:00)] was greater".into()),
            ..Default::default()
        };
        assert_eq!(b.value(), Some(99.5));
    }

    #[test]
    fn titles_read_like_a_timeline() {
        let a = AlarmChange {
            name: "rds-cpu".into(),
            state: "ALARM".into(),
            namespace: Some("AWS/RDS".into()),
            metric: Some("CPUUtilization".into()),
            threshold: Some(80.0),
            comparison: Some("GreaterThanThreshold".into()),
            reason_data: Some(r#"{"recentDatapoints":[87.0]}"#.into()),
            ..Default::default()
        };
        assert_eq!(
            a.to_event(Utc::now(), "d").title,
            "RDS CPUUtilization 87% > 80% (ALARM)"
        );
        let ok = AlarmChange {
            state: "OK".into(),
            reason_data: Some(r#"{"recentDatapoints":[12.0]}"#.into()),
            ..a
        };
        assert_eq!(
            ok.to_event(Utc::now(), "d").title,
            "RDS CPUUtilization 12% (OK)"
        );
    }
}
