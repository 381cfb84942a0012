//! What a person sees, in headless Chromium driven by selenium (`browser.py`): the
//! canary's weight moving live, the aborted rollout's evidence, the incident's
//! timeline, an approval refused for the requester and done by another operator.
//! Screenshots go to `docs/console/`. Skipped, saying so, when Chromium is absent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use toronto_protocol::rollout::Rollout;

use crate::stack::Stack;

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TORONTO_PYTHON") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for venv in [
        root.join(".tools/venv/bin/python"),
        "/work/main/.tools/venv/bin/python".into(),
    ] {
        if venv.is_file() {
            return venv;
        }
    }
    "python3".into()
}

fn write_state(path: &Path, state: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, state.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_person_sees_the_canary_move_the_abort_evidence_the_incident_and_approves() {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .or_else(|| on_path("chromium-browser"));
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| on_path("chromedriver"));
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        eprintln!(
            "SKIPPED: the browser test needs Chromium and chromedriver (Debian `chromium`, \
             `chromium-driver`); neither CHROMIUM/CHROMEDRIVER nor PATH has them"
        );
        return;
    };
    let mut stack = Box::pin(Stack::start()).await;
    let dir = std::env::temp_dir().join(format!("toronto-console-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_path = dir.join("state.json");
    let mut state = serde_json::json!({});
    write_state(&state_path, &state);
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console");
    std::fs::create_dir_all(&shots).unwrap();

    // A canary that moves slowly enough to be watched: 25, 50, then 100 percent.
    stack
        .deploy("1.1.0", "staging", &[(25, 8), (50, 8), (100, 0)])
        .await;
    let canary = stack.rollout_at("1.1.0", "staging", 25).await;
    state["canary"] = canary.id.to_string().into();
    write_state(&state_path, &state);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser.py");
    let mut browser = tokio::process::Command::new(python())
        .arg(&script)
        .arg(&stack.url)
        .arg(&state_path)
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .env("CHROMEDRIVER", &driver)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the selenium script");
    stack
        .events
        .wait(
            "toronto.devops.v1.events.rollout.succeeded",
            |r: &Rollout| r.id == canary.id,
        )
        .await;

    // A canary whose new version fails every request: aborted on the evidence.
    stack
        .deploy("1.2.0", "staging", &[(25, 60), (100, 0)])
        .await;
    let bad = stack.rollout_at("1.2.0", "staging", 25).await;
    stack.fault("1.2.0", "staging").await;
    stack
        .events
        .wait("toronto.devops.v1.events.rollout.aborted", |r: &Rollout| {
            r.id == bad.id
        })
        .await;
    state["aborted"] = bad.id.to_string().into();
    write_state(&state_path, &state);

    // An incident, with hostile text in its title and labels.
    let incident = stack.hostile_incident().await;
    state["incident"] = incident.id.to_string().into();
    write_state(&state_path, &state);

    // Alice asks for production: the plan waits for an approver.
    let plan = stack
        .deploy("1.1.0", "production", &[(50, 60), (100, 0)])
        .await;
    stack.waiting(plan).await;
    state["plan"] = plan.to_string().into();
    write_state(&state_path, &state);

    let status = tokio::time::timeout(Duration::from_secs(300), browser.wait())
        .await
        .expect("the browser checks finish within 5 minutes")
        .unwrap();
    assert!(
        status.success(),
        "the browser checks failed (see its output above)"
    );
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
