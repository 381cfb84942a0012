//! The chat bridge's own metrics on `/metrics` (under the `toronto_` prefix).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of a handled command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// `slack`, `mattermost`.
    pub platform: String,
    /// The command (`unparsed` when it did not parse).
    pub command: String,
    /// `ok`, `usage`, `forbidden`, `error`.
    pub outcome: String,
}

/// Labels of a notification post.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PostLabels {
    /// The webhook's name.
    pub webhook: String,
    /// `posted`, `retried` (a 429, 5xx or network error), `dropped` (given up or
    /// refused), `queue_full`.
    pub result: String,
}

/// Counters of commands and notification posts.
#[derive(Clone, Debug, Default)]
pub struct ChatMetrics {
    /// `toronto_chat_commands_total`.
    pub commands: Family<CommandLabels, Counter>,
    /// `toronto_chat_notifications_total`.
    pub notifications: Family<PostLabels, Counter>,
}

impl ChatMetrics {
    /// Registers the counters with the service's registry.
    pub fn register(metrics: &toronto_runtime::Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "chat_commands",
            "Chat commands handled, by platform, command and outcome",
            m.commands.clone(),
        );
        metrics.register(
            "chat_notifications",
            "Notification posts to webhooks, by webhook and result",
            m.notifications.clone(),
        );
        m
    }

    /// Counts a post result.
    pub fn post(&self, webhook: &str, result: &str) {
        self.notifications
            .get_or_create(&PostLabels {
                webhook: webhook.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }
}
