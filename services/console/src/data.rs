//! What the console reads and sends: requests to the services' endpoints over NATS,
//! each bounded by the request timeout, every list by a page.

use std::time::Duration;

use async_nats::Client;
use toronto_commands::{Actor, Command};
use toronto_protocol::alerts::{SloEntries, SloEntry, SloList};
use toronto_protocol::incidents::{
    Incident, IncidentGet, IncidentList, Incidents, Postmortem, PostmortemRequest,
};
use toronto_protocol::rollout::{Rollout, RolloutCommand, RolloutList, RolloutRef, Rollouts};
use toronto_protocol::status::{Status, StatusRequest};
use toronto_protocol::tasks::{DoraQuery, DoraReport, Plan, PlanGet, PlanList, Plans};
use toronto_protocol::{
    Encoding, Envelope, ErrorCode, Message, RawEnvelope, ServiceKind, Subjects,
};
use toronto_runtime::auth::Signer;
use toronto_runtime::rpc::{CallError, call, call_raw_signed};
use uuid::Uuid;

/// The most rows a listing asks a service for, whatever page is shown: pages past it
/// are not offered (the services' list endpoints take a limit, not a cursor).
pub const MAX_LISTED: usize = 500;

/// Why a page or an action could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is malformed (a bad id, a bad form).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An action without an identity.
    #[error("sign in through the authentication proxy to do this")]
    Unauthorized,
    /// An action the user may not do (role, CSRF token).
    #[error("{0}")]
    Forbidden(String),
    /// A service refused or failed to answer.
    #[error("{what}: {source}")]
    Backend {
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: CallError,
    },
    /// The console has no signing key: it cannot act for anyone.
    #[error("this console is read-only: it has no signing key (TORONTO_IDENTITY_FILE)")]
    ReadOnly,
    /// The user is not a registered, unrevoked principal.
    #[error(
        "{0} is not a registered principal (or is revoked): the console acts only for registered principals"
    )]
    NotRegistered(String),
    /// The console is still connecting to NATS.
    #[error("the console is starting; try again in a moment")]
    Starting,
}

