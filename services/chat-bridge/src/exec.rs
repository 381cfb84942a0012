//! Carrying a command out for a chat user: role checks, the approval rule, the request
//! over NATS, the reply as text, and the `chat.command` event that records it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use toronto_commands::{Actor, Command, Role, parse, render, render_error};
use toronto_protocol::chat::ChatCommandRecord;
use toronto_protocol::tasks::{Plan, PlanGet};
use toronto_protocol::{Encoding, Envelope, Subjects};
use toronto_runtime::jetstream::Events;
use toronto_runtime::rpc::{CallError, call, call_raw_signed};

use crate::settings::Settings;

/// Where a command came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `slack`, `mattermost` or `cli`.
    pub platform: &'static str,
    /// The user's id on the platform.
    pub user_id: String,
    /// The user's name, when sent.
    pub user_name: Option<String>,
    /// The channel, when known.
    pub channel: Option<String>,
    /// The text typed (for buttons: the equivalent command text).
    pub text: String,
}

/// What came of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the reply is the service's answer.
    Ok,
    /// The text is not a command; the reply is its usage.
    Usage,
    /// The user may not do this.
    Forbidden,
    /// The service refused it or did not answer.
    Error,
}

impl Outcome {
    /// As recorded in `chat.command`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Usage => "usage",
            Outcome::Forbidden => "forbidden",
            Outcome::Error => "error",
        }
    }
}

/// The answer to show the user (plain text; the caller escapes it for its chat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The text.
    pub text: String,
    /// Worth showing to the channel (a change that was made), not only to the user.
    pub public: bool,
    /// What came of it.
    pub outcome: Outcome,
}

/// The part of the bridge that talks to the other services.
#[derive(Debug, Clone)]
pub struct Bridge {
    client: Client,
    subjects: Subjects,
    events: Events,
    settings: Arc<Settings>,
    timeout: Duration,
    metrics: crate::metrics::ChatMetrics,
    /// The identity registry: who a chat user is (none with `TORONTO_AUTH=off`).
    registry: Option<toronto_runtime::auth::Registry>,
}

