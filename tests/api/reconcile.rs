//! Reconciliation against local doubles of GitHub's and PagerDuty's REST APIs that serve
//! the recorded example responses (`tests/fixtures/github-api/`, `pagerduty-api/`), with
//! ids and times patched in.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;
use crate::pack::{section, unzip};

const HOOK: &str = "/repos/Codertocat/Hello-World/hooks/4242";

/// One entry of a hook's delivery log, from the recorded list item.
fn logged(id: u64, guid: &str, event: &str, status_code: u16, minutes_ago: i64) -> Value {
    let mut d =
        fixture_json("github-api/repos.list-webhook-deliveries.200.hook-delivery-items.json")[0]
            .clone();
    d["id"] = json!(id);
    d["guid"] = json!(guid);
    d["event"] = json!(event);
    d["action"] = json!("opened");
    d["status_code"] = json!(status_code);
    d["status"] = json!(if status_code == 0 { "Timeout" } else { "OK" });
    d["delivered_at"] = json!(at_offset(-minutes_ago));
    d["repository_id"] = json!(1296269);
    d
}

async fn github_double(log: Vec<Value>) -> MockServer {
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{HOOK}/deliveries")))
        .and(header("authorization", "Bearer ghp-test-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(Value::Array(log)))
        .mount(&github)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path_regex(format!(
            r"^{HOOK}/deliveries/\d+/attempts$"
        )))
        .respond_with(ResponseTemplate::new(202).set_body_bytes(fixture_bytes(
            "github-api/repos.redeliver-webhook-delivery.202.accepted.json",
        )))
        .mount(&github)
        .await;
    github
}

fn github_settings(github: &MockServer) -> String {
    format!(
        "[sources.github]\ntoken = 'ghp-test-token'\napi_url = '{}'\n\
         [reconcile]\ninterval_secs = 3600\nsettle_secs = 0\n",
        github.uri()
    )
}

async fn redelivery_requests(github: &MockServer, delivery_id: u64) -> usize {
    github
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            r.method.as_str() == "POST"
                && r.url.path() == format!("{HOOK}/deliveries/{delivery_id}/attempts")
        })
        .count()
}

