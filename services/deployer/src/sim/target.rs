//! The simulated cluster as a [`Target`]: applying layouts, reading their status and
//! drift, environments, and chaos faults. Every change is one compare-and-set of a
//! service's record in the world.

use async_trait::async_trait;
use toronto_protocol::rollout::{Drift, SimFault};
use toronto_protocol::tasks::ChaosFault;
use toronto_runtime::work::Edit;

use super::{APPLIED_KEPT, Pod, SimCluster, SimSvc, SimWl, not_deployed, now_ms, ready_pods};
use crate::target::{Layout, ServiceStatus, Target, TargetError, WorkloadStatus};

/// Makes `svc` match `layout`; whether anything but the step key changed.
fn apply_to(svc: &mut SimSvc, layout: &Layout, now: i64) -> bool {
    let before = svc.clone();
    svc.routing = layout.routing.clone();
    for w in &layout.workloads {
        let live = svc
            .workloads
            .entry(w.name.clone())
            .or_insert_with(|| SimWl {
                track: w.track,
                version: w.version.clone(),
                image: w.image.clone(),
                replicas: 0,
                pods: Vec::new(),
                retiring: None,
            });
        if live.image != w.image || live.version != w.version {
            let serving = !live.pods.is_empty();
            live.retiring = serving.then(|| live.retiring.clone().unwrap_or(live.version.clone()));
            live.image = w.image.clone();
            live.version = w.version.clone();
            live.pods = (0..w.replicas).map(|_| Pod { started_ms: now }).collect();
        }
        if live.pods.len() != w.replicas as usize {
            live.pods
                .resize(w.replicas as usize, Pod { started_ms: now });
        }
        live.replicas = w.replicas;
        live.track = w.track;
    }
    *svc != before
}

#[async_trait]
impl Target for SimCluster {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    async fn apply(&self, layout: &Layout) -> Result<(), TargetError> {
        self.lock().apply_calls += 1;
        let now = now_ms();
        let init = SimSvc::new(layout.routing.clone());
        self.edit(&layout.service, &layout.environment, Some(init), |svc| {
            let changed = apply_to(svc, layout, now);
            let new_key = svc.last_step_key.as_deref() != Some(layout.step_key.as_str());
            if !changed && !new_key {
                return Ok(Edit::Keep(()));
            }
            svc.last_step_key = Some(layout.step_key.clone());
            svc.applied.push_back(layout.step_key.clone());
            while svc.applied.len() > APPLIED_KEPT {
                svc.applied.pop_front();
            }
            Ok(Edit::Save(()))
        })
        .await?;
        Ok(())
    }

    async fn status(
        &self,
        service: &str,
        environment: &str,
        workloads: &[String],
    ) -> Result<ServiceStatus, TargetError> {
        let Some(svc) = self.load(service, environment).await? else {
            return Ok(ServiceStatus::default());
        };
        let now = now_ms();
        let workloads = workloads
            .iter()
            .filter_map(|name| {
                let wl = svc.workloads.get(name)?;
                let fault = svc.faults.get(&wl.version);
                let ready = ready_pods(wl, fault, now, self.settings.pod_start).min(wl.replicas);
                Some(WorkloadStatus {
                    name: name.clone(),
                    version: wl.version.clone(),
                    replicas: wl.replicas,
                    updated: wl.pods.len() as u32,
                    ready,
                    available: ready,
                    failure: fault
                        .filter(|f| f.crash_loop && wl.replicas > 0)
                        .map(|_| format!("pods of {} are in CrashLoopBackOff", wl.version)),
                })
            })
            .collect();
        Ok(ServiceStatus { workloads })
    }

    async fn drift(&self, layout: &Layout) -> Result<Vec<Drift>, TargetError> {
        let live = self.load(&layout.service, &layout.environment).await?;
        let drift = |object: String, field: &str, desired: serde_json::Value, live| Drift {
            service: layout.service.clone(),
            environment: layout.environment.clone(),
            object,
            field: field.to_owned(),
            desired,
            live,
            remediated: false,
        };
        let mut out = Vec::new();
        for w in &layout.workloads {
            let object = format!("Deployment/{}", w.name);
            match live.as_ref().and_then(|s| s.workloads.get(&w.name)) {
                None => out.push(drift(
                    object,
                    "metadata.name",
                    w.name.clone().into(),
                    serde_json::Value::Null,
                )),
                Some(l) => {
                    if l.replicas != w.replicas {
                        out.push(drift(
                            object.clone(),
                            "spec.replicas",
                            w.replicas.into(),
                            l.replicas.into(),
                        ));
                    }
                    if l.image != w.image {
                        out.push(drift(
                            object,
                            "spec.template.spec.containers[0].image",
                            w.image.clone().into(),
                            l.image.clone().into(),
                        ));
                    }
                }
            }
        }
        if let Some(svc) = &live
            && svc.routing != layout.routing
        {
            out.push(drift(
                format!("Service/{}", layout.service),
                "routing",
                serde_json::to_value(&layout.routing).unwrap_or_default(),
                serde_json::to_value(&svc.routing).unwrap_or_default(),
            ));
        }
        Ok(out)
    }

