//! People named once across sources (without `[[people]]`, through a Slack `users.info`
//! double serving recorded answers), and what the public files must never carry.

use serde_json::Value;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;
use crate::pack::{section, stored_pack, unzip};
use crate::replay::post_seed_incident;

async fn slack_double() -> MockServer {
    let slack = MockServer::start().await;
    for id in ["U0SARAH", "U0MIKE"] {
        Mock::given(method("GET"))
            .and(path("/api/users.info"))
            .and(query_param("user", id))
            .and(header("authorization", "Bearer xoxb-test-bot-token"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_bytes(fixture_bytes(&format!("slack-api/users.info.{id}.json")))
                    .insert_header("content-type", "application/json"),
            )
            .mount(&slack)
            .await;
    }
    slack
}

fn slack_settings(slack: &MockServer) -> String {
    format!(
        "[sources.slack]\nbot_token = 'xoxb-test-bot-token'\napi_url = '{}/api'\n",
        slack.uri()
    )
}

async fn lookups_of(slack: &MockServer, id: &str) -> usize {
    slack
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.query().unwrap_or("").contains(&format!("user={id}")))
        .count()
}

#[tokio::test]
async fn without_a_people_map_slack_names_the_ids_once_and_the_pack_shows_two_people() {
    let slack = slack_double().await;
    let app = spawn_app_with(&slack_settings(&slack), None).await;
    post_seed_incident(&app).await;
    let files = unzip(&stored_pack(&app, "PSEED01").await);
    let md = &files["postmortem.md"];
    // Slack ids by their real names; the PagerDuty agent "Sarah Chen" is the same
    // person; the GitHub login `mike` is Slack's `mike`.
    assert!(md.contains("\nResponders: Sarah Chen, Mike Ross •"), "{md}");
    assert!(!md.contains("@U0"), "{md}");
    // The incident page names them the same way.
    let page = app.get("/ui/incidents/PSEED01").await.text().await.unwrap();
    assert!(page.contains("Sarah Chen, Mike Ross"), "{page}");
    assert!(!page.contains("@U0SARAH"), "{page}");
    // Cached in the store: another render asks Slack nothing new.
    let before = lookups_of(&slack, "U0SARAH").await;
    assert_eq!(before, 1);
    let res = app
        .client
        .post(format!("{}/incidents/PSEED01/render", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(lookups_of(&slack, "U0SARAH").await, 1);
    assert_eq!(lookups_of(&slack, "U0MIKE").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_slack_never_blocks_or_fails_the_render() {
    let slack = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users.info"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&slack)
        .await;
    let app = spawn_app_with(&slack_settings(&slack), None).await;
    post_seed_incident(&app).await;
    let md = unzip(&stored_pack(&app, "PSEED01").await)["postmortem.md"].clone();
    // The ids are all that is known: shown as they are, each person once.
    assert!(
        md.contains("\nResponders: Sarah Chen, @U0SARAH, @U0MIKE, @mike •"),
        "{md}"
    );
    // A Slack that answers `user_not_found` is remembered, not asked again.
    let slack = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users.info"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_bytes(fixture_bytes("slack-api/users.info.user_not_found.json")),
        )
        .mount(&slack)
        .await;
    let app = spawn_app_with(&slack_settings(&slack), None).await;
    post_seed_incident(&app).await;
    stored_pack(&app, "PSEED01").await;
    app.client
        .post(format!("{}/incidents/PSEED01/render", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(lookups_of(&slack, "U0SARAH").await, 1);
}

/// An incident whose chat carries an email, an IP, a Slack token and an AWS key.
async fn leaky_incident(app: &TestApp) {
    app.post_pagerduty(&pd_v3("incident.triggered", "PLEAK", "L1", &at_offset(-20)))
        .await;
    let text = "root cause: api-7 at 10.20.30.40 sent sarah.chen@example.com a token \
                xoxb-123456789012-abcdefghijkl signed with AKIAIOSFODNN7EXAMPLE";
    let ts = format!("{}.000100", chrono::Utc::now().timestamp() - 600);
    assert_eq!(
        app.post_slack(&slack_message("Ev-L1", "C-LEAK", &ts, text))
            .await
            .status(),
        202
    );
    let ts = format!("{}.000200", chrono::Utc::now().timestamp() - 500);
    app.post_slack(&slack_message(
        "Ev-L2",
        "C-LEAK",
        &ts,
        "mitigation: rotated the key of build-3.corp.example.com",
    ))
    .await;
    app.post_pagerduty(&pd_v3("incident.resolved", "PLEAK", "L2", &at_offset(-1)))
        .await;
}

const SECRETS: [&str; 4] = [
    "10.20.30.40",
    "sarah.chen@example.com",
    "xoxb-123456789012-abcdefghijkl",
    "AKIAIOSFODNN7EXAMPLE",
];

#[tokio::test]
async fn public_files_are_redacted_and_postmortem_md_keeps_them_unless_told() {
    let app = spawn_app_with(
        "[render]\nredact_patterns = ['[a-z0-9-]+\\.corp\\.example\\.com']\n",
        None,
    )
    .await;
    leaky_incident(&app).await;
    let files = unzip(&stored_pack(&app, "PLEAK").await);
    for name in ["hn-post.txt", "twitter-thread.txt"] {
        let text = &files[name];
        for secret in SECRETS.iter().chain(&["build-3.corp.example.com"]) {
            assert!(!text.contains(secret), "{name} has {secret}:\n{text}");
        }
        assert!(text.contains("[redacted]"), "{name}:\n{text}");
    }
    let md = &files["postmortem.md"];
    // Internal: the root cause keeps what the responders wrote…
    for secret in SECRETS {
        assert!(
            section(md, "Root Cause").join(" ").contains(secret),
            "{secret}:\n{md}"
        );
    }
    // …but the message to users is public.
    let users = section(md, "To Our Users").join(" ");
    for secret in SECRETS {
        assert!(!users.contains(secret), "{secret} in: {users}");
    }
    // The manifest counts the marks of each file.
    let manifest: Value = serde_json::from_str(&files["manifest.json"]).unwrap();
    let count = |name: &str| {
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["redactions"]
            .as_u64()
            .unwrap() as usize
    };
    for name in ["postmortem.md", "hn-post.txt", "twitter-thread.txt"] {
        assert_eq!(
            count(name),
            files[name].matches("[redacted]").count(),
            "{name}"
        );
    }
    assert!(count("hn-post.txt") >= 5, "{manifest}");
    app.stop().await;

    let app = spawn_app_with("[render]\nredact_internal = true\n", None).await;
    leaky_incident(&app).await;
    let md = unzip(&stored_pack(&app, "PLEAK").await)["postmortem.md"].clone();
    for secret in SECRETS {
        assert!(!md.contains(secret), "{secret}:\n{md}");
    }
}

#[tokio::test]
async fn a_bad_redact_pattern_or_people_entry_stops_the_start_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        (
            "[render]\nredact_patterns = ['(']\n",
            "render.redact_patterns",
        ),
        ("[[people]]\nname = ''\n", "people"),
        (
            "[[people]]\nname = 'A'\nslack = ['U1']\n[[people]]\nname = 'B'\nslack = ['U1']\n",
            "people",
        ),
    ];
    for (toml, key) in bad {
        let base = format!("[storage]\npath = '{}'\n", dir.path().display());
        let err = incidentpost::config::Settings::from_toml_layers(&[&base, toml])
            .err()
            .unwrap_or_else(|| panic!("{toml} accepted"));
        assert!(err.to_string().contains(key), "{toml}: {err}");
    }
}
