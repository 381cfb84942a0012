//! Settings tables: every `TORONTO_*` variable is one [`Var`] entry (name, doc,
//! default, setter) in the table of the code that reads it. The tables are the only
//! place a variable is named, and their doc strings are the documentation
//! (`toronto config`, `docs/configuration.md`).
//!
//! A service reads its table with [`read`] after [`refuse_unknown`] has refused any
//! variable of its prefix that no table names (with the closest known name as a hint).
//! A renamed variable stays in the table as a deprecated entry ([`Var::deprecated`]):
//! it still works, a warning is logged when it is used, and the new name wins when both
//! are set.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::parse::ValueError;

/// Why a service's settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A variable of the service's prefix that no table names (a typo, or a variable
    /// of another version).
    #[error("unknown variable {name}{}", did_you_mean(*suggestion))]
    Unknown {
        /// The variable set.
        name: String,
        /// The closest known name, if one is close.
        suggestion: Option<&'static str>,
    },
    /// A variable has a value of the wrong form.
    #[error("{var}: {source}")]
    Value {
        /// The variable.
        var: &'static str,
        /// What is wrong with the value.
        #[source]
        source: ValueError,
    },
    /// Values that are fine alone do not fit together.
    #[error("{0}")]
    Inconsistent(String),
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

/// Sets a field of `S` from the text of a variable.
pub type Setter<S> = fn(&mut S, &str) -> Result<(), ValueError>;

/// One variable of a settings table.
pub struct Var<S> {
    /// The variable's name.
    pub name: &'static str,
    /// What it does: the documentation printed by `toronto config`.
    pub description: &'static str,
    /// The value that gives the default setting (empty: unset), documented and checked
    /// against `Default` by each table's tests.
    pub default: &'static str,
    /// For a renamed variable: the name that replaces it.
    pub replaced_by: Option<&'static str>,
    /// Parses the text and sets the field.
    pub apply: Setter<S>,
}

impl<S> Var<S> {
    /// A variable with its doc, default text and setter.
    pub const fn new(
        name: &'static str,
        description: &'static str,
        default: &'static str,
        apply: Setter<S>,
    ) -> Self {
        Self {
            name,
            description,
            default,
            replaced_by: None,
            apply,
        }
    }

    /// A deprecated (old) name, still read, replaced by `replaced_by`.
    pub const fn deprecated(
        name: &'static str,
        description: &'static str,
        replaced_by: &'static str,
        apply: Setter<S>,
    ) -> Self {
        Self {
            name,
            description,
            default: "",
            replaced_by: Some(replaced_by),
            apply,
        }
    }

    /// Its documentation, without the setter.
    pub fn doc(&self) -> VarDoc {
        VarDoc {
            name: self.name,
            description: self.description,
            default: self.default,
            replaced_by: self.replaced_by,
        }
    }
}

/// The documentation of one variable (a [`Var`] without its setter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarDoc {
    /// The variable's name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// The default value (empty: unset).
    pub default: &'static str,
    /// For a deprecated name: what replaces it.
    pub replaced_by: Option<&'static str>,
}

impl VarDoc {
    /// One line of text: the description, then the default or the replacement.
    pub fn line(&self) -> String {
        match self.replaced_by {
            Some(new) => format!("Deprecated: use {new}. {}", self.description),
            None if self.default.is_empty() => format!("{} Default: unset.", self.description),
            None => format!("{} Default: `{}`.", self.description, self.default),
        }
    }
}

/// The documentation of every entry of a table.
pub fn docs<S>(table: &[Var<S>]) -> Vec<VarDoc> {
    table.iter().map(Var::doc).collect()
}

/// Refuses a variable that starts with `prefix` but is not in `known`, naming it and
/// the closest known name.
pub fn refuse_unknown<'a>(
    prefix: &str,
    known: impl IntoIterator<Item = &'a VarDoc> + Clone,
    vars: &HashMap<String, String>,
) -> Result<(), SettingsError> {
    let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with(prefix)).collect();
    names.sort();
    for name in names {
        if known.clone().into_iter().any(|v| v.name == name) {
            continue;
        }
        let suggestion = known
            .clone()
            .into_iter()
            .map(|v| (strsim::levenshtein(name, v.name), v.name))
            .filter(|(distance, _)| *distance <= 4)
            .min()
            .map(|(_, n)| n);
        return Err(SettingsError::Unknown {
            name: name.clone(),
            suggestion,
        });
    }
    Ok(())
}

/// Applies every variable of `table` found in `vars` to `settings`: deprecated names
/// first (each logs a warning), then current names, so a current name wins.
pub fn read<S>(
    settings: &mut S,
    table: &[Var<S>],
    vars: &HashMap<String, String>,
) -> Result<(), SettingsError> {
    let (old, new): (Vec<&Var<S>>, Vec<&Var<S>>) =
        table.iter().partition(|v| v.replaced_by.is_some());
    for var in old.into_iter().chain(new) {
        let Some(value) = vars.get(var.name) else {
            continue;
        };
        if let Some(replacement) = var.replaced_by {
            warn_deprecated(var.name, replacement);
        }
        (var.apply)(settings, value).map_err(|source| SettingsError::Value {
            var: var.name,
            source,
        })?;
    }
    Ok(())
}

