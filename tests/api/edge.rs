//! The webhook edge: real deliveries are never refused for their shape, replays store
//! nothing, nothing from outside grows the metrics, and links from payloads cannot write
//! into the pack or the pages.

use proptest::prelude::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

use crate::helpers::{
    fixture_bytes, no_redirects, pd_v3, slack_message, spawn_app, TestApp, GH_SECRET, SLACK_SECRET,
};

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        Just(Value::from("$ALERT_ID")),
        Just(Value::from("")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object mixing the field names the Datadog source reads (with values of any
/// type) and unknown ones.
fn any_datadog_object() -> impl Strategy<Value = Value> {
    const NAMES: &[&str] = &[
        "id",
        "title",
        "body",
        "date",
        "last_updated",
        "event_type",
        "alert_transition",
        "alert_type",
        "alert_query",
        "alert_metric",
        "monitor_id",
        "alert_id",
        "alert_cycle_key",
        "aggreg_key",
        "scopes",
        "tags",
        "severity",
        "priority",
        "url",
        "link",
        "incident_id",
    ];
    let known = proptest::collection::vec((proptest::sample::select(NAMES), any_json()), 0..10);
    let unknown = proptest::collection::vec(("[a-z_]{1,12}", any_json()), 0..4);
    (known, unknown).prop_map(|(known, unknown)| {
        let mut m = Map::new();
        for (k, v) in unknown {
            m.insert(k, v);
        }
        for (k, v) in known {
            m.insert(k.to_owned(), v);
        }
        Value::Object(m)
    })
}

#[tokio::test]
async fn any_json_object_sent_to_datadog_with_the_token_is_stored_with_its_raw_payload() {
    let app = spawn_app().await;
    let mut runner = TestRunner::deterministic();
    let strategy = any_datadog_object();
    let mut stored = 0;
    for case in 0..96 {
        let object = strategy.new_tree(&mut runner).unwrap().current();
        // A unique notification id keeps every case a new delivery, unless the case
        // already carries an `id` (then a repeat may fairly be a duplicate).
        let body = serde_json::to_vec(&object).unwrap();
        let res = app.post_datadog(&body).await;
        let status = res.status().as_u16();
        let json: Value = res.json().await.unwrap();
        assert!(
            status == 202 || (status == 200 && json["status"] == "duplicate"),
            "case {case}: {status} {json} for {object}"
        );
        if status == 202 {
            stored += 1;
            let id: ulid::Ulid = json["event_ids"][0].as_str().unwrap().parse().unwrap();
            let raw = app.store.raw(id).unwrap().expect("raw payload kept");
            assert_eq!(raw, body, "case {case}: raw payload is the body as sent");
        }
    }
    assert!(
        stored > 80,
        "most random objects are new deliveries: {stored}"
    );
    // Not an object: still refused, with the JSON error.
    for body in [&b"[1,2]"[..], b"\"text\"", b"42", b"{nope"] {
        let res = app.post_datadog(body).await;
        assert_eq!(res.status(), 400, "{}", String::from_utf8_lossy(body));
        let json: Value = res.json().await.unwrap();
        assert!(json["error"]["code"].is_string());
    }
}

#[tokio::test]
async fn datadog_alias_pairs_in_every_combination_give_one_event_with_the_first_non_empty_value() {
    let app = spawn_app().await;
    // (first name, second name, where the value lands in the event)
    type Read = fn(&Value) -> Value;
    let groups: [(&str, &str, Read); 3] = [
        ("monitor_id", "alert_id", |e| {
            e["attrs"]["monitor_id"].clone()
        }),
        ("severity", "priority", |e| e["attrs"]["priority"].clone()),
        ("url", "link", |e| e["url"].clone()),
    ];
    let mut n = 0;
    for (first, second, read) in groups {
        let value = |tag: &str| {
            if first == "url" {
                format!("https://dd.test/{tag}")
            } else {
                format!("v-{tag}")
            }
        };
        let a = value("a");
        let b = value("b");
        // (value of the first name, value of the second, expected)
        let cases: Vec<(Option<Value>, Option<Value>, Value)> = vec![
            (None, None, Value::Null),
            (Some(json!(a)), None, json!(a)),
            (None, Some(json!(b)), json!(b)),
            (Some(json!(a)), Some(json!(b)), json!(a)),
            (Some(json!("")), Some(json!(b)), json!(b)),
            (Some(json!("$ALERT_ID")), Some(json!(b)), json!(b)),
            (Some(Value::Null), Some(json!(b)), json!(b)),
            (Some(json!({"nested": 1})), Some(json!(b)), json!(b)),
        ];
        for (i, (x, y, want)) in cases.into_iter().enumerate() {
            n += 1;
            let mut body =
                json!({"id": format!("alias-{n}"), "title": format!("[Triggered] case {n}")});
            if let Some(x) = x {
                body[first] = x;
            }
            if let Some(y) = y {
                body[second] = y;
            }
            let res = app.post_datadog(&serde_json::to_vec(&body).unwrap()).await;
            assert_eq!(res.status(), 202, "{first}/{second} case {i}: {body}");
            let json: Value = res.json().await.unwrap();
            assert_eq!(json["event_ids"].as_array().unwrap().len(), 1);
            let events = app.unattached().await;
            let event = events
                .iter()
                .find(|e| e["id"] == json["event_ids"][0])
                .expect("the event is in the stream");
            assert_eq!(read(event), want, "{first}/{second} case {i}: {body}");
        }
    }
}

#[tokio::test]
async fn the_default_template_unrendered_is_taken_as_a_notification() {
    let app = spawn_app().await;
    let body = fixture_bytes("datadog/webhook-default-payload-template.datadog.json");
    assert_eq!(app.post_datadog(&body).await.status(), 202);
    assert_eq!(app.post_datadog(&body).await.status(), 200, "a retry");
    let events = app.unattached().await;
    assert_eq!(events.len(), 1);
    assert!(events[0]["title"].as_str().unwrap().starts_with("Alert: "));
}

async fn stored_events(app: &TestApp) -> usize {
    let incidents: usize = app
        .incidents()
        .await
        .iter()
        .map(|i| i["event_count"].as_u64().unwrap() as usize)
        .sum();
    incidents + app.unattached().await.len()
}

#[tokio::test]
async fn a_signed_body_replayed_with_a_fresh_delivery_id_stores_nothing() {
    let app = spawn_app().await;

    // GitHub: the delivery GUID header is not signed.
    let body = fixture_bytes("github/pull_request.opened.octokit.json");
    assert_eq!(
        app.post_github("pull_request", "guid-1", &body)
            .await
            .status(),
        202
    );
    let before = stored_events(&app).await;
    for guid in ["guid-2", ""] {
        let res = app.post_github("pull_request", guid, &body).await;
        assert_eq!(res.status(), 200, "GitHub replay under '{guid}'");
        assert_eq!(res.json::<Value>().await.unwrap()["status"], "duplicate");
    }
    let sig = format!(
        "sha256={}",
        incidentpost::sources::signature::hmac_sha256_hex(GH_SECRET.as_bytes(), &[&body])
    );
    let res = app
        .post_webhook(
            "github",
            &body,
            &[
                ("X-GitHub-Event", "pull_request".into()),
                ("X-Hub-Signature-256", sig),
            ],
        )
        .await;
    assert_eq!(res.status(), 200, "GitHub replay with no delivery header");
    assert_eq!(stored_events(&app).await, before);

    // PagerDuty: a new X-Webhook-Id on the same signed body.
    let body = pd_v3(
        "incident.triggered",
        "PREPLAY",
        "01REPLAYEVENT",
        &crate::helpers::at_offset(-1),
    );
    let sig = crate::helpers::pd_sign(crate::helpers::PD_SECRET, &body);
    let res = app
        .post_pagerduty_with(&body, Some(&sig), Some("hook-1"))
        .await;
    assert_eq!(res.status(), 202);
    let before = stored_events(&app).await;
    let res = app
        .post_pagerduty_with(&body, Some(&sig), Some("hook-2"))
        .await;
    assert_eq!(
        res.status(),
        200,
        "PagerDuty replay under a new X-Webhook-Id"
    );
    assert_eq!(stored_events(&app).await, before);

    // Slack: the same signed body again, with a retry header it does not sign.
    let body = slack_message("Ev0REPLAY", "C0REPLAY", "1700000000.000100", "rolling back");
    assert_eq!(app.post_slack(&body).await.status(), 202);
    let before = stored_events(&app).await;
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = format!(
        "v0={}",
        incidentpost::sources::signature::hmac_sha256_hex(
            SLACK_SECRET.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", &body]
        )
    );
    let res = app
        .post_webhook(
            "slack",
            &body,
            &[
                ("X-Slack-Request-Timestamp", ts),
                ("X-Slack-Signature", sig),
                ("X-Slack-Retry-Num", "1".into()),
            ],
        )
        .await;
    assert_eq!(res.status(), 200, "Slack replay");
    assert_eq!(stored_events(&app).await, before);
}

#[tokio::test]
async fn a_slack_event_without_event_id_is_stored_once_by_channel_and_ts() {
    let app = spawn_app().await;
    let mut v: Value =
        serde_json::from_slice(&slack_message("x", "C0NOID", "1700000100.000200", "hello"))
            .unwrap();
    v.as_object_mut().unwrap().remove("event_id");
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(app.post_slack(&body).await.status(), 202);
    // The app_mention of the same message, also without event_id: the same message.
    v["event"]["type"] = "app_mention".into();
    let mention = serde_json::to_vec(&v).unwrap();
    assert_eq!(app.post_slack(&mention).await.status(), 200);
    let events = app.unattached().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["attrs"]["channel"], "C0NOID");
}

#[tokio::test]
async fn a_legacy_pagerduty_v1_webhook_is_refused_with_a_message_naming_v3() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&json!({
        "messages": [{
            "type": "incident.trigger",
            "data": {"incident": {"id": "PLEGACY", "incident_number": 1, "status": "triggered"}},
            "id": "bb8b8fe0-e8d5-11e2-9c1e-22000afd16cf",
            "created_on": "2013-07-09T20:25:44Z"
        }]
    }))
    .unwrap();
    let res = app.post_pagerduty(&body).await;
    assert_eq!(res.status(), 400);
    let json: Value = res.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid_payload");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("V1"), "{message}");
    assert!(message.contains("Generic Webhooks (V3)"), "{message}");
    assert!(message.contains("README"), "{message}");
    assert!(!message.contains("untagged"), "{message}");
    assert!(app.incidents().await.is_empty());
}

