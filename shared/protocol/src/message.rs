//! Message types: the `type` attribute (`ai.toronto.devops.<name>.v<N>`) and the
//! [`Message`] trait that ties a Rust payload type to its name, major version and schema.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ProtocolError;

/// Every `type` of ours starts with this.
pub const TYPE_PREFIX: &str = "ai.toronto.devops.";

/// The base of every schema URI: a payload's `dataschema` and its schema's `$id` are
/// this followed by its path under the repository's `schemas/` folder
/// (`https://toronto.dev/schemas/v1/plan.json` is `schemas/v1/plan.json`).
pub const SCHEMA_BASE_URI: &str = "https://toronto.dev/schemas/";

/// The absolute URI of a schema file given by its path under `schemas/`.
pub fn schema_uri(path: &str) -> String {
    let mut uri = String::with_capacity(SCHEMA_BASE_URI.len() + path.len());
    uri.push_str(SCHEMA_BASE_URI);
    uri.push_str(path);
    uri
}

/// A parsed `type` attribute: `ai.toronto.devops.<name>.v<major>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// Dotted name between the prefix and the version, e.g. `task.deploy`.
    pub name: String,
    /// Major version, the `N` of `.vN`.
    pub major: u32,
}

impl MessageType {
    /// Builds a type from its name and major version.
    pub fn new(name: impl Into<String>, major: u32) -> Self {
        Self {
            name: name.into(),
            major,
        }
    }

    /// The `type` attribute's text, in one allocation of the right size (what every
    /// envelope built carries; `to_string` gives the same text).
    pub fn attribute(&self) -> String {
        type_attribute(&self.name, self.major)
    }

    /// The name and major of a `type` attribute, borrowed from it; why not when it is
    /// malformed.
    pub fn parts(s: &str) -> Result<(&str, u32), &'static str> {
        let rest = s
            .strip_prefix(TYPE_PREFIX)
            .ok_or("must start with `ai.toronto.devops.`")?;
        let (name, version) = rest.rsplit_once('.').ok_or("must end in `.v<major>`")?;
        let major = version
            .strip_prefix('v')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok())
            .ok_or("must end in `.v<major>` with a decimal major")?;
        if !name.split('.').all(valid_token) {
            return Err("name tokens must be non-empty lowercase letters, digits, `_` or `-`");
        }
        Ok((name, major))
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TYPE_PREFIX)?;
        f.write_str(&self.name)?;
        f.write_str(".v")?;
        fmt::Display::fmt(&self.major, f)
    }
}

fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The `type` attribute naming `name` at `major`, in one allocation of the right size.
pub fn type_attribute(name: &str, major: u32) -> String {
    let mut digits = itoa::Buffer::new();
    let major = digits.format(major);
    let mut text = String::with_capacity(TYPE_PREFIX.len() + name.len() + 2 + major.len());
    text.push_str(TYPE_PREFIX);
    text.push_str(name);
    text.push_str(".v");
    text.push_str(major);
    text
}

/// The error for a malformed `type` attribute.
pub(crate) fn invalid_type(value: &str, reason: &str) -> ProtocolError {
    ProtocolError::InvalidType {
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

impl FromStr for MessageType {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, major) = Self::parts(s).map_err(|why| invalid_type(s, why))?;
        Ok(Self {
            name: name.to_owned(),
            major,
        })
    }
}

/// The `type` of an event: `ai.toronto.devops.<entity>.<what>.v<major>`, where
/// `<entity>.<what>` is the event's name (the tokens after `events.` in its subject,
/// e.g. `plan.created`) and `major` is its payload type's major. Every distinct event
/// has its own type; its `dataschema` stays the payload's schema.
pub fn event_type(entity: &str, what: &str, major: u32) -> MessageType {
    MessageType::new(format!("{entity}.{what}"), major)
}

