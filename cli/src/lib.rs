//! The `toronto` command as a library: `toronto up` (the whole stack in one
//! process) and the client commands, so tests drive exactly what users run.
#![forbid(unsafe_code)]

/// `println!` that exits quietly on a closed pipe instead of panicking ([`out::write`]).
macro_rules! println {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod analysis;
pub mod audit;
pub mod bootstrap;
pub mod commands;
pub mod demo;
pub mod identity;
pub mod nats_server;
pub mod ops;
pub mod out;
pub mod settings_docs;
pub mod trust;
pub mod up;
