//! The incident story's narrator: it follows the event stream, says each step as it is
//! reached, and ends the story with the reason when a step does not happen in time.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::time::Instant;
use toronto_commands::{Actor, Role};
use toronto_protocol::rollout::Rollout;
use toronto_protocol::tasks::Plan;
use toronto_protocol::{Encoding, Envelope, Message, RawEnvelope, ServiceKind, Subjects};
use toronto_runtime::rpc::call_signed;
use uuid::Uuid;

use super::{ENVIRONMENTS, SERVICE};
use crate::commands::{Output, WatchFilter, watch_line};

const PROD: &str = ENVIRONMENTS[1];

/// The story being told: the bus, the events seen so far, the clock and the step.
pub(super) struct Story<'a> {
    pub(super) client: &'a async_nats::Client,
    pub(super) subjects: Subjects,
    pub(super) timeout: Duration,
    pub(super) limit: Duration,
    pub(super) events: async_nats::Subscriber,
    pub(super) seen: Vec<(String, RawEnvelope)>,
    pub(super) started: Instant,
    pub(super) step: usize,
    /// Each demo person's key (`toronto up --demo` makes them).
    pub(super) signers: std::collections::HashMap<String, toronto_runtime::auth::Signer>,
}

/// The event name (`rollout.aborted`) and envelope of a message of the events stream.
fn decode(message: &async_nats::Message) -> Option<(String, RawEnvelope)> {
    let encoding = Encoding::from_content_type(
        message
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str()),
    )
    .unwrap_or(Encoding::Json);
    let envelope = toronto_protocol::decode_raw(&message.payload, encoding).ok()?;
    let event = message
        .subject
        .as_str()
        .split_once(".events.")?
        .1
        .to_owned();
    Some((event, envelope))
}

/// The data of an event as `T`, if it is one.
pub(super) fn data<T: Message>(envelope: &RawEnvelope) -> Option<T> {
    serde_json::from_value(envelope.data.clone()).ok()
}

