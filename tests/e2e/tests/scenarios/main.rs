//! Scenarios that need several services at once, each started in-process against a
//! real nats-server (test kit).

mod incidents;
