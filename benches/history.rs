//! Cost vs history: how the webhook path, the lists and the big-incident pages behave as
//! the store fills up. Fills a sled store directly through the library (the service
//! stopped), then measures the real release binary on loopback with bounded traffic.
//!
//! Run: `scripts/bench-history` (or `cargo bench --bench history`). Env (defaults are the
//! issue's targets): BENCH_OPEN (10000), BENCH_STREAM (1000000), BENCH_INCIDENTS (100000),
//! BENCH_BIG (10000), BENCH_REQUESTS (4000), BENCH_SOAK_SECS (600; 0 skips the soak),
//! BENCH_SOAK_BACKEND (`sled`, `postgres` or `both`; PostgreSQL needs BENCH_DATABASE_URL,
//! an administrative URL: the soak gets a fresh database on that server), BENCH_SERVER_BIN
//! (another build of the service, for a before and after in one run).
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a small smoke run.
//!
//! Only what both the old and the new store have is used to fill (`Store::write` with
//! `put_incident`, `put_incident_event`, `put_stream_event`), so the same script measures
//! a build from before the indexes too.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use incidentpost::domain::{Event, EventKind, Incident, IncidentId, IncidentStatus, Source};
use incidentpost::sources::signature::hmac_sha256_hex;
use incidentpost::store::{SledStore, Store};

#[path = "support/mod.rs"]
mod support;
use support::{drop_database, env_or, fresh_database, rss_mib, thread_count, wait_ready};

const SECRET: &str = "bench-secret";

/// A service map, so a trigger's look-back reads its windows but takes nothing of the
/// unrelated history.
const SERVICES: &str =
    "services = [{ name = \"api\", pagerduty = [\"api\"], datadog = [\"service:api\"] }]";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Server {
    start_on(dir, None)
}

/// A server on the sled store in `dir`, or on a PostgreSQL database (`database`).
fn start_on(dir: &std::path::Path, database: Option<&str>) -> Server {
    let port = support::free_port();
    let config = dir.with_extension("toml");
    std::fs::write(&config, SERVICES).unwrap();
    let child = Command::new(support::server_bin())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("INCIDENTPOST__SERVER__PORT", port.to_string())
        .env("INCIDENTPOST__STORAGE__PATH", dir)
        .env("INCIDENTPOST__SOURCES__PAGERDUTY__SECRET", SECRET)
        .env("INCIDENTPOST__SOURCES__DATADOG__TOKEN", "bench-token")
        .env("INCIDENTPOST__LOG__LEVEL", "warn")
        .envs(support::backend_env(database))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start incidentpost");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn event(n: u64, age_secs: i64, incident: Option<&IncidentId>) -> Event {
    let at = Utc::now() - chrono::Duration::seconds(age_secs);
    Event {
        id: ulid::Ulid::new(),
        source: Source::Datadog,
        kind: EventKind::AlertFiring,
        occurred_at: at,
        received_at: at,
        title: format!("Alert: disk usage on host-{} at {}%", n % 500, 50 + n % 50),
        service: Some(format!("svc{}", n % 40)),
        severity: None,
        actor: None,
        url: None,
        keys: Default::default(),
        attrs: Default::default(),
        delivery: None,
        raw_id: None,
        incident_id: incident.cloned(),
        correlation: incident.map(|_| incidentpost::domain::CorrelationRule::SoleOpen),
    }
}

fn incident(id: &str, open: bool, age_secs: i64, events: u64) -> Incident {
    let at = Utc::now() - chrono::Duration::seconds(age_secs);
    Incident {
        id: IncidentId::parse(id).unwrap(),
        title: format!("Incident {id}"),
        status: if open {
            IncidentStatus::Triggered
        } else {
            IncidentStatus::Resolved
        },
        service: Some(format!("svc{}", id.len() % 7)),
        severity: None,
        urgency: None,
        priority: None,
        url: None,
        opened_by: Source::Pagerduty,
        triggered_at: at,
        acknowledged_at: None,
        resolved_at: (!open).then_some(at + chrono::Duration::minutes(20)),
        reopen_count: 0,
        event_count: events,
        next_seq: events,
        updated_at: at,
    }
}

