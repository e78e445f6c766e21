//! CloudWatch: the real AWS SDK against a real moto server (started per test on a free
//! loopback port), SNS push with a real RSA signature, EventBridge push.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, MetricDatum, StandardUnit, StateValue, Statistic,
};
use aws_sdk_cloudwatch::Client;
use incidentpost::config::Settings;
use incidentpost::pollers::cloudwatch::CloudWatchPoller;
use serde_json::Value;

use crate::helpers::*;

fn moto_binary() -> PathBuf {
    if let Ok(p) = std::env::var("INCIDENTPOST_TEST_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server");
    assert!(
        local.exists(),
        "moto_server not found: run the suite with scripts/test, which installs it"
    );
    local
}

/// A moto server on loopback; killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub async fn start_on(port: u16) -> Moto {
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto { child, port };
        for _ in 0..200 {
            if reqwest::get(moto.url()).await.is_ok() {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto did not start on port {port}");
    }

    pub async fn start() -> Moto {
        Self::start_on(free_port()).await
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The real SDK client, pointed at moto with static test credentials.
    pub fn client(&self) -> Client {
        let conf = aws_sdk_cloudwatch::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.url())
            .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
            .http_client(incidentpost::pollers::cloudwatch::http_client())
            .build();
        Client::from_conf(conf)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn put_alarm(client: &Client, name: &str) {
    client
        .put_metric_alarm()
        .alarm_name(name)
        .namespace("AWS/RDS")
        .metric_name("CPUUtilization")
        .statistic(Statistic::Average)
        .period(60)
        .evaluation_periods(1)
        .threshold(80.0)
        .comparison_operator(ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .expect("PutMetricAlarm");
}

async fn set_state(client: &Client, name: &str, state: StateValue, value: f64) {
    client
        .set_alarm_state()
        .alarm_name(name)
        .state_value(state)
        .state_reason(format!(
            "Threshold Crossed: 1 datapoint [{value}] vs threshold (80.0)"
        ))
        .state_reason_data(format!(
            "{{\"version\":\"1.0\",\"recentDatapoints\":[{value}],\"threshold\":80.0}}"
        ))
        .send()
        .await
        .expect("SetAlarmState");
}

fn poller_settings(extra: &str) -> incidentpost::config::CloudWatchPollerSettings {
    Settings::from_toml_layers(&[&format!("[pollers.cloudwatch]\ninterval_secs = 1\n{extra}")])
        .unwrap()
        .pollers
        .cloudwatch
}

#[tokio::test]
async fn an_alarm_driven_to_alarm_and_back_to_ok_becomes_two_events_on_the_open_incident() {
    let moto = Moto::start().await;
    let aws = moto.client();
    let app = spawn_app().await;
    app.post_pagerduty(&pd_v3("incident.triggered", "PCW", "E1", &at_offset(-5)))
        .await;
    put_alarm(&aws, "prod-rds-cpu").await;
    let poller = CloudWatchPoller::new(
        moto.client(),
        poller_settings(""),
        app.store.clone(),
        app.ingest.clone(),
    );

    let first = poller.poll_once().await.unwrap();
    assert_eq!(
        first.alarm_events, 0,
        "an alarm first seen in OK only sets its cursor"
    );
    assert_eq!(first.calls, 1);

    set_state(&aws, "prod-rds-cpu", StateValue::Alarm, 87.0).await;
    assert_eq!(poller.poll_once().await.unwrap().alarm_events, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await; // a distinct state timestamp
    set_state(&aws, "prod-rds-cpu", StateValue::Ok, 12.0).await;
    assert_eq!(poller.poll_once().await.unwrap().alarm_events, 1);
    assert_eq!(
        poller.poll_once().await.unwrap().alarm_events,
        0,
        "no change, no event"
    );

    let events: Vec<Value> = app
        .events("PCW")
        .await
        .into_iter()
        .filter(|e| e["source"] == "cloudwatch")
        .collect();
    let titles: Vec<&str> = events
        .iter()
        .map(|e| e["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "RDS CPUUtilization 87% > 80% (ALARM)",
            "RDS CPUUtilization 12% (OK)"
        ]
    );
    assert_eq!(events[0]["kind"], "alert.firing");
    assert_eq!(events[1]["kind"], "alert.recovered");
    assert_eq!(events[0]["correlation"], "sole_open");
    assert_eq!(events[0]["attrs"]["value"], 87.0);

    // A new poller on the same store (a restart) does not re-emit old transitions.
    let again = CloudWatchPoller::new(
        moto.client(),
        poller_settings(""),
        app.store.clone(),
        app.ingest.clone(),
    );
    assert_eq!(again.poll_once().await.unwrap().alarm_events, 0);
}

#[tokio::test]
async fn a_metric_series_put_into_moto_comes_back_in_the_open_incident() {
    let moto = Moto::start().await;
    let aws = moto.client();
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    let data: Vec<MetricDatum> = [35.0, 62.0, 87.0, 54.0]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = now - chrono::Duration::minutes(4 - i as i64);
            MetricDatum::builder()
                .metric_name("CPUUtilization")
                .value(*v)
                .unit(StandardUnit::Percent)
                .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                    t.timestamp(),
                ))
                .build()
        })
        .collect();
    aws.put_metric_data()
        .namespace("AWS/RDS")
        .set_metric_data(Some(data))
        .send()
        .await
        .unwrap();
    let settings = poller_settings(
        "[[pollers.cloudwatch.metrics]]\nid = 'rds_cpu'\nlabel = 'RDS CPU'\nnamespace = 'AWS/RDS'\n\
         metric_name = 'CPUUtilization'\nstat = 'Maximum'\nperiod_secs = 60\nunit = '%'\n",
    );
    let poller = CloudWatchPoller::new(
        moto.client(),
        settings,
        app.store.clone(),
        app.ingest.clone(),
    );

    // No incident open: no GetMetricData call at all.
    let idle = poller.poll_once().await.unwrap();
    assert_eq!((idle.calls, idle.metric_events), (1, 0));

    app.post_pagerduty(&pd_v3("incident.triggered", "PMS", "E1", &at_offset(-10)))
        .await;
    let report = poller.poll_once().await.unwrap();
    assert_eq!(report.metric_events, 1);
    assert_eq!(
        report.calls, 2,
        "one DescribeAlarms and one GetMetricData page"
    );
    let events = app.events("PMS").await;
    let sample = events
        .iter()
        .find(|e| e["kind"] == "metric.sample")
        .expect("samples stored");
    assert_eq!(sample["title"], "RDS CPU: 4 samples, max 87%");
    let values: Vec<f64> = sample["attrs"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(values, [35.0, 62.0, 87.0, 54.0]);
    assert_eq!(
        poller.poll_once().await.unwrap().metric_events,
        0,
        "no new samples, no event"
    );
}

#[tokio::test]
async fn killing_moto_makes_the_poller_back_off_and_recover() {
    let moto = Moto::start().await;
    let port = moto.port;
    let app = spawn_app().await;
    let poller = CloudWatchPoller::new(
        moto.client(),
        poller_settings(""),
        app.store.clone(),
        app.ingest.clone(),
    );
    let health = poller.health();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(poller.run(stop.clone()));

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..300 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not reached in 15 s");
    }
    wait_for("first success", || {
        health.status(chrono::Utc::now())["last_success"].is_string()
    })
    .await;
    drop(moto);
    wait_for("a failure", || health.consecutive_failures() > 0).await;
    assert_eq!(health.status(chrono::Utc::now())["status"], "failing");

    let moto = Moto::start_on(port).await;
    put_alarm(&moto.client(), "back").await;
    set_state(&moto.client(), "back", StateValue::Alarm, 91.0).await;
    wait_for("recovery", || health.consecutive_failures() == 0).await;
    stop.cancel();
    task.await.unwrap();
    let loose = app.unattached().await;
    assert!(
        loose
            .iter()
            .any(|e| e["keys"]["cloudwatch_alarm"] == "back"),
        "{loose:#?}"
    );
}

