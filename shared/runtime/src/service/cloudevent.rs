//! Decoding a received NATS message into an envelope in either CloudEvents content
//! mode: structured (the envelope is the body, its encoding in `Content-Type`) or
//! binary (`ce-*` headers, the body is the bare `data`; see
//! [`toronto_protocol::codec::binary`]). Every intake the runtime serves (requests,
//! and through these functions queued tasks and events) accepts both.

use async_nats::HeaderMap;
use toronto_protocol::codec::{CONTENT_TYPE_HEADER, DecodeFailure, binary};
use toronto_protocol::{Encoding, Envelope, Message, ProtocolError, RawEnvelope};

use super::request::RequestDecoder;

/// Looks a header up by name, ignoring ASCII case (the CloudEvents bindings name
/// headers in lowercase; NATS keeps the case it was sent with).
fn lookup(headers: Option<&HeaderMap>) -> impl Fn(&str) -> Option<String> + '_ {
    move |name: &str| {
        // The exact name first, else the first that differs only in case; one pass,
        // without building a `HeaderName`.
        let mut folded = None;
        for (k, values) in headers?.iter() {
            let k: &str = k.as_ref();
            if k == name {
                return values.first().map(|v| v.as_str().to_owned());
            }
            if folded.is_none() && k.eq_ignore_ascii_case(name) {
                folded = values.first();
            }
        }
        folded.map(|v| v.as_str().to_owned())
    }
}

/// Whether a message with these headers is in binary content mode.
pub fn is_binary(headers: Option<&HeaderMap>) -> bool {
    headers.is_some() && binary::is_binary(lookup(headers))
}

fn structured_encoding(headers: Option<&HeaderMap>) -> Result<Encoding, ProtocolError> {
    Encoding::from_content_type(lookup(headers)(CONTENT_TYPE_HEADER).as_deref())
}

/// Decodes a received message whose payload is `T`, in either content mode.
pub fn decode_message<T: Message>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Envelope<T>, ProtocolError> {
    decode_message_with_flow(headers, payload).map_err(|(e, _)| e)
}

/// Like [`decode_message`], but a failure after the attributes were read still
/// returns the message's flow.
pub fn decode_message_with_flow<T: Message>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Envelope<T>, DecodeFailure> {
    if is_binary(headers) {
        return binary::decode_binary(lookup(headers), payload);
    }
    let encoding = structured_encoding(headers).map_err(|e| (e, None))?;
    toronto_protocol::codec::decode_with_flow(payload, encoding)
}

/// Decodes a received message in either content mode, leaving `data` untyped.
pub fn decode_message_raw(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<RawEnvelope, ProtocolError> {
    if is_binary(headers) {
        return binary::decode_binary_raw(lookup(headers), payload);
    }
    toronto_protocol::decode_raw(payload, structured_encoding(headers)?)
}

/// Decodes a request for an endpoint: binary mode through the endpoint's checks
/// ([`RequestDecoder::check_raw`]), structured mode in `encoding` (the request's
/// `Content-Type`, already read).
pub(super) fn decode_request<D: RequestDecoder>(
    decoder: &D,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    encoding: Result<Encoding, ProtocolError>,
) -> Result<Envelope<D::Data>, DecodeFailure> {
    if is_binary(headers) {
        let raw = binary::decode_binary_raw(lookup(headers), payload).map_err(|e| (e, None))?;
        return decoder.check_raw(raw);
    }
    decoder.decode(payload, encoding.map_err(|e| (e, None))?)
}

#[cfg(test)]
mod tests {
    use toronto_protocol::status::StatusRequest;

    use super::*;

    #[test]
    fn both_modes_decode_to_the_same_envelope() {
        let env = Envelope::builder("toronto://test", StatusRequest::default())
            .subject("shop")
            .build();
        let structured = toronto_protocol::encode(&env, Encoding::Json).unwrap();
        let back: Envelope<StatusRequest> = decode_message(None, &structured).unwrap();
        assert_eq!(back, env);

        let mut headers = HeaderMap::new();
        headers.insert("CE-SpecVersion", "1.0");
        headers.insert("ce-id", env.id.as_str());
        headers.insert("ce-source", env.source.as_str());
        headers.insert("ce-type", env.ty.as_str());
        headers.insert("ce-subject", "shop");
        headers.insert("Content-Type", "application/json");
        let back: Envelope<StatusRequest> = decode_message(Some(&headers), b"{}").unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(back.subject.as_deref(), Some("shop"));
        let raw = decode_message_raw(Some(&headers), b"").unwrap();
        assert!(raw.data.is_null());

        // A structured message that also carries ce- headers stays structured.
        headers.insert("Content-Type", "application/cloudevents+json");
        assert!(!is_binary(Some(&headers)));
        assert_eq!(
            decode_message::<StatusRequest>(Some(&headers), &structured)
                .unwrap()
                .id,
            env.id
        );
    }
}
