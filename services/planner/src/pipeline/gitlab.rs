//! GitLab CI: build, test and scan jobs, an image job (kaniko, on the default branch),
//! and one deploy stage per environment whose job runs in the agent's own image
//! (`TORONTO_CLI_IMAGE`) and waits for the plan; a failed stage stops the ones after it.

use serde_json::{Value, json};
use toronto_protocol::tasks::PipelineTask;

use super::{SECRETS_PROLOGUE, deploy_words, environments, image, registry_host, toolchain};

/// Only the default branch pushes images and deploys.
const ON_DEFAULT_BRANCH: &str = "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH";

/// The image job's script (kaniko's busybox sh): the registry credentials (GitLab's own
/// registry by default, `REGISTRY_USERNAME`/`REGISTRY_PASSWORD` to override) into
/// kaniko's config, then build and push `$IMAGE:$CI_COMMIT_SHA`.
const KANIKO_SCRIPT: &str = r#": "${REGISTRY_USERNAME:=${CI_REGISTRY_USER:-}}"
: "${REGISTRY_PASSWORD:=${CI_REGISTRY_PASSWORD:-}}"
auth="$(printf '%s:%s' "$REGISTRY_USERNAME" "$REGISTRY_PASSWORD" | base64 | tr -d '\n')"
mkdir -p /kaniko/.docker
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$REGISTRY" "$auth" > /kaniko/.docker/config.json
/kaniko/executor --context "$CI_PROJECT_DIR" --dockerfile "$CI_PROJECT_DIR/Dockerfile" \
  --destination "$IMAGE:$CI_COMMIT_SHA"
"#;

/// The deploy job's script (sh, in the agent's image): the secrets to 0600 files, their
/// contents out of the environment, then the CLI.
fn deploy_script(task: &PipelineTask, environment: &str) -> String {
    format!(
        r#"{SECRETS_PROLOGUE}export TORONTO_IDENTITY_FILE="$secrets/identity.nk"
if [ -n "${{TORONTO_NATS_CREDS:-}}" ]; then
  printf '%s\n' "$TORONTO_NATS_CREDS" > "$secrets/nats.creds"
  export TORONTO_NATS_CREDS_FILE="$secrets/nats.creds"
fi
if [ -n "${{TORONTO_NATS_CA:-}}" ]; then
  printf '%s\n' "$TORONTO_NATS_CA" > "$secrets/ca.crt"
  export TORONTO_NATS_TLS_CA_FILE="$secrets/ca.crt"
fi
unset TORONTO_IDENTITY_SEED TORONTO_NATS_CREDS TORONTO_NATS_CA
{words}
"#,
        words = deploy_words(task, environment, "$CI_COMMIT_SHA", "$CI_COMMIT_TIMESTAMP"),
    )
}

/// The `.gitlab-ci.yml` for `task`.
pub(super) fn pipeline(task: &PipelineTask) -> Value {
    let tc = toolchain(task.language);
    let image = image(task);
    let mut doc = serde_json::Map::new();
    let mut stages = Vec::new();
    if task.stages.build {
        stages.push("build".to_owned());
        doc.insert(
            "build".into(),
            json!({"stage": "build", "image": tc.image, "script": [tc.build]}),
        );
    }
    if task.stages.test {
        stages.push("test".to_owned());
        doc.insert(
            "test".into(),
            json!({"stage": "test", "image": tc.image, "script": [tc.test]}),
        );
    }
    if task.stages.scan {
        stages.push("scan".to_owned());
        doc.insert(
            "scan".into(),
            json!({
                "stage": "scan",
                "image": {"name": "aquasec/trivy:0.57.0", "entrypoint": [""]},
                "script": ["trivy fs --exit-code 1 --severity CRITICAL,HIGH ."],
            }),
        );
    }
    if task.stages.deploy {
        stages.push("image".to_owned());
        // `image` is a global keyword in GitLab: the job needs another name.
        doc.insert(
            "build-image".into(),
            json!({
                "stage": "image",
                "image": {"name": "gcr.io/kaniko-project/executor:v1.23.2-debug", "entrypoint": [""]},
                "rules": [{"if": ON_DEFAULT_BRANCH}],
                "script": [KANIKO_SCRIPT],
            }),
        );
        for env in environments(task) {
            let stage = format!("deploy-{env}");
            stages.push(stage.clone());
            doc.insert(
                stage.clone(),
                json!({
                    "stage": stage,
                    "image": {"name": "$TORONTO_CLI_IMAGE", "entrypoint": [""]},
                    "environment": {"name": env},
                    "resource_group": stage,
                    "rules": [{"if": ON_DEFAULT_BRANCH}],
                    "variables": {"GIT_STRATEGY": "none"},
                    "script": [deploy_script(task, &env)],
                }),
            );
        }
    }
    let mut variables = json!({"IMAGE": image});
    if task.stages.deploy {
        variables["REGISTRY"] =
            json!(registry_host(&image).unwrap_or("https://index.docker.io/v1/"));
    }
    let mut out = serde_json::Map::new();
    out.insert("stages".into(), json!(stages));
    out.insert("variables".into(), variables);
    out.extend(doc);
    Value::Object(out)
}
