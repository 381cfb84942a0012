//! What a handler receives, and how an endpoint decodes it: one typed payload, or any
//! of several accepted types at their supported majors.

use async_nats::HeaderMap;
use toronto_protocol::codec::{DecodeFailure, decode_with_flow};
use toronto_protocol::envelope::FlowContext;
use toronto_protocol::{Encoding, Envelope, ErrorBody, Message, ProtocolError, RawEnvelope};

/// A decoded, validated request handed to a handler.
#[derive(Debug)]
pub struct Request<T> {
    /// The request envelope with its typed payload.
    pub envelope: Envelope<T>,
    /// The NATS headers it came with.
    pub headers: Option<HeaderMap>,
    /// The subject it was sent to.
    pub subject: String,
    /// The verified sender, when the endpoint's access rule asked for one.
    pub caller: Option<std::sync::Arc<crate::auth::Caller>>,
}

impl<T> Request<T> {
    /// The payload.
    pub fn data(&self) -> &T {
        &self.envelope.data
    }

    /// The verified principal (the human a delegate acts for, or the signer), when the
    /// endpoint's access rule asked for one and the mode is not `off`.
    pub fn principal(&self) -> Option<&toronto_protocol::auth::Principal> {
        self.caller.as_deref().map(crate::auth::Caller::principal)
    }

    /// The attributes a follow-up message inherits.
    pub fn flow(&self) -> FlowContext {
        self.envelope.flow()
    }

    /// Records a decision the handler made itself on this request (a rule of the
    /// service such as the two-person rule) as an `audit.decision` event named
    /// `action`; `refusal` is `None` when it allowed it.
    pub async fn audit(
        &self,
        auth: Option<&crate::auth::Authenticator>,
        action: &str,
        refusal: Option<&crate::auth::Refusal>,
    ) {
        let Some(auth) = auth else { return };
        let id = self.envelope.id.to_string();
        let presented = crate::auth::Presented {
            subject: &self.subject,
            headers: self.headers.as_ref(),
            payload: &[],
            id: &id,
            source: &self.envelope.source,
            target: self.envelope.subject.as_deref(),
        };
        auth.record(action, &presented, self.caller.as_deref(), refusal)
            .await;
    }
}

/// How an endpoint turns request bytes into a typed envelope.
pub(super) trait RequestDecoder: Send + Sync + 'static {
    /// The payload handed to the handler.
    type Data: Send + 'static;
    /// Decodes and checks the request; on failure, the request's flow if it was read.
    fn decode(
        &self,
        bytes: &[u8],
        encoding: Encoding,
    ) -> Result<Envelope<Self::Data>, DecodeFailure>;
    /// Checks a request already decoded in binary content mode.
    fn check_raw(&self, raw: RawEnvelope) -> Result<Envelope<Self::Data>, DecodeFailure>;
    /// The request types, for `$SRV.INFO`.
    fn request_types(&self) -> Vec<(String, String)>;
    /// Who may send it (the request type's [`Message::ACCESS`]).
    fn access(&self) -> toronto_protocol::auth::Access {
        toronto_protocol::auth::Access::Open
    }
    /// Writes the verified principal into the request ([`Message::attribute`]).
    fn attribute(_data: &mut Self::Data, _principal: &str) {}
}

/// One payload type: decoded straight into `T`.
pub(super) struct Typed<T>(pub(super) std::marker::PhantomData<fn() -> T>);

impl<T: Message> RequestDecoder for Typed<T> {
    type Data = T;
    fn decode(&self, bytes: &[u8], encoding: Encoding) -> Result<Envelope<T>, DecodeFailure> {
        decode_with_flow::<T>(bytes, encoding)
    }
    fn check_raw(&self, raw: RawEnvelope) -> Result<Envelope<T>, DecodeFailure> {
        let flow = Box::new(raw.flow());
        raw.into_typed().map_err(|e| (e, Some(flow)))
    }
    fn request_types(&self) -> Vec<(String, String)> {
        vec![(T::message_type().to_string(), T::schema_uri())]
    }
    fn access(&self) -> toronto_protocol::auth::Access {
        T::ACCESS
    }
    fn attribute(data: &mut T, principal: &str) {
        data.attribute(principal);
    }
}

/// The request types an endpoint built with
/// [`ServiceHost::add_endpoint_any`](crate::service::ServiceHost::add_endpoint_any) takes,
/// each at its current major and the one before.
#[derive(Debug, Clone, Default)]
pub struct Accepts {
    types: Vec<AcceptedType>,
}

#[derive(Debug, Clone)]
struct AcceptedType {
    name: &'static str,
    supported: Vec<String>,
    majors: Vec<u32>,
    current: String,
    schema: String,
}

impl Accepts {
    /// Takes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also takes `T`.
    pub fn with<T: Message>(mut self) -> Self {
        self.types.push(AcceptedType {
            name: T::NAME,
            supported: T::supported_types(),
            majors: T::supported_majors(),
            current: T::message_type().to_string(),
            schema: T::schema_uri(),
        });
        self
    }

    /// Whether `ty` is one of the accepted types at a supported major.
    pub fn check(&self, ty: &toronto_protocol::MessageType) -> Result<(), ProtocolError> {
        match self.types.iter().find(|t| t.name == ty.name) {
            None => Err(ProtocolError::WrongType {
                got: ty.to_string(),
                expected: self.types.iter().map(|t| t.current.clone()).collect(),
            }),
            Some(t) if !t.majors.contains(&ty.major) => Err(ProtocolError::UnsupportedVersion {
                got: ty.to_string(),
                supported: t.supported.clone(),
            }),
            Some(_) => Ok(()),
        }
    }
}

impl RequestDecoder for Accepts {
    type Data = serde_json::Value;
    fn decode(
        &self,
        bytes: &[u8],
        encoding: Encoding,
    ) -> Result<Envelope<serde_json::Value>, DecodeFailure> {
        let raw = toronto_protocol::decode_raw(bytes, encoding).map_err(|e| (e, None))?;
        self.check_raw(raw)
    }
    fn check_raw(&self, raw: RawEnvelope) -> Result<Envelope<serde_json::Value>, DecodeFailure> {
        let flow = Box::new(raw.flow());
        let ty = raw.message_type().map_err(|e| (e, Some(flow.clone())))?;
        self.check(&ty).map_err(|e| (e, Some(flow)))?;
        Ok(raw)
    }
    fn request_types(&self) -> Vec<(String, String)> {
        self.types
            .iter()
            .map(|t| (t.current.clone(), t.schema.clone()))
            .collect()
    }
}

impl Request<serde_json::Value> {
    /// The payload as `T`, when the request's `type` names `T` (older majors go
    /// through [`Message::upgrade`]); `None` for another type, an error for bad data.
    pub fn typed<T: Message>(&self) -> Option<Result<Envelope<T>, ErrorBody>> {
        let ty = self.envelope.message_type().ok()?;
        (ty.name == T::NAME).then(|| {
            self.envelope
                .clone()
                .into_typed::<T>()
                .map_err(ErrorBody::from)
        })
    }
}
