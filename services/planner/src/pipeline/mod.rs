//! CI pipelines generated from a declarative description of a repository: GitHub
//! Actions workflows ([`github`]) and GitLab CI files ([`gitlab`]). Built as data and
//! serialized with a YAML library, so the output always parses; the tests check it
//! against each tool's schema, actionlint and shellcheck.
//!
//! Stages: build, test and scan with the language's toolchain; an image stage that
//! builds the repository's `Dockerfile` and pushes `IMAGE:<commit>` from the default
//! branch (docker buildx on GitHub, kaniko on GitLab); then one deploy job per
//! environment that hands the deploy to the DevOps agent with
//! `toronto run --follow deploy ...` from the agent's own image, signed with the
//! pipeline's NKey seed, and waits for the plan's end: a failed staging deploy exits 1 and
//! production never starts. `docs/pipelines.md` lists the CI secrets it reads.

mod github;
mod gitlab;

use serde_json::{Value, json};
use toronto_protocol::tasks::{Artifact, CiSystem, Language, PipelineTask};

/// The language's toolchain in CI.
struct Toolchain {
    /// Container image with the toolchain (GitLab).
    image: &'static str,
    /// The setup action (GitHub).
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

/// The image repository the pipeline pushes (without a tag).
fn image(task: &PipelineTask) -> String {
    task.image.clone().unwrap_or_else(|| task.service.clone())
}

/// The registry host of `image` (`None`: Docker Hub), as `docker login` wants it: the
/// first path component when it looks like a host (has a dot or a port, or is
/// `localhost`).
fn registry_host(image: &str) -> Option<&str> {
    let (first, rest) = image.split_once('/')?;
    (!rest.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost"))
        .then_some(first)
}

/// Shell lines, shared by both systems, that check the CI secrets and write the
/// pipeline's NKey seed to a 0600 file in a fresh 0700 directory `$secrets`, removed on
/// exit. The seed never reaches the command line or the log.
const SECRETS_PROLOGUE: &str = r#": "${TORONTO_NATS_URL:?set the CI secret TORONTO_NATS_URL to the NATS URL of the DevOps agent}"
: "${TORONTO_IDENTITY_SEED:?set the CI secret TORONTO_IDENTITY_SEED to the NKey seed of this pipeline (docs/pipelines.md)}"
umask 077
secrets="$(mktemp -d)"
trap 'rm -rf "$secrets"' EXIT
printf '%s\n' "$TORONTO_IDENTITY_SEED" > "$secrets/identity.nk"
"#;

/// The `toronto run` words that deploy `$SHA` of `task.service` to `environment` and
/// follow the plan to its end (exit 1 when it fails). `sha`, `time` and `image` are shell
/// expressions (double-quoted here, so they expand); service and environment are DNS
/// labels (the planner checked them), safe as they are.
fn deploy_words(task: &PipelineTask, environment: &str, sha: &str, time: &str) -> String {
    format!(
        "toronto run --follow deploy {service} \"{sha}\" to {environment} \\\n  \
         --image \"$IMAGE:{sha}\" --commit \"{sha}\" --committed-at \"{time}\"",
        service = task.service,
    )
}

/// The pipeline file for `task`.
pub fn generate(task: &PipelineTask) -> Result<Artifact, String> {
    let (path, doc) = match task.ci {
        CiSystem::GithubActions => (
            ".github/workflows/ci.yml".to_owned(),
            github::workflow(task),
        ),
        CiSystem::GitlabCi => (".gitlab-ci.yml".to_owned(), gitlab::pipeline(task)),
    };
    let content = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    Ok(Artifact {
        path,
        media_type: "application/yaml".into(),
        content: format!(
            "# Generated by the Toronto DevOps agent for {} ({}).\n\
             # CI secrets and variables it reads: docs/pipelines.md.\n{content}",
            task.service, task.repository
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_host("ghcr.io/acme/shop"), Some("ghcr.io"));
        assert_eq!(registry_host("localhost:5000/shop"), Some("localhost:5000"));
        assert_eq!(registry_host("localhost/shop"), Some("localhost"));
        assert_eq!(registry_host("acme/shop"), None);
        assert_eq!(registry_host("shop"), None);
    }

    #[test]
    fn deploy_words_quote_the_commit_so_it_expands() {
        let task = PipelineTask {
            service: "shop-api".into(),
            repository: "github.com/acme/shop-api".into(),
            language: Language::Rust,
            ci: CiSystem::GitlabCi,
            stages: Default::default(),
            environments: vec![],
            image: None,
        };
        let words = deploy_words(&task, "staging", "$CI_COMMIT_SHA", "$CI_COMMIT_TIMESTAMP");
        assert!(words.contains("deploy shop-api \"$CI_COMMIT_SHA\" to staging"));
        assert!(words.contains("--commit \"$CI_COMMIT_SHA\""));
        assert!(words.contains("--committed-at \"$CI_COMMIT_TIMESTAMP\""));
        assert!(
            !words.contains('\''),
            "no single quotes around anything: {words}"
        );
    }
}
