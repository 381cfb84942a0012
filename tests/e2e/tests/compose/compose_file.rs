//! docker-compose.yml: the stack as the code expects it (binaries, `TORONTO_*`
//! variables, NATS, ports and healthchecks).

use super::dockerfile::{Image, check_dockerfile};
use super::*;

fn is_monitoring(service: &Value) -> bool {
    scalar(&service["image"]).is_some_and(|i| {
        i.starts_with("prom/prometheus:")
            || i.starts_with("prom/alertmanager:")
            || i.starts_with("grafana/grafana:")
    })
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
                "{what}: stop_grace_period must be at least {}s (TORONTO_SHUTDOWN_GRACE_SECONDS \
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
