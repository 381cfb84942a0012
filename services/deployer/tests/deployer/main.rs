//! Rollouts on the simulated cluster (a simulation: no Kubernetes API server runs
//! here), driven over a real nats-server through the deployer's commands, with every
//! assertion on what a user would see: events, rollout state, and where the simulated
//! traffic goes.
//!
//! (Canaries judged by the real monitor are end-to-end scenarios in
//! `tests/e2e/tests/scenarios/deployer.rs`.)

mod commands;
mod strategies;
mod support;
mod templates;
mod verify;
mod workload;
