//! The chat bridge's side of the contract: the record of every chat command.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Message;

/// A command someone typed in chat (or sent with `toronto run`), published as the event
/// `<prefix>.devops.v1.events.chat.command` once it was handled: who asked, with which
/// role, what, and what came of it. Refused commands are recorded too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatCommandRecord {
    /// Where it was typed: `slack`, `mattermost` or `cli`.
    pub platform: String,
    /// The user's id on that platform (e.g. Slack's `U024BE7LH`).
    pub user_id: String,
    /// The user's name, as the platform sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// The role the user has in the bridge's configuration (`viewer`, `operator`,
    /// `admin`), absent for a user without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The channel it was typed in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The text, as typed.
    pub text: String,
    /// The command it parsed as (e.g. `deploy`), absent when it did not parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The role the command needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_role: Option<String>,
    /// `ok`, `usage` (did not parse), `forbidden` (role or approval rule), or `error`
    /// (the service it went to refused it or did not answer).
    pub outcome: String,
    /// The subject the command was sent to, if it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_subject: Option<String>,
    /// The reply or the reason, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When it was received.
    pub at: DateTime<Utc>,
}

impl Message for ChatCommandRecord {
    const NAME: &'static str = "chat.command";
    const MAJOR: u32 = 1;
}
