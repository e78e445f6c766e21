//! Bounded cost: the indexes behind correlation, pull-in, paging and retention give the
//! same answers as before, survive a restart, and do not depend on what else is stored.

use std::collections::HashSet;

use chrono::{Duration, Utc};
use incidentpost::domain::{Event, EventKind, Source};
use incidentpost::store::StreamPart;
use serde_json::Value;

use crate::helpers::*;

/// An unattached Datadog alert that occurred `age` ago, for filling the store directly.
fn old_alert(age: Duration, n: usize) -> Event {
    let at = Utc::now() - age;
    Event {
        id: ulid::Ulid::new(),
        source: Source::Datadog,
        kind: EventKind::AlertFiring,
        occurred_at: at,
        received_at: at,
        title: format!("Alert: unrelated {n}"),
        service: Some("elsewhere".into()),
        severity: None,
        actor: None,
        url: None,
        keys: Default::default(),
        attrs: Default::default(),
        delivery: None,
        raw_id: None,
        incident_id: None,
        correlation: None,
    }
}

/// Puts `n` unattached events straight into the real store, in large units.
fn fill_stream(app: &TestApp, n: usize, age: Duration) {
    let mut left = n;
    while left > 0 {
        let batch: Vec<Event> = (0..left.min(5_000)).map(|i| old_alert(age, i)).collect();
        left -= batch.len();
        app.store
            .write(&mut |tx| {
                for e in &batch {
                    tx.put_stream_event(e)?;
                }
                Ok(())
            })
            .unwrap();
    }
}

#[tokio::test]
async fn incidents_opened_before_a_restart_still_attract_events() {
    let app = spawn_app().await;
    let trigger = pd_v3("incident.triggered", "PBEFORE", "01BEFORE", &at_offset(-10));
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    let dir = app.stop().await;

    let app = spawn_app_with("", Some(dir)).await;
    let dd = datadog_alert(
        "r1",
        "Triggered",
        "after the restart",
        "c-r1",
        "service:api",
        Utc::now(),
    );
    let res = app.post_datadog(&dd).await;
    assert_eq!(res.status(), 202);
    let json: Value = res.json().await.unwrap();
    assert_eq!(
        json["incident_ids"][0], "PBEFORE",
        "the sole open incident, from the rebuilt index"
    );
    let events = app.events("PBEFORE").await;
    assert_eq!(events.last().unwrap()["correlation"], "sole_open");
    assert_eq!(app.get_json("/incidents?status=open").await["total"], 1);
}

#[tokio::test]
async fn pull_in_after_a_restart_and_beside_100000_unrelated_events_finds_the_merge_of_the_day_before(
) {
    let app = spawn_app().await;
    fill_stream(&app, 100_000, Duration::days(4));
    let mut pr = fixture_json("github/pull_request.closed.not-merged.octokit.json");
    pr["pull_request"]["merged"] = true.into();
    pr["pull_request"]["merged_at"] = at_offset(-24 * 60).into();
    assert_eq!(
        app.post_github("pull_request", "g-hist", &serde_json::to_vec(&pr).unwrap())
            .await
            .status(),
        202
    );
    let dir = app.stop().await;

    let app = spawn_app_with("", Some(dir)).await;
    let trigger = pd_v3("incident.triggered", "PHIST", "01HIST", &at_offset(0));
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    let events = app.events("PHIST").await;
    let merge = events
        .iter()
        .find(|e| e["kind"] == "change.merged")
        .expect("the merge of the day before is pulled in");
    assert_eq!(merge["correlation"], "look_back");
    assert_eq!(
        events.len(),
        2,
        "nothing of the unrelated stream: {}",
        events.len()
    );
    let first = app.get_json("/events/unattached?limit=5").await;
    assert_eq!(first["events"].as_array().unwrap().len(), 5);
    assert!(
        first["next_cursor"].is_string(),
        "100,000 unrelated events stay unattached"
    );
}

