//! Configuration layers, through the real binary (`check-config`), since environment
//! variables are process-wide.

use std::process::{Command, Output};

fn check_config(args: &[&str], env: &[(&str, &str)], cwd: &std::path::Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_incidentpost"));
    cmd.current_dir(cwd).args(args).arg("check-config");
    for (k, _) in std::env::vars() {
        if k.starts_with("INCIDENTPOST") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn port_of(out: &Output) -> u64 {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let json_end = text.rfind('}').unwrap();
    let v: serde_json::Value = serde_json::from_str(&text[..=json_end]).unwrap();
    v["server"]["port"].as_u64().unwrap()
}

#[test]
fn defaults_load_a_file_overrides_them_and_the_environment_overrides_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/staging.toml"),
        "[server]\nport = 9001\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("extra.toml"), "[server]\nport = 9003\n").unwrap();

    assert_eq!(port_of(&check_config(&[], &[], dir.path())), 8080);
    assert_eq!(
        port_of(&check_config(&["--env", "staging"], &[], dir.path())),
        9001
    );
    assert_eq!(
        port_of(&check_config(
            &["--env", "staging", "--config", "extra.toml"],
            &[],
            dir.path()
        )),
        9003
    );
    assert_eq!(
        port_of(&check_config(
            &["--env", "staging"],
            &[("INCIDENTPOST__SERVER__PORT", "9002")],
            dir.path()
        )),
        9002
    );
}

#[test]
fn an_invalid_value_is_rejected_with_the_key_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(&[], &[("INCIDENTPOST__SERVER__PORT", "eighty")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.port"), "{err}");

    let out = check_config(
        &[],
        &[("INCIDENTPOST__STORAGE__FLUSH_EVERY_MS", "0")],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.flush_every_ms"));
}

#[test]
fn a_public_address_without_secrets_refuses_to_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(
        &[],
        &[("INCIDENTPOST__SERVER__HOST", "0.0.0.0")],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sources.pagerduty.secret"));
}

#[test]
fn check_config_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(
        &[],
        &[("INCIDENTPOST__API__TOKEN", "s3cr3t-token")],
        dir.path(),
    );
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cr3t-token"));
}

#[test]
fn a_public_address_refuses_a_weak_token_and_repeated_secrets_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let strong = [
        ("INCIDENTPOST__SERVER__HOST", "0.0.0.0"),
        (
            "INCIDENTPOST__SERVER__PUBLIC_URL",
            "https://incidents.example.com",
        ),
        (
            "INCIDENTPOST__SOURCES__PAGERDUTY__SECRET",
            "pd-secret-value",
        ),
        ("INCIDENTPOST__SOURCES__GITHUB__SECRET", "gh-secret-value"),
        (
            "INCIDENTPOST__SOURCES__SLACK__SIGNING_SECRET",
            "slack-secret-value",
        ),
        ("INCIDENTPOST__SOURCES__DATADOG__TOKEN", "dd-token-value"),
        ("INCIDENTPOST__SOURCES__CLOUDWATCH__ENABLED", "false"),
        ("INCIDENTPOST__API__TOKEN", "a-long-enough-api-token"),
    ];
    let out = check_config(&[], &strong, dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (key, value, named) in [
        ("INCIDENTPOST__API__TOKEN", "x", "api.token"),
        (
            "INCIDENTPOST__API__TOKEN",
            "                    ",
            "api.token",
        ),
        (
            "INCIDENTPOST__SOURCES__GITHUB__SECRET",
            "pd-secret-value",
            "sources.github.secret",
        ),
        (
            "INCIDENTPOST__SERVER__PUBLIC_URL",
            "",
            "server.allowed_hosts",
        ),
    ] {
        let env: Vec<(&str, &str)> = strong
            .iter()
            .map(|(k, v)| if *k == key { (*k, value) } else { (*k, *v) })
            .collect();
        let out = check_config(&[], &env, dir.path());
        assert_eq!(out.status.code(), Some(2), "{key}={value:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{key}={value:?}: {stderr}");
    }
}
