//! The container files against the code, without Docker: `docker-compose.yml` and the
//! `Dockerfile` must run binaries the workspace builds, set only `TORONTO_*` variables
//! the runtime reads (with values it accepts), and agree on ports and healthchecks.
//!
//! Each test gathers every problem it finds and fails once, listing what to fix.

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
// The Dockerfile
// ---------------------------------------------------------------------------------------

/// One instruction: its stage (the `AS` name, or the index), keyword and arguments, with
/// continuation lines joined and comments dropped.
struct Instruction {
    stage: String,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut stage = String::new();
    let mut stages = 0;
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Docker drops comment and empty lines, also inside a continued instruction.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
                continue;
            }
            None => current.push_str(trimmed),
        }
        let joined = std::mem::take(&mut current);
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if keyword == "FROM" {
            let words: Vec<&str> = args.split(' ').collect();
            stage = match words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                Some(i) => words.get(i + 1).copied().unwrap_or_default().to_owned(),
                None => stages.to_string(),
            };
            stages += 1;
        }
        out.push(Instruction {
            stage: stage.clone(),
            keyword,
            args,
        });
    }
    out
}

/// What the Dockerfile promises: the binaries in the image, the tools installed in the
/// final stage, and its `ENV` and `ARG` names.
struct Image {
    binaries: BTreeSet<String>,
    final_stage_runs: String,
    env: BTreeMap<String, String>,
    build_args: BTreeSet<String>,
}

