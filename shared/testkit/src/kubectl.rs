//! `kubectl apply --dry-run=client --validate=false` for generated manifests, where no
//! Kubernetes API server runs.
//!
//! Even a client-side dry run asks a server for API discovery and whether each object
//! exists. [`KubectlDryRun`] answers that from a loopback stub: the real group versions
//! and resources of the kinds the project generates, and 404 for every object. kubectl
//! then parses the manifests, resolves each kind and prints `<resource>/<name> created
//! (dry run)` for each; a wrong kind, apiVersion or shape fails. Field schemas are not
//! checked (`--validate=false`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The kubectl to use: `KUBECTL`, else `kubectl` on `PATH`; `None` when it does not run.
pub fn kubectl() -> Option<String> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    std::process::Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| kubectl)
}

/// (group version, plural, kind, namespaced) of every resource the stub serves.
const RESOURCES: &[(&str, &str, &str, bool)] = &[
    ("v1", "namespaces", "Namespace", false),
    ("v1", "services", "Service", true),
    ("v1", "configmaps", "ConfigMap", true),
    ("v1", "secrets", "Secret", true),
    ("v1", "serviceaccounts", "ServiceAccount", true),
    ("v1", "pods", "Pod", true),
    ("apps/v1", "deployments", "Deployment", true),
    ("apps/v1", "statefulsets", "StatefulSet", true),
    ("batch/v1", "jobs", "Job", true),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        "ClusterRole",
        false,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", true),
    (
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1",
        "httproutes",
        "HTTPRoute",
        true,
    ),
];

fn discovery(path: &str) -> Option<String> {
    let resources = |gv: &str| {
        let list: Vec<String> = RESOURCES
            .iter()
            .filter(|r| r.0 == gv)
            .map(|(_, plural, kind, namespaced)| {
                format!(
                    r#"{{"name":"{plural}","singularName":"{}","namespaced":{namespaced},"kind":"{kind}","verbs":["create","delete","get","list","patch","update","watch"]}}"#,
                    kind.to_lowercase()
                )
            })
            .collect();
        format!(
            r#"{{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"{gv}","resources":[{}]}}"#,
            list.join(",")
        )
    };
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .filter_map(|r| r.0.strip_suffix("/v1"))
        .collect();
    groups.dedup();
    match path {
        "/version" => Some(r#"{"major":"1","minor":"35","gitVersion":"v1.35.0"}"#.into()),
        "/api" => Some(
            r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#
                .into(),
        ),
        "/apis" => {
            let list: Vec<String> = groups
                .iter()
                .map(|g| {
                    format!(
                        r#"{{"name":"{g}","versions":[{{"groupVersion":"{g}/v1","version":"v1"}}],"preferredVersion":{{"groupVersion":"{g}/v1","version":"v1"}}}}"#
                    )
                })
                .collect();
            Some(format!(
                r#"{{"kind":"APIGroupList","apiVersion":"v1","groups":[{}]}}"#,
                list.join(",")
            ))
        }
        "/api/v1" => Some(resources("v1")),
        other => {
            let gv = other.strip_prefix("/apis/")?;
            RESOURCES
                .iter()
                .any(|r| r.0 == gv)
                .then(|| resources(gv))
        }
    }
}

/// A discovery stub and a kubeconfig pointing at it.
#[derive(Debug)]
pub struct KubectlDryRun {
    kubectl: String,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    stub: tokio::task::JoinHandle<()>,
}

impl Drop for KubectlDryRun {
    fn drop(&mut self) {
        self.stub.abort();
    }
}

impl KubectlDryRun {
    /// Starts the stub; `None` (print why and skip) when kubectl does not run here.
    pub async fn start() -> Option<Self> {
        let kubectl = kubectl()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let port = listener.local_addr().ok()?.port();
        let stub = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string();
                let (code, body) = match discovery(&path) {
                    Some(doc) => ("200 OK", doc),
                    None => (
                        "404 Not Found",
                        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"not found","reason":"NotFound","code":404}"#.to_owned(),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        let dir = tempfile::tempdir().ok()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: stub, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
                 contexts: [{{name: stub, context: {{cluster: stub, user: stub}}}}]\nusers: [{{name: stub, user: {{}}}}]\ncurrent-context: stub\n"
            ),
        )
        .ok()?;
        Some(Self {
            kubectl,
            dir,
            kubeconfig,
            stub,
        })
    }

    /// Runs `kubectl apply --dry-run=client --validate=false -f -` on `manifests`
    /// (YAML or JSON); kubectl's stdout, or its stderr and stdout when it refuses.
    pub async fn apply(&self, manifests: &str) -> Result<String, String> {
        let mut child = tokio::process::Command::new(&self.kubectl)
            .args([
                "apply",
                "--dry-run=client",
                "--validate=false",
                "--cache-dir",
            ])
            .arg(self.dir.path().join("cache"))
            .args(["-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.kubectl))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(manifests.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| "kubectl did not finish within 60 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}
