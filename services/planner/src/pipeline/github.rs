//! GitHub Actions: build, test and scan jobs, an image job (docker buildx, pushed from
//! `main`), and one deploy job per environment that runs the agent's CLI from its image
//! (`docker run`) and waits for the plan.

use serde_json::{Value, json};
use toronto_protocol::tasks::PipelineTask;

use super::{SECRETS_PROLOGUE, deploy_words, environments, image, registry_host, toolchain};

/// Pushes and deploys happen only for pushes to `main`; pull requests build the image
/// without pushing it.
const ON_MAIN: &str = "github.event_name == 'push' && github.ref == 'refs/heads/main'";

/// The deploy step's script (bash): the secrets to 0600 files, then the CLI from the
/// agent's image, as this runner's user so it can read them.
fn deploy_script(task: &PipelineTask, environment: &str) -> String {
    format!(
        r#"{SECRETS_PROLOGUE}: "${{TORONTO_CLI_IMAGE:?set the repository variable TORONTO_CLI_IMAGE to the image of the DevOps agent}}"
env_args=(--env TORONTO_NATS_URL --env TORONTO_IDENTITY_FILE=/run/toronto/identity.nk)
if [ -n "${{TORONTO_NATS_CREDS:-}}" ]; then
  printf '%s\n' "$TORONTO_NATS_CREDS" > "$secrets/nats.creds"
  env_args+=(--env TORONTO_NATS_CREDS_FILE=/run/toronto/nats.creds)
fi
if [ -n "${{TORONTO_NATS_CA:-}}" ]; then
  printf '%s\n' "$TORONTO_NATS_CA" > "$secrets/ca.crt"
  env_args+=(--env TORONTO_NATS_TLS_CA_FILE=/run/toronto/ca.crt)
fi
docker run --rm --user "$(id -u):$(id -g)" --volume "$secrets:/run/toronto:ro" "${{env_args[@]}}" \
  "$TORONTO_CLI_IMAGE" \
  {words}
"#,
        words = deploy_words(task, environment, "$SHA", "$COMMITTED_AT"),
    )
}

/// The registry login step: `GITHUB_TOKEN` for ghcr.io, otherwise the
/// `REGISTRY_USERNAME` and `REGISTRY_PASSWORD` secrets.
fn login_step(image: &str) -> Value {
    let host = registry_host(image);
    let mut with = if host == Some("ghcr.io") {
        json!({"username": "${{ github.actor }}", "password": "${{ secrets.GITHUB_TOKEN }}"})
    } else {
        json!({"username": "${{ secrets.REGISTRY_USERNAME }}", "password": "${{ secrets.REGISTRY_PASSWORD }}"})
    };
    if let Some(host) = host {
        with["registry"] = json!(host);
    }
    json!({
        "name": "Log in to the registry",
        "if": ON_MAIN,
        "uses": "docker/login-action@v3",
        "with": with,
    })
}

/// The workflow for `task`.
pub(super) fn workflow(task: &PipelineTask) -> Value {
    let tc = toolchain(task.language);
    let image = image(task);
    let checkout = json!({"uses": "actions/checkout@v4"});
    let mut jobs = serde_json::Map::new();
    let mut previous: Vec<String> = Vec::new();
    if task.stages.build {
        jobs.insert(
            "build".into(),
            json!({
                "runs-on": "ubuntu-latest",
                "timeout-minutes": 30,
                "steps": [checkout, tc.setup, {"name": "Build", "run": tc.build}],
            }),
        );
        previous.push("build".into());
    }
    if task.stages.test {
        jobs.insert(
            "test".into(),
            json!({
                "runs-on": "ubuntu-latest",
                "timeout-minutes": 30,
                "needs": previous.clone(),
                "steps": [checkout, tc.setup, {"name": "Test", "run": tc.test}],
            }),
        );
        previous = vec!["test".into()];
    }
    if task.stages.scan {
        jobs.insert(
            "scan".into(),
            json!({
                "runs-on": "ubuntu-latest",
                "timeout-minutes": 15,
                "needs": previous.clone(),
                "steps": [checkout, {
                    "name": "Scan for vulnerabilities",
                    "uses": "aquasecurity/trivy-action@0.28.0",
                    "with": {"scan-type": "fs", "exit-code": "1", "severity": "CRITICAL,HIGH"},
                }],
            }),
        );
        previous = vec!["scan".into()];
    }
    if task.stages.deploy {
        let mut permissions = json!({"contents": "read"});
        if registry_host(&image) == Some("ghcr.io") {
            permissions["packages"] = json!("write");
        }
        jobs.insert(
            "image".into(),
            json!({
                "runs-on": "ubuntu-latest",
                "timeout-minutes": 30,
                "needs": previous.clone(),
                "permissions": permissions,
                "steps": [
                    checkout,
                    {"uses": "docker/setup-buildx-action@v3"},
                    login_step(&image),
                    {
                        "name": "Build the image (and push it from main)",
                        "uses": "docker/build-push-action@v6",
                        "with": {
                            "context": ".",
                            "push": format!("${{{{ {ON_MAIN} }}}}"),
                            "tags": "${{ env.IMAGE }}:${{ github.sha }}",
                            "cache-from": "type=gha",
                            "cache-to": "type=gha,mode=max",
                        },
                    },
                ],
            }),
        );
        previous = vec!["image".into()];
        for env in environments(task) {
            let name = format!("deploy-{env}");
            jobs.insert(
                name.clone(),
                json!({
                    "runs-on": "ubuntu-latest",
                    "timeout-minutes": 60,
                    "needs": previous.clone(),
                    "if": ON_MAIN,
                    "environment": env,
                    "concurrency": {"group": name, "cancel-in-progress": false},
                    "steps": [{
                        "name": format!("Deploy to {env} through the DevOps agent and wait for the plan"),
                        "env": {
                            "TORONTO_CLI_IMAGE": "${{ vars.TORONTO_CLI_IMAGE }}",
                            "TORONTO_NATS_URL": "${{ secrets.TORONTO_NATS_URL }}",
                            "TORONTO_NATS_CREDS": "${{ secrets.TORONTO_NATS_CREDS }}",
                            "TORONTO_NATS_CA": "${{ secrets.TORONTO_NATS_CA }}",
                            "TORONTO_IDENTITY_SEED": "${{ secrets.TORONTO_IDENTITY_SEED }}",
                            "SHA": "${{ github.sha }}",
                            "COMMITTED_AT": "${{ github.event.head_commit.timestamp }}",
                        },
                        "run": deploy_script(task, &env),
                    }],
                }),
            );
            previous = vec![name];
        }
    }
    json!({
        "name": format!("{} CI", task.service),
        "on": {"push": {"branches": ["main"]}, "pull_request": {}},
        "permissions": {"contents": "read"},
        "env": {"IMAGE": image},
        "jobs": Value::Object(jobs),
    })
}
