//! deploy/kubernetes/overlays: `small` and `production`, rendered with
//! `kubectl kustomize` and validated offline against the Kubernetes OpenAPI schemas with
//! kubernetes-validate (PyPI), then checked for what each promises: one of everything, or
//! two replicas of every service, a three-server NATS cluster with JetStream R3,
//! resources and PodDisruptionBudgets.

use super::kubernetes::{docs_of, of_kind, render};
use super::*;

/// The Kubernetes version the manifests are validated against: the oldest still supported
/// upstream when this was written (`matchLabelKeys` in topology spread needs 1.27+).
const KUBERNETES_VERSION: &str = "1.32.0";

/// The Deployments of the agent: the five services and the console.
fn deployment_names() -> Vec<String> {
    ServiceKind::ALL
        .iter()
        .map(|k| k.service_name().to_owned())
        .chain(["toronto-console".to_owned()])
        .collect()
}

/// kubernetes-validate (installed by `scripts/install-tools --test`).
fn kubernetes_validate() -> PathBuf {
    let path = std::env::var_os("TORONTO_KUBERNETES_VALIDATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/venv/bin/kubernetes-validate"));
    assert!(
        path.is_file(),
        "kubernetes-validate not found at {}: run scripts/install-tools --test \
         (pip install kubernetes-validate==1.37.0 into .tools/venv), or set \
         TORONTO_KUBERNETES_VALIDATE_BIN",
        path.display()
    );
    path
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn config_value<'a>(docs: &'a [Value], key: &str) -> Option<&'a str> {
    named(docs, "ConfigMap", "toronto-config")["data"][key].as_str()
}

/// Problems every overlay must not have: references to ConfigMaps that are not there
/// (a generated name's hash not rewritten) and Secret keys nobody is told to create.
fn references(docs: &[Value], problems: &mut Vec<String>) {
    let maps: BTreeSet<&str> = of_kind(docs, "ConfigMap")
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    let header = read("deploy/kubernetes/base/toronto.yaml");
    let documented = header
        .lines()
        .find(|l| l.contains("for u in planner"))
        .unwrap_or_default()
        .to_owned();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let text = serde_yaml_ng::to_string(d).unwrap();
        let value: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        let mut stack = vec![&value];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(cm) = map.get("configMap").or_else(|| map.get("configMapRef"))
                        && let Some(n) = cm["name"].as_str()
                        && !maps.contains(n)
                    {
                        problems.push(format!(
                            "{kind} {name} uses ConfigMap {n}, which is not rendered"
                        ));
                    }
                    if let Some(r) = map.get("secretKeyRef")
                        && r["name"] == "toronto-nats-users"
                        && let Some(key) = r["key"].as_str()
                        && !documented.contains(&format!(" {key}"))
                    {
                        problems.push(format!(
                            "{kind} {name} reads key {key} of toronto-nats-users, which \
                             base/toronto.yaml does not tell you to create"
                        ));
                    }
                    stack.extend(map.values());
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
    }
}

#[test]
fn overlays_render_and_pass_kubernetes_validate() {
    let validate = kubernetes_validate();
    let dir = tempfile::tempdir().unwrap();
    for overlay in ["small", "production"] {
        let text = render(&format!("overlays/{overlay}"));
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &text).unwrap();
        let out = std::process::Command::new(&validate)
            .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
            .arg(&file)
            .output()
            .expect("kubernetes-validate runs");
        assert!(
            out.status.success(),
            "overlays/{overlay} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut problems = Vec::new();
        references(&docs_of(&text), &mut problems);
        fail_if_any(&format!("deploy/kubernetes/overlays/{overlay}"), problems);
    }
}

#[test]
fn the_small_overlay_runs_one_of_everything() {
    let docs = docs_of(&render("overlays/small"));
    let mut problems = Vec::new();
    for name in deployment_names() {
        let replicas = named(&docs, "Deployment", &name)["spec"]["replicas"].as_u64();
        if replicas != Some(1) {
            problems.push(format!("{name}: {replicas:?} replicas, not 1"));
        }
    }
    if named(&docs, "StatefulSet", "nats")["spec"]["replicas"].as_u64() != Some(1) {
        problems.push("NATS must be one server".into());
    }
    if config_value(&docs, "TORONTO_JETSTREAM_REPLICAS") != Some("1") {
        problems.push("one NATS server holds one copy: TORONTO_JETSTREAM_REPLICAS=1".into());
    }
    fail_if_any("deploy/kubernetes/overlays/small", problems);
}