/// A payload type of the contract.
///
/// `NAME` and `MAJOR` make the CloudEvents `type`; the JSON Schema comes from
/// `schemars`. A service accepts the current major and the one before it; a type
/// whose previous major differs in shape overrides [`Message::upgrade`].
pub trait Message: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// Dotted name, e.g. `status.request`.
    const NAME: &'static str;
    /// Current major version.
    const MAJOR: u32;
    /// Who may send it as a request (read-only requests are open); see
    /// `docs/trust-model.md`.
    const ACCESS: crate::auth::Access = crate::auth::Access::Open;

    /// Writes the verified principal's id into the fields that name who acts (`by`,
    /// `requested_by`, ...), so a handler never trusts what the caller wrote there.
    /// Types without such a field keep the default, which changes nothing.
    fn attribute(&mut self, _principal: &str) {}

    /// Whether this type is the data of the event named `name` (`plan.created`): an
    /// event's `type` is [`event_type`], and a typed decode of an event accepts it as
    /// well as the payload's own type (which events carried before they had their own,
    /// and which older events in the stream still carry). The default looks the
    /// event up in [`crate::event_kind::payload_of_event`].
    fn is_event(name: &str) -> bool {
        crate::event_kind::payload_of_event(name) == Some(Self::NAME)
    }

    /// The current `type` attribute.
    fn message_type() -> MessageType {
        MessageType::new(Self::NAME, Self::MAJOR)
    }

    /// Majors this build accepts: the current one and the one before (when there is one).
    fn supported_majors() -> Vec<u32> {
        if Self::MAJOR > 1 {
            vec![Self::MAJOR - 1, Self::MAJOR]
        } else {
            vec![Self::MAJOR]
        }
    }

    /// The `type` strings this build accepts, for `unsupported_version` errors.
    fn supported_types() -> Vec<String> {
        Self::supported_majors()
            .into_iter()
            .map(|major| MessageType::new(Self::NAME, major).to_string())
            .collect()
    }

    /// The schema file, relative to the repository's `schemas/` folder.
    fn schema_path() -> String {
        Self::schema_uri()[SCHEMA_BASE_URI.len()..].to_owned()
    }

    /// The schema's absolute URI: the `dataschema` attribute and the schema's `$id`
    /// (built in one allocation: every envelope built carries it).
    fn schema_uri() -> String {
        let mut digits = itoa::Buffer::new();
        let major = digits.format(Self::MAJOR);
        let mut uri = String::with_capacity(
            SCHEMA_BASE_URI.len() + 1 + major.len() + 1 + Self::NAME.len() + 5,
        );
        uri.push_str(SCHEMA_BASE_URI);
        uri.push('v');
        uri.push_str(major);
        uri.push('/');
        uri.push_str(Self::NAME);
        uri.push_str(".json");
        uri
    }

    /// Converts a payload of an accepted older major into the current type. The
    /// default treats the older major as wire-compatible (additive changes only).
    fn upgrade(major: u32, data: serde_json::Value) -> Result<Self, ProtocolError> {
        let _ = major;
        serde_json::from_value(data).map_err(|e| ProtocolError::InvalidData(e.to_string()))
    }

    /// Checks that `ty` names this message, or an event whose data it is
    /// ([`Message::is_event`]), at a supported major.
    fn check_type(ty: &MessageType) -> Result<(), ProtocolError> {
        if ty.name != Self::NAME && !Self::is_event(&ty.name) {
            return Err(ProtocolError::WrongType {
                got: ty.to_string(),
                expected: Self::supported_types(),
            });
        }
        if !Self::supported_majors().contains(&ty.major) {
            return Err(ProtocolError::UnsupportedVersion {
                got: ty.to_string(),
                supported: Self::supported_types(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_types() {
        let ty: MessageType = "ai.toronto.devops.task.deploy.v1".parse().unwrap();
        assert_eq!(ty.name, "task.deploy");
        assert_eq!(ty.major, 1);
        assert_eq!(ty.to_string(), "ai.toronto.devops.task.deploy.v1");
        assert_eq!(ty.attribute(), ty.to_string());
        assert_eq!(
            MessageType::new("plan", 12).attribute(),
            "ai.toronto.devops.plan.v12"
        );
        assert_eq!(
            MessageType::parts("ai.toronto.devops.a.b.v3"),
            Ok(("a.b", 3))
        );
    }

    #[test]
    fn schema_uris_name_the_schema_file() {
        assert_eq!(
            crate::tasks::DeployTask::schema_uri(),
            format!("{SCHEMA_BASE_URI}v1/task.deploy.json")
        );
        assert_eq!(
            crate::tasks::DeployTask::schema_path(),
            "v1/task.deploy.json"
        );
    }

    #[test]
    fn refuses_malformed_types() {
        for bad in [
            "",
            "ai.toronto.devops.v1",
            "com.example.task.v1",
            "ai.toronto.devops.task",
            "ai.toronto.devops.task.v",
            "ai.toronto.devops.task.vx",
            "ai.toronto.devops.Task.v1",
            "ai.toronto.devops..task.v1",
            "ai.toronto.devops.task.v-1",
        ] {
            assert!(bad.parse::<MessageType>().is_err(), "{bad:?} parsed");
        }
    }
}
