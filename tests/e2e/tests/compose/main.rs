//! The container files against the code, without Docker: `docker-compose.yml` and the
//! `Dockerfile` must run binaries the workspace builds, set only `TORONTO_*` variables
//! the runtime reads (with values it accepts), and agree on ports and healthchecks.
//!
//! Each test gathers every problem it finds and fails once, listing what to fix.
//! One binary, one module per file checked: [`dockerfile`], [`compose_file`],
//! [`kubernetes`], [`kustomize`] and [`monitoring`]; [`grafana`] and [`metric_names`]
//! run the services and read their `/metrics`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::Value;
use toronto_protocol::ServiceKind;
use toronto_runtime::Config;
use toronto_runtime::config::CONFIG_FILE_VAR;

/// The image every service container runs.
const IMAGE: &str = "toronto-devops:latest";
/// Where the Dockerfile puts the binaries.
const BIN_DIR: &str = "/usr/local/bin/";
/// What the runtime does after the grace period before it exits: flush (bounded at 5 s)
/// and drain. `stop_grace_period` must cover the grace period plus this.
const AFTER_GRACE: Duration = Duration::from_secs(5);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn fail_if_any(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s) to fix:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------
// The workspace's binaries
// ---------------------------------------------------------------------------------------

/// The binaries of the crates under `services/` and `cli/`: each `[[bin]] name`, and the
/// package name when `src/main.rs` is there and no `[[bin]]` claims it.
fn workspace_binaries() -> BTreeSet<String> {
    let mut crates = vec![root().join("cli")];
    let services = std::fs::read_dir(root().join("services")).expect("services/ is readable");
    crates.extend(services.map(|e| e.expect("services/ entry").path()));
    let mut bins = BTreeSet::new();
    for dir in crates {
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let mut section = String::new();
        let mut autobins = true;
        let mut package_name = None;
        let mut bin_paths = Vec::new();
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_owned();
            match (section.as_str(), key.trim()) {
                ("[package]", "name") => package_name = Some(value),
                ("[package]", "autobins") => autobins = value != "false",
                ("[[bin]]", "name") => {
                    bins.insert(value);
                }
                ("[[bin]]", "path") => bin_paths.push(value),
                _ => {}
            }
        }
        // Cargo infers `src/main.rs` as a binary of the package's name unless a `[[bin]]`
        // already claims that file.
        if autobins
            && dir.join("src/main.rs").exists()
            && !bin_paths.iter().any(|p| p == "src/main.rs")
        {
            bins.extend(package_name);
        }
    }
    bins
}

#[test]
fn every_service_has_a_binary_of_its_name() {
    let bins = workspace_binaries();
    let problems = ServiceKind::ALL
        .iter()
        .map(|k| k.service_name())
        .filter(|name| !bins.contains(*name))
        .map(|name| format!("no crate under services/ builds a binary `{name}` (found {bins:?})"))
        .collect();
    fail_if_any("workspace binaries", problems);
}

// ---------------------------------------------------------------------------------------
// Reading docker-compose.yml, shared by the checks
// ---------------------------------------------------------------------------------------

fn compose() -> Value {
    let mut value: Value = serde_yaml_ng::from_str(&read("docker-compose.yml"))
        .unwrap_or_else(|e| panic!("docker-compose.yml is not valid YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("docker-compose.yml has a bad `<<` merge: {e}"));
    value
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of strings, or a single string split on whitespace (`command`, `test`).
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// `environment` as a mapping or as a list of `KEY=VALUE`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(scalar)
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s, String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `(host port, container port)` of each mapping, short or long syntax.
fn ports(service: &Value) -> Vec<(Option<u16>, u16)> {
    let Value::Sequence(items) = &service["ports"] else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Mapping(_) => Some((
                scalar(&item["published"]).and_then(|p| p.parse().ok()),
                scalar(&item["target"])?.parse().ok()?,
            )),
            other => {
                let spec = scalar(other)?;
                let spec = spec.split('/').next().unwrap_or_default();
                let mut parts = spec.rsplit(':');
                let container = parts.next()?.parse().ok()?;
                Some((parts.next().and_then(|h| h.parse().ok()), container))
            }
        })
        .collect()
}

/// A compose duration: `30s`, `1m30s`, `500ms`, `1h`.
fn duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// The port in a healthcheck's `http://127.0.0.1:<port><path>` (or `localhost`).
fn probe_port(test: &[String], path: &str) -> Option<u16> {
    test.iter()
        .flat_map(|w| w.split_whitespace())
        .find_map(|word| {
            let word = word.trim_matches(|c| c == '"' || c == '\'');
            let rest = word
                .strip_prefix("http://127.0.0.1:")
                .or_else(|| word.strip_prefix("http://localhost:"))?;
            let (port, tail) = rest.split_at(rest.find('/')?);
            tail.starts_with(path).then(|| port.parse().ok()).flatten()
        })
}

fn check_toronto_vars(what: &str, vars: &BTreeMap<String, String>, problems: &mut Vec<String>) {
    let known: BTreeSet<&str> = toronto_cli::settings_docs::names().into_iter().collect();
    for name in vars.keys().filter(|k| k.starts_with("TORONTO_")) {
        if !known.contains(name.as_str()) {
            problems.push(format!(
                "{what} sets `{name}`, which nothing reads: not in any settings table \
                 (`toronto config` lists them; misspelt, or add it to a table)"
            ));
        }
    }
    let without_file: HashMap<String, String> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("TORONTO_") && k.as_str() != CONFIG_FILE_VAR)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Err(e) = Config::from_vars(&without_file) {
        problems.push(format!(
            "{what}: the runtime refuses its TORONTO_* values: {e}"
        ));
    }
}

/// Whether a service runs Prometheus or Alertmanager (checked on their own).
mod compose_file;
mod dockerfile;
mod grafana;
mod kubernetes;
mod kustomize;
mod metric_names;
mod monitoring;
