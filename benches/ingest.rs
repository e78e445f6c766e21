//! Ingest benchmark: signed PagerDuty webhooks through the full path (verify → normalize →
//! dedupe → lifecycle → durable append → 2xx) against the real binary on loopback.
//! Compares group commit (`storage.max_batch = 256`) with a flush per webhook
//! (`storage.max_batch = 1`) at increasing concurrency. Bounded: REQUESTS per step.
//!
//! Run: `cargo bench --bench ingest` (or `scripts/bench-ingest`). Env: BENCH_REQUESTS;
//! BENCH_SERVER_BIN (another build of the service, for a before and after in one run);
//! BENCH_ROUNDS (5): rounds of the reference points, which take turns;
//! BENCH_REFERENCES_ONLY=1: only those rounds (the ratios), in a few seconds.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use incidentpost::sources::signature::hmac_sha256_hex;

#[path = "support/mod.rs"]
mod support;
use support::{drop_database, env_or, fresh_database, rss_kib, wait_for_ok, wait_ready};

const SECRET: &str = "bench-secret";

/// Which provider's webhooks a step sends.
#[derive(Clone, Copy)]
enum Kind {
    PagerDuty,
    Datadog,
    Github,
    Slack,
    /// The equivalent alert, to Prometheus Alertmanager's `/api/v2/alerts`.
    Alertmanager,
}

struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(max_batch: usize) -> Server {
    start_on(max_batch, None)
}

/// A server on sled (`database: None`) or on a PostgreSQL database.
fn start_on(max_batch: usize, database: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let child = Command::new(support::server_bin())
        .arg("serve")
        .env("INCIDENTPOST__SERVER__PORT", port.to_string())
        .env("INCIDENTPOST__STORAGE__PATH", dir.path())
        .env("INCIDENTPOST__STORAGE__MAX_BATCH", max_batch.to_string())
        .env("INCIDENTPOST__SOURCES__PAGERDUTY__SECRET", SECRET)
        .env("INCIDENTPOST__SOURCES__GITHUB__SECRET", SECRET)
        .env("INCIDENTPOST__SOURCES__SLACK__SIGNING_SECRET", SECRET)
        .env("INCIDENTPOST__SOURCES__DATADOG__TOKEN", SECRET)
        .env("INCIDENTPOST__LOG__LEVEL", "warn")
        .envs(support::backend_env(database))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start incidentpost");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir,
    }
}

/// A signed request for delivery number `n`: (path, headers, body).
fn request(kind: Kind, n: u64) -> (&'static str, Vec<(&'static str, String)>, Vec<u8>) {
    match kind {
        Kind::PagerDuty => {
            let b = body(n);
            let sig = format!("v1={}", hmac_sha256_hex(SECRET.as_bytes(), &[&b]));
            // As PagerDuty sends them: a webhook id per delivery, repeated on its retries.
            (
                "pagerduty",
                vec![
                    ("X-PagerDuty-Signature", sig),
                    ("X-Webhook-Id", format!("wh-{n}")),
                ],
                b,
            )
        }
        Kind::Datadog => {
            let b = format!(
                r#"{{"id":"dd-{n}","title":"[Triggered on {{service:api}}] Error rate: {}% of requests returning 503","date":"1710426180000","alert_transition":"Triggered","alert_cycle_key":"c{}","tags":"service:api"}}"#,
                n % 100,
                n % 50
            )
            .into_bytes();
            (
                "datadog",
                vec![("X-IncidentPost-Token", SECRET.to_owned())],
                b,
            )
        }
        Kind::Github => {
            let b = format!(
                r#"{{"ref":"refs/heads/main","after":"{n:040x}","commits":[{{}}],"head_commit":{{"message":"change {n}","timestamp":"2024-03-14T14:00:00Z"}},"pusher":{{"name":"sarah"}},"repository":{{"full_name":"acme/api"}},"sender":{{"login":"sarah"}}}}"#
            )
            .into_bytes();
            let sig = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &[&b]));
            (
                "github",
                vec![
                    ("X-Hub-Signature-256", sig),
                    ("X-GitHub-Event", "push".to_owned()),
                    ("X-GitHub-Delivery", format!("gh-{n}")),
                ],
                b,
            )
        }
        Kind::Alertmanager => {
            let b = format!(
                r#"[{{"labels":{{"alertname":"APIResponseTime","service":"api","severity":"critical","n":"{n}"}},"annotations":{{"summary":"API response time > 5000ms"}},"startsAt":"2026-01-10T14:23:00Z"}}]"#
            )
            .into_bytes();
            ("api/v2/alerts", vec![], b)
        }
        Kind::Slack => {
            let b = format!(
                r#"{{"type":"event_callback","event_id":"Ev{n}","event_time":1710426180,"event":{{"type":"message","user":"U1","text":"looking at it {n}","channel":"C1","ts":"1710426180.{n:06}"}}}}"#
            )
            .into_bytes();
            let ts = chrono::Utc::now().timestamp().to_string();
            let sig = format!(
                "v0={}",
                hmac_sha256_hex(SECRET.as_bytes(), &[b"v0:", ts.as_bytes(), b":", &b])
            );
            (
                "slack",
                vec![
                    ("X-Slack-Signature", sig),
                    ("X-Slack-Request-Timestamp", ts),
                ],
                b,
            )
        }
    }
}

