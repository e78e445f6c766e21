//! Correlation: explicit keys and links, the service map, the sole open incident,
//! look-back on open, the grace window after resolve.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::helpers::*;

const SERVICE_MAP: &str = r#"
[[services]]
name = "api"
pagerduty = ["API Service"]
datadog = ["service:api"]
slack = ["C-API"]

[[services]]
name = "user-sync"
pagerduty = ["User Sync"]
datadog = ["service:user-sync"]
github = ["Codertocat/Hello-World"]
slack = ["C-SYNC"]
"#;

fn by_title(events: &[Value]) -> BTreeMap<String, String> {
    events
        .iter()
        .map(|e| {
            (
                e["title"].as_str().unwrap().to_owned(),
                e["correlation"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn slack_now(event_id: &str, channel: &str, text: &str) -> Vec<u8> {
    let now = chrono::Utc::now();
    let ts = format!("{}.{:06}", now.timestamp(), now.timestamp_subsec_micros());
    slack_message(event_id, channel, &ts, text)
}

#[tokio::test]
async fn two_incidents_on_two_services_each_get_their_own_events() {
    let app = spawn_app_with(SERVICE_MAP, None).await;
    assert_eq!(
        app.post_pagerduty(&pd_v3_on(
            "API Service",
            "incident.triggered",
            "PAPI",
            "E1",
            &at_offset(-5)
        ))
        .await
        .status(),
        202
    );
    assert_eq!(
        app.post_pagerduty(&pd_v3_on(
            "User Sync",
            "incident.triggered",
            "PSYNC",
            "E2",
            &at_offset(-4)
        ))
        .await
        .status(),
        202
    );
    let dd = datadog_alert(
        "d1",
        "Triggered",
        "[Triggered on {service:user-sync}] Pool at 98% capacity",
        "c1",
        "service:user-sync",
        chrono::Utc::now(),
    );
    assert_eq!(app.post_datadog(&dd).await.status(), 202);
    assert_eq!(
        app.post_slack(&slack_now("Ev1", "C-API", "api latency is back"))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.post_slack(&slack_now("Ev2", "C-RANDOM", "lunch?"))
            .await
            .status(),
        202
    );

    let sync = by_title(&app.events("PSYNC").await);
    assert_eq!(
        sync.get("Alert: Pool at 98% capacity").map(String::as_str),
        Some("service"),
        "{sync:?}"
    );
    let api = by_title(&app.events("PAPI").await);
    assert_eq!(
        api.get("@sarah: 'api latency is back'").map(String::as_str),
        Some("service"),
        "{api:?}"
    );
    // Two incidents open and no service: it stays unattached.
    let loose = by_title(&app.unattached().await);
    assert!(loose.contains_key("@sarah: 'lunch?'"), "{loose:?}");
    assert_eq!(
        app.get_json("/incidents/PSYNC").await["service"],
        "user-sync"
    );
}

#[tokio::test]
async fn with_one_incident_open_events_join_it_and_links_follow_later_events() {
    let app = spawn_app().await;
    app.post_pagerduty(&pd_v3("incident.triggered", "PONE", "E1", &at_offset(-10)))
        .await;
    let fire = datadog_alert(
        "d1",
        "Triggered",
        "Error rate: 23% of requests returning 503",
        "cycle-7",
        "service:api",
        chrono::Utc::now(),
    );
    assert_eq!(app.post_datadog(&fire).await.status(), 202);
    // A second incident opens: the sole-open rule no longer applies, but the recovery
    // carries the same alert cycle key and follows its trigger.
    app.post_pagerduty(&pd_v3("incident.triggered", "PTWO", "E2", &at_offset(-1)))
        .await;
    let recover = datadog_alert(
        "d2",
        "Recovered",
        "Error rate: 23% of requests returning 503",
        "cycle-7",
        "service:api",
        chrono::Utc::now(),
    );
    assert_eq!(app.post_datadog(&recover).await.status(), 202);
    let one = by_title(&app.events("PONE").await);
    assert_eq!(
        one["Alert: Error rate: 23% of requests returning 503"],
        "sole_open"
    );
    assert_eq!(
        one["Recovered: Error rate: 23% of requests returning 503"],
        "explicit"
    );
    assert_eq!(app.events("PTWO").await.len(), 1);
}

#[tokio::test]
async fn an_opening_incident_pulls_in_its_look_back_window() {
    let app = spawn_app().await;
    // A merge the day before, an alert five minutes before, a chat line two hours before.
    let mut pr = fixture_json("github/pull_request.closed.not-merged.octokit.json");
    pr["pull_request"]["merged"] = true.into();
    pr["pull_request"]["merged_at"] = at_offset(-24 * 60).into();
    assert_eq!(
        app.post_github("pull_request", "g1", &serde_json::to_vec(&pr).unwrap())
            .await
            .status(),
        202
    );
    let dd = datadog_alert(
        "d1",
        "Triggered",
        "PostgreSQL connection pool at 98% capacity",
        "c1",
        "service:user-sync",
        chrono::Utc::now() - chrono::Duration::minutes(5),
    );
    assert_eq!(app.post_datadog(&dd).await.status(), 202);
    let old = chrono::Utc::now() - chrono::Duration::hours(2);
    let body = slack_message(
        "Ev-old",
        "C1",
        &format!("{}.000001", old.timestamp()),
        "deploying later today",
    );
    assert_eq!(app.post_slack(&body).await.status(), 202);
    assert_eq!(app.unattached().await.len(), 3);

    app.post_pagerduty(&pd_v3("incident.triggered", "PLB", "E1", &at_offset(0)))
        .await;
    let events = app.events("PLB").await;
    let rules = by_title(&events);
    assert_eq!(
        rules["Alert: PostgreSQL connection pool at 98% capacity"],
        "look_back"
    );
    let merge = events
        .iter()
        .find(|e| e["kind"] == "change.merged")
        .expect("the merge is pulled in");
    assert_eq!(merge["correlation"], "look_back");
    assert_eq!(events[0]["kind"], "change.merged", "ordered by occurred_at");
    let left = app.unattached().await;
    assert_eq!(
        left.len(),
        1,
        "the chat line outside the 30 min window stays: {left:#?}"
    );
}

#[tokio::test]
async fn late_events_attach_within_the_grace_window_only() {
    let app = spawn_app().await;
    app.post_pagerduty(&pd_v3("incident.triggered", "PG", "E1", &at_offset(-20)))
        .await;
    app.post_pagerduty(&pd_v3("incident.resolved", "PG", "E2", &at_offset(-1)))
        .await;
    assert_eq!(
        app.post_slack(&slack_now("Ev1", "C1", "all clear"))
            .await
            .status(),
        202
    );
    assert_eq!(
        by_title(&app.events("PG").await)["@sarah: 'all clear'"],
        "grace"
    );

    let app = spawn_app_with("[correlation]\ngrace_mins = 0", None).await;
    app.post_pagerduty(&pd_v3("incident.triggered", "PG", "E1", &at_offset(-20)))
        .await;
    app.post_pagerduty(&pd_v3("incident.resolved", "PG", "E2", &at_offset(-1)))
        .await;
    app.post_slack(&slack_now("Ev1", "C1", "all clear")).await;
    assert_eq!(app.events("PG").await.len(), 2);
    assert_eq!(app.unattached().await.len(), 1);
}

#[tokio::test]
async fn a_message_naming_the_incident_url_is_explicit_and_the_switch_turns_sole_open_off() {
    let app = spawn_app_with("[correlation]\nsole_open_incident = false", None).await;
    app.post_pagerduty(&pd_v3("incident.triggered", "PX1", "E1", &at_offset(-5)))
        .await;
    app.post_slack(&slack_now("Ev1", "C1", "unrelated")).await;
    app.post_slack(&slack_now(
        "Ev2",
        "C1",
        "tracking in <https://acme.pagerduty.com/incidents/PX1|PX1>",
    ))
    .await;
    let rules = by_title(&app.events("PX1").await);
    assert_eq!(rules["@sarah: 'tracking in PX1'"], "explicit");
    assert_eq!(app.unattached().await.len(), 1);
}
