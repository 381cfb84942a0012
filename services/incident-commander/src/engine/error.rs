//! Why a command on the engine was refused; turned into the wire [`ErrorBody`] only at
//! the endpoint.

use toronto_protocol::incidents::IncidentState;
use toronto_protocol::{ErrorBody, ErrorCode};
use uuid::Uuid;

/// A command the engine refused, or a record it could not encode.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A required text field is empty.
    #[error("{field}: empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A list of matchers is empty.
    #[error("{what}: at least one matcher is needed")]
    NoMatchers {
        /// The list.
        what: &'static str,
    },
    /// A matcher has no label name.
    #[error("{what}[{index}].name: empty")]
    UnnamedMatcher {
        /// The list.
        what: &'static str,
        /// The matcher's index.
        index: usize,
    },
    /// A regular-expression matcher does not compile.
    #[error("{what}[{index}].value: not a regular expression: {source}")]
    BadRegex {
        /// The list.
        what: &'static str,
        /// The matcher's index.
        index: usize,
        /// What the regex crate said.
        #[source]
        source: regex::Error,
    },
    /// A silence that would end before it starts.
    #[error("ends_at: not after starts_at")]
    SilenceEndsBeforeStart,
    /// `incident.playbook.run` without a name, and no playbook matched.
    #[error("playbook: none matched this incident; name one")]
    NoPlaybookNamed,
    /// No such incident.
    #[error("no incident {0}")]
    NoIncident(Uuid),
    /// No such silence.
    #[error("no silence {0}")]
    NoSilence(Uuid),
    /// No such inhibition rule.
    #[error("no inhibition rule {0}")]
    NoInhibition(Uuid),
    /// No such playbook in the policy.
    #[error("no playbook {0}")]
    NoPlaybook(String),
    /// A list `cursor` this service did not give.
    #[error(
        "`cursor` `{0}` is not one this service gave: pass the `next_cursor` of the page before"
    )]
    BadCursor(String),
    /// The incident is resolved or closed (acknowledging it).
    #[error("incident {id} is {}", state_word(*state))]
    Finished {
        /// The incident.
        id: Uuid,
        /// Its state.
        state: IncidentState,
    },
    /// The incident is resolved or closed.
    #[error("incident {0} is not open")]
    NotOpen(Uuid),
    /// The incident is still open (writing its postmortem).
    #[error("incident {0} is not resolved yet")]
    NotResolved(Uuid),
    /// The silence already ended.
    #[error("silence {0} already ended")]
    SilenceEnded(Uuid),
    /// A playbook runs on the incident.
    #[error("a playbook is running")]
    PlaybookRunning,
    /// A record could not be encoded (it is not written).
    #[error("cannot encode {what}")]
    Encode {
        /// The record.
        what: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

fn state_word(state: IncidentState) -> String {
    format!("{state:?}").to_lowercase()
}

impl EngineError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Empty { .. }
            | Self::NoMatchers { .. }
            | Self::UnnamedMatcher { .. }
            | Self::BadRegex { .. }
            | Self::SilenceEndsBeforeStart
            | Self::BadCursor(_)
            | Self::NoPlaybookNamed => ErrorCode::BadRequest,
            Self::NoIncident(_)
            | Self::NoSilence(_)
            | Self::NoInhibition(_)
            | Self::NoPlaybook(_) => ErrorCode::NotFound,
            Self::Finished { .. }
            | Self::NotOpen(_)
            | Self::NotResolved(_)
            | Self::SilenceEnded(_)
            | Self::PlaybookRunning => ErrorCode::Conflict,
            Self::Encode { .. } => ErrorCode::Internal,
        }
    }
}

impl From<EngineError> for ErrorBody {
    fn from(e: EngineError) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_keep_code_and_message() {
        let id = Uuid::nil();
        let body = ErrorBody::from(EngineError::Finished {
            id,
            state: IncidentState::Resolved,
        });
        assert_eq!(body.code, ErrorCode::Conflict);
        assert_eq!(body.message, format!("incident {id} is resolved"));
        let body = ErrorBody::from(EngineError::NoIncident(id));
        assert_eq!(body.code, ErrorCode::NotFound);
        let body = ErrorBody::from(EngineError::Empty { field: "by" });
        assert_eq!(
            (body.code, body.message.as_str()),
            (ErrorCode::BadRequest, "by: empty")
        );
    }
}
