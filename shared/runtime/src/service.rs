//! The NATS service API (ADR-32) and typed request/reply endpoints.
//!
//! We host ADR-32 ourselves rather than through `async_nats::service` because that
//! API sends an empty body with an error and counts errors only on that path; our
//! contract answers every error with the error envelope *and* the ADR-32 headers,
//! and `$SRV.STATS` must count those errors. The response shapes are async-nats's own
//! types, so `nats micro` and async-nats clients read them unchanged.
//!
//! An endpoint decodes the request (JSON or MessagePack by `Content-Type`), checks
//! its size, attributes and `type`, calls the handler, and answers in the request's
//! encoding. Handler errors and panics become error envelopes; requests run
//! concurrently up to a bound per endpoint.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toronto_protocol::codec::CONTENT_TYPE_HEADER;
use toronto_protocol::codec::encode_ref;
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::envelope::{EnvelopeRef, SPEC_VERSION};
use toronto_protocol::error::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use toronto_protocol::trace::TRACEPARENT_HEADER;
use toronto_protocol::{
    Encoding, Envelope, ErrorBody, ErrorCode, Message, ProtocolError, TraceParent, encode,
};
use tracing::Instrument;

use crate::config::EndpointConfig;
use crate::jetstream::DeadLetters;
use crate::metrics::{EndpointMetrics, Metrics};

mod adr32;
mod cloudevent;
mod endpoint;
mod forward;
mod request;

use adr32::{EndpointCounters, verb_subscriptions};
pub use cloudevent::{decode_message, decode_message_raw, decode_message_with_flow, is_binary};
use endpoint::Endpoint;
pub use forward::{OwnerRoute, Route, owner_prefix};
pub use request::{Accepts, Request};
use request::{RequestDecoder, Typed};

/// Why the service could not be started or an endpoint added.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Subscribing failed.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client's error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// An endpoint name is used twice.
    #[error("endpoint `{0}` is already registered")]
    Duplicate(String),
    /// An endpoint name the micro v1 schemas refuse (they allow `^[a-zA-Z0-9_-]+$`).
    #[error("endpoint name `{0}` is not a micro v1 name: use only letters, digits, `-` and `_`")]
    InvalidName(String),
}

/// Whether `name` is a micro v1 endpoint or service name (`^[a-zA-Z0-9_-]+$`).
pub fn is_micro_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Who the service is, as `$SRV.INFO` tells it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// ADR-32 name, e.g. `toronto-planner`.
    pub name: String,
    /// SemVer version.
    pub version: String,
    /// One line about it.
    pub description: String,
    /// Free-form metadata.
    pub metadata: HashMap<String, String>,
    /// Queue group shared by the replicas of this service.
    pub queue_group: String,
    /// `source` attribute of the replies it sends.
    pub source: String,
}

struct Shared {
    client: Client,
    spec: ServiceSpec,
    id: String,
    started: chrono::DateTime<chrono::Utc>,
    limits: EndpointConfig,
    metrics: Metrics,
    dead_letters: Option<DeadLetters>,
    stats: Mutex<BTreeMap<String, Arc<EndpointCounters>>>,
    endpoint_metadata: Mutex<BTreeMap<String, HashMap<String, String>>>,
    tracker: TaskTracker,
    stop: CancellationToken,
    auth: std::sync::OnceLock<Arc<crate::auth::Authenticator>>,
    route: forward::RouteSlot,
}

/// A running ADR-32 service: answers `$SRV.PING|INFO|STATS` and hosts endpoints.
#[derive(Clone)]
pub struct ServiceHost {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServiceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHost")
            .field("name", &self.shared.spec.name)
            .field("id", &self.shared.id)
            .finish()
    }
}

/// The first value of header `name`, matched exactly as `HeaderMap::get` matches it,
/// but without building a `HeaderName` (which allocates for a custom name) or hashing
/// it: a message carries a handful of headers.
pub(crate) fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k) == name)
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

