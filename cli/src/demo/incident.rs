//! `toronto demo incident`: the incident story, played against a running
//! `toronto up --demo` through the agent's public interfaces only (the chat grammar's
//! requests as the demo's operators send them, the simulated cluster's `sim.fault`,
//! the incident commander's and the monitor's requests, and the event stream).
//!
//! A version of `shop` ships to staging, then to production with a rolling deploy that
//! the second operator approves; once it runs in production it starts failing part of
//! its requests there (a fault of the simulated cluster that no rollout analysis saw,
//! as a latent bug would). Then it follows the
//! events and prints each as it happens, and each step of the story as it is reached:
//! the SLO burns, the alert fires, the incident opens with the change linked, the
//! person on call is paged (and acknowledges), the playbook rolls the change back, the
//! monitor confirms recovery, the incident resolves, the postmortem is written. A step
//! that does not happen within its limit ends the story with the reason.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use toronto_protocol::alerts::{Alert, AlertStatus, SloEntries, SloList};
use toronto_protocol::incidents::{
    Incident, IncidentEvent, IncidentGet, IncidentList, Incidents, Page, Postmortem,
    PostmortemRequest,
};
use toronto_protocol::rollout::{RolloutList, Rollouts, SimFault, SimService};
use toronto_protocol::tasks::{Plan, SloGet, SloStatuses};
use toronto_protocol::{ServiceKind, Subjects};
use uuid::Uuid;

use super::{ENVIRONMENTS, OPERATORS, SERVICE, compression, scale_of};

use super::story::{Story, data, fresh_version, rollout_of};

/// Options of `toronto demo incident`.
#[derive(Debug, Clone, clap::Args)]
pub struct IncidentArgs {
    /// Where the postmortem is written, as `<DIR>/postmortem-<incident id>.md`.
    #[arg(long, default_value = ".toronto/postmortems")]
    pub postmortem_dir: PathBuf,
    /// Seconds each step may take before the story ends with the reason.
    #[arg(long, default_value_t = 60)]
    pub step_timeout_seconds: u64,
    /// Where the demo people's keys are (`toronto up --demo` makes them).
    #[arg(long, default_value = ".toronto/identities")]
    pub identities_dir: PathBuf,
    /// Share of the bad version's requests that fail in production (0 to 1).
    #[arg(long, default_value_t = 0.5)]
    pub error_rate: f64,
}

/// What the story ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// The incident.
    pub incident: Uuid,
    /// The bad change's rollout.
    pub change: Uuid,
    /// The rollback's rollout.
    pub rollback: Uuid,
    /// The postmortem's file.
    pub postmortem: PathBuf,
    /// How long the story took.
    pub elapsed: Duration,
}

const PROD: &str = ENVIRONMENTS[1];
const STAGING: &str = ENVIRONMENTS[0];

