//! CI pipelines generated from a declarative description of a repository: GitHub
//! Actions workflows and GitLab CI files. Built as data and serialized with a YAML
//! library, so the output always parses; the tests check it against each tool's schema.
//! The deploy stage hands deploys to the DevOps agent itself (`toronto request ...`),
//! environment by environment, so the planner's gates and policies apply.

use serde_json::{Value, json};
use toronto_protocol::tasks::{Artifact, CiSystem, Language, PipelineTask};

struct Toolchain {
    /// Container image with the toolchain (GitLab), or the setup action (GitHub).
    image: &'static str,
    setup: Value,
    build: &'static str,
    test: &'static str,
}

fn toolchain(language: Language) -> Toolchain {
    match language {
        Language::Rust => Toolchain {
            image: "rust:1.95",
            setup: json!({"uses": "dtolnay/rust-toolchain@stable"}),
            build: "cargo build --locked --release",
            test: "cargo test --locked",
        },
        Language::Go => Toolchain {
            image: "golang:1.24",
            setup: json!({"uses": "actions/setup-go@v5", "with": {"go-version": "stable"}}),
            build: "go build ./...",
            test: "go test ./...",
        },
        Language::Node => Toolchain {
            image: "node:22",
            setup: json!({"uses": "actions/setup-node@v4", "with": {"node-version": "22", "cache": "npm"}}),
            build: "npm ci && npm run build --if-present",
            test: "npm test",
        },
        Language::Python => Toolchain {
            image: "python:3.12",
            setup: json!({"uses": "actions/setup-python@v5", "with": {"python-version": "3.12"}}),
            build: "pip install -r requirements.txt",
            test: "python -m pytest",
        },
        Language::Java => Toolchain {
            image: "maven:3-eclipse-temurin-21",
            setup: json!({"uses": "actions/setup-java@v4", "with": {"distribution": "temurin", "java-version": "21", "cache": "maven"}}),
            build: "mvn -B package -DskipTests",
            test: "mvn -B test",
        },
    }
}

fn environments(task: &PipelineTask) -> Vec<String> {
    if task.environments.is_empty() {
        vec!["staging".into(), "production".into()]
    } else {
        task.environments.clone()
    }
}

/// The shell line that hands a deploy of the commit to the DevOps agent.
fn deploy_command(task: &PipelineTask, environment: &str, version: &str, commit: &str) -> String {
    format!(
        "toronto request toronto.devops.v1.planner.submit --type ai.toronto.devops.task.deploy.v1 \
         --data '{{\"service\":\"{service}\",\"version\":\"{version}\",\"environment\":\"{environment}\",\
         \"image\":\"{image}:{version}\",\"change\":{{\"commit\":\"{commit}\"}}}}'",
        service = task.service,
        image = task.image.clone().unwrap_or_else(|| task.service.clone()),
    )
}

fn github_actions(task: &PipelineTask) -> Value {
    let tc = toolchain(task.language);
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
        for env in environments(task) {
            let name = format!("deploy-{env}");
            jobs.insert(
                name.clone(),
                json!({
                    "runs-on": "ubuntu-latest",
                    "timeout-minutes": 30,
                    "needs": previous.clone(),
                    "if": "github.ref == 'refs/heads/main'",
                    "environment": env,
                    "steps": [{
                        "name": format!("Hand the deploy to {env} to the DevOps agent"),
                        "env": {"TORONTO_NATS_URL": "${{ secrets.TORONTO_NATS_URL }}"},
                        "run": deploy_command(task, &env, "${{ github.sha }}", "${{ github.sha }}"),
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
        "jobs": Value::Object(jobs),
    })
}

fn gitlab_ci(task: &PipelineTask) -> Value {
    let tc = toolchain(task.language);
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
        for env in environments(task) {
            let stage = format!("deploy-{env}");
            stages.push(stage.clone());
            doc.insert(
                stage.clone(),
                json!({
                    "stage": stage,
                    "image": "debian:bookworm-slim",
                    "environment": {"name": env},
                    "rules": [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}],
                    "script": [deploy_command(task, &env, "$CI_COMMIT_SHA", "$CI_COMMIT_SHA")],
                }),
            );
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("stages".into(), json!(stages));
    out.extend(doc);
    Value::Object(out)
}

/// The pipeline file for `task`.
pub fn generate(task: &PipelineTask) -> Result<Artifact, String> {
    let (path, doc) = match task.ci {
        CiSystem::GithubActions => (".github/workflows/ci.yml".to_owned(), github_actions(task)),
        CiSystem::GitlabCi => (".gitlab-ci.yml".to_owned(), gitlab_ci(task)),
    };
    let content = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    Ok(Artifact {
        path,
        media_type: "application/yaml".into(),
        content: format!(
            "# Generated by the Toronto DevOps agent for {} ({}).\n{content}",
            task.service, task.repository
        ),
    })
}
