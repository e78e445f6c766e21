//! trigger → acknowledge → resolve → reopen → resolve through the HTTP API.

use crate::helpers::*;

#[tokio::test]
async fn trigger_acknowledge_resolve_gives_a_resolved_incident_with_the_right_times() {
    let app = spawn_app().await;
    for (ty, id, at) in [
        ("incident.triggered", "E1", "2024-03-14T14:23:00.000Z"),
        ("incident.acknowledged", "E2", "2024-03-14T14:25:00.000Z"),
        ("incident.resolved", "E3", "2024-03-14T14:52:00.000Z"),
    ] {
        let res = app.post_pagerduty(&pd_v3(ty, "PT4KHLK", id, at)).await;
        assert_eq!(res.status(), 202, "{ty}");
    }
    let inc = app.get_json("/incidents/PT4KHLK").await;
    assert_eq!(inc["status"], "resolved");
    assert_eq!(inc["title"], "API response time > 5000ms");
    assert_eq!(inc["triggered_at"], "2024-03-14T14:23:00Z");
    assert_eq!(inc["acknowledged_at"], "2024-03-14T14:25:00Z");
    assert_eq!(inc["resolved_at"], "2024-03-14T14:52:00Z");
    assert_eq!(inc["duration_secs"], 29 * 60);
    assert_eq!(inc["event_count"], 3);

    let titles: Vec<String> = app
        .events("PT4KHLK")
        .await
        .iter()
        .map(|e| e["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        titles,
        [
            "CRITICAL: API response time > 5000ms",
            "@PIG 208 acknowledged",
            "Incident resolved"
        ]
    );
}

#[tokio::test]
async fn reopen_then_resolve_continues_the_same_incident() {
    let app = spawn_app().await;
    for (ty, id, at) in [
        ("incident.triggered", "E1", "2024-03-14T14:23:00Z"),
        ("incident.resolved", "E2", "2024-03-14T14:52:00Z"),
        ("incident.reopened", "E3", "2024-03-14T15:10:00Z"),
    ] {
        assert_eq!(
            app.post_pagerduty(&pd_v3(ty, "PT4KHLK", id, at))
                .await
                .status(),
            202
        );
    }
    let inc = app.get_json("/incidents/PT4KHLK").await;
    assert_eq!(inc["status"], "triggered");
    assert_eq!(inc["resolved_at"], serde_json::Value::Null);
    assert_eq!(inc["reopen_count"], 1);
    let open = app.get_json("/incidents?status=open").await;
    assert_eq!(open["total"], 1);

    let res = app
        .post_pagerduty(&pd_v3(
            "incident.resolved",
            "PT4KHLK",
            "E4",
            "2024-03-14T15:30:00Z",
        ))
        .await;
    assert_eq!(res.status(), 202);
    let inc = app.get_json("/incidents/PT4KHLK").await;
    assert_eq!(inc["status"], "resolved");
    assert_eq!(inc["resolved_at"], "2024-03-14T15:30:00Z");
    assert_eq!(inc["triggered_at"], "2024-03-14T14:23:00Z");
    assert_eq!(inc["event_count"], 4);
    assert_eq!(app.get_json("/incidents?status=open").await["total"], 0);
}

#[tokio::test]
async fn a_trigger_for_a_resolved_incident_reopens_it() {
    let app = spawn_app().await;
    for (ty, id, at) in [
        ("incident.triggered", "E1", "2024-03-14T14:23:00Z"),
        ("incident.resolved", "E2", "2024-03-14T14:52:00Z"),
        ("incident.triggered", "E3", "2024-03-14T16:00:00Z"),
    ] {
        assert_eq!(
            app.post_pagerduty(&pd_v3(ty, "PT4KHLK", id, at))
                .await
                .status(),
            202
        );
    }
    let inc = app.get_json("/incidents/PT4KHLK").await;
    assert_eq!(inc["status"], "triggered");
    assert_eq!(inc["reopen_count"], 1);
}

#[tokio::test]
async fn an_event_for_an_unseen_incident_opens_it_rather_than_losing_it() {
    let app = spawn_app().await;
    let res = app
        .post_pagerduty(&pd_v3(
            "incident.acknowledged",
            "PLATE01",
            "E1",
            "2024-03-14T14:25:00Z",
        ))
        .await;
    assert_eq!(res.status(), 202);
    let inc = app.get_json("/incidents/PLATE01").await;
    assert_eq!(inc["status"], "acknowledged");
    assert_eq!(inc["acknowledged_at"], "2024-03-14T14:25:00Z");
    // The trigger arriving late moves the start back to the real trigger time.
    app.post_pagerduty(&pd_v3(
        "incident.triggered",
        "PLATE01",
        "E0",
        "2024-03-14T14:23:00Z",
    ))
    .await;
    let inc = app.get_json("/incidents/PLATE01").await;
    assert_eq!(inc["triggered_at"], "2024-03-14T14:23:00Z");
    assert_eq!(inc["status"], "acknowledged");
}

#[tokio::test]
async fn delegated_and_reopened_types_are_understood() {
    // Derived from the recorded trigger capture with only the event type changed.
    let app = spawn_app().await;
    app.post_pagerduty(&pd_v3(
        "incident.triggered",
        "PX",
        "E1",
        "2024-03-14T14:23:00Z",
    ))
    .await;
    app.post_pagerduty(&pd_v3(
        "incident.delegated",
        "PX",
        "E2",
        "2024-03-14T14:24:00Z",
    ))
    .await;
    let kinds: Vec<String> = app
        .events("PX")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["incident.triggered", "incident.reassigned"]);
}
