//! Writes the engine's effects to JetStream, in order and pipelined: events are
//! published as they come, records changed in a batch are written once with their
//! latest state, and the acks of a whole batch are awaited together. A barrier is
//! answered once everything before it is acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage as Publish;
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toronto_protocol::Encoding;
use toronto_protocol::codec::CONTENT_TYPE_HEADER;

use crate::engine::{Effect, Engine, Record};

/// Largest batch taken from the queue at once.
const BATCH: usize = 4096;
/// Alert records per entry of the alert log (well under the 1 MiB payload limit).
pub const ALERT_LOG_CHUNK: usize = 1000;
/// Key prefix of the alert log in the incidents bucket: `alertlog.<uuid v7>`, each
/// entry the alerts that changed in one write, replayed in key (time) order at start.
pub const ALERT_LOG_PREFIX: &str = "alertlog.";

/// Where the effects go.
#[derive(Debug, Clone)]
pub struct Sink {
    /// JetStream.
    pub js: async_nats::jetstream::Context,
    /// Core NATS (agent notifications).
    pub client: async_nats::Client,
    /// The incidents bucket.
    pub incidents: kv::Store,
    /// The silences bucket.
    pub silences: kv::Store,
    /// With replicas: writes only while this replica may ([`crate::replica`]).
    pub fence: Option<crate::replica::Ownership>,
}

/// An incident changed again within this time of its last write waits (its latest
/// state is written then): under a storm of alerts an incident is written about ten
/// times a second, not once per change. A barrier (every command) and shutdown write
/// everything at once.
const INCIDENT_GAP: Duration = Duration::from_millis(100);

/// How long a batch may gather before it is written.
const GATHER: Duration = Duration::from_millis(1);

/// Incident writes held back by [`INCIDENT_GAP`].
#[derive(Default)]
struct Deferred {
    waiting: HashSet<Record>,
    last: HashMap<Record, Instant>,
}

