//! `prismctl doctor` against the real local stack.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn prismctl(envs: &[(&str, &str)], args: &[&str]) -> Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(env!("CARGO_BIN_EXE_prismctl"));
    command
        .args(args)
        .current_dir(&root)
        .env("PRISM_CONFIG", root.join("config/prism.toml"))
        .env_remove("PRISM_PROFILE");
    for (k, v) in envs {
        command.env(k, v);
    }
    match command.output() {
        Ok(output) => output,
        Err(e) => panic!("running prismctl: {e}"),
    }
}

fn report(output: &Output) -> Value {
    match serde_json::from_slice(&output.stdout) {
        Ok(v) => v,
        Err(e) => panic!(
            "doctor --json printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|c| c["service"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[test]
fn doctor_reports_every_service_of_the_stack_with_its_version() {
    let output = prismctl(&[], &["doctor", "--json"]);
    let report = report(&output);
    assert!(
        output.status.success() && report["ok"] == true,
        "doctor failed — is the stack up? (`dev/stack up`)\n{report:#}"
    );
    let expect = [
        ("kafka", "broker"),
        ("mongodb", "7."),
        ("mysql", "MariaDB"),
        ("postgres", "PostgreSQL 15"),
        ("elasticsearch", "OpenSearch 2."),
        ("redis", "Redis 7"),
        ("prometheus", "Prometheus"),
    ];
    for (name, version) in expect {
        let check = service(&report, name);
        assert_eq!(check["status"], "ok", "{check}");
        let shown = check["version"].as_str().unwrap_or_default();
        assert!(
            shown.contains(version),
            "{name}: {shown:?} lacks {version:?}"
        );
        assert!(
            check["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{check}"
        );
    }
}

#[test]
fn a_required_service_that_does_not_answer_fails_the_doctor() {
    // Port 1 on loopback: nothing listens there.
    let output = prismctl(
        &[
            ("PRISM_REDIS__URL", "redis://127.0.0.1:1/0"),
            ("PRISM_DOCTOR__TIMEOUT_MS", "3000"),
        ],
        &["doctor", "--json"],
    );
    let report = report(&output);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    let redis = service(&report, "redis");
    assert_eq!(redis["status"], "failed");
    assert_eq!(redis["address"], "127.0.0.1:1");
    assert!(redis["error"].as_str().is_some_and(|e| !e.is_empty()));
}

#[test]
fn an_optional_service_that_does_not_answer_is_reported_but_not_fatal() {
    let output = prismctl(
        &[("PRISM_PROMETHEUS__URL", "http://127.0.0.1:1")],
        &["doctor"],
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("unavailable (optional)"), "{table}");
    assert!(output.status.success(), "{table}");
}

#[test]
fn a_password_in_a_url_never_reaches_the_output() {
    let output = prismctl(
        &[(
            "PRISM_MYSQL__URL",
            "mysql://prism:wrong-secret-pw@127.0.0.1:3306/prism",
        )],
        &["doctor", "--json"],
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(!all.contains("wrong-secret-pw"), "{all}");
    assert_eq!(service(&report(&output), "mysql")["status"], "failed");
}

#[test]
fn an_unknown_configuration_key_is_a_clear_error() {
    let output = prismctl(&[("PRISM_KAFKA__BOOTSTRAP_SERVER", "x:1")], &["doctor"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bootstrap_server"), "{stderr}");
}