#[tokio::test]
async fn a_thousand_made_up_methods_leave_the_metrics_the_same_size() {
    // The real binary: the metrics registry is per process, and other tests in this
    // binary write to theirs.
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::start_binary(dir.path());
    let client = reqwest::Client::new();
    crate::helpers::wait_ready(&client, &server).await;
    let send = |method: reqwest::Method| {
        let client = client.clone();
        let address = server.address.clone();
        async move {
            for path in ["/nowhere", "/incidents", "/webhooks/pagerduty"] {
                client
                    .request(method.clone(), format!("{address}{path}"))
                    .send()
                    .await
                    .unwrap();
            }
        }
    };
    let metrics_size = || {
        let client = client.clone();
        let url = format!("{}/metrics", server.address);
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .len()
        }
    };
    // Warm up: the series a made-up method falls into exist before the baseline.
    send(reqwest::Method::from_bytes(b"WARMUP").unwrap()).await;
    metrics_size().await;
    let before = metrics_size().await;
    let mut runner = TestRunner::deterministic();
    for _ in 0..1000 {
        let name = "[A-Z]{3,16}".new_tree(&mut runner).unwrap().current();
        send(reqwest::Method::from_bytes(name.as_bytes()).unwrap()).await;
    }
    let after = metrics_size().await;
    assert!(
        after.abs_diff(before) < 600,
        "/metrics grew from {before} to {after} bytes"
    );
}

