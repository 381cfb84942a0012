//! `workload.put`: registers the pod template a service's Deployments are made from,
//! read from the user's own Deployment (adoption) or given in the request.

use chrono::Utc;
use toronto_protocol::ErrorBody;
use toronto_protocol::workload::{WorkloadPut, WorkloadTemplate};
use toronto_runtime::Request;

use super::{bad, dns_label};
use crate::engine::{Deployer, EngineError};
use crate::kube::parse_pod_template;

/// Names the deployer gives its own objects of `service`: an adopted Deployment may
/// not have one (the deployer would take it over).
fn owned_names(service: &str) -> Vec<String> {
    std::iter::once(service.to_owned())
        .chain(
            ["canary", "stable", "blue", "green", "preview"]
                .iter()
                .map(|s| format!("{service}-{s}")),
        )
        .collect()
}

impl Deployer {
    /// Registers (or replaces) the workload template of a service in an environment.
    pub async fn workload_put(
        &self,
        req: Request<WorkloadPut>,
    ) -> Result<WorkloadTemplate, ErrorBody> {
        let put = req.data();
        dns_label("service", &put.service)?;
        dns_label("environment", &put.environment)?;
        let (pod_template, adopted, replicas) = match (&put.deployment, &put.pod_template) {
            (Some(name), None) => {
                dns_label("deployment", name)?;
                if owned_names(&put.service).contains(name) {
                    return Err(bad(format!(
                        "deployment `{name}` is a name the deployer gives its own objects of {}; adopt a Deployment of another name",
                        put.service
                    )));
                }
                let (template, replicas) = self
                    .target
                    .read_pod_template(&put.environment, name)
                    .await
                    .map_err(EngineError::from)?;
                (template, Some(name.clone()), replicas.filter(|r| *r > 0))
            }
            (None, Some(t)) => (t.clone(), None, None),
            _ => {
                return Err(bad(
                    "give exactly one of `deployment` (adopt the user's Deployment) and `pod_template`",
                ));
            }
        };
        parse_pod_template(&pod_template).map_err(|e| bad(format!("pod_template: {e}")))?;
        let workload = WorkloadTemplate {
            service: put.service.clone(),
            environment: put.environment.clone(),
            pod_template,
            adopted,
            replicas,
            by: req.principal().map(|p| p.id.clone()),
            updated_at: Utc::now(),
        };
        self.put_workload(&workload).await?;
        tracing::info!(service = %workload.service, environment = %workload.environment, adopted = ?workload.adopted, "workload template registered");
        Ok(workload)
    }
}