fn body(n: u64) -> Vec<u8> {
    // Fifty incidents, each receiving a stream of notes/acks: realistic key spread.
    let incident = format!("PBENCH{}", n % 50);
    let kind = if n < 50 {
        "incident.triggered"
    } else {
        "incident.acknowledged"
    };
    format!(
        r#"{{"event":{{"id":"bench-{n}","event_type":"{kind}","resource_type":"incident","occurred_at":"2024-03-14T14:23:00.000Z","agent":{{"summary":"sarah"}},"data":{{"id":"{incident}","type":"incident","title":"API response time > 5000ms","status":"triggered","urgency":"high","service":{{"summary":"api"}}}}}}}}"#
    )
    .into_bytes()
}

struct Step {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

impl Step {
    /// The table cells `req/s | p50 ms | p99 ms | errors`.
    fn cells(&self) -> String {
        format!(
            "{:.0} | {:.2} | {:.2} | {}",
            self.rps,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.errors
        )
    }
}

async fn run_step(
    client: &reqwest::Client,
    base: &str,
    kind: Kind,
    start_n: u64,
    requests: u64,
    concurrency: u64,
) -> Step {
    run_spread(
        client,
        &[base.to_owned()],
        kind,
        start_n,
        requests,
        concurrency,
    )
    .await
}

/// Like [`run_step`], each request to the next of `bases` in turn (a round-robin load
/// balancer in front of replicas).
async fn run_spread(
    client: &reqwest::Client,
    bases: &[String],
    kind: Kind,
    start_n: u64,
    requests: u64,
    concurrency: u64,
) -> Step {
    let bases: Arc<Vec<String>> = Arc::new(bases.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, bases, next, errors) =
            (client.clone(), bases.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let (path, headers, b) = request(kind, start_n + i);
                let base = &bases[(i as usize) % bases.len()];
                let t = Instant::now();
                let url = if path.starts_with("api/") {
                    format!("{base}/{path}")
                } else {
                    format!("{base}/webhooks/{path}")
                };
                let mut req = client
                    .post(url)
                    .header("Content-Type", "application/json")
                    .body(b);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => lat.push(t.elapsed()),
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
    let elapsed = began.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Step {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: a quick smoke run
    // then, so the benchmark stays working without costing the suite minutes.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let requests = env_or("BENCH_REQUESTS", 4000, 50, smoke);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(admin) = std::env::var("BENCH_DATABASE_URL") {
        rt.block_on(postgres_vs_sled(&admin, requests));
        return;
    }
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        if std::env::var_os("BENCH_REFERENCES_ONLY").is_some() {
            references(&client, requests, smoke, false).await;
            return;
        }
        println!("signed PagerDuty webhooks, {requests} per step, loopback, release build");
        println!("| mode | concurrency | req/s | p50 ms | p99 ms | errors |");
        println!("|---|---|---|---|---|---|");
        for (label, batch) in [
            ("group commit (max_batch 256)", 256),
            ("flush per webhook (max_batch 1)", 1),
        ] {
            let server = start(batch);
            wait_ready(&client, &server.base).await;
            let mut n = 0;
            // Warm-up: opens the 50 incidents and the connection pool.
            run_step(&client, &server.base, Kind::PagerDuty, n, 200, 16).await;
            n += 200;
            for c in [1u64, 8, 32, 64] {
                let s = run_step(&client, &server.base, Kind::PagerDuty, n, requests, c).await;
                n += requests;
                println!("| {label} | {c} | {} |", s.cells());
            }
        }
        println!();
        println!(
            "per source, group commit, concurrency 32 (events per second through the full path)"
        );
        println!("| source | req/s | p50 ms | p99 ms | errors |");
        println!("|---|---|---|---|---|");
        let server = start(256);
        wait_ready(&client, &server.base).await;
        for (label, kind) in [
            ("pagerduty", Kind::PagerDuty),
            ("datadog", Kind::Datadog),
            ("github", Kind::Github),
            ("slack", Kind::Slack),
        ] {
            let s = run_step(&client, &server.base, kind, 1_000_000, requests, 32).await;
            println!("| {label} | {} |", s.cells());
        }
        drop(server);
        references(&client, requests, smoke, !smoke).await;
    });
}