#[tokio::test]
async fn a_newline_in_a_payload_url_writes_no_heading_and_no_script_link() {
    let app = spawn_app().await;
    let trigger = pd_v3(
        "incident.triggered",
        "PINJECT",
        "01INJECT",
        &crate::helpers::at_offset(-5),
    );
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    let hostile = "https://dd.test/a)\n\n# Injected heading\n\n[click](javascript:alert(1))";
    for (i, url) in [hostile, "javascript:alert(2)", "https://dd.test/ok"]
        .iter()
        .enumerate()
    {
        let body = json!({
            "id": format!("inject-{i}"),
            "title": format!("[Triggered] injected {i}"),
            "incident_id": "PINJECT",
            "url": url,
        });
        let res = app.post_datadog(&serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(res.status(), 202);
    }
    let events = app.events("PINJECT").await;
    let urls: Vec<&Value> = events
        .iter()
        .filter(|e| e["source"] == "datadog")
        .map(|e| &e["url"])
        .collect();
    assert_eq!(
        urls,
        [&Value::Null, &Value::Null, &json!("https://dd.test/ok")]
    );

    let md = app
        .get("/incidents/PINJECT/postmortem.md")
        .await
        .text()
        .await
        .unwrap();
    assert!(md.contains("https://dd.test/ok"), "{md}");
    assert!(!md.lines().any(|l| l.starts_with("# Injected")), "{md}");
    assert!(!md.to_ascii_lowercase().contains("javascript:"), "{md}");

    let page = app.get("/ui/incidents/PINJECT").await.text().await.unwrap();
    assert!(page.contains("https://dd.test/ok"));
    assert!(
        !page.to_ascii_lowercase().contains("href=\"javascript:"),
        "the page links to a script"
    );
}

// ---- the HTTP edge: deadlines, auth before the body, Host and Origin, sessions ----

const TOKEN: &str = "edge-test-token-0123456789";

/// Sends a request head and the first bytes of a body it never finishes; returns the
/// stream so the caller can read the answer (or keep it open).
async fn start_slow_request(app: &TestApp, head: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"{").await.unwrap();
    stream
}

