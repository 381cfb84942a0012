//! `deployer.workload.put` over the bus (on the simulated cluster, which has no
//! Deployments to adopt but keeps a registered pod template).

use serde_json::json;
use toronto_protocol::ErrorCode;
use toronto_protocol::workload::{WorkloadPut, WorkloadTemplate};

use crate::support::{ENV, remote_code, settings, stack_with};

fn put(deployment: Option<&str>, pod_template: Option<serde_json::Value>) -> WorkloadPut {
    WorkloadPut {
        service: "shop".into(),
        environment: ENV.into(),
        deployment: deployment.map(str::to_owned),
        pod_template,
    }
}

#[tokio::test]
async fn a_pod_template_is_registered_and_bad_ones_are_refused_with_the_reason() {
    let s = stack_with(settings(), 1).await;
    let template = json!({"spec": {"containers": [{"name": "shop", "image": "x", "env": [{"name": "A", "value": "1"}]}]}});
    let stored: WorkloadTemplate = s
        .request("workload.put", put(None, Some(template.clone())))
        .await
        .expect("registered");
    assert_eq!(stored.pod_template, template);
    assert_eq!(stored.adopted, None);

    for (bad, needle) in [
        (put(None, None), "exactly one of"),
        (
            put(Some("shop-app"), Some(template.clone())),
            "exactly one of",
        ),
        (put(Some("shop-canary"), None), "a name the deployer gives"),
        (
            put(None, Some(json!({"spec": {"containers": []}}))),
            "no container",
        ),
        // The simulated cluster has no Deployment to read.
        (put(Some("shop-app"), None), "no Deployments to adopt"),
    ] {
        let err = s
            .request::<_, WorkloadTemplate>("workload.put", bad)
            .await
            .unwrap_err();
        assert_eq!(remote_code(&err), ErrorCode::BadRequest, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    s.stop().await;
}