    async fn provision_environment(&self, _environment: &str) -> Result<(), TargetError> {
        // Every environment exists in the simulated cluster, as namespaces named in
        // configuration do; services appear in it when applied.
        Ok(())
    }

    async fn teardown_environment(&self, environment: &str) -> Result<(), TargetError> {
        self.remove_environment(environment).await
    }

    async fn inject(
        &self,
        service: &str,
        environment: &str,
        fault: &ChaosFault,
    ) -> Result<(), TargetError> {
        let now = now_ms();
        self.edit(service, environment, None, |svc| {
            inject_into(svc, service, environment, fault, now);
            Ok(Edit::Save(()))
        })
        .await?
        .ok_or_else(|| not_deployed(service, environment))
    }

    async fn clear(
        &self,
        service: &str,
        environment: &str,
        fault: &ChaosFault,
    ) -> Result<(), TargetError> {
        if matches!(fault, ChaosFault::PodKill { .. }) {
            return Ok(());
        }
        self.edit(service, environment, None, |svc| {
            if svc.faults.is_empty() {
                return Ok(Edit::Keep(()));
            }
            svc.faults.clear();
            Ok(Edit::Save(()))
        })
        .await?;
        Ok(())
    }
}

/// Puts a chaos fault into the serving workloads of `svc`.
fn inject_into(svc: &mut SimSvc, service: &str, environment: &str, fault: &ChaosFault, now: i64) {
    let serving: Vec<String> = svc
        .workloads
        .values()
        .filter(|w| w.replicas > 0)
        .map(|w| w.version.clone())
        .collect();
    match fault {
        ChaosFault::PodKill { count } => {
            // Killed pods come back (their controller replaces them) and take a pod
            // start to be ready again.
            let mut left = *count;
            for wl in svc.workloads.values_mut().filter(|w| w.replicas > 0) {
                for pod in wl.pods.iter_mut() {
                    if left == 0 {
                        break;
                    }
                    pod.started_ms = now;
                    left -= 1;
                }
            }
        }
        other => {
            for version in serving {
                let f = svc
                    .faults
                    .entry(version.clone())
                    .or_insert_with(|| SimFault {
                        service: service.to_owned(),
                        environment: environment.to_owned(),
                        version: version.clone(),
                        ..Default::default()
                    });
                match other {
                    ChaosFault::ErrorRate { rate } => f.error_rate = rate.clamp(0.0, 1.0),
                    ChaosFault::Latency { ms } => f.latency_ms = *ms,
                    ChaosFault::CrashLoop => f.crash_loop = true,
                    ChaosFault::PodKill { .. } => {}
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sim::SimSettings;
    use crate::target::{Routing, Track, Workload};

    /// A rolling layout of `shop` in `prod` at `version`.
    pub(crate) fn layout(version: &str, replicas: u32, step: &str) -> Layout {
        Layout {
            service: "shop".into(),
            environment: "prod".into(),
            workloads: vec![Workload {
                name: "shop".into(),
                track: Track::Stable,
                version: version.into(),
                image: format!("shop:{version}"),
                replicas,
            }],
            routing: Routing::Rolling {
                max_surge: "25%".into(),
                max_unavailable: "0".into(),
            },
            step_key: step.into(),
            progress_deadline_seconds: 30,
            pod_template: None,
        }
    }

    #[tokio::test]
    async fn a_step_is_recorded_once_however_often_it_is_applied() {
        let sim = SimCluster::new(SimSettings::default());
        for _ in 0..3 {
            sim.apply(&layout("1.0.0", 2, "r1:replace")).await.unwrap();
        }
        sim.apply(&layout("1.1.0", 2, "r2:replace")).await.unwrap();
        sim.apply(&layout("1.1.0", 2, "r2:replace")).await.unwrap();
        let keys: Vec<_> = sim
            .applied_steps()
            .into_iter()
            .map(|a| a.step_key)
            .collect();
        assert_eq!(keys, ["r1:replace", "r2:replace"]);
        assert_eq!(sim.apply_calls(), 5);
        let view = sim.get("shop", "prod").await.unwrap().unwrap();
        assert_eq!(view.workloads["shop"].version, "1.1.0");
        assert_eq!(view.traffic.get("1.1.0"), Some(&100));
    }

    #[tokio::test]
    async fn faults_need_a_deployed_service_and_a_valid_rate() {
        let sim = SimCluster::new(SimSettings::default());
        let fault = SimFault {
            service: "shop".into(),
            environment: "prod".into(),
            version: "1.0.0".into(),
            error_rate: 0.5,
            ..Default::default()
        };
        assert!(sim.set_fault(fault.clone()).await.is_err());
        sim.apply(&layout("1.0.0", 1, "r1:replace")).await.unwrap();
        let view = sim.set_fault(fault.clone()).await.unwrap();
        assert_eq!(view.faults["1.0.0"].error_rate, 0.5);
        let bad = SimFault {
            error_rate: 1.5,
            ..fault
        };
        assert!(sim.set_fault(bad).await.is_err());
        sim.teardown_environment("prod").await.unwrap();
        assert_eq!(sim.get("shop", "prod").await.unwrap(), None);
    }
}
