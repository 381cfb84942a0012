//! Scenarios across several services against a real nats-server, one module per
//! scenario family.

mod bridge;
