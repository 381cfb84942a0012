//! End-to-end scenarios: several services together on one nats-server.

mod deployer;
mod planner;
