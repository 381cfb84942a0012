//! Silences and inhibition rules: what holds alerts back, and its commands.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::message::Message;

/// A label matcher, as in Alertmanager's API: `name` equals (or, with `is_regex`,
/// fully matches) `value`; `is_equal: false` negates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// The value or regular expression.
    pub value: String,
    /// `value` is a regular expression (anchored).
    #[serde(default)]
    pub is_regex: bool,
    /// Match (true, default) or not match.
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

/// Creates a silence (`incident.silence.create`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceCreate {
    /// Every matcher must match for an alert to be silenced.
    pub matchers: Vec<Matcher>,
    /// From (default now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    /// Until.
    pub ends_at: DateTime<Utc>,
    /// Who.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

impl Message for SilenceCreate {
    const NAME: &'static str = "incident.silence.create";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.created_by);
    }
}

/// A silence, kept in the KV bucket `toronto_silences` (`silence.<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Silence {
    /// Its id.
    pub id: Uuid,
    /// The matchers.
    pub matchers: Vec<Matcher>,
    /// From.
    pub starts_at: DateTime<Utc>,
    /// Until (set to the expiry time when expired early).
    pub ends_at: DateTime<Utc>,
    /// Who.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// Who expired it early, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
}

impl Message for Silence {
    const NAME: &'static str = "silence";
    const MAJOR: u32 = 1;
}

/// Lists silences (`incident.silence.list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceList {
    /// Only those in force now.
    #[serde(default)]
    pub active: bool,
}

impl Message for SilenceList {
    const NAME: &'static str = "incident.silence.list";
    const MAJOR: u32 = 1;
}

/// Silences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Silences {
    /// Newest first.
    pub silences: Vec<Silence>,
}

impl Message for Silences {
    const NAME: &'static str = "silences";
    const MAJOR: u32 = 1;
}

/// Expires a silence now (`incident.silence.expire`); its alerts that still fire are
/// handled again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceExpire {
    /// The silence.
    pub id: Uuid,
    /// Who.
    pub by: String,
}

impl Message for SilenceExpire {
    const NAME: &'static str = "incident.silence.expire";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}

/// Creates an inhibition rule (`incident.inhibition.create`): while an alert matching
/// `source_matchers` fires, alerts matching `target_matchers` with the same values of
/// the `equal` labels are held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitionCreate {
    /// What the inhibiting alert matches.
    pub source_matchers: Vec<Matcher>,
    /// What the inhibited alert matches.
    pub target_matchers: Vec<Matcher>,
    /// Labels whose values must be equal in both.
    #[serde(default)]
    pub equal: Vec<String>,
    /// Who.
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

impl Message for InhibitionCreate {
    const NAME: &'static str = "incident.inhibition.create";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.created_by);
    }
}

/// An inhibition rule, kept in the KV bucket `toronto_silences` (`inhibition.<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InhibitionRule {
    /// Its id.
    pub id: Uuid,
    /// What the inhibiting alert matches.
    pub source_matchers: Vec<Matcher>,
    /// What the inhibited alert matches.
    pub target_matchers: Vec<Matcher>,
    /// Labels whose values must be equal in both.
    #[serde(default)]
    pub equal: Vec<String>,
    /// Who.
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl Message for InhibitionRule {
    const NAME: &'static str = "inhibition.rule";
    const MAJOR: u32 = 1;
}

/// Lists inhibition rules (`incident.inhibition.list`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitionList {}

impl Message for InhibitionList {
    const NAME: &'static str = "incident.inhibition.list";
    const MAJOR: u32 = 1;
}

/// Inhibition rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InhibitionRules {
    /// Oldest first.
    pub rules: Vec<InhibitionRule>,
}

impl Message for InhibitionRules {
    const NAME: &'static str = "inhibition.rules";
    const MAJOR: u32 = 1;
}

/// Deletes an inhibition rule (`incident.inhibition.delete`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitionDelete {
    /// The rule.
    pub id: Uuid,
    /// Who.
    pub by: String,
}

impl Message for InhibitionDelete {
    const NAME: &'static str = "incident.inhibition.delete";
    const MAJOR: u32 = 1;
    const ACCESS: crate::auth::Access = crate::auth::Access::OPERATOR;

    fn attribute(&mut self, principal: &str) {
        principal.clone_into(&mut self.by);
    }
}
