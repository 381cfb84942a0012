//! Where notifications go: the policy's `notifications:` section (channels, the
//! people's chat ids, defaults, retries) and secrets read from files or variables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// Slack's `chat.postMessage`.
pub const SLACK_URL: &str = "https://slack.com/api/chat.postMessage";

/// The `notifications:` section of the policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    /// Channels by name; levels name them in `channels:`.
    pub channels: BTreeMap<String, Channel>,
    /// Chat ids of the people paged (`user:<name>` targets and schedule participants).
    pub contacts: BTreeMap<String, Contact>,
    /// Channels of levels that name none.
    pub default_channels: Vec<String>,
    /// Sends tried per notification before it is parked in the dead-letter stream.
    pub max_attempts: u32,
    /// First retry delay in milliseconds (doubling, with jitter, up to `max_delay_ms`);
    /// a longer `Retry-After` from the receiver wins.
    pub min_delay_ms: u64,
    /// Longest retry delay in milliseconds.
    pub max_delay_ms: u64,
    /// Milliseconds a receiver may take to answer.
    pub timeout_ms: u64,
    /// Link to the incident in notifications (`{id}` is replaced by the incident id),
    /// e.g. `https://ops.example.com/incidents/{id}`.
    pub incident_url: Option<String>,
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            channels: BTreeMap::new(),
            contacts: BTreeMap::new(),
            default_channels: Vec::new(),
            max_attempts: 8,
            min_delay_ms: 1000,
            max_delay_ms: 300_000,
            timeout_ms: 10_000,
            incident_url: None,
        }
    }
}

impl Notifications {
    /// The retry delays, first first (exponential with jitter, from `backon`).
    pub fn backoff(&self) -> impl Iterator<Item = Duration> {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.min_delay_ms))
            .with_max_delay(Duration::from_millis(self.max_delay_ms))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts as usize)
            .build()
    }

    /// Checks the section on its own and the channel names used by levels.
    pub fn check<'a>(&'a self, used: impl Iterator<Item = &'a String>) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("notifications.max_attempts must be at least 1".into());
        }
        if self.min_delay_ms == 0 || self.max_delay_ms < self.min_delay_ms {
            return Err(
                "notifications: min_delay_ms must be positive and at most max_delay_ms".into(),
            );
        }
        for name in self.default_channels.iter().chain(used) {
            if !self.channels.contains_key(name) {
                return Err(format!("notification channel `{name}` is not defined"));
            }
        }
        for (name, channel) in &self.channels {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || name.is_empty()
            {
                return Err(format!(
                    "notification channel `{name}`: names are letters, digits, - and _"
                ));
            }
            if let Channel::Webhook { url, .. } = channel
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!("notification channel `{name}`: url is not http(s)"));
            }
        }
        Ok(())
    }
}

/// A notification channel: `kind:` names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// PagerDuty Events API v2: trigger, acknowledge, resolve; `dedup_key` = incident id.
    Pagerduty {
        /// The integration's routing key.
        routing_key: Secret,
        /// The endpoint (default PagerDuty's).
        #[serde(default = "pagerduty_url")]
        url: String,
    },
    /// Slack: `chat.postMessage` to the person's Slack user id (a direct message from
    /// the bot).
    Slack {
        /// The bot token (`xoxb-…`).
        token: Secret,
        /// The endpoint (default Slack's).
        #[serde(default = "slack_url")]
        url: String,
    },
    /// Mattermost: an incoming webhook, posting with an `@mention` of the person.
    Mattermost {
        /// The incoming webhook URL (it holds a token, so it is a secret).
        webhook_url: Secret,
    },
    /// Any other system: JSON posted to `url`, signed with HMAC-SHA256.
    Webhook {
        /// Where to post.
        url: String,
        /// The signing secret.
        secret: Secret,
    },
}

fn pagerduty_url() -> String {
    PAGERDUTY_URL.into()
}

fn slack_url() -> String {
    SLACK_URL.into()
}

impl Channel {
    /// Whether it addresses people one by one (chat), rather than the incident.
    pub fn per_person(&self) -> bool {
        matches!(self, Channel::Slack { .. } | Channel::Mattermost { .. })
    }

    /// Its kind, as in the policy.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Pagerduty { .. } => "pagerduty",
            Channel::Slack { .. } => "slack",
            Channel::Mattermost { .. } => "mattermost",
            Channel::Webhook { .. } => "webhook",
        }
    }
}

/// A person's chat ids.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Slack user id (`U…`).
    #[serde(default)]
    pub slack: Option<String>,
    /// Mattermost username (mentioned as `@name`).
    #[serde(default)]
    pub mattermost: Option<String>,
}

/// Where a secret is read from, when it is used (so a rotated file is picked up):
/// `{ file: /run/secrets/x }` or `{ env: NAME }`. Never a literal in the policy.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Secret {
    /// A file (trailing whitespace trimmed).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::File(p) => write!(f, "Secret(file {})", p.display()),
            Secret::Env(n) => write!(f, "Secret(env {n})"),
        }
    }
}

/// A secret could not be read (the message names where from, never the value).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("secret file {path} cannot be read")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The variable is not set.
    #[error("secret variable {0} is not set")]
    Env(String),
    /// The value is empty.
    #[error("secret {0} is empty")]
    Empty(String),
}

impl Secret {
    /// Reads it now.
    pub fn read(&self) -> Result<String, SecretError> {
        let (value, place) = match self {
            Secret::File(path) => (
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.display().to_string(),
                    source,
                })?,
                path.display().to_string(),
            ),
            Secret::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::Env(name.clone()))?,
                name.clone(),
            ),
        };
        let value = value.trim_end().to_owned();
        if value.is_empty() {
            return Err(SecretError::Empty(place));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_secrets_stay_out_of_debug_and_backoff_grows() {
        let n: Notifications = serde_yaml_ng::from_str(
            r#"
channels:
  pd: { kind: pagerduty, routing_key: { file: /run/secrets/pd } }
  chat: { kind: slack, token: { env: SLACK_BOT_TOKEN } }
  hook: { kind: webhook, url: "http://example.com/hook", secret: { file: /s } }
contacts:
  alice: { slack: U01 }
default_channels: [pd]
min_delay_ms: 100
max_delay_ms: 1000
"#,
        )
        .unwrap();
        assert_eq!(n.channels.len(), 3);
        assert!(n.channels["chat"].per_person());
        assert!(n.check([].iter()).is_ok());
        assert!(
            n.check([String::from("nope")].iter())
                .unwrap_err()
                .contains("`nope`")
        );
        assert!(format!("{:?}", n.channels["pd"]).contains("/run/secrets/pd"));
        let delays: Vec<Duration> = n.backoff().collect();
        assert_eq!(delays.len(), 8);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(2000)));
        assert!(delays[3] >= Duration::from_millis(800));
        let bad = serde_yaml_ng::from_str::<Notifications>(
            "channels:\n  pd: { kind: pagerduty, routing_key: abc }\n",
        );
        assert!(bad.is_err(), "a literal secret is refused");
    }
}