#[test]
fn the_production_overlay_is_highly_available() {
    let docs = docs_of(&render("overlays/production"));
    let mut problems = Vec::new();
    let pdbs = of_kind(&docs, "PodDisruptionBudget");
    let budget_for = |labels: &Value| {
        pdbs.iter().find(|p| {
            p["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
        })
    };
    for name in deployment_names() {
        let d = named(&docs, "Deployment", &name);
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        if replicas < 2 {
            problems.push(format!(
                "{name}: {replicas} replica(s); production runs two"
            ));
        }
        let spec = &d["spec"]["template"]["spec"];
        let resources = &spec["containers"][0]["resources"];
        if resources["requests"]["cpu"].is_null()
            || resources["requests"]["memory"].is_null()
            || resources["limits"]["memory"].is_null()
        {
            problems.push(format!(
                "{name}: needs cpu and memory requests and a memory limit"
            ));
        }
        if spec["topologySpreadConstraints"].is_null() {
            problems.push(format!("{name}: its replicas are not spread over nodes"));
        }
        match budget_for(&d["spec"]["template"]["metadata"]["labels"]) {
            None => problems.push(format!("{name}: no PodDisruptionBudget")),
            Some(p) if p["spec"]["minAvailable"].as_u64().unwrap_or(0) >= replicas => problems
                .push(format!(
                    "{name}: its PodDisruptionBudget blocks every drain"
                )),
            Some(_) => {}
        }
    }
    // NATS: three servers routed to each other, JetStream keeping three copies.
    let nats = named(&docs, "StatefulSet", "nats");
    let servers = nats["spec"]["replicas"].as_u64().unwrap_or(1);
    if servers != 3 {
        problems.push(format!("NATS runs {servers} server(s), not a cluster of 3"));
    }
    if budget_for(&nats["spec"]["template"]["metadata"]["labels"]).is_none() {
        problems.push("NATS: no PodDisruptionBudget".into());
    }
    let env = nats["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    let conf = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| {
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("nats-config-"))
        })
        .and_then(|c| c["data"]["nats.conf"].as_str())
        .unwrap_or_default();
    if !(conf.contains("cluster {") && conf.contains("server_name: $POD_NAME")) {
        problems.push("nats.conf has no cluster block or no per-pod server name".into());
    }
    for i in 0..servers {
        let var = format!("NATS_ROUTE_{i}");
        let url = env
            .iter()
            .find(|e| e["name"].as_str() == Some(var.as_str()))
            .and_then(|e| e["value"].as_str());
        if !url.is_some_and(|u| u.contains(&format!("@nats-{i}.nats-headless.toronto.svc:6222"))) {
            problems.push(format!("no route to nats-{i} ({var}: {url:?})"));
        }
        if !conf.contains(&format!("${var}")) {
            problems.push(format!("nats.conf does not route to ${var}"));
        }
    }
    if nats["spec"]["serviceName"].as_str() != Some("nats-headless")
        || named(&docs, "Service", "nats-headless")["spec"]["clusterIP"].as_str() != Some("None")
    {
        problems.push("the NATS servers need the headless Service nats-headless".into());
    }
    let copies: u64 = config_value(&docs, "TORONTO_JETSTREAM_REPLICAS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if copies != 3 || copies > servers {
        problems.push(format!(
            "TORONTO_JETSTREAM_REPLICAS is {copies}: 3 on a 3-server cluster"
        ));
    }
    fail_if_any("deploy/kubernetes/overlays/production", problems);
}

/// The value Kubernetes would give each variable of the NATS container: literals with
/// `$(VAR)` expanded from the variables before them, a stand-in for Secret keys, the pod's
/// name for `metadata.name`.
fn nats_env(docs: &[Value]) -> Vec<(String, String)> {
    let nats = named(docs, "StatefulSet", "nats");
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in nats["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let name = e["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            vars.iter()
                .fold(v.to_owned(), |v, (n, x)| v.replace(&format!("$({n})"), x))
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            "nats-0".to_owned()
        } else {
            format!(
                "secret-of-{}",
                e["valueFrom"]["secretKeyRef"]["key"]
                    .as_str()
                    .unwrap_or("?")
            )
        };
        vars.push((name, value));
    }
    vars
}

#[test]
fn nats_server_accepts_each_overlays_configuration() {
    let bin = toronto_testkit::nats_server_bin().expect("nats-server (TORONTO_NATS_SERVER_BIN)");
    let cert = rcgen::generate_simple_self_signed(vec!["nats.toronto.svc".into()]).unwrap();
    for overlay in ["small", "production"] {
        let docs = docs_of(&render(&format!("overlays/{overlay}")));
        let cm = of_kind(&docs, "ConfigMap")
            .into_iter()
            .find(|c| {
                c["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("nats-config-"))
            })
            .expect("the generated nats-config");
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().display().to_string();
        // Where the StatefulSet mounts them, moved into the temporary directory.
        let conf = cm["data"]["nats.conf"]
            .as_str()
            .unwrap()
            .replace("/etc/nats/tls/", &format!("{here}/"))
            .replace("store_dir: /data", &format!("store_dir: \"{here}/data\""));
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        std::fs::write(
            dir.path().join("permissions.conf"),
            cm["data"]["permissions.conf"].as_str().unwrap(),
        )
        .unwrap();
        for name in ["tls.crt", "ca.crt"] {
            std::fs::write(dir.path().join(name), cert.cert.pem()).unwrap();
        }
        std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        // `-t`: parse the configuration (every `$VARIABLE` must be set) and exit.
        let out = std::process::Command::new(&bin)
            .arg("-t")
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .env_clear()
            .envs(nats_env(&docs))
            .output()
            .expect("nats-server runs");
        assert!(
            out.status.success(),
            "nats-server refuses the configuration of overlays/{overlay}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
