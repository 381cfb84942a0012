//! What each command is: its [`Spec`] (usage, summary, example) and the [`Role`] it
//! needs.

use std::fmt;
use std::str::FromStr;

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
        usage: "deploy SERVICE VERSION to ENV [--strategy rolling|blue-green|canary] [--steps 10,25,50] [--commit SHA] [--committed-at RFC3339] [--image REF]",
        summary: "Hand a deploy to the planner (production needs an approval by another operator).",
        example: "deploy shop-api 2.4.1 to production --strategy canary --steps 10,25,50",
        role: Role::Operator,
    },
    Spec {
        name: "rollback",
        usage: "rollback SERVICE in ENV [--to VERSION] [--emergency]",
        summary: "Hand a rollback to the planner (to the previous version unless --to); it is verified in the strategy's analysed steps unless --emergency.",
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