impl ConsoleError {
    /// The HTTP status of the page that reports it.
    pub fn status(&self) -> u16 {
        match self {
            ConsoleError::NotFound(_) => 404,
            ConsoleError::BadRequest(_) => 400,
            ConsoleError::Unauthorized => 401,
            ConsoleError::Forbidden(_) => 403,
            ConsoleError::Starting | ConsoleError::ReadOnly => 503,
            ConsoleError::NotRegistered(_) => 403,
            ConsoleError::Backend { source, .. } => match source.code() {
                ErrorCode::NotFound => 404,
                ErrorCode::Forbidden => 403,
                ErrorCode::Unauthorized => 401,
                ErrorCode::Conflict => 409,
                ErrorCode::BadRequest => 400,
                ErrorCode::Timeout => 504,
                _ => 502,
            },
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows of the page.
    pub rows: Vec<T>,
    /// The page number (0 = newest).
    pub page: usize,
    /// Whether an older page exists.
    pub has_next: bool,
}

impl<T> Page<T> {
    /// Cuts page `page` of `size` rows out of `all` (newest first), which was asked
    /// for with [`Page::limit`].
    pub fn cut(mut all: Vec<T>, page: usize, size: usize) -> Self {
        let start = (page * size).min(all.len());
        let has_next = all.len() > start + size && start + size < MAX_LISTED;
        all.truncate(start + size);
        let rows = all.split_off(start);
        Self {
            rows,
            page,
            has_next,
        }
    }

    /// How many rows to ask for to show page `page` and know whether one follows.
    pub fn limit(page: usize, size: usize) -> usize {
        ((page + 1) * size + 1).min(MAX_LISTED)
    }
}

/// Page `page` of `size` rows, newest first, walked with the service's own cursor:
/// every request asks for `size` rows, so no reply grows with the page number (asking
/// for every row up to the page overflowed the NATS payload limit on deep pages).
async fn walk<T, F, Fut>(page: usize, size: usize, fetch: F) -> Result<Page<T>, ConsoleError>
where
    F: Fn(usize, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), ConsoleError>>,
{
    let empty = |page| Page {
        rows: Vec::new(),
        page,
        has_next: false,
    };
    if page * size >= MAX_LISTED {
        return Ok(empty(page));
    }
    let mut cursor = None;
    for _ in 0..page {
        match fetch(size, cursor).await?.1 {
            Some(next) => cursor = Some(next),
            None => return Ok(empty(page)),
        }
    }
    let (rows, next) = fetch(size, cursor).await?;
    Ok(Page {
        rows,
        page,
        has_next: next.is_some() && (page + 1) * size < MAX_LISTED,
    })
}

/// The console's door to the bus.
#[derive(Debug, Clone)]
pub struct Backend {
    client: Client,
    subjects: Subjects,
    timeout: Duration,
    source: String,
    signer: Option<Signer>,
}

impl Backend {
    /// Over `client`, with the subject catalogue and a timeout per request.
    pub fn new(client: Client, subjects: Subjects, timeout: Duration) -> Self {
        let source = subjects.source(ServiceKind::Console);
        Self {
            client,
            subjects,
            timeout,
            source,
            signer: None,
        }
    }

    /// Signs actions with the console's own key, on behalf of the user.
    #[must_use]
    pub fn with_signer(mut self, signer: Option<Signer>) -> Self {
        self.signer = signer;
        self
    }

    /// Whether the console can send actions (it has a signing key).
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    async fn ask<Req: Message, Resp: Message>(
        &self,
        what: &'static str,
        service: ServiceKind,
        verb: &str,
        data: Req,
    ) -> Result<Resp, ConsoleError> {
        let envelope = Envelope::builder(self.source.clone(), data).build();
        let subject = self.subjects.command(service, verb);
        call::<Req, Resp>(
            &self.client,
            &subject,
            &envelope,
            Encoding::Json,
            self.timeout,
        )
        .await
        .map(|e| e.data)
        .map_err(|source| match source {
            CallError::Remote(ref b) if b.code == ErrorCode::NotFound => {
                ConsoleError::NotFound(what.to_owned())
            }
            source => ConsoleError::Backend { what, source },
        })
    }

    /// Each service's status, or why it did not answer (asked at once, 1 s each).
    pub async fn health(&self) -> Vec<(ServiceKind, Result<Status, String>)> {
        let asks = ServiceKind::ALL.into_iter().map(|kind| async move {
            let envelope = Envelope::builder(self.source.clone(), StatusRequest::default()).build();
            let result = call::<_, Status>(
                &self.client,
                &self.subjects.status(kind),
                &envelope,
                Encoding::Json,
                self.timeout.min(Duration::from_secs(1)),
            )
            .await
            .map(|e| e.data)
            .map_err(|e| e.to_string());
            (kind, result)
        });
        futures::future::join_all(asks).await
    }

    /// Rollouts, newest first.
    pub async fn rollouts(
        &self,
        active: bool,
        page: usize,
        size: usize,
    ) -> Result<Page<Rollout>, ConsoleError> {
        walk(page, size, |limit, cursor| async move {
            let list = RolloutList {
                active,
                limit: Some(limit),
                cursor,
                ..Default::default()
            };
            let r: Rollouts = self
                .ask("rollouts", ServiceKind::Deployer, "rollout.list", list)
                .await?;
            Ok((r.rollouts, r.next_cursor))
        })
        .await
    }

    /// One rollout.
    pub async fn rollout(&self, id: Uuid) -> Result<Rollout, ConsoleError> {
        let r = RolloutRef {
            id: Some(id),
            ..Default::default()
        };
        self.ask("rollout", ServiceKind::Deployer, "rollout.get", r)
            .await
    }

    /// Plans, newest first.
    pub async fn plans(&self, page: usize, size: usize) -> Result<Page<Plan>, ConsoleError> {
        walk(page, size, |limit, cursor| async move {
            let list = PlanList {
                limit: Some(limit),
                cursor,
                ..Default::default()
            };
            let p: Plans = self
                .ask("plans", ServiceKind::Planner, "plan.list", list)
                .await?;
            Ok((p.plans, p.next_cursor))
        })
        .await
    }

    /// One plan.
    pub async fn plan(&self, plan_id: Uuid) -> Result<Plan, ConsoleError> {
        self.ask(
            "plan",
            ServiceKind::Planner,
            "plan.get",
            PlanGet { plan_id },
        )
        .await
    }

    /// Incidents, newest first (`open`: only open ones).
    pub async fn incidents(
        &self,
        open: bool,
        page: usize,
        size: usize,
    ) -> Result<Page<Incident>, ConsoleError> {
        walk(page, size, |limit, cursor| async move {
            let list = IncidentList {
                open,
                limit: Some(limit),
                cursor,
                ..Default::default()
            };
            let i: Incidents = self
                .ask("incidents", ServiceKind::IncidentCommander, "list", list)
                .await?;
            Ok((i.incidents, i.next_cursor))
        })
        .await
    }

    /// One incident.
    pub async fn incident(&self, id: Uuid) -> Result<Incident, ConsoleError> {
        self.ask(
            "incident",
            ServiceKind::IncidentCommander,
            "get",
            IncidentGet { id },
        )
        .await
    }

    /// The postmortem of a closed incident (asked again, the service answers the
    /// document it wrote; it is not asked for incidents that are not closed).
    pub async fn postmortem(&self, id: Uuid) -> Result<Postmortem, ConsoleError> {
        let req = PostmortemRequest {
            id,
            by: self.source.clone(),
            action_items: Vec::new(),
        };
        self.ask(
            "postmortem",
            ServiceKind::IncidentCommander,
            "postmortem",
            req,
        )
        .await
    }

    /// Every SLO with its status and firing alerts.
    pub async fn slos(&self) -> Result<Vec<SloEntry>, ConsoleError> {
        let e: SloEntries = self
            .ask("SLOs", ServiceKind::Monitor, "slo.list", SloList::default())
            .await?;
        Ok(e.slos)
    }

    /// The DORA figures of a service in an environment over `window_days`, with the
    /// last `weeks` week by week.
    pub async fn dora(
        &self,
        service: &str,
        environment: &str,
        window_days: u32,
        weeks: u32,
    ) -> Result<DoraReport, ConsoleError> {
        let q = DoraQuery {
            service: Some(service.to_owned()),
            environment: Some(environment.to_owned()),
            window_days: Some(window_days),
            weeks: Some(weeks),
            ..Default::default()
        };
        self.ask("DORA figures", ServiceKind::Planner, "dora.get", q)
            .await
    }

    /// Sends an action as `actor` through the commands crate's request path (the one
    /// the CLI and the chat bridge use); the reply's data, or the service's refusal.
    pub async fn act(
        &self,
        action: Action,
        actor: &Actor,
    ) -> Result<serde_json::Value, ConsoleError> {
        let request = match action {
            Action::Plan(command) | Action::Incident(command) => command
                .request(actor)
                .ok_or_else(|| ConsoleError::BadRequest("not an action".into()))?,
            Action::Rollout {
                verb,
                id,
                service,
                reason,
            } => toronto_commands::Request {
                service: ServiceKind::Deployer,
                verb,
                message_type: RolloutCommand::message_type(),
                schema: Some(RolloutCommand::schema_path()),
                about: Some(service),
                data: serde_json::to_value(RolloutCommand {
                    id: Some(id),
                    by: Some(actor.id.clone()),
                    reason,
                    ..Default::default()
                })
                .map_err(|e| ConsoleError::BadRequest(e.to_string()))?,
            },
        };
        let signer = self
            .signer
            .as_ref()
            .ok_or(ConsoleError::ReadOnly)?
            .on_behalf_of(&actor.id)
            .map_err(|_| ConsoleError::NotRegistered(actor.id.clone()))?;
        let envelope: RawEnvelope = request.envelope(&actor.source);
        let subject = request.subject(&self.subjects);
        call_raw_signed(
            &self.client,
            Some(&signer),
            &subject,
            &envelope,
            Encoding::Json,
            self.timeout,
        )
        .await
        .map(|r| r.data)
        .map_err(|source| ConsoleError::Backend {
            what: "action",
            source,
        })
    }
}

/// An action a user takes from a page.
#[derive(Debug, Clone)]
pub enum Action {
    /// Approve or reject a plan.
    Plan(Command),
    /// Acknowledge or resolve an incident.
    Incident(Command),
    /// Promote, pause, resume or abort a rollout.
    Rollout {
        /// `rollout.promote`, `rollout.pause`, `rollout.resume` or `rollout.abort`.
        verb: &'static str,
        /// The rollout.
        id: Uuid,
        /// Its service (the envelope's subject).
        service: String,
        /// Why, when given.
        reason: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_newest_first_and_know_whether_more_follow() {
        let all: Vec<u32> = (0..45).collect();
        let p = Page::cut(all.clone(), 0, 20);
        assert_eq!(p.rows, (0..20).collect::<Vec<_>>());
        assert!(p.has_next);
        let p = Page::cut(all.clone(), 2, 20);
        assert_eq!(p.rows, (40..45).collect::<Vec<_>>());
        assert!(!p.has_next);
        assert!(Page::cut(all, 9, 20).rows.is_empty());
        assert_eq!(Page::<()>::limit(0, 20), 21);
        assert_eq!(Page::<()>::limit(100, 20), MAX_LISTED);
    }
}
