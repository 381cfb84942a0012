//! Scenarios that need several services at once, each started in-process against a
//! real nats-server (test kit), one module per scenario family.

mod bridge;
mod cancel;
mod deployer;
mod examples;
mod faults;
mod freeze;
mod incidents;
mod micro;
mod planner;
mod suite;
mod traces;
mod world;
