//! Dead letters: refused messages parked with their original bytes and the reason,
//! listed, read and replayed.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream;
use bytes::Bytes;
use toronto_protocol::Subjects;

use crate::metrics::{ConsumerLabels, Metrics};

use super::{
    DLQ_DELIVERIES_HEADER, DLQ_ORIGIN_HEADER, DLQ_ORIGINAL_MSG_ID_HEADER, DLQ_REASON_HEADER,
    DLQ_STREAM_HEADER, DLQ_STREAM_SEQ_HEADER, DLQ_SUBJECT_HEADER, JetStreamError,
};

/// Where a dead letter came from.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSource {
    /// Stream it was read from.
    pub stream: Option<String>,
    /// Its sequence there.
    pub stream_sequence: Option<u64>,
    /// Deliveries so far.
    pub deliveries: Option<i64>,
}

/// Parks refused messages in `<prefix>.devops.v1.dlq.<service>` with the original
/// bytes, the original headers, and the reason.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    js: Context,
    subject: String,
    metrics: Metrics,
}

impl DeadLetters {
    /// Dead letters of `service` (a subject token, e.g. `planner`).
    pub fn new(js: Context, subjects: &Subjects, service: &str, metrics: Metrics) -> Self {
        Self {
            js,
            subject: subjects.dlq(service),
            metrics,
        }
    }

    /// The subject dead letters go to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Parks a core NATS message.
    pub async fn park_message(
        &self,
        origin: &str,
        message: &async_nats::Message,
        reason: &str,
        source: Option<DeadLetterSource>,
    ) -> bool {
        self.park(
            origin,
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
            reason,
            source.unwrap_or_default(),
        )
        .await
    }

    /// Parks raw bytes with their headers. Returns whether the DLQ stream stored it;
    /// a failure is logged with the reason so that it is at least visible.
    pub async fn park(
        &self,
        origin: &str,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        reason: &str,
        source: DeadLetterSource,
    ) -> bool {
        let mut out = HeaderMap::new();
        if let Some(headers) = headers {
            for (name, values) in headers.iter() {
                let name = name.to_string();
                if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                    for v in values {
                        out.append(DLQ_ORIGINAL_MSG_ID_HEADER, header_value(v.as_str()));
                    }
                } else if !name.starts_with("Nats-") {
                    for v in values {
                        out.append(name.as_str(), header_value(v.as_str()));
                    }
                }
            }
        }
        out.insert(DLQ_REASON_HEADER, header_value(reason));
        out.insert(DLQ_ORIGIN_HEADER, header_value(origin));
        out.insert(DLQ_SUBJECT_HEADER, header_value(subject));
        let msg_id = match (&source.stream, source.stream_sequence) {
            (Some(stream), Some(seq)) => {
                out.insert(DLQ_STREAM_HEADER, stream.as_str());
                out.insert(DLQ_STREAM_SEQ_HEADER, seq.to_string().as_str());
                format!("dlq-{stream}-{seq}")
            }
            _ => format!("dlq-{}", uuid::Uuid::now_v7()),
        };
        if let Some(n) = source.deliveries {
            out.insert(DLQ_DELIVERIES_HEADER, n.to_string().as_str());
        }
        let publish = Publish::build()
            .payload(payload)
            .headers(out)
            .message_id(msg_id);
        let result = match self.js.send_publish(self.subject.clone(), publish).await {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => {
                self.metrics
                    .dead_letters
                    .get_or_create(&ConsumerLabels {
                        consumer: origin.to_owned(),
                    })
                    .inc();
                tracing::warn!(
                    origin,
                    subject,
                    reason,
                    "message parked in the dead-letter stream"
                );
                true
            }
            Err(e) => {
                tracing::error!(origin, subject, reason, error = %e, "cannot park message in the dead-letter stream");
                false
            }
        }
    }
}

/// The longest header value a dead letter echoes (a reason, an original header);
/// longer ones are cut, so that an oversized field never stops a message from being
/// parked with its reason (the full original is the payload).
pub const MAX_ECHOED_HEADER_BYTES: usize = 1024;

/// `value` made fit for a header: line breaks become spaces and it is cut to
/// [`MAX_ECHOED_HEADER_BYTES`] on a character boundary, marked with `…`.
pub fn header_value(value: &str) -> String {
    let line = value.replace(['\r', '\n'], " ");
    if line.len() <= MAX_ECHOED_HEADER_BYTES {
        return line;
    }
    let mut end = MAX_ECHOED_HEADER_BYTES - '…'.len_utf8();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// A message held in the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what `replay` takes).
    pub sequence: u64,
    /// When it was parked.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The dead-letter subject, e.g. `toronto.devops.v1.dlq.planner`.
    pub subject: String,
    /// Why it was refused.
    pub reason: String,
    /// The endpoint or consumer that refused it.
    pub origin: String,
    /// Where it was first sent.
    pub original_subject: String,
    /// Deliveries before it was parked, when it came from a stream.
    pub deliveries: Option<i64>,
    /// Its headers as parked (original headers plus the `Toronto-Dlq-*` ones).
    pub headers: HeaderMap,
    /// The original bytes.
    pub payload: Bytes,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
}