async fn read_status_line(stream: &mut tokio::net::TcpStream, within_secs: u64) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(within_secs),
        stream.read(&mut buf),
    )
    .await
    .expect("the server answers instead of waiting for the body")
    .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn slow_bodies_on_import_and_patch_get_408_and_unauthenticated_ones_401_unread() {
    let app = crate::helpers::spawn_app_with(
        &format!("[server]\nrequest_timeout_secs = 1\n[api]\ntoken = '{TOKEN}'"),
        None,
    )
    .await;
    assert_eq!(
        app.post_pagerduty(&pd_v3(
            "incident.triggered",
            "PSLOW",
            "01SLOW",
            &crate::helpers::at_offset(-3)
        ))
        .await
        .status(),
        202
    );
    for (method, path) in [("POST", "/incidents/import"), ("PATCH", "/incidents/PSLOW")] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        );
        let mut stream = start_slow_request(&app, &head).await;
        let status = read_status_line(&mut stream, 5).await;
        assert!(
            status.starts_with("HTTP/1.1 408"),
            "{method} {path}: {status}"
        );
        // Without the token: refused at once, before the body is read.
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        );
        let mut stream = start_slow_request(&app, &head).await;
        let started = std::time::Instant::now();
        let status = read_status_line(&mut stream, 5).await;
        assert!(
            status.starts_with("HTTP/1.1 401"),
            "{method} {path}: {status}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_millis(900),
            "401 came before the body deadline"
        );
    }
    assert_eq!(
        app.events("PSLOW").await.len(),
        1,
        "nothing from the slow requests stored"
    );
}

