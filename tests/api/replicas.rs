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

#[tokio::test]
async fn an_incident_whose_webhooks_are_spread_over_three_replicas_is_one_incident_and_one_pack() {
    if skipped() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_app_with("", Some(dir.clone())).await);
    }
    let at = |i: usize| &replicas[i % 3];
    let ts = |mins: i64| {
        format!(
            "{}.000100",
            (chrono::Utc::now() + chrono::Duration::minutes(mins)).timestamp()
        )
    };
    // Round robin: the trigger on one replica, the rest on the others, which must learn
    // of the incident (LISTEN/NOTIFY) to attach what names no incident.
    let mut statuses = Vec::new();
    statuses.push(
        at(0)
            .post_pagerduty(&pd_v3("incident.triggered", "PRR", "R1", &at_offset(-20)))
            .await
            .status(),
    );
    // Providers do not send within the same millisecond; the other replicas' listeners
    // hear of the new incident within one (see docs/DECISIONS.md, Replicas).
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    statuses.push(
        at(1)
            .post_datadog(&datadog_alert(
                "rr-1",
                "Triggered",
                "Error rate: 23% of requests returning 503",
                "rr-cyc",
                "service:api",
                chrono::Utc::now() - chrono::Duration::minutes(19),
            ))
            .await
            .status(),
    );
    statuses.push(
        at(2)
            .post_slack(&slack_message(
                "Ev-RR1",
                "C-RR",
                &ts(-18),
                "looking at the pool",
            ))
            .await
            .status(),
    );
    statuses.push(
        at(3)
            .post_pagerduty(&pd_v3(
                "incident.acknowledged",
                "PRR",
                "R2",
                &at_offset(-17),
            ))
            .await
            .status(),
    );
    statuses.push(
        at(4)
            .post_slack(&slack_message(
                "Ev-RR2",
                "C-RR",
                &ts(-10),
                "root cause: pool exhausted by a leak",
            ))
            .await
            .status(),
    );
    statuses.push(
        at(5)
            .post_pagerduty(&pd_v3("incident.resolved", "PRR", "R3", &at_offset(-2)))
            .await
            .status(),
    );
    assert!(statuses.iter().all(|s| s.as_u16() == 202), "{statuses:?}");
    // Retries reaching other replicas are duplicates.
    assert_eq!(
        at(1)
            .post_pagerduty(&pd_v3("incident.triggered", "PRR", "R1", &at_offset(-20)))
            .await
            .status(),
        200
    );

    let events = at(2).events("PRR").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "incident.triggered",
            "alert.firing",
            "chat.message",
            "incident.acknowledged",
            "chat.message",
            "annotation.root_cause",
            "incident.resolved"
        ],
        "every event once, in order"
    );
    for r in &replicas {
        assert!(r.unattached().await.is_empty());
        assert_eq!(r.get_json("/incidents/PRR").await["event_count"], 7);
    }
    // One pack, rendered once, served the same by every replica.
    let id = incidentpost::domain::IncidentId::parse("PRR").unwrap();
    let mut stored = None;
    for _ in 0..100 {
        stored = replicas[0].store.pack(&id).unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stored = stored.expect("the pack is stored after resolve");
    for r in &replicas {
        let zip = r
            .get("/incidents/PRR/pack.zip")
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(zip.as_ref(), stored.as_slice());
    }
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn one_replica_leads_the_poller_and_another_takes_over_when_it_is_gone() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path(), "");
    let a = incidentpost::startup::open_store(&settings).unwrap();
    let b = incidentpost::startup::open_store(&settings).unwrap();
    assert!(a.lead("cloudwatch-poller").unwrap());
    assert!(!b.lead("cloudwatch-poller").unwrap(), "two leaders");
    // Still the leader at its next round; the other still stands by.
    assert!(a.lead("cloudwatch-poller").unwrap());
    assert!(!b.lead("cloudwatch-poller").unwrap());
    // Another role is led on its own.
    assert!(b.lead("something-else").unwrap());
    // The leader goes (its connections close): the other takes over at its next round.
    drop(a);
    let mut took_over = false;
    for _ in 0..50 {
        if b.lead("cloudwatch-poller").unwrap() {
            took_over = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(took_over);
}

/// A PostgreSQL cluster of one test's own (so the test can stop and start it): Debian's
/// binaries (`INCIDENTPOST_TEST_PG_BIN`, else the newest /usr/lib/postgresql/*/bin),
/// initdb in a temp dir, a free loopback port. As root, run as the postgres user.
struct PrivatePg {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePg {
    fn bin() -> Option<std::path::PathBuf> {
        if let Ok(b) = std::env::var("INCIDENTPOST_TEST_PG_BIN") {
            return Some(b.into());
        }
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        found.sort();
        found.pop()
    }

    fn as_pg(&self, program: &str) -> std::process::Command {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let path = self.bin.join(program);
        if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        }
    }

    fn start() -> Option<PrivatePg> {
        let bin = Self::bin()?;
        let dir = tempfile::tempdir().unwrap();
        let pg = PrivatePg {
            bin,
            port: free_port(),
            dir,
        };
        let _ = std::process::Command::new("chown")
            .args(["postgres"])
            .arg(pg.dir.path())
            .status();
        let ok = pg
            .as_pg("initdb")
            .args(["-D"])
            .arg(pg.dir.path().join("data"))
            .args(["-U", "postgres", "-A", "trust"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "initdb failed");
        pg.up();
        Some(pg)
    }

    fn up(&self) {
        let ok = self
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl start failed");
    }

    fn down(&self) {
        let _ = self
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test]
async fn with_the_database_down_webhooks_get_503_and_readyz_fails_then_it_resumes() {
    if skipped() {
        return;
    }
    let Some(pg) = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap() else {
        eprintln!("skipped: no PostgreSQL binaries (Debian's postgresql) to start a cluster");
        return;
    };
    let app = spawn_app_with(
        &format!(
            "[storage]\nbackend = 'postgres'\n[storage.postgres]\nurl = '{}'\n",
            pg.url()
        ),
        None,
    )
    .await;
    let first = pd_v3("incident.triggered", "PDOWN", "D1", &at_offset(-5));
    assert_eq!(app.post_pagerduty(&first).await.status(), 202);
    assert_eq!(app.get("/readyz").await.status(), 200);

    let pg = Arc::new(pg);
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.down()
    })
    .await
    .unwrap();
    let second = pd_v3("incident.acknowledged", "PDOWN", "D2", &at_offset(-4));
    // Nothing is acknowledged that is not committed: 503, and the provider retries.
    assert_eq!(app.post_pagerduty(&second).await.status(), 503);
    assert_eq!(app.get("/readyz").await.status(), 503);

    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.up()
    })
    .await
    .unwrap();
    // Back up: the provider's retry lands, without a restart of the service.
    let mut status = 0;
    for _ in 0..50 {
        status = app.post_pagerduty(&second).await.status().as_u16();
        if status == 202 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 202);
    assert_eq!(app.get("/readyz").await.status(), 200);
    let events = app.events("PDOWN").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(app.post_pagerduty(&second).await.status(), 200);
    app.stop().await;
}
