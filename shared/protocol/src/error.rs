//! Errors on the bus: the code table, the error envelope's payload, and the
//! protocol-level failures that map onto it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;

/// ADR-32 header carrying the error description.
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// ADR-32 header carrying the numeric error code.
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// The error codes of the contract, each with its ADR-32 numeric code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request cannot be understood (malformed, missing attribute, wrong type).
    BadRequest,
    /// 401: the caller is not authenticated.
    Unauthorized,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: the thing asked for does not exist.
    NotFound,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 413: the payload is over the configured limit.
    TooLarge,
    /// 422: the message's major version is not supported.
    UnsupportedVersion,
    /// 503: a dependency is not available.
    Unavailable,
    /// 504: a dependency did not answer in time.
    Timeout,
    /// 500: a fault of ours.
    Internal,
}

impl ErrorCode {
    /// All codes, in table order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    /// The numeric code sent in `Nats-Service-Error-Code`.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedVersion => 422,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// The code's name as it appears in the error envelope, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code for a numeric status; unknown numbers are `internal`.
    pub fn from_status(status: u16) -> Self {
        Self::ALL
            .into_iter()
            .find(|code| code.status() == status)
            .unwrap_or(ErrorCode::Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Payload of the error envelope (`ai.toronto.devops.error.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// A sentence for humans.
    pub message: String,
    /// Machine-readable particulars (e.g. the supported versions, the offending field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds machine-readable details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.code.status(),
            self.message
        )
    }
}

impl std::error::Error for ErrorBody {}

impl Message for ErrorBody {
    const NAME: &'static str = "error";
    const MAJOR: u32 = 1;
}

/// A message that does not meet the contract.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes are not a JSON or MessagePack document of the envelope's shape.
    #[error("malformed {encoding} envelope: {reason}")]
    Malformed {
        /// `json` or `msgpack`.
        encoding: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The `Content-Type` header names an encoding we do not speak.
    #[error(
        "unsupported content type `{0}`: use application/cloudevents+json or application/cloudevents+msgpack"
    )]
    UnsupportedContentType(String),
    /// A required CloudEvents attribute is absent or empty.
    #[error("missing required attribute `{0}`")]
    MissingAttribute(&'static str),
    /// An attribute has a value the contract does not allow.
    #[error("invalid attribute `{attribute}`: {reason}")]
    InvalidAttribute {
        /// The attribute's name.
        attribute: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// `type` is not of the form `ai.toronto.devops.<name>.v<N>`.
    #[error("invalid type `{value}`: {reason}")]
    InvalidType {
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The message's type is not the one this endpoint takes.
    #[error("type `{got}` is not accepted here; expected one of {expected:?}")]
    WrongType {
        /// The type received.
        got: String,
        /// The types accepted.
        expected: Vec<String>,
    },
    /// The message's major version is not supported.
    #[error("type `{got}` has an unsupported version; supported: {supported:?}")]
    UnsupportedVersion {
        /// The type received.
        got: String,
        /// The types accepted.
        supported: Vec<String>,
    },
    /// The envelope has no `data` (CloudEvents allows that) but its type needs some.
    #[error("`data` is required for type `{ty}`")]
    MissingData {
        /// The envelope's type.
        ty: String,
    },
    /// `data` does not match the payload type.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// The payload is over the limit.
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Encoding an outgoing message failed.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl ProtocolError {
    /// The contract's code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProtocolError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtocolError::Encode(_) => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }

    /// The error envelope payload describing this failure.
    pub fn to_body(&self) -> ErrorBody {
        let body = ErrorBody::new(self.code(), self.to_string());
        match self {
            ProtocolError::UnsupportedVersion { got, supported } => {
                body.with_details(serde_json::json!({ "received": got, "supported": supported }))
            }
            ProtocolError::WrongType { got, expected } => {
                body.with_details(serde_json::json!({ "received": got, "expected": expected }))
            }
            ProtocolError::MissingAttribute(attribute) => {
                body.with_details(serde_json::json!({ "attribute": attribute }))
            }
            ProtocolError::InvalidAttribute { attribute, .. } => {
                body.with_details(serde_json::json!({ "attribute": attribute }))
            }
            ProtocolError::TooLarge { size, limit } => {
                body.with_details(serde_json::json!({ "size": size, "limit": limit }))
            }
            _ => body,
        }
    }
}

impl From<ProtocolError> for ErrorBody {
    fn from(e: ProtocolError) -> Self {
        e.to_body()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table_matches_the_design() {
        let table: Vec<(u16, &str)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.status(), c.as_str()))
            .collect();
        assert_eq!(
            table,
            vec![
                (400, "bad_request"),
                (401, "unauthorized"),
                (403, "forbidden"),
                (404, "not_found"),
                (409, "conflict"),
                (413, "too_large"),
                (422, "unsupported_version"),
                (503, "unavailable"),
                (504, "timeout"),
                (500, "internal"),
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_status(code.status()), code);
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::json!(code.as_str()));
        }
    }

    #[test]
    fn unsupported_version_lists_what_is_supported() {
        let e = ProtocolError::UnsupportedVersion {
            got: "ai.toronto.devops.x.v9".into(),
            supported: vec!["ai.toronto.devops.x.v1".into()],
        };
        let body = e.to_body();
        assert_eq!(body.code, ErrorCode::UnsupportedVersion);
        assert_eq!(
            body.details.unwrap()["supported"],
            serde_json::json!(["ai.toronto.devops.x.v1"])
        );
    }
}
