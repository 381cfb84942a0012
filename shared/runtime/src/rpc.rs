//! Typed requests to other services: encode, send with headers, decode the reply or
//! the error envelope.

use std::time::Duration;

use crate::auth::Signer;
use crate::service::header;
use async_nats::client::{Request as NatsRequest, RequestErrorKind};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use toronto_protocol::codec::CONTENT_TYPE_HEADER;
use toronto_protocol::error::{SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use toronto_protocol::trace::TRACEPARENT_HEADER;
use toronto_protocol::{
    Encoding, Envelope, ErrorBody, ErrorCode, Message, ProtocolError, RawEnvelope, decode,
    decode_raw, encode,
};

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nobody serves the subject.
    #[error("no service answers on {0}")]
    NoResponders(String),
    /// The service did not answer in time.
    #[error("{subject} did not answer within {after:?}")]
    Timeout {
        /// The subject.
        subject: String,
        /// The timeout.
        after: Duration,
    },
    /// The service answered with an error envelope.
    #[error("{0}")]
    Remote(ErrorBody),
    /// The request or the reply does not meet the contract.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The connection failed.
    #[error("request to {subject} failed: {reason}")]
    Nats {
        /// The subject.
        subject: String,
        /// What went wrong.
        reason: String,
    },
}

impl CallError {
    /// The contract's code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::NoResponders(_) => ErrorCode::Unavailable,
            CallError::Timeout { .. } => ErrorCode::Timeout,
            CallError::Remote(body) => body.code,
            CallError::Protocol(e) => e.code(),
            CallError::Nats { .. } => ErrorCode::Unavailable,
        }
    }
}

/// Sends `envelope` to `subject` in `encoding` and decodes the reply as `Resp`,
/// signed with this process's identity when one is installed
/// ([`crate::auth::install_process_signer`]).
pub async fn call<Req: Message, Resp: Message>(
    client: &Client,
    subject: &str,
    envelope: &Envelope<Req>,
    encoding: Encoding,
    timeout: Duration,
) -> Result<Envelope<Resp>, CallError> {
    let signer = crate::auth::process_signer();
    call_signed(
        client,
        signer.as_ref(),
        subject,
        envelope,
        encoding,
        timeout,
    )
    .await
}

/// Like [`call`], signed by `signer` (see [`crate::auth`]) when one is given.
pub async fn call_signed<Req: Message, Resp: Message>(
    client: &Client,
    signer: Option<&Signer>,
    subject: &str,
    envelope: &Envelope<Req>,
    encoding: Encoding,
    timeout: Duration,
) -> Result<Envelope<Resp>, CallError> {
    let (payload, reply_encoding) =
        send(client, signer, subject, envelope, encoding, timeout).await?;
    Ok(decode(&payload, reply_encoding)?)
}

/// Like [`call`] for an envelope whose `type` and `data` are not a Rust type of the
/// contract (a command built from text, a type another service owns): the reply's
/// attributes are validated and its `data` is left untyped.
pub async fn call_raw(
    client: &Client,
    subject: &str,
    envelope: &RawEnvelope,
    encoding: Encoding,
    timeout: Duration,
) -> Result<RawEnvelope, CallError> {
    let signer = crate::auth::process_signer();
    call_raw_signed(
        client,
        signer.as_ref(),
        subject,
        envelope,
        encoding,
        timeout,
    )
    .await
}

/// Like [`call_raw`], signed by `signer` when one is given.
pub async fn call_raw_signed(
    client: &Client,
    signer: Option<&Signer>,
    subject: &str,
    envelope: &RawEnvelope,
    encoding: Encoding,
    timeout: Duration,
) -> Result<RawEnvelope, CallError> {
    let (payload, reply_encoding) =
        send(client, signer, subject, envelope, encoding, timeout).await?;
    Ok(decode_raw(&payload, reply_encoding)?)
}

