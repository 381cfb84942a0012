//! Requests to a replicated service, served by the owner of its lease.
//!
//! Every replica subscribes to the service's subjects in the queue group, so every
//! replica takes requests. A replica that does not own the lease forwards the
//! request *as received* (subject, headers with the signature, bytes, reply subject)
//! to the owner's own subject `_TORONTO.owner.<owner id>.<subject>`, before checking
//! anything; the owner verifies the signature over the original subject, as if the
//! request had come straight to it, and answers the caller directly. The replay guard
//! sees the signature once, at the owner.

use std::sync::Arc;

use async_nats::Client;

use toronto_protocol::{ErrorBody, ErrorCode};

use crate::lease::LeaseWatch;

/// Where a request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// By this instance.
    Here,
    /// By the instance with this id (the owner).
    Forward(String),
    /// Nobody owns the work now (a takeover is under way): answer 503.
    NoOwner,
}

/// Decides where the requests of a service are served.
pub trait OwnerRoute: Send + Sync + std::fmt::Debug + 'static {
    /// The route now.
    fn route(&self) -> Route;
}

impl OwnerRoute for LeaseWatch {
    fn route(&self) -> Route {
        if self.is_owner() {
            return Route::Here;
        }
        match self.holder() {
            Some(holder) if holder != self.me() => Route::Forward(holder),
            _ => Route::NoOwner,
        }
    }
}

/// The prefix of the subjects forwarded requests reach instance `id` on.
pub fn owner_prefix(id: &str) -> String {
    format!("_TORONTO.owner.{id}.")
}

/// The route of a host, once set.
pub(super) type RouteSlot = std::sync::OnceLock<Arc<dyn OwnerRoute>>;

/// Forwards `message` unchanged to instance `owner`; the owner replies to the caller.
pub(super) async fn forward(client: &Client, owner: &str, message: async_nats::Message) {
    let subject = format!("{}{}", owner_prefix(owner), message.subject);
    let sent = match (message.reply, message.headers) {
        (Some(reply), Some(headers)) => {
            client
                .publish_with_reply_and_headers(subject, reply, headers, message.payload)
                .await
        }
        (Some(reply), None) => {
            client
                .publish_with_reply(subject, reply, message.payload)
                .await
        }
        (None, Some(headers)) => {
            client
                .publish_with_headers(subject, headers, message.payload)
                .await
        }
        (None, None) => client.publish(subject, message.payload).await,
    };
    if let Err(e) = sent {
        tracing::warn!(owner, error = %e, "cannot forward a request to the owner");
    }
}

/// Forwards `message` to the owner when this instance is not it (`None`: the
/// message is gone), or hands it on to be served here, with the refusal to answer
/// when nobody can serve it now. A forwarded message gets its subject back.
pub(super) async fn route(
    slot: &RouteSlot,
    client: &Client,
    mut message: async_nats::Message,
    forwarded: Option<&str>,
) -> Option<(async_nats::Message, Option<ErrorBody>)> {
    let Some(route) = slot.get() else {
        return Some((message, None));
    };
    let unavailable = |why: &str| {
        Some(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("{why}: try again in a few seconds"),
        ))
    };
    if let Some(prefix) = forwarded {
        if let Some(original) = message.subject.as_str().strip_prefix(prefix) {
            message.subject = original.to_owned().into();
        }
        let refusal = match route.route() {
            Route::Here => None,
            _ => unavailable("the service's lease moved while the request was forwarded"),
        };
        return Some((message, refusal));
    }
    match route.route() {
        Route::Here => Some((message, None)),
        Route::NoOwner => Some((
            message,
            unavailable("no replica owns the service's work now"),
        )),
        Route::Forward(owner) => {
            forward(client, &owner, message).await;
            None
        }
    }
}
