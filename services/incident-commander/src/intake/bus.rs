//! Alerts from the bus: `alert.firing` and `alert.resolved` events.

use std::sync::Arc;

use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::{Encoding, decode};
use toronto_runtime::jetstream::{Delivery, Outcome};

use super::IntakeError;
use crate::engine::{AlertIn, AlertState, Engine};

/// Checks an `alert.firing` / `alert.resolved` event from the bus, decoded with the
/// codec its `Content-Type` names (JSON when there is none, MessagePack when it says
/// so, refused when it names anything else).
pub fn bus_alert(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<AlertIn, IntakeError> {
    let encoding = Encoding::from_content_type(content_type).map_err(IntakeError::Decode)?;
    let env = decode::<Alert>(payload, encoding).map_err(IntakeError::Decode)?;
    checked_alert(subject, env.data)
}

/// Like [`bus_alert`], for a message in either CloudEvents content mode (structured,
/// or binary with `ce-*` headers and the bare alert as its body).
pub fn bus_alert_message(
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<AlertIn, IntakeError> {
    let env = toronto_runtime::service::decode_message::<Alert>(headers, payload)
        .map_err(IntakeError::Decode)?;
    checked_alert(subject, env.data)
}

fn checked_alert(subject: &str, a: Alert) -> Result<AlertIn, IntakeError> {
    let expected = if subject.ends_with(".firing") {
        AlertStatus::Firing
    } else if subject.ends_with(".resolved") {
        AlertStatus::Resolved
    } else {
        return Err(IntakeError::Invalid(format!(
            "{subject}: not an alert.firing or alert.resolved subject"
        )));
    };
    if a.status != expected {
        return Err(IntakeError::Invalid(format!(
            "status {:?} does not match the subject {subject}",
            a.status
        )));
    }
    if a.fingerprint.trim().is_empty() {
        return Err(IntakeError::Invalid("fingerprint: empty".into()));
    }
    Ok(AlertIn {
        fingerprint: a.fingerprint,
        state: match a.status {
            AlertStatus::Firing => AlertState::Firing,
            AlertStatus::Resolved => AlertState::Resolved,
        },
        labels: a.labels,
        annotations: a.annotations,
        starts_at: a.starts_at,
        ends_at: a.ends_at,
        origin: "bus",
    })
}

/// Handles one delivery of the alerts consumer.
pub async fn handle_bus_alert(engine: Arc<Engine>, delivery: Delivery) -> Outcome {
    match bus_alert_message(delivery.subject(), delivery.headers(), delivery.payload()) {
        Ok(alert) => {
            engine.ingest(vec![alert]);
            engine.flush().await;
            Outcome::Ack
        }
        Err(reason) => Outcome::Reject {
            reason: reason.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use toronto_protocol::alerts::Alert;
    use toronto_protocol::{Encoding, Envelope, encode};

    use super::*;

    fn alert() -> Envelope<Alert> {
        let alert: Alert = serde_json::from_value(serde_json::json!({
            "fingerprint": "f1",
            "status": "firing",
            "labels": {"alertname": "HighErrorRate", "service": "shop-api"},
            "annotations": {},
            "starts_at": "2026-11-26T10:00:00Z",
            "generator": "toronto://test"
        }))
        .expect("a valid alert");
        Envelope::builder("toronto://test", alert).build()
    }

    #[test]
    fn a_messagepack_alert_is_read_with_the_codec_its_content_type_names() {
        let subject = "toronto.devops.v1.events.alert.firing";
        let packed = encode(&alert(), Encoding::MessagePack).unwrap();
        let read = bus_alert(subject, Some("application/cloudevents+msgpack"), &packed).unwrap();
        assert_eq!(read.fingerprint, "f1");
        let json = encode(&alert(), Encoding::Json).unwrap();
        assert_eq!(bus_alert(subject, None, &json).unwrap().fingerprint, "f1");
        assert!(bus_alert(subject, Some("text/plain"), &json).is_err());
        assert!(bus_alert(subject, Some("application/cloudevents+json"), &packed).is_err());
    }
}
