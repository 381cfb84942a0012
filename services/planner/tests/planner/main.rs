//! The planner against a real nats-server: task intake through both doors, plans
//! running their gates and steps with fake peers, policy, DORA figures and pipelines.
//! (Plans that need the monitor or the real deployer are end-to-end scenarios in
//! `tests/e2e/tests/scenarios/planner.rs`.)

mod architect;
mod cloudevents;
mod dora;
mod identity;
mod intake;
mod listing;
mod pipelines;
mod policy;
mod runner;
mod support;
mod sweep;
