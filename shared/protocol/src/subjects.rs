//! The subject catalogue, as typed functions over a configurable prefix
//! (default `toronto`).

use std::fmt;
use std::str::FromStr;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "toronto";

/// The services of the DevOps agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    /// Task intake and plans.
    Planner,
    /// Rollouts on targets.
    Deployer,
    /// Metrics, SLOs, canary analysis.
    Monitor,
    /// Alerts to incidents to postmortems.
    IncidentCommander,
    /// Chat commands and notifications.
    ChatBridge,
    /// The web console (pages and actions for humans). Not in [`ServiceKind::ALL`]:
    /// it serves no commands of its own, and `toronto up` starts it beside the five.
    Console,
}

impl ServiceKind {
    /// Every backend service, in start order (the console is started after them).
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Planner,
        ServiceKind::Deployer,
        ServiceKind::Monitor,
        ServiceKind::IncidentCommander,
        ServiceKind::ChatBridge,
    ];

    /// The NATS service name (ADR-32), e.g. `toronto-planner`.
    pub fn service_name(self) -> &'static str {
        match self {
            ServiceKind::Planner => "toronto-planner",
            ServiceKind::Deployer => "toronto-deployer",
            ServiceKind::Monitor => "toronto-monitor",
            ServiceKind::IncidentCommander => "toronto-incident-commander",
            ServiceKind::ChatBridge => "toronto-chat-bridge",
            ServiceKind::Console => "toronto-console",
        }
    }

    /// The subject token, e.g. `incident` in `toronto.devops.v1.incident.status`.
    pub fn token(self) -> &'static str {
        match self {
            ServiceKind::Planner => "planner",
            ServiceKind::Deployer => "deployer",
            ServiceKind::Monitor => "monitor",
            ServiceKind::IncidentCommander => "incident",
            ServiceKind::ChatBridge => "chat",
            ServiceKind::Console => "console",
        }
    }

    /// One line about what it does.
    pub fn description(self) -> &'static str {
        match self {
            ServiceKind::Planner => "Turns tasks from peers and humans into plans with gates",
            ServiceKind::Deployer => "Runs rolling, blue-green and canary rollouts",
            ServiceKind::Monitor => "Watches SLOs and answers canary analyses",
            ServiceKind::IncidentCommander => "Turns alerts into incidents and postmortems",
            ServiceKind::ChatBridge => "Chat commands, approvals and notifications",
            ServiceKind::Console => "Web console: rollouts, plans, incidents, SLOs and DORA",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    /// Accepts the token (`incident`) or the service name (`toronto-incident-commander`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceKind::ALL
            .into_iter()
            .find(|k| k.token() == s || k.service_name() == s)
            .ok_or_else(|| {
                format!("unknown service `{s}`; known: planner, deployer, monitor, incident, chat")
            })
    }
}

