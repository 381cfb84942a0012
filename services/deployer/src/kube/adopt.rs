//! Adopting the user's Deployment: reading its pod template, and scaling it (never
//! deleting it).

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::{FIELD_MANAGER, KubeTarget, refused};
use crate::target::TargetError;

impl KubeTarget {
    /// The pod template and the replicas of Deployment `name` in the environment's
    /// namespace.
    pub async fn read_deployment_template(
        &self,
        environment: &str,
        name: &str,
    ) -> Result<(serde_json::Value, Option<u32>), TargetError> {
        let ns = self.namespace(environment)?;
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let what = format!("get deployment {name} in {ns}");
        let found = self.call(&what, api.get_opt(name)).await?;
        let Some(d) = found else {
            return Err(refused(format!("{what}: there is no such Deployment")));
        };
        let spec = d.spec.unwrap_or_default();
        let replicas = spec.replicas.and_then(|r| u32::try_from(r).ok());
        let template =
            serde_json::to_value(&spec.template).map_err(|e| refused(format!("{what}: {e}")))?;
        Ok((template, replicas))
    }

    /// Sets `spec.replicas` of the user's Deployment `name` (a merge patch of that
    /// one field; the object stays the user's).
    pub async fn scale_deployment(
        &self,
        environment: &str,
        name: &str,
        replicas: u32,
    ) -> Result<(), TargetError> {
        let ns = self.namespace(environment)?;
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let what = format!("scale deployment {name} in {ns} to {replicas}");
        let patch = json!({"spec": {"replicas": replicas}});
        let params = PatchParams {
            field_manager: Some(format!("{FIELD_MANAGER}-adopt")),
            ..PatchParams::default()
        };
        self.call(&what, api.patch(name, &params, &Patch::Merge(&patch)))
            .await
            .map(drop)
    }
}
