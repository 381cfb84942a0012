//! Parsing text into a [`Command`]: words, options, and the grammar of each command.

use crate::command::{Command, StrategyArg};
use crate::spec::{spec, usage_list};
use crate::words::*;

/// Why a text is not a command. Its message always ends with the usage of the command
/// that was meant, or the list of commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No words at all.
    #[error("no command given; commands:\n{}", usage_list())]
    Empty,
    /// The first word is no command.
    #[error("unknown command `{word}`; commands:\n{}", usage_list())]
    Unknown {
        /// The word.
        word: String,
    },
    /// The command is known but the rest is malformed.
    #[error("{reason}\nusage: {}", spec(command).map(|s| s.usage).unwrap_or_default())]
    Usage {
        /// The command meant.
        command: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ParseError {
    /// The usage text of the command meant (every usage line when it is unknown).
    pub fn usage(&self) -> String {
        match self {
            ParseError::Usage { command, .. } => spec(command)
                .map(|s| s.usage.to_owned())
                .unwrap_or_default(),
            _ => usage_list(),
        }
    }

    /// The command meant, when known.
    pub fn command(&self) -> Option<&'static str> {
        match self {
            ParseError::Usage { command, .. } => Some(command),
            _ => None,
        }
    }
}

/// Splits text into words; `"..."`, `'...'` and typographic quotes (which chat clients
/// substitute) group words.
pub fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if c == q
                    || (q == '\u{201c}' && c == '\u{201d}')
                    || (q == '\u{2018}' && c == '\u{2019}')
                {
                    quote = None;
                } else {
                    current.push(c);
                }
            }
            None => match c {
                '"' | '\'' | '\u{201c}' | '\u{2018}' => {
                    quote = Some(c);
                    in_word = true;
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut current));
                        in_word = false;
                    }
                }
                c => {
                    current.push(c);
                    in_word = true;
                }
            },
        }
    }
    if quote.is_some() {
        return Err("a quote is not closed".into());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// Parses a line of text (as typed after `/devops` in chat).
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let words = tokenize(text).map_err(|reason| {
        let first = text.split_whitespace().next().unwrap_or_default();
        match spec(&first.to_ascii_lowercase()) {
            Some(s) => ParseError::Usage {
                command: s.name,
                reason,
            },
            None => ParseError::Unknown {
                word: first.to_owned(),
            },
        }
    })?;
    parse_words(&words)
}

/// Parses words already split (as a shell passes them to `toronto run`).
pub fn parse_words<S: AsRef<str>>(words: &[S]) -> Result<Command, ParseError> {
    let words: Vec<&str> = words.iter().map(|w| w.as_ref()).collect();
    let Some((first, rest)) = words.split_first() else {
        return Err(ParseError::Empty);
    };
    let name = first.to_ascii_lowercase();
    let spec = spec(&name).ok_or_else(|| ParseError::Unknown {
        word: (*first).to_owned(),
    })?;
    let usage = |reason: String| ParseError::Usage {
        command: spec.name,
        reason,
    };
    let args = Args::split(rest, spec.name).map_err(usage)?;
    parse_command(spec.name, args).map_err(usage)
}

/// Positional words and `--options` of one command.
struct Args<'a> {
    positional: Vec<&'a str>,
    options: Vec<(&'a str, Option<String>)>,
}

/// The options each command takes: (name, takes a value).
fn options_of(command: &str) -> &'static [(&'static str, bool)] {
    match command {
        "deploy" => &[
            ("strategy", true),
            ("steps", true),
            ("commit", true),
            ("committed-at", true),
            ("image", true),
        ],
        "rollback" => &[("to", true), ("emergency", false)],
        "promote" => &[("full", false)],
        _ => &[],
    }
}

impl<'a> Args<'a> {
    fn split(words: &[&'a str], command: &str) -> Result<Self, String> {
        let known = options_of(command);
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut iter = words.iter();
        while let Some(word) = iter.next() {
            let Some(option) = word.strip_prefix("--").filter(|o| !o.is_empty()) else {
                positional.push(*word);
                continue;
            };
            let (name, inline) = match option.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (option, None),
            };
            let Some((name, takes_value)) = known.iter().find(|(k, _)| *k == name) else {
                return Err(format!("`--{name}` is not an option of {command}"));
            };
            if options.iter().any(|(n, _)| n == name) {
                return Err(format!("`--{name}` is given twice"));
            }
            let value = if *takes_value {
                match inline {
                    Some(v) => Some(v),
                    None => Some(
                        iter.next()
                            .filter(|v| !v.starts_with("--"))
                            .ok_or_else(|| format!("`--{name}` needs a value"))?
                            .to_string(),
                    ),
                }
            } else {
                if inline.is_some() {
                    return Err(format!("`--{name}` takes no value"));
                }
                None
            };
            options.push((*name, value));
        }
        Ok(Self {
            positional,
            options,
        })
    }

    fn option(&self, name: &str) -> Option<&Option<String>> {
        self.options
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.option(name).and_then(|v| v.as_deref())
    }

    fn flag(&self, name: &str) -> bool {
        self.option(name).is_some()
    }
}

