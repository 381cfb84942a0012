//! Prometheus and Alertmanager in docker-compose: every service scraped, alerts posted
//! to the incident commander.

use super::*;

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