/// The mean committer batch of servers, from their `/metrics`.
async fn mean_batch(client: &reqwest::Client, bases: &[String]) -> f64 {
    let (mut events, mut units) = (0.0, 0.0);
    for base in bases {
        let sums = committer_sums(client, base).await;
        events += sums.events;
        units += sums.units;
    }
    if units > 0.0 {
        events / units
    } else {
        0.0
    }
}

/// `scripts/bench-ingest --backend postgres`: signed PagerDuty at concurrency 64 on sled,
/// on PostgreSQL with one replica and with three behind a round robin, in the same run.
async fn postgres_vs_sled(admin: &str, requests: u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    println!("signed PagerDuty webhooks, concurrency 64, {requests} requests each, loopback, release build");
    println!("| store | replicas | req/s | p50 ms | p99 ms | errors | mean commit batch |");
    println!("|---|---|---|---|---|---|---|");
    for (label, replicas) in [("sled", 0usize), ("PostgreSQL", 1), ("PostgreSQL", 3)] {
        let url =
            (replicas > 0).then(|| fresh_database(admin, &format!("bench_ingest_{replicas}")));
        let servers: Vec<Server> = (0..replicas.max(1))
            .map(|_| start_on(256, url.as_deref()))
            .collect();
        let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
        for b in &bases {
            wait_ready(&client, b).await;
        }
        // Warm-up: opens the 50 incidents and the connection pools.
        run_spread(&client, &bases, Kind::PagerDuty, 0, 200, 16).await;
        let s = run_spread(&client, &bases, Kind::PagerDuty, 200, requests, 64).await;
        let batch = mean_batch(&client, &bases).await;
        println!(
            "| {label} | {} | {} | {batch:.1} |",
            replicas.max(1),
            s.cells()
        );
        drop(servers);
        if replicas > 0 {
            drop_database(admin, &format!("bench_ingest_{replicas}"));
        }
    }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The ceiling (same HTTP stack, signature check and JSON parse, no storage) and the peer
/// (Prometheus Alertmanager, in memory) in the same run, plus memory and disk figures.
/// With `startup`, then the start-up on a million stored events.
async fn references(client: &reqwest::Client, requests: u64, smoke: bool, startup: bool) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    // This machine's speed drifts by ±30 % within minutes, so the three servers run side
    // by side and take turns, round after round; the ratios are per round and their median.
    let rounds = env_or("BENCH_ROUNDS", 5, 1, smoke);

    // IncidentPost, with RSS and disk figures.
    let server = start(256);
    wait_ready(client, &server.base).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(server.child.id());

    // Ceiling: a bare actix endpoint checking the same signature and parsing the same JSON.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bare = HttpServer::new(|| {
        App::new().route(
            "/webhooks/pagerduty",
            web::post().to(|req: actix_web::HttpRequest, body: web::Bytes| async move {
                let sig = req
                    .headers()
                    .get("X-PagerDuty-Signature")
                    .and_then(|v| v.to_str().ok());
                if incidentpost::sources::pagerduty::verify_signature(SECRET.as_bytes(), sig, &body)
                    .is_err()
                {
                    return HttpResponse::Unauthorized().finish();
                }
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(_) => HttpResponse::Accepted().finish(),
                    Err(_) => HttpResponse::BadRequest().finish(),
                }
            }),
        )
    })
    .listen(listener)
    .unwrap()
    .disable_signals()
    .run();
    let handle = bare.handle();
    tokio::spawn(bare);
    let bare_base = format!("http://127.0.0.1:{port}");

    // The peer: Prometheus Alertmanager (Debian's package), equivalent alerts.
    let am_dir = tempfile::tempdir().unwrap();
    let mut peer = None;
    if let Some(bin) = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    {
        let cfg = am_dir.path().join("am.yml");
        std::fs::write(
            &cfg,
            "route:\n  receiver: none\nreceivers:\n  - name: none\n",
        )
        .unwrap();
        let port = support::free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", am_dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_for_ok(client, &format!("{base}/-/ready"), Duration::from_secs(10)).await;
        peer = Some((child, base));
    }
    let am_idle = peer.as_ref().map_or(0, |(c, _)| rss_kib(c.id()));

    println!();
    println!(
        "reference points, concurrency 64, {requests} requests each, {rounds} rounds taking turns"
    );
    println!("| round | incidentpost req/s (p99 ms) | ceiling req/s | Alertmanager req/s (p99 ms) | × peer | % of ceiling | events per unit | committer busy | flush ms per unit |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut to_peer, mut to_ceiling) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for round in 0..rounds {
        // Who goes first rotates, so no server always meets the machine warm or cold.
        let mut ours = None;
        let mut ceiling = None;
        let mut theirs = None;
        for turn in 0..3 {
            match (turn + round) % 3 {
                0 => {
                    let before = committer_sums(client, &server.base).await;
                    let step = run_step(
                        client,
                        &server.base,
                        Kind::PagerDuty,
                        round * requests,
                        requests,
                        64,
                    )
                    .await;
                    let after = committer_sums(client, &server.base).await;
                    ours = Some((step, after.since(&before)));
                }
                1 => {
                    ceiling = Some(
                        run_step(
                            client,
                            &bare_base,
                            Kind::PagerDuty,
                            round * requests,
                            requests,
                            64,
                        )
                        .await,
                    )
                }
                _ => {
                    if let Some((_, base)) = &peer {
                        theirs = Some(
                            run_step(
                                client,
                                base,
                                Kind::Alertmanager,
                                round * requests,
                                requests,
                                64,
                            )
                            .await,
                        );
                    }
                }
            }
        }
        let ((ours, units), ceiling) = (ours.unwrap(), ceiling.unwrap());
        errors += ours.errors + ceiling.errors + theirs.as_ref().map_or(0, |t| t.errors);
        let pct = ours.rps / ceiling.rps * 100.0;
        to_ceiling.push(pct);
        let (peer_cell, ratio_cell) = match &theirs {
            Some(t) => {
                to_peer.push(ours.rps / t.rps);
                (
                    format!("{:.0} ({:.1})", t.rps, t.p99.as_secs_f64() * 1e3),
                    format!("{:.2}", ours.rps / t.rps),
                )
            }
            None => (
                "not installed (apt-get install prometheus-alertmanager)".into(),
                "–".into(),
            ),
        };
        let wall = requests as f64 / ours.rps;
        println!(
            "| {} | {:.0} ({:.1}) | {:.0} | {peer_cell} | {ratio_cell} | {pct:.0} % | {:.1} | {:.0} % | {:.2} |",
            round + 1,
            ours.rps,
            ours.p99.as_secs_f64() * 1e3,
            ceiling.rps,
            units.events / units.units.max(1.0),
            units.commit_secs / wall * 100.0,
            units.flush_secs / units.units.max(1.0) * 1e3,
        );
    }
    // The middle value (of an even count, the mean of the two middle ones).
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    let vs_peer = median(to_peer).map_or("no peer".to_owned(), |r| format!("{r:.2}× the peer"));
    println!(
        "median of {rounds} rounds: {vs_peer}, {:.1} % of the ceiling; {errors} errors",
        median(to_ceiling).unwrap_or(f64::NAN)
    );
    let loaded = rss_kib(server.child.id());
    handle.stop(false).await;
    if let Some((mut child, _)) = peer {
        println!(
            "Alertmanager RSS: idle {} MiB, after load {} MiB",
            am_idle / 1024,
            rss_kib(child.id()) / 1024
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    tokio::time::sleep(Duration::from_millis(700)).await; // sled's background flush
    let disk = dir_bytes(server.dir.path());
    let stored = rounds * requests;
    drop(server);
    println!();
    println!(
        "incidentpost RSS: idle {} MiB, after {stored} webhooks {} MiB",
        idle / 1024,
        loaded / 1024
    );
    println!(
        "disk: {} bytes for {stored} events with their raw payloads and delivery ids = {} bytes per stored event",
        disk,
        disk / stored.max(1)
    );
    if startup {
        startup_with_million_events().await;
    }
}

/// The committer's running totals, from the server's `/metrics`: how many units, how
/// many events in them, and the seconds spent committing and flushing them (all zero
/// when `/metrics` does not answer).
#[derive(Default)]
struct CommitterSums {
    units: f64,
    events: f64,
    commit_secs: f64,
    flush_secs: f64,
}

impl CommitterSums {
    fn since(&self, before: &CommitterSums) -> CommitterSums {
        CommitterSums {
            units: self.units - before.units,
            events: self.events - before.events,
            commit_secs: self.commit_secs - before.commit_secs,
            flush_secs: self.flush_secs - before.flush_secs,
        }
    }
}

async fn committer_sums(client: &reqwest::Client, base: &str) -> CommitterSums {
    let Ok(text) = async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await
    }
    .await
    else {
        return CommitterSums::default();
    };
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    CommitterSums {
        units: value("incidentpost_commit_batch_size_count"),
        events: value("incidentpost_commit_batch_size_sum"),
        commit_secs: value("incidentpost_commit_duration_seconds_sum"),
        flush_secs: value("incidentpost_store_flush_duration_seconds_sum"),
    }
}

