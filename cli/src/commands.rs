//! `toronto run` and `toronto watch`: the chat commands from a terminal, and the event
//! stream live.

use std::time::Duration;

use anyhow::bail;
use toronto_commands::{Actor, Command, parse_words, render, render_error};
use toronto_protocol::tasks::PlanEvent;
use toronto_protocol::{Encoding, EventKind, RawEnvelope, Subjects};
use toronto_runtime::rpc::{CallError, call_raw_signed};

pub use crate::out::Output;

/// Takes `--output VALUE` / `--output=VALUE` out of the command's words (so it may
/// come after the command, as in `toronto run plans --output json`).
pub fn take_output(words: &mut Vec<String>) -> anyhow::Result<Option<Output>> {
    let Some(i) = words
        .iter()
        .position(|w| w == "--output" || w.starts_with("--output="))
    else {
        return Ok(None);
    };
    let value = match words[i].strip_prefix("--output=") {
        Some(v) => {
            let v = v.to_owned();
            words.remove(i);
            v
        }
        None => {
            if i + 1 >= words.len() {
                bail!("--output needs table, json or yaml");
            }
            let v = words.remove(i + 1);
            words.remove(i);
            v
        }
    };
    Ok(Some(match value.as_str() {
        "table" => Output::Table,
        "json" => Output::Json,
        "yaml" => Output::Yaml,
        other => bail!("--output `{other}`: use table, json or yaml"),
    }))
}

/// Parses `words` with the chat grammar; a malformed command is an error carrying the
/// usage of the command meant (or the list of commands).
pub fn parse(words: &[String]) -> anyhow::Result<Command> {
    Ok(parse_words(words)?)
}

/// The text of `help` (answered here, without NATS), or `None` for other commands.
pub fn local_answer(command: &Command) -> Option<String> {
    match command {
        Command::Help { command } => Some(Command::help_text(command.as_deref())),
        _ => None,
    }
}

/// Sends `command` as `actor` and returns what to print; an error reply is an error
/// carrying the service's message and reasons.
pub async fn run(
    client: &async_nats::Client,
    subjects: &Subjects,
    command: &Command,
    actor: &Actor,
    output: Output,
    timeout: Duration,
) -> anyhow::Result<String> {
    let signer = toronto_runtime::auth::process_signer();
    let how = How {
        timeout,
        follow: false,
        signer: signer.as_ref(),
        pages: 1,
    };
    run_following(client, subjects, command, actor, output, how).await
}

/// How [`run_following`] sends a command.
#[derive(Debug, Clone, Copy)]
pub struct How<'a> {
    /// How long the reply may take.
    pub timeout: Duration,
    /// Whether to follow a started plan's events until it ends.
    pub follow: bool,
    /// The key to sign with (none: unsigned).
    pub signer: Option<&'a toronto_runtime::auth::Signer>,
    /// For a listing: how many pages to follow (its `next_cursor`), at least 1.
    pub pages: u32,
}

/// The most pages `toronto run --pages` follows.
pub const MAX_PAGES: u32 = 1000;

/// Appends the rows of `more` (each array it shares with `page`) to `page`, and takes
/// its `next_cursor` (none when it has none).
fn merge_page(page: &mut serde_json::Value, more: serde_json::Value) {
    let (Some(page), serde_json::Value::Object(more)) = (page.as_object_mut(), more) else {
        return;
    };
    page.remove("next_cursor");
    for (key, value) in more {
        match (page.get_mut(&key), value) {
            (Some(serde_json::Value::Array(rows)), serde_json::Value::Array(extra)) => {
                rows.extend(extra)
            }
            (_, value) if key == "next_cursor" => {
                page.insert(key, value);
            }
            _ => {}
        }
    }
}

/// The cursor of the next page of a listing's reply, if there may be more.
fn next_cursor(data: &serde_json::Value) -> Option<String> {
    data.get("next_cursor")
        .and_then(|c| c.as_str())
        .map(str::to_owned)
}

