//! Several processes on one PostgreSQL database (run by the PostgreSQL pass of
//! `scripts/test`; on sled they are skipped: a sled directory has one process).

use std::sync::Arc;

use crate::helpers::*;

fn skipped() -> bool {
    if on_postgres() {
        return false;
    }
    eprintln!("skipped: runs in the PostgreSQL pass (INCIDENTPOST_TEST_BACKEND=postgres)");
    true
}

#[tokio::test]
async fn the_same_delivery_sent_to_two_replicas_at_once_is_stored_once_never_503() {
    if skipped() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let a = spawn_app_with("", Some(dir.clone())).await;
    let b = spawn_app_with("", Some(dir.clone())).await;
    for i in 0..100 {
        let id = format!("PREP{i:03}");
        let body = pd_v3("incident.triggered", &id, &format!("E{i}"), &at_offset(-5));
        let (ra, rb) = tokio::join!(a.post_pagerduty(&body), b.post_pagerduty(&body));
        let mut got = [ra.status().as_u16(), rb.status().as_u16()];
        got.sort();
        // One stored it, the other found it stored: never a 503 for losing the race.
        assert_eq!(got, [200, 202], "delivery {i}");
    }
    let all = a.incidents().await;
    assert_eq!(all.len(), 100);
    for i in [0, 42, 99] {
        let events = b.events(&format!("PREP{i:03}")).await;
        assert_eq!(events.len(), 1, "PREP{i:03}: {events:?}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn one_incident_updated_through_two_replicas_keeps_every_event_once_in_order() {
    if skipped() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let a = spawn_app_with("", Some(dir.clone())).await;
    let b = spawn_app_with("", Some(dir.clone())).await;
    assert_eq!(
        a.post_pagerduty(&pd_v3("incident.triggered", "PBOTH", "T0", &at_offset(-30)))
            .await
            .status(),
        202
    );
    // Notes on the same incident, sent to both replicas at once: each update locks the
    // incident row, so sequence numbers stay dense and nothing is lost.
    let mut sent = Vec::new();
    for i in 0..20 {
        let mut note: serde_json::Value = serde_json::from_slice(&pd_v3(
            "incident.annotated",
            "PBOTH",
            &format!("N{i}"),
            &at_offset(-29 + i),
        ))
        .unwrap();
        note["event"]["data"] = serde_json::json!({
            "type": "incident_note",
            "content": format!("note {i}"),
            "incident": {"id": "PBOTH", "type": "incident_reference"}
        });
        sent.push(serde_json::to_vec(&note).unwrap());
    }
    let (ra, rb) = tokio::join!(
        async {
            let mut s = Vec::new();
            for n in sent.iter().step_by(2) {
                s.push(a.post_pagerduty(n).await.status().as_u16());
            }
            s
        },
        async {
            let mut s = Vec::new();
            for n in sent.iter().skip(1).step_by(2) {
                s.push(b.post_pagerduty(n).await.status().as_u16());
            }
            s
        }
    );
    assert!(ra.iter().chain(&rb).all(|&s| s == 202), "{ra:?} {rb:?}");
    let incident = a.get_json("/incidents/PBOTH").await;
    assert_eq!(incident["event_count"], 21, "{incident}");
    let events = b.events("PBOTH").await;
    assert_eq!(events.len(), 21);
    let notes: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "incident.note")
        .map(|e| e["attrs"]["text"].as_str().unwrap_or(""))
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("note {i}")).collect();
    assert_eq!(notes, expected, "every note once, in time order");
    a.stop().await;
    b.stop().await;
}
