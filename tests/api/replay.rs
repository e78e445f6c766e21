//! A whole incident replayed through the HTTP endpoints, as the seed postmortem tells it:
//! a merge the day before, a deploy, an early alert, the page, acknowledgement, more
//! alerts, chat with annotations, a CloudWatch alarm, a rollback, recovery, resolve.

use chrono::{Duration, Utc};
use serde_json::Value;

use crate::helpers::*;

fn rfc(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A Slack message by `user` (a Slack user id, as Slack sends it).
fn slack_at(event_id: &str, user: &str, t: chrono::DateTime<Utc>, text: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&slack_message(
        event_id,
        "C-INC",
        &format!("{}.{:06}", t.timestamp(), t.timestamp_subsec_micros()),
        text,
    ))
    .unwrap();
    v["event"]["user"] = user.into();
    serde_json::to_vec(&v).unwrap()
}

/// `[[people]]` for the seed's two responders.
pub const SEED_PEOPLE: &str =
    "[[people]]\nname = 'Sarah Chen'\nslack = ['U0SARAH']\npagerduty = ['PSARAH1']\n\
     [[people]]\nname = 'Mike Ross'\nslack = ['U0MIKE']\ngithub = ['mike']\n";

fn eventbridge_alarm(id: &str, t: chrono::DateTime<Utc>, state: &str, value: f64) -> Vec<u8> {
    let mut v =
        fixture_json("cloudwatch/eventbridge.alarm-state-change.single-metric.aws-docs.json");
    v["id"] = id.into();
    v["time"] = rfc(t).into();
    v["detail"]["alarmName"] = "prod-rds-cpu".into();
    v["detail"]["state"]["value"] = state.into();
    v["detail"]["state"]["timestamp"] = t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string().into();
    v["detail"]["state"]["reasonData"] =
        format!("{{\"recentDatapoints\":[{value}],\"threshold\":80.0}}").into();
    v["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"]["namespace"] =
        "AWS/RDS".into();
    serde_json::to_vec(&v).unwrap()
}

fn deploy(version: &str, t: chrono::DateTime<Utc>, by: &str) -> Vec<u8> {
    let mut v = fixture_json("github/deployment_status.created.octokit.json");
    v["repository"]["full_name"] = "acme/user-sync".into();
    v["deployment_status"]["creator"]["login"] = by.into();
    v["deployment"]["creator"]["login"] = by.into();
    v["deployment"]["ref"] = version.into();
    v["deployment_status"]["created_at"] = rfc(t).into();
    serde_json::to_vec(&v).unwrap()
}

