//! Render benchmark: the pack (facts, templates, SVG, zip) for incidents of 50, 1,000 and
//! 10,000 events, and the latency from the resolve webhook's 2xx to the stored pack.
//!
//! Run: `cargo bench --bench render` (or `scripts/bench-render`).

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use incidentpost::domain::{
    CorrelationRule, Event, EventKind, Incident, IncidentId, IncidentStatus, Severity, Source,
};
use incidentpost::postmortem::{render_pack, Templates};
use ulid::Ulid;

// The service's allocator (src/main.rs): the render is allocation-heavy, so measure it
// as it runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn incident_with(n: usize) -> (Incident, Vec<Event>) {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 10, 14, 23, 0).unwrap();
    let id = IncidentId::parse("PBENCH").unwrap();
    let kinds = [
        (
            Source::Datadog,
            EventKind::AlertFiring,
            "Alert: Error rate: 23% of requests returning 503",
        ),
        (
            Source::Slack,
            EventKind::ChatMessage,
            "@sarah: 'looking at the pool'",
        ),
        (
            Source::Cloudwatch,
            EventKind::AlertFiring,
            "RDS CPUUtilization 87% > 80% (ALARM)",
        ),
        (
            Source::Github,
            EventKind::ChangePushed,
            "Pushed 1 commit to main: fix",
        ),
    ];
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let (source, kind, title) = match i {
            0 => (
                Source::Pagerduty,
                EventKind::IncidentTriggered,
                "CRITICAL: API response time > 5000ms",
            ),
            i if i == n - 1 => (
                Source::Pagerduty,
                EventKind::IncidentResolved,
                "Incident resolved",
            ),
            i if i == n / 2 => (
                Source::Github,
                EventKind::ChangeRolledBack,
                "Rolled back user-sync to v2.3.1",
            ),
            i => kinds[i % kinds.len()],
        };
        let at = t0 + chrono::Duration::milliseconds((29 * 60 * 1000 * i as i64) / n as i64);
        let mut attrs = serde_json::Map::new();
        if kind == EventKind::AlertFiring {
            attrs.insert("value".into(), serde_json::json!((i % 97) as f64));
            attrs.insert("unit".into(), serde_json::json!("%"));
        }
        events.push(Event {
            id: Ulid::from_parts(at.timestamp_millis() as u64, i as u128),
            source,
            kind,
            occurred_at: at,
            received_at: at,
            title: title.to_owned(),
            service: Some("api".into()),
            severity: Some(Severity::Error),
            actor: Some("@sarah".into()),
            url: Some(format!("https://example.com/e/{i}")),
            keys: Default::default(),
            attrs,
            delivery: None,
            raw_id: None,
            incident_id: Some(id.clone()),
            correlation: Some(CorrelationRule::SoleOpen),
        });
    }
    let incident = Incident {
        id,
        title: "API response time > 5000ms".into(),
        status: IncidentStatus::Resolved,
        service: Some("api".into()),
        severity: Some(Severity::Critical),
        urgency: Some("high".into()),
        priority: Some("P1".into()),
        url: None,
        opened_by: Source::Pagerduty,
        triggered_at: t0,
        acknowledged_at: None,
        resolved_at: Some(t0 + chrono::Duration::minutes(29)),
        reopen_count: 0,
        event_count: n as u64,
        next_seq: n as u64,
        updated_at: t0,
    };
    (incident, events)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let templates = Templates::load(None).expect("templates load");
    println!("| events | median render ms | zip bytes |");
    println!("|---|---|---|");
    let sizes: &[usize] = if smoke { &[50] } else { &[50, 1_000, 10_000] };
    for &n in sizes {
        let (incident, events) = incident_with(n);
        let runs = if n >= 10_000 { 11 } else { 15 };
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let pack = render_pack(&templates, &incident, &events).expect("render");
            times.push(t.elapsed());
            bytes = pack.zip.len();
        }
        println!(
            "| {n} | {:.2} | {bytes} |",
            median(times).as_secs_f64() * 1e3
        );
    }
    resolve_to_pack_latency(if smoke { 2 } else { 20 });
}

/// From the 2xx of the resolve webhook to the pack stored by the background renderer,
/// through the real service on loopback (unsigned: no secrets configured).
fn resolve_to_pack_latency(rounds: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let settings = incidentpost::config::Settings::from_toml_overlay(&format!(
            "[server]\nport = 0\n[storage]\npath = '{}'",
            dir.path().display()
        ))
        .unwrap();
        let app = incidentpost::startup::Application::build(settings).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let store = app.store();
        let handle = app.handle();
        let server = tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::new();
        let mut latencies = Vec::new();
        for r in 0..rounds {
            let id = format!("PLAT{r}");
            for (i, (ty, at)) in [("incident.triggered", "14:23"), ("incident.acknowledged", "14:25"), ("incident.resolved", "14:52")].iter().enumerate() {
                let body = format!(
                    r#"{{"event":{{"id":"{id}-{i}","event_type":"{ty}","resource_type":"incident","occurred_at":"2026-01-10T{at}:00Z","agent":{{"summary":"sarah"}},"data":{{"id":"{id}","type":"incident","title":"API response time > 5000ms","urgency":"high","service":{{"summary":"api"}}}}}}}}"#
                );
                let res = client.post(format!("{base}/webhooks/pagerduty")).body(body).send().await.unwrap();
                assert_eq!(res.status().as_u16(), 202);
            }
            let acked = Instant::now();
            let key = IncidentId::parse(&id).unwrap();
            loop {
                if store.pack(&key).unwrap().is_some() {
                    latencies.push(acked.elapsed());
                    break;
                }
                assert!(acked.elapsed() < Duration::from_secs(10), "no pack within 10 s");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        handle.stop(true).await;
        let _ = server.await;
        latencies.sort();
        println!();
        println!(
            "resolve webhook 2xx -> pack stored: median {:.2} ms, max {:.2} ms over {rounds} incidents",
            latencies[latencies.len() / 2].as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3
        );
    });
}
