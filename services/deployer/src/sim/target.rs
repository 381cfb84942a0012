//! The simulated cluster as a [`Target`]: applying layouts, reading their status and
//! drift, environments, and chaos faults.

use std::time::Instant;

use async_trait::async_trait;
use toronto_protocol::rollout::{Drift, SimFault};
use toronto_protocol::tasks::ChaosFault;

use std::collections::BTreeMap;

use super::{AppliedStep, Pod, SimCluster, SimSvc, SimWl, ready_pods, refused};
use crate::target::{Layout, ServiceStatus, Target, TargetError, WorkloadStatus};

#[async_trait]
impl Target for SimCluster {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    async fn apply(&self, layout: &Layout) -> Result<(), TargetError> {
        let mut state = self.lock();
        state.apply_calls += 1;
        if !state.environments.contains(&layout.environment) {
            // Environments named in configuration exist from the start, as namespaces do.
            state.environments.insert(layout.environment.clone());
        }
        let key = (layout.service.clone(), layout.environment.clone());
        let now = Instant::now();
        let svc = state.services.entry(key).or_insert_with(|| SimSvc {
            workloads: BTreeMap::new(),
            routing: layout.routing.clone(),
            faults: BTreeMap::new(),
            last_step_key: None,
            served: false,
        });
        let mut changed = svc.routing != layout.routing;
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
                let serving = live.pods.len() as u32 > 0;
                live.retiring =
                    serving.then(|| live.retiring.clone().unwrap_or(live.version.clone()));
                live.image = w.image.clone();
                live.version = w.version.clone();
                live.pods = (0..w.replicas).map(|_| Pod { started: now }).collect();
                changed = true;
            }
            if live.replicas != w.replicas || live.pods.len() != w.replicas as usize {
                live.pods.resize(w.replicas as usize, Pod { started: now });
                changed = true;
            }
            live.replicas = w.replicas;
            live.track = w.track;
        }
        let new_key = svc.last_step_key.as_deref() != Some(layout.step_key.as_str());
        svc.last_step_key = Some(layout.step_key.clone());
        if changed || new_key {
            state.applied.push(AppliedStep {
                service: layout.service.clone(),
                environment: layout.environment.clone(),
                step_key: layout.step_key.clone(),
            });
        }
        Ok(())
    }

    async fn status(
        &self,
        service: &str,
        environment: &str,
        workloads: &[String],
    ) -> Result<ServiceStatus, TargetError> {
        let state = self.lock();
        let now = Instant::now();
        let Some(svc) = state
            .services
            .get(&(service.to_owned(), environment.to_owned()))
        else {
            return Ok(ServiceStatus::default());
        };
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
        let state = self.lock();
        let live = state
            .services
            .get(&(layout.service.clone(), layout.environment.clone()));
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
            match live.and_then(|s| s.workloads.get(&w.name)) {
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
        if let Some(svc) = live
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

    async fn provision_environment(&self, environment: &str) -> Result<(), TargetError> {
        self.lock().environments.insert(environment.to_owned());
        Ok(())
    }

    async fn teardown_environment(&self, environment: &str) -> Result<(), TargetError> {
        let mut state = self.lock();
        state.environments.remove(environment);
        state.services.retain(|(_, env), _| env != environment);
        Ok(())
    }

    async fn inject(
        &self,
        service: &str,
        environment: &str,
        fault: &ChaosFault,
    ) -> Result<(), TargetError> {
        let mut state = self.lock();
        let svc = state
            .services
            .get_mut(&(service.to_owned(), environment.to_owned()))
            .ok_or_else(|| {
                refused(format!(
                    "{service} is not deployed in {environment} on the simulated cluster"
                ))
            })?;
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
                let now = Instant::now();
                let mut left = *count;
                for wl in svc.workloads.values_mut().filter(|w| w.replicas > 0) {
                    for pod in wl.pods.iter_mut() {
                        if left == 0 {
                            break;
                        }
                        pod.started = now;
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
        Ok(())
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
        let mut state = self.lock();
        if let Some(svc) = state
            .services
            .get_mut(&(service.to_owned(), environment.to_owned()))
        {
            svc.faults.clear();
        }
        Ok(())
    }
}