#[tokio::test]
async fn the_binary_runs_the_poller_from_config_and_readyz_reports_it() {
    let moto = Moto::start().await;
    put_alarm(&moto.client(), "db-cpu").await;
    set_state(&moto.client(), "db-cpu", StateValue::Alarm, 95.0).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_incidentpost"))
        .env("INCIDENTPOST__SERVER__PORT", port.to_string())
        .env("INCIDENTPOST__STORAGE__PATH", dir.path())
        .env("INCIDENTPOST__POLLERS__CLOUDWATCH__ENABLED", "true")
        .env(
            "INCIDENTPOST__POLLERS__CLOUDWATCH__ENDPOINT_URL",
            moto.url(),
        )
        .env("INCIDENTPOST__POLLERS__CLOUDWATCH__INTERVAL_SECS", "1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut found = false;
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{base}/events/unattached")).await {
            if let Ok(v) = r.json::<Value>().await {
                if v["events"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["title"] == "RDS CPUUtilization 95% > 80% (ALARM)")
                }) {
                    found = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the alarm polled by the binary was stored");
    assert_eq!(
        ready["checks"]["pollers"]["cloudwatch"]["status"], "ok",
        "{ready}"
    );
}

#[tokio::test]
async fn eventbridge_alarm_events_are_accepted_with_the_token_and_deduplicated() {
    let app = spawn_app_with("[sources.cloudwatch]\ntoken = 'cw-token'", None).await;
    let body =
        fixture_bytes("cloudwatch/eventbridge.alarm-state-change.single-metric.aws-docs.json");
    for (token, status) in [("wrong", 401), ("cw-token", 202), ("cw-token", 200)] {
        let res = app
            .post_webhook(
                "cloudwatch",
                &body,
                &[("X-IncidentPost-Token", token.into())],
            )
            .await;
        assert_eq!(res.status(), status, "{token}");
    }
    let events = app.unattached().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["title"], "EC2 CPUUtilization 99.5% > 50% (ALARM)");
    assert_eq!(events[0]["occurred_at"], "2019-10-02T17:04:40.989Z");
    assert_eq!(events[0]["keys"]["cloudwatch_alarm"], "ServerCpuTooHigh");
    // Other EventBridge fixtures are accepted too.
    for file in [
        "eventbridge.alarm-state-change.metric-math.aws-docs.json",
        "eventbridge.alarm-state-change.anomaly-detection.aws-docs.json",
        "eventbridge.alarm-state-change.composite-with-suppressor.aws-docs.json",
        "eventbridge.alarm-configuration-change.update-metric-alarm.aws-docs.json",
    ] {
        let res = app
            .post_webhook(
                "cloudwatch",
                &fixture_bytes(&format!("cloudwatch/{file}")),
                &[("X-IncidentPost-Token", "cw-token".into())],
            )
            .await;
        assert_eq!(res.status(), 202, "{file}: {}", res.text().await.unwrap());
    }
}

