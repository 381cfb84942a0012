//! deploy/grafana: the dashboards, provisioned in docker-compose, and every panel's
//! PromQL run against a real Prometheus (Debian's `prometheus`) scraping a real stack
//! (the five services and the demo's simulated cluster, in process), with the SLO
//! recording rules `toronto slo rules` writes: each query must run without error, and
//! each metric it names must be one the services (or those rules) export.

use super::*;

use tokio_util::sync::CancellationToken;
use toronto_protocol::tasks::{Change, DeployTask, DoraQuery, PlanGet, PlanState, SubmitAccepted};
use toronto_testkit::{NatsServer, Requester};

/// The dashboards, one file each.
const DASHBOARDS: [&str; 5] = ["rollouts", "slos", "incidents", "dora", "health"];

fn dashboard(name: &str) -> serde_json::Value {
    let text = read(&format!("deploy/grafana/dashboards/{name}.json"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.json: {e}"))
}

/// (dashboard, panel, expression) of every query, and of every query variable.
fn queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for name in DASHBOARDS {
        let d = dashboard(name);
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let title = p["title"].as_str().unwrap_or_default().to_owned();
                out.push((
                    name.to_owned(),
                    title,
                    t["expr"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            // `label_values(metric, label)`: the metric must exist too.
            if let Some(q) = v["query"]["query"].as_str()
                && let Some(inner) = q.strip_prefix("label_values(")
            {
                let metric = inner
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                out.push((name.to_owned(), format!("variable {}", v["name"]), metric));
            }
        }
    }
    out
}

/// The query as Prometheus gets it from Grafana: the rate interval set, and each
/// dashboard variable (used only in `=~` matchers) at "All".
fn expand(expr: &str) -> String {
    ["$service", "$environment", "$slo", "$job"]
        .iter()
        .fold(expr.replace("$__rate_interval", "1m"), |e, var| {
            e.replace(var, ".*")
        })
}

/// The metric names a query uses: identifiers outside strings that start with
/// `toronto_` or `slo:`, and Prometheus' own `up` and `ALERTS`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word.starts_with("toronto_")
            || word.starts_with("slo:")
            || word == "up"
            || word == "ALERTS"
        {
            names.insert(std::mem::take(word));
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c == '"' {
            flush(&mut word);
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word);
        }
    }
    flush(&mut word);
    names
}

#[test]
fn metric_names_are_read_outside_strings() {
    let names = metric_names(
        r#"sum by (le) (rate(toronto_x_bucket{a=~"toronto_y"}[1m])) / on (slo) slo:error_budget:ratio{slo=~".*"} + up"#,
    );
    let want: BTreeSet<String> = ["toronto_x_bucket", "slo:error_budget:ratio", "up"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}

#[test]
fn grafana_runs_in_compose_with_the_dashboards_provisioned() {
    let compose = compose();
    let mut problems = Vec::new();
    let services = compose["services"].as_mapping().expect("services");
    let grafana = services
        .iter()
        .find(|(_, s)| scalar(&s["image"]).is_some_and(|i| i.starts_with("grafana/grafana:")))
        .map(|(_, s)| s.clone())
        .expect("docker-compose.yml runs Grafana");
    let mounts = words(&grafana["volumes"]);
    for (dir, target) in [
        ("./deploy/grafana/provisioning", "/etc/grafana/provisioning"),
        ("./deploy/grafana/dashboards", "/var/lib/grafana/dashboards"),
    ] {
        if !mounts.iter().any(|m| m == &format!("{dir}:{target}:ro")) {
            problems.push(format!("grafana must mount {dir} at {target} read-only"));
        }
    }
    let datasources: Value = serde_yaml_ng::from_str(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ))
    .unwrap();
    let ds = &datasources["datasources"][0];
    if ds["url"].as_str() != Some("http://prometheus:9090")
        || ds["type"].as_str() != Some("prometheus")
    {
        problems.push("the data source must be the compose Prometheus".into());
    }
    let providers: Value =
        serde_yaml_ng::from_str(&read("deploy/grafana/provisioning/dashboards/toronto.yml"))
            .unwrap();
    if providers["providers"][0]["options"]["path"].as_str() != Some("/var/lib/grafana/dashboards")
    {
        problems.push("the dashboard provider must read /var/lib/grafana/dashboards".into());
    }
    let mut uids = BTreeSet::new();
    for name in DASHBOARDS {
        let d = dashboard(name);
        if !uids.insert(d["uid"].as_str().unwrap_or_default().to_owned()) {
            problems.push(format!("{name}.json: its uid is not unique"));
        }
        for p in d["panels"].as_array().into_iter().flatten() {
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty()
                || targets
                    .iter()
                    .any(|t| t["datasource"]["uid"] != "${datasource}")
            {
                problems.push(format!(
                    "{name}.json {:?}: every query reads the chosen data source",
                    p["title"]
                ));
            }
        }
    }
    fail_if_any("deploy/grafana", problems);
}

/// Prometheus, started for the test, scraping `targets` every second with `rules`.
struct Prometheus {
    _child: tokio::process::Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[SocketAddr], rules: &str) -> Prometheus {
        let bin = std::env::var("TORONTO_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("slo.rules.yml"), rules).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: toronto\n    static_configs:\n      - targets: [{}]\n",
                dir.path().join("slo.rules.yml").display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (apt-get install prometheus, or set TORONTO_PROMETHEUS_BIN): {e}"));
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..150 {
            if reqwest::get(format!("{url}/-/ready"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Prometheus {
                    _child: child,
                    url,
                    dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Prometheus never became ready:\n{}", self_log(&dir));
    }

    async fn query(&self, expr: &str) -> serde_json::Value {
        let query = serde_urlencoded::to_string([("query", expr)]).unwrap();
        reqwest::get(format!("{}/api/v1/query?{query}", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn self_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
}

/// An availability SLO of the demo's simulated `shop`, over what the deployer exports.
const SHOP_SLO: &str = r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: shop-availability
spec:
  service: shop
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 30d
      isRolling: true
  objectives:
    - target: 0.99
  indicator:
    spec:
      ratioMetric:
        bad:
          metricSource:
            type: Prometheus
            spec:
              query: sum(rate(toronto_sim_http_errors_total{service="shop"}[{{.window}}]))
        total:
          metricSource:
            type: Prometheus
            spec:
              query: sum(rate(toronto_sim_http_requests_total{service="shop"}[{{.window}}]))
"#;

/// Waits until the plan ends.
async fn finish(planner: &Requester, plan_id: uuid::Uuid) {
    for _ in 0..120 {
        let plan: toronto_protocol::tasks::Plan = planner
            .request("plan.get", PlanGet { plan_id })
            .await
            .unwrap();
        if matches!(plan.state, PlanState::Completed | PlanState::Failed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("plan {plan_id} did not end within a minute");
}

/// Work for the stack, so that the families the dashboards read have series: a deploy
/// of a commit and an incident it caused, resolved (rollout events, simulated traffic
/// per version, incident figures, then every DORA figure), a refused request (request
/// errors) and a malformed task (a dead letter).
async fn drive(client: &async_nats::Client) {
    let planner = Requester::service(client.clone(), "planner");
    let task = DeployTask {
        service: "shop".into(),
        version: "1.1.0".into(),
        image: None,
        environment: "staging".into(),
        strategy: Default::default(),
        change: Some(Change {
            commit: Some("0123abcd".into()),
            author: None,
            link: None,
            commit_time: Some(chrono::Utc::now() - chrono::Duration::hours(2)),
        }),
        fix: false,
        policy_override: None,
    };
    // The demo's own first deploy of shop (verified for a few seconds) ends first.
    let deployer = Requester::service(client.clone(), "deployer");
    for _ in 0..120 {
        let seeded: Result<toronto_protocol::rollout::Rollout, _> = deployer
            .request(
                "rollout.get",
                toronto_protocol::rollout::RolloutRef {
                    id: None,
                    service: Some("shop".into()),
                    environment: Some("staging".into()),
                },
            )
            .await;
        if seeded.is_ok_and(|r| r.phase.is_final()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deploy: SubmitAccepted = planner.request("submit", task).await.unwrap();
    let missing: Result<toronto_protocol::rollout::Rollout, _> = deployer
        .request(
            "rollout.get",
            toronto_protocol::rollout::RolloutRef {
                id: Some(uuid::Uuid::now_v7()),
                service: None,
                environment: None,
            },
        )
        .await;
    assert!(missing.is_err(), "a rollout that does not exist is refused");
    let js = async_nats::jetstream::new(client.clone());
    js.publish("toronto.agents.devops.tasks", "not an envelope".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // The demo's peers pass every gate: the deploy completes. An incident then hits the
    // service (triage links the deploy: a failed change); once it is resolved, by the demo
    // policy's playbook or here, DORA has a time to restore.
    finish(&planner, deploy.plan_id).await;
    let incident = Requester::service(client.clone(), "incident");
    let opened: toronto_protocol::incidents::Incident = incident
        .request(
            "open",
            toronto_protocol::incidents::IncidentOpen {
                title: "checkout is slow".into(),
                service: "shop".into(),
                environment: "staging".into(),
                severity: None,
                labels: Default::default(),
                by: String::new(),
            },
        )
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resolve = toronto_protocol::incidents::IncidentAction {
            id: opened.id,
            by: String::new(),
            reason: Some("checked by the test".into()),
        };
        // Refused once the playbook resolved it first.
        let _: Result<toronto_protocol::incidents::Incident, _> =
            incident.request("resolve", resolve).await;
        let query = DoraQuery {
            service: Some("shop".into()),
            environment: Some("staging".into()),
            ..Default::default()
        };
        let report: toronto_protocol::tasks::DoraReport =
            planner.request("dora.get", query).await.unwrap();
        if report.time_to_restore_median_seconds.is_some() {
            return;
        }
        last = Some(report);
    }
    panic!("no DORA time to restore after the incident: {last:?}");
}

#[tokio::test]
async fn every_panel_query_runs_on_a_real_prometheus_scraping_the_stack() {
    let server = NatsServer::start().await;
    let mut config = toronto_testkit::with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let demo = toronto_cli::demo::DemoSettings::from_vars(&HashMap::new()).unwrap();
    let stack = toronto_cli::up::Stack::start_as(
        &config,
        0,
        &HashMap::new(),
        &demo.overrides(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let peers = toronto_cli::demo::Demo::start(&config, &demo)
        .await
        .unwrap();
    let targets: Vec<SocketAddr> = stack
        .services
        .iter()
        .filter_map(|(_, http)| *http)
        .collect();
    let slo = toronto_monitor::slo::parse(SHOP_SLO).unwrap();
    let prometheus =
        Prometheus::start(&targets, &toronto_monitor::slo::prometheus_rules(&slo)).await;
    drive(&server.client().await).await;

    // Two scrapes and rule evaluations after the work, every target up.
    let mut up = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = prometheus.query("sum(up)").await;
        up = r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if up == targets.len() {
            break;
        }
    }
    assert_eq!(
        up,
        targets.len(),
        "every service is scraped:\n{}",
        self_log(&prometheus.dir)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let names: serde_json::Value =
        reqwest::get(format!("{}/api/v1/label/__name__/values", prometheus.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let mut exported: BTreeSet<String> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    // Made by Prometheus when an alert is pending or firing; none need be now.
    exported.insert("ALERTS".into());

    let mut problems = Vec::new();
    let all = queries();
    let mut with_data = 0;
    for (dashboard, panel, expr) in &all {
        let expanded = expand(expr);
        let reply = prometheus.query(&expanded).await;
        if reply["status"] != "success" {
            problems.push(format!(
                "{dashboard} / {panel}: {expanded}: {}",
                reply["error"]
            ));
        } else if reply["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            with_data += 1;
        }
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                problems.push(format!(
                    "{dashboard} / {panel}: `{name}` is not exported by any service"
                ));
            }
        }
    }
    println!("{} queries run; {with_data} returned series", all.len());
    fail_if_any("deploy/grafana/dashboards", problems);
    peers.stop().await;
    shutdown.cancel();
    stack.wait().await.unwrap();
}