/// Logs that `name` is deprecated; before logging is set up (the runtime's own
/// variables are read to configure it), the warning goes to standard error.
fn warn_deprecated(name: &str, replacement: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!(
            variable = name,
            replacement,
            "{name} is deprecated: use {replacement}"
        );
    } else {
        eprintln!("warning: {name} is deprecated: use {replacement}");
    }
}

/// The environment as a map (what every `from_env` reads).
pub fn env_vars() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// A section of the configuration reference: a title and its variables.
#[derive(Debug, Clone)]
pub struct Section {
    /// Who reads these variables, e.g. "Every service" or "planner".
    pub title: &'static str,
    /// The variables.
    pub vars: Vec<VarDoc>,
}

/// The configuration reference as Markdown: one table per section.
pub fn markdown(sections: &[Section]) -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         Every variable the services read, generated from the settings tables in the code \
         by `toronto config --markdown` (a test fails when this file and the tables differ). \
         A variable of a service's prefix that no table names is refused at start; a \
         deprecated name still works and logs a warning.\n",
    );
    for section in sections {
        let _ = write!(
            out,
            "\n## {}\n\n| Variable | Default | Description |\n|---|---|---|\n",
            section.title
        );
        for v in &section.vars {
            let default = if v.default.is_empty() {
                "unset".to_owned()
            } else {
                format!("`{}`", v.default)
            };
            let description = match v.replaced_by {
                Some(new) => format!("**Deprecated**: use `{new}`. {}", v.description),
                None => v.description.to_owned(),
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                v.name,
                default,
                description.replace('|', "\\|")
            );
        }
    }
    out
}

/// Variables as `from_vars` takes them, from name/value pairs: how tests and programs
/// that embed a service pass settings without touching the process environment.
pub fn var_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[derive(Debug, Default, PartialEq)]
    struct Demo {
        lease: std::time::Duration,
        names: Vec<String>,
    }

    const DEMO: &[Var<Demo>] = &[
        Var::new("TORONTO_DEMO_LEASE_SECONDS", "Lease.", "", |s, v| {
            s.lease = parse::seconds(v)?;
            Ok(())
        }),
        Var::deprecated(
            "TORONTO_DEMO_LEASE_MS",
            "Lease.",
            "TORONTO_DEMO_LEASE_SECONDS",
            |s, v| {
                s.lease = parse::millis(v)?;
                Ok(())
            },
        ),
        Var::new("TORONTO_DEMO_NAMES", "Names.", "", |s, v| {
            s.names = parse::list(v);
            Ok(())
        }),
    ];

    use super::var_map as vars;

    fn load(pairs: &[(&str, &str)]) -> Result<Demo, SettingsError> {
        let vars = vars(pairs);
        refuse_unknown("TORONTO_DEMO_", &docs(DEMO), &vars)?;
        let mut demo = Demo::default();
        read(&mut demo, DEMO, &vars)?;
        Ok(demo)
    }

    #[test]
    fn a_typo_is_refused_with_the_closest_name() {
        let err = load(&[("TORONTO_DEMO_LEASE_SECOND", "1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable TORONTO_DEMO_LEASE_SECOND (did you mean TORONTO_DEMO_LEASE_SECONDS?)"
        );
        let err = load(&[("TORONTO_DEMO_SOMETHING_ELSE_ENTIRELY", "1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable TORONTO_DEMO_SOMETHING_ELSE_ENTIRELY"
        );
        // Other prefixes are not this table's business.
        assert!(load(&[("TORONTO_OTHER_X", "1")]).is_ok());
    }

    #[test]
    fn a_deprecated_name_works_and_the_new_one_wins() {
        let d = load(&[("TORONTO_DEMO_LEASE_MS", "1500")]).unwrap();
        assert_eq!(d.lease, std::time::Duration::from_millis(1500));
        let d = load(&[
            ("TORONTO_DEMO_LEASE_MS", "1500"),
            ("TORONTO_DEMO_LEASE_SECONDS", "3"),
        ])
        .unwrap();
        assert_eq!(d.lease, std::time::Duration::from_secs(3));
    }

    #[test]
    fn bad_values_and_zero_name_the_variable() {
        let err = load(&[("TORONTO_DEMO_LEASE_SECONDS", "0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TORONTO_DEMO_LEASE_SECONDS: must be more than 0"
        );
        assert!(matches!(
            err,
            SettingsError::Value {
                source: ValueError::Zero,
                ..
            }
        ));
        let err = load(&[("TORONTO_DEMO_LEASE_MS", "soon")]).unwrap_err();
        assert!(err.to_string().starts_with("TORONTO_DEMO_LEASE_MS: `soon`"));
    }

    #[test]
    fn markdown_lists_every_variable_once() {
        let md = markdown(&[Section {
            title: "demo",
            vars: docs(DEMO),
        }]);
        for v in DEMO {
            assert_eq!(md.matches(&format!("| `{}` |", v.name)).count(), 1);
        }
        assert!(md.contains("**Deprecated**: use `TORONTO_DEMO_LEASE_SECONDS`"));
    }
}
