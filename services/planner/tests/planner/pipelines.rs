//! Generated pipelines, checked against each tool's schema.

use toronto_protocol::Envelope;
use toronto_protocol::tasks::PlanState;

use crate::support::*;

/// check-jsonschema (installed by `scripts/install-tools --test`), which carries the
/// GitHub Actions and GitLab CI schemas.
fn check_jsonschema() -> std::path::PathBuf {
    let path = std::env::var_os("TORONTO_CHECK_JSONSCHEMA_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.tools/venv/bin/check-jsonschema")
        });
    assert!(
        path.is_file(),
        "check-jsonschema not found at {}: run scripts/install-tools --test (pip install check-jsonschema==0.39.0 into .tools/venv)",
        path.display()
    );
    path
}

#[tokio::test]
async fn pipelines_are_generated_and_follow_each_tools_schema() {
    use toronto_protocol::tasks::{CiSystem, Language, PipelineTask, Stages};
    let validator = check_jsonschema();
    let p = planner().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            CiSystem::GithubActions,
            Language::Rust,
            "vendor.github-workflows",
            ".github/workflows/ci.yml",
        ),
        (
            CiSystem::GithubActions,
            Language::Node,
            "vendor.github-workflows",
            ".github/workflows/ci.yml",
        ),
        (
            CiSystem::GitlabCi,
            Language::Python,
            "vendor.gitlab-ci",
            ".gitlab-ci.yml",
        ),
        (
            CiSystem::GitlabCi,
            Language::Java,
            "vendor.gitlab-ci",
            ".gitlab-ci.yml",
        ),
    ];
    for (i, (ci, language, schema, path)) in cases.into_iter().enumerate() {
        let task = PipelineTask {
            service: "shop-api".into(),
            repository: "github.com/acme/shop-api".into(),
            language,
            ci,
            stages: Stages::default(),
            environments: vec!["staging".into(), "production".into()],
            image: Some("ghcr.io/acme/shop-api".into()),
        };
        let plan_id = p
            .submit(&Envelope::builder("toronto://agents/architect/ann", task).build())
            .await
            .unwrap()
            .plan_id;
        let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
        let artifact = &plan.artifacts[0];
        assert_eq!(artifact.path, path);
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&artifact.content).expect("the pipeline parses");
        let text = &artifact.content;
        assert!(
            text.contains("staging") && text.contains("production"),
            "{text}"
        );
        assert!(
            text.contains("toronto.devops.v1.planner.submit"),
            "deploys go through the agent: {text}"
        );
        match ci {
            CiSystem::GithubActions => {
                assert!(
                    doc["jobs"]["deploy-production"]["needs"][0] == "deploy-staging",
                    "{text}"
                );
            }
            CiSystem::GitlabCi => {
                let stages: Vec<&str> = doc["stages"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect();
                assert_eq!(
                    stages,
                    [
                        "build",
                        "test",
                        "scan",
                        "deploy-staging",
                        "deploy-production"
                    ]
                );
            }
        }
        let file = dir.path().join(format!("pipeline-{i}.yml"));
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(&validator)
            .args(["--builtin-schema", schema])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{ci:?}/{language:?} does not follow {schema}:\n{}\n{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    p.stop().await;
}