fn open_store(dir: &std::path::Path) -> SledStore {
    SledStore::open(dir, 500, 64 << 20).expect("open the bench store")
}

/// Adds `n` incidents (`open` or resolved), in units of 2,000.
fn fill_incidents(dir: &std::path::Path, prefix: &str, n: u64, open: bool) {
    let store = open_store(dir);
    let mut done = 0;
    while done < n {
        let batch: Vec<Incident> = (done..(done + 2_000).min(n))
            .map(|i| {
                incident(
                    &format!("{prefix}{i}"),
                    open,
                    (i as i64) * 37 % (90 * 86_400) + 3_600,
                    0,
                )
            })
            .collect();
        done += batch.len() as u64;
        store
            .write(&mut |tx| {
                for i in &batch {
                    tx.put_incident(i)?;
                }
                Ok(())
            })
            .unwrap();
    }
}

/// Adds `n` unattached events spread over the last 30 days, in units of 10,000.
fn fill_stream(dir: &std::path::Path, n: u64, offset: u64) {
    let store = open_store(dir);
    let mut done = 0;
    while done < n {
        let batch: Vec<Event> = (done..(done + 10_000).min(n))
            .map(|i| {
                event(
                    offset + i,
                    ((offset + i) as i64 * 7_919) % (30 * 86_400) + 60,
                    None,
                )
            })
            .collect();
        done += batch.len() as u64;
        store
            .write(&mut |tx| {
                for e in &batch {
                    tx.put_stream_event(e)?;
                }
                Ok(())
            })
            .unwrap();
    }
}

/// One open incident with `n` events over its two hours.
fn fill_big(dir: &std::path::Path, id: &str, n: u64) {
    let store = open_store(dir);
    let i = incident(id, true, 7_200, n);
    let iid = i.id.clone();
    store
        .write(&mut |tx| {
            tx.put_incident(&i)?;
            for seq in 0..n {
                tx.put_incident_event(
                    seq,
                    &event(seq, 7_200 - (seq as i64 * 7_200 / n as i64), Some(&iid)),
                )?;
            }
            Ok(())
        })
        .unwrap();
}