/// Start-up time (spawn to /readyz) on a data directory holding 1,000,000 events,
/// loaded with `incidentpost import`.
async fn startup_with_million_events() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("million.ndjson");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        writeln!(w, r#"{{"type":"header","schema":1,"generator":"bench"}}"#).unwrap();
        for i in 0..1000u64 {
            let id = format!("PM{i}");
            writeln!(w, r#"{{"type":"incident","id":"{id}","title":"Incident {i}","status":"resolved","opened_by":"pagerduty","triggered_at":"2026-01-10T14:23:00Z","resolved_at":"2026-01-10T14:52:00Z","event_count":1000,"next_seq":1000,"updated_at":"2026-01-10T14:52:00Z"}}"#).unwrap();
            for seq in 0..1000u64 {
                let ulid = ulid::Ulid::from_parts(
                    1_768_055_000_000 + seq,
                    u128::from(i) << 32 | u128::from(seq),
                );
                writeln!(w, r#"{{"type":"event","seq":{seq},"event":{{"id":"{ulid}","source":"datadog","kind":"alert.firing","occurred_at":"2026-01-10T14:23:00Z","received_at":"2026-01-10T14:23:00Z","title":"Alert: PostgreSQL connection pool at 98% capacity","incident_id":"{id}","correlation":"sole_open"}}}}"#).unwrap();
            }
        }
    }
    let data = dir.path().join("data");
    let t = Instant::now();
    let out = Command::new(support::server_bin())
        .args(["import", file.to_str().unwrap()])
        .env("INCIDENTPOST__STORAGE__PATH", &data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let import_secs = t.elapsed().as_secs_f64();
    let port = support::free_port();
    let t = Instant::now();
    let mut child = Command::new(support::server_bin())
        .arg("serve")
        .env("INCIDENTPOST__SERVER__PORT", port.to_string())
        .env("INCIDENTPOST__STORAGE__PATH", &data)
        .env("INCIDENTPOST__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_ok(&client, &format!("{base}/readyz"), Duration::from_secs(120)).await;
    let ready = t.elapsed();
    // What the process holds for a store this size before any request: memory that
    // grows with the data (sled's page table), not with the work.
    let rss_ready = rss_kib(child.id()) / 1024;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "start-up with 1,000,000 stored events (1,000 incidents): ready in {:.0} ms, RSS {rss_ready} MiB (loading them with `incidentpost import` took {import_secs:.1} s; data dir {} MiB)",
        ready.as_secs_f64() * 1e3,
        dir_bytes(&data) / (1024 * 1024)
    );
}
