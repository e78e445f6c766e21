//! /healthz, /readyz, /metrics.

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_answer_ok() {
    let app = spawn_app().await;
    let h = app.get_json("/healthz").await;
    assert_eq!(h["status"], "ok");
    let r = app.get_json("/readyz").await;
    assert_eq!(r["status"], "ready");
    assert_eq!(r["checks"]["storage"], "ok");
    assert_eq!(r["checks"]["committer"], "ok");
}

#[tokio::test]
async fn metrics_count_webhooks_by_source_and_reason_and_latency_by_route_pattern() {
    let app = spawn_app().await;
    let body = pd_v3("incident.triggered", "PMET", "E1", "2024-03-14T14:23:00Z");
    app.post_pagerduty(&body).await;
    app.post_pagerduty(&body).await; // duplicate
    app.post_pagerduty_with(&body, Some("v1=00"), None).await; // rejected
    app.get("/incidents/PMET").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for needle in [
        "incidentpost_webhooks_received_total{source=\"pagerduty\"}",
        "incidentpost_webhooks_rejected_total{source=\"pagerduty\",reason=\"invalid_signature\"}",
        "incidentpost_events_stored_total{source=\"pagerduty\"}",
        "incidentpost_webhook_duplicates_total{source=\"pagerduty\"}",
        "incidentpost_open_incidents",
        "route=\"/incidents/{id}\"",
        "route=\"/webhooks/{source}\"",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    assert!(!text.contains("PMET"), "no incident id may be a label");
}