#[tokio::test]
async fn two_hundred_slow_connections_do_not_stop_healthz_or_a_signed_webhook() {
    let app = crate::helpers::spawn_app_with(
        &format!("[server]\nrequest_timeout_secs = 30\n[api]\ntoken = '{TOKEN}'"),
        None,
    )
    .await;
    let mut held = Vec::new();
    for i in 0..200 {
        let head = if i % 2 == 0 {
            format!(
                "POST /incidents/import HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Length: 5000\r\n\r\n"
            )
        } else {
            "POST /webhooks/datadog HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n"
                .to_owned()
        };
        held.push(start_slow_request(&app, &head).await);
    }
    // Bounded waits, far under the 30 s the slow ones may take.
    let within = std::time::Duration::from_secs(5);
    let health = tokio::time::timeout(
        within,
        app.client.get(format!("{}/healthz", app.address)).send(),
    )
    .await
    .expect("/healthz answers while 200 slow bodies are held")
    .unwrap();
    assert_eq!(health.status(), 200);
    let body = pd_v3(
        "incident.triggered",
        "PHELD",
        "01HELD",
        &crate::helpers::at_offset(-1),
    );
    let res = tokio::time::timeout(within, app.post_pagerduty(&body))
        .await
        .expect("a signed webhook answers while 200 slow bodies are held");
    assert_eq!(res.status(), 202);
    drop(held);
}

#[tokio::test]
async fn an_unknown_host_is_refused_but_probes_answer_any_host() {
    let app = spawn_app().await;
    let get = |path: &str, host: &str| {
        app.client
            .get(format!("{}{path}", app.address))
            .header("Host", host)
            .send()
    };
    let res = get("/incidents", "rebind.evil.test").await.unwrap();
    assert_eq!(res.status(), 421);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "host_not_allowed"
    );
    assert_eq!(
        get("/ui", "rebind.evil.test:8080").await.unwrap().status(),
        421
    );
    for host in ["localhost:8080", "127.0.0.1", "[::1]:8080"] {
        assert_eq!(
            get("/incidents", host).await.unwrap().status(),
            200,
            "{host}"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            get(path, "10.1.2.3:8080").await.unwrap().status(),
            200,
            "{path}"
        );
    }
    // An operator's list replaces the default.
    let app =
        crate::helpers::spawn_app_with("[server]\nallowed_hosts = ['incidents.example.com']", None)
            .await;
    let res = app
        .client
        .get(format!("{}/incidents", app.address))
        .header("Host", "incidents.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .get(format!("{}/incidents", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 421, "127.0.0.1 is not in the operator's list");
}

