//! Alerts from the bus: `alert.firing` and `alert.resolved` events.

use std::sync::Arc;

use toronto_protocol::alerts::{Alert, AlertStatus};
use toronto_protocol::{Encoding, decode};
use toronto_runtime::jetstream::{Delivery, Outcome};

use super::IntakeError;
use crate::engine::{AlertIn, AlertState, Engine};

/// Checks an `alert.firing` / `alert.resolved` event from the bus.
pub fn bus_alert(subject: &str, payload: &[u8]) -> Result<AlertIn, IntakeError> {
    let env = decode::<Alert>(payload, Encoding::Json).map_err(IntakeError::Decode)?;
    let a = env.data;
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
    match bus_alert(delivery.subject(), delivery.payload()) {
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
