//! The pages, over plain HTTP (the browser tests are in tests/e2e).

use crate::helpers::*;

#[tokio::test]
async fn pages_escape_titles_from_the_internet() {
    let app = spawn_app().await;
    let mut body: serde_json::Value =
        serde_json::from_slice(&pd_v3("incident.triggered", "PXSS", "E1", &at_offset(-5))).unwrap();
    body["event"]["data"]["title"] = "<script>alert(1)</script>".into();
    app.post_pagerduty(&serde_json::to_vec(&body).unwrap())
        .await;
    for path in ["/ui", "/ui/incidents/PXSS"] {
        let html = app.get(path).await.text().await.unwrap();
        assert!(
            !html.contains("<script>alert(1)"),
            "{path} has the raw title"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path} lacks the escaped title"
        );
    }
}

#[test]
fn markdown_html_is_shown_as_text() {
    let html =
        incidentpost::web::markdown_to_html("# Title\n\n<img src=x onerror=alert(1)> and **bold**");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;img"), "{html}");
    assert!(html.contains("<strong>bold</strong>"));
}

#[tokio::test]
async fn with_a_token_pages_need_a_login_and_forms_need_their_csrf_token() {
    let app = spawn_app_with("[api]\ntoken = 'ui-token'", None).await;
    let client = no_redirects();
    let res = client
        .get(format!("{}/ui/incidents/PX", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui/login?next=/ui/incidents/PX");

    let bad = client
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", "nope"), ("next", "/ui")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let ok = client
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", "ui-token"), ("next", "https://evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(
        ok.headers()["location"],
        "/ui",
        "no open redirect after login"
    );
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    let list = client
        .get(format!("{}/ui", app.address))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    // The session also opens the pack download (API) for the pages' button.
    app.post_pagerduty(&pd_v3("incident.triggered", "PX", "E1", &at_offset(-5)))
        .await;
    let zip = client
        .get(format!("{}/incidents/PX/pack.zip", app.address))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(zip.status(), 200);
    // A form posted without the page's CSRF token is refused and changes nothing.
    let forged = client
        .post(format!("{}/ui/incidents/PX/edit", app.address))
        .header("Cookie", &session)
        .form(&[("root_cause", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let events = client
        .get(format!("{}/incidents/PX/events", app.address))
        .bearer_auth("ui-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!events.contains("forged"));
}

#[tokio::test]
async fn markdown_in_event_titles_cannot_become_links_in_the_postmortem() {
    let app = spawn_app().await;
    let mut body: serde_json::Value =
        serde_json::from_slice(&pd_v3("incident.triggered", "PMD", "E1", &at_offset(-5))).unwrap();
    body["event"]["data"]["title"] =
        "[Log in](javascript:alert(1)) ![x](https://evil.example/p.png)\n# Owned".into();
    app.post_pagerduty(&serde_json::to_vec(&body).unwrap())
        .await;
    let md = app
        .get("/incidents/PMD/postmortem.md")
        .await
        .text()
        .await
        .unwrap();
    assert!(md.contains("\\[Log in\\](javascript:alert(1))"), "{md}");
    assert!(
        !md.contains("\n# Owned"),
        "a title cannot start a new Markdown block"
    );
    let html = incidentpost::web::markdown_to_html(&md);
    assert!(!html.contains("href=\"javascript"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    let page = app.get("/ui/incidents/PMD").await.text().await.unwrap();
    assert!(!page.contains("href=\"javascript"));
}

#[tokio::test]
async fn the_session_cookie_does_not_authorize_state_changing_api_calls() {
    let app = spawn_app_with("[api]\ntoken = 'ui-token'", None).await;
    app.post_pagerduty(&pd_v3("incident.triggered", "PC", "E1", &at_offset(-5)))
        .await;
    let session = login_cookie(&app, "ui-token").await;
    let patch = app
        .client
        .patch(format!("{}/incidents/PC", app.address))
        .header("Cookie", &session)
        .json(&serde_json::json!({"root_cause": "forged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 401);
    let import = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .header("Cookie", &session)
        .body("09:00 UTC [Slack] x")
        .send()
        .await
        .unwrap();
    assert_eq!(import.status(), 401);
}