impl Bridge {
    /// A bridge over a connection.
    pub fn new(
        client: Client,
        subjects: Subjects,
        events: Events,
        settings: Arc<Settings>,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            subjects,
            events,
            settings,
            timeout,
            metrics: Default::default(),
            registry: None,
        }
    }

    /// Acts on behalf of the principal each chat user is in `registry`: a command from
    /// a chat user no principal claims (`chat_ids`) is refused.
    pub fn with_registry(mut self, registry: Option<toronto_runtime::auth::Registry>) -> Self {
        self.registry = registry;
        self
    }

    /// The bridge's own key acting for the principal `inv`'s user is, or why not.
    fn delegate_for(
        &self,
        inv: &Invocation,
    ) -> Result<Option<toronto_runtime::auth::Signer>, String> {
        let own = toronto_runtime::auth::process_signer();
        let Some(registry) = &self.registry else {
            return Ok(own);
        };
        let chat_id = format!("{}:{}", inv.platform, inv.user_id);
        let Some(principal) = registry.by_chat_id(&chat_id) else {
            return Err(format!(
                "your chat user `{chat_id}` is not a registered principal; an admin adds it with `toronto identity add <id> --key <key> --chat {chat_id} --role operator`"
            ));
        };
        if principal.revoked {
            return Err(format!("principal `{}` is revoked", principal.id));
        }
        match own {
            Some(signer) => signer
                .on_behalf_of(&principal.id)
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Err(
                "the chat bridge has no identity of its own (TORONTO_IDENTITY_FILE) to act for you with"
                    .to_owned(),
            ),
        }
    }

    /// Counts commands in `metrics` (registered with the service's `/metrics`).
    pub fn with_metrics(mut self, metrics: crate::metrics::ChatMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Parses and carries out `inv.text` (or `parsed`, for buttons), records it, and
    /// returns the reply.
    pub async fn handle(&self, inv: &Invocation, parsed: Option<Command>) -> Reply {
        let role = self
            .settings
            .role_of(inv.platform, &inv.user_id, inv.user_name.as_deref());
        let command = match parsed.map(Ok).unwrap_or_else(|| parse(&inv.text)) {
            Ok(c) => c,
            Err(e) => {
                let reply = Reply {
                    text: e.to_string(),
                    public: false,
                    outcome: Outcome::Usage,
                };
                self.record(inv, role, None, &reply, None, None).await;
                return reply;
            }
        };
        let (reply, subject, correlation) = self.carry_out(inv, role, &command).await;
        self.record(
            inv,
            role,
            Some(&command),
            &reply,
            subject,
            correlation.as_deref(),
        )
        .await;
        reply
    }

    async fn carry_out(
        &self,
        inv: &Invocation,
        role: Option<Role>,
        command: &Command,
    ) -> (Reply, Option<String>, Option<String>) {
        let forbidden = |text: String| {
            (
                Reply {
                    text,
                    public: false,
                    outcome: Outcome::Forbidden,
                },
                None,
                None,
            )
        };
        let needed = command.role();
        if let Command::Help { command: which } = command {
            let reply = Reply {
                text: Command::help_text(which.as_deref()),
                public: false,
                outcome: Outcome::Ok,
            };
            return (reply, None, None);
        }
        let Some(role) = role else {
            return forbidden(format!(
                "you have no role here; `{}` needs {needed} (ask an admin to add you to TORONTO_CHAT_ROLES)",
                command.name()
            ));
        };
        if role < needed {
            return forbidden(format!(
                "`{}` needs the {needed} role; you are {} {role}",
                command.name(),
                if role == Role::Admin || role == Role::Operator {
                    "an"
                } else {
                    "a"
                }
            ));
        }
        if let Command::Approve { plan_id } = command {
            match self.plan(*plan_id).await {
                Ok(plan) => {
                    if let Some(why) = self.self_approval(&plan, inv) {
                        return forbidden(why);
                    }
                }
                Err(e) => return (self.failure(command, &e), None, None),
            }
        }
        let actor = Actor {
            id: inv.user_id.clone(),
            role,
            source: format!("toronto://chat/{}/{}", inv.platform, inv.user_id),
        };
        let Some(request) = command.request(&actor) else {
            let reply = Reply {
                text: render(command, &serde_json::Value::Null),
                public: false,
                outcome: Outcome::Ok,
            };
            return (reply, None, None);
        };
        // A change is asked on behalf of the registered principal the chat user is; a
        // read goes out as the bridge itself (reads are open on the bus).
        let signer = if command.is_change() {
            match self.delegate_for(inv) {
                Ok(signer) => signer,
                Err(why) => return forbidden(why),
            }
        } else {
            toronto_runtime::auth::process_signer()
        };
        let subject = request.subject(&self.subjects);
        let envelope = request.envelope(&actor.source);
        let correlation = envelope.correlationid.clone();
        let reply = match call_raw_signed(
            &self.client,
            signer.as_ref(),
            &subject,
            &envelope,
            Encoding::Json,
            self.timeout,
        )
        .await
        {
            Ok(reply) => Reply {
                text: render(command, &reply.data),
                public: command.is_change(),
                outcome: Outcome::Ok,
            },
            Err(e) => self.failure(command, &e),
        };
        (reply, Some(subject), correlation)
    }

    /// The reason `inv`'s user may not approve `plan`: they asked for it (a change, in
    /// production above all, needs a different operator's approval).
    fn self_approval(&self, plan: &Plan, inv: &Invocation) -> Option<String> {
        let requester = plan.requested_by.rsplit('/').next().unwrap_or_default();
        (requester == inv.user_id || plan.requested_by == inv.user_id).then(|| {
            format!(
                "you asked for this {} ({}); another operator must approve it",
                plan.task.kind(),
                toronto_commands::render::describe_task(&plan.task)
            )
        })
    }

    async fn plan(&self, plan_id: uuid::Uuid) -> Result<Plan, CallError> {
        let req = Envelope::builder(
            self.subjects
                .source(toronto_protocol::ServiceKind::ChatBridge),
            PlanGet { plan_id },
        )
        .build();
        call::<_, Plan>(
            &self.client,
            &self
                .subjects
                .command(toronto_protocol::ServiceKind::Planner, "plan.get"),
            &req,
            Encoding::Json,
            self.timeout,
        )
        .await
        .map(|e| e.data)
    }

    fn failure(&self, command: &Command, e: &CallError) -> Reply {
        let text = match e {
            CallError::Remote(body) => render_error(command, body),
            CallError::NoResponders(subject) => format!(
                "{} failed: nobody answers on {subject} (is that service running?)",
                command.name()
            ),
            other => format!("{} failed: {other}", command.name()),
        };
        let outcome = match e {
            CallError::Remote(body) if body.code == toronto_protocol::ErrorCode::Forbidden => {
                Outcome::Forbidden
            }
            _ => Outcome::Error,
        };
        Reply {
            text,
            public: false,
            outcome,
        }
    }

    async fn record(
        &self,
        inv: &Invocation,
        role: Option<Role>,
        command: Option<&Command>,
        reply: &Reply,
        request_subject: Option<String>,
        correlation: Option<&str>,
    ) {
        self.metrics
            .commands
            .get_or_create(&crate::metrics::CommandLabels {
                platform: inv.platform.to_owned(),
                command: command.map(|c| c.name()).unwrap_or("unparsed").to_owned(),
                outcome: reply.outcome.as_str().to_owned(),
            })
            .inc();
        let record = ChatCommandRecord {
            platform: inv.platform.to_owned(),
            user_id: inv.user_id.clone(),
            user_name: inv.user_name.clone(),
            role: role.map(|r| r.to_string()),
            channel: inv.channel.clone(),
            text: inv.text.clone(),
            command: command.map(|c| c.name().to_owned()),
            required_role: command.map(|c| c.role().to_string()),
            outcome: reply.outcome.as_str().to_owned(),
            request_subject,
            detail: Some(reply.text.lines().next().unwrap_or_default().to_owned()),
            at: chrono::Utc::now(),
        };
        let mut builder = Envelope::builder(
            self.subjects
                .source(toronto_protocol::ServiceKind::ChatBridge),
            record,
        )
        .subject(inv.user_id.clone());
        if let Some(c) = correlation {
            builder = builder.correlationid(c);
        }
        if let Err(e) = self
            .events
            .publish("chat", "command", &builder.build())
            .await
        {
            tracing::error!(error = %e, "cannot record the chat command");
        }
    }
}
