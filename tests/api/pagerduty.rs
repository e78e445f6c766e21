//! PagerDuty webhooks: every recorded fixture, signatures, bad input, retries.

use serde_json::Value;

use crate::helpers::*;

/// (fixture, incident id, kind, title) for every recorded incident payload.
const V3_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "v3-incident.triggered.zulip.json",
        "PFQZPSY",
        "incident.triggered",
        "CRITICAL: Test Incident 3",
    ),
    (
        "v3-incident.acknowledged.zulip.json",
        "PQ1K5C8",
        "incident.acknowledged",
        "@PIG 208 acknowledged",
    ),
    (
        "v3-incident.unacknowledged.zulip.json",
        "PQ1K5C8",
        "incident.unacknowledged",
        "Acknowledgement timed out; incident re-triggered",
    ),
    (
        "v3-incident.resolved.zulip.json",
        "PCPZE64",
        "incident.resolved",
        "Incident resolved",
    ),
    (
        "v3-incident.annotated.zulip.json",
        "Q3B15VLMF3ASBD",
        "incident.note",
        "@Harsh Santwani: 'Running KILL on long-running queries from the reporting-service.'",
    ),
    (
        "v3-incident.escalated.zulip.json",
        "Q3B15VLMF3ASBD",
        "incident.escalated",
        "Escalated to @Harsh Santwani",
    ),
    (
        "v3-incident.reassigned.zulip.json",
        "PIQUG8X",
        "incident.reassigned",
        "Reassigned to @Test User",
    ),
    (
        "v3-incident.priority_updated.zulip.json",
        "Q3B15VLMF3ASBD",
        "incident.priority_changed",
        "Priority set to P2",
    ),
    (
        "v3-incident.priority_updated.developer-docs.json",
        "PGR0VU2",
        "incident.priority_changed",
        "Priority set to P1",
    ),
    (
        "v3-incident.responder.added.zulip.json",
        "Q3B15VLMF3ASBD",
        "incident.responder_added",
        "@Harsh Santwani added @Harsh Santwani as a responder",
    ),
    (
        "v3-incident.status_update_published.zulip.json",
        "Q3B15VLMF3ASBD",
        "incident.status_update",
        "Status update: 'Investigating a P1 incident with the Checkout API in us-east-1.",
    ),
];

const V2_CASES: &[(&str, &str, &str)] = &[
    (
        "v2-messages-incident.trigger.developer-docs.json",
        "incident.triggered",
        "CRITICAL: My new incident",
    ),
    (
        "v2-messages-incident.acknowledge.developer-docs.json",
        "incident.acknowledged",
        "@Laura Haley acknowledged",
    ),
    (
        "v2-messages-incident.assign.developer-docs.json",
        "incident.reassigned",
        "Reassigned to",
    ),
    (
        "v2-messages-incident.resolve.developer-docs.json",
        "incident.resolved",
        "Incident resolved",
    ),
];

async fn only_event(app: &TestApp, incident: &str) -> Value {
    let events = app.events(incident).await;
    assert_eq!(events.len(), 1, "{incident}: {events:#?}");
    events[0].clone()
}

#[tokio::test]
async fn every_v3_incident_fixture_is_accepted_and_becomes_the_right_event() {
    for (file, incident, kind, title) in V3_CASES {
        // A fresh service per case so each incident holds exactly this event.
        let app = spawn_app().await;
        let body = fixture_bytes(&format!("pagerduty/{file}"));
        let res = app.post_pagerduty(&body).await;
        assert_eq!(res.status(), 202, "{file}: {}", res.text().await.unwrap());
        let ev = only_event(&app, incident).await;
        assert_eq!(ev["kind"], *kind, "{file}");
        assert!(
            ev["title"].as_str().unwrap().starts_with(title),
            "{file}: title {} should start with {title}",
            ev["title"]
        );
        assert_eq!(ev["source"], "pagerduty", "{file}");
        assert_eq!(ev["correlation"], "explicit", "{file}");
        assert_eq!(ev["keys"]["pagerduty_incident"], *incident, "{file}");
        app.stop().await;
    }
}

