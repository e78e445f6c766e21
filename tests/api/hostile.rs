//! Hostile input: every parser of outside input, fed arbitrary and mutated data, never
//! panics (property tests; bounded by PROPTEST_CASES, 256 by default per property).

use chrono::Utc;
use incidentpost::config::{CloudWatchSourceSettings, Secret};
use incidentpost::sources::{self, Headers, WebhookSource};
use proptest::prelude::*;

fn all_sources() -> Vec<(&'static str, Box<dyn WebhookSource>)> {
    vec![
        (
            "pagerduty",
            Box::new(sources::pagerduty::PagerDuty::new(None)),
        ),
        ("datadog", Box::new(sources::datadog::Datadog::new(None))),
        ("github", Box::new(sources::github::Github::new(None))),
        (
            "slack",
            Box::new(sources::slack::Slack::new(None, true, 300)),
        ),
        (
            "cloudwatch",
            Box::new(sources::cloudwatch::CloudWatch::new(
                &CloudWatchSourceSettings {
                    enabled: true,
                    token: Secret::default(),
                    sns_base_url: String::new(),
                    sns_auto_confirm: false,
                    sns_topic_arns: vec![],
                },
            )),
        ),
    ]
}

/// Recorded payloads of every provider, to mutate.
fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in ["pagerduty", "datadog", "github", "slack", "cloudwatch"] {
        for entry in std::fs::read_dir(crate::helpers::fixture_path(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(std::fs::read(path).unwrap());
            }
        }
    }
    out
}

fn headers_for(source: &str) -> Headers {
    Headers::new([
        (
            "X-GitHub-Event",
            if source == "github" {
                "pull_request"
            } else {
                "push"
            }
            .to_owned(),
        ),
        ("X-GitHub-Delivery", "d".to_owned()),
        ("x-amz-sns-message-type", "Notification".to_owned()),
    ])
}

proptest! {
    #[test]
    fn normalizers_never_panic_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        for (name, s) in all_sources() {
            let _ = s.normalize(&headers_for(name), &body, Utc::now());
        }
    }

    #[test]
    fn normalizers_never_panic_on_mutated_recorded_payloads(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let corpus = corpus();
        let mut body = corpus[pick.index(corpus.len())].clone();
        for (at, byte) in edits {
            let i = at.index(body.len().max(1)).min(body.len().saturating_sub(1));
            if !body.is_empty() {
                body[i] = byte;
            }
        }
        for (name, s) in all_sources() {
            let _ = s.normalize(&headers_for(name), &body, Utc::now());
        }
    }

    #[test]
    fn json_values_of_any_shape_never_panic(v in json_value()) {
        let body = serde_json::to_vec(&serde_json::json!({"event": v.clone(), "messages": [v.clone()], "title": v.clone(), "type": "event_callback", "event_id": "E", "detail": v})).unwrap();
        for (name, s) in all_sources() {
            let _ = s.normalize(&headers_for(name), &body, Utc::now());
        }
    }

    #[test]
    fn signature_and_token_checks_never_panic(header in ".{0,200}", ts in ".{0,20}", body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = sources::pagerduty::verify_signature(b"k", Some(&header), &body);
        let _ = sources::github::verify_signature(b"k", Some(&header), &body);
        let _ = sources::slack::verify_signature(b"k", Some(&ts), Some(&header), &body, Utc::now(), 300);
        let _ = sources::signature::verify_token("t", Some(&header), "X");
        let _ = sources::cloudwatch::verify_sns(&body, &body);
    }

    #[test]
    fn text_parsers_never_panic(s in "\\PC{0,300}") {
        let _ = sources::time::parse_rfc3339(&s);
        let _ = sources::time::parse_aws(&s);
        let _ = sources::time::parse_epoch_millis(&s);
        let _ = sources::time::parse_epoch_seconds(&s);
        let _ = sources::extract_measure(&s);
        let _ = sources::incident_ref_in(&s);
        let _ = sources::slack::plain_text(&s);
        let _ = incidentpost::annotations::parse(&s);
        let _ = incidentpost::domain::IncidentId::parse(&s);
        let _ = sources::github::parse_version(&s);
    }

    #[test]
    fn pasted_timelines_never_panic_and_report_every_unread_line(lines in proptest::collection::vec(timeline_line(), 0..30)) {
        let text = lines.join("\n");
        if let Ok(imported) = incidentpost::postmortem::import::parse(&text, None, None) {
            for s in &imported.skipped {
                prop_assert!(s.line >= 1 && s.line <= lines.len());
            }
            let templates = incidentpost::postmortem::Templates::load(None).unwrap();
            let pack = incidentpost::postmortem::render_pack(&templates, &imported.incident, &imported.events).unwrap();
            prop_assert_eq!(pack.files.len(), 7);
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("event_type".to_owned()),
                    Just("data".to_owned()),
                    Just("title".to_owned()),
                    Just("occurred_at".to_owned()),
                    "[a-z_]{1,12}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn timeline_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[0-2][0-9]:[0-5][0-9]",
            "(PagerDuty|Datadog|Slack|GitHub|AWS CloudWatch|X)",
            "\\PC{0,60}"
        )
            .prop_map(|(t, s, x)| format!("{t} UTC [{s}] {x}")),
        "\\PC{0,80}",
        Just("root cause: something".to_owned()),
        Just("January 10, 2026".to_owned()),
    ]
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::helpers::spawn_app_with("[server]\nrequest_timeout_secs = 1", None).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/pagerduty HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"event\":")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server answers instead of waiting forever")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(app.incidents().await.is_empty());
}