/// Plays the incident story; the postmortem's path and the measures when every step
/// happened, the step that did not and why otherwise.
pub async fn play(
    client: &async_nats::Client,
    subjects: &Subjects,
    request_timeout: Duration,
    args: &IncidentArgs,
) -> anyhow::Result<Ending> {
    if !(args.error_rate > 0.0 && args.error_rate <= 1.0) {
        bail!("--error-rate must be more than 0 and at most 1");
    }
    let events = client.subscribe(subjects.events_all()).await?;
    toronto_runtime::service::confirm_subscriptions(client).await;
    let mut story = Story {
        client,
        subjects: subjects.clone(),
        timeout: request_timeout,
        limit: Duration::from_secs(args.step_timeout_seconds),
        events,
        seen: Vec::new(),
        started: Instant::now(),
        step: 0,
        signers: OPERATORS
            .iter()
            .filter_map(|who| {
                let path = args.identities_dir.join(format!("{who}.nk"));
                let signer = toronto_runtime::auth::Signer::from_file(&path).ok()?;
                Some(((*who).to_owned(), signer))
            })
            .collect(),
    };
    let [first, second] = OPERATORS;

    // Before the story: the demo stack runs, and nothing about shop in production is open.
    let slos: SloEntries = story
        .ask(
            ServiceKind::Monitor,
            "slo.list",
            first,
            SloList {
                service: Some(SERVICE.into()),
            },
        )
        .await
        .context("is `toronto up --demo` running? the monitor did not answer")?;
    let slo = slos
        .slos
        .iter()
        .map(|s| &s.definition)
        .find(|d| d.environment == PROD && scale_of(&d.slo).is_some())
        .context(
            "the monitor has no demo SLO for shop in production: start the stack with `toronto up --demo`",
        )?
        .slo
        .clone();
    let scale = scale_of(&slo).unwrap_or(1.0);
    let open: Incidents = story
        .ask(
            ServiceKind::IncidentCommander,
            "list",
            first,
            IncidentList {
                service: Some(SERVICE.into()),
                open: true,
                ..Default::default()
            },
        )
        .await?;
    if let Some(i) = open.incidents.iter().find(|i| i.environment == PROD) {
        bail!(
            "incident {} of {SERVICE} in {PROD} is still open: resolve it first (`toronto run resolve {}`)",
            i.id,
            i.id
        );
    }
    let rollouts: Rollouts = story
        .ask(
            ServiceKind::Deployer,
            "rollout.list",
            first,
            RolloutList {
                service: Some(SERVICE.into()),
                limit: Some(200),
                ..Default::default()
            },
        )
        .await?;
    let version = fresh_version(&rollouts.rollouts);
    story.say(format!(
        "DEMO incident story for {SERVICE} on the simulated cluster (a simulation); {}",
        compression(scale)
    ));

    let plan = story.deploy(first, &version, STAGING).await?;
    story
        .plan_completed(plan, &format!("{SERVICE} {version} ships to {STAGING}"))
        .await?;
    story.say(format!(
        "  {SERVICE} {version} shipped to {STAGING}, where it is healthy"
    ));
    let plan = story.deploy(first, &version, PROD).await?;
    story
        .wait(
            "the production deploy waits for an approval",
            |event, env| {
                (event == "gate.waiting" && data::<Plan>(env).is_some_and(|p| p.id == plan))
                    .then_some(())
            },
            |event, env| {
                let p = data::<Plan>(env).filter(|p| p.id == plan)?;
                (event == "plan.failed").then(|| p.reason.unwrap_or_default())
            },
        )
        .await?;
    story.run(second, &format!("approve {plan}")).await?;
    let change = story
        .wait(
            "the bad change reaches production",
            |event, env| {
                rollout_of(event, env, "succeeded")
                    .filter(|r| r.version == version && !r.is_rollback)
            },
            |event, env| {
                let p = data::<Plan>(env).filter(|p| p.id == plan)?;
                matches!(event, "plan.failed" | "plan.cancelled")
                    .then(|| p.reason.unwrap_or_default())
            },
        )
        .await?;
    story.reached(format!(
        "the change is in production: rollout {} of {SERVICE} {version} (rolling, its batches \
         healthy), asked by {first}, approved by {second}",
        change.id
    ));

    // The mistake surfaces: the version starts failing in production once it runs
    // there (a latent fault its rollout could not see while its batches were analysed).
    let _: SimService = story
        .ask(
            ServiceKind::Deployer,
            "sim.fault",
            first,
            SimFault {
                service: SERVICE.into(),
                environment: PROD.into(),
                version: version.clone(),
                error_rate: args.error_rate,
                ..Default::default()
            },
        )
        .await?;
    story.say(format!(
        "▶ {SERVICE} {version} now fails {:.0}% of its requests in {PROD}, and only there: a latent \
         fault that showed after its rollout (sim.fault on the simulated cluster)",
        args.error_rate * 100.0
    ));

    // The SLO burns: the monitor's own status of the production SLO.
    let deadline = Instant::now() + story.limit;
    loop {
        let statuses: SloStatuses = story
            .ask(
                ServiceKind::Monitor,
                "slo.get",
                first,
                SloGet {
                    service: SERVICE.into(),
                },
            )
            .await?;
        let burning = statuses
            .statuses
            .iter()
            .find(|s| s.slo == slo && s.burn_rates.get("5m").is_some_and(|b| *b > 1.0));
        if let Some(s) = burning {
            let rate = |w: &str| {
                s.burn_rates
                    .get(w)
                    .map(|b| format!("{b:.1}x"))
                    .unwrap_or_else(|| "-".into())
            };
            story.reached(format!(
                "the SLO burns: {slo} spends its error budget {} as fast as it may over 5m, {} over 1h; \
                 {:.1}% of the budget left (SLO time compressed {scale}x)",
                rate("5m"),
                rate("1h"),
                s.budget_remaining * 100.0
            ));
            break;
        }
        if Instant::now() >= deadline {
            return Err(story.late("the SLO burns"));
        }
        story
            .pump(Instant::now() + Duration::from_millis(250))
            .await;
    }

    let alert = story
        .wait(
            "the alert fires",
            |event, env| {
                (event == "alert.firing")
                    .then(|| data::<Alert>(env))
                    .flatten()
                    .filter(|a| {
                        a.status == AlertStatus::Firing
                            && a.labels.get("service").map(String::as_str) == Some(SERVICE)
                            && a.labels.get("environment").map(String::as_str) == Some(PROD)
                    })
            },
            |_, _| None,
        )
        .await?;
    story.reached(format!(
        "the alert fires: {} ({})",
        alert
            .labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("?"),
        alert
            .annotations
            .get("description")
            .map(String::as_str)
            .unwrap_or("")
    ));

    let opened = story
        .wait(
            "the incident opens",
            |event, env| {
                (event == "incident.opened")
                    .then(|| data::<IncidentEvent>(env))
                    .flatten()
                    .filter(|i| i.service == SERVICE && i.environment == PROD)
            },
            |_, _| None,
        )
        .await?;
    let id = opened.id;
    let deadline = Instant::now() + story.limit;
    let incident = loop {
        let incident: Incident = story
            .ask(
                ServiceKind::IncidentCommander,
                "get",
                first,
                IncidentGet { id },
            )
            .await?;
        if !incident.changes.is_empty() {
            break incident;
        }
        if Instant::now() >= deadline {
            return Err(story.late("the incident links the change"));
        }
        story
            .pump(Instant::now() + Duration::from_millis(200))
            .await;
    };
    let Some(linked) = incident.changes.iter().find(|c| c.rollout_id == change.id) else {
        bail!(
            "the incident linked another change than rollout {}: {:?}",
            change.id,
            incident.changes
        );
    };
    story.reached(format!(
        "incident {id} opens, {}: {}; the change is linked: rollout {} of {SERVICE} {} (from {}), {} s before the first alert",
        incident.severity.label(),
        incident.title,
        linked.rollout_id,
        linked.version,
        linked.previous_version.as_deref().unwrap_or("nothing"),
        linked.seconds_before_alert
    ));

    let page = story
        .wait(
            "the person on call is paged",
            |event, env| {
                (event == "page.sent")
                    .then(|| data::<Page>(env))
                    .flatten()
                    .filter(|p| p.incident_id == id)
            },
            |_, _| None,
        )
        .await?;
    story.reached(format!(
        "{} is paged ({}, escalation level {})",
        page.target,
        page.reason,
        page.level
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into())
    ));
    let on_call = page
        .target
        .strip_prefix("user:")
        .unwrap_or(first)
        .to_owned();
    if let Err(e) = story.run(&on_call, &format!("ack {id}")).await {
        story.say(format!("  {on_call} could not acknowledge: {e:#}"));
    }

    let rollback = story
        .wait(
            "the playbook rolls the change back",
            |event, env| {
                rollout_of(event, env, "rolled_back")
                    .or_else(|| rollout_of(event, env, "succeeded"))
                    .filter(|r| r.is_rollback)
            },
            |event, env| {
                rollout_of(event, env, "failed")
                    .filter(|r| r.is_rollback)
                    .map(|r| format!("the rollback failed: {}", r.reason.unwrap_or_default()))
            },
        )
        .await?;
    story.reached(format!(
        "the playbook rolled the change back: rollout {} puts {SERVICE} {} back in {PROD}",
        rollback.id, rollback.version
    ));

    let resolved = story
        .wait(
            "the incident resolves",
            |event, env| {
                (event == "incident.resolved")
                    .then(|| data::<IncidentEvent>(env))
                    .flatten()
                    .filter(|i| i.id == id)
            },
            |event, env| {
                (event == "incident.escalated")
                    .then(|| data::<IncidentEvent>(env))
                    .flatten()
                    .filter(|i| i.id == id)
                    .map(|i| format!("the incident escalated instead: {}", i.change))
            },
        )
        .await?;
    let Some(confirmed) = resolved
        .change
        .split_once("the monitor confirmed recovery")
        .map(|(_, rest)| rest.trim_start_matches(':').trim().to_owned())
    else {
        bail!(
            "incident {id} resolved without the monitor confirming recovery: {}",
            resolved.change
        );
    };
    story.reached(format!(
        "the monitor confirms recovery: {confirmed} (SLO time compressed {scale}x)"
    ));
    story.reached(format!(
        "incident {id} is resolved{}",
        resolved
            .by
            .as_deref()
            .map(|b| format!(" by the {b}"))
            .unwrap_or_default()
    ));

    let postmortem: Postmortem = story
        .ask(
            ServiceKind::IncidentCommander,
            "postmortem",
            &on_call,
            PostmortemRequest {
                id,
                by: on_call.clone(),
                action_items: vec![
                    format!("ship {SERVICE} to {PROD} through a canary, also when it is urgent"),
                    format!(
                        "find out why {SERVICE} {version} failed in {PROD} but not in {STAGING}"
                    ),
                ],
            },
        )
        .await?;
    story
        .wait(
            "the incident closes with its postmortem",
            |event, env| {
                (event == "incident.closed")
                    .then(|| data::<IncidentEvent>(env))
                    .flatten()
                    .filter(|i| i.id == id)
                    .map(|_| ())
            },
            |_, _| None,
        )
        .await?;
    std::fs::create_dir_all(&args.postmortem_dir)
        .with_context(|| format!("cannot create {}", args.postmortem_dir.display()))?;
    let path = args.postmortem_dir.join(format!("postmortem-{id}.md"));
    std::fs::write(&path, &postmortem.markdown)
        .with_context(|| format!("cannot write {}", path.display()))?;
    story.reached(format!(
        "the postmortem is written by {on_call}: {}",
        path.display()
    ));
    let elapsed = story.started.elapsed();
    println!();
    println!("{}", postmortem.markdown.trim_end());
    println!();
    story.say(format!(
        "the story took {:.1} s of real time (SLO time compressed {scale}x); postmortem: {}",
        elapsed.as_secs_f64(),
        path.display()
    ));
    Ok(Ending {
        incident: id,
        change: change.id,
        rollback: rollback.id,
        postmortem: path,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_version_is_one_not_rolled_out_before() {
        assert_eq!(fresh_version(&[]), "1.3.0");
    }
}
