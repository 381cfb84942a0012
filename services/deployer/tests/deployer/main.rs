//! Rollouts on the simulated cluster (a simulation: no Kubernetes API server runs
//! here), driven over a real nats-server through the deployer's commands, with every
//! assertion on what a user would see: events, rollout state, and where the simulated
//! traffic goes.
//!
//! `kube_rollouts` runs the same engine against the testkit's fake Kubernetes API
//! server (and a real cluster when `KUBECONFIG` is set).
//!
//! (Canaries judged by the real monitor are end-to-end scenarios in
//! `tests/e2e/tests/scenarios/deployer.rs`.)

mod commands;
mod kube_adopt;
mod kube_analysis;
mod kube_env;
mod kube_rollouts;
mod kube_target_fake;
mod list;
mod strategies;
mod support;
mod templates;
mod verify;
mod workload;
