//! GitHub: every recorded delivery, the docs' signature vector, dedupe, bad input.

use serde_json::Value;

use crate::helpers::*;

/// (fixture, X-GitHub-Event, expected kind or None when only kept as raw, title prefix)
const CASES: &[(&str, &str, Option<&str>, &str)] = &[
    (
        "pull_request.opened.octokit.json",
        "pull_request",
        Some("change.proposed"),
        "PR #",
    ),
    (
        "pull_request.closed.not-merged.octokit.json",
        "pull_request",
        Some("change.proposed"),
        "PR #",
    ),
    (
        "pull_request.synchronize.octokit.json",
        "pull_request",
        None,
        "",
    ),
    (
        "push.with-new-branch.octokit.json",
        "push",
        Some("change.pushed"),
        "Pushed ",
    ),
    (
        "push.tag-deleted.octokit.json",
        "push",
        Some("change.pushed"),
        "Deleted ",
    ),
    (
        "deployment.created.octokit.json",
        "deployment",
        Some("change.deploy_started"),
        "Deploying Hello-World master to production",
    ),
    (
        "deployment_status.created.octokit.json",
        "deployment_status",
        Some("change.deployed"),
        "Deployed Hello-World master to production",
    ),
    (
        "workflow_run.completed.octokit.json",
        "workflow_run",
        Some("ci.succeeded"),
        "Workflow ",
    ),
    (
        "check_run.completed.octokit.json",
        "check_run",
        Some("ci.succeeded"),
        "Check Octocoders-linter succeeded",
    ),
    (
        "workflow_run.requested.octokit.json",
        "workflow_run",
        None,
        "",
    ),
    ("check_run.created.octokit.json", "check_run", None, ""),
    (
        "release.published.octokit.json",
        "release",
        Some("change.released"),
        "Released ",
    ),
    (
        "issues.opened.octokit.json",
        "issues",
        Some("ticket.opened"),
        "Issue #",
    ),
    (
        "issues.reopened.octokit.json",
        "issues",
        Some("ticket.opened"),
        "Issue #",
    ),
    (
        "issue_comment.created.octokit.json",
        "issue_comment",
        Some("chat.message"),
        "@",
    ),
    ("status.octokit.json", "status", None, ""),
    (
        "check_suite.completed.octokit.json",
        "check_suite",
        None,
        "",
    ),
    (
        "workflow_job.completed.failure.octokit.json",
        "workflow_job",
        None,
        "",
    ),
];

