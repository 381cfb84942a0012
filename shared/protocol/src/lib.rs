//! The bus contract of the Toronto DevOps agent.
//!
//! Every message on the bus is a CloudEvents 1.0 event ([`Envelope`]): sent in
//! structured mode, encoded as JSON or MessagePack ([`codec`]) according to the
//! `Content-Type` header, and accepted in binary mode too ([`codec::binary`]). Message payloads are Rust types implementing [`Message`];
//! their JSON Schemas under `schemas/v1/` are generated from these types
//! ([`catalogue`]). Subjects are built by [`Subjects`] over a configurable prefix,
//! and failures travel as the error envelope of [`error`].
#![forbid(unsafe_code)]

pub mod alerts;
pub mod analysis;
pub mod audit;
pub mod auth;
pub mod catalogue;
pub mod chat;
pub mod codec;
pub mod delegation;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod event_kind;
pub mod incidents;
pub mod message;
pub mod page;
pub mod replay;
pub mod rollout;
pub mod status;
pub mod subjects;
pub mod tasks;
pub mod trace;
pub mod workload;

pub use codec::{Encoding, decode, decode_raw, encode};
pub use domain::{DnsLabel, Environment, ServiceName, Version};
pub use envelope::{Envelope, EnvelopeBuilder, Priority, RawEnvelope};
pub use error::{ErrorBody, ErrorCode, ProtocolError};
pub use event_kind::EventKind;
pub use message::{Message, MessageType, TYPE_PREFIX};
pub use subjects::{ServiceKind, Subjects};
pub use trace::TraceParent;
