//! Datadog: token, default and recommended templates, transitions, measures, dedupe.

use serde_json::Value;

use crate::helpers::*;

/// Datadog's default template, rendered with the values of a recorded notification.
fn default_template_rendered(from: &str) -> Vec<u8> {
    let rendered = fixture_json(&format!("datadog/{from}"));
    let mut t = fixture_json("datadog/webhook-default-payload-template.datadog.json");
    for key in ["body", "last_updated", "event_type", "title", "date", "id"] {
        t[key] = rendered[key].clone();
    }
    t["org"] = rendered["org"].clone();
    serde_json::to_vec(&t).unwrap()
}

#[tokio::test]
async fn recorded_notifications_become_alert_events() {
    let cases = [
        (
            "webhook-rendered.log_alert.triggered.keep.json",
            "alert.firing",
            "Alert: Error monitor",
        ),
        (
            "webhook-rendered.log_alert.warn.keep.json",
            "alert.warning",
            "Warning: Unauthorized access to API keep-api",
        ),
        (
            "webhook-rendered.log_alert.recovered.keep.json",
            "alert.recovered",
            "Recovered: Error monitor",
        ),
    ];
    for (file, kind, title) in cases {
        let app = spawn_app().await;
        let res = app
            .post_datadog(&fixture_bytes(&format!("datadog/{file}")))
            .await;
        assert_eq!(res.status(), 202, "{file}: {}", res.text().await.unwrap());
        let events = app.unattached().await;
        assert_eq!(events.len(), 1, "{file}");
        let e = &events[0];
        assert_eq!(e["kind"], kind, "{file}");
        assert_eq!(e["title"], title, "{file}");
        assert!(
            e["service"].as_str().unwrap().starts_with("keep-api"),
            "{file}"
        );
        let monitor = fixture_json(&format!("datadog/{file}"))["monitor_id"].clone();
        assert_eq!(e["keys"]["datadog_monitor"], monitor, "{file}");
        // `date` is epoch milliseconds as a string.
        assert!(
            e["occurred_at"]
                .as_str()
                .unwrap()
                .starts_with("2024-12-11T15:"),
            "{file}: {}",
            e["occurred_at"]
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn the_default_template_is_accepted_and_reads_the_transition_from_the_title() {
    let app = spawn_app().await;
    let res = app
        .post_datadog(&default_template_rendered(
            "webhook-rendered.log_alert.recovered.keep.json",
        ))
        .await;
    assert_eq!(res.status(), 202);
    let e = &app.unattached().await[0];
    assert_eq!(e["kind"], "alert.recovered");
}

#[tokio::test]
async fn the_recommended_template_carries_cycle_key_tags_and_the_measure() {
    let app = spawn_app().await;
    let body = datadog_alert(
        "dd-1",
        "Triggered",
        "[Triggered on {service:user-sync}] PostgreSQL connection pool at 98% capacity",
        "cycle-1",
        "service:user-sync,env:prod",
        chrono::Utc::now(),
    );
    let res = app.post_datadog(&body).await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let e = &app.unattached().await[0];
    assert_eq!(
        e["title"],
        "Alert: PostgreSQL connection pool at 98% capacity"
    );
    assert_eq!(e["severity"], "critical");
    assert_eq!(e["service"], "user-sync");
    assert_eq!(e["keys"]["datadog_cycle"], "cycle-1");
    assert_eq!(e["attrs"]["value"], 98.0);
    assert_eq!(e["attrs"]["unit"], "%");
    assert_eq!(e["attrs"]["metric"], "postgresql.percent_usage_connections");
    // Same notification and transition again: stored once.
    assert_eq!(app.post_datadog(&body).await.status(), 200);
    assert_eq!(app.unattached().await.len(), 1);
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401() {
    let app = spawn_app().await;
    let body = fixture_bytes("datadog/webhook-rendered.log_alert.triggered.keep.json");
    let res = app
        .post_webhook("datadog", &body, &[("X-IncidentPost-Token", "nope".into())])
        .await;
    assert_eq!(res.status(), 401);
    let res = app.post_webhook("datadog", &body, &[]).await;
    assert_eq!(res.status(), 401);
    let json: Value = res.json().await.unwrap();
    assert_eq!(json["error"]["code"], "missing_signature");
    assert!(app.unattached().await.is_empty());
}
