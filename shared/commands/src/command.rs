//! The typed [`Command`] a text parses into, and its arguments.

use std::fmt;

use uuid::Uuid;

use crate::spec::{Role, Spec, spec, usage_list};

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
        /// The commit being deployed (`--commit SHA`), for lead time and the audit.
        commit: Option<String>,
        /// When it was committed (`--committed-at RFC3339`): DORA's lead time starts here.
        committed_at: Option<chrono::DateTime<chrono::Utc>>,
        /// The image to run (`--image REF`, e.g. the one a CI pipeline pushed); default:
        /// the service's image at that version.
        image: Option<String>,
    },
    /// `rollback SERVICE in ENV [--to VERSION] [--emergency]`.
    Rollback {
        /// The service.
        service: String,
        /// The environment.
        environment: String,
        /// The version to go back to (the previous one when absent).
        to: Option<String>,
        /// `--emergency`: put it back in one step, skipping the analysed steps.
        emergency: bool,
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