/// [`run`], signed by `how.signer`; with `how.follow`, a command that starts a plan (deploy, rollback) prints its
/// reply at once, then every event of its flow (gates, rollout weight and step) until
/// the plan ends, and fails when the plan does.
pub async fn run_following(
    client: &async_nats::Client,
    subjects: &Subjects,
    command: &Command,
    actor: &Actor,
    output: Output,
    how: How<'_>,
) -> anyhow::Result<String> {
    let How {
        timeout,
        follow,
        signer,
        pages,
    } = how;
    let Some(request) = command.request(actor) else {
        return Ok(local_answer(command).unwrap_or_default());
    };
    let subject = request.subject(subjects);
    let envelope = request.envelope(&actor.source);
    let flow = envelope.correlationid.clone().unwrap_or_default();
    // Subscribe before asking, so that no event of the flow is missed.
    let events = if follow && subject.ends_with(".planner.submit") {
        let sub = client.subscribe(subjects.events_all()).await?;
        toronto_runtime::service::confirm_subscriptions(client).await;
        Some(sub)
    } else {
        None
    };
    let mut first =
        call_raw_signed(client, signer, &subject, &envelope, Encoding::Json, timeout).await;
    // A listing goes on page by page while it has a cursor and pages are wanted.
    let mut followed = 1;
    while let Ok(reply) = &mut first
        && followed < pages.clamp(1, MAX_PAGES)
        && let Some(cursor) = next_cursor(&reply.data)
    {
        let mut next = envelope.clone();
        next.id = toronto_protocol::envelope::new_id().to_string();
        if let Some(data) = next.data.as_object_mut() {
            data.insert("cursor".into(), cursor.into());
        }
        match call_raw_signed(client, signer, &subject, &next, Encoding::Json, timeout).await {
            Ok(more) => merge_page(&mut reply.data, more.data),
            Err(e) => bail!("{} failed on page {}: {e}", command.name(), followed + 1),
        }
        followed += 1;
    }
    match first {
        Ok(reply) => {
            let mut text = output.render(&serde_json::to_value(&reply)?, false, || {
                render(command, &reply.data)
            });
            if output == Output::Table && next_cursor(&reply.data).is_some() {
                text.push_str(&format!(
                    "\n(more: `toronto run --pages {} {}` shows the next pages)",
                    followed + 1,
                    command.name()
                ));
            }
            let Some(events) = events else {
                return Ok(text);
            };
            println!("{text}");
            follow_flow(events, &flow, output).await?;
            Ok(String::new())
        }
        Err(CallError::Remote(body)) => bail!(
            "{}",
            output.render(&serde_json::to_value(&body)?, false, || render_error(
                command, &body
            ))
        ),
        Err(e) => bail!("{} failed: {e}", command.name()),
    }
}

/// Prints the events of one flow until its plan ends; an error when it failed.
async fn follow_flow(
    mut events: async_nats::Subscriber,
    correlation: &str,
    output: Output,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let filter = WatchFilter {
        correlation: Some(correlation.to_owned()),
        ..Default::default()
    };
    while let Some(message) = events.next().await {
        let Some((event, envelope)) = matching_event(&message, &filter) else {
            continue;
        };
        println!("{}", watch_line(event, &envelope, output));
        match PlanEvent::from_event_name(event) {
            Some(PlanEvent::Completed) => return Ok(()),
            Some(end @ (PlanEvent::Failed | PlanEvent::Cancelled)) => {
                let reason = envelope.data["reason"]
                    .as_str()
                    .unwrap_or("no reason given");
                bail!("the plan {end}: {reason}");
            }
            Some(PlanEvent::Created | PlanEvent::Stopped) | None => {}
        }
    }
    bail!("the event stream ended before the plan did")
}

/// An event message as its name (`rollout.progressed`) and envelope, decoded in the
/// encoding its `Content-Type` names, if it passes `filter`.
fn matching_event<'m>(
    message: &'m async_nats::Message,
    filter: &WatchFilter,
) -> Option<(&'m str, RawEnvelope)> {
    let encoding = Encoding::from_content_type(
        message
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str()),
    )
    .unwrap_or(Encoding::Json);
    let envelope = toronto_protocol::decode_raw(&message.payload, encoding).ok()?;
    if !filter.matches(&envelope) {
        return None;
    }
    let event = message
        .subject
        .as_str()
        .split_once(".events.")
        .map(|(_, e)| e)
        .unwrap_or_default();
    Some((event, envelope))
}

/// Which events `toronto watch` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only events about this service.
    pub service: Option<String>,
    /// Only events about this environment.
    pub environment: Option<String>,
    /// Only events of this flow.
    pub correlation: Option<String>,
}

fn field<'a>(data: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    data.get(name)
        .or_else(|| data.get("task").and_then(|t| t.get(name)))
        .or_else(|| data.get("labels").and_then(|t| t.get(name)))
        .or_else(|| data.get("incident").and_then(|t| t.get(name)))
        .and_then(|v| v.as_str())
}

impl WatchFilter {
    /// Whether `event` passes: its service (envelope subject or `data.service`,
    /// `data.task.service`, `data.labels.service`), environment and correlation id.
    pub fn matches(&self, event: &RawEnvelope) -> bool {
        let service_ok = self.service.as_deref().is_none_or(|s| {
            event.subject.as_deref() == Some(s) || field(&event.data, "service") == Some(s)
        });
        let environment_ok = self
            .environment
            .as_deref()
            .is_none_or(|e| field(&event.data, "environment") == Some(e));
        let correlation_ok = self
            .correlation
            .as_deref()
            .is_none_or(|c| event.correlationid.as_deref() == Some(c));
        service_ok && environment_ok && correlation_ok
    }
}

