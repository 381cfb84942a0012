//! How a command becomes a NATS request: the service and verb of the subject, and the
//! envelope's `type` and `data`.

use toronto_protocol::envelope::{SPEC_VERSION, new_id};
use toronto_protocol::incidents::{
    IncidentAction, IncidentList, IncidentNote, Matcher, SilenceCreate,
};
use toronto_protocol::rollout::{RolloutCommand, RolloutList};
use toronto_protocol::tasks::{
    CanaryStep, Change, DeployTask, DoraQuery, PlanDecision, PlanList, RollbackTask, Strategy,
};
use toronto_protocol::{Message, MessageType, RawEnvelope, ServiceKind, Subjects, TraceParent};

use crate::{Command, Role, StrategyArg};

/// Who sends a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// A stable id: the chat platform's user id, or the CLI user. Recorded as `by` on
    /// decisions and incident work, and compared with a plan's requester.
    pub id: String,
    /// The role they act in.
    pub role: Role,
    /// The `source` of the envelopes they send, e.g. `toronto://chat/slack/U024BE7LH`
    /// (the planner records it as the plan's requester; its last segment is `id`).
    pub source: String,
}

/// A request a command becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The service that serves it.
    pub service: ServiceKind,
    /// The verb: the subject is `<prefix>.devops.v1.<service>.<verb>`.
    pub verb: &'static str,
    /// The envelope's `type`.
    pub message_type: MessageType,
    /// The schema of `data` (`v1/task.deploy.json`), for contract types.
    pub schema: Option<String>,
    /// The envelope's `subject` attribute (what it is about), when there is one.
    pub about: Option<String>,
    /// The payload.
    pub data: serde_json::Value,
}

impl Request {
    fn typed<T: Message>(service: ServiceKind, verb: &'static str, data: T) -> Self {
        Self {
            service,
            verb,
            message_type: T::message_type(),
            schema: Some(T::schema_path()),
            about: None,
            data: serde_json::to_value(data).expect("contract types serialize"),
        }
    }

    fn about(mut self, about: Option<&str>) -> Self {
        self.about = about.map(str::to_owned);
        self
    }

    /// The subject to send it to.
    pub fn subject(&self, subjects: &Subjects) -> String {
        subjects.command(self.service, self.verb)
    }

    /// A fresh envelope around it, sent by `source`, starting a new flow (its
    /// correlation id is its own id).
    pub fn envelope(&self, source: &str) -> RawEnvelope {
        let id = new_id().to_string();
        RawEnvelope {
            specversion: SPEC_VERSION.to_owned(),
            id: id.clone(),
            source: source.to_owned(),
            ty: self.message_type.to_string(),
            time: Some(chrono::Utc::now()),
            datacontenttype: Some("application/json".to_owned()),
            dataschema: self
                .schema
                .as_ref()
                .map(|s| toronto_protocol::message::schema_uri(s)),
            subject: self.about.clone(),
            correlationid: Some(id),
            causationid: None,
            priority: None,
            traceparent: Some(TraceParent::new_root().to_string()),
            data: self.data.clone(),
        }
    }
}

