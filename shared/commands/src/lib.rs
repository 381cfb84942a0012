//! The one command grammar of the DevOps agent, shared by the chat bridge (Slack and
//! Mattermost slash commands) and the `toronto run` CLI.
//!
//! Text such as `deploy shop-api 2.4.1 to production --strategy canary` is parsed into a
//! typed [`Command`]. Each command knows its usage line and summary ([`Spec`]), the
//! [`Role`] it needs, and how it becomes a NATS request ([`Command::request`]): the
//! service and verb of the subject and the envelope's `type` and `data`. Replies are
//! turned back into text by [`render`]. Every parse error carries the usage of the
//! command that was meant; an unknown command lists them all.
//!
//! ```
//! use toronto_commands::{Command, Role, parse};
//! let cmd = parse("deploy shop-api 2.4.1 to staging --strategy canary --steps 10,50").unwrap();
//! assert_eq!(cmd.name(), "deploy");
//! assert_eq!(cmd.role(), Role::Operator);
//! let err = parse("deploy shop-api").unwrap_err();
//! assert!(err.to_string().contains("usage: deploy SERVICE VERSION to ENV"));
//! ```
#![forbid(unsafe_code)]

pub mod render;
pub mod request;

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

pub use render::{render, render_error};
pub use request::{Actor, Request};

/// What a user may do, in increasing order: each role may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: status, plans, SLOs, DORA figures, incidents, help.
    Viewer,
    /// Changes: deploys, rollbacks, promotions, aborts, approvals, incident work, silences.
    Operator,
    /// Everything an operator may do (and whatever later needs more).
    Admin,
}

impl Role {
    /// Its name, as in configuration: `viewer`, `operator`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "`{other}` is not a role; use viewer, operator or admin"
            )),
        }
    }
}

/// A command's name, usage line, summary, example and the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The first word, e.g. `deploy`.
    pub name: &'static str,
    /// The usage line.
    pub usage: &'static str,
    /// What it does, in a sentence.
    pub summary: &'static str,
    /// An example.
    pub example: &'static str,
    /// The role it needs.
    pub role: Role,
}

/// Every command, in the order `help` lists them.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "deploy",
        usage: "deploy SERVICE VERSION to ENV [--strategy rolling|blue-green|canary] [--steps 10,25,50]",
        summary: "Hand a deploy to the planner (production needs an approval by another operator).",
        example: "deploy shop-api 2.4.1 to production --strategy canary --steps 10,25,50",
        role: Role::Operator,
    },
    Spec {
        name: "rollback",
        usage: "rollback SERVICE in ENV [--to VERSION]",
        summary: "Hand a rollback to the planner (to the previous version unless --to).",
        example: "rollback shop-api in production --to 2.4.0",
        role: Role::Operator,
    },
    Spec {
        name: "promote",
        usage: "promote SERVICE in ENV [--full]",
        summary: "End the current pause of a rollout (--full: go to 100% now).",
        example: "promote shop-api in production --full",
        role: Role::Operator,
    },
    Spec {
        name: "abort",
        usage: "abort SERVICE in ENV",
        summary: "Stop a rollout and send traffic back to the previous version.",
        example: "abort shop-api in production",
        role: Role::Operator,
    },
    Spec {
        name: "status",
        usage: "status [SERVICE [in ENV]]",
        summary: "Show the newest rollouts (of a service, in an environment).",
        example: "status shop-api in production",
        role: Role::Viewer,
    },
    Spec {
        name: "plans",
        usage: "plans [SERVICE]",
        summary: "Show the newest plans (of a service).",
        example: "plans shop-api",
        role: Role::Viewer,
    },
    Spec {
        name: "approve",
        usage: "approve PLAN_ID",
        summary: "Approve a plan waiting for approval (not your own).",
        example: "approve 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1",
        role: Role::Operator,
    },
    Spec {
        name: "reject",
        usage: "reject PLAN_ID [REASON]",
        summary: "Reject a plan waiting for approval.",
        example: "reject 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a1 not during the sale",
        role: Role::Operator,
    },
    Spec {
        name: "incidents",
        usage: "incidents",
        summary: "Show the open incidents.",
        example: "incidents",
        role: Role::Viewer,
    },
    Spec {
        name: "ack",
        usage: "ack INCIDENT_ID",
        summary: "Acknowledge an incident (stops its escalation).",
        example: "ack 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2",
        role: Role::Operator,
    },
    Spec {
        name: "resolve",
        usage: "resolve INCIDENT_ID",
        summary: "Resolve an incident.",
        example: "resolve 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2",
        role: Role::Operator,
    },
    Spec {
        name: "note",
        usage: "note INCIDENT_ID TEXT",
        summary: "Add a note to an incident's timeline.",
        example: "note 0193a4f0-8c1e-7cc3-9a0e-2b7f61c3d9a2 rolled back the canary, errors falling",
        role: Role::Operator,
    },
    Spec {
        name: "silence",
        usage: "silence MATCHERS for DURATION [COMMENT]",
        summary: "Silence alerts whose labels match (name=value, name!=value, name=~regex, name!~regex) for a while (e.g. 30m, 2h, 1d).",
        example: "silence service=shop-api,env=staging for 2h load test",
        role: Role::Operator,
    },
    Spec {
        name: "slo",
        usage: "slo SERVICE",
        summary: "Show a service's SLOs, error budgets and burn rates.",
        example: "slo shop-api",
        role: Role::Viewer,
    },
    Spec {
        name: "dora",
        usage: "dora [SERVICE]",
        summary: "Show the DORA figures (deploy frequency, lead time, change failure rate, time to restore).",
        example: "dora shop-api",
        role: Role::Viewer,
    },
    Spec {
        name: "help",
        usage: "help [COMMAND]",
        summary: "List the commands, or explain one.",
        example: "help deploy",
        role: Role::Viewer,
    },
];