#[tokio::test]
async fn cross_site_requests_are_refused_and_store_nothing_while_providers_still_get_in() {
    let app = spawn_app().await;
    let dd =
        serde_json::to_vec(&json!({"id": "x-site", "title": "[Triggered] cross-site"})).unwrap();
    type Case = (&'static str, Vec<u8>, Vec<(&'static str, String)>);
    let cases: Vec<Case> = vec![
        (
            "/incidents/import",
            b"09:00 UTC [Slack] forged".to_vec(),
            vec![
                ("Origin", "https://evil.test".into()),
                ("Content-Type", "text/plain".into()),
            ],
        ),
        (
            "/webhooks/datadog",
            dd.clone(),
            vec![
                ("Origin", "https://evil.test".into()),
                ("X-IncidentPost-Token", crate::helpers::DD_TOKEN.into()),
            ],
        ),
        (
            "/webhooks/datadog",
            dd.clone(),
            vec![
                ("Sec-Fetch-Site", "cross-site".into()),
                ("X-IncidentPost-Token", crate::helpers::DD_TOKEN.into()),
            ],
        ),
        (
            "/incidents/import",
            b"09:00 UTC [Slack] forged".to_vec(),
            vec![("Origin", "null".into())],
        ),
    ];
    for (path, body, headers) in cases {
        let mut req = app.client.post(format!("{}{path}", app.address)).body(body);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403, "{path} {headers:?}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "cross_site_request"
        );
    }
    assert!(app.incidents().await.is_empty());
    assert!(app.unattached().await.is_empty());
    // The provider: no Origin, no Sec-Fetch-Site.
    assert_eq!(app.post_datadog(&dd).await.status(), 202);
    // The service's own pages post with their own origin.
    let res = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .header("Origin", app.address.clone())
        .header("Sec-Fetch-Site", "same-origin")
        .body("09:00 UTC [Slack] from our own page")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn sessions_are_random_end_at_logout_and_expire() {
    let app = crate::helpers::spawn_app_with(&format!("[api]\ntoken = '{TOKEN}'"), None).await;
    let client = no_redirects();
    let first = crate::helpers::login_cookie(&app, TOKEN).await;
    let second = crate::helpers::login_cookie(&app, TOKEN).await;
    assert_ne!(first, second, "two logins get two sessions");
    let value = first.split_once('=').unwrap().1.to_owned();
    assert_eq!(value.len(), 64);
    assert!(!value.contains(TOKEN));
    let page = |cookie: String| {
        let client = client.clone();
        let url = format!("{}/ui", app.address);
        async move {
            client
                .get(url)
                .header("Cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    let res = page(first.clone()).await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page carries a CSRF token")
        .to_owned();

    // Logout ends the session on the server: the old cookie is refused afterwards.
    let res = client
        .post(format!("{}/ui/logout", app.address))
        .header("Cookie", &first)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let res = page(first.clone()).await;
    assert_eq!(res.status(), 303, "the logged-out cookie is refused");
    assert!(res.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/login"));
    let res = client
        .get(format!("{}/incidents", app.address))
        .header("Cookie", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        page(second.clone()).await.status(),
        200,
        "the other session lives on"
    );

    // A session past its expiry is refused; the same one in the future is taken.
    let cookie_value = "ab".repeat(32);
    let key = incidentpost::sources::signature::sha256_hex(cookie_value.as_bytes());
    let cookie = format!("{}={cookie_value}", incidentpost::web::SESSION_COOKIE);
    app.store
        .put_session(&key, chrono::Utc::now() - chrono::Duration::minutes(1))
        .unwrap();
    assert_eq!(page(cookie.clone()).await.status(), 303, "expired");
    app.store
        .put_session(&key, chrono::Utc::now() + chrono::Duration::minutes(5))
        .unwrap();
    assert_eq!(page(cookie.clone()).await.status(), 200, "unexpired");
    // A session cookie no longer derived from the token: the old scheme's value is nothing.
    let old = incidentpost::sources::signature::hmac_sha256_hex(
        TOKEN.as_bytes(),
        &[b"incidentpost-ui-session-v1"],
    );
    let res = page(format!("{}={old}", incidentpost::web::SESSION_COOKIE)).await;
    assert_eq!(res.status(), 303);
}

#[tokio::test]
async fn the_session_cookie_is_secure_behind_https_and_lasts_the_configured_hours() {
    let app = crate::helpers::spawn_app_with(
        &format!(
            "[server]\npublic_url = 'https://incidents.example.com'\nallowed_hosts = ['127.0.0.1']\n\
             [api]\ntoken = '{TOKEN}'\nsession_ttl_hours = 2"
        ),
        None,
    )
    .await;
    let res = no_redirects()
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", TOKEN), ("next", "/ui\r\nSet-Cookie: x=y")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        "/ui",
        "a bad next falls back to /ui"
    );
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=7200",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{part} missing in {cookie}");
    }
}

#[tokio::test]
async fn failed_tokens_and_logins_are_limited_per_client_address() {
    let app = crate::helpers::spawn_app_with(&format!("[api]\ntoken = '{TOKEN}'"), None).await;
    let get = |token: &'static str| {
        app.client
            .get(format!("{}/incidents", app.address))
            .bearer_auth(token)
            .send()
    };
    for i in 0..10 {
        assert_eq!(get("wrong-guess").await.unwrap().status(), 401, "guess {i}");
    }
    let res = get("wrong-guess").await.unwrap();
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Locked out: even the right token is not tried, so a lockout tells a guesser nothing.
    assert_eq!(get(TOKEN).await.unwrap().status(), 429);
    let res = no_redirects()
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // Webhooks are not behind the API's limit.
    let body = pd_v3(
        "incident.triggered",
        "PLIMIT",
        "01LIMIT",
        &crate::helpers::at_offset(-1),
    );
    assert_eq!(app.post_pagerduty(&body).await.status(), 202);
}