fn check_dockerfile(problems: &mut Vec<String>) -> Image {
    let instructions = dockerfile();
    let final_stage = instructions
        .iter()
        .rev()
        .find(|i| i.keyword == "FROM")
        .map(|i| i.stage.clone())
        .expect("the Dockerfile has a FROM");

    // The build: locked to Cargo.lock, release profile.
    let builds: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .collect();
    if builds.is_empty() {
        problems.push("the Dockerfile has no `RUN ... cargo build`".into());
    }
    for build in &builds {
        for flag in ["--locked", "--release"] {
            if !build.args.split(' ').any(|w| w == flag) {
                problems.push(format!(
                    "the Dockerfile's `cargo build` lacks `{flag}` (stage `{}`)",
                    build.stage
                ));
            }
        }
    }

    // The binaries: copied from another stage into /usr/local/bin/ of the final stage,
    // and each one out of target/release/ of the build.
    let mut binaries = BTreeSet::new();
    for copy in instructions
        .iter()
        .filter(|i| i.stage == final_stage && i.keyword == "COPY" && i.args.starts_with("--from="))
    {
        let words: Vec<&str> = copy
            .args
            .split(' ')
            .filter(|w| !w.starts_with("--"))
            .collect();
        if let Some((dest, sources)) = words.split_last()
            && (*dest == BIN_DIR || *dest == BIN_DIR.trim_end_matches('/'))
        {
            binaries.extend(
                sources
                    .iter()
                    .map(|s| s.rsplit('/').next().unwrap_or(s).to_owned()),
            );
        }
    }
    for bin in &binaries {
        let built = format!("target/release/{bin}");
        if !builds.iter().any(|b| b.args.split(' ').any(|w| w == built)) {
            problems.push(format!(
                "the Dockerfile copies `{bin}` to {BIN_DIR} but its build step never takes it \
                 from `{built}`"
            ));
        }
    }
    for bin in workspace_binaries() {
        if !binaries.contains(&bin) {
            problems.push(format!(
                "the Dockerfile's final stage does not copy `{bin}` into {BIN_DIR} \
                 (add it to the `COPY --from=builder` list and to the `cp target/release/...`)"
            ));
        }
    }

    // The git sha the protocol crate stamps at compile time is a build argument.
    let stamp = "TORONTO_BUILD_GIT_SHA";
    if !read("shared/protocol/src/messages.rs").contains(&format!("option_env!(\"{stamp}\")")) {
        problems.push(format!(
            "shared/protocol no longer reads `{stamp}` at compile time: update the Dockerfile's \
             ARG and this test"
        ));
    }
    let build_args: BTreeSet<String> = instructions
        .iter()
        .filter(|i| i.keyword == "ARG")
        .map(|i| i.args.split('=').next().unwrap_or_default().to_owned())
        .collect();
    let build_stage = builds.first().map(|b| b.stage.clone()).unwrap_or_default();
    if !instructions
        .iter()
        .any(|i| i.keyword == "ARG" && i.stage == build_stage && i.args.starts_with(stamp))
    {
        problems.push(format!(
            "the build stage `{build_stage}` declares no `ARG {stamp}`: binaries would report \
             git sha `unknown`"
        ));
    }

    // ENV: only variables the runtime reads, with values it accepts.
    let mut env = BTreeMap::new();
    for i in instructions
        .iter()
        .filter(|i| i.stage == final_stage && i.keyword == "ENV")
    {
        for pair in i.args.split(' ') {
            if let Some((k, v)) = pair.split_once('=') {
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
    }
    check_toronto_vars("the Dockerfile's ENV", &env, problems);
    if let Ok(config) = Config::from_vars(&env.clone().into_iter().collect()) {
        match config.http.socket_addr() {
            Ok(Some(addr)) if addr.ip().is_unspecified() => {
                let exposed = instructions
                    .iter()
                    .filter(|i| i.stage == final_stage && i.keyword == "EXPOSE")
                    .flat_map(|i| i.args.split(' ').map(str::to_owned).collect::<Vec<_>>())
                    .any(|p| p.split('/').next() == Some(&addr.port().to_string()));
                if !exposed {
                    problems.push(format!(
                        "the Dockerfile does not EXPOSE {}, the port of TORONTO_HTTP_ADDR",
                        addr.port()
                    ));
                }
            }
            other => problems.push(format!(
                "the Dockerfile must set TORONTO_HTTP_ADDR to 0.0.0.0:<port> so that /readyz is \
                 reachable from outside the container (got {other:?})"
            )),
        }
    }
    let final_instructions = || instructions.iter().filter(|i| i.stage == final_stage);
    if !final_instructions().any(|i| i.keyword == "HEALTHCHECK" && i.args.contains("/readyz")) {
        problems.push("the Dockerfile's final stage has no HEALTHCHECK on /readyz".into());
    }
    match final_instructions().rfind(|i| i.keyword == "USER") {
        Some(user) if !matches!(user.args.split(':').next(), Some("0" | "root")) => {}
        _ => problems.push("the Dockerfile's final stage must run as a non-root USER".into()),
    }
    if !final_instructions().any(|i| i.keyword == "STOPSIGNAL" && i.args == "SIGTERM") {
        problems
            .push("the Dockerfile must say `STOPSIGNAL SIGTERM` (what the services handle)".into());
    }
    let final_stage_runs = final_instructions()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");

    Image {
        binaries,
        final_stage_runs,
        env,
        build_args,
    }
}

#[test]
fn dockerfile_builds_locked_and_ships_every_binary() {
    let mut problems = Vec::new();
    check_dockerfile(&mut problems);
    fail_if_any("Dockerfile", problems);
}

// ---------------------------------------------------------------------------------------
// docker-compose.yml
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
fn is_monitoring(service: &Value) -> bool {
    scalar(&service["image"])
        .is_some_and(|i| i.starts_with("prom/prometheus:") || i.starts_with("prom/alertmanager:"))
}

/// Whether a service runs the official NATS image.
fn is_nats(service: &Value) -> bool {
    scalar(&service["image"]).is_some_and(|i| i.starts_with("nats:") || i.contains("/nats:"))
}

/// The NATS service: its name and client URL (`nats://<name>:<port>`).
fn check_nats(services: &serde_yaml_ng::Mapping, problems: &mut Vec<String>) -> Option<String> {
    let (name, nats) = services.iter().find(|(_, s)| is_nats(s))?;
    let name = scalar(name)?;
    let command = words(&nats["command"]);
    let flag = |names: &[&str]| {
        command
            .iter()
            .position(|w| names.contains(&w.as_str()))
            .and_then(|i| command.get(i + 1))
            .cloned()
    };
    if !command.iter().any(|w| w == "--jetstream" || w == "-js") {
        problems.push(format!(
            "service `{name}` must run nats-server with `--jetstream`"
        ));
    }
    if flag(&["--store_dir", "-sd"]).is_none() {
        problems.push(format!(
            "service `{name}` must give nats-server `--store_dir` (on a volume) so streams \
             and KV buckets survive a restart"
        ));
    }
    let client_port = flag(&["--port", "-p"]).unwrap_or_else(|| "4222".into());
    match flag(&["--http_port", "-m"]) {
        None => problems.push(format!(
            "service `{name}` must give nats-server `--http_port` for its /healthz healthcheck"
        )),
        Some(http_port) => {
            let test = words(&nats["healthcheck"]["test"]);
            if probe_port(&test, "/healthz").map(|p| p.to_string()) != Some(http_port.clone()) {
                problems.push(format!(
                    "service `{name}`'s healthcheck must GET http://127.0.0.1:{http_port}/healthz \
                     (the --http_port), got {test:?}"
                ));
            }
            if test.first().map(String::as_str) == Some("CMD")
                && test.get(1).is_some_and(|tool| tool == "curl")
            {
                problems.push(format!(
                    "service `{name}`'s healthcheck uses curl, which the nats images do not have \
                     (the alpine variant has busybox wget)"
                ));
            }
        }
    }
    Some(format!("nats://{name}:{client_port}"))
}

#[test]
fn compose_runs_the_stack_as_the_code_expects() {
    let compose = compose();
    let mut problems = Vec::new();
    let image = check_dockerfile(&mut Vec::new());
    let bins = workspace_binaries();
    let Some(services) = compose["services"].as_mapping() else {
        panic!("docker-compose.yml has no `services` mapping");
    };

    let nats_url = check_nats(services, &mut problems);
    if nats_url.is_none() {
        problems.push("no service runs a `nats:` image".into());
    }

    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut host_ports: BTreeMap<u16, String> = BTreeMap::new();
    for (name, service) in services {
        let name = scalar(name).unwrap_or_default();
        if is_nats(service) || is_monitoring(service) {
            continue;
        }
        let command = words(&service["command"]);
        let Some(binary) = command.first() else {
            problems.push(format!("service `{name}` has no `command` naming a binary"));
            continue;
        };
        runs.entry(binary.clone()).or_default().push(name.clone());
        if !bins.contains(binary) {
            problems.push(format!(
                "service `{name}` runs `{binary}`, which no crate under services/ or cli/ \
                 builds (binaries: {bins:?})"
            ));
        }
        if !image.binaries.contains(binary) {
            problems.push(format!(
                "service `{name}` runs `{binary}`, which the Dockerfile does not copy into \
                 {BIN_DIR}"
            ));
        }

        // One image, built from the Dockerfile next to this file.
        if scalar(&service["image"]).as_deref() != Some(IMAGE) {
            problems.push(format!("service `{name}` must use `image: {IMAGE}`"));
        }
        let context = match &service["build"] {
            Value::Mapping(_) => scalar(&service["build"]["context"]),
            other => scalar(other),
        };
        if !matches!(context.as_deref(), Some("." | "./")) {
            problems.push(format!(
                "service `{name}` must build from `.` (the Dockerfile), got {context:?}"
            ));
        }
        if let Value::Mapping(args) = &service["build"]["args"] {
            for arg in args.keys().filter_map(scalar) {
                if !image.build_args.contains(&arg) {
                    problems.push(format!(
                        "service `{name}` passes build arg `{arg}`, which the Dockerfile does \
                         not declare with ARG"
                    ));
                }
            }
        }

        // Environment: known variables, values the runtime accepts, over the image's ENV.
        let env = environment(service);
        let what = format!("service `{name}`");
        check_toronto_vars(&what, &env, &mut problems);
        let mut effective = image.env.clone();
        effective.extend(env.clone());
        effective.remove(CONFIG_FILE_VAR);
        let Ok(config) = Config::from_vars(&effective.clone().into_iter().collect()) else {
            continue; // reported by check_toronto_vars
        };
        if !env.contains_key("TORONTO_NATS_URL") {
            problems.push(format!("{what} must set TORONTO_NATS_URL"));
        }
        if let Some(url) = &nats_url
            && config.nats.urls.iter().any(|u| u != url)
        {
            problems.push(format!(
                "{what}: TORONTO_NATS_URL must be `{url}` (the NATS service), got {:?}",
                config.nats.urls
            ));
        }
        if !env.contains_key("TORONTO_HTTP_ADDR") {
            problems.push(format!("{what} must set TORONTO_HTTP_ADDR=0.0.0.0:<port>"));
        }
        let http = match config.http.socket_addr() {
            Ok(Some(addr)) if addr.ip().is_unspecified() => addr,
            other => {
                problems.push(format!(
                    "{what}: TORONTO_HTTP_ADDR must listen on 0.0.0.0 to be reachable from \
                     outside the container, got {other:?}"
                ));
                continue;
            }
        };
        check_http(&what, service, http, &image, &mut problems);
        for (host, container) in ports(service) {
            if let Some(host) = host
                && container == http.port()
                && let Some(other) = host_ports.insert(host, name.clone())
            {
                problems.push(format!(
                    "services `{other}` and `{name}` both publish host port {host}"
                ));
            }
        }

        // Start after NATS is healthy; stop gracefully.
        if let Some(url) = &nats_url {
            let nats_name = url
                .trim_start_matches("nats://")
                .split(':')
                .next()
                .unwrap_or_default();
            let condition = scalar(&service["depends_on"][nats_name]["condition"]);
            if condition.as_deref() != Some("service_healthy") {
                problems.push(format!(
                    "{what} must have `depends_on: {{{nats_name}: {{condition: service_healthy}}}}`"
                ));
            }
        }
        let needed = config.shutdown_grace() + AFTER_GRACE;
        match scalar(&service["stop_grace_period"]).and_then(|d| duration(&d)) {
            Some(d) if d >= needed => {}
            other => problems.push(format!(
                "{what}: stop_grace_period must be at least {}s (TORONTO_SHUTDOWN_GRACE_SECS \
                 {}s plus {}s to flush and drain), got {other:?}; Docker's default 10s kills \
                 requests in flight",
                needed.as_secs(),
                config.shutdown_grace_secs,
                AFTER_GRACE.as_secs()
            )),
        }
        if let Some(signal) = scalar(&service["stop_signal"])
            && signal != "SIGTERM"
        {
            problems.push(format!(
                "{what}: stop_signal must be SIGTERM (what the services handle), got {signal}"
            ));
        }
    }

    for kind in ServiceKind::ALL {
        match runs.get(kind.service_name()).map(Vec::len) {
            Some(1) => {}
            None => problems.push(format!(
                "no container runs `{}`: add a service with `command: [\"{}\"]`",
                kind.service_name(),
                kind.service_name()
            )),
            Some(_) => problems.push(format!(
                "several containers run `{}` ({:?}): keep one and scale it with \
                 `docker compose up --scale`",
                kind.service_name(),
                runs[kind.service_name()]
            )),
        }
    }
    fail_if_any("docker-compose.yml", problems);
}

/// The healthcheck probes /readyz on the port the service listens on, with a tool the
/// image has, and that port is the container side of a published mapping.
fn check_http(
    what: &str,
    service: &Value,
    http: SocketAddr,
    image: &Image,
    problems: &mut Vec<String>,
) {
    let test = words(&service["healthcheck"]["test"]);
    match probe_port(&test, "/readyz") {
        Some(port) if port == http.port() => {}
        other => problems.push(format!(
            "{what}: the healthcheck must GET http://127.0.0.1:{}/readyz (the port of \
             TORONTO_HTTP_ADDR), got {test:?} (port {other:?})",
            http.port()
        )),
    }
    let tool = match test.first().map(String::as_str) {
        Some("CMD") => test.get(1).cloned(),
        Some("CMD-SHELL") => test
            .get(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned),
        Some("NONE") | None => None,
        Some(first) => Some(first.to_owned()), // the string form, run by a shell
    };
    if let Some(tool) = tool
        && !["sh", "bash"].contains(&tool.as_str())
        && !image
            .final_stage_runs
            .split(|c: char| c.is_whitespace() || ";&|".contains(c))
            .any(|w| w == tool)
    {
        problems.push(format!(
            "{what}: the healthcheck runs `{tool}`, which the Dockerfile's final stage does \
             not install"
        ));
    }
    if !ports(service).iter().any(|(_, c)| *c == http.port()) {
        problems.push(format!(
            "{what} must publish its HTTP port {} (e.g. `127.0.0.1:91xx:{}`) so /readyz and \
             /metrics are reachable",
            http.port(),
            http.port()
        ));
    }
}

#[test]
fn compose_helpers_parse_what_compose_accepts() {
    assert_eq!(duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(duration("ten"), None);
    let service: Value = serde_yaml_ng::from_str(
        "ports: ['127.0.0.1:9101:8080', '9102:8081/tcp', 8082, {target: 8083, published: 9104}]",
    )
    .unwrap();
    assert_eq!(
        ports(&service),
        vec![
            (Some(9101), 8080),
            (Some(9102), 8081),
            (None, 8082),
            (Some(9104), 8083)
        ]
    );
    let test =
        words(&serde_yaml_ng::from_str("[CMD, curl, -f, 'http://127.0.0.1:8080/readyz']").unwrap());
    assert_eq!(probe_port(&test, "/readyz"), Some(8080));
    assert_eq!(probe_port(&test, "/healthz"), None);
}

// ---------------------------------------------------------------------------------
// deploy/kubernetes: the agent itself on Kubernetes
// ---------------------------------------------------------------------------------

fn kubernetes_docs() -> Vec<Value> {
    let text = read("deploy/kubernetes/toronto.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

#[test]
fn kubernetes_manifests_run_every_service_with_probes_and_least_rbac() {
    let docs = kubernetes_docs();
    let mut problems = Vec::new();
    let deployments = of_kind(&docs, "Deployment");
    for kind in ServiceKind::ALL {
        let name = kind.service_name();
        let Some(d) = deployments
            .iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
        else {
            problems.push(format!("no Deployment {name}"));
            continue;
        };
        let spec = &d["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        if c["command"][0].as_str() != Some(name) {
            problems.push(format!("{name}: runs {:?}, not its binary", c["command"]));
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            if c[probe]["httpGet"]["path"].as_str() != Some(path) {
                problems.push(format!("{name}: {probe} must GET {path}"));
            }
        }
        if c["resources"]["requests"]["cpu"].is_null()
            || c["resources"]["requests"]["memory"].is_null()
        {
            problems.push(format!("{name}: no resource requests"));
        }
        // Services that keep state in one process must not run twice.
        let single = matches!(kind, ServiceKind::IncidentCommander | ServiceKind::Monitor);
        if single && d["spec"]["replicas"].as_u64() != Some(1) {
            problems.push(format!("{name} must run one replica"));
        }
        let sa = spec["serviceAccountName"].as_str().unwrap_or_default();
        let api_access = spec["automountServiceAccountToken"].as_bool() != Some(false);
        match (kind, api_access) {
            (ServiceKind::Deployer, true) if sa == "toronto-deployer" => {}
            (ServiceKind::Deployer, _) => {
                problems.push("the deployer must run as toronto-deployer with its token".into())
            }
            (_, true) => problems.push(format!("{name} must not get Kubernetes API access")),
            _ => {}
        }
    }
    // Only the deployer's account is bound, and only to what its target does.
    let bindings = of_kind(&docs, "ClusterRoleBinding");
    for b in &bindings {
        for s in b["subjects"].as_sequence().into_iter().flatten() {
            if s["name"].as_str() != Some("toronto-deployer") {
                problems.push(format!("{:?} is bound to a cluster role", s["name"]));
            }
        }
    }
    let allowed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::from([
        (
            "deployments",
            BTreeSet::from(["get", "list", "watch", "create", "patch"]),
        ),
        (
            "services",
            BTreeSet::from(["get", "list", "create", "patch"]),
        ),
        (
            "namespaces",
            BTreeSet::from(["get", "create", "patch", "delete"]),
        ),
        ("pods", BTreeSet::from(["list", "delete"])),
        ("httproutes", BTreeSet::from(["get", "create", "patch"])),
    ]);
    for role in of_kind(&docs, "ClusterRole") {
        for rule in role["rules"].as_sequence().into_iter().flatten() {
            for resource in rule["resources"].as_sequence().into_iter().flatten() {
                let r = resource.as_str().unwrap_or("*");
                let Some(ok) = allowed.get(r) else {
                    problems.push(format!("the deployer may touch {r}, which it never needs"));
                    continue;
                };
                for verb in rule["verbs"].as_sequence().into_iter().flatten() {
                    let v = verb.as_str().unwrap_or("*");
                    if !ok.contains(v) {
                        problems.push(format!("the deployer may {v} {r}, which it never does"));
                    }
                }
            }
        }
    }
    // The config names only variables the services read.
    let known: BTreeSet<&str> = toronto_cli::settings_docs::names().into_iter().collect();
    for cm in of_kind(&docs, "ConfigMap") {
        for (k, _) in cm["data"].as_mapping().into_iter().flatten() {
            let k = k.as_str().unwrap_or_default();
            if !known.contains(k) {
                problems.push(format!("the ConfigMap sets {k}, which nothing reads"));
            }
        }
    }
    fail_if_any("deploy/kubernetes/toronto.yaml", problems);
}

#[tokio::test]
async fn kubectl_accepts_the_kubernetes_manifests() {
    let Some(kubectl) = toronto_testkit::kubectl::KubectlDryRun::start().await else {
        println!("SKIPPED: kubectl is not installed; deploy/kubernetes not validated by kubectl");
        return;
    };
    let docs = kubernetes_docs();
    let out = kubectl
        .apply(&read("deploy/kubernetes/toronto.yaml"))
        .await
        .unwrap_or_else(|e| panic!("kubectl refused deploy/kubernetes/toronto.yaml:\n{e}"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), docs.len(), "{out}");
    assert!(
        lines.iter().all(|l| l.ends_with("created (dry run)")),
        "{out}"
    );
    println!("kubectl accepted {} objects", lines.len());
}

// ---------------------------------------------------------------------------------
// Prometheus and Alertmanager in docker-compose
// ---------------------------------------------------------------------------------

/// The compose service whose command runs `binary`, and the port its HTTP listens on.
fn service_running(services: &serde_yaml_ng::Mapping, binary: &str) -> Option<String> {
    services.iter().find_map(|(name, s)| {
        (words(&s["command"]).first().map(String::as_str) == Some(binary))
            .then(|| scalar(name).unwrap_or_default())
    })
}

#[test]
fn prometheus_scrapes_every_service_and_alertmanager_posts_to_the_incident_commander() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let mut problems = Vec::new();
    let by_image = |prefix: &str| {
        services
            .iter()
            .find(|(_, s)| scalar(&s["image"]).is_some_and(|i| i.starts_with(prefix)))
            .map(|(n, s)| (scalar(n).unwrap_or_default(), s.clone()))
    };
    let Some((_, prometheus)) = by_image("prom/prometheus:") else {
        panic!("docker-compose.yml runs no Prometheus");
    };
    let Some((alertmanager_name, alertmanager)) = by_image("prom/alertmanager:") else {
        panic!("docker-compose.yml runs no Alertmanager");
    };
    for (what, service, file, target) in [
        (
            "prometheus",
            &prometheus,
            "deploy/prometheus/prometheus.yml",
            "/etc/prometheus/prometheus.yml",
        ),
        (
            "alertmanager",
            &alertmanager,
            "deploy/alertmanager/alertmanager.yml",
            "/etc/alertmanager/alertmanager.yml",
        ),
    ] {
        let mounts = words(&service["volumes"]);
        if !mounts.iter().any(|m| m == &format!("./{file}:{target}:ro")) {
            problems.push(format!("{what} must mount ./{file} at {target}"));
        }
    }
    let prom: Value = serde_yaml_ng::from_str(&read("deploy/prometheus/prometheus.yml")).unwrap();
    let targets: BTreeSet<String> = prom["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| words(&sc["targets"]))
        .collect();
    for kind in ServiceKind::ALL {
        match service_running(services, kind.service_name()) {
            Some(name) => {
                if !targets.contains(&format!("{name}:8080")) {
                    problems.push(format!("Prometheus does not scrape {name}:8080"));
                }
            }
            None => problems.push(format!("no compose service runs {}", kind.service_name())),
        }
    }
    let am_targets: Vec<String> = prom["alerting"]["alertmanagers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|a| {
            a["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| words(&sc["targets"]))
        .collect();
    if am_targets != [format!("{alertmanager_name}:9093")] {
        problems.push(format!(
            "Prometheus sends alerts to {am_targets:?}, not {alertmanager_name}:9093"
        ));
    }
    let am: Value = serde_yaml_ng::from_str(&read("deploy/alertmanager/alertmanager.yml")).unwrap();
    let incident = service_running(services, "toronto-incident-commander").unwrap_or_default();
    let urls: Vec<String> = am["receivers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|r| {
            r["webhook_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|w| scalar(&w["url"]))
        .collect();
    let expected = format!("http://{incident}:8080/api/v1/alertmanager/webhook");
    if urls != [expected.clone()] {
        problems.push(format!("Alertmanager posts to {urls:?}, not {expected}"));
    }
    fail_if_any("docker-compose.yml's Prometheus and Alertmanager", problems);

    // The real tools agree, where they are installed (scripts/test installs them).
    for (tool, args, file) in [
        (
            "promtool",
            vec!["check", "config", "--syntax-only"],
            "deploy/prometheus/prometheus.yml",
        ),
        (
            "amtool",
            vec!["check-config"],
            "deploy/alertmanager/alertmanager.yml",
        ),
    ] {
        match std::process::Command::new(tool)
            .args(&args)
            .arg(root().join(file))
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "{tool} refuses {file}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => println!("SKIPPED: {tool} not runnable ({e}); {file} not checked by it"),
        }
    }
}