/// The spec of a command by name.
pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Every usage line, one per line.
pub fn usage_list() -> String {
    SPECS.iter().map(|s| s.usage).collect::<Vec<_>>().join("\n")
}

/// A rollout strategy as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyArg {
    /// `rolling`.
    Rolling,
    /// `blue-green`.
    BlueGreen,
    /// `canary`.
    Canary,
}

/// A label matcher of a silence, as Alertmanager has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// The label name.
    pub name: String,
    /// The value or regular expression.
    pub value: String,
    /// `=~` or `!~`.
    pub is_regex: bool,
    /// `=` or `=~` (false for `!=` and `!~`).
    pub is_equal: bool,
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match (self.is_equal, self.is_regex) {
            (true, false) => "=",
            (false, false) => "!=",
            (true, true) => "=~",
            (false, true) => "!~",
        };
        write!(f, "{}{op}{}", self.name, self.value)
    }
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `deploy SERVICE VERSION to ENV [--strategy S] [--steps 10,25,50]`.
    Deploy {
        /// The service.
        service: String,
        /// The version.
        version: String,
        /// The environment.
        environment: String,
        /// The strategy (rolling when absent; canary when only steps are given).
        strategy: Option<StrategyArg>,
        /// Canary weights in percent, increasing (100 is appended when missing).
        steps: Vec<u8>,
    },
    /// `rollback SERVICE in ENV [--to VERSION]`.
    Rollback {
        /// The service.
        service: String,
        /// The environment.
        environment: String,
        /// The version to go back to (the previous one when absent).
        to: Option<String>,
    },
    /// `promote SERVICE in ENV [--full]`.
    Promote {
        /// The service.
        service: String,
        /// The environment.
        environment: String,
        /// Go to 100 percent now.
        full: bool,
    },
    /// `abort SERVICE in ENV`.
    Abort {
        /// The service.
        service: String,
        /// The environment.
        environment: String,
    },
    /// `status [SERVICE [in ENV]]`.
    Status {
        /// Only this service.
        service: Option<String>,
        /// Only this environment.
        environment: Option<String>,
    },
    /// `plans [SERVICE]`.
    Plans {
        /// Only this service.
        service: Option<String>,
    },
    /// `approve PLAN_ID`.
    Approve {
        /// The plan.
        plan_id: Uuid,
    },
    /// `reject PLAN_ID [REASON]`.
    Reject {
        /// The plan.
        plan_id: Uuid,
        /// Why.
        reason: Option<String>,
    },
    /// `incidents`.
    Incidents,
    /// `ack INCIDENT_ID`.
    Ack {
        /// The incident.
        incident_id: Uuid,
    },
    /// `resolve INCIDENT_ID`.
    Resolve {
        /// The incident.
        incident_id: Uuid,
    },
    /// `note INCIDENT_ID TEXT`.
    Note {
        /// The incident.
        incident_id: Uuid,
        /// The note.
        text: String,
    },
    /// `silence MATCHERS for DURATION [COMMENT]`.
    Silence {
        /// Label matchers, all of which must match.
        matchers: Vec<Matcher>,
        /// How long, in seconds.
        duration_seconds: u64,
        /// Why.
        comment: Option<String>,
    },
    /// `slo SERVICE`.
    Slo {
        /// The service.
        service: String,
    },
    /// `dora [SERVICE]`.
    Dora {
        /// Only this service.
        service: Option<String>,
    },
    /// `help [COMMAND]`.
    Help {
        /// The command to explain.
        command: Option<String>,
    },
}