#[tokio::test]
async fn every_v2_message_fixture_is_accepted() {
    for (file, kind, title) in V2_CASES {
        let app = spawn_app().await;
        let res = app
            .post_pagerduty(&fixture_bytes(&format!("pagerduty/{file}")))
            .await;
        assert_eq!(res.status(), 202, "{file}");
        let ev = only_event(&app, "PRORDTY").await;
        assert_eq!(ev["kind"], *kind, "{file}");
        assert!(
            ev["title"].as_str().unwrap().starts_with(title),
            "{file}: {}",
            ev["title"]
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn incident_created_from_a_fixture_carries_its_details() {
    let app = spawn_app().await;
    let res = app
        .post_pagerduty(&fixture_bytes(
            "pagerduty/v3-incident.priority_updated.developer-docs.json",
        ))
        .await;
    assert_eq!(res.status(), 202);
    let inc = app.get_json("/incidents/PGR0VU2").await;
    assert_eq!(inc["title"], "A little bump in the road");
    assert_eq!(inc["service"], "API Service");
    assert_eq!(inc["priority"], "P1");
    assert_eq!(inc["severity"], "critical");
    assert_eq!(inc["url"], "https://acme.pagerduty.com/incidents/PGR0VU2");
}

#[test]
fn go_pagerduty_signature_vector_passes() {
    use incidentpost::sources::pagerduty::verify_signature;
    use incidentpost::sources::VerifyError;
    let v = fixture_json("pagerduty/v3-signature-test-vector.go-pagerduty.json");
    let secret = v["secret"].as_str().unwrap().as_bytes();
    let body = fixture_bytes("pagerduty/v3-signature-test-vector.body.go-pagerduty.txt");
    assert_eq!(
        body,
        v["body"].as_str().unwrap().as_bytes(),
        "stored body is byte-exact"
    );
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let header = case["header_value"].as_str().unwrap();
        let body: &[u8] = match case.get("body_override") {
            Some(b) => b.as_str().unwrap().as_bytes(),
            None => &body,
        };
        let header = (!header.is_empty()).then_some(header);
        let got = verify_signature(secret, header, body);
        match case["expect"].as_str().unwrap() {
            "valid" => assert_eq!(got, Ok(()), "{name}"),
            "ErrMalformedHeader" => assert!(
                matches!(
                    got,
                    Err(VerifyError::Missing(_) | VerifyError::Malformed(_))
                ),
                "{name}: {got:?}"
            ),
            _ => assert_eq!(got, Err(VerifyError::Mismatch), "{name}"),
        }
    }
}

#[tokio::test]
async fn go_pagerduty_vector_is_accepted_over_http_with_its_secret() {
    let v = fixture_json("pagerduty/v3-signature-test-vector.go-pagerduty.json");
    let secret = v["secret"].as_str().unwrap();
    let app = spawn_app_with(&format!("[sources.pagerduty]\nsecret = '{secret}'"), None).await;
    let body = fixture_bytes("pagerduty/v3-signature-test-vector.body.go-pagerduty.txt");
    let res = app
        .post_pagerduty_with(
            &body,
            Some(v["cases"][0]["header_value"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(res.status(), 202);
    assert_eq!(app.events("PGR0VU2").await.len(), 1);
}

async fn assert_rejected(res: reqwest::Response, status: u16, code: &str) {
    assert_eq!(res.status().as_u16(), status);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn bad_signatures_get_401_and_store_nothing() {
    let app = spawn_app().await;
    let body = fixture_bytes("pagerduty/v3-incident.triggered.zulip.json");
    let good = pd_sign(PD_SECRET, &body);

    let mut tampered = body.clone();
    let pos = tampered.iter().position(|&b| b == b'3').unwrap();
    tampered[pos] = b'4';
    assert_rejected(
        app.post_pagerduty_with(&tampered, Some(&good), None).await,
        401,
        "invalid_signature",
    )
    .await;

    let wrong = pd_sign("not-the-secret", &body);
    assert_rejected(
        app.post_pagerduty_with(&body, Some(&wrong), None).await,
        401,
        "invalid_signature",
    )
    .await;

    assert_rejected(
        app.post_pagerduty_with(&body, None, None).await,
        401,
        "missing_signature",
    )
    .await;
    assert_rejected(
        app.post_pagerduty_with(&body, Some("sha256=abc"), None)
            .await,
        401,
        "invalid_signature",
    )
    .await;

    assert!(app.incidents().await.is_empty());
    assert_eq!(app.get("/incidents/PFQZPSY").await.status(), 404);
}

#[tokio::test]
async fn malformed_wrong_shape_and_empty_bodies_get_400_and_store_nothing() {
    let app = spawn_app().await;
    let cases: &[(&[u8], &str)] = &[
        (b"{\"event\": ", "malformed_body"),
        (b"not json at all", "malformed_body"),
        (b"{\"hello\": \"world\"}", "invalid_payload"),
        (b"[1, 2, 3]", "invalid_payload"),
        (b"{\"event\": {\"id\": \"X\", \"event_type\": \"incident.triggered\", \"occurred_at\": \"yesterday\", \"data\": {\"id\": \"P1\"}}}", "invalid_payload"),
        (b"{\"event\": {\"id\": \"X\", \"event_type\": \"incident.triggered\", \"occurred_at\": \"2024-01-01T00:00:00Z\", \"data\": {\"title\": \"no id\"}}}", "invalid_payload"),
        (b"{\"messages\": []}", "invalid_payload"),
        (b"", "empty_body"),
    ];
    for (body, code) in cases {
        let res = app.post_pagerduty(body).await;
        assert_eq!(res.status(), 400, "{}", String::from_utf8_lossy(body));
        let json: Value = res.json().await.unwrap();
        assert_eq!(
            json["error"]["code"],
            *code,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(app.incidents().await.is_empty());
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 2048", None).await;
    let body = vec![b' '; 4096];
    assert_rejected(app.post_pagerduty(&body).await, 413, "payload_too_large").await;
    // Chunked (no Content-Length) is cut off while streaming too.
    let stream =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
    let res = app
        .client
        .post(format!("{}/webhooks/pagerduty", app.address))
        .header("X-PagerDuty-Signature", "v1=00")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_rejected(res, 413, "payload_too_large").await;
    assert!(app.incidents().await.is_empty());
}

#[tokio::test]
async fn the_same_delivery_twice_stores_one_event_and_answers_2xx_both_times() {
    let app = spawn_app().await;
    let body = fixture_bytes("pagerduty/v3-incident.triggered.zulip.json");
    let sig = pd_sign(PD_SECRET, &body);
    let first = app
        .post_pagerduty_with(&body, Some(&sig), Some("wh-1"))
        .await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = app
        .post_pagerduty_with(&body, Some(&sig), Some("wh-1"))
        .await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["event_ids"], first["event_ids"]);
    // Same PagerDuty event through a second subscription (new X-Webhook-Id): still one.
    let third = app
        .post_pagerduty_with(&body, Some(&sig), Some("wh-2"))
        .await;
    assert_eq!(third.status(), 200);
    assert_eq!(app.events("PFQZPSY").await.len(), 1);
    // One delivery key does all of that: `event.id` is in the signed body, so neither
    // the webhook id nor the body's hash is written (a write and a read each per webhook).
    let event_id = serde_json::from_slice::<Value>(&body).unwrap()["event"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = app
        .store
        .delivery(&format!("pagerduty:event:{event_id}"))
        .unwrap()
        .expect("the event's key is stored");
    assert_eq!(stored.event_ids.len(), 1);
    for other in [
        "pagerduty:webhook:wh-1".to_owned(),
        format!(
            "pagerduty:body:{}",
            incidentpost::sources::signature::sha256_hex(&body)
        ),
    ] {
        assert!(app.store.delivery(&other).unwrap().is_none(), "{other}");
    }
}

/// The V2 trigger fixture with one copy of its message per id.
fn v2_trigger_with_ids(ids: &[&str]) -> Vec<u8> {
    let mut v2: Value = serde_json::from_slice(&fixture_bytes(
        "pagerduty/v2-messages-incident.trigger.developer-docs.json",
    ))
    .unwrap();
    let message = v2["messages"][0].clone();
    v2["messages"] = ids
        .iter()
        .map(|id| {
            let mut m = message.clone();
            m["id"] = Value::from(*id);
            m
        })
        .collect();
    serde_json::to_vec(&v2).unwrap()
}

#[tokio::test]
async fn a_v2_body_mixing_stored_and_new_messages_stores_the_new_ones() {
    let app = spawn_app().await;
    let first = app
        .post_pagerduty(&v2_trigger_with_ids(&["m5", "m6"]))
        .await;
    assert_eq!(first.status(), 202);
    // m5 again, with a message not seen before: m7 is stored, m5 is not stored twice.
    let mixed = app
        .post_pagerduty(&v2_trigger_with_ids(&["m7", "m5"]))
        .await;
    assert_eq!(mixed.status(), 202);
    let mixed: Value = mixed.json().await.unwrap();
    assert_eq!(mixed["event_ids"].as_array().unwrap().len(), 1, "{mixed}");
    assert_eq!(app.events("PRORDTY").await.len(), 3);
    // Every message seen: a duplicate, answered with the events stored for them.
    let again = app
        .post_pagerduty(&v2_trigger_with_ids(&["m7", "m5"]))
        .await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["event_ids"].as_array().unwrap().len(), 2, "{again}");
    assert_eq!(app.events("PRORDTY").await.len(), 3);
}

#[tokio::test]
async fn a_v2_message_twice_in_one_body_is_stored_once() {
    let app = spawn_app().await;
    let res = app
        .post_pagerduty(&v2_trigger_with_ids(&["m1", "m1"]))
        .await;
    assert_eq!(res.status(), 202);
    let json: Value = res.json().await.unwrap();
    assert_eq!(json["event_ids"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(app.events("PRORDTY").await.len(), 1);
}

#[tokio::test]
async fn a_v2_message_without_an_id_is_refused_as_it_could_not_be_told_from_another() {
    let app = spawn_app().await;
    let res = app.post_pagerduty(&v2_trigger_with_ids(&[" "])).await;
    assert_eq!(res.status(), 400);
    let json: Value = res.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid_payload", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[].id"),
        "{json}"
    );
    assert!(app.incidents().await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn concurrent_retries_of_one_delivery_store_one_event() {
    let app = spawn_app().await;
    let body = fixture_bytes("pagerduty/v3-incident.triggered.zulip.json");
    let posts = (0..16).map(|_| app.post_pagerduty(&body));
    let statuses: Vec<u16> = futures_util::future::join_all(posts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 200),
        "{statuses:?}"
    );
    assert_eq!(app.events("PFQZPSY").await.len(), 1);
}

#[tokio::test]
async fn non_incident_events_are_acknowledged_without_events() {
    let app = spawn_app().await;
    let res = app
        .post_pagerduty(&fixture_bytes(
            "pagerduty/v3-service.updated.developer-docs.json",
        ))
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["event_ids"].as_array().unwrap().len(), 0);
    assert!(body["ignored"]
        .as_str()
        .unwrap()
        .contains("service.updated"));
    assert!(app.incidents().await.is_empty());
}

#[tokio::test]
async fn unsigned_webhooks_are_accepted_only_when_no_secret_is_configured() {
    let app = spawn_app_with("[sources.pagerduty]\nsecret = ''", None).await;
    let body = fixture_bytes("pagerduty/v3-incident.triggered.zulip.json");
    assert_eq!(
        app.post_pagerduty_with(&body, None, None).await.status(),
        202
    );
}

#[tokio::test]
async fn unknown_and_disabled_sources_get_404() {
    let app = spawn_app_with("[sources.pagerduty]\nenabled = false", None).await;
    let post = |path: &'static str| {
        app.client
            .post(format!("{}{path}", app.address))
            .body("{}")
            .send()
    };
    assert_rejected(
        post("/webhooks/nagios").await.unwrap(),
        404,
        "unknown_source",
    )
    .await;
    assert_rejected(
        post("/webhooks/pagerduty").await.unwrap(),
        404,
        "source_disabled",
    )
    .await;
}
