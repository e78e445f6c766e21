//! What the benchmarks share: waiting for a server, reading its RSS, a fresh PostgreSQL
//! database. Included by each bench with `#[path]` (a bench is its own crate).

use std::time::Duration;

/// The service binary to measure: `BENCH_SERVER_BIN` when set (another build, for a
/// before-and-after in one run), else this build's release binary.
pub fn server_bin() -> std::path::PathBuf {
    std::env::var_os("BENCH_SERVER_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_incidentpost").into())
}

/// A number from the environment (`default` when unset or unparsable), or `smoke` in a
/// smoke run (`cargo test --all-targets` runs the benches without `--bench`).
pub fn env_or(name: &str, default: u64, smoke: u64, is_smoke: bool) -> u64 {
    if is_smoke {
        return smoke;
    }
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The environment that puts the service on a PostgreSQL database (`Some(url)`), or
/// nothing (sled).
pub fn backend_env(database: Option<&str>) -> Vec<(&'static str, String)> {
    database
        .map(|url| {
            vec![
                ("INCIDENTPOST__STORAGE__BACKEND", "postgres".to_owned()),
                ("INCIDENTPOST__STORAGE__POSTGRES__URL", url.to_owned()),
            ]
        })
        .unwrap_or_default()
}

/// Waits until `base` answers `/readyz` (up to a minute: a big store recovers slowly).
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    wait_for_ok(client, &format!("{base}/readyz"), Duration::from_secs(60)).await;
}

/// Polls `url` every 10 ms until it answers 2xx; panics after `within`.
pub async fn wait_for_ok(client: &reqwest::Client, url: &str, within: Duration) {
    let started = std::time::Instant::now();
    while !client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < within,
            "{url} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A number from `/proc/<pid>/status` (`VmRSS:` in KiB, `Threads:`), 0 if unreadable.
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The resident set of a process, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// How many threads a process runs.
#[allow(dead_code)] // not every bench counts threads
pub fn thread_count(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

/// The resident set of a process, in MiB.
#[allow(dead_code)] // not every bench prints MiB
pub fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

/// An empty database on the server of `admin` (an administrative URL), and its URL.
pub fn fresh_database(admin: &str, name: &str) -> String {
    drop_database(admin, name);
    admin_statement(admin, format!("CREATE DATABASE {name}"));
    match admin.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => admin.to_owned(),
    }
}

/// Drops a bench database (with whatever is still connected to it).
pub fn drop_database(admin: &str, name: &str) {
    admin_statement(
        admin,
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}

/// One statement on the administrative connection, on a thread of its own (the blocking
/// client must not run on the benches' runtime). One statement per call: a
/// multi-statement string runs as one transaction block, which DROP/CREATE DATABASE refuse.
fn admin_statement(admin: &str, sql: String) {
    let admin_url = admin.to_owned();
    std::thread::spawn(move || {
        let mut c =
            postgres::Client::connect(&admin_url, postgres::NoTls).expect("BENCH_DATABASE_URL");
        c.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
    .join()
    .unwrap();
}