impl Command {
    /// The command's name (its first word).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Deploy { .. } => "deploy",
            Command::Rollback { .. } => "rollback",
            Command::Promote { .. } => "promote",
            Command::Abort { .. } => "abort",
            Command::Status { .. } => "status",
            Command::Plans { .. } => "plans",
            Command::Approve { .. } => "approve",
            Command::Reject { .. } => "reject",
            Command::Incidents => "incidents",
            Command::Ack { .. } => "ack",
            Command::Resolve { .. } => "resolve",
            Command::Note { .. } => "note",
            Command::Silence { .. } => "silence",
            Command::Slo { .. } => "slo",
            Command::Dora { .. } => "dora",
            Command::Help { .. } => "help",
        }
    }

    /// Its spec: usage, summary, role.
    pub fn spec(&self) -> &'static Spec {
        spec(self.name()).expect("every command has a spec")
    }

    /// The role it needs.
    pub fn role(&self) -> Role {
        self.spec().role
    }

    /// Whether it changes something (its reply is worth showing to the whole channel).
    pub fn is_change(&self) -> bool {
        self.role() >= Role::Operator
    }

    /// The environment it changes, if any (for approval rules).
    pub fn environment(&self) -> Option<&str> {
        match self {
            Command::Deploy { environment, .. }
            | Command::Rollback { environment, .. }
            | Command::Promote { environment, .. }
            | Command::Abort { environment, .. } => Some(environment),
            Command::Status { environment, .. } => environment.as_deref(),
            _ => None,
        }
    }

    /// The text `help` answers: every usage line, or one command's usage, summary,
    /// role and example.
    pub fn help_text(command: Option<&str>) -> String {
        match command.and_then(spec) {
            Some(s) => format!(
                "usage: {}\n{}\nneeds role: {}\nexample: {}",
                s.usage, s.summary, s.role, s.example
            ),
            None => format!("commands:\n{}", usage_list()),
        }
    }
}

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
        "deploy" => &[("strategy", true), ("steps", true)],
        "rollback" => &[("to", true)],
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

/// A service or environment name: a DNS label.
fn label(what: &str, word: &str) -> Result<String, String> {
    let ok = !word.is_empty()
        && word.len() <= 63
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !word.starts_with('-')
        && !word.ends_with('-');
    if ok {
        Ok(word.to_owned())
    } else {
        Err(format!(
            "`{word}` is not a valid {what} (lowercase letters, digits and `-`, at most 63)"
        ))
    }
}

fn version(word: &str) -> Result<String, String> {
    let ok = !word.is_empty()
        && word.len() <= 128
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if ok {
        Ok(word.to_owned())
    } else {
        Err(format!("`{word}` is not a valid version"))
    }
}