/// One event as `toronto watch` prints it: time, event name and what it says (as the
/// chat bridge would post it), or the envelope as one line of JSON, or one YAML document.
pub fn watch_line(event: &str, envelope: &RawEnvelope, output: Output) -> String {
    match output {
        Output::Json | Output::Yaml => output.render(
            &serde_json::to_value(envelope).unwrap_or_default(),
            true,
            String::new,
        ),
        Output::Table => {
            let time = envelope
                .time
                .map(|t| t.format("%H:%M:%S%.3f").to_string())
                .unwrap_or_default();
            let what = toronto_chat_bridge::notify::describe(event, envelope)
                .map(|n| toronto_chat_bridge::markup::plain(&n.parts))
                .unwrap_or_default();
            format!("{time}  {event:<24} {what}")
        }
    }
}

/// Prints matching events from `<prefix>.devops.v1.events.>` until `stop`.
pub async fn watch(
    client: &async_nats::Client,
    subjects: &Subjects,
    filter: &WatchFilter,
    output: Output,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut events = client.subscribe(subjects.events_all()).await?;
    toronto_runtime::service::confirm_subscriptions(client).await;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = events.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        let Some((event, envelope)) = matching_event(&message, filter) else {
            continue;
        };
        println!("{}", watch_line(event, &envelope, output));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_join_their_rows_and_keep_the_last_cursor() {
        let mut page = serde_json::json!({"plans": [1, 2], "next_cursor": "a", "total": 9});
        super::merge_page(
            &mut page,
            serde_json::json!({"plans": [3], "next_cursor": "b"}),
        );
        assert_eq!(
            page,
            serde_json::json!({"plans": [1, 2, 3], "next_cursor": "b", "total": 9})
        );
        super::merge_page(&mut page, serde_json::json!({"plans": [4]}));
        assert_eq!(super::next_cursor(&page), None);
        assert_eq!(page["plans"], serde_json::json!([1, 2, 3, 4]));
    }

    use toronto_protocol::tasks::{DeployTask, PlanTask};

    /// What `toronto run deploy SERVICE VERSION to ENV` says: `Ok` or the grammar's reason.
    fn grammar(service: &str, version: &str, env: &str) -> Result<(), String> {
        let words = ["deploy", service, version, "to", env];
        match toronto_commands::parse_words(&words) {
            Ok(_) => Ok(()),
            Err(toronto_commands::ParseError::Usage { reason, .. }) => Err(reason),
            Err(e) => panic!("{words:?} is not even a deploy: {e}"),
        }
    }

    /// What the planner says of the same task: every reason it refuses it for.
    fn planner(service: &str, version: &str, env: &str) -> Vec<String> {
        let task: DeployTask = serde_json::from_value(serde_json::json!({
            "service": service,
            "version": version,
            "environment": env,
        }))
        .unwrap();
        toronto_planner::intake::validate(&PlanTask::Deploy(Box::new(task)))
    }

    /// The chat/CLI grammar refuses exactly the names and versions the planner refuses,
    /// with the planner's reason.
    #[test]
    fn the_grammar_and_the_planner_agree() {
        let long_name = "a".repeat(64);
        let longest_name = "a".repeat(63);
        let v129 = "1".repeat(129);
        let v256 = "1".repeat(256);
        let v128 = "1".repeat(128);
        let cases: &[(&str, &str, &str, bool)] = &[
            ("shop-api", "2.4.1", "production", true),
            ("1shop", "2.4.1", "production", false),
            ("Shop", "2.4.1", "production", false),
            ("shop-", "2.4.1", "production", false),
            ("-shop", "2.4.1", "production", false),
            ("shop_api", "2.4.1", "production", false),
            (&long_name, "2.4.1", "production", false),
            (&longest_name, "2.4.1", "production", true),
            ("shop", "2.4.1", "1prod", false),
            ("shop", "2.4.1", "Prod", false),
            ("shop", &v128, "prod", true),
            ("shop", &v129, "prod", false),
            ("shop", &v256, "prod", false),
            ("shop", "v1.2.3-rc.1+build.5", "prod", true),
            ("shop", "sha-1/2", "prod", true),
        ];
        for &(service, version, env, ok) in cases {
            let said = grammar(service, version, env);
            let reasons = planner(service, version, env);
            assert_eq!(
                said.is_ok(),
                ok,
                "grammar on {service} {version} {env}: {said:?}"
            );
            assert_eq!(
                reasons.is_empty(),
                ok,
                "planner on {service} {version} {env}: {reasons:?}"
            );
            if let Err(reason) = said {
                assert!(
                    reasons.contains(&reason),
                    "the grammar says {reason:?}, the planner {reasons:?}"
                );
            }
        }
    }
}
