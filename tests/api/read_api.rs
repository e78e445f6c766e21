//! The read API: listing, filters, paging, ordering, ids, auth, error shapes.

use serde_json::Value;

use crate::helpers::*;

async fn seed(app: &TestApp) {
    // Three incidents triggered an hour apart; the middle one resolved.
    for (inc, at) in [("PA", "10"), ("PB", "11"), ("PC", "12")] {
        let body = pd_v3(
            "incident.triggered",
            inc,
            &format!("T{inc}"),
            &format!("2024-03-14T{at}:00:00Z"),
        );
        assert_eq!(app.post_pagerduty(&body).await.status(), 202);
    }
    let body = pd_v3("incident.resolved", "PB", "RPB", "2024-03-14T11:30:00Z");
    assert_eq!(app.post_pagerduty(&body).await.status(), 202);
}

fn ids(list: &Value) -> Vec<&str> {
    list["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn incidents_are_listed_newest_first_filtered_and_paged() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(ids(&app.get_json("/incidents").await), ["PC", "PB", "PA"]);
    assert_eq!(
        ids(&app.get_json("/incidents?status=open").await),
        ["PC", "PA"]
    );
    assert_eq!(
        ids(&app.get_json("/incidents?status=resolved").await),
        ["PB"]
    );
    let page1 = app.get_json("/incidents?limit=2").await;
    assert_eq!(ids(&page1), ["PC", "PB"]);
    let next = page1["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let page2 = app
        .get_json(&format!("/incidents?limit=2&cursor={next}"))
        .await;
    assert_eq!(ids(&page2), ["PA"]);
    assert_eq!(page2["next_cursor"], Value::Null);
    assert_eq!(page2["total"], 3);
    assert_eq!(app.get_json("/incidents?status=open").await["total"], 2);
    // A cursor this list did not hand out is a 400, not a 500.
    let res = app.get("/incidents?cursor=zz").await;
    assert_eq!(res.status(), 400);
    let res = app.get("/incidents?cursor=00ff").await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn events_are_ordered_by_occurred_at_not_arrival() {
    let app = spawn_app().await;
    for (ty, id, at) in [
        ("incident.triggered", "E1", "2024-03-14T14:23:00Z"),
        ("incident.resolved", "E3", "2024-03-14T14:52:00Z"),
        ("incident.acknowledged", "E2", "2024-03-14T14:25:00Z"),
    ] {
        app.post_pagerduty(&pd_v3(ty, "PORD", id, at)).await;
    }
    let kinds: Vec<String> = app
        .events("PORD")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "incident.triggered",
            "incident.acknowledged",
            "incident.resolved"
        ]
    );
}

async fn error_code(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status().as_u16(), status);
    let body: Value = res.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_ids_unknown_incidents_and_bad_queries_get_clear_errors() {
    let app = spawn_app().await;
    assert_eq!(
        error_code(app.get("/incidents/NOPE").await, 404).await,
        "incident_not_found"
    );
    assert_eq!(
        error_code(app.get("/incidents/NOPE/events").await, 404).await,
        "incident_not_found"
    );
    assert_eq!(
        error_code(app.get("/incidents/bad%20id").await, 400).await,
        "invalid_incident_id"
    );
    assert_eq!(
        error_code(
            app.get(&format!("/incidents/{}", "x".repeat(65))).await,
            400
        )
        .await,
        "invalid_incident_id"
    );
    assert_eq!(
        error_code(app.get("/incidents?status=maybe").await, 400).await,
        "invalid_query"
    );
    assert_eq!(
        error_code(app.get("/incidents?limit=0").await, 400).await,
        "invalid_query"
    );
    assert_eq!(
        error_code(app.get("/incidents?limit=abc").await, 400).await,
        "invalid_query"
    );
    assert_eq!(
        error_code(app.get("/no/such/route").await, 404).await,
        "not_found"
    );
}

#[tokio::test]
async fn the_read_api_requires_the_bearer_token_when_one_is_set() {
    let app = spawn_app_with("[api]\ntoken = 'read-token'", None).await;
    seed(&app).await; // webhooks are authenticated by their signatures, not the token
    let url = format!("{}/incidents", app.address);
    let none = app.client.get(&url).send().await.unwrap();
    assert_eq!(error_code(none, 401).await, "unauthorized");
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(wrong, 401).await, "unauthorized");
    let ok = app
        .client
        .get(&url)
        .bearer_auth("read-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Health endpoints stay open for probes.
    assert_eq!(
        app.client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