#[tokio::test]
async fn a_pull_in_interrupted_by_a_crash_is_finished_at_the_next_start() {
    let app = spawn_app().await;
    let dd = datadog_alert(
        "i1",
        "Triggered",
        "before the crash",
        "c-i1",
        "service:api",
        Utc::now() - Duration::minutes(3),
    );
    assert_eq!(app.post_datadog(&dd).await.status(), 202);
    // What a crash right after the trigger's unit leaves: the incident and its marker,
    // the stream untouched.
    let incident = opened_incident("PCRASH", None, Duration::minutes(1));
    let dir = stop_before_pull_ins(app, &[incident], &[]).await;
    let app = spawn_app_with("", Some(dir)).await;
    // The committer finishes the pull-in before it takes anything new.
    let other = pd_v3("incident.triggered", "PNEXT", "01NEXT", &at_offset(0));
    assert_eq!(app.post_pagerduty(&other).await.status(), 202);
    let events = app.events("PCRASH").await;
    assert!(
        events
            .iter()
            .any(|e| e["title"] == "Alert: before the crash"),
        "{events:#?}"
    );
    assert!(app.store.cursors_with_prefix("pullin:").unwrap().is_empty());
}

#[tokio::test]
async fn paging_returns_every_incident_and_event_once_while_new_ones_arrive() {
    let app = spawn_app().await;
    for i in 0..23 {
        let body = pd_v3(
            "incident.triggered",
            &format!("PPG{i}"),
            &format!("01PG{i}"),
            &at_offset(-100 + i),
        );
        assert_eq!(app.post_pagerduty(&body).await.status(), 202);
        let body = pd_v3(
            "incident.resolved",
            &format!("PPG{i}"),
            &format!("01PGR{i}"),
            &at_offset(-99 + i),
        );
        assert_eq!(app.post_pagerduty(&body).await.status(), 202);
    }
    let before: HashSet<String> = (0..23).map(|i| format!("PPG{i}")).collect();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut n = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/incidents?limit=5&cursor={c}"),
            None => "/incidents?limit=5".to_owned(),
        };
        let page = app.get_json(&path).await;
        for i in page["incidents"].as_array().unwrap() {
            seen.push(i["id"].as_str().unwrap().to_owned());
        }
        // A new incident arrives between two pages.
        n += 1;
        let body = pd_v3(
            "incident.triggered",
            &format!("PNEW{n}"),
            &format!("01NEW{n}"),
            &at_offset(0),
        );
        assert_eq!(app.post_pagerduty(&body).await.status(), 202);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no incident twice: {seen:?}");
    assert!(before.is_subset(&unique), "every incident once: {seen:?}");

    // The stream, the same way: events arriving during the walk join at its end.
    for i in 0..17 {
        let dd = datadog_alert(
            &format!("pg{i}"),
            "Triggered",
            &format!("page {i}"),
            &format!("c{i}"),
            "service:x",
            Utc::now() - Duration::minutes(60 - i),
        );
        assert_eq!(app.post_datadog(&dd).await.status(), 202);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut n = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/events/unattached?limit=4&cursor={c}"),
            None => "/events/unattached?limit=4".to_owned(),
        };
        let page = app.get_json(&path).await;
        for e in page["events"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        n += 1;
        let dd = datadog_alert(
            &format!("late{n}"),
            "Triggered",
            "late",
            &format!("cl{n}"),
            "service:x",
            Utc::now(),
        );
        app.post_datadog(&dd).await;
        match page["next_cursor"].as_str() {
            Some(c) if n < 50 => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    assert!(seen.len() >= 17, "{}", seen.len());

    // An incident's events, a page at a time, in occurred_at order.
    let mut times = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/incidents/PPG3/events?limit=1&cursor={c}"),
            None => "/incidents/PPG3/events?limit=1".to_owned(),
        };
        let page = app.get_json(&path).await;
        for e in page["events"].as_array().unwrap() {
            times.push(e["occurred_at"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(times.len(), 2);
    assert!(times[0] < times[1]);
}

#[tokio::test]
async fn retention_prunes_only_unattached_events_older_than_the_setting() {
    // The service's own pruner (10 years here) leaves them to the call below.
    let app = spawn_app_with("[storage]\nstream_retention_days = 3650", None).await;
    let old: Vec<Event> = (0..1_200)
        .map(|i| {
            let mut e = old_alert(Duration::days(40), i);
            e.raw_id = Some(e.id);
            e
        })
        .collect();
    let kept = old_alert(Duration::days(10), 0);
    app.store
        .write(&mut |tx| {
            for e in &old {
                tx.put_raw(e.id, b"{}")?;
                tx.put_stream_event(e)?;
            }
            tx.put_stream_event(&kept)
        })
        .unwrap();
    let removed = incidentpost::startup::prune_stream_before(
        &app.store,
        Utc::now() - Duration::days(30),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(removed, 1_200);
    assert!(
        app.store.raw(old[0].id).unwrap().is_some(),
        "raw payloads stay (one may be shared with events that joined an incident)"
    );
    let left = app.unattached().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], kept.id.to_string());
}

/// An open incident with `n` events, written straight into the real store.
fn big_incident(app: &TestApp, id: &str, n: u64) {
    let now = Utc::now();
    let incident: incidentpost::domain::Incident = serde_json::from_value(serde_json::json!({
        "id": id, "title": format!("big {id}"), "status": "triggered", "opened_by": "pagerduty",
        "triggered_at": now - Duration::hours(2), "reopen_count": 0, "event_count": n,
        "next_seq": n, "updated_at": now
    }))
    .unwrap();
    let iid = incident.id.clone();
    app.store
        .write(&mut |tx| {
            tx.put_incident(&incident)?;
            for seq in 0..n {
                let mut e = old_alert(Duration::minutes(120 - (seq as i64 % 100)), seq as usize);
                e.incident_id = Some(iid.clone());
                e.correlation = Some(incidentpost::domain::CorrelationRule::SoleOpen);
                tx.put_incident_event(seq, &e)?;
            }
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn renders_queue_on_a_bounded_pool_and_webhooks_keep_answering_while_it_is_full() {
    let app = spawn_app_with("[render]\nmax_concurrent = 1\nqueue_timeout_secs = 1", None).await;
    let ids: Vec<String> = (0..16).map(|i| format!("PBIG{i}")).collect();
    for id in &ids {
        big_incident(&app, id, 2_000);
    }
    let downloads: Vec<_> = ids
        .iter()
        .map(|id| {
            let client = app.client.clone();
            let url = format!("{}/incidents/{id}/pack.zip", app.address);
            tokio::spawn(async move { client.get(url).send().await.unwrap() })
        })
        .collect();
    // Webhooks while every render slot is taken: answered, and stored.
    let mut webhook_statuses = Vec::new();
    for i in 0..10 {
        let dd = datadog_alert(
            &format!("busy{i}"),
            "Triggered",
            "while rendering",
            &format!("cb{i}"),
            "service:api",
            Utc::now(),
        );
        let res = tokio::time::timeout(std::time::Duration::from_secs(10), app.post_datadog(&dd))
            .await
            .expect("a webhook answers while renders queue");
        webhook_statuses.push(res.status().as_u16());
    }
    assert!(
        webhook_statuses.iter().all(|s| *s == 202),
        "{webhook_statuses:?}"
    );
    let mut ok = 0;
    let mut busy = 0;
    for d in downloads {
        let res = d.await.unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(res.headers()["retry-after"], "5");
                assert_eq!(
                    res.json::<Value>().await.unwrap()["error"]["code"],
                    "overloaded"
                );
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 1, "the pool renders: {ok} ok, {busy} busy");
    assert!(
        busy >= 1,
        "a full pool answers 503 after the queue timeout: {ok} ok, {busy} busy"
    );
    // A second download of a rendered draft comes from the cache, not the pool.
    let again = app.get("/incidents/PBIG0/pack.zip").await;
    assert_eq!(again.status(), 200);
}

/// An open incident as a unit that opened it leaves it, with its pull-in still to do.
fn opened_incident(
    id: &str,
    service: Option<&str>,
    age: Duration,
) -> incidentpost::domain::Incident {
    let at = Utc::now() - age;
    let mut incident: incidentpost::domain::Incident = serde_json::from_value(serde_json::json!({
        "id": id, "title": id, "status": "triggered", "opened_by": "pagerduty",
        "triggered_at": at, "reopen_count": 0, "event_count": 0, "next_seq": 0,
        "updated_at": at
    }))
    .unwrap();
    incident.service = service.map(str::to_owned);
    incident
}

/// Stores incidents with their `pullin:` markers and unattached events, as if the unit
/// that opened them had committed, and stops `app` before their pull-ins: the next start
/// on the returned directory pulls them all in together.
async fn stop_before_pull_ins(
    app: TestApp,
    incidents: &[incidentpost::domain::Incident],
    stream: &[Event],
) -> std::sync::Arc<tempfile::TempDir> {
    // The committer takes work only once it has looked for pull-ins to resume: after this
    // answer, the markers below wait for the restart.
    app.ingest
        .submit(incidentpost::ingest::Submission {
            event_keys: Vec::new(),
            delivery_keys: Vec::new(),
            events: Vec::new(),
            raw: Vec::new(),
            cursors: Vec::new(),
            incident: None,
        })
        .await
        .unwrap();
    app.store
        .write(&mut |tx| {
            for e in stream {
                tx.put_stream_event(e)?;
            }
            for i in incidents {
                tx.put_incident(i)?;
                tx.put_cursor(&format!("pullin:{}", i.id), &i.triggered_at.to_rfc3339())?;
            }
            Ok(())
        })
        .unwrap();
    app.stop().await
}

/// [`stop_before_pull_ins`] on a fresh store, then a restart on `map` and its pull-ins.
async fn pull_in_together(
    incidents: &[incidentpost::domain::Incident],
    stream: &[Event],
    map: &str,
) -> TestApp {
    let dir = stop_before_pull_ins(spawn_app().await, incidents, stream).await;
    let app = spawn_app_with(map, Some(dir)).await;
    app.settle_pull_ins().await;
    app
}

/// The unattached events of the last hour in `part` of the stream.
fn stream_part(app: &TestApp, part: StreamPart) -> Vec<incidentpost::store::Keyed> {
    let (from, to) = (Utc::now() - Duration::hours(1), Utc::now());
    app.store
        .stream_window(part, from, to, None, 100)
        .unwrap()
        .items
}

fn titles(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["title"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn incidents_opened_together_share_one_read_and_each_event_joins_one_of_them() {
    // Without a map every event of the short window matches both: the first opened (after
    // a restart: the first triggered, PTOGZ) takes it, except the event that names the
    // other one.
    let mut named = old_alert(Duration::minutes(3), 1);
    named.title = "names PTOGA".into();
    named.keys.insert("incident_ref".into(), "PTOGA".into());
    let mut plain = old_alert(Duration::minutes(3), 2);
    plain.title = "names nobody".into();
    let app = pull_in_together(
        &[
            opened_incident("PTOGA", None, Duration::minutes(1)),
            opened_incident("PTOGZ", None, Duration::minutes(2)),
        ],
        &[named, plain],
        "",
    )
    .await;
    assert_eq!(titles(&app.events("PTOGZ").await), ["names nobody"]);
    let a = app.events("PTOGA").await;
    assert_eq!(titles(&a), ["names PTOGA"]);
    assert_eq!(a[0]["correlation"], "look_back");
    let left = app.get_json("/events/unattached").await;
    assert_eq!(left["events"].as_array().unwrap().len(), 0, "{left:#}");
}

#[tokio::test]
async fn incidents_of_two_services_opened_together_each_take_their_own_service() {
    let alert = |service: &str, n: usize| {
        let mut e = old_alert(Duration::minutes(5), n);
        e.title = format!("{service} alert");
        e.service = Some(service.into());
        e
    };
    let app = pull_in_together(
        &[
            opened_incident("PTOGAPI", Some("api"), Duration::minutes(1)),
            opened_incident("PTOGWEB", Some("web"), Duration::minutes(1)),
        ],
        &[alert("web", 1), alert("api", 2), alert("other", 3)],
        MAP,
    )
    .await;
    assert_eq!(titles(&app.events("PTOGAPI").await), ["api alert"]);
    assert_eq!(titles(&app.events("PTOGWEB").await), ["web alert"]);
    let left = app.get_json("/events/unattached").await;
    assert_eq!(titles(left["events"].as_array().unwrap()), ["other alert"]);
    // Stored before the map, the event left behind was decoded once to be matched: it is
    // filed under the map now, so the next look-back skips it undecoded.
    let fp = fingerprint(&app, MAP);
    let read = |part| stream_part(&app, part);
    assert!(read(StreamPart::NotFiledUnder(fp.clone())).is_empty());
    let filed = read(StreamPart::Filed(format!("{fp}:")));
    assert_eq!(filed.len(), 1);
    assert_eq!(filed[0].1.title, "other alert");
}

/// The fingerprint the service map `map` files unattached events under.
fn fingerprint(app: &TestApp, map: &str) -> String {
    incidentpost::correlate::Correlator::from_settings(&test_settings(app.data_dir.path(), map))
        .map_fingerprint()
        .unwrap()
}

#[tokio::test]
async fn after_a_map_change_a_look_back_files_what_it_read_under_the_new_map_only() {
    let app = spawn_app_with(MAP, None).await;
    let web = datadog_alert(
        "refile-web",
        "Triggered",
        "web under the old map",
        "crw",
        "service:web",
        Utc::now() - Duration::minutes(5),
    );
    assert_eq!(app.post_datadog(&web).await.status(), 202);
    let old = fingerprint(&app, MAP);
    let dir = app.stop().await;

    let changed = format!("{MAP}\n[[services]]\nname = \"db\"\ndatadog = [\"service:db\"]\n");
    let app = spawn_app_with(&changed, Some(dir)).await;
    let new = fingerprint(&app, &changed);
    assert_ne!(old, new);
    let trigger = pd_v3_on(
        "API Service",
        "incident.triggered",
        "PREFILE",
        "01REFILE",
        &at_offset(0),
    );
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    assert!(!titles(&app.events("PREFILE").await).contains(&"Alert: web under the old map"));
    let read = |part| stream_part(&app, part);
    let filed = read(StreamPart::Filed(format!("{new}:web")));
    assert_eq!(filed.len(), 1, "filed under the new map");
    assert_eq!(filed[0].1.title, "Alert: web under the old map");
    assert!(
        read(StreamPart::Filed(format!("{old}:web"))).is_empty(),
        "and no longer under the old one"
    );
    assert!(read(StreamPart::NotFiledUnder(new)).is_empty());
    // Still one unattached event, found by a later incident of its service.
    let trigger = pd_v3_on(
        "Web",
        "incident.triggered",
        "PREFWEB",
        "01REFWEB",
        &at_offset(0),
    );
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    assert!(titles(&app.events("PREFWEB").await).contains(&"Alert: web under the old map"));
    assert!(read(StreamPart::All).is_empty());
}

const MAP: &str = r#"
[[services]]
name = "api"
pagerduty = ["API Service"]
datadog = ["service:api"]

[[services]]
name = "web"
pagerduty = ["Web"]
datadog = ["service:web"]
"#;

#[tokio::test]
async fn with_a_service_map_a_trigger_takes_only_its_service_from_a_busy_window_also_after_a_map_change(
) {
    // Events filed before any map: found by time and filtered.
    let app = spawn_app().await;
    let early = datadog_alert(
        "early-api",
        "Triggered",
        "api before the map",
        "ce",
        "service:api",
        Utc::now() - Duration::minutes(10),
    );
    assert_eq!(app.post_datadog(&early).await.status(), 202);
    let dir = app.stop().await;

    let app = spawn_app_with(MAP, Some(dir)).await;
    for i in 0..300 {
        let dd = datadog_alert(
            &format!("web{i}"),
            "Triggered",
            &format!("web {i}"),
            &format!("cw{i}"),
            "service:web",
            Utc::now() - Duration::minutes(5),
        );
        assert_eq!(app.post_datadog(&dd).await.status(), 202);
    }
    let api = datadog_alert(
        "api1",
        "Triggered",
        "api pool at 98%",
        "ca",
        "service:api",
        Utc::now() - Duration::minutes(4),
    );
    assert_eq!(app.post_datadog(&api).await.status(), 202);
    let trigger = pd_v3_on(
        "API Service",
        "incident.triggered",
        "PMAPPED",
        "01MAPPED",
        &at_offset(0),
    );
    assert_eq!(app.post_pagerduty(&trigger).await.status(), 202);
    let titles: Vec<String> = app
        .events("PMAPPED")
        .await
        .iter()
        .map(|e| e["title"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        titles.contains(&"Alert: api pool at 98%".to_owned()),
        "{titles:?}"
    );
    assert!(
        titles.contains(&"Alert: api before the map".to_owned()),
        "{titles:?}"
    );
    assert_eq!(titles.len(), 3, "only the api events: {titles:?}");
    let mut left = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/events/unattached?limit=500&cursor={c}"),
            None => "/events/unattached?limit=500".to_owned(),
        };
        let page = app.get_json(&path).await;
        left += page["events"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(left, 300, "the web events stay unattached");
    // A web trigger takes them, from its own filing.
    let web = pd_v3_on("Web", "incident.triggered", "PWEB", "01WEB", &at_offset(0));
    assert_eq!(app.post_pagerduty(&web).await.status(), 202);
    assert_eq!(app.get_json("/incidents/PWEB").await["event_count"], 301);
}