impl ServiceHost {
    /// Registers the service: subscribes to the ADR-32 verbs and answers them until
    /// [`ServiceHost::stop`].
    pub async fn start(
        client: Client,
        spec: ServiceSpec,
        limits: EndpointConfig,
        metrics: Metrics,
        dead_letters: Option<DeadLetters>,
    ) -> Result<Self, ServiceError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let shared = Arc::new(Shared {
            client: client.clone(),
            spec,
            id,
            started: chrono::Utc::now(),
            limits,
            metrics,
            dead_letters,
            stats: Mutex::new(BTreeMap::new()),
            endpoint_metadata: Mutex::new(BTreeMap::new()),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            auth: std::sync::OnceLock::new(),
            route: forward::RouteSlot::new(),
        });
        let name = shared.spec.name.clone();
        let mut pings = verb_subscriptions(&client, "PING", &name, &shared.id).await?;
        let mut infos = verb_subscriptions(&client, "INFO", &name, &shared.id).await?;
        let mut stats = verb_subscriptions(&client, "STATS", &name, &shared.id).await?;
        confirm_subscriptions(&client).await;
        let verbs = shared.clone();
        shared.tracker.spawn(async move {
            loop {
                let (message, body) = tokio::select! {
                    _ = verbs.stop.cancelled() => break,
                    Some(m) = pings.next() => { let b = verbs.ping_json(); (m, b) }
                    Some(m) = infos.next() => { let b = verbs.info_json(); (m, b) }
                    Some(m) = stats.next() => { let b = verbs.stats_json(); (m, b) }
                    else => break,
                };
                if let Some(reply) = message.reply
                    && let Err(e) = verbs.client.publish(reply, body.into()).await
                {
                    tracing::warn!(error = %e, "cannot answer service API request");
                }
            }
            for subs in [&mut pings, &mut infos, &mut stats] {
                for sub in subs.iter_mut() {
                    let _ = sub.unsubscribe().await;
                }
            }
        });
        Ok(Self { shared })
    }

    /// The ADR-32 instance id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The ADR-32 service name.
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// When the service started.
    pub fn started(&self) -> chrono::DateTime<chrono::Utc> {
        self.shared.started
    }

    /// Verifies change requests with `auth` from now on (once; later calls are ignored).
    pub fn set_auth(&self, auth: Arc<crate::auth::Authenticator>) {
        let _ = self.shared.auth.set(auth);
    }

    /// The authenticator, once set.
    pub fn auth(&self) -> Option<&Arc<crate::auth::Authenticator>> {
        self.shared.auth.get()
    }

    /// Serves the endpoints added from now on where `route` says: here, or at the
    /// owner of the service's lease (see [`OwnerRoute`]); those added before (such as
    /// `status`) are always served here. Set once.
    pub fn set_route(&self, route: Arc<dyn OwnerRoute>) {
        let _ = self.shared.route.set(route);
    }

    /// The client the service talks through.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Adds a typed endpoint named `name` on `subject`. The handler gets the decoded
    /// request and returns the reply payload or an [`ErrorBody`].
    pub async fn add_endpoint<Req, Resp, H, Fut>(
        &self,
        name: &str,
        subject: impl Into<String>,
        handler: H,
    ) -> Result<(), ServiceError>
    where
        Req: Message,
        Resp: Message,
        H: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ErrorBody>> + Send + 'static,
    {
        // Boxed: the registration future is large in a debug build, and a service
        // that registers a dozen endpoints would otherwise hold them all in one frame.
        Box::pin(self.add(
            name,
            subject.into(),
            Typed::<Req>(std::marker::PhantomData),
            handler,
        ))
        .await
    }

    /// Adds an endpoint that takes several request types (e.g. one per task kind).
    /// The handler gets the validated envelope with untyped `data` and picks the type
    /// with [`Request::typed`]; a type outside `accepts` is refused with 400, a major
    /// it does not support with 422, before the handler runs.
    pub async fn add_endpoint_any<Resp, H, Fut>(
        &self,
        name: &str,
        subject: impl Into<String>,
        accepts: Accepts,
        handler: H,
    ) -> Result<(), ServiceError>
    where
        Resp: Message,
        H: Fn(Request<serde_json::Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ErrorBody>> + Send + 'static,
    {
        Box::pin(self.add(name, subject.into(), accepts, handler)).await
    }

    async fn add<D, Resp, H, Fut>(
        &self,
        name: &str,
        subject: String,
        decoder: D,
        handler: H,
    ) -> Result<(), ServiceError>
    where
        D: RequestDecoder,
        Resp: Message,
        H: Fn(Request<D::Data>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ErrorBody>> + Send + 'static,
    {
        let counters = Arc::new(EndpointCounters::new(
            name.to_owned(),
            subject.clone(),
            self.shared.spec.queue_group.clone(),
        ));
        if !is_micro_name(name) {
            return Err(ServiceError::InvalidName(name.to_owned()));
        }
        let access = decoder.access();
        if access != crate::auth::AccessRule::Open
            && let Some(auth) = self.shared.auth.get()
        {
            auth.protect(name, access);
        }
        {
            let mut stats = self.shared.stats.lock().expect("stats lock");
            if stats.contains_key(name) {
                return Err(ServiceError::Duplicate(name.to_owned()));
            }
            stats.insert(name.to_owned(), counters.clone());
        }
        self.shared
            .endpoint_metadata
            .lock()
            .expect("meta lock")
            .insert(name.to_owned(), {
                let types = decoder.request_types();
                let join = |pick: fn(&(String, String)) -> &String| {
                    types
                        .iter()
                        .map(pick)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(",")
                };
                HashMap::from([
                    ("request_type".to_owned(), join(|t| &t.0)),
                    ("response_type".to_owned(), Resp::message_type().to_string()),
                    ("request_schema".to_owned(), join(|t| &t.1)),
                    ("response_schema".to_owned(), Resp::schema_uri()),
                ])
            });
        let sub = self
            .shared
            .client
            .queue_subscribe(subject.clone(), self.shared.spec.queue_group.clone())
            .await
            .map_err(|source| ServiceError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
        // A replicated service also takes the requests other replicas forward to it.
        let owned = match self.shared.route.get() {
            Some(_) => {
                let owned = format!("{}{}", forward::owner_prefix(&self.shared.id), subject);
                Some(
                    self.shared
                        .client
                        .subscribe(owned.clone())
                        .await
                        .map_err(|source| ServiceError::Subscribe {
                            subject: owned,
                            source,
                        })?,
                )
            }
            None => None,
        };
        // Once this returns, the server routes requests to the endpoint.
        confirm_subscriptions(&self.shared.client).await;
        let endpoint = Arc::new(Endpoint {
            metrics: self.shared.metrics.endpoint(name),
            shared: self.shared.clone(),
            name: name.to_owned(),
            counters,
            decoder,
            handler,
            reply_type: Resp::message_type().to_string(),
            reply_schema: Resp::schema_uri(),
        });
        if let Some(owned) = owned {
            let prefix = forward::owner_prefix(&self.shared.id);
            self.shared
                .tracker
                .spawn(endpoint.clone().serve_all(owned, Some(prefix)));
        }
        self.shared.tracker.spawn(endpoint.serve_all(sub, None));
        Ok(())
    }

    /// Stops taking requests, finishes those in flight (up to `grace`), and stops
    /// answering the service API. Returns whether everything finished in time.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.shared.stop.cancel();
        self.shared.tracker.close();
        let finished = tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(service = %self.shared.spec.name, "requests still in flight at the end of the grace period");
        }
        finished
    }

    /// The `$SRV.STATS` document of this instance.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&self.shared.stats_json()).expect("stats are JSON")
    }
}

/// Waits until the server has processed everything this connection sent before,
/// subscriptions included, so that requests from other connections reach them.
///
/// async-nats' `flush` only writes the buffer to the socket; the server may still
/// be reading it. A request to a subject nobody serves makes the server answer "no
/// responders" on this same connection, in order, after the earlier subscriptions.
pub async fn confirm_subscriptions(client: &Client) {
    let subject = format!("_TORONTO.sync.{}", uuid::Uuid::new_v4().simple());
    let round_trip = client.request(subject, Bytes::new());
    match tokio::time::timeout(Duration::from_secs(5), round_trip).await {
        Ok(_) => {}
        Err(_) => tracing::warn!("the server did not confirm the subscriptions within 5 s"),
    }
}
