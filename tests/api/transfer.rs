//! `incidentpost export` / `import` through the real binary.

use std::process::Command;
use std::sync::Arc;

use crate::helpers::*;

fn run(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    run_on(args, dir, false)
}

/// The CLI on `dir`'s store; `sled` forces sled whatever the suite's backend.
fn run_on(args: &[&str], dir: &std::path::Path, sled: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_incidentpost"));
    cmd.args(args)
        .env("INCIDENTPOST__STORAGE__PATH", dir)
        .envs(backend_env(dir));
    if sled {
        cmd.env("INCIDENTPOST__STORAGE__BACKEND", "sled");
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn export_then_import_round_trips_incidents_and_packs_byte_identically() {
    round_trip(false).await;
}

/// Moving from the embedded default to PostgreSQL: `export` from sled, `import` into
/// PostgreSQL (run by the PostgreSQL pass of `scripts/test`).
#[tokio::test]
async fn a_sled_store_moves_to_postgresql_with_export_and_import() {
    if !on_postgres() {
        eprintln!("skipped: runs in the PostgreSQL pass (INCIDENTPOST_TEST_BACKEND=postgres)");
        return;
    }
    round_trip(true).await;
}

async fn round_trip(from_sled: bool) {
    let app = spawn_app_with(
        if from_sled {
            "[storage]\nbackend = 'sled'\n"
        } else {
            ""
        },
        None,
    )
    .await;
    let res = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .body(fixture_bytes("seed-timeline.txt"))
        .send()
        .await
        .unwrap();
    let seed: serde_json::Value = res.json().await.unwrap();
    let seed_id = seed["incident_id"].as_str().unwrap().to_owned();
    app.post_pagerduty(&pd_v3("incident.triggered", "PEXP", "E1", &at_offset(-30)))
        .await;
    app.post_pagerduty(&pd_v3("incident.resolved", "PEXP", "E2", &at_offset(-2)))
        .await;
    app.post_slack(&slack_message(
        "Ev1",
        "C1",
        &format!("{}.000100", chrono::Utc::now().timestamp()),
        "left in the stream",
    ))
    .await;
    let mut before = Vec::new();
    for id in [seed_id.as_str(), "PEXP"] {
        // The late Slack event re-renders in the background; render now so the stored
        // pack is the current one.
        let res = app
            .client
            .post(format!("{}/incidents/{id}/render", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let zip = app
            .get(&format!("/incidents/{id}/pack.zip"))
            .await
            .bytes()
            .await
            .unwrap();
        before.push((
            app.get_json(&format!("/incidents/{id}")).await,
            app.events(id).await,
            zip,
        ));
    }
    let unattached = app.unattached().await;
    let dir1 = app.stop().await;

    let file = dir1.path().join("export.ndjson");
    let out = run_on(
        &["export", "-o", file.to_str().unwrap()],
        dir1.path(),
        from_sled,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir2 = Arc::new(tempfile::tempdir().unwrap());
    let out = run(&["import", file.to_str().unwrap()], dir2.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second import into the same directory is refused.
    let again = run(&["import", file.to_str().unwrap()], dir2.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty"));

    let app = spawn_app_with("", Some(dir2)).await;
    for ((incident, events, zip), id) in before.iter().zip([seed_id.as_str(), "PEXP"]) {
        assert_eq!(
            &app.get_json(&format!("/incidents/{id}")).await,
            incident,
            "{id}"
        );
        assert_eq!(&app.events(id).await, events, "{id}");
        let after = app
            .get(&format!("/incidents/{id}/pack.zip"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(&after, zip, "{id}: the pack is byte-identical");
    }
    assert_eq!(app.unattached().await, unattached);
    // Delivery ids came along: a retry after the move is still a duplicate.
    let res = app
        .post_pagerduty(&pd_v3("incident.resolved", "PEXP", "E2", &at_offset(-2)))
        .await;
    assert_eq!(res.status(), 200);
}