/// A reply with what proves who sent it (see [`call_for_signed_reply`]).
#[derive(Debug)]
pub struct SignedReply<Resp> {
    /// The decoded reply.
    pub envelope: Envelope<Resp>,
    /// The subject it came on (the requester's inbox; the signature covers it).
    pub subject: String,
    /// Its headers (the signature headers, when the responder signed).
    pub headers: Option<HeaderMap>,
    /// Its bytes as received.
    pub payload: Bytes,
}

/// Like [`call`], asking the responder to sign its reply
/// ([`toronto_protocol::auth::SIGN_REPLY_HEADER`]); the caller verifies it, e.g. with
/// [`crate::auth::Authenticator::verify_reply`].
pub async fn call_for_signed_reply<Req: Message, Resp: Message>(
    client: &Client,
    subject: &str,
    envelope: &Envelope<Req>,
    timeout: Duration,
) -> Result<SignedReply<Resp>, CallError> {
    let signer = crate::auth::process_signer();
    let reply = send_message(
        client,
        signer.as_ref(),
        subject,
        envelope,
        Encoding::Json,
        timeout,
        true,
    )
    .await?;
    let (payload, encoding) = check_reply(&reply)?;
    Ok(SignedReply {
        envelope: decode(&payload, encoding)?,
        subject: reply.subject.to_string(),
        headers: reply.headers.clone(),
        payload,
    })
}

/// Sends the request and returns the reply's bytes and encoding, or the error it carried.
async fn send<T: serde::Serialize>(
    client: &Client,
    signer: Option<&Signer>,
    subject: &str,
    envelope: &Envelope<T>,
    encoding: Encoding,
    timeout: Duration,
) -> Result<(Bytes, Encoding), CallError> {
    let reply = send_message(client, signer, subject, envelope, encoding, timeout, false).await?;
    check_reply(&reply)
}

/// Sends the request and returns the reply message.
async fn send_message<T: serde::Serialize>(
    client: &Client,
    signer: Option<&Signer>,
    subject: &str,
    envelope: &Envelope<T>,
    encoding: Encoding,
    timeout: Duration,
    sign_reply: bool,
) -> Result<async_nats::Message, CallError> {
    let bytes = encode(envelope, encoding)?;
    let mut headers = HeaderMap::new();
    if sign_reply {
        headers.insert(toronto_protocol::auth::SIGN_REPLY_HEADER, "1");
    }
    headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
    if let Some(tp) = &envelope.traceparent {
        headers.insert(TRACEPARENT_HEADER, tp.as_str());
        if crate::telemetry::exporting() {
            crate::telemetry::propagation::add_tracestate(&mut headers, tp);
        }
    }
    if let Some(signer) = signer {
        signer.apply(&mut headers, subject, &bytes);
    }
    let request = NatsRequest::new()
        .payload(Bytes::from(bytes))
        .headers(headers)
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject.to_owned(), request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => CallError::NoResponders(subject.to_owned()),
            RequestErrorKind::TimedOut => CallError::Timeout {
                subject: subject.to_owned(),
                after: timeout,
            },
            _ => CallError::Nats {
                subject: subject.to_owned(),
                reason: e.to_string(),
            },
        })?;
    Ok(reply)
}

/// The reply's bytes and encoding, or the error it carried.
fn check_reply(reply: &async_nats::Message) -> Result<(Bytes, Encoding), CallError> {
    let headers = reply.headers.as_ref();
    let reply_encoding = Encoding::from_content_type(header(headers, CONTENT_TYPE_HEADER))?;
    let error_code = header(headers, SERVICE_ERROR_CODE_HEADER).and_then(|v| v.parse::<u16>().ok());
    if let Some(status) = error_code {
        let body = decode::<ErrorBody>(&reply.payload, reply_encoding)
            .map(|e| e.data)
            .unwrap_or_else(|_| {
                ErrorBody::new(
                    ErrorCode::from_status(status),
                    header(headers, SERVICE_ERROR_HEADER)
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("error {status}")),
                )
            });
        return Err(CallError::Remote(body));
    }
    Ok((reply.payload.clone(), reply_encoding))
}
