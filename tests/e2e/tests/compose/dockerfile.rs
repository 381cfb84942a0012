//! The Dockerfile: a locked build that ships every binary.

use super::*;

/// One instruction: its stage (the `AS` name, or the index), keyword and arguments, with
/// continuation lines joined and comments dropped.
struct Instruction {
    stage: String,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut stage = String::new();
    let mut stages = 0;
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Docker drops comment and empty lines, also inside a continued instruction.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
                continue;
            }
            None => current.push_str(trimmed),
        }
        let joined = std::mem::take(&mut current);
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if keyword == "FROM" {
            let words: Vec<&str> = args.split(' ').collect();
            stage = match words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                Some(i) => words.get(i + 1).copied().unwrap_or_default().to_owned(),
                None => stages.to_string(),
            };
            stages += 1;
        }
        out.push(Instruction {
            stage: stage.clone(),
            keyword,
            args,
        });
    }
    out
}

/// What the Dockerfile promises: the binaries in the image, the tools installed in the
/// final stage, and its `ENV` and `ARG` names.
pub(super) struct Image {
    pub(super) binaries: BTreeSet<String>,
    pub(super) final_stage_runs: String,
    pub(super) env: BTreeMap<String, String>,
    pub(super) build_args: BTreeSet<String>,
}

pub(super) fn check_dockerfile(problems: &mut Vec<String>) -> Image {
    let instructions = dockerfile();
    let final_stage = instructions
        .iter()
        .rev()
        .find(|i| i.keyword == "FROM")
        .map(|i| i.stage.clone())
        .expect("the Dockerfile has a FROM");

    // The build: locked to Cargo.lock, release profile.
    let builds: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .collect();
    if builds.is_empty() {
        problems.push("the Dockerfile has no `RUN ... cargo build`".into());
    }
    for build in &builds {
        for flag in ["--locked", "--release"] {
            if !build.args.split(' ').any(|w| w == flag) {
                problems.push(format!(
                    "the Dockerfile's `cargo build` lacks `{flag}` (stage `{}`)",
                    build.stage
                ));
            }
        }
    }

    // The binaries: copied from another stage into /usr/local/bin/ of the final stage,
    // and each one out of target/release/ of the build.
    let mut binaries = BTreeSet::new();
    for copy in instructions
        .iter()
        .filter(|i| i.stage == final_stage && i.keyword == "COPY" && i.args.starts_with("--from="))
    {
        let words: Vec<&str> = copy
            .args
            .split(' ')
            .filter(|w| !w.starts_with("--"))
            .collect();
        if let Some((dest, sources)) = words.split_last()
            && (*dest == BIN_DIR || *dest == BIN_DIR.trim_end_matches('/'))
        {
            binaries.extend(
                sources
                    .iter()
                    .map(|s| s.rsplit('/').next().unwrap_or(s).to_owned()),
            );
        }
    }
    for bin in &binaries {
        let built = format!("target/release/{bin}");
        if !builds.iter().any(|b| b.args.split(' ').any(|w| w == built)) {
            problems.push(format!(
                "the Dockerfile copies `{bin}` to {BIN_DIR} but its build step never takes it \
                 from `{built}`"
            ));
        }
    }
    for bin in workspace_binaries() {
        if !binaries.contains(&bin) {
            problems.push(format!(
                "the Dockerfile's final stage does not copy `{bin}` into {BIN_DIR} \
                 (add it to the `COPY --from=builder` list and to the `cp target/release/...`)"
            ));
        }
    }

    // The git sha the protocol crate stamps at compile time is a build argument.
    let stamp = "TORONTO_BUILD_GIT_SHA";
    if !read("shared/protocol/src/status.rs").contains(&format!("option_env!(\"{stamp}\")")) {
        problems.push(format!(
            "shared/protocol no longer reads `{stamp}` at compile time: update the Dockerfile's \
             ARG and this test"
        ));
    }
    let build_args: BTreeSet<String> = instructions
        .iter()
        .filter(|i| i.keyword == "ARG")
        .map(|i| i.args.split('=').next().unwrap_or_default().to_owned())
        .collect();
    let build_stage = builds.first().map(|b| b.stage.clone()).unwrap_or_default();
    if !instructions
        .iter()
        .any(|i| i.keyword == "ARG" && i.stage == build_stage && i.args.starts_with(stamp))
    {
        problems.push(format!(
            "the build stage `{build_stage}` declares no `ARG {stamp}`: binaries would report \
             git sha `unknown`"
        ));
    }

    // ENV: only variables the runtime reads, with values it accepts.
    let mut env = BTreeMap::new();
    for i in instructions
        .iter()
        .filter(|i| i.stage == final_stage && i.keyword == "ENV")
    {
        for pair in i.args.split(' ') {
            if let Some((k, v)) = pair.split_once('=') {
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
    }
    check_toronto_vars("the Dockerfile's ENV", &env, problems);
    if let Ok(config) = Config::from_vars(&env.clone().into_iter().collect()) {
        match config.http.socket_addr() {
            Ok(Some(addr)) if addr.ip().is_unspecified() => {
                let exposed = instructions
                    .iter()
                    .filter(|i| i.stage == final_stage && i.keyword == "EXPOSE")
                    .flat_map(|i| i.args.split(' ').map(str::to_owned).collect::<Vec<_>>())
                    .any(|p| p.split('/').next() == Some(&addr.port().to_string()));
                if !exposed {
                    problems.push(format!(
                        "the Dockerfile does not EXPOSE {}, the port of TORONTO_HTTP_ADDR",
                        addr.port()
                    ));
                }
            }
            other => problems.push(format!(
                "the Dockerfile must set TORONTO_HTTP_ADDR to 0.0.0.0:<port> so that /readyz is \
                 reachable from outside the container (got {other:?})"
            )),
        }
    }
    let final_instructions = || instructions.iter().filter(|i| i.stage == final_stage);
    if !final_instructions().any(|i| i.keyword == "HEALTHCHECK" && i.args.contains("/readyz")) {
        problems.push("the Dockerfile's final stage has no HEALTHCHECK on /readyz".into());
    }
    match final_instructions().rfind(|i| i.keyword == "USER") {
        Some(user) if !matches!(user.args.split(':').next(), Some("0" | "root")) => {}
        _ => problems.push("the Dockerfile's final stage must run as a non-root USER".into()),
    }
    if !final_instructions().any(|i| i.keyword == "STOPSIGNAL" && i.args == "SIGTERM") {
        problems
            .push("the Dockerfile must say `STOPSIGNAL SIGTERM` (what the services handle)".into());
    }
    let final_stage_runs = final_instructions()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");

    Image {
        binaries,
        final_stage_runs,
        env,
        build_args,
    }
}

#[test]
fn dockerfile_builds_locked_and_ships_every_binary() {
    let mut problems = Vec::new();
    check_dockerfile(&mut problems);
    fail_if_any("Dockerfile", problems);
}
