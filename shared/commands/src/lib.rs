//! The one command grammar of the DevOps agent, shared by the chat bridge (Slack and
//! Mattermost slash commands) and the `toronto run` CLI.
//!
//! Text such as `deploy shop-api 2.4.1 to production --strategy canary` is parsed into a
//! typed [`Command`]. Each command knows its usage line and summary ([`Spec`]), the
//! [`Role`] it needs, and how it becomes a NATS request ([`Command::request`]): the
//! service and verb of the subject and the envelope's `type` and `data`. Replies are
//! turned back into text by [`render`](mod@render). Every parse error carries the usage of the
//! command that was meant; an unknown command lists them all.
//!
//! ```
//! use toronto_commands::{Command, Role, parse};
//! let cmd = parse("deploy shop-api 2.4.1 to staging --strategy canary --steps 10,50").unwrap();
//! assert_eq!(cmd.name(), "deploy");
//! assert_eq!(cmd.role(), Role::Operator);
//! let err = parse("deploy shop-api").unwrap_err();
//! assert!(err.to_string().contains("usage: deploy SERVICE VERSION to ENV"));
//! ```
#![forbid(unsafe_code)]

pub mod render;
pub mod request;

mod command;
mod parse;
mod spec;
mod words;

pub use command::{Command, Matcher, StrategyArg};
pub use parse::{ParseError, parse, parse_words, tokenize};
pub use render::{render, render_error};
pub use request::{Actor, Request};
pub use spec::{Role, SPECS, Spec, spec, usage_list};
pub use words::parse_duration;

#[cfg(test)]
mod tests;