impl Story<'_> {
    pub(super) fn say(&self, text: impl std::fmt::Display) {
        println!("[{:>5.1}s] {text}", self.started.elapsed().as_secs_f64());
    }

    /// A step of the story reached.
    pub(super) fn reached(&mut self, text: impl std::fmt::Display) {
        self.step += 1;
        self.say(format!("✔ {}. {text}", self.step));
    }

    /// The next step did not happen in time.
    pub(super) fn late(&self, what: &str) -> anyhow::Error {
        let last: Vec<&str> = self
            .seen
            .iter()
            .rev()
            .take(8)
            .map(|(e, _)| e.as_str())
            .collect();
        anyhow::anyhow!(
            "step {} ({what}) did not happen within {} s; the last events were: {}",
            self.step + 1,
            self.limit.as_secs(),
            if last.is_empty() {
                "none".to_owned()
            } else {
                last.join(", ")
            }
        )
    }

    /// Receives events until `until`, printing those about the demo service (and pages),
    /// and keeps them; false when `until` passed.
    pub(super) async fn pump(&mut self, until: Instant) -> bool {
        loop {
            let Ok(next) = tokio::time::timeout_at(until, self.events.next()).await else {
                return false;
            };
            let Some(message) = next else {
                return false;
            };
            let Some((event, envelope)) = decode(&message) else {
                continue;
            };
            let about_shop = WatchFilter {
                service: Some(SERVICE.into()),
                ..Default::default()
            }
            .matches(&envelope);
            if about_shop || event.starts_with("page.") {
                println!("          {}", watch_line(&event, &envelope, Output::Table));
            }
            self.seen.push((event, envelope));
            return true;
        }
    }

    /// The first event (seen already or to come within the step's limit) that `pick`
    /// takes; an event `fail` recognises ends the story with its reason.
    pub(super) async fn wait<T>(
        &mut self,
        what: &str,
        pick: impl Fn(&str, &RawEnvelope) -> Option<T>,
        fail: impl Fn(&str, &RawEnvelope) -> Option<String>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + self.limit;
        let mut from = 0;
        loop {
            for (event, envelope) in &self.seen[from..] {
                if let Some(reason) = fail(event, envelope) {
                    bail!("step {} ({what}) failed: {reason}", self.step + 1);
                }
                if let Some(found) = pick(event, envelope) {
                    return Ok(found);
                }
            }
            from = self.seen.len();
            if !self.pump(deadline).await {
                return Err(self.late(what));
            }
        }
    }

    pub(super) async fn ask<Req: Message, Resp: Message>(
        &self,
        service: ServiceKind,
        verb: &str,
        who: &str,
        data: Req,
    ) -> anyhow::Result<Resp> {
        let subject = self.subjects.command(service, verb);
        let envelope = Envelope::builder(format!("toronto://cli/{who}"), data).build();
        let reply: Envelope<Resp> = call_signed(
            self.client,
            self.signers.get(who),
            &subject,
            &envelope,
            Encoding::Json,
            self.timeout,
        )
        .await
        .with_context(|| subject.clone())?;
        Ok(reply.data)
    }

    /// `toronto run WORDS` as `who` (an operator), through the CLI's own request path;
    /// the reply's data.
    pub(super) async fn run(&self, who: &str, words: &str) -> anyhow::Result<serde_json::Value> {
        self.say(format!("▶ {who}: toronto run {words}"));
        let words: Vec<String> = words.split_whitespace().map(str::to_owned).collect();
        let command = crate::commands::parse(&words)?;
        let actor = Actor {
            id: who.to_owned(),
            role: Role::Operator,
            source: format!("toronto://cli/{who}"),
        };
        let text = crate::commands::run_following(
            self.client,
            &self.subjects,
            &command,
            &actor,
            Output::Json,
            crate::commands::How {
                timeout: self.timeout,
                follow: false,
                signer: self.signers.get(who),
                pages: 1,
            },
        )
        .await
        .with_context(|| format!("{who}: toronto run {}", words.join(" ")))?;
        let reply: RawEnvelope = serde_json::from_str(&text)?;
        Ok(reply.data)
    }

    /// Submits a deploy as `who` and returns its plan's id.
    pub(super) async fn deploy(&self, who: &str, version: &str, env: &str) -> anyhow::Result<Uuid> {
        let reply = self
            .run(
                who,
                &format!("deploy {SERVICE} {version} to {env} --strategy rolling"),
            )
            .await?;
        reply["plan_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("the planner's reply has no plan_id")
    }

    pub(super) async fn plan_completed(&mut self, plan: Uuid, what: &str) -> anyhow::Result<()> {
        self.wait(
            what,
            |event, env| {
                (event == "plan.completed" && data::<Plan>(env).is_some_and(|p| p.id == plan))
                    .then_some(())
            },
            |event, env| {
                let p = data::<Plan>(env).filter(|p| p.id == plan)?;
                matches!(event, "plan.failed" | "plan.cancelled").then(|| {
                    format!(
                        "the plan {}: {}",
                        event.trim_start_matches("plan."),
                        p.reason.unwrap_or_default()
                    )
                })
            },
        )
        .await
    }
}

/// A version of the demo service not rolled out before: `1.3.0`, else the next patch.
pub(super) fn fresh_version(rollouts: &[Rollout]) -> String {
    let used: BTreeSet<&str> = rollouts.iter().map(|r| r.version.as_str()).collect();
    (0..)
        .map(|n| format!("1.3.{n}"))
        .find(|v| !used.contains(v.as_str()))
        .expect("a free version")
}

/// The rollout of the demo service in production in an event `rollout.<what>`.
pub(super) fn rollout_of(event: &str, env: &RawEnvelope, what: &str) -> Option<Rollout> {
    (event == format!("rollout.{what}"))
        .then(|| data::<Rollout>(env))
        .flatten()
        .filter(|r| r.service == SERVICE && r.environment == PROD)
}