/// Sends the whole seed-like incident `PSEED01` through the webhooks, retries included.
/// Its people are named as each source names them: Slack user ids `U0SARAH` and `U0MIKE`,
/// the PagerDuty agent "Sarah Chen" (`PSARAH1`), the GitHub login `mike`.
pub async fn post_seed_incident(app: &TestApp) {
    let t0 = Utc::now() - Duration::minutes(40);
    let m = |mins: i64| t0 + Duration::minutes(mins);

    // The culprit: merged the day before, deployed two hours before the page.
    let mut pr = fixture_json("github/pull_request.closed.not-merged.octokit.json");
    pr["repository"]["full_name"] = "acme/user-sync".into();
    pr["pull_request"]["number"] = 2847.into();
    pr["pull_request"]["title"] = "Batch user sync writes".into();
    pr["pull_request"]["merged"] = true.into();
    pr["pull_request"]["merged_at"] = rfc(t0 - Duration::days(1)).into();
    let pr = serde_json::to_vec(&pr).unwrap();
    let deploy_new = deploy("v2.4.0", t0 - Duration::hours(2), "Codertocat");
    let early_alert = datadog_alert(
        "dd-1",
        "Triggered",
        "PostgreSQL connection pool at 98% capacity",
        "cyc-pool",
        "service:user-sync",
        m(-2),
    );
    // The PagerDuty title already carries its severity: it must not be doubled.
    let mut trigger: Value =
        serde_json::from_slice(&pd_v3("incident.triggered", "PSEED01", "pd-1", &rfc(m(0))))
            .unwrap();
    trigger["event"]["data"]["title"] = "CRITICAL: API response time > 5000ms".into();
    let trigger = serde_json::to_vec(&trigger).unwrap();
    let mut ack: Value = serde_json::from_slice(&pd_v3(
        "incident.acknowledged",
        "PSEED01",
        "pd-2",
        &rfc(m(2)),
    ))
    .unwrap();
    ack["event"]["agent"]["summary"] = "Sarah Chen".into();
    ack["event"]["agent"]["id"] = "PSARAH1".into();
    let ack = serde_json::to_vec(&ack).unwrap();
    let errors = datadog_alert(
        "dd-2",
        "Triggered",
        "Error rate: 23% of requests returning 503",
        "cyc-err",
        "service:api",
        m(3),
    );
    let chat = slack_at(
        "Ev-1",
        "U0SARAH",
        m(5),
        "Looks like connection leak from the new user-sync service",
    );
    let alarm = eventbridge_alarm("eb-1", m(7), "ALARM", 87.0);
    let cause = slack_at(
        "Ev-2",
        "U0SARAH",
        m(10),
        "root cause: PR #2847 missing connection.close() in error handler",
    );
    let rolling = slack_at(
        "Ev-4",
        "U0MIKE",
        m(11),
        "mitigation: Rolling back user-sync to v2.3.1",
    );
    let rollback = deploy("v2.3.1", m(12), "mike");
    let action = slack_at(
        "Ev-3",
        "U0MIKE",
        m(14),
        "action HIGH: alert on connection pool saturation",
    );
    let impact = slack_at(
        "Ev-5",
        "U0SARAH",
        m(16),
        "impact: 12,400 users affected, 23% of requests failed at peak",
    );
    let recovered = datadog_alert(
        "dd-3",
        "Recovered",
        "PostgreSQL connection pool at 98% capacity",
        "cyc-pool",
        "service:user-sync",
        m(20),
    );
    let mut resolve: Value =
        serde_json::from_slice(&pd_v3("incident.resolved", "PSEED01", "pd-3", &rfc(m(29))))
            .unwrap();
    resolve["event"]["agent"]["summary"] = "Sarah Chen".into();
    resolve["event"]["agent"]["id"] = "PSARAH1".into();
    let resolve = serde_json::to_vec(&resolve).unwrap();

    assert_eq!(
        app.post_github("pull_request", "gh-1", &pr).await.status(),
        202
    );
    assert_eq!(
        app.post_github("deployment_status", "gh-2", &deploy_new)
            .await
            .status(),
        202
    );
    assert_eq!(app.post_datadog(&early_alert).await.status(), 202);
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    assert_eq!(app.post_pagerduty(&ack).await.status(), 202);
    assert_eq!(app.post_datadog(&errors).await.status(), 202);
    assert_eq!(app.post_slack(&chat).await.status(), 202);
    let eb = [("X-IncidentPost-Token", String::new())];
    assert_eq!(
        app.post_webhook("cloudwatch", &alarm, &eb).await.status(),
        202
    );
    assert_eq!(app.post_slack(&cause).await.status(), 202);
    assert_eq!(app.post_slack(&rolling).await.status(), 202);
    assert_eq!(
        app.post_github("deployment_status", "gh-3", &rollback)
            .await
            .status(),
        202
    );
    assert_eq!(app.post_slack(&action).await.status(), 202);
    assert_eq!(app.post_slack(&impact).await.status(), 202);
    assert_eq!(app.post_datadog(&recovered).await.status(), 202);
    assert_eq!(app.post_pagerduty(&resolve).await.status(), 202);
    // Providers retry: every one of these is a duplicate now.
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 200);
    assert_eq!(app.post_slack(&chat).await.status(), 200);
    assert_eq!(app.post_datadog(&errors).await.status(), 200);
    assert_eq!(
        app.post_github("deployment_status", "gh-3", &rollback)
            .await
            .status(),
        200
    );

    let events = app.events("PSEED01").await;
    let lines: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_owned(),
                e["title"].as_str().unwrap().to_owned(),
                e["correlation"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, &str)> = vec![
        (
            "github",
            "PR #2847 merged: Batch user sync writes (@Codertocat)",
            "look_back",
        ),
        (
            "github",
            "Deployed user-sync v2.4.0 to production",
            "look_back",
        ),
        (
            "datadog",
            "Alert: PostgreSQL connection pool at 98% capacity",
            "look_back",
        ),
        (
            "pagerduty",
            "CRITICAL: API response time > 5000ms",
            "explicit",
        ),
        ("pagerduty", "@Sarah Chen acknowledged", "explicit"),
        (
            "datadog",
            "Alert: Error rate: 23% of requests returning 503",
            "sole_open",
        ),
        (
            "slack",
            "@U0SARAH: 'Looks like connection leak from the new user-sync service'",
            "sole_open",
        ),
        (
            "cloudwatch",
            "RDS CPUUtilization 87% > 80% (ALARM)",
            "sole_open",
        ),
        (
            "slack",
            "@U0SARAH: 'root cause: PR #2847 missing connection.close() in error handler'",
            "sole_open",
        ),
        (
            "slack",
            "Root cause: PR #2847 missing connection.close() in error handler",
            "sole_open",
        ),
        (
            "slack",
            "@U0MIKE: 'mitigation: Rolling back user-sync to v2.3.1'",
            "sole_open",
        ),
        (
            "slack",
            "Mitigation: Rolling back user-sync to v2.3.1",
            "sole_open",
        ),
        ("github", "Rolled back user-sync to v2.3.1", "sole_open"),
        (
            "slack",
            "@U0MIKE: 'action HIGH: alert on connection pool saturation'",
            "sole_open",
        ),
        (
            "slack",
            "Action (HIGH): alert on connection pool saturation",
            "sole_open",
        ),
        (
            "slack",
            "@U0SARAH: 'impact: 12,400 users affected, 23% of requests failed at peak'",
            "sole_open",
        ),
        (
            "slack",
            "Impact: 12,400 users affected, 23% of requests failed at peak",
            "sole_open",
        ),
        (
            "datadog",
            "Recovered: PostgreSQL connection pool at 98% capacity",
            "explicit",
        ),
        ("pagerduty", "Incident resolved", "explicit"),
    ];
    let got: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(got, expected);

    let times: Vec<&str> = events
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "time order");
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "once each");

    let incident = app.get_json("/incidents/PSEED01").await;
    assert_eq!(incident["status"], "resolved");
    assert_eq!(incident["duration_secs"], 29 * 60);
    assert_eq!(incident["event_count"], expected.len());
    assert!(app.unattached().await.is_empty());
    let rollback_event: &Value = events
        .iter()
        .find(|e| e["kind"] == "change.rolled_back")
        .unwrap();
    assert_eq!(rollback_event["attrs"]["previous_version"], "v2.4.0");
}