fn parse_command(name: &'static str, args: Args<'_>) -> Result<Command, String> {
    let p = &args.positional[..];
    Ok(match name {
        "deploy" => {
            let (service, ver, env) = match p {
                [] => return Err("SERVICE is missing".into()),
                [_] => return Err("VERSION is missing".into()),
                [_, _] | [_, _, _] => return Err("`to ENV` is missing".into()),
                [s, v, kw, e, rest @ ..] => {
                    if !kw.eq_ignore_ascii_case("to") {
                        return Err(format!("expected `to` after the version, not `{kw}`"));
                    }
                    no_more(rest)?;
                    (service(s)?, version(v)?, environment(e)?)
                }
            };
            let strategy = match args.value("strategy") {
                None => None,
                Some("rolling") => Some(StrategyArg::Rolling),
                Some("blue-green" | "bluegreen" | "blue_green") => Some(StrategyArg::BlueGreen),
                Some("canary") => Some(StrategyArg::Canary),
                Some(other) => {
                    return Err(format!(
                        "`{other}` is not a strategy; use rolling, blue-green or canary"
                    ));
                }
            };
            let steps = match args.value("steps") {
                None => Vec::new(),
                Some(list) => {
                    if matches!(
                        strategy,
                        Some(StrategyArg::Rolling | StrategyArg::BlueGreen)
                    ) {
                        return Err("--steps is for the canary strategy".into());
                    }
                    parse_steps(list)?
                }
            };
            let strategy = if steps.is_empty() {
                strategy
            } else {
                Some(StrategyArg::Canary)
            };
            let commit = args.value("commit").map(commit_id).transpose()?;
            let committed_at = args.value("committed-at").map(commit_time).transpose()?;
            let image = args.value("image").map(image_ref).transpose()?;
            Command::Deploy {
                service,
                version: ver,
                environment: env,
                strategy,
                steps,
                commit,
                committed_at,
                image,
            }
        }
        "rollback" => {
            let (service, environment) = service_in_env(p, "SERVICE")?;
            no_more(&p[3..])?;
            let to = args.value("to").map(version).transpose()?;
            Command::Rollback {
                service,
                environment,
                to,
                emergency: args.flag("emergency"),
            }
        }
        "promote" => {
            let (service, environment) = service_in_env(p, "SERVICE")?;
            no_more(&p[3..])?;
            Command::Promote {
                service,
                environment,
                full: args.flag("full"),
            }
        }
        "abort" => {
            let (service, environment) = service_in_env(p, "SERVICE")?;
            no_more(&p[3..])?;
            Command::Abort {
                service,
                environment,
            }
        }
        "status" => match p {
            [] => Command::Status {
                service: None,
                environment: None,
            },
            [s] => Command::Status {
                service: Some(service(s)?),
                environment: None,
            },
            _ => {
                let (service, environment) = service_in_env(p, "SERVICE")?;
                no_more(&p[3..])?;
                Command::Status {
                    service: Some(service),
                    environment: Some(environment),
                }
            }
        },
        "plans" => {
            let service = p.first().map(|s| service(s)).transpose()?;
            no_more(p.get(1..).unwrap_or_default())?;
            Command::Plans { service }
        }
        "approve" => {
            let id = p.first().ok_or("PLAN_ID is missing")?;
            no_more(&p[1..])?;
            Command::Approve {
                plan_id: plan_id(id)?,
            }
        }
        "reject" => {
            let id = p.first().ok_or("PLAN_ID is missing")?;
            Command::Reject {
                plan_id: plan_id(id)?,
                reason: rest_text(&p[1..]),
            }
        }
        "incidents" => {
            no_more(p)?;
            Command::Incidents
        }
        "ack" | "resolve" => {
            let id = incident_id(p.first().ok_or("INCIDENT_ID is missing")?)?;
            no_more(&p[1..])?;
            if name == "ack" {
                Command::Ack { incident_id: id }
            } else {
                Command::Resolve { incident_id: id }
            }
        }
        "note" => {
            let id = incident_id(p.first().ok_or("INCIDENT_ID is missing")?)?;
            let text = rest_text(&p[1..]).ok_or("TEXT is missing")?;
            Command::Note {
                incident_id: id,
                text,
            }
        }
        "silence" => {
            let at = p
                .iter()
                .position(|w| w.eq_ignore_ascii_case("for"))
                .ok_or("`for DURATION` is missing")?;
            let matchers = parse_matchers(&p[..at])?;
            let duration = p.get(at + 1).ok_or("DURATION is missing")?;
            Command::Silence {
                matchers,
                duration_seconds: parse_duration(duration)?,
                comment: rest_text(&p[at + 2..]),
            }
        }
        "slo" => {
            let service = service(p.first().ok_or("SERVICE is missing")?)?;
            no_more(&p[1..])?;
            Command::Slo { service }
        }
        "dora" => {
            let service = p.first().map(|s| service(s)).transpose()?;
            no_more(p.get(1..).unwrap_or_default())?;
            Command::Dora { service }
        }
        "help" => {
            let command = match p.first() {
                None => None,
                Some(w) => {
                    let w = w.to_ascii_lowercase();
                    if spec(&w).is_none() {
                        return Err(format!("`{w}` is not a command; try `help`"));
                    }
                    Some(w)
                }
            };
            no_more(p.get(1..).unwrap_or_default())?;
            Command::Help { command }
        }
        other => return Err(format!("`{other}` is not implemented")),
    })
}
