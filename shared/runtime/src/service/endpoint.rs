//! One endpoint of the service host: decoding, checking and attributing a request,
//! calling its handler under the concurrency bound, and answering in the request's
//! encoding (an error envelope for errors and panics, never a reply over the server's
//! `max_payload`).

use super::*;

use opentelemetry::trace::SpanContext;

use crate::telemetry::propagation;

/// One endpoint: what serving a request needs, resolved once when it is added.
pub(super) struct Endpoint<D, H> {
    pub(super) shared: Arc<Shared>,
    pub(super) name: String,
    pub(super) counters: Arc<EndpointCounters>,
    pub(super) metrics: EndpointMetrics,
    pub(super) decoder: D,
    pub(super) handler: H,
    /// The reply's `type` and `dataschema`.
    pub(super) reply_type: String,
    pub(super) reply_schema: String,
}

impl<D, Resp, H, Fut> Endpoint<D, H>
where
    D: RequestDecoder,
    Resp: Message,
    H: Fn(Request<D::Data>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ErrorBody>> + Send + 'static,
{
    /// Serves the requests of `sub` until the service stops. `forwarded`: the prefix
    /// of the subjects other replicas forward requests to this instance on.
    pub(super) async fn serve_all(
        self: Arc<Self>,
        mut sub: async_nats::Subscriber,
        forwarded: Option<String>,
    ) {
        // Requests are served on this task, up to `concurrency` at once: no task per
        // request. A panic in one request is caught and ends only that request.
        let concurrency = self.shared.limits.concurrency.max(1);
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        let mut draining = false;
        while open || !in_flight.is_empty() {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                message = sub.next(), if open && in_flight.len() < concurrency => match message {
                    Some(message) => {
                        if let Some((message, refusal)) = forward::route(&self.shared.route, &self.shared.client, message, forwarded.as_deref()).await {
                            in_flight.push(self.serve_caught(message, refusal));
                        }
                    }
                    None => open = false,
                },
                _ = self.shared.stop.cancelled(), if !draining => {
                    // Stop taking work; what the server already sent is still served.
                    let _ = sub.drain().await;
                    draining = true;
                }
            }
        }
    }

    /// Serves one request and records it; a panic outside the handler (which has its
    /// own guard) is logged and leaves the request unanswered.
    async fn serve_caught(&self, message: async_nats::Message, refusal: Option<ErrorBody>) {
        let started = Instant::now();
        match AssertUnwindSafe(self.serve(message, refusal))
            .catch_unwind()
            .await
        {
            Ok(error) => {
                let elapsed = started.elapsed();
                self.counters.record(elapsed, error.as_ref());
                self.metrics
                    .observe(elapsed, error.as_ref().map(|e| e.code.as_str()));
            }
            Err(panic) => tracing::error!(
                endpoint = %self.name,
                panic = %panic_message(&*panic),
                "serving a request failed unexpectedly"
            ),
        }
    }

    /// Serves one request (or answers it with `refusal`); returns the error it
    /// answered with.
    async fn serve(
        &self,
        mut message: async_nats::Message,
        refusal: Option<ErrorBody>,
    ) -> Option<ErrorBody> {
        let name = self.name.as_str();
        let encoding =
            Encoding::from_content_type(header(message.headers.as_ref(), CONTENT_TYPE_HEADER));
        let reply_encoding = *encoding.as_ref().unwrap_or(&Encoding::Json);
        let mut flow: Option<FlowContext> = None;
        let mut sign_reply = false;
        // The span of the handler, when traces are exported: the reply names it.
        let mut served_in: Option<SpanContext> = None;

        let outcome: Result<(Resp, Option<String>), ErrorBody> = async {
            if let Some(refusal) = refusal {
                return Err(refusal);
            }
            let size = message.payload.len();
            let limit = self.shared.limits.max_payload_bytes;
            if size > limit {
                return Err(ProtocolError::TooLarge { size, limit }.into());
            }
            let decoded = cloudevent::decode_request(
                &self.decoder,
                message.headers.as_ref(),
                &message.payload,
                encoding,
            );
            let mut envelope = match decoded {
                Ok(envelope) => envelope,
                Err((e, request_flow)) => {
                    flow = request_flow.map(|f| *f);
                    return Err(e.into());
                }
            };
            let mut request_flow = envelope.flow();
            if request_flow.traceparent.is_none() {
                request_flow.traceparent = header(message.headers.as_ref(), TRACEPARENT_HEADER)
                    .and_then(TraceParent::parse);
            }
            // The remote parent (when traces are exported), read before the handler
            // takes the headers.
            let parent = crate::telemetry::exporting().then(|| {
                propagation::remote_context(
                    message.headers.as_ref(),
                    request_flow.traceparent.as_ref(),
                )
            });
            let subject_attr = envelope.subject.clone();
            let caller = match self.shared.auth.get() {
                Some(auth) => {
                    let envelope_id = envelope.id.to_string();
                    let presented = crate::auth::presented(
                        &message,
                        &envelope_id,
                        &envelope.source,
                        envelope.subject.as_deref(),
                    );
                    match auth.admit(name, presented).await {
                        Ok(caller) => caller,
                        Err(e) => {
                            // The refusal answers in the request's flow.
                            flow = Some(request_flow);
                            return Err(e.into());
                        }
                    }
                }
                None => None,
            };
            // Who acts is the verified principal, whatever the payload says.
            if let Some(caller) = &caller {
                D::attribute(&mut envelope.data, &caller.principal().id);
            }
            sign_reply = header(
                message.headers.as_ref(),
                toronto_protocol::auth::SIGN_REPLY_HEADER,
            )
            .is_some();
            // The headers go to the handler; a copy is kept only when a refused message
            // may have to be parked with them (no reply subject).
            let headers = if message.reply.is_some() {
                message.headers.take()
            } else {
                message.headers.clone()
            };
            let request = Request {
                envelope,
                headers,
                subject: message.subject.as_str().to_owned(),
                caller,
            };
            let span = tracing::info_span!(
                "request",
                otel.name = %format_args!("{} {name}", self.shared.spec.name),
                otel.kind = "server",
                messaging.system = "nats",
                messaging.destination.name = %message.subject,
                endpoint = name,
                id = %request_flow.id,
                correlationid = %request_flow.correlationid,
                // Given here, not recorded afterwards: a JSON log layer re-parses and
                // re-writes a span's fields on every later record.
                trace_id = request_flow.traceparent.as_ref().map(|tp| tp.trace_id.as_str()),
            );
            if let Some(parent) = parent {
                propagation::set_parent(&span, parent);
                served_in = propagation::span_context(&span);
            }
            flow = Some(request_flow);
            // The decoded request reaches the handler here.
            let result = AssertUnwindSafe((self.handler)(request))
                .catch_unwind()
                .instrument(span)
                .await;
            match result {
                Ok(result) => Ok((result?, subject_attr)),
                Err(panic) => {
                    let what = panic_message(&*panic);
                    tracing::error!(endpoint = name, panic = %what, "handler panicked");
                    Err(ErrorBody::new(
                        ErrorCode::Internal,
                        format!("the handler of `{name}` failed unexpectedly"),
                    ))
                }
            }
        }
        .await;

        let (bytes, traceparent, error) = match outcome {
            Ok((data, subject)) => {
                let flow = flow.as_ref().expect("a served request has its flow");
                let traceparent = match &served_in {
                    Some(sc) => propagation::traceparent_of(sc),
                    None => flow
                        .traceparent
                        .as_ref()
                        .map(TraceParent::child)
                        .unwrap_or_else(TraceParent::new_root),
                }
                .header_value();
                let mut id = uuid::Uuid::encode_buffer();
                let reply = EnvelopeRef {
                    specversion: SPEC_VERSION,
                    id: uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id),
                    source: &self.shared.spec.source,
                    ty: &self.reply_type,
                    time: Some(chrono::Utc::now()),
                    datacontenttype: Some("application/json"),
                    dataschema: Some(&self.reply_schema),
                    subject: subject.as_deref(),
                    correlationid: Some(&flow.correlationid),
                    causationid: Some(&flow.id),
                    priority: None,
                    traceparent: Some(&traceparent),
                    data: &data,
                };
                (encode_ref(&reply, reply_encoding), Some(traceparent), None)
            }
            Err(body) => {
                let builder = Envelope::builder(self.shared.spec.source.clone(), body.clone());
                let builder = match &flow {
                    Some(flow) => builder.caused_by(flow),
                    None => builder,
                };
                let envelope = match &served_in {
                    Some(sc) => builder.traceparent(propagation::traceparent_of(sc)),
                    None => builder,
                }
                .build();
                (
                    encode(&envelope, reply_encoding),
                    envelope.traceparent,
                    Some(body),
                )
            }
        };
        let (bytes, error) = match bytes {
            Ok(bytes) => (bytes, error),
            Err(e) => {
                let body = ErrorBody::new(ErrorCode::Internal, e.to_string());
                let envelope =
                    Envelope::builder(self.shared.spec.source.clone(), body.clone()).build();
                (
                    encode(&envelope, Encoding::Json).unwrap_or_default(),
                    Some(body),
                )
            }
        };
        let (bytes, error) = oversized(
            &self.shared.client,
            name,
            &self.shared.spec.source,
            reply_encoding,
            bytes,
            error,
        );

        match message.reply.clone() {
            Some(reply) => {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE_HEADER, reply_encoding.content_type());
                if let Some(tp) = &traceparent {
                    headers.insert(TRACEPARENT_HEADER, tp.as_str());
                    if let Some(sc) = &served_in {
                        propagation::add_tracestate_of(&mut headers, tp, sc);
                    }
                }
                if let Some(e) = &error {
                    // A header value cannot hold a line break; the body keeps the original.
                    let description = e.message.replace(['\r', '\n'], " ");
                    headers.insert(SERVICE_ERROR_HEADER, description.as_str());
                    headers.insert(
                        SERVICE_ERROR_CODE_HEADER,
                        e.code.status().to_string().as_str(),
                    );
                }
                // Asked for a signed reply (a gate verdict): signed by this process's
                // identity over the reply subject and bytes.
                if sign_reply && let Some(signer) = crate::auth::process_signer() {
                    signer.apply(&mut headers, &reply, &bytes);
                }
                if let Err(e) = self
                    .shared
                    .client
                    .publish_with_headers(reply, headers, Bytes::from(bytes))
                    .await
                {
                    tracing::warn!(endpoint = name, error = %e, "cannot send reply");
                }
            }
            None => {
                if let Some(e) = &error {
                    // Nobody to tell: park the message so that it is not lost.
                    match &self.shared.dead_letters {
                        Some(dlq) => {
                            dlq.park_message(name, &message, &e.to_string(), None).await;
                        }
                        None => tracing::warn!(
                            endpoint = name,
                            error = %e,
                            "refused a message without reply subject and no dead-letter stream is configured"
                        ),
                    }
                }
            }
        }
        error
    }
}

/// Room left in a reply for its headers under the server's `max_payload`.
const REPLY_HEADER_ROOM: usize = 4096;

/// A reply the server would refuse (over its `max_payload`) never reaches the caller,
/// who would only time out: it becomes a `413 too_large` error envelope telling the
/// caller to ask for less and follow the pages.
fn oversized(
    client: &async_nats::Client,
    name: &str,
    source: &str,
    encoding: Encoding,
    bytes: Vec<u8>,
    error: Option<ErrorBody>,
) -> (Vec<u8>, Option<ErrorBody>) {
    // The atomic the client keeps, not `server_info()`, which clones the whole INFO.
    let limit = client.max_payload();
    if limit == 0 || bytes.len() + REPLY_HEADER_ROOM <= limit {
        return (bytes, error);
    }
    let body = ErrorBody::new(
        ErrorCode::TooLarge,
        format!(
            "the reply of `{name}` would be {} bytes, over the server's max_payload of {limit}: ask for fewer (`limit`) and follow `next_cursor` page by page",
            bytes.len()
        ),
    );
    let envelope = Envelope::builder(source.to_owned(), body.clone()).build();
    (encode(&envelope, encoding).unwrap_or_default(), Some(body))
}