/// An SNS envelope around an alarm message, signed with SignatureVersion 2 by `key`.
fn signed_sns(key: &std::path::Path, kind: &str, message: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut env = serde_json::json!({
        "Type": kind,
        "MessageId": format!("msg-{}", ulid::Ulid::new()),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:alarms",
        "Message": message,
        "Timestamp": "2024-03-14T14:30:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    });
    if kind == "Notification" {
        env["Subject"] = "ALARM: \"prod-rds-cpu\" in US East".into();
    }
    for (k, v) in extra {
        env[*k] = (*v).into();
    }
    let mut to_sign = String::new();
    let fields: &[&str] = if kind == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    for f in fields {
        to_sign.push_str(&format!("{f}\n{}\n", env[*f].as_str().unwrap()));
    }
    let msg = key.with_extension("msg");
    std::fs::write(&msg, to_sign).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success());
    use base64::Engine;
    env["Signature"] = base64::engine::general_purpose::STANDARD
        .encode(out.stdout)
        .into();
    serde_json::to_vec(&env).unwrap()
}

#[tokio::test]
async fn sns_notifications_are_verified_with_the_signing_certificate() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // A real RSA key and certificate, made by openssl for this test.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sns.amazonaws.com",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let aws = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/SimpleNotificationService-test.pem"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(std::fs::read(&cert).unwrap()))
        .mount(&aws)
        .await;
    Mock::given(method("GET"))
        .and(path("/"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<ConfirmSubscriptionResponse/>"))
        .expect(1)
        .mount(&aws)
        .await;
    let app = spawn_app_with(
        &format!(
            "[sources.cloudwatch]\nsns_base_url = '{}'\nsns_topic_arns = ['arn:aws:sns:us-east-1:123456789012:alarms']",
            aws.uri()
        ),
        None,
    )
    .await;
    let headers = |kind: &str| {
        vec![
            ("x-amz-sns-message-type", kind.to_owned()),
            ("Content-Type", "text/plain; charset=UTF-8".to_owned()),
        ]
    };

    let message = String::from_utf8(fixture_bytes(
        "cloudwatch/sns-message-body.alarm-single-metric.extracted.json",
    ))
    .unwrap();
    let body = signed_sns(&key, "Notification", &message, &[]);
    let res = app
        .post_webhook("cloudwatch", &body, &headers("Notification"))
        .await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    assert_eq!(
        app.post_webhook("cloudwatch", &body, &headers("Notification"))
            .await
            .status(),
        200,
        "SNS retry"
    );
    let events = app.unattached().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["title"], "EC2 NetworkOut 1234 > 0 (ALARM)");
    assert_eq!(events[0]["occurred_at"], "2015-06-03T17:43:27.123Z");

    // Tampered: the message changed after signing.
    let mut tampered: Value = serde_json::from_slice(&body).unwrap();
    tampered["Message"] = message.replace("1234.0", "1.0").into();
    let res = app
        .post_webhook(
            "cloudwatch",
            &serde_json::to_vec(&tampered).unwrap(),
            &headers("Notification"),
        )
        .await;
    assert_eq!(res.status(), 401);
    // A genuinely signed message from someone else's topic is refused.
    let mut foreign_topic: Value = serde_json::from_slice(&signed_sns(
        &key,
        "Notification",
        &message,
        &[("TopicArn", "arn:aws:sns:us-east-1:666666666666:attacker")],
    ))
    .unwrap();
    foreign_topic["MessageId"] = "other".into();
    let res = app
        .post_webhook(
            "cloudwatch",
            &serde_json::to_vec(&foreign_topic).unwrap(),
            &headers("Notification"),
        )
        .await;
    assert_eq!(res.status(), 401);
    // A certificate URL outside sns.<region>.amazonaws.com is refused before any fetch.
    let mut foreign: Value = serde_json::from_slice(&body).unwrap();
    foreign["SigningCertURL"] = "https://evil.example.com/cert.pem".into();
    let res = app
        .post_webhook(
            "cloudwatch",
            &serde_json::to_vec(&foreign).unwrap(),
            &headers("Notification"),
        )
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(app.unattached().await.len(), 1);

    // Subscription confirmation: verified, then SubscribeURL is fetched.
    let confirm = signed_sns(
        &key,
        "SubscriptionConfirmation",
        "You have chosen to subscribe to the topic",
        &[
            (
                "SubscribeURL",
                "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=abc",
            ),
            ("Token", "abc"),
        ],
    );
    let res = app
        .post_webhook("cloudwatch", &confirm, &headers("SubscriptionConfirmation"))
        .await;
    assert_eq!(res.status(), 200);
    for _ in 0..100 {
        if !aws.received_requests().await.unwrap().iter().any(|r| {
            r.url
                .query()
                .is_some_and(|q| q.contains("ConfirmSubscription"))
        }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    aws.verify().await;
}