fn dlq_error(subjects: &Subjects, reason: impl ToString) -> JetStreamError {
    JetStreamError::Consumer {
        stream: subjects.dlq_stream(),
        durable: "-".into(),
        reason: reason.to_string(),
    }
}

/// Reads one dead letter by its sequence; `None` when there is none at that sequence.
pub async fn dead_letter(
    js: &Context,
    subjects: &Subjects,
    sequence: u64,
) -> Result<Option<DeadLetter>, JetStreamError> {
    let stream = js
        .get_stream(subjects.dlq_stream())
        .await
        .map_err(|e| dlq_error(subjects, e))?;
    let message = match stream.get_raw_message(sequence).await {
        Ok(m) => m,
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(dlq_error(subjects, e)),
    };
    let headers = message.headers.clone();
    Ok(Some(DeadLetter {
        sequence,
        time: message.time,
        subject: message.subject.to_string(),
        reason: header(&headers, DLQ_REASON_HEADER).unwrap_or_default(),
        origin: header(&headers, DLQ_ORIGIN_HEADER).unwrap_or_default(),
        original_subject: header(&headers, DLQ_SUBJECT_HEADER).unwrap_or_default(),
        deliveries: header(&headers, DLQ_DELIVERIES_HEADER).and_then(|d| d.parse().ok()),
        headers,
        payload: message.payload,
    }))
}

/// Lists up to `limit` dead letters, oldest first.
pub async fn list_dead_letters(
    js: &Context,
    subjects: &Subjects,
    limit: usize,
) -> Result<Vec<DeadLetter>, JetStreamError> {
    let mut stream = js
        .get_stream(subjects.dlq_stream())
        .await
        .map_err(|e| dlq_error(subjects, e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| dlq_error(subjects, e))?
        .state
        .clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if out.len() >= limit {
            break;
        }
        if let Some(letter) = dead_letter(js, subjects, sequence).await? {
            out.push(letter);
        }
    }
    Ok(out)
}

/// Sends a dead letter back to the subject it was first sent to, with its original
/// headers (a stream subject gets a JetStream publish with `Nats-Msg-Id =
/// replay-<dlq seq>`, so a repeated replay is stored once), then removes it from the
/// dead-letter stream unless `keep`. Returns the subject it went to.
pub async fn replay_dead_letter(
    js: &Context,
    subjects: &Subjects,
    sequence: u64,
    keep: bool,
) -> Result<String, JetStreamError> {
    let letter = dead_letter(js, subjects, sequence)
        .await?
        .ok_or_else(|| dlq_error(subjects, format!("no dead letter at sequence {sequence}")))?;
    if letter.original_subject.is_empty() {
        return Err(dlq_error(
            subjects,
            format!("dead letter {sequence} does not say where it came from"),
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        let name = name.to_string();
        if !name.starts_with("Toronto-Dlq-") && !name.starts_with("Nats-") {
            for v in values {
                headers.append(name.as_str(), v.as_str());
            }
        }
    }
    let target = letter.original_subject.clone();
    if js.stream_by_subject(target.clone()).await.is_ok() {
        let publish = Publish::build()
            .payload(letter.payload.clone())
            .headers(headers)
            .message_id(format!("replay-{}-{sequence}", subjects.dlq_stream()));
        js.send_publish(target.clone(), publish)
            .await
            .map_err(|e| dlq_error(subjects, format!("replay to {target} failed: {e}")))?
            .await
            .map_err(|e| dlq_error(subjects, format!("replay to {target} failed: {e}")))?;
    } else {
        // Not a stream subject (e.g. a request endpoint): send it as a plain message.
        let client = js.client();
        client
            .publish_with_headers(target.clone(), headers, letter.payload.clone())
            .await
            .map_err(|e| dlq_error(subjects, e))?;
        client.flush().await.map_err(|e| dlq_error(subjects, e))?;
    }
    if !keep {
        let stream = js
            .get_stream(subjects.dlq_stream())
            .await
            .map_err(|e| dlq_error(subjects, e))?;
        stream
            .delete_message(sequence)
            .await
            .map_err(|e| dlq_error(subjects, e))?;
    }
    Ok(target)
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn echoed_values_fit_a_header() {
        assert_eq!(header_value("a\r\nb"), "a  b");
        let long = format!("field: {}", "é".repeat(40_000));
        let cut = header_value(&long);
        assert!(cut.len() <= MAX_ECHOED_HEADER_BYTES);
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("field: é"));
    }
}