#[tokio::test]
async fn errors_are_json_on_every_route_and_pack_files_carry_a_policy() {
    let app = spawn_app().await;
    let big = vec![b'a'; 2 << 20];
    let res = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );
    let res = app
        .client
        .patch(format!("{}/incidents/PX", app.address))
        .header("Content-Type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    let body = pd_v3(
        "incident.triggered",
        "PCSP",
        "01CSP",
        &crate::helpers::at_offset(-1),
    );
    assert_eq!(app.post_pagerduty(&body).await.status(), 202);
    for file in ["timeline.svg", "postmortem.md", "hn-post.txt", "pack.zip"] {
        let res = app.get(&format!("/incidents/PCSP/{file}")).await;
        assert_eq!(res.status(), 200, "{file}");
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{file}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("sandbox"),
            "{file}: {csp}"
        );
    }
}

// ---- time sanity ----

fn root_cause_section(md: &str) -> String {
    let start = md.find("## Root Cause\n").expect("a Root Cause section");
    md[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn an_annotation_dated_in_the_future_does_not_outrank_a_later_edit() {
    let app = spawn_app().await;
    let trigger = pd_v3(
        "incident.triggered",
        "PFUTURE",
        "01FUTURE",
        &crate::helpers::at_offset(-10),
    );
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    // A chat annotation whose ts is 20 hours ahead (inside the one-day tolerance).
    let ts = format!("{}.000100", chrono::Utc::now().timestamp() + 20 * 3600);
    let mut v: Value = serde_json::from_slice(&slack_message(
        "Ev0FUTURE",
        "C0FUTURE",
        &ts,
        "root cause: the clock of a future message https://acme.pagerduty.com/incidents/PFUTURE",
    ))
    .unwrap();
    v["event"]["text"] =
        "root cause: the clock of a future message https://acme.pagerduty.com/incidents/PFUTURE"
            .into();
    let res = app.post_slack(&serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(res.status(), 202);
    let md = app
        .get("/incidents/PFUTURE/postmortem.md")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        root_cause_section(&md).contains("future message"),
        "the annotation counts first:\n{md}"
    );

    let res = app
        .client
        .patch(format!("{}/incidents/PFUTURE", app.address))
        .json(&json!({"root_cause": "the edit made afterwards"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let md = app
        .get("/incidents/PFUTURE/postmortem.md")
        .await
        .text()
        .await
        .unwrap();
    let root = root_cause_section(&md);
    assert!(
        root.contains("the edit made afterwards"),
        "the later edit wins:\n{root}"
    );
    assert!(!root.contains("future message"), "{root}");
}

#[tokio::test]
async fn an_undated_imported_timeline_never_lands_in_the_future() {
    let app = spawn_app().await;
    let now = chrono::Utc::now();
    // Clock times from two hours ago to two hours ahead: pasted without a date, the whole
    // timeline is placed on the latest day that keeps every line in the past.
    let line = |offset_mins: i64, text: &str| {
        format!(
            "{} UTC [PagerDuty] {text}",
            (now + chrono::Duration::minutes(offset_mins)).format("%H:%M")
        )
    };
    let text = [
        line(-120, "CRITICAL: checkout errors"),
        line(-60, "Acknowledged by @sarah"),
        line(120, "Resolved"),
    ]
    .join("\n");
    let res = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["incident_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = app.events(&id).await;
    assert!(!events.is_empty());
    for e in &events {
        let at: chrono::DateTime<chrono::Utc> = e["occurred_at"].as_str().unwrap().parse().unwrap();
        assert!(
            at <= chrono::Utc::now(),
            "{} is in the future",
            e["occurred_at"]
        );
    }
    // Order kept: the first line is still first, the resolve last.
    let times: Vec<&str> = events
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
}

#[tokio::test]
async fn rotating_the_api_token_ends_the_page_sessions() {
    let app = crate::helpers::spawn_app_with(&format!("[api]\ntoken = '{TOKEN}'"), None).await;
    let cookie = crate::helpers::login_cookie(&app, TOKEN).await;
    let dir = app.stop().await;
    // A restart with the same token keeps the session...
    let app = crate::helpers::spawn_app_with(&format!("[api]\ntoken = '{TOKEN}'"), Some(dir)).await;
    let page = |app: &TestApp| {
        no_redirects()
            .get(format!("{}/ui", app.address))
            .header("Cookie", cookie.clone())
            .send()
    };
    assert_eq!(page(&app).await.unwrap().status(), 200);
    let dir = app.stop().await;
    // ...a new token ends it.
    let app =
        crate::helpers::spawn_app_with("[api]\ntoken = 'the-rotated-token-9876543210'", Some(dir))
            .await;
    assert_eq!(page(&app).await.unwrap().status(), 303);
}

#[tokio::test]
async fn another_port_or_scheme_on_the_same_host_is_another_site() {
    let app = spawn_app().await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    for (origin, fetch_site) in [
        ("http://localhost:3000".to_owned(), None),
        ("http://127.0.0.1:3000".to_owned(), None),
        (format!("https://127.0.0.1:{port}"), None),
        (format!("http://127.0.0.1:{port} evil"), None),
        (format!("http://127.0.0.1:{port}"), Some("same-site")),
    ] {
        let mut req = app
            .client
            .post(format!("{}/incidents/import", app.address))
            .header("Origin", &origin)
            .body("09:00 UTC [Slack] forged");
        if let Some(s) = fetch_site {
            req = req.header("Sec-Fetch-Site", s);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403, "{origin} {fetch_site:?}");
        assert_eq!(
            res.headers()["x-content-type-options"],
            "nosniff",
            "refusals carry nosniff"
        );
    }
    assert!(app.incidents().await.is_empty());
}

#[tokio::test]
async fn requests_without_a_readable_host_and_compressed_bodies_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    for head in [
        "GET /incidents HTTP/1.0\r\n\r\n".to_owned(),
        "GET /incidents HTTP/1.1\r\nHost: [::1]evil\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET http://evil.test/incidents HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut out),
        )
        .await
        .unwrap()
        .unwrap();
        let status = String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        assert!(status.contains(" 421 "), "{head:?}: {status}");
    }
    let res = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .header("Content-Encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unsupported_encoding"
    );
    let res = app
        .client
        .post(format!("{}/ui/import", app.address))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("nothing=here")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(
        res.json::<Value>().await.unwrap()["error"]["code"].is_string(),
        "form errors are JSON"
    );
}

#[tokio::test]
async fn text_from_outside_cannot_start_a_heading_or_list_in_the_postmortem() {
    let app = spawn_app().await;
    let text = "14:00 UTC [PagerDuty] CRITICAL: checkout down\n\
                14:02 UTC [Slack] @sarah: root cause: # Injected root\n\
                14:05 UTC [Slack] @mike: mitigation: ## Injected mitigation\n\
                14:30 UTC [PagerDuty] Resolved";
    let res = app
        .client
        .post(format!("{}/incidents/import?date=2026-01-10", app.address))
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["incident_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .client
        .patch(format!("{}/incidents/{id}", app.address))
        .json(&json!({"summary": "### Injected summary", "customer_message": "1. Injected list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let md = app
        .get(&format!("/incidents/{id}/postmortem.md"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        md.contains("Injected root") && md.contains("Injected summary"),
        "{md}"
    );
    for line in md.lines() {
        let l = line.trim_start_matches("- ").trim_start();
        assert!(
            !(l.starts_with('#') && l.contains("Injected")),
            "a heading from outside: {line}"
        );
        assert!(!l.starts_with("1. Injected"), "a list from outside: {line}");
    }
    let html = incidentpost::web::markdown_to_html(&md);
    assert!(
        !html.contains("<h1>Injected")
            && !html.contains("<h2>Injected")
            && !html.contains("<h3>Injected"),
        "{html}"
    );
}