#[tokio::test]
async fn every_recorded_delivery_is_accepted_and_normalized() {
    for (i, (file, event, kind, title)) in CASES.iter().enumerate() {
        let app = spawn_app().await;
        let body = fixture_bytes(&format!("github/{file}"));
        let res = app
            .post_github(event, &format!("delivery-{i}"), &body)
            .await;
        assert_eq!(res.status(), 202, "{file}: {}", res.text().await.unwrap());
        let events = app.unattached().await;
        match kind {
            Some(kind) => {
                assert_eq!(events.len(), 1, "{file}: {events:#?}");
                assert_eq!(events[0]["kind"], *kind, "{file}");
                let t = events[0]["title"].as_str().unwrap();
                assert!(t.starts_with(title), "{file}: {t}");
                assert!(events[0]["keys"]["github_repo"].is_string(), "{file}");
            }
            None => assert!(events.is_empty(), "{file}: {events:#?}"),
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn a_merged_pull_request_is_a_merge_and_a_revert_is_a_rollback() {
    // No recorded merged delivery exists (see tests/fixtures/SOURCES.md): derive one from
    // the closed capture by setting what GitHub sets on merge.
    let app = spawn_app().await;
    let mut v = fixture_json("github/pull_request.closed.not-merged.octokit.json");
    v["pull_request"]["merged"] = true.into();
    v["pull_request"]["merged_at"] = "2024-03-13T16:45:00Z".into();
    v["pull_request"]["title"] = "Add user-sync batching".into();
    let res = app
        .post_github("pull_request", "m1", &serde_json::to_vec(&v).unwrap())
        .await;
    assert_eq!(res.status(), 202);
    v["pull_request"]["title"] = "Revert \"Add user-sync batching\"".into();
    v["pull_request"]["number"] = 99.into();
    let res = app
        .post_github("pull_request", "m2", &serde_json::to_vec(&v).unwrap())
        .await;
    assert_eq!(res.status(), 202);
    let events = app.unattached().await;
    let number = fixture_json("github/pull_request.closed.not-merged.octokit.json")["pull_request"]
        ["number"]
        .clone();
    assert_eq!(events[0]["kind"], "change.merged");
    assert_eq!(events[0]["occurred_at"], "2024-03-13T16:45:00Z");
    assert!(events[0]["title"]
        .as_str()
        .unwrap()
        .starts_with(&format!("PR #{number} merged: Add user-sync batching (@")));
    assert_eq!(events[1]["kind"], "change.rolled_back");
}

#[tokio::test]
async fn a_deploy_of_an_older_version_is_a_rollback() {
    let app = spawn_app().await;
    let base = fixture_json("github/deployment_status.created.octokit.json");
    for (i, version) in ["v2.4.0", "v2.3.1"].iter().enumerate() {
        let mut v = base.clone();
        v["deployment"]["ref"] = (*version).into();
        v["deployment_status"]["created_at"] = format!("2024-03-14T14:{}0:00Z", 3 + i).into();
        let res = app
            .post_github(
                "deployment_status",
                &format!("d{i}"),
                &serde_json::to_vec(&v).unwrap(),
            )
            .await;
        assert_eq!(res.status(), 202);
    }
    let events = app.unattached().await;
    assert_eq!(events[0]["kind"], "change.deployed");
    assert_eq!(
        events[0]["title"],
        "Deployed Hello-World v2.4.0 to production"
    );
    assert_eq!(events[1]["kind"], "change.rolled_back");
    assert_eq!(events[1]["title"], "Rolled back Hello-World to v2.3.1");
    assert_eq!(events[1]["attrs"]["previous_version"], "v2.4.0");
}

#[tokio::test]
async fn ping_is_answered_and_redeliveries_store_nothing_new() {
    let app = spawn_app().await;
    let res = app
        .post_github("ping", "p1", &fixture_bytes("github/ping.octokit.json"))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "pong");

    let push = fixture_bytes("github/push.with-new-branch.octokit.json");
    assert_eq!(app.post_github("push", "same", &push).await.status(), 202);
    assert_eq!(app.post_github("push", "same", &push).await.status(), 200);
    assert_eq!(app.unattached().await.len(), 1);
    // `published` and `released` of one release are one timeline entry.
    assert_eq!(
        app.post_github(
            "release",
            "r1",
            &fixture_bytes("github/release.published.octokit.json")
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        app.post_github(
            "release",
            "r2",
            &fixture_bytes("github/release.released.octokit.json")
        )
        .await
        .status(),
        200
    );
}

#[test]
fn github_docs_signature_vector_passes() {
    use incidentpost::sources::github::verify_signature;
    let v = fixture_json("github/signature-test-vector.github-docs.json");
    let secret = v["secret"].as_str().unwrap().as_bytes();
    let body = v["raw_body"].as_str().unwrap().as_bytes();
    let header = v["expected_header_value"].as_str().unwrap();
    assert_eq!(verify_signature(secret, Some(header), body), Ok(()));
    assert!(verify_signature(secret, Some(header), b"Hello, World?").is_err());
    assert!(verify_signature(b"wrong", Some(header), body).is_err());
}

#[tokio::test]
async fn tampered_missing_and_malformed_github_deliveries_are_rejected() {
    let app = spawn_app().await;
    let body = fixture_bytes("github/push.with-new-branch.octokit.json");
    let sig = format!(
        "sha256={}",
        incidentpost::sources::signature::hmac_sha256_hex(GH_SECRET.as_bytes(), &[&body])
    );
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let res = app
        .post_webhook(
            "github",
            &tampered,
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", sig.clone()),
            ],
        )
        .await;
    assert_eq!(res.status(), 401);
    let res = app
        .post_webhook("github", &body, &[("X-GitHub-Event", "push".into())])
        .await;
    assert_eq!(res.status(), 401);
    // The legacy SHA-1 header alone is not accepted.
    let res = app
        .post_webhook(
            "github",
            &body,
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature", "sha1=00".into()),
            ],
        )
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        app.post_github("push", "x", b"{not json").await.status(),
        400
    );
    assert_eq!(app.post_github("push", "y", b"[]").await.status(), 400);
    assert!(app.unattached().await.is_empty());
}