fn incident_id(word: &str) -> Result<Uuid, String> {
    Uuid::parse_str(word).map_err(|_| format!("`{word}` is not an incident id (a UUID)"))
}

fn plan_id(word: &str) -> Result<Uuid, String> {
    Uuid::parse_str(word).map_err(|_| format!("`{word}` is not a plan id (a UUID)"))
}

/// `SERVICE in ENV` at the start of `words`.
fn service_in_env(words: &[&str], needed: &str) -> Result<(String, String), String> {
    if let Some(kw) = words.get(1).filter(|kw| !kw.eq_ignore_ascii_case("in")) {
        return Err(format!("expected `in` after the service, not `{kw}`"));
    }
    match words {
        [] => Err(format!("{needed} is missing")),
        [_] => Err("`in ENV` is missing".into()),
        [_, _] => Err("ENV is missing after `in`".into()),
        [service, _, env, ..] => Ok((label("service", service)?, label("environment", env)?)),
    }
}

fn no_more(words: &[&str]) -> Result<(), String> {
    match words.first() {
        None => Ok(()),
        Some(w) => Err(format!("unexpected `{w}`")),
    }
}

fn rest_text(words: &[&str]) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

/// Parses `30s`, `15m`, `2h`, `1d`, `1h30m` into seconds (1 minute to 90 days).
pub fn parse_duration(word: &str) -> Result<u64, String> {
    let bad = || format!("`{word}` is not a duration like 30m, 2h, 1d or 1h30m");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in word.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any {
        return Err(bad());
    }
    if total < 60 {
        return Err(format!("`{word}` is shorter than a minute"));
    }
    if total > 90 * 86_400 {
        return Err(format!("`{word}` is longer than 90 days"));
    }
    Ok(total)
}

fn parse_matchers(words: &[&str]) -> Result<Vec<Matcher>, String> {
    let mut matchers = Vec::new();
    for part in words
        .iter()
        .flat_map(|w| w.split(','))
        .filter(|p| !p.is_empty())
    {
        let (name, op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| part.split_once(op).map(|(n, v)| (n, *op, v)))
            .ok_or_else(|| {
                format!("`{part}` is not a matcher like name=value, name!=value, name=~regex")
            })?;
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(format!("`{name}` is not a label name"));
        }
        if value.is_empty() && op != "=" {
            return Err(format!("`{part}` has no value"));
        }
        matchers.push(Matcher {
            name: name.to_owned(),
            value: value.to_owned(),
            is_regex: op.ends_with('~'),
            is_equal: !op.starts_with('!'),
        });
    }
    if matchers.is_empty() {
        return Err("MATCHERS are missing".into());
    }
    Ok(matchers)
}

fn parse_steps(list: &str) -> Result<Vec<u8>, String> {
    let mut steps = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let w: u8 = part
            .trim_end_matches('%')
            .parse()
            .ok()
            .filter(|w| (1..=100).contains(w))
            .ok_or_else(|| format!("`{part}` is not a weight from 1 to 100"))?;
        if steps.last().is_some_and(|last| *last >= w) {
            return Err(format!("--steps must increase: `{list}`"));
        }
        steps.push(w);
    }
    if steps.is_empty() {
        return Err("--steps needs weights like 10,25,50".into());
    }
    if steps.last() != Some(&100) {
        steps.push(100);
    }
    Ok(steps)
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
                    (label("service", s)?, version(v)?, label("environment", e)?)
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
            Command::Deploy {
                service,
                version: ver,
                environment: env,
                strategy,
                steps,
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
                service: Some(label("service", s)?),
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
            let service = p.first().map(|s| label("service", s)).transpose()?;
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
            let service = label("service", p.first().ok_or("SERVICE is missing")?)?;
            no_more(&p[1..])?;
            Command::Slo { service }
        }
        "dora" => {
            let service = p.first().map(|s| label("service", s)).transpose()?;
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

#[cfg(test)]
mod tests;