impl Command {
    /// The request this command becomes when `actor` sends it; `None` for `help`, which
    /// is answered without asking anyone.
    pub fn request(&self, actor: &Actor) -> Option<Request> {
        use ServiceKind::{Deployer, IncidentCommander, Monitor, Planner};
        Some(match self {
            Command::Deploy {
                service,
                version,
                environment,
                strategy,
                steps,
                commit,
                committed_at,
                image,
            } => {
                let change = (commit.is_some() || committed_at.is_some()).then(|| Change {
                    commit: commit.clone(),
                    author: None,
                    link: None,
                    commit_time: *committed_at,
                });
                let strategy = match strategy {
                    None | Some(StrategyArg::Rolling) => Strategy::Rolling,
                    Some(StrategyArg::BlueGreen) => Strategy::BlueGreen,
                    Some(StrategyArg::Canary) => Strategy::Canary {
                        steps: steps
                            .iter()
                            .map(|w| CanaryStep {
                                weight: *w,
                                pause_seconds: None,
                            })
                            .collect(),
                    },
                };
                Request::typed(
                    Planner,
                    "submit",
                    DeployTask {
                        service: service.clone(),
                        version: version.clone(),
                        image: image.clone(),
                        environment: environment.clone(),
                        strategy,
                        change,
                        fix: false,
                        policy_override: None,
                    },
                )
                .about(Some(service))
            }
            Command::Rollback {
                service,
                environment,
                to,
                emergency,
            } => Request::typed(
                Planner,
                "submit",
                RollbackTask {
                    service: service.clone(),
                    environment: environment.clone(),
                    target_version: to.clone(),
                    emergency: *emergency,
                },
            )
            .about(Some(service)),
            Command::Promote {
                service,
                environment,
                full,
            } => Request::typed(
                Deployer,
                "rollout.promote",
                RolloutCommand {
                    service: Some(service.clone()),
                    environment: Some(environment.clone()),
                    by: Some(actor.id.clone()),
                    full: *full,
                    ..Default::default()
                },
            )
            .about(Some(service)),
            Command::Abort {
                service,
                environment,
            } => Request::typed(
                Deployer,
                "rollout.abort",
                RolloutCommand {
                    service: Some(service.clone()),
                    environment: Some(environment.clone()),
                    by: Some(actor.id.clone()),
                    reason: Some(format!("aborted by {}", actor.id)),
                    ..Default::default()
                },
            )
            .about(Some(service)),
            Command::Status {
                service,
                environment,
            } => Request::typed(
                Deployer,
                "rollout.list",
                RolloutList {
                    service: service.clone(),
                    environment: environment.clone(),
                    active: false,
                    limit: Some(10),
                    cursor: None,
                },
            )
            .about(service.as_deref()),
            Command::Plans { service } => Request::typed(
                Planner,
                "plan.list",
                PlanList {
                    service: service.clone(),
                    limit: Some(10),
                    ..Default::default()
                },
            )
            .about(service.as_deref()),
            Command::Approve { plan_id } => Request::typed(
                Planner,
                "plan.approve",
                PlanDecision {
                    plan_id: *plan_id,
                    by: actor.id.clone(),
                    role: actor.role.to_string(),
                    comment: None,
                },
            ),
            Command::Reject { plan_id, reason } => Request::typed(
                Planner,
                "plan.reject",
                PlanDecision {
                    plan_id: *plan_id,
                    by: actor.id.clone(),
                    role: actor.role.to_string(),
                    comment: reason.clone(),
                },
            ),
            Command::Incidents => Request::typed(
                IncidentCommander,
                "list",
                IncidentList {
                    open: true,
                    limit: Some(20),
                    ..Default::default()
                },
            ),
            Command::Ack { incident_id } => Request::typed(
                IncidentCommander,
                "ack",
                IncidentAction {
                    id: *incident_id,
                    by: actor.id.clone(),
                    reason: None,
                },
            ),
            Command::Resolve { incident_id } => Request::typed(
                IncidentCommander,
                "resolve",
                IncidentAction {
                    id: *incident_id,
                    by: actor.id.clone(),
                    reason: None,
                },
            ),
            Command::Note { incident_id, text } => Request::typed(
                IncidentCommander,
                "note",
                IncidentNote {
                    id: *incident_id,
                    by: actor.id.clone(),
                    text: text.clone(),
                    action_item: false,
                },
            ),
            Command::Silence {
                matchers,
                duration_seconds,
                comment,
            } => {
                // Whole seconds, as the command line gives them.
                let now = chrono::Utc::now();
                let ends_at = now
                    - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos()))
                    + chrono::Duration::seconds(i64::try_from(*duration_seconds).unwrap_or(0));
                Request::typed(
                    IncidentCommander,
                    "silence.create",
                    SilenceCreate {
                        matchers: matchers
                            .iter()
                            .map(|m| Matcher {
                                name: m.name.clone(),
                                value: m.value.clone(),
                                is_regex: m.is_regex,
                                is_equal: m.is_equal,
                            })
                            .collect(),
                        starts_at: None,
                        ends_at,
                        created_by: actor.id.clone(),
                        comment: comment
                            .clone()
                            .unwrap_or_else(|| format!("silenced by {}", actor.id)),
                    },
                )
            }
            Command::Slo { service } => Request::typed(
                Monitor,
                "slo.list",
                toronto_protocol::alerts::SloList {
                    service: Some(service.clone()),
                },
            )
            .about(Some(service)),
            Command::Dora { service } => Request::typed(
                Planner,
                "dora.get",
                DoraQuery {
                    service: service.clone(),
                    ..Default::default()
                },
            )
            .about(service.as_deref()),
            Command::Help { .. } => return None,
        })
    }
}