/// Runs until `shutdown`, then writes what is still queued and returns.
pub async fn run(
    engine: Arc<Engine>,
    sink: Sink,
    rx: &mut mpsc::UnboundedReceiver<Effect>,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let mut deferred = Deferred::default();
    loop {
        let wait = if deferred.waiting.is_empty() {
            Duration::from_secs(3600)
        } else {
            INCIDENT_GAP
        };
        let first = tokio::select! {
            e = rx.recv() => Some(e),
            _ = shutdown.cancelled() => None,
            _ = tokio::time::sleep(wait) => Some(None),
        };
        let mut batch = Vec::new();
        match first {
            Some(Some(e)) => {
                // Let a burst gather for a millisecond: one alert-log entry and one
                // event per incident for all of it, instead of one write per request.
                if !matches!(e, Effect::Barrier(_)) {
                    tokio::time::sleep(GATHER).await;
                }
                batch.push(e);
            }
            Some(None) => {
                // Time to write what was held back.
                write(&engine, &sink, batch, &mut deferred, false).await;
                continue;
            }
            None => {
                // Shutting down: write what is queued, then stop.
                engine.announce_pending();
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                write(&engine, &sink, batch, &mut deferred, true).await;
                return Ok(());
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if batch.iter().any(|e| matches!(e, Effect::Announce)) {
            // The events of the alerts in this batch, one per incident, go in it too.
            engine.announce_pending();
            while let Ok(e) = rx.try_recv() {
                batch.push(e);
            }
        }
        let everything = batch.iter().any(|e| matches!(e, Effect::Barrier(_)));
        write(&engine, &sink, batch, &mut deferred, everything).await;
    }
}

/// A record that could not be encoded: logged and counted.
fn failed(engine: &Engine, e: &crate::engine::EngineError) {
    engine.counters.encode_failures.inc();
    tracing::error!(error = %e, source = ?std::error::Error::source(e), "a record is not written");
}

async fn write(
    engine: &Engine,
    sink: &Sink,
    batch: Vec<Effect>,
    deferred: &mut Deferred,
    everything: bool,
) {
    if let Some(fence) = &sink.fence
        && !fence.may_write()
    {
        // Another replica owns the records now: write nothing, answer the barriers.
        let dropped = batch
            .into_iter()
            .filter_map(|e| match e {
                Effect::Barrier(tx) => {
                    let _ = tx.send(());
                    None
                }
                other => Some(other),
            })
            .count();
        deferred.waiting.clear();
        if dropped > 0 {
            tracing::warn!(dropped, "not the owner: changes not written");
        }
        return;
    }
    let mut acks = Vec::new();
    let mut barriers = Vec::new();
    let mut dirty: Vec<Record> = Vec::new();
    let mut seen: HashSet<Record> = HashSet::new();
    let mut alerts: Vec<String> = Vec::new();
    let mut seen_alerts: HashSet<String> = HashSet::new();
    for effect in batch {
        match effect {
            Effect::Event {
                subject,
                payload,
                msg_id,
            } => {
                let publish = Publish::build()
                    .payload(payload)
                    .message_id(msg_id)
                    .header(CONTENT_TYPE_HEADER, Encoding::Json.content_type());
                match sink.js.send_publish(subject.clone(), publish).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => tracing::error!(subject, error = %e, "cannot publish an event"),
                }
            }
            Effect::Notify { subject, payload } => {
                if let Err(e) = sink.client.publish(subject.clone(), payload).await {
                    tracing::error!(subject, error = %e, "cannot notify an agent");
                }
            }
            Effect::Persist(Record::Alert(fp)) => {
                if seen_alerts.insert(fp.clone()) {
                    alerts.push(fp);
                }
            }
            Effect::Persist(record) => {
                if seen.insert(record.clone()) {
                    dirty.push(record);
                }
            }
            Effect::Barrier(tx) => barriers.push(tx),
            Effect::Announce => {}
        }
    }
    // Incidents written a moment ago wait; those that waited long enough go now.
    let now = Instant::now();
    for record in std::mem::take(&mut deferred.waiting) {
        if seen.insert(record.clone()) {
            dirty.push(record);
        }
    }
    dirty.retain(|record| {
        let recent = matches!(record, Record::Incident(_))
            && deferred
                .last
                .get(record)
                .is_some_and(|t| now.duration_since(*t) < INCIDENT_GAP);
        if recent && !everything {
            deferred.waiting.insert(record.clone());
            return false;
        }
        if matches!(record, Record::Incident(_)) {
            deferred.last.insert(record.clone(), now);
        }
        true
    });
    if deferred.last.len() > 10_000 {
        deferred
            .last
            .retain(|_, t| now.duration_since(*t) < INCIDENT_GAP);
    }
    // Records, with their state as of now (once per record per batch). One that
    // cannot be encoded is not written (logged and counted), never written empty.
    let mut writes = Vec::new();
    let mut deletes = Vec::new();
    if !alerts.is_empty() {
        // Alerts: their changes in this batch as one entry of the alert log.
        match engine.alert_log(Some(&alerts), ALERT_LOG_CHUNK) {
            Ok(chunks) => {
                for chunk in chunks {
                    let key = format!("{ALERT_LOG_PREFIX}{}", uuid::Uuid::now_v7().simple());
                    writes.push((true, key, chunk));
                }
            }
            Err(e) => failed(engine, &e),
        }
    }
    for (record, snapshot) in engine.snapshot(&dirty) {
        match snapshot {
            Ok(Some(s)) => writes.push((s.in_incidents, s.key, s.value)),
            Ok(None) => deletes.push(record),
            Err(e) => failed(engine, &e),
        }
    }
    for (in_incidents, key, value) in writes {
        let bucket = if in_incidents {
            &sink.incidents.name
        } else {
            &sink.silences.name
        };
        let subject = format!("$KV.{bucket}.{key}");
        match sink.js.publish(subject.clone(), value.into()).await {
            Ok(ack) => acks.push(ack),
            Err(e) => tracing::error!(subject, error = %e, "cannot write a record"),
        }
    }
    for ack in join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await {
        if let Err(e) = ack {
            tracing::error!(error = %e, "a write was not acknowledged");
        }
    }
    for record in deletes {
        let result = match &record {
            Record::Inhibition(id) => sink.silences.delete(format!("inhibition.{id}")).await,
            Record::Silence(id) => sink.silences.delete(format!("silence.{id}")).await,
            Record::Incident(id) => sink.incidents.delete(format!("incident.{id}")).await,
            Record::Alert(fp) => sink.incidents.delete(crate::engine::alert_key(fp)).await,
        };
        if let Err(e) = result {
            tracing::error!(?record, error = %e, "cannot delete a record");
        }
    }
    for tx in barriers {
        let _ = tx.send(());
    }
}
