//! The `toronto` command as a library: `toronto up` (the whole stack in one
//! process) and the client commands, so tests drive exactly what users run.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod commands;
pub mod demo;
pub mod identity;
pub mod nats_server;
pub mod settings_docs;
pub mod up;
