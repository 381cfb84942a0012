//! Typed requests for tests: wrap the data in an envelope, send it to a subject and
//! decode the typed reply, or the error envelope the service answered with.
//!
//! [`request`] is the one-off form; a [`Requester`] is bound to one service's subjects
//! (`toronto.devops.v1.<service>.<verb>`) and carries the timeout and encoding of its
//! requests. Both use the runtime's [`call`], the same code path services use between
//! themselves, so a test exercises the real headers and error mapping.
//!
//! ```no_run
//! # async fn demo(client: async_nats::Client) {
//! use toronto_protocol::status::{Status, StatusRequest};
//! let monitor = toronto_testkit::Requester::service(client, "monitor");
//! let status: Status = monitor.request("status", StatusRequest::default()).await.unwrap();
//! # }
//! ```

use std::time::Duration;

use async_nats::Client;
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message};
use toronto_runtime::auth::Signer;
use toronto_runtime::rpc::{CallError, call, call_signed};

/// The `source` of the envelopes tests send.
pub const TEST_SOURCE: &str = "toronto://test";

/// How long a test request waits for its reply unless told otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `data` in a new JSON envelope from [`TEST_SOURCE`] to `subject` and returns the
/// reply's data, waiting at most [`REQUEST_TIMEOUT`].
pub async fn request<Req: Message, Resp: Message>(
    client: &Client,
    subject: &str,
    data: Req,
) -> Result<Resp, CallError> {
    let envelope = Envelope::builder(TEST_SOURCE, data).build();
    call(client, subject, &envelope, Encoding::Json, REQUEST_TIMEOUT)
        .await
        .map(|reply: Envelope<Resp>| reply.data)
}

/// The error body of a request that the service refused; panics on any other outcome.
pub fn remote_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> ErrorBody {
    match result {
        Err(CallError::Remote(body)) => body,
        other => panic!("expected an error envelope, got {other:?}"),
    }
}

/// Sends typed requests to the subjects under one prefix, e.g. one service's verbs.
#[derive(Clone, Debug)]
pub struct Requester {
    client: Client,
    prefix: String,
    timeout: Duration,
    encoding: Encoding,
    signer: Option<Signer>,
}

impl Requester {
    /// Requests to `<prefix>.<verb>`, in JSON, waiting at most [`REQUEST_TIMEOUT`],
    /// signed by the test admin ([`crate::test_identity`]; see [`Requester::unsigned`]).
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            timeout: REQUEST_TIMEOUT,
            encoding: Encoding::Json,
            signer: Some(crate::test_identity()),
        }
    }

    /// Requests to the verbs of a service under the default prefix:
    /// `toronto.devops.v1.<service>.<verb>`.
    pub fn service(client: Client, service: &str) -> Self {
        Self::new(client, format!("toronto.devops.v1.{service}"))
    }

    /// The same requester with another reply timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same requester sending (and expecting replies) in another encoding.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The same requester signing every request with `signer` (see
    /// `docs/trust-model.md`); [`crate::test_identity`] is the stacks' first admin.
    pub fn signed_by(mut self, signer: Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The same requester sending unsigned requests (to see them refused).
    pub fn unsigned(mut self) -> Self {
        self.signer = None;
        self
    }

    /// The NATS client requests go through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The subject of `verb`: `<prefix>.<verb>`, or the prefix itself for an empty verb.
    pub fn subject(&self, verb: &str) -> String {
        if verb.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{verb}", self.prefix)
        }
    }

    /// Sends `data` in a new envelope from [`TEST_SOURCE`] to `verb` and returns the
    /// reply's data.
    pub async fn request<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        data: Req,
    ) -> Result<Resp, CallError> {
        let envelope = Envelope::builder(TEST_SOURCE, data).build();
        self.send(verb, &envelope)
            .await
            .map(|reply: Envelope<Resp>| reply.data)
    }

    /// Sends a prepared envelope to `verb` and returns the whole reply envelope.
    pub async fn send<Req: Message, Resp: Message>(
        &self,
        verb: &str,
        envelope: &Envelope<Req>,
    ) -> Result<Envelope<Resp>, CallError> {
        call_signed(
            &self.client,
            self.signer.as_ref(),
            &self.subject(verb),
            envelope,
            self.encoding,
            self.timeout,
        )
        .await
    }
}