/// Builds every subject, stream and bucket name from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// A catalogue over `prefix` (one or more subject tokens, no wildcards).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.devops.v1`, the root of our own commands and events.
    pub fn devops_root(&self) -> String {
        format!("{}.devops.v1", self.prefix)
    }

    /// A command served by `service`: `<prefix>.devops.v1.<service>.<verb>`.
    pub fn command(&self, service: ServiceKind, verb: &str) -> String {
        format!("{}.devops.v1.{}.{verb}", self.prefix, service.token())
    }

    /// The status request of `service`.
    pub fn status(&self, service: ServiceKind) -> String {
        self.command(service, "status")
    }

    /// An event: `<prefix>.devops.v1.events.<entity>.<what>`.
    pub fn event(&self, entity: &str, what: &str) -> String {
        format!("{}.devops.v1.events.{entity}.{what}", self.prefix)
    }

    /// Every event: `<prefix>.devops.v1.events.>`.
    pub fn events_all(&self) -> String {
        format!("{}.devops.v1.events.>", self.prefix)
    }

    /// Dead letters of `service`: `<prefix>.devops.v1.dlq.<service>`.
    pub fn dlq(&self, service: &str) -> String {
        format!("{}.devops.v1.dlq.{service}", self.prefix)
    }

    /// Every dead letter.
    pub fn dlq_all(&self) -> String {
        format!("{}.devops.v1.dlq.>", self.prefix)
    }

    /// Task intake from peers: `<prefix>.agents.devops.tasks`.
    pub fn tasks(&self) -> String {
        format!("{}.agents.devops.tasks", self.prefix)
    }

    /// A request to a peer agent, e.g. `peer("security", "scan")`.
    pub fn peer(&self, role: &str, verb: &str) -> String {
        format!("{}.agents.{role}.v1.{verb}", self.prefix)
    }

    /// Notifications to a peer role: `<prefix>.agents.<role>.v1.notify`.
    pub fn notify(&self, role: &str) -> String {
        self.peer(role, "notify")
    }

    /// Metrics pushed over the bus: `<prefix>.metrics.<service>.<environment>`.
    pub fn metrics(&self, service: &str, environment: &str) -> String {
        format!("{}.metrics.{service}.{environment}", self.prefix)
    }

    /// Every metric push.
    pub fn metrics_all(&self) -> String {
        format!("{}.metrics.>", self.prefix)
    }

    fn stream_prefix(&self) -> String {
        self.prefix.to_ascii_uppercase().replace(['.', '-'], "_")
    }

    /// The events stream, `TORONTO_DEVOPS_EVENTS` for the default prefix.
    pub fn events_stream(&self) -> String {
        format!("{}_DEVOPS_EVENTS", self.stream_prefix())
    }

    /// The task work-queue stream, `TORONTO_DEVOPS_TASKS` for the default prefix.
    pub fn tasks_stream(&self) -> String {
        format!("{}_DEVOPS_TASKS", self.stream_prefix())
    }

    /// The dead-letter stream, `TORONTO_DEVOPS_DLQ` for the default prefix.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DEVOPS_DLQ", self.stream_prefix())
    }

    /// The planner's work queue of plans to advance: `<prefix>.devops.v1.planner.runs`.
    pub fn plan_runs(&self) -> String {
        self.command(ServiceKind::Planner, "runs")
    }

    /// The stream of [`Subjects::plan_runs`], `TORONTO_DEVOPS_PLAN_RUNS` for the
    /// default prefix.
    pub fn plan_runs_stream(&self) -> String {
        format!("{}_DEVOPS_PLAN_RUNS", self.stream_prefix())
    }

    /// The deployer's work queue of rollouts to advance:
    /// `<prefix>.devops.v1.deployer.runs`.
    pub fn rollout_runs(&self) -> String {
        self.command(ServiceKind::Deployer, "runs")
    }

    /// The stream of [`Subjects::rollout_runs`], `TORONTO_DEVOPS_ROLLOUT_RUNS` for the
    /// default prefix.
    pub fn rollout_runs_stream(&self) -> String {
        format!("{}_DEVOPS_ROLLOUT_RUNS", self.stream_prefix())
    }

    /// A KV bucket name, e.g. `kv_bucket("slo_status")` is `toronto_slo_status`.
    pub fn kv_bucket(&self, name: &str) -> String {
        format!(
            "{}_{name}",
            self.prefix.to_ascii_lowercase().replace(['.', '-'], "_")
        )
    }

    /// The source URI of a service's messages, e.g. `toronto://devops/planner`.
    pub fn source(&self, service: ServiceKind) -> String {
        format!("toronto://devops/{}", service.token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalogue_matches_the_design() {
        let s = Subjects::default();
        assert_eq!(
            s.command(ServiceKind::Planner, "submit"),
            "toronto.devops.v1.planner.submit"
        );
        assert_eq!(
            s.command(ServiceKind::Deployer, "rollout.abort"),
            "toronto.devops.v1.deployer.rollout.abort"
        );
        assert_eq!(
            s.status(ServiceKind::IncidentCommander),
            "toronto.devops.v1.incident.status"
        );
        assert_eq!(
            s.event("rollout", "aborted"),
            "toronto.devops.v1.events.rollout.aborted"
        );
        assert_eq!(s.dlq("planner"), "toronto.devops.v1.dlq.planner");
        assert_eq!(s.tasks(), "toronto.agents.devops.tasks");
        assert_eq!(
            s.peer("security", "scan"),
            "toronto.agents.security.v1.scan"
        );
        assert_eq!(s.notify("qa"), "toronto.agents.qa.v1.notify");
        assert_eq!(
            s.metrics("shop-api", "production"),
            "toronto.metrics.shop-api.production"
        );
        assert_eq!(s.events_stream(), "TORONTO_DEVOPS_EVENTS");
        assert_eq!(s.tasks_stream(), "TORONTO_DEVOPS_TASKS");
        assert_eq!(s.dlq_stream(), "TORONTO_DEVOPS_DLQ");
        assert_eq!(s.plan_runs(), "toronto.devops.v1.planner.runs");
        assert_eq!(s.plan_runs_stream(), "TORONTO_DEVOPS_PLAN_RUNS");
        assert_eq!(s.rollout_runs(), "toronto.devops.v1.deployer.runs");
        assert_eq!(s.rollout_runs_stream(), "TORONTO_DEVOPS_ROLLOUT_RUNS");
        assert_eq!(s.kv_bucket("slo_status"), "toronto_slo_status");
    }

    #[test]
    fn prefix_is_configurable() {
        let s = Subjects::new("acme.prod");
        assert_eq!(
            s.status(ServiceKind::Monitor),
            "acme.prod.devops.v1.monitor.status"
        );
        assert_eq!(s.events_stream(), "ACME_PROD_DEVOPS_EVENTS");
        assert_eq!(s.rollout_runs_stream(), "ACME_PROD_DEVOPS_ROLLOUT_RUNS");
        assert_eq!(s.plan_runs(), "acme.prod.devops.v1.planner.runs");
        assert_eq!(s.kv_bucket("plans"), "acme_prod_plans");
    }

    #[test]
    fn service_names_and_tokens() {
        for kind in ServiceKind::ALL {
            assert_eq!(kind.token().parse::<ServiceKind>().unwrap(), kind);
            assert_eq!(kind.service_name().parse::<ServiceKind>().unwrap(), kind);
        }
        assert!("billing".parse::<ServiceKind>().is_err());
    }
}
