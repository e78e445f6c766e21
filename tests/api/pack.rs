//! The postmortem pack: rendered on resolve, every claim cited, served as a zip.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use incidentpost::postmortem::{import, render_pack, Templates};
use serde_json::Value;

use crate::helpers::*;
use crate::replay::post_seed_incident;

pub fn unzip(bytes: &[u8]) -> BTreeMap<String, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).expect("a zip");
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        out.insert(f.name().to_owned(), s);
    }
    out
}

const SEVEN: [&str; 7] = [
    "events.ndjson",
    "hn-post.txt",
    "incident.json",
    "manifest.json",
    "postmortem.md",
    "timeline.svg",
    "twitter-thread.txt",
];

/// The lines of one `## Section` of postmortem.md.
pub fn section<'a>(md: &'a str, name: &str) -> Vec<&'a str> {
    let start = md
        .find(&format!("## {name}\n"))
        .unwrap_or_else(|| panic!("no section {name}:\n{md}"));
    md[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn assert_seed_sections(md: &str) {
    for s in [
        "Executive Summary",
        "Timeline",
        "Root Cause",
        "Mitigations",
        "Action Items",
        "To Our Users",
        "Evidence",
    ] {
        assert!(md.contains(&format!("## {s}\n")), "missing {s}:\n{md}");
    }
    assert!(md.contains("Duration: 29 minutes"), "{md}");
    let timeline = section(md, "Timeline");
    assert_eq!(timeline.len(), 12, "{timeline:#?}");
    assert!(timeline[0].starts_with("- 14:23 UTC [PagerDuty] CRITICAL: API response time > 5000ms"));
    assert!(timeline[11].starts_with("- 14:52 UTC [PagerDuty] Incident resolved"));
}

fn svg_lanes(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).expect("timeline.svg is well-formed XML");
    doc.descendants()
        .filter(|n| n.attribute("class") == Some("lane"))
        .filter_map(|n| n.text().map(str::to_owned))
        .collect()
}

fn tweets(thread: &str) -> Vec<&str> {
    thread
        .split("\n\n")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

#[tokio::test]
async fn the_seed_timeline_pasted_gives_a_pack_with_every_section_29_minutes_and_12_entries() {
    let app = spawn_app().await;
    let text = fixture_bytes("seed-timeline.txt");
    let res = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .header("Content-Type", "text/plain")
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["events"], 13,
        "12 lines plus the root cause they name: {body}"
    );
    assert_eq!(body["skipped"].as_array().unwrap().len(), 0);
    let id = body["incident_id"].as_str().unwrap().to_owned();

    let res = app.get(&format!("/incidents/{id}/pack.zip")).await;
    assert_eq!(res.status(), 200);
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains(&format!("incident-{id}-postmortem.zip")),
        "{disposition}"
    );
    let files = unzip(&res.bytes().await.unwrap());
    assert_eq!(files.keys().map(String::as_str).collect::<Vec<_>>(), SEVEN);
    assert_seed_sections(&files["postmortem.md"]);
    let md = &files["postmortem.md"];
    assert!(md.contains("At its peak: error rate 23%"), "{md}");
    assert_eq!(
        section(md, "Mitigations"),
        ["- Rolling back user-sync to v2.3.1 [^t9]"]
    );

    // Each file is served alone too.
    let alone = app
        .get(&format!("/incidents/{id}/postmortem.md"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(&alone, md);
    // Pasting it again is recognized.
    let again = app
        .client
        .post(format!("{}/incidents/import", app.address))
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

#[test]
fn the_offline_cli_renders_the_same_pack_byte_for_byte_twice() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str| {
        let status = Command::new(env!("CARGO_BIN_EXE_incidentpost"))
            .arg("render")
            .arg(fixture_path("seed-timeline.txt"))
            .arg("-o")
            .arg(dir.path().join(out))
            .env_remove("INCIDENTPOST__RENDER__TEMPLATES_DIR")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        std::fs::read(dir.path().join(out)).unwrap()
    };
    let a = run("a.zip");
    let b = run("b.zip");
    assert_eq!(a, b, "same timeline, same bytes");
    let files = unzip(&a);
    assert_eq!(files.len(), 7);
    assert_seed_sections(&files["postmortem.md"]);
    let manifest: Value = serde_json::from_str(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), 6);
}

