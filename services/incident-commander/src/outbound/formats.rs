//! The bodies each receiver expects, built from a [`Notification`] and the channel's
//! secret. Field names follow each receiver's documentation: PagerDuty Events API v2,
//! Slack `chat.postMessage`, Mattermost incoming webhooks; the signed webhook is ours
//! (see `docs/incidents.md`).

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use toronto_protocol::incidents::Severity;

use super::{Notification, NotifyAction};

/// Header with the Unix time (seconds) a webhook was signed at.
pub const TIMESTAMP_HEADER: &str = "X-Toronto-Timestamp";
/// Header with the webhook's signature: `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Toronto-Signature";
/// Header with the notification id (the same on every retry: receivers dedupe by it).
pub const DELIVERY_HEADER: &str = "X-Toronto-Delivery";
/// `client` in PagerDuty events.
pub const CLIENT: &str = "Toronto DevOps";

/// PagerDuty's severity for ours.
pub fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Sev1 => "critical",
        Severity::Sev2 => "error",
        Severity::Sev3 => "warning",
        Severity::Sev4 => "info",
    }
}

/// `SEV1` … `SEV4`.
pub fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Sev1 => "SEV1",
        Severity::Sev2 => "SEV2",
        Severity::Sev3 => "SEV3",
        Severity::Sev4 => "SEV4",
    }
}

/// The incident's link, if the policy gives a pattern.
pub fn incident_link(pattern: Option<&str>, n: &Notification) -> Option<String> {
    pattern.map(|p| p.replace("{id}", &n.incident_id.to_string()))
}

fn summary(n: &Notification) -> String {
    let mut s = format!(
        "[{}] {} ({} in {})",
        severity_label(n.severity),
        n.title,
        n.service,
        n.environment
    );
    if s.len() > 1024 {
        let mut cut = 1021;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// A PagerDuty Events API v2 event: a trigger carries the payload, links and client;
/// acknowledge and resolve name the `dedup_key` only.
pub fn pagerduty(n: &Notification, routing_key: &str, link: Option<&str>) -> Value {
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": n.action.as_str(),
        "dedup_key": n.incident_id.to_string(),
    });
    if n.action == NotifyAction::Trigger {
        event["payload"] = json!({
            "summary": summary(n),
            "source": format!("{}/{}", n.service, n.environment),
            "severity": pagerduty_severity(n.severity),
            "timestamp": n.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "component": n.service,
            "group": n.environment,
            "class": "incident",
            "custom_details": {
                "incident_id": n.incident_id,
                "severity": n.severity,
                "level": n.level,
                "round": n.cycle,
                "paged": n.targets,
                "reason": n.reason,
            },
        });
        event["client"] = json!(CLIENT);
        if let Some(link) = link {
            event["client_url"] = json!(link);
            event["links"] = json!([{ "href": link, "text": "Incident" }]);
        }
    }
    event
}

/// The text of a chat message.
pub fn chat_text(n: &Notification, mention: Option<&str>, link: Option<&str>) -> String {
    let who = mention.map(|m| format!("{m} ")).unwrap_or_default();
    let what = match n.action {
        NotifyAction::Trigger => format!("you are paged: {}", summary(n)),
        NotifyAction::Acknowledge => format!(
            "acknowledged by {}: {}",
            n.by.as_deref().unwrap_or("someone"),
            summary(n)
        ),
        NotifyAction::Resolve => format!("resolved: {}", summary(n)),
    };
    let link = link.map(|l| format!(" {l}")).unwrap_or_default();
    format!("{who}{what} ({}){link}", n.reason)
}

/// Slack `chat.postMessage` to a user id (a direct message from the bot).
pub fn slack(n: &Notification, user_id: &str, link: Option<&str>) -> Value {
    json!({
        "channel": user_id,
        "text": chat_text(n, None, link),
        "unfurl_links": false,
    })
}

/// A Mattermost incoming-webhook post mentioning the person.
pub fn mattermost(n: &Notification, username: &str, link: Option<&str>) -> Value {
    json!({
        "text": chat_text(n, Some(&format!("@{username}")), link),
        "username": "toronto",
    })
}

/// The signed webhook's body.
pub fn webhook(n: &Notification, link: Option<&str>) -> Value {
    let kind = match n.action {
        NotifyAction::Trigger => "incident.triggered",
        NotifyAction::Acknowledge => "incident.acknowledged",
        NotifyAction::Resolve => "incident.resolved",
    };
    json!({
        "id": n.id,
        "type": kind,
        "incident": {
            "id": n.incident_id,
            "title": n.title,
            "service": n.service,
            "environment": n.environment,
            "severity": n.severity,
            "url": link,
        },
        "level": n.level,
        "round": n.cycle,
        "paged": n.targets,
        "reason": n.reason,
        "by": n.by,
        "at": n.at,
    })
}

/// `v1=<hex>`: HMAC-SHA256 with `secret` over `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 test case 2 shape: key "Jefe", data "what do ya want for nothing?"
        // split as "<timestamp>.<body>" would not fit; check against a direct HMAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(signature(b"k", 1_700_000_000, b"{\"a\":1}"), expected);
        assert_ne!(signature(b"k", 1_700_000_001, b"{\"a\":1}"), expected);
        assert_eq!(pagerduty_severity(Severity::Sev2), "error");
    }
}
