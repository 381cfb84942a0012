//! `toronto audit`: the authorization decisions (`audit.decision` events) of a window,
//! filtered, newest last, one page at a time.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use toronto_protocol::audit::{AuditDecision, AuditOutcome};
use toronto_protocol::{Encoding, Envelope, Subjects, decode};

use crate::out::Output;

/// The largest page `toronto audit` prints.
pub const MAX_PAGE: usize = 500;

/// Options of `toronto audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Only decisions about this principal (the one acted for, or the signer).
    #[arg(long)]
    pub principal: Option<String>,
    /// Only this action (the endpoint, e.g. `plan-approve`, or a rule such as
    /// `plan-decide:two-person`); a prefix ending in `*` matches many.
    #[arg(long)]
    pub action: Option<String>,
    /// Only this outcome: allowed, refused or would_refuse.
    #[arg(long, value_parser = parse_outcome)]
    pub outcome: Option<AuditOutcome>,
    /// Only decisions of this service, e.g. `toronto-planner`.
    #[arg(long)]
    pub service: Option<String>,
    /// How far back to look, e.g. 30m, 2h, 1d.
    #[arg(long, default_value = "1d", value_parser = parse_since)]
    pub since: u64,
    /// Only decisions stored after this stream sequence (the `next` a page printed).
    #[arg(long)]
    pub after: Option<u64>,
    /// At most this many (1 to 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=500))]
    pub limit: u64,
}

fn parse_outcome(v: &str) -> Result<AuditOutcome, String> {
    AuditOutcome::parse(v).ok_or_else(|| format!("`{v}` is not allowed, refused or would_refuse"))
}

fn parse_since(v: &str) -> Result<u64, String> {
    toronto_commands::parse_duration(v)
}

impl AuditArgs {
    /// Whether `d` passes the filters.
    pub fn matches(&self, d: &AuditDecision) -> bool {
        let about = |p: &Option<String>| p.as_deref() == self.principal.as_deref();
        self.principal
            .as_ref()
            .is_none_or(|_| about(&d.principal) || about(&d.signer))
            && self
                .action
                .as_deref()
                .is_none_or(|a| match a.strip_suffix('*') {
                    Some(prefix) => d.action.starts_with(prefix),
                    None => d.action == a,
                })
            && self.outcome.is_none_or(|o| o == d.outcome)
            && self.service.as_deref().is_none_or(|s| s == d.service)
    }
}

/// One page of decisions, and the sequence to continue after when there may be more.
#[derive(Debug)]
pub struct Page {
    /// The decisions, oldest first.
    pub decisions: Vec<AuditDecision>,
    /// Pass as `--after` for the next page.
    pub next: Option<u64>,
}

/// Reads one page from the events stream.
pub async fn page(
    client: &async_nats::Client,
    subjects: &Subjects,
    args: &AuditArgs,
) -> anyhow::Result<Page> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(subjects.events_stream())
        .await
        .context("the events stream (has `toronto bootstrap` run?)")?;
    let deliver_policy = match args.after {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => DeliverPolicy::ByStartTime {
            start_time: Utc::now() - chrono::Duration::seconds(args.since as i64),
        },
    };
    let mut consumer = stream
        .create_consumer(pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            filter_subject: subjects.event("audit", "decision"),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("reading the events stream")?;
    let pending = consumer.info().await?.num_pending as usize;
    let limit = args.limit as usize;
    let mut decisions = Vec::new();
    let mut next = None;
    if pending == 0 {
        return Ok(Page { decisions, next });
    }
    let mut messages = consumer.messages().await?.take(pending);
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("reading the events stream: {e}"))?;
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let Ok(event) = decode::<AuditDecision>(&message.payload, Encoding::Json) else {
            continue;
        };
        let Envelope { data, .. } = event;
        if !args.matches(&data) {
            continue;
        }
        if decisions.len() == limit {
            // One more matches: there is a next page, after the last one printed.
            break;
        }
        decisions.push(data);
        next = Some(seq);
    }
    if decisions.len() < limit {
        next = None;
    }
    Ok(Page { decisions, next })
}

fn line(d: &AuditDecision) -> String {
    let at: DateTime<Utc> = d.at;
    let who = match (&d.principal, &d.signer) {
        (Some(p), Some(s)) => format!("{p} (via {s})"),
        (Some(p), None) => p.clone(),
        (None, _) => d
            .key
            .as_deref()
            .map(|k| format!("key {k}"))
            .unwrap_or_else(|| "unsigned".into()),
    };
    let why = d
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    format!(
        "{} {:<12} {:<28} {:<24} {}{why}",
        at.format("%Y-%m-%d %H:%M:%S"),
        d.outcome.as_str(),
        format!("{}/{}", d.service.trim_start_matches("toronto-"), d.action),
        who,
        d.target.as_deref().unwrap_or("")
    )
}

/// Prints one page.
pub async fn run(
    client: &async_nats::Client,
    subjects: &Subjects,
    args: &AuditArgs,
    output: Output,
) -> anyhow::Result<()> {
    let page = page(client, subjects, args).await?;
    let value = serde_json::json!({ "decisions": page.decisions, "next": page.next });
    let text = output.render(&value, false, || {
        let mut lines: Vec<String> = page.decisions.iter().map(line).collect();
        if lines.is_empty() {
            lines.push("no decisions match".into());
        }
        if let Some(next) = page.next {
            lines.push(format!("more: toronto audit --after {next} (same filters)"));
        }
        lines.join("\n")
    });
    println!("{text}");
    Ok(())
}
