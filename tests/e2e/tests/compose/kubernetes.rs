//! deploy/kubernetes: the agent itself on Kubernetes, with probes and least RBAC. These
//! checks read the Kustomize base as `kubectl kustomize` renders it; [`super::kustomize`]
//! checks the overlays.

use super::*;

/// `kubectl kustomize deploy/kubernetes/<dir>`: the YAML Kubernetes would get.
pub(super) fn render(dir: &str) -> String {
    let kubectl = toronto_testkit::kubectl::kubectl().unwrap_or_else(|| {
        panic!(
            "kubectl is needed to render deploy/kubernetes/{dir} (install kubectl, or set KUBECTL)"
        )
    });
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(root().join("deploy/kubernetes").join(dir))
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/kubernetes/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 YAML")
}

/// The objects of a rendered kustomization.
pub(super) fn docs_of(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kubernetes_docs() -> Vec<Value> {
    docs_of(&render("base"))
}

pub(super) fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
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
        // TORONTO_AUTH=required: each service signs with the agent's seed, copied from
        // the Secret to a 0600 file of its own user, and knows the first admins.
        let env_names: Vec<&str> = c["env"]
            .as_sequence()
            .map(|e| e.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        for var in ["TORONTO_IDENTITY_FILE", "TORONTO_AUTH_ADMINS"] {
            if !env_names.contains(&var) {
                problems.push(format!("{name}: no {var}"));
            }
        }
        let init = format!("{:?}", spec["initContainers"][0]["command"]);
        if !(init.contains("0600") && init.contains("agent.nk")) {
            problems.push(format!("{name}: no init step making the seed 0600: {init}"));
        }
        // The base runs one of each; the overlays set the counts (kustomize.rs).
        if d["spec"]["replicas"].as_u64() != Some(1) {
            problems.push(format!("{name}: the base runs one replica"));
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
    for cm in of_kind(&docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["name"].as_str() == Some("toronto-config"))
    {
        for (k, _) in cm["data"].as_mapping().into_iter().flatten() {
            let k = k.as_str().unwrap_or_default();
            if !known.contains(k) {
                problems.push(format!("the ConfigMap sets {k}, which nothing reads"));
            }
        }
    }
    fail_if_any("deploy/kubernetes/base", problems);
}

#[test]
fn kubernetes_nats_runs_with_tls_and_every_service_as_its_own_user() {
    let docs = kubernetes_docs();
    let mut problems = Vec::new();
    let configs = of_kind(&docs, "ConfigMap");
    // A generated ConfigMap's name ends in a hash of its content.
    let named = |name: &str| {
        configs
            .iter()
            .find(|c| {
                c["metadata"]["name"].as_str().is_some_and(|n| {
                    n == name || n.strip_prefix(name).is_some_and(|h| h.starts_with('-'))
                })
            })
            .copied()
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    };
    let nats = named("nats-config");
    if nats["data"]["permissions.conf"].as_str()
        != Some(read("deploy/nats/permissions.conf").as_str())
    {
        problems.push(
            "deploy/kubernetes/base/nats/permissions.conf is not a copy of \
             deploy/nats/permissions.conf: cp deploy/nats/permissions.conf deploy/kubernetes/base/nats/"
                .into(),
        );
    }
    let conf = nats["data"]["nats.conf"].as_str().unwrap_or_default();
    for needed in [
        "tls {",
        "cert_file:",
        "key_file:",
        "include permissions.conf",
    ] {
        if !conf.contains(needed) {
            problems.push(format!("nats.conf lacks `{needed}`"));
        }
    }
    let service = named("toronto-config");
    if !service["data"]["TORONTO_NATS_URL"]
        .as_str()
        .is_some_and(|u| u.starts_with("tls://"))
        || service["data"]["TORONTO_NATS_TLS_CA_FILE"].is_null()
    {
        problems.push("services must connect over TLS and verify the CA".into());
    }
    let users = [
        ("toronto-planner", "planner"),
        ("toronto-deployer", "deployer"),
        ("toronto-monitor", "monitor"),
        ("toronto-incident-commander", "incident"),
        ("toronto-chat-bridge", "chat"),
        ("toronto-console", "console"),
    ];
    for d in of_kind(&docs, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let Some((_, user)) = users.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        let var = |n: &str| env.iter().find(|e| e["name"].as_str() == Some(n)).cloned();
        if var("TORONTO_NATS_USER").map(|e| e["value"].clone()) != Some(Value::from(*user)) {
            problems.push(format!("{name} must log in as NATS user {user}"));
        }
        let password = var("TORONTO_NATS_PASSWORD").unwrap_or_default();
        let from = &password["valueFrom"]["secretKeyRef"];
        if from["name"].as_str() != Some("toronto-nats-users") || from["key"].as_str() != Some(user)
        {
            problems.push(format!(
                "{name}: its password must come from its own Secret key"
            ));
        }
        for volume in d["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let items = &volume["secret"]["items"];
            if volume["secret"]["secretName"].as_str() == Some("toronto-nats-tls")
                && items
                    .as_sequence()
                    .is_none_or(|i| i.iter().any(|i| i["key"].as_str() != Some("ca.crt")))
            {
                problems.push(format!(
                    "{name} may mount only ca.crt of the NATS TLS Secret"
                ));
            }
        }
    }
    fail_if_any("deploy/kubernetes/base (NATS)", problems);
}

#[tokio::test]
async fn kubectl_accepts_the_kubernetes_manifests() {
    let Some(kubectl) = toronto_testkit::kubectl::KubectlDryRun::start().await else {
        println!("SKIPPED: kubectl is not installed; deploy/kubernetes not validated by kubectl");
        return;
    };
    let text = render("base");
    let docs = docs_of(&text);
    let out = kubectl
        .apply(&text)
        .await
        .unwrap_or_else(|e| panic!("kubectl refused deploy/kubernetes/base:\n{e}"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), docs.len(), "{out}");
    assert!(
        lines.iter().all(|l| l.ends_with("created (dry run)")),
        "{out}"
    );
    println!("kubectl accepted {} objects", lines.len());
}