#[test]
fn unreadable_lines_are_reported_with_their_numbers() {
    let text = "2026-01-10\n14:23 UTC [PagerDuty] CRITICAL: down\nnonsense here\n25:99 UTC [Slack] hi\n14:30 UTC [PagerDuty] Incident resolved\n";
    let imported = import::parse(text, None, None).unwrap();
    let lines: Vec<usize> = imported.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, [3, 4]);
    assert_eq!(imported.events.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.txt"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_incidentpost"))
        .arg("render")
        .arg(dir.path().join("t.txt"))
        .arg("-o")
        .arg(dir.path().join("p.zip"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("line 4"), "{err}");
}

pub async fn stored_pack(app: &TestApp, id: &str) -> Vec<u8> {
    stored_pack_within(app, id, Duration::from_secs(2)).await
}

/// The stored pack, once it is stored (polled every 20 ms for at most `wait`).
pub async fn stored_pack_within(app: &TestApp, id: &str, wait: Duration) -> Vec<u8> {
    let id = incidentpost::domain::IncidentId::parse(id).unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < wait {
        if let Some(zip) = app.store.pack(&id).unwrap() {
            return zip;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pack stored within {wait:?} of resolve");
}

#[tokio::test]
async fn the_replayed_incident_gets_its_pack_on_resolve_with_cited_claims() {
    let app = spawn_app_with(crate::replay::SEED_PEOPLE, None).await;
    post_seed_incident(&app).await;
    // No request: the resolve webhook alone renders and stores the pack.
    let files = unzip(&stored_pack(&app, "PSEED01").await);
    assert_eq!(files.keys().map(String::as_str).collect::<Vec<_>>(), SEVEN);
    let md = &files["postmortem.md"];
    let events = app.events("PSEED01").await;
    let id_of = |kind: &str| {
        events.iter().find(|e| e["kind"] == kind).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Root cause cites the annotation's event, and the Evidence section names it.
    let root = section(md, "Root Cause").join("\n");
    assert!(
        root.starts_with("PR #2847 missing connection.close() in error handler [^a"),
        "{root}"
    );
    assert!(md.contains(&id_of("annotation.root_cause")), "{md}");
    // One person, one name, whatever each source called them.
    assert!(md.contains("\nResponders: Sarah Chen, Mike Ross •"), "{md}");
    assert!(!md.contains("U0SARAH") && !md.contains("U0MIKE"), "{md}");
    assert!(
        md.contains("Sarah Chen: 'Looks like connection leak"),
        "{md}"
    );
    // The severity prefix PagerDuty's title carries is not doubled.
    assert!(!md.contains("CRITICAL: CRITICAL"), "{md}");
    assert!(
        md.contains("[PagerDuty] CRITICAL: API response time > 5000ms"),
        "{md}"
    );
    // The chat's "Rolling back …" and the deploy's "Rolled back …" are one mitigation,
    // citing both events.
    let mitigations = section(md, "Mitigations");
    assert_eq!(mitigations.len(), 1, "{mitigations:?}");
    let line = &mitigations[0];
    assert!(
        line.starts_with("- Rolled back user-sync to v2.3.1 [^"),
        "{line}"
    );
    assert_eq!(line.matches("[^").count(), 2, "{line}");
    for kind in ["annotation.mitigation", "change.rolled_back"] {
        let label = md
            .lines()
            .find(|l| l.starts_with("[^") && l.contains(&id_of(kind)))
            .and_then(|l| l.split(']').next())
            .unwrap()
            .to_owned();
        assert!(line.contains(&format!("{label}]")), "{kind}: {line}");
    }
    // Action items keep their priority.
    let actions = section(md, "Action Items");
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        actions[0].starts_with("- **HIGH** alert on connection pool saturation [^a"),
        "{actions:?}"
    );
    // The header shows the number the impact states; the summary says the sentence.
    assert!(md.contains("Users affected: 12,400 •"), "{md}");
    // Peak error rate 23%, with its evidence.
    let summary = section(md, "Executive Summary").join(" ");
    let cite = summary
        .split("error rate 23%")
        .nth(1)
        .expect("peak quoted")
        .split(']')
        .next()
        .unwrap();
    let label = cite.trim_start_matches("[^");
    let evidence_line = md
        .lines()
        .find(|l| l.starts_with(&format!("[^{label}]:")))
        .unwrap();
    assert!(
        evidence_line.contains("Error rate: 23% of requests returning 503"),
        "{evidence_line}"
    );
    assert!(
        summary.contains("Impact: 12,400 users affected, 23% of requests failed at peak."),
        "{summary}"
    );
    // Said once, in public too.
    let hn = &files["hn-post.txt"];
    assert_eq!(hn.matches("v2.3.1").count(), 1, "{hn}");
    assert!(
        hn.contains("What fixed it: Rolled back user-sync to v2.3.1."),
        "{hn}"
    );
    assert!(
        hn.contains("Impact: 12,400 users affected, 23% of requests failed at peak."),
        "{hn}"
    );

    // The other files.
    let lanes = svg_lanes(&files["timeline.svg"]);
    for source in ["PagerDuty", "Datadog", "GitHub", "Slack", "AWS CloudWatch"] {
        assert!(
            lanes.iter().any(|l| l == source),
            "no lane for {source}: {lanes:?}"
        );
    }
    for t in tweets(&files["twitter-thread.txt"]) {
        assert!(t.chars().count() <= 280, "{} chars: {t}", t.chars().count());
    }
    assert!(files["hn-post.txt"].starts_with("Show HN: "));
    assert_eq!(files["events.ndjson"].lines().count(), events.len());
    let incident: Value = serde_json::from_str(&files["incident.json"]).unwrap();
    assert_eq!(
        incident["facts"]["root_cause"]["evidence"][0],
        id_of("annotation.root_cause")
    );

    // Two renders of the same incident are byte-identical zips.
    let first = app
        .client
        .post(format!("{}/incidents/PSEED01/render", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let a = app
        .get("/incidents/PSEED01/pack.zip")
        .await
        .bytes()
        .await
        .unwrap();
    app.client
        .post(format!("{}/incidents/PSEED01/render", app.address))
        .send()
        .await
        .unwrap();
    let b = app
        .get("/incidents/PSEED01/pack.zip")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn an_open_incident_gets_a_draft_and_an_edit_changes_the_postmortem() {
    let app = spawn_app().await;
    app.post_pagerduty(&pd_v3(
        "incident.triggered",
        "PDRAFT",
        "E1",
        &at_offset(-10),
    ))
    .await;
    let res = app.get("/incidents/PDRAFT/pack.zip").await;
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("DRAFT"));
    let md = &unzip(&res.bytes().await.unwrap())["postmortem.md"];
    assert!(md.contains("**DRAFT**"), "{md}");
    assert!(section(md, "Root Cause")[0].starts_with("Unknown"), "{md}");

    let edit = serde_json::json!({
        "root_cause": "Certificate expired on the API load balancer",
        "impact": "about 3,000 users",
        "action_items": [{"priority": "HIGH", "text": "Alert 30 days before certificates expire"}],
        "author": "sarah"
    });
    let res = app
        .client
        .patch(format!("{}/incidents/PDRAFT", app.address))
        .json(&edit)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let md = app
        .get("/incidents/PDRAFT/postmortem.md")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        section(&md, "Root Cause")[0]
            .starts_with("Certificate expired on the API load balancer [^a"),
        "{md}"
    );
    // The header shows the number the impact states; the summary says the sentence.
    assert!(md.contains("Users affected: 3,000 •"), "{md}");
    assert!(
        section(&md, "Executive Summary")[0].contains("Impact: About 3,000 users"),
        "{md}"
    );
    assert_eq!(
        section(&md, "Action Items"),
        ["- **HIGH** Alert 30 days before certificates expire [^a3]"]
    );
    // Last one wins, history kept.
    let res = app
        .client
        .patch(format!("{}/incidents/PDRAFT", app.address))
        .json(&serde_json::json!({"root_cause": "An expired certificate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let md = app
        .get("/incidents/PDRAFT/postmortem.md")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        section(&md, "Root Cause")[0].starts_with("An expired certificate"),
        "{md}"
    );
    let kinds = app
        .events("PDRAFT")
        .await
        .iter()
        .filter(|e| e["kind"] == "annotation.root_cause")
        .count();
    assert_eq!(kinds, 2);
    let bad = app
        .client
        .patch(format!("{}/incidents/PDRAFT", app.address))
        .json(&serde_json::json!({"action_items": [{"priority": "URGENT", "text": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        app.client
            .patch(format!("{}/incidents/NOPE", app.address))
            .json(&edit)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn a_template_override_is_used_and_a_missing_variable_fails_at_load() {
    let seed = import::parse(
        &String::from_utf8(fixture_bytes("seed-timeline.txt")).unwrap(),
        None,
        None,
    )
    .unwrap();
    let hn_of = |templates: &Templates| {
        let pack = render_pack(templates, &seed.incident, &seed.events).unwrap();
        String::from_utf8(pack.file("hn-post.txt").unwrap().to_vec()).unwrap()
    };
    let default = hn_of(&Templates::load(None).unwrap());
    // The embedded template, copied and changed by one literal word, changes the post by
    // that word and nothing else.
    let embedded = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/hn-post.txt.hbs"),
    )
    .unwrap();
    assert!(embedded.contains("Full postmortem with"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hn-post.txt.hbs"),
        embedded.replace("Full postmortem with", "Whole postmortem with"),
    )
    .unwrap();
    let custom = hn_of(&Templates::load(Some(dir.path())).unwrap());
    assert_ne!(custom, default);
    assert_eq!(
        custom.replace("Whole postmortem with", "Full postmortem with"),
        default
    );
    // A partial is replaced the same way: the summary's words, in postmortem.md.
    std::fs::create_dir_all(dir.path().join("partials")).unwrap();
    std::fs::write(
        dir.path().join("partials/summary.hbs"),
        "In short: {{title}}, {{duration}}.\n",
    )
    .unwrap();
    let templates = Templates::load(Some(dir.path())).unwrap();
    let pack = render_pack(&templates, &seed.incident, &seed.events).unwrap();
    let md = String::from_utf8(pack.file("postmortem.md").unwrap().to_vec()).unwrap();
    assert_eq!(
        section(&md, "Executive Summary"),
        ["In short: API response time > 5000ms, 29 minutes."]
    );
    std::fs::remove_dir_all(dir.path().join("partials")).unwrap();
    std::fs::write(
        dir.path().join("hn-post.txt.hbs"),
        "Custom HN: {{title}} took {{duration}}\n",
    )
    .unwrap();
    assert_eq!(
        hn_of(&Templates::load(Some(dir.path())).unwrap()),
        "Custom HN: API response time > 5000ms took 29 minutes\n"
    );
    std::fs::write(
        dir.path().join("postmortem.md.hbs"),
        "# {{title}} {{no_such_variable}}\n",
    )
    .unwrap();
    let err = Templates::load(Some(dir.path()))
        .err()
        .expect("strict mode refuses the template");
    assert!(err.to_string().contains("postmortem.md"), "{err}");
}

/// Snapshot tests: the rendered postmortem.md of fixed inputs, compared with the files in
/// tests/snapshots/. `UPDATE_SNAPSHOTS=1 scripts/test` rewrites them (review the diff).
#[test]
fn postmortem_snapshots_match() {
    let cases: [(&str, String); 4] = [
        ("seed", String::from_utf8(fixture_bytes("seed-timeline.txt")).unwrap()),
        ("one-event", "2026-02-01\n09:00 UTC [PagerDuty] CRITICAL: Checkout unavailable\n".into()),
        (
            "multi-day",
            "2026-03-01\n23:40 UTC [Datadog] Alert: Queue depth at 95% of capacity\n23:50 UTC [PagerDuty] CRITICAL: Order processing delayed\n00:20 UTC [Slack] @ana: root cause: consumer pool was scaled to zero by a bad autoscaling rule\n00:30 UTC [Slack] Rolling back autoscaling rule to revision 41\n02:10 UTC [PagerDuty] Incident resolved\naction HIGH: guard autoscaling rules with a minimum of two consumers\n".into(),
        ),
        (
            "no-annotations",
            "2026-04-02\n10:00 UTC [PagerDuty] CRITICAL: Login errors above 5%\n10:04 UTC [Datadog] Error rate: 7% of logins failing\n10:20 UTC [PagerDuty] Incident resolved\n".into(),
        ),
    ];
    let templates = Templates::load(None).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var("UPDATE_SNAPSHOTS").is_ok();
    let mut names = Vec::new();
    for (name, text) in cases {
        let imported = import::parse(&text, None, None).unwrap();
        let pack = render_pack(&templates, &imported.incident, &imported.events).unwrap();
        // The prose of every file people read, byte for byte.
        for file in ["postmortem.md", "hn-post.txt", "twitter-thread.txt"] {
            let got = String::from_utf8(pack.file(file).unwrap().to_vec()).unwrap();
            let snapshot = format!("{name}.{file}");
            let path = dir.join(&snapshot);
            names.push(snapshot);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &got).unwrap();
            }
            let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                panic!("{} missing: run with UPDATE_SNAPSHOTS=1", path.display())
            });
            assert_eq!(
                got,
                expected,
                "{name}: the rendered {file} differs from {}",
                path.display()
            );
        }
    }
    // No unreferenced snapshots.
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    names.sort();
    assert_eq!(
        on_disk, names,
        "unreferenced snapshot files in tests/snapshots"
    );
}

async fn merged_pr_then_incident(app: &TestApp) {
    let mut pr = fixture_json("github/pull_request.closed.not-merged.octokit.json");
    pr["repository"]["full_name"] = "octocat/Hello-World".into();
    pr["pull_request"]["number"] = 1347.into();
    pr["pull_request"]["merged"] = true.into();
    pr["pull_request"]["merged_at"] = at_offset(-24 * 60).into();
    assert_eq!(
        app.post_github("pull_request", "g-1347", &serde_json::to_vec(&pr).unwrap())
            .await
            .status(),
        202
    );
    app.post_pagerduty(&pd_v3("incident.triggered", "PENR", "E1", &at_offset(-30)))
        .await;
    app.post_pagerduty(&pd_v3("incident.resolved", "PENR", "E2", &at_offset(-1)))
        .await;
}

#[tokio::test]
async fn suspect_pull_requests_are_enriched_from_the_github_api() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let gh = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/repos/octocat/Hello-World/pulls/1347"))
        .and(header("authorization", "Bearer ghp_test"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_bytes(fixture_bytes("github-api/pulls.get.200.pull-request.json")),
        )
        .expect(1)
        .mount(&gh)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/octocat/Hello-World/pulls/1347/files"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(fixture_bytes(
            "github-api/pulls.list-files.200.diff-entry-items.json",
        )))
        .expect(1)
        .mount(&gh)
        .await;
    let app = spawn_app_with(
        &format!(
            "[sources.github]\ntoken = 'ghp_test'\napi_url = '{}'",
            gh.uri()
        ),
        None,
    )
    .await;
    merged_pr_then_incident(&app).await;
    let md = unzip(&stored_pack(&app, "PENR").await)["postmortem.md"].clone();
    let root = section(&md, "Root Cause").join("\n");
    assert!(root.contains("*Suspected*"), "{root}");
    assert!(
        root.contains("changed 5 files: file1.txt and 4 more") && root.contains("by @octocat"),
        "{root}"
    );
    // Cached: a second render makes no new API call (`expect(1)` above).
    app.client
        .post(format!("{}/incidents/PENR/render", app.address))
        .send()
        .await
        .unwrap();
    app.stop().await;
    gh.verify().await;
}

#[tokio::test]
async fn a_failing_github_api_never_blocks_the_render() {
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let gh = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .mount(&gh)
        .await;
    let app = spawn_app_with(
        &format!(
            "[sources.github]\ntoken = 'ghp_test'\napi_url = '{}'",
            gh.uri()
        ),
        None,
    )
    .await;
    merged_pr_then_incident(&app).await;
    let md = unzip(&stored_pack(&app, "PENR").await)["postmortem.md"].clone();
    assert!(
        section(&md, "Root Cause").join(" ").contains("*Suspected*"),
        "{md}"
    );
}
