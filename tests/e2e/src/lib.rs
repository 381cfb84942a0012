//! Fixtures of the end-to-end tests. `slow-service` is a test-only binary built on
//! the same `service_main` as every real service, with one endpoint that takes as
//! long as it is asked to, so that shutdown under load can be observed from outside.
#![forbid(unsafe_code)]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toronto_protocol::Message;

/// Asks the test service to take `ms` milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sleep {
    /// How long to take.
    pub ms: u64,
}

impl Message for Sleep {
    const NAME: &'static str = "test.sleep";
    const MAJOR: u32 = 1;
}

/// The answer to [`Sleep`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Slept {
    /// How long it took.
    pub ms: u64,
}

impl Message for Slept {
    const NAME: &'static str = "test.slept";
    const MAJOR: u32 = 1;
}

/// The verb of the sleep endpoint.
pub const SLEEP_VERB: &str = "test.sleep";

/// Every answer to `$SRV.<verb>` (`PING`, `INFO`, `STATS`) that arrives within 700 ms.
pub async fn srv_replies(client: &async_nats::Client, verb: &str) -> Vec<serde_json::Value> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(format!("$SRV.{verb}"), inbox, bytes::Bytes::new())
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::sleep(std::time::Duration::from_millis(700));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(m) = replies.next() => {
                // A "no responders" status arrives with an empty payload.
                if let Ok(v) = serde_json::from_slice(&m.payload) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// `deploy/nats/permissions.conf` with the password `pw-<user>` for every user it
/// names (`$TORONTO_NATS_<USER>_PASSWORD` becomes `"pw-<user>"`).
pub fn permissions_conf() -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/permissions.conf"),
    )
    .expect("deploy/nats/permissions.conf is readable");
    let (open, close) = ("$TORONTO_NATS_", "_PASSWORD");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(open) {
        out.push_str(&rest[..at]);
        let after = &rest[at + open.len()..];
        match after.find(close) {
            Some(end)
                if after[..end]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_') =>
            {
                out.push_str(&format!("\"pw-{}\"", after[..end].to_ascii_lowercase()));
                rest = &after[end + close.len()..];
            }
            _ => {
                out.push_str(open);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
