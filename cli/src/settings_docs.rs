//! Every `TORONTO_*` variable of the runtime and of every service, gathered from their
//! settings tables: what `toronto config` prints and `docs/configuration.md` holds.

use std::fmt::Write as _;

use toronto_runtime::config::{CONFIG_FILE_VAR, ENV_VARS, Section, VarDoc, vars};

/// The variable naming the TOML file, documented like the others.
const CONFIG_FILE: VarDoc = VarDoc {
    name: CONFIG_FILE_VAR,
    description: "Path of an optional TOML file; variables override it.",
    default: "",
    replaced_by: None,
};

/// The variables by reader: the runtime's (every service), then each service's.
pub fn sections() -> Vec<Section> {
    let mut runtime = vec![CONFIG_FILE];
    runtime.extend(vars::docs(ENV_VARS));
    vec![
        Section {
            title: "Every service",
            vars: runtime,
        },
        Section {
            title: "Planner (`TORONTO_PLANNER_*`)",
            vars: vars::docs(toronto_planner::settings::PLANNER_VARS),
        },
        Section {
            title: "Deployer (`TORONTO_DEPLOYER_*`)",
            vars: toronto_deployer::settings::docs(),
        },
        Section {
            title: "Monitor (`TORONTO_MONITOR_*`)",
            vars: vars::docs(toronto_monitor::settings::MONITOR_VARS),
        },
        Section {
            title: "Incident commander (`TORONTO_INCIDENT_*`)",
            vars: vars::docs(toronto_incident_commander::settings::INCIDENT_VARS),
        },
        Section {
            title: "Chat bridge (`TORONTO_CHAT_*`)",
            vars: vars::docs(toronto_chat_bridge::settings::CHAT_VARS),
        },
        Section {
            title: "Web console (`TORONTO_CONSOLE_*`)",
            vars: vars::docs(toronto_console::settings::CONSOLE_VARS),
        },
    ]
}

/// Every variable any part of the agent reads, deprecated names included.
pub fn all() -> Vec<VarDoc> {
    sections().into_iter().flat_map(|s| s.vars).collect()
}

/// The names of [`all`].
pub fn names() -> Vec<&'static str> {
    all().iter().map(|v| v.name).collect()
}

/// The names of [`all`] without the deprecated ones.
pub fn current_names() -> Vec<&'static str> {
    all()
        .iter()
        .filter(|v| v.replaced_by.is_none())
        .map(|v| v.name)
        .collect()
}

/// `toronto config`: one line per variable.
pub fn text() -> String {
    let mut out = String::new();
    for v in all() {
        let _ = writeln!(out, "{:<44} {}", v.name, v.line());
    }
    out
}

/// `toronto config --markdown`: the start of `docs/configuration.md` (hand-written
/// sections on `toronto up` and the TOML file follow it).
pub fn markdown() -> String {
    toronto_runtime::config::vars::markdown(&sections())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_is_listed_once() {
        let mut names = names();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a variable is in two tables");
    }

    #[test]
    fn docs_configuration_md_is_generated_from_the_tables() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let file = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            file.starts_with(&markdown()),
            "docs/configuration.md does not begin with the settings tables: replace its \
             part up to `## Outside the services` with `toronto config --markdown`"
        );
    }
}
