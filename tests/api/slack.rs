//! Slack Events API: handshake, signature vector, replay window, messages, edits, bots.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn url_verification_is_answered_with_the_challenge() {
    let app = spawn_app().await;
    let res = app
        .post_slack(&fixture_bytes("slack/url_verification.zulip.json"))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let expected = fixture_json("slack/url_verification.zulip.json")["challenge"].clone();
    assert_eq!(body["challenge"], expected);
}

#[tokio::test]
async fn a_recorded_message_becomes_a_chat_event_once() {
    let app = spawn_app().await;
    let body = fixture_bytes("slack/event_callback.message.zulip.json");
    assert_eq!(app.post_slack(&body).await.status(), 202);
    // Slack's retry carries the same event_id.
    assert_eq!(app.post_slack(&body).await.status(), 200);
    let events = app.unattached().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["kind"], "chat.message");
    assert_eq!(
        e["title"],
        "@U06NU4E26M9: 'Hello, this is a normal text message'"
    );
    assert_eq!(e["occurred_at"], "2024-06-24T06:11:46.817929Z");
    assert_eq!(e["keys"]["slack_channel"], "C06NRA6JLER");
    assert_eq!(e["keys"]["slack_thread"], "C06NRA6JLER:1719209506.817929");
}

#[tokio::test]
async fn the_app_mention_of_a_stored_message_is_not_stored_twice() {
    let app = spawn_app().await;
    let mut mention = fixture_json("slack/event_callback.app_mention.slack-docs.json");
    assert_eq!(
        app.post_slack(&serde_json::to_vec(&mention).unwrap())
            .await
            .status(),
        202
    );
    // The `message` event for the same channel + ts, with its own event_id.
    mention["event_id"] = "Ev-other".into();
    mention["event"]["type"] = "message".into();
    assert_eq!(
        app.post_slack(&serde_json::to_vec(&mention).unwrap())
            .await
            .status(),
        200
    );
    assert_eq!(app.unattached().await.len(), 1);
}

#[tokio::test]
async fn every_documented_payload_shape_is_accepted() {
    // Placeholder values (see SOURCES.md): these check that every field deserializes.
    for (file, stored) in [
        ("shape.MessagePayload.java-slack-sdk.json", true),
        ("shape.MessageChangedPayload.java-slack-sdk.json", true),
        ("shape.AppMentionPayload.java-slack-sdk.json", true),
        ("shape.MessageBotPayload.java-slack-sdk.json", false),
        ("shape.ReactionAddedPayload.java-slack-sdk.json", false),
    ] {
        let app = spawn_app().await;
        let mut v = fixture_json(&format!("slack/{file}"));
        // The shapes carry empty placeholders where a real delivery has values.
        v["type"] = "event_callback".into();
        v["event_id"] = "Ev-shape".into();
        v["event_time"] = chrono::Utc::now().timestamp().into();
        let res = app.post_slack(&serde_json::to_vec(&v).unwrap()).await;
        assert!(res.status().is_success(), "{file}: {}", res.status());
        let body: Value = res.json().await.unwrap();
        let n = body["event_ids"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(n > 0, stored, "{file}: {body}");
        app.stop().await;
    }
}

#[tokio::test]
async fn annotation_messages_become_annotation_events_too() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let body = slack_message(
        "Ev1",
        "C1",
        &format!("{now}.000100"),
        "<@U999> root cause: connection leak in user-sync",
    );
    assert_eq!(app.post_slack(&body).await.status(), 202);
    let body = slack_message(
        "Ev2",
        "C1",
        &format!("{now}.000200"),
        "action HIGH: alert on pool saturation",
    );
    assert_eq!(app.post_slack(&body).await.status(), 202);
    let kinds: Vec<(String, String)> = app
        .unattached()
        .await
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["title"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(
            "annotation.root_cause".into(),
            "Root cause: connection leak in user-sync".into()
        )),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(
            "annotation.action_item".into(),
            "Action (HIGH): alert on pool saturation".into()
        )),
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|(k, _)| k == "chat.message").count(), 2);
}

#[test]
fn slack_docs_signature_vector_passes() {
    use chrono::TimeZone;
    use incidentpost::sources::slack::verify_signature;
    use incidentpost::sources::VerifyError;
    let v = fixture_json("slack/signature-test-vector.slack-docs.json");
    let secret = v["signing_secret"].as_str().unwrap().as_bytes();
    let ts = v["headers"]["X-Slack-Request-Timestamp"].as_str().unwrap();
    let sig = v["expected_signature"].as_str().unwrap();
    let body = v["raw_body"].as_str().unwrap().as_bytes();
    let then = chrono::Utc.timestamp_opt(ts.parse().unwrap(), 0).unwrap();
    assert_eq!(
        verify_signature(secret, Some(ts), Some(sig), body, then, 300),
        Ok(())
    );
    let later = then + chrono::Duration::minutes(6);
    assert_eq!(
        verify_signature(secret, Some(ts), Some(sig), body, later, 300),
        Err(VerifyError::Stale)
    );
    assert_eq!(
        verify_signature(secret, Some(ts), Some(sig), b"x", then, 300),
        Err(VerifyError::Mismatch)
    );
}

#[tokio::test]
async fn stale_tampered_and_unsigned_slack_requests_get_401() {
    let app = spawn_app().await;
    let body = fixture_bytes("slack/event_callback.message.zulip.json");
    let old = (chrono::Utc::now().timestamp() - 600).to_string();
    let res = app.post_slack_at(&body, &old).await;
    assert_eq!(res.status(), 401);
    let json: Value = res.json().await.unwrap();
    assert_eq!(json["error"]["code"], "stale_timestamp");
    let res = app.post_webhook("slack", &body, &[]).await;
    assert_eq!(res.status(), 401);
    let ts = chrono::Utc::now().timestamp().to_string();
    let res = app
        .post_webhook(
            "slack",
            &body,
            &[
                ("X-Slack-Request-Timestamp", ts),
                ("X-Slack-Signature", "v0=00".into()),
            ],
        )
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(app.post_slack(b"{\"type\":").await.status(), 400);
    assert!(app.unattached().await.is_empty());
}