async fn reconcile_now(app: &TestApp) -> Value {
    let r = app
        .client
        .post(format!("{}/deliveries/reconcile", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["round"].clone()
}

fn pr_opened() -> Vec<u8> {
    fixture_bytes("github/pull_request.opened.octokit.json")
}

#[tokio::test]
async fn a_missed_github_delivery_is_redelivered_once_and_lands_marked_recovered() {
    let stored_guid = "d1a5e1d0-0001-11f0-8000-000000000001";
    let missed_guid = "d1a5e1d0-0002-11f0-8000-000000000002";
    let github = github_double(vec![
        // Newest first, as GitHub lists them.
        logged(1003, missed_guid, "pull_request", 503, 2),
        logged(1002, stored_guid, "pull_request", 202, 3),
        logged(1001, "d1a5e1d0-0000-11f0-8000-000000000000", "ping", 200, 4),
    ])
    .await;
    let app = spawn_app_with(&github_settings(&github), None).await;

    // The delivery we stored, from hook 4242 of Codertocat/Hello-World.
    let mut stored = serde_json::from_slice::<Value>(&pr_opened()).unwrap();
    stored["pull_request"]["number"] = json!(7);
    let stored_body = serde_json::to_vec(&stored).unwrap();
    assert_eq!(
        app.post_github("pull_request", stored_guid, &stored_body)
            .await
            .status(),
        202
    );

    let round = reconcile_now(&app).await;
    assert_eq!(round["github"]["requested"], 1, "{round}");
    assert_eq!(round["github"]["complete"], true, "{round}");
    assert_eq!(redelivery_requests(&github, 1003).await, 1);
    assert_eq!(
        redelivery_requests(&github, 1002).await,
        0,
        "a stored delivery is left alone"
    );
    assert_eq!(
        redelivery_requests(&github, 1001).await,
        0,
        "a ping is not redelivered"
    );

    // GitHub redelivers: the same signed webhook, same GUID.
    let r = app
        .post_github("pull_request", missed_guid, &pr_opened())
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let id = body["event_ids"][0].as_str().unwrap().to_owned();
    let unattached = app.unattached().await;
    let landed = unattached
        .iter()
        .find(|e| e["id"] == id.as_str())
        .expect("the redelivered event is stored");
    assert_eq!(landed["attrs"]["recovered"], "github_redelivery");
    let first = unattached
        .iter()
        .find(|e| e["attrs"]["pr_number"] == 7)
        .expect("the stored delivery's event");
    assert!(first["attrs"].get("recovered").is_none());

    // The next round counts it recovered and asks for nothing again.
    let round = reconcile_now(&app).await;
    assert_eq!(round["github"]["requested"], 0, "{round}");
    assert_eq!(round["github"]["recovered"], 1, "{round}");
    assert_eq!(
        redelivery_requests(&github, 1003).await,
        1,
        "redelivered exactly once"
    );
    let round = reconcile_now(&app).await;
    assert_eq!(round["github"]["requested"], 0, "{round}");
    assert_eq!(redelivery_requests(&github, 1003).await, 1);

    // A bad signature is rejected and counted by reason.
    let r = app
        .post_webhook(
            "github",
            &pr_opened(),
            &[
                ("X-GitHub-Event", "pull_request".to_owned()),
                ("X-GitHub-Delivery", "bad".to_owned()),
                ("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64))),
            ],
        )
        .await;
    assert_eq!(r.status(), 401);
    // So is one the edge refuses before any handler runs.
    let r = app
        .post_webhook("github", b"x", &[("Content-Encoding", "gzip".to_owned())])
        .await;
    assert_eq!(r.status(), 415);

    let report = app.get_json("/deliveries/report").await;
    let gh = &report["sources"]["github"];
    assert_eq!(gh["received"], 4, "{report}");
    assert_eq!(gh["stored"], 2, "{report}");
    assert_eq!(gh["rejected"], 2, "{report}");
    assert_eq!(gh["rejected_by_reason"]["invalid_signature"], 1, "{report}");
    assert_eq!(
        gh["rejected_by_reason"]["unsupported_encoding"], 1,
        "{report}"
    );
    assert_eq!(gh["recovered"], 1, "{report}");
    assert_eq!(gh["missing"], 0, "{report}");
    assert_eq!(gh["reconciliation"]["enabled"], true);
    assert_eq!(
        gh["reconciliation"]["hooks"][0]["repo"],
        "Codertocat/Hello-World"
    );
    assert_eq!(
        gh["reconciliation"]["hooks"][0]["checked_through_delivery"], 1003,
        "{report}"
    );
    let pd = &report["sources"]["pagerduty"];
    assert_eq!(pd["reconciliation"]["enabled"], false);
    assert!(
        pd["reconciliation"]["why_not"]
            .as_str()
            .unwrap()
            .contains("sources.pagerduty.api_token"),
        "{report}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_restart_goes_on_from_the_cursor_and_asks_for_nothing_twice() {
    let missed = "d1a5e1d0-0003-11f0-8000-000000000003";
    let github = github_double(vec![logged(2001, missed, "push", 0, 2)]).await;
    let app = spawn_app_with(&github_settings(&github), None).await;
    // A delivery from the hook makes it known.
    assert_eq!(
        app.post_github(
            "pull_request",
            "d1a5e1d0-0004-11f0-8000-000000000004",
            &pr_opened()
        )
        .await
        .status(),
        202
    );
    assert_eq!(reconcile_now(&app).await["github"]["requested"], 1);
    let dir = app.stop().await;

    // The redelivery never lands; after a restart the same log is read again.
    let app = spawn_app_with(&github_settings(&github), Some(dir)).await;
    let round = reconcile_now(&app).await;
    assert_eq!(round["github"]["requested"], 0, "{round}");
    assert_eq!(redelivery_requests(&github, 2001).await, 1);
    let report = app.get_json("/deliveries/report").await;
    assert_eq!(
        report["sources"]["github"]["reconciliation"]["redeliveries_waiting"], 1,
        "{report}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_github_rate_limit_backs_off_until_it_says() {
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{HOOK}/deliveries")))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "120")
                .set_body_json(json!({"message": "API rate limit exceeded"})),
        )
        .mount(&github)
        .await;
    let app = spawn_app_with(&github_settings(&github), None).await;
    assert_eq!(
        app.post_github(
            "pull_request",
            "d1a5e1d0-0005-11f0-8000-000000000005",
            &pr_opened()
        )
        .await
        .status(),
        202
    );
    let round = reconcile_now(&app).await;
    assert!(
        round["github"]["error"]
            .as_str()
            .unwrap()
            .contains("rate limited"),
        "{round}"
    );
    let round = reconcile_now(&app).await;
    assert!(
        round["github"]["skipped"]
            .as_str()
            .unwrap()
            .contains("rate limited"),
        "{round}"
    );
    let calls = github.received_requests().await.unwrap().len();
    assert_eq!(calls, 1, "no call while backing off");
    let report = app.get_json("/deliveries/report").await;
    let until = report["sources"]["github"]["reconciliation"]["state"]["backoff_until"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    let wait = until - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(100) && wait <= chrono::Duration::seconds(120),
        "backs off for Retry-After: {wait}"
    );
    app.stop().await;
}

const PD_TOKEN: &str = "pd-test-read-only-key";

/// The recorded `GET /incidents/{id}` answer for `id` with `status`.
fn pd_incident(id: &str, status: &str) -> Value {
    let mut v = fixture_json("pagerduty-api/incident.get.response.api-schema.json");
    let i = &mut v["incident"];
    i["id"] = json!(id);
    i["status"] = json!(status);
    i["title"] = json!("API response time > 5000ms");
    i["last_status_change_at"] = json!(at_offset(-1));
    i["html_url"] = json!(format!("https://subdomain.pagerduty.com/incidents/{id}"));
    i["acknowledgements"][0]["at"] = json!(at_offset(-10));
    if status == "resolved" {
        i["resolved_at"] = json!(at_offset(-1));
    }
    v
}

/// The recorded notes list with times patched to the last minutes.
fn pd_notes() -> Value {
    let mut v = fixture_json("pagerduty-api/incident-notes.list.response.api-schema.json");
    for (i, n) in v["notes"].as_array_mut().unwrap().iter_mut().enumerate() {
        n["created_at"] = json!(at_offset(-3 + i as i64));
    }
    v
}

/// The recorded V3 `incident.annotated` capture on `incident`, with the note's id (none:
/// as builds before note ids sent it), text and a time three minutes ago.
fn note_webhook(incident: &str, note_id: Option<&str>, content: &str) -> Value {
    let mut note = fixture_json("pagerduty/v3-incident.annotated.zulip.json");
    let data = &mut note["event"]["data"];
    data["incident"]["id"] = json!(incident);
    match note_id {
        Some(id) => data["id"] = json!(id),
        None => {
            data.as_object_mut().unwrap().remove("id");
        }
    }
    data["content"] = json!(content);
    note["event"]["occurred_at"] = json!(at_offset(-3));
    note
}

async fn pagerduty_double(id: &str, incident: Value, notes: Value, delay: Duration) -> MockServer {
    let pd = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/incidents/{id}")))
        .and(header(
            "authorization",
            format!("Token token={PD_TOKEN}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(incident))
        .mount(&pd)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/incidents/{id}/notes")))
        .and(header(
            "authorization",
            format!("Token token={PD_TOKEN}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(notes)
                .set_delay(delay),
        )
        .mount(&pd)
        .await;
    pd
}

fn pagerduty_settings(pd: &MockServer) -> String {
    format!(
        "[sources.pagerduty]\napi_token = '{PD_TOKEN}'\napi_url = '{}'\n\
         [reconcile]\ninterval_secs = 3600\nsettle_secs = 0\n",
        pd.uri()
    )
}

async fn wait_for_pack(app: &TestApp, id: &str) -> Vec<u8> {
    crate::pack::stored_pack_within(app, id, Duration::from_secs(10)).await
}

#[tokio::test]
async fn a_missed_pagerduty_resolve_closes_the_incident_and_renders_the_pack() {
    let id = "PRECOV1";
    let pd = pagerduty_double(
        id,
        pd_incident(id, "resolved"),
        json!({"notes": []}),
        Duration::ZERO,
    )
    .await;
    let app = spawn_app_with(&pagerduty_settings(&pd), None).await;
    let trigger = pd_v3("incident.triggered", id, "evt-recov-1", &at_offset(-20));
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);

    // PagerDuty shows it acknowledged (the recorded acknowledgement) and resolved: both
    // webhooks were missed.
    let round = reconcile_now(&app).await;
    assert_eq!(round["pagerduty"]["recovered"], 2, "{round}");
    let incident = app.get_json(&format!("/incidents/{id}")).await;
    assert_eq!(incident["status"], "resolved", "{incident}");

    let files = unzip(&wait_for_pack(&app, id).await);
    let md = &files["postmortem.md"];
    let timeline = section(md, "Timeline");
    assert!(
        timeline
            .iter()
            .any(|l| l.contains("Incident resolved (recovered)")),
        "{md}"
    );
    assert!(
        timeline
            .iter()
            .any(|l| l.contains("Earline Greenholt acknowledged (recovered)")),
        "{md}"
    );
    assert!(
        md.contains("2 PagerDuty updates (status changes and notes) were missed and recovered from PagerDuty's API"),
        "{md}"
    );
    assert!(!md.contains("DRAFT"), "{md}");
    // The incident page says it too.
    let page = app
        .get(&format!("/ui/incidents/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Gap recovered"), "{page}");
    assert!(
        page.contains("2 PagerDuty updates (status changes and notes) were missed and recovered"),
        "{page}"
    );

    // The resolve's webhook arrives late: a duplicate of the recovered change.
    let late = pd_v3("incident.resolved", id, "evt-recov-late", &at_offset(-1));
    let r = app.post_pagerduty(&late).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
    let resolves = app
        .events(id)
        .await
        .iter()
        .filter(|e| e["kind"] == "incident.resolved")
        .count();
    assert_eq!(resolves, 1);
    // Its retry is a duplicate too.
    assert_eq!(app.post_pagerduty(&late).await.status(), 200);
    // The acknowledge's webhook too, though the incident has moved on to resolved...
    let mut ack: Value = serde_json::from_slice(&pd_v3(
        "incident.acknowledged",
        id,
        "evt-recov-ack",
        &at_offset(-10),
    ))
    .unwrap();
    ack["event"]["agent"] =
        json!({"id": "PXPGF42", "type": "user_reference", "summary": "Earline Greenholt"});
    let r = app.post_pagerduty(&serde_json::to_vec(&ack).unwrap()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
    // ...while another person's acknowledge is their own.
    ack["event"]["id"] = json!("evt-recov-ack-2");
    ack["event"]["agent"] =
        json!({"id": "PMIKE01", "type": "user_reference", "summary": "Mike Ross"});
    let r = app.post_pagerduty(&serde_json::to_vec(&ack).unwrap()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "stored");

    // Nothing more to recover.
    let round = reconcile_now(&app).await;
    assert_eq!(round["pagerduty"]["recovered"], 0, "{round}");
    let report = app.get_json("/deliveries/report").await;
    assert_eq!(report["sources"]["pagerduty"]["recovered"], 2, "{report}");
    assert_eq!(report["sources"]["pagerduty"]["duplicates"], 3, "{report}");
    app.stop().await;
}

#[tokio::test]
async fn a_missed_note_appears_once_even_when_its_webhook_comes_after() {
    let id = "PRECOV2";
    let pd = pagerduty_double(id, pd_incident(id, "triggered"), pd_notes(), Duration::ZERO).await;
    let app = spawn_app_with(&pagerduty_settings(&pd), None).await;
    let trigger = pd_v3("incident.triggered", id, "evt-recov-2", &at_offset(-20));
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    // A note stored before note ids were kept (its webhook without `data.id`): known by
    // its text, not recovered again.
    let mut old = note_webhook(
        id,
        None,
        "Initial alert information indicates a 1-alarm fire",
    );
    old["event"]["id"] = json!("evt-old-note");
    assert_eq!(
        app.post_pagerduty(&serde_json::to_vec(&old).unwrap())
            .await
            .status(),
        202
    );

    let round = reconcile_now(&app).await;
    assert_eq!(round["pagerduty"]["recovered"], 1, "{round}");

    // The first note's webhook comes after all (the recorded V3 capture, its ids patched).
    let note = note_webhook(id, Some("PWL7QXS"), "Firefighters are on the scene.");
    let body = serde_json::to_vec(&note).unwrap();
    let r = app.post_pagerduty(&body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");

    let again = reconcile_now(&app).await;
    assert_eq!(again["pagerduty"]["recovered"], 0, "{again}");

    let events = app.events(id).await;
    let firefighters: Vec<&Value> = events
        .iter()
        .filter(|e| e["attrs"]["note_id"] == "PWL7QXS")
        .collect();
    assert_eq!(firefighters.len(), 1, "{events:?}");
    assert_eq!(firefighters[0]["attrs"]["recovered"], "pagerduty_api");
    assert!(
        firefighters[0]["title"]
            .as_str()
            .unwrap()
            .contains("Firefighters are on the scene."),
        "{}",
        firefighters[0]
    );
    let alarm = events
        .iter()
        .filter(|e| e["attrs"]["text"] == "Initial alert information indicates a 1-alarm fire")
        .count();
    assert_eq!(alarm, 1, "{events:?}");
    let report = app.get_json("/deliveries/report").await;
    assert_eq!(report["sources"]["pagerduty"]["recovered"], 1, "{report}");
    assert_eq!(report["sources"]["pagerduty"]["duplicates"], 1, "{report}");
    app.stop().await;
}

#[tokio::test]
async fn the_final_pack_waits_for_the_last_pagerduty_check() {
    let id = "PRECOV3";
    // PagerDuty answers the notes slowly: a final render that did not wait would be
    // stored before the missed note is in.
    let pd = pagerduty_double(
        id,
        pd_incident(id, "resolved"),
        pd_notes(),
        Duration::from_millis(800),
    )
    .await;
    let app = spawn_app_with(&pagerduty_settings(&pd), None).await;
    let trigger = pd_v3("incident.triggered", id, "evt-recov-3", &at_offset(-20));
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    let resolve = pd_v3("incident.resolved", id, "evt-recov-4", &at_offset(-1));
    assert_eq!(app.post_pagerduty(&resolve).await.status(), 202);

    // While the check runs, a download is a draft and nothing is stored as final.
    let r = app.get(&format!("/incidents/{id}/pack.zip")).await;
    assert_eq!(r.status(), 200);
    let name = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(name.contains("DRAFT"), "{name}");
    let first = unzip(&wait_for_pack(&app, id).await);
    assert!(
        first["postmortem.md"].contains("Firefighters are on the scene."),
        "the first stored pack has the recovered note:\n{}",
        first["postmortem.md"]
    );
    app.stop().await;
}

#[tokio::test]
async fn without_tokens_nothing_is_reconciled_and_the_report_says_why() {
    let app = spawn_app().await;
    let round = reconcile_now(&app).await;
    for source in ["github", "pagerduty"] {
        assert!(
            round[source]["skipped"]
                .as_str()
                .unwrap()
                .contains("not configured"),
            "{round}"
        );
    }
    let report = app.get_json("/deliveries/report").await;
    for source in ["github", "pagerduty", "slack", "datadog", "cloudwatch"] {
        let r = &report["sources"][source]["reconciliation"];
        assert_eq!(r["enabled"], false, "{report}");
        assert!(r["why_not"].as_str().is_some(), "{report}");
    }
    app.stop().await;
}

#[tokio::test]
async fn with_two_replicas_one_reconciles_and_a_late_webhook_at_the_other_is_a_duplicate() {
    if !on_postgres() {
        eprintln!("skipped: runs in the PostgreSQL pass (INCIDENTPOST_TEST_BACKEND=postgres)");
        return;
    }
    let id = "PRECOV4";
    let pd = pagerduty_double(id, pd_incident(id, "triggered"), pd_notes(), Duration::ZERO).await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let a = spawn_app_with(&pagerduty_settings(&pd), Some(dir.clone())).await;
    let b = spawn_app_with(&pagerduty_settings(&pd), Some(dir.clone())).await;
    let trigger = pd_v3("incident.triggered", id, "evt-recov-5", &at_offset(-20));
    assert_eq!(a.post_pagerduty(&trigger).await.status(), 202);

    let round = reconcile_now(&a).await;
    assert_eq!(round["pagerduty"]["recovered"], 2, "{round}");
    let round = reconcile_now(&b).await;
    assert_eq!(
        round["pagerduty"]["skipped"], "another replica reconciles",
        "{round}"
    );

    let note = note_webhook(
        id,
        Some("PCQC25"),
        "Initial alert information indicates a 1-alarm fire",
    );
    let r = b.post_pagerduty(&serde_json::to_vec(&note).unwrap()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
    let notes = b
        .events(id)
        .await
        .iter()
        .filter(|e| e["attrs"]["note_id"] == "PCQC25")
        .count();
    assert_eq!(notes, 1);
    // Both replicas report the recovery (it is in the database).
    let report = b.get_json("/deliveries/report").await;
    assert_eq!(report["sources"]["pagerduty"]["recovered"], 2, "{report}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_long_log_is_checked_over_rounds_within_the_bounds_and_a_gone_hook_does_not_stop_it() {
    use wiremock::matchers::{query_param, query_param_is_missing};
    let github = MockServer::start().await;
    let page_two = format!(
        "<{}{HOOK}/deliveries?per_page=100&cursor=p2>; rel=\"next\"",
        github.uri()
    );
    Mock::given(method("GET"))
        .and(path(format!("{HOOK}/deliveries")))
        .and(query_param_is_missing("cursor"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", page_two.as_str())
                .set_body_json(json!([
                    logged(3004, "d1a5e1d0-3004-11f0-8000-000000000000", "push", 503, 2),
                    logged(3003, "d1a5e1d0-3003-11f0-8000-000000000000", "push", 503, 3),
                ])),
        )
        .mount(&github)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{HOOK}/deliveries")))
        .and(query_param("cursor", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            logged(3002, "d1a5e1d0-3002-11f0-8000-000000000000", "push", 0, 4),
            logged(3001, "d1a5e1d0-3001-11f0-8000-000000000000", "push", 503, 5),
        ])))
        .mount(&github)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path_regex(format!(
            r"^{HOOK}/deliveries/\d+/attempts$"
        )))
        .respond_with(ResponseTemplate::new(202))
        .mount(&github)
        .await;
    // One page and one redelivery per round; and a configured hook that is gone (404).
    let settings = format!(
        "[sources.github]\ntoken = 'ghp-test-token'\napi_url = '{}'\nhooks = [{{ org = 'gone-org', id = 99 }}]\n\
         [reconcile]\ninterval_secs = 3600\nsettle_secs = 0\nmax_pages = 1\nmax_redeliveries = 1\n",
        github.uri()
    );
    let app = spawn_app_with(&settings, None).await;
    assert_eq!(
        app.post_github(
            "pull_request",
            "d1a5e1d0-3000-11f0-8000-000000000000",
            &pr_opened()
        )
        .await
        .status(),
        202
    );
    let mut requested = 0;
    for round in 0..6 {
        let r = reconcile_now(&app).await;
        requested += r["github"]["requested"].as_u64().unwrap();
        if round == 0 {
            assert!(
                r["github"]["error"].as_str().unwrap().contains("hook 99"),
                "{r}"
            );
        }
    }
    assert_eq!(requested, 4);
    for id in [3001, 3002, 3003, 3004] {
        assert_eq!(redelivery_requests(&github, id).await, 1, "delivery {id}");
    }
    let report = app.get_json("/deliveries/report").await;
    let hooks = report["sources"]["github"]["reconciliation"]["hooks"]
        .as_array()
        .unwrap()
        .clone();
    let good = hooks.iter().find(|h| h["id"] == 4242).unwrap();
    assert_eq!(good["checked_through_delivery"], 3004, "{report}");
    assert_eq!(good["catching_up"], false, "{report}");
    let gone = hooks.iter().find(|h| h["id"] == 99).unwrap();
    assert!(gone["error"].as_str().unwrap().contains("404"), "{report}");
    app.stop().await;
}

#[tokio::test]
async fn a_hostile_pagerduty_answer_changes_nothing() {
    let pd = MockServer::start().await;
    // An impossible resolve time; another incident's id; a redirect elsewhere.
    let mut far = pd_incident("PHOST1", "resolved");
    far["incident"]["resolved_at"] = json!("9999-12-31T00:00:00Z");
    far["incident"]["last_status_change_at"] = json!("9999-12-31T00:00:00Z");
    far["incident"]["id"] = json!("PHOST2");
    far["incident"]["acknowledgements"] = json!([]);
    Mock::given(method("GET"))
        .and(path("/incidents/PHOST1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(far))
        .mount(&pd)
        .await;
    Mock::given(method("GET"))
        .and(path("/incidents/PHOST2"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/elsewhere", pd.uri()).as_str()),
        )
        .mount(&pd)
        .await;
    Mock::given(method("GET"))
        .and(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200).set_body_json(pd_incident("PHOST2", "resolved")))
        .mount(&pd)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(
            r"^/incidents/PHOST\d/notes$",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"notes": []})))
        .mount(&pd)
        .await;
    let app = spawn_app_with(&pagerduty_settings(&pd), None).await;
    for (id, event) in [("PHOST1", "evt-host-1"), ("PHOST2", "evt-host-2")] {
        let trigger = pd_v3("incident.triggered", id, event, &at_offset(-20));
        assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    }
    let round = reconcile_now(&app).await;
    assert_eq!(round["pagerduty"]["recovered"], 0, "{round}");
    for id in ["PHOST1", "PHOST2"] {
        let incident = app.get_json(&format!("/incidents/{id}")).await;
        assert_eq!(incident["status"], "triggered", "{incident}");
        assert_eq!(app.events(id).await.len(), 1);
    }
    let elsewhere = pd
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/elsewhere")
        .count();
    assert_eq!(elsewhere, 0, "a redirect is not followed");
    app.stop().await;
}

#[tokio::test]
async fn odd_log_entries_do_not_hold_the_cursor_and_replays_register_no_hooks() {
    let missed = "d1a5e1d0-4002-11f0-8000-000000000000";
    let mut future = logged(4003, "d1a5e1d0-4003-11f0-8000-000000000000", "push", 0, 2);
    future["delivered_at"] = json!("9999-01-01T00:00:00Z");
    let huge = logged(
        u64::MAX,
        "d1a5e1d0-4009-11f0-8000-000000000000",
        "push",
        202,
        1,
    );
    let github = github_double(vec![huge, future, logged(4002, missed, "push", 0, 3)]).await;
    let app = spawn_app_with(&github_settings(&github), None).await;
    let body = pr_opened();
    assert_eq!(
        app.post_github(
            "pull_request",
            "d1a5e1d0-4001-11f0-8000-000000000000",
            &body
        )
        .await
        .status(),
        202
    );
    // The same signed body under another hook id: a duplicate, and no new hook.
    let sig = format!(
        "sha256={}",
        incidentpost::sources::signature::hmac_sha256_hex(GH_SECRET.as_bytes(), &[&body[..]])
    );
    let r = app
        .post_webhook(
            "github",
            &body,
            &[
                ("X-GitHub-Event", "pull_request".to_owned()),
                (
                    "X-GitHub-Delivery",
                    "d1a5e1d0-4001-11f0-8000-000000000000".to_owned(),
                ),
                ("X-GitHub-Hook-ID", "999001".to_owned()),
                ("X-Hub-Signature-256", sig),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    let round = reconcile_now(&app).await;
    assert_eq!(round["github"]["requested"], 1, "{round}");
    assert_eq!(redelivery_requests(&github, 4002).await, 1);
    assert_eq!(redelivery_requests(&github, 4003).await, 0);
    let report = app.get_json("/deliveries/report").await;
    let hooks = report["sources"]["github"]["reconciliation"]["hooks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(hooks.len(), 1, "{report}");
    assert_eq!(hooks[0]["checked_through_delivery"], 4002, "{report}");
    app.stop().await;
}