struct Stats {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

fn stats(mut lat: Vec<Duration>, elapsed: Duration, errors: u64) -> Stats {
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    Stats {
        rps: lat.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50: pct(0.5),
        p99: pct(0.99),
        errors,
    }
}

#[derive(Clone, Copy)]
enum Load {
    Datadog,
    Trigger,
    Get(&'static str),
}

/// Sends `requests` of `load` with `concurrency` workers; `n0` makes ids unique.
async fn drive(
    client: &reqwest::Client,
    base: &str,
    load: Load,
    n0: u64,
    requests: u64,
    concurrency: u64,
) -> Stats {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, base, next, errors) = (
            client.clone(),
            base.to_owned(),
            next.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let n = n0 + i;
                let req = match load {
                    Load::Datadog => client
                        .post(format!("{base}/webhooks/datadog"))
                        .header("X-IncidentPost-Token", "bench-token")
                        .body(format!(
                            r#"{{"id":"dd-{n}","title":"[Triggered on {{service:web}}] Error rate {}%","alert_transition":"Triggered","alert_cycle_key":"c{n}","tags":"service:web"}}"#,
                            n % 100
                        )),
                    Load::Trigger => {
                        let b = format!(
                            r#"{{"event":{{"id":"trig-{n}","event_type":"incident.triggered","resource_type":"incident","occurred_at":"{}","agent":{{"summary":"sarah"}},"data":{{"id":"PT{n}","type":"incident","title":"API response time > 5000ms","status":"triggered","urgency":"high","service":{{"summary":"api"}}}}}}}}"#,
                            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        );
                        let sig = format!("v1={}", hmac_sha256_hex(SECRET.as_bytes(), &[b.as_bytes()]));
                        client
                            .post(format!("{base}/webhooks/pagerduty"))
                            .header("X-PagerDuty-Signature", sig)
                            .body(b)
                    }
                    Load::Get(path) => client.get(format!("{base}{path}")),
                };
                let t = Instant::now();
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stats(all, began.elapsed(), errors.load(Ordering::Relaxed))
}

/// Samples the server's RSS and thread count every 20 ms until `stop`; returns the peaks.
fn sample_peak(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(f64, u64)> {
    tokio::spawn(async move {
        let (mut peak, mut threads) = (0f64, 0);
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_mib(pid));
            threads = threads.max(thread_count(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (peak.max(rss_mib(pid)), threads)
    })
}

/// Datadog webhooks at c=32 for `secs`, a table row per minute; returns the next
/// delivery number.
async fn soak(client: &reqwest::Client, server: &Server, secs: u64, mut n: u64) -> u64 {
    let pid = server.child.id();
    println!("| minute | webhooks/s | p99 ms | errors | RSS MiB |");
    println!("|---|---|---|---|---|");
    let began = Instant::now();
    let mut minute = 0;
    while began.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        let mut rates = Vec::new();
        let mut errors = 0;
        let mut p99 = 0f64;
        while t.elapsed() < Duration::from_secs(60.min(secs))
            && began.elapsed() < Duration::from_secs(secs)
        {
            let s = drive(client, &server.base, Load::Datadog, n, 2_000, 32).await;
            n += 2_000;
            rates.push(s.rps);
            errors += s.errors;
            p99 = p99.max(s.p99);
        }
        minute += 1;
        let rps = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        println!(
            "| {minute} | {rps:.0} | {p99:.1} | {errors} | {:.0} |",
            rss_mib(pid)
        );
    }
    n
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let open_n = env_or("BENCH_OPEN", 10_000, 20, smoke);
    let stream_n = env_or("BENCH_STREAM", 1_000_000, 2_000, smoke);
    let incidents_n = env_or("BENCH_INCIDENTS", 100_000, 200, smoke);
    let big_n = env_or("BENCH_BIG", 10_000, 300, smoke);
    let requests = env_or("BENCH_REQUESTS", 4_000, 50, smoke);
    let soak_secs = env_or("BENCH_SOAK_SECS", 600, 0, smoke);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
        println!("cost vs history, release build, loopback, {requests} requests per rate step\n");

        println!("| open incidents | Datadog webhooks/s (c=32) | p50 ms | p99 ms | errors | server RSS MiB |");
        println!("|---|---|---|---|---|---|");
        let mut open_so_far = 0;
        let mut n = 0;
        for target in [0, open_n / 10, open_n] {
            if target > open_so_far {
                fill_incidents(&dir, "POPEN", target, true);
                open_so_far = target;
            }
            let server = start(&dir);
            wait_ready(&client, &server.base).await;
            drive(&client, &server.base, Load::Datadog, n, 200, 16).await;
            n += 200;
            let s = drive(&client, &server.base, Load::Datadog, n, requests, 32).await;
            n += requests;
            println!(
                "| {target} | {:.0} | {:.2} | {:.2} | {} | {:.0} |",
                s.rps, s.p50, s.p99, s.errors, rss_mib(server.child.id())
            );
        }

        println!("\n| unattached events | PagerDuty trigger p50 ms | p99 ms (c=1) | errors | server RSS MiB |");
        println!("|---|---|---|---|---|");
        let mut stream_so_far = 0;
        let triggers = (requests / 20).max(10);
        for target in [0, stream_n / 10, stream_n] {
            if target > stream_so_far {
                fill_stream(&dir, target - stream_so_far, stream_so_far);
                stream_so_far = target;
            }
            let server = start(&dir);
            wait_ready(&client, &server.base).await;
            let s = drive(&client, &server.base, Load::Trigger, n, triggers, 1).await;
            n += triggers;
            println!(
                "| {target} | {:.2} | {:.2} | {} | {:.0} |",
                s.p50, s.p99, s.errors, rss_mib(server.child.id())
            );
        }

        fill_incidents(&dir, "PDONE", incidents_n, false);
        let server = start(&dir);
        wait_ready(&client, &server.base).await;
        println!(
            "\nreads with {stream_so_far} unattached events and {} incidents stored (c=1, {} requests each)",
            incidents_n + open_so_far, requests / 10
        );
        println!("| request | p50 ms | p99 ms | errors | server RSS MiB |");
        println!("|---|---|---|---|---|");
        for path in ["/events/unattached?limit=50", "/incidents?limit=50", "/incidents?status=open&limit=50", "/ui"] {
            let s = drive(&client, &server.base, Load::Get(path), 0, (requests / 10).max(5), 1).await;
            println!("| `GET {path}` | {:.2} | {:.2} | {} | {:.0} |", s.p50, s.p99, s.errors, rss_mib(server.child.id()));
        }
        drop(server);

        fill_big(&dir, "PBIG", big_n);
        let server = start(&dir);
        wait_ready(&client, &server.base).await;
        let pid = server.child.id();
        println!("\none incident with {big_n} events");
        println!("| request | bytes | first ms | then p50 ms | p99 ms | errors |");
        println!("|---|---|---|---|---|---|");
        for path in ["/ui/incidents/PBIG", "/incidents/PBIG/pack.zip"] {
            let t = Instant::now();
            let first = client.get(format!("{}{path}", server.base)).send().await.unwrap();
            let ok = first.status().is_success();
            let bytes = first.bytes().await.map(|b| b.len()).unwrap_or(0);
            let first_ms = t.elapsed().as_secs_f64() * 1e3;
            let s = drive(&client, &server.base, Load::Get(path), 0, 20, 1).await;
            println!("| `GET {path}` | {bytes} | {first_ms:.0}{} | {:.1} | {:.1} | {} |", if ok { "" } else { " (failed)" }, s.p50, s.p99, s.errors);
        }
        // 20 page loads and 20 downloads at once, while signed webhooks keep coming.
        let before = rss_mib(pid);
        let threads_before = thread_count(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = sample_peak(pid, stop.clone());
        let pages = drive(&client, &server.base, Load::Get("/ui/incidents/PBIG"), 0, 20, 20);
        let zips = drive(&client, &server.base, Load::Get("/incidents/PBIG/pack.zip"), 0, 20, 20);
        let hooks = drive(&client, &server.base, Load::Trigger, n, 400, 4);
        let (pages, zips, hooks) = tokio::join!(pages, zips, hooks);
        n += 400;
        stop.store(true, Ordering::Relaxed);
        let (peak, threads) = peak.await.unwrap();
        println!(
            "\n20 page loads + 20 downloads at once: pages p99 {:.0} ms ({} errors), downloads p99 {:.0} ms ({} errors); \
             signed webhooks meanwhile: {} ok, p99 {:.1} ms, {} errors; RSS {before:.0} → peak {peak:.0} MiB (+{:.0}); \
             threads {threads_before} → peak {threads}",
            pages.p99, pages.errors, zips.p99, zips.errors, 400 - hooks.errors, hooks.p99, hooks.errors, peak - before
        );
        drop(server);

        if soak_secs > 0 {
            let backend = std::env::var("BENCH_SOAK_BACKEND").unwrap_or_else(|_| "sled".into());
            let (on_sled, on_postgres) = match backend.as_str() {
                "sled" => (true, false),
                "postgres" => (false, true),
                "both" => (true, true),
                other => panic!("BENCH_SOAK_BACKEND={other}: use sled, postgres or both"),
            };
            if on_sled {
                let server = start(&dir);
                wait_ready(&client, &server.base).await;
                println!("\nsoak on sled: Datadog webhooks at c=32 for {soak_secs} s");
                n = soak(&client, &server, soak_secs, n).await;
                drop(server);
                // What of that memory comes with the stored data rather than the work:
                // the same store, restarted, before any request.
                let server = start(&dir);
                wait_ready(&client, &server.base).await;
                println!(
                    "the same store restarted: RSS {:.0} MiB when /readyz first answers",
                    rss_mib(server.child.id())
                );
            }
            if on_postgres {
                let admin = std::env::var("BENCH_DATABASE_URL")
                    .expect("BENCH_SOAK_BACKEND=postgres needs BENCH_DATABASE_URL (an admin URL)");
                let url = fresh_database(&admin, "bench_history_soak");
                let server = start_on(&dir.with_extension("pg"), Some(&url));
                wait_ready(&client, &server.base).await;
                println!("\nsoak on PostgreSQL (an empty database): Datadog webhooks at c=32 for {soak_secs} s");
                soak(&client, &server, soak_secs, n).await;
                drop(server);
                drop_database(&admin, "bench_history_soak");
            }
        }
    });
}
