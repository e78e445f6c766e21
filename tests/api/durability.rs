//! Nothing acknowledged is lost: restarts, SIGKILL right after a 2xx, store failures.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use incidentpost::startup::open_store;

use crate::helpers::*;

#[tokio::test]
async fn a_restart_on_the_same_data_dir_keeps_incidents_and_events() {
    let app = spawn_app().await;
    for (ty, id, at) in [
        ("incident.triggered", "E1", "2024-03-14T14:23:00Z"),
        ("incident.acknowledged", "E2", "2024-03-14T14:25:00Z"),
    ] {
        assert_eq!(
            app.post_pagerduty(&pd_v3(ty, "PT4KHLK", id, at))
                .await
                .status(),
            202
        );
    }
    let before = app.events("PT4KHLK").await;
    let dir = app.stop().await;

    let app = spawn_app_with("", Some(dir)).await;
    let inc = app.get_json("/incidents/PT4KHLK").await;
    assert_eq!(inc["status"], "acknowledged");
    assert_eq!(app.events("PT4KHLK").await, before);
    // Delivery keys survive too: a retry after the restart is still a duplicate.
    let res = app
        .post_pagerduty(&pd_v3(
            "incident.triggered",
            "PT4KHLK",
            "E1",
            "2024-03-14T14:23:00Z",
        ))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.events("PT4KHLK").await.len(), 2);
}

async fn post(client: &reqwest::Client, server: &Server, body: Vec<u8>) -> reqwest::Response {
    client
        .post(format!("{}/webhooks/pagerduty", server.address))
        .header("X-PagerDuty-Signature", pd_sign(PD_SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_event_acknowledged_with_2xx_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start_binary(dir.path());
    wait_ready(&client, &server).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("K{i}");
        let res = post(
            &client,
            &server,
            pd_v3(
                "incident.triggered",
                &id,
                &format!("E{i}"),
                "2024-03-14T14:23:00Z",
            ),
        )
        .await;
        assert_eq!(res.status(), 202);
        acked.push(id);
    }
    // SIGKILL immediately after the last 2xx: no graceful shutdown, no final flush.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let store = open_store(&test_settings(dir.path(), "")).unwrap();
    for id in &acked {
        let incident = store
            .incident(&incidentpost::domain::IncidentId::parse(id).unwrap())
            .unwrap();
        assert!(
            incident.is_some(),
            "acknowledged incident {id} lost after SIGKILL"
        );
    }
    assert_eq!(store.incident_count().unwrap() as usize, acked.len());
}

#[tokio::test]
async fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start_binary(dir.path());
    wait_ready(&client, &server).await;
    let res = post(
        &client,
        &server,
        pd_v3("incident.triggered", "PTERM", "E1", "2024-03-14T14:23:00Z"),
    )
    .await;
    assert_eq!(res.status(), 202);
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    for _ in 0..200 {
        if let Some(s) = server.child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.expect("server exits within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let mut out = String::new();
    use std::io::Read;
    server
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("shutdown complete"), "log: {out}");
    let store = open_store(&test_settings(dir.path(), "")).unwrap();
    assert_eq!(store.incident_count().unwrap() as usize, 1);
}

#[tokio::test]
async fn a_storage_failure_answers_503_stores_nothing_and_the_retry_succeeds() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let settings = test_settings(dir.path(), "");
    let faulty = FaultyStore::new(open_store(&settings).unwrap());
    let app = spawn_with_store(settings, faulty.clone(), dir).await;
    let body = pd_v3("incident.triggered", "PFAIL", "E1", "2024-03-14T14:23:00Z");

    faulty.fail_writes.store(true, Ordering::SeqCst);
    let res = app.post_pagerduty(&body).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let json: serde_json::Value = res.json().await.unwrap();
    assert_eq!(json["error"]["code"], "storage_unavailable");
    assert!(
        !json.to_string().contains("injected"),
        "5xx bodies do not leak causes"
    );
    assert!(app.incidents().await.is_empty());

    faulty.fail_writes.store(false, Ordering::SeqCst);
    // The provider's retry is not mistaken for a duplicate.
    assert_eq!(app.post_pagerduty(&body).await.status(), 202);
    assert_eq!(app.events("PFAIL").await.len(), 1);
}
