//! The operator's direct looks at the bus: `toronto status`, `dlq`, `ping` and
//! `request`.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use toronto_protocol::status::{Status, StatusRequest};
use toronto_protocol::{Encoding, Envelope, ServiceKind};
use toronto_runtime::Config;
use toronto_runtime::rpc::call;

use crate::out::Output;

/// Connects to NATS as the CLI, waiting at most 5 s.
pub async fn connect(config: &Config) -> anyhow::Result<async_nats::Client> {
    let opts = toronto_runtime::connect::options(&config.nats, "toronto-cli").await?;
    let urls = config.nats.urls.join(",");
    tokio::time::timeout(Duration::from_secs(5), async {
        let client = opts
            .connect(toronto_runtime::connect::server_addrs(&config.nats)?)
            .await?;
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(client)
    })
    .await
    .with_context(|| format!("cannot reach NATS at {urls} within 5 s"))?
}

/// `toronto status [SERVICE]`: each service's status, or why it did not answer.
pub async fn status(service: Option<String>, output: Output) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let kinds: Vec<ServiceKind> = match service {
        Some(s) => vec![s.parse().map_err(anyhow::Error::msg)?],
        None => ServiceKind::ALL.to_vec(),
    };
    let mut failed = 0;
    for kind in kinds {
        let envelope = Envelope::builder("toronto://cli", StatusRequest::default()).build();
        let subject = config.subjects().status(kind);
        match call::<_, Status>(
            &client,
            &subject,
            &envelope,
            Encoding::Json,
            Duration::from_secs(3),
        )
        .await
        {
            Ok(reply) if output != Output::Table => println!(
                "{}",
                output.render(&serde_json::to_value(&reply)?, true, String::new)
            ),
            Ok(reply) => {
                let s = reply.data;
                println!(
                    "{:<28} up {:>8.1}s  version {}  nats {}  auth {}  instance {}",
                    s.service,
                    s.uptime_seconds,
                    s.version,
                    if s.nats_connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    match s.auth.as_deref() {
                        Some("off") => "OFF (anyone may ask for changes)",
                        Some(mode) => mode,
                        None => "unknown",
                    },
                    s.instance_id
                );
            }
            Err(e) => {
                failed += 1;
                println!("{:<28} {e}", kind.service_name());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} service(s) did not answer");
    }
    Ok(())
}

/// What `toronto dlq` does.
#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print each letter's payload too.
        #[arg(long)]
        payload: bool,
    },
    /// Send a dead letter back where it was first sent, then remove it from the DLQ.
    Replay {
        /// Its sequence, as `toronto dlq list` shows it.
        sequence: u64,
        /// Keep it in the DLQ after replaying.
        #[arg(long)]
        keep: bool,
    },
}

/// `toronto dlq list|replay`.
pub async fn dlq(action: DlqAction, output: Output) -> anyhow::Result<()> {
    use toronto_runtime::jetstream::{list_dead_letters, replay_dead_letter};
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = config.subjects();
    match action {
        DlqAction::List { limit, payload } => {
            let letters = list_dead_letters(&js, &subjects, limit).await?;
            if output != Output::Table {
                let doc: Vec<serde_json::Value> = letters
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "sequence": l.sequence,
                            "time": l.time,
                            "subject": l.subject,
                            "origin": l.origin,
                            "original_subject": l.original_subject,
                            "deliveries": l.deliveries,
                            "reason": l.reason,
                            "payload": payload.then(|| String::from_utf8_lossy(&l.payload)),
                        })
                    })
                    .collect();
                println!("{}", output.render(&doc.into(), false, String::new));
                return Ok(());
            }
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in letters {
                println!(
                    "{:>6}  {}  {}  from {} (sent to {}{}): {}",
                    l.sequence,
                    l.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    l.subject,
                    l.origin,
                    l.original_subject,
                    l.deliveries
                        .map(|d| format!(", {d} deliveries"))
                        .unwrap_or_default(),
                    l.reason
                );
                if payload {
                    println!("        {}", String::from_utf8_lossy(&l.payload));
                }
            }
            Ok(())
        }
        DlqAction::Replay { sequence, keep } => {
            let target = replay_dead_letter(&js, &subjects, sequence, keep).await?;
            let doc =
                serde_json::json!({ "replayed": sequence, "to": target.to_string(), "kept": keep });
            println!(
                "{}",
                output.render(&doc, false, || format!(
                    "replayed dead letter {sequence} to {target}{}",
                    if keep { " (kept in the DLQ)" } else { "" }
                ))
            );
            Ok(())
        }
    }
}

/// `toronto ping`: every service instance answering `$SRV.PING` within `wait_ms`.
pub async fn ping(wait_ms: u64, output: Output) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await?;
    let deadline = tokio::time::sleep(Duration::from_millis(wait_ms));
    tokio::pin!(deadline);
    let mut found = 0;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(m) = replies.next() => {
                let v: serde_json::Value = toronto_protocol::codec::from_json_bounded(&m.payload)?;
                println!("{}", output.render(&v, true, || format!("{:<28} {:<10} {}", v["name"].as_str().unwrap_or("?"), v["version"].as_str().unwrap_or("?"), v["id"].as_str().unwrap_or("?"))));
                found += 1;
            }
        }
    }
    if found == 0 {
        bail!("no service answered $SRV.PING");
    }
    Ok(())
}

/// `toronto request`: one raw request with a JSON `data`, signed with the CLI's key.
pub async fn request(
    subject: String,
    ty: String,
    data: String,
    msgpack: bool,
    output: Output,
) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let client = connect(&config).await?;
    let data: serde_json::Value = serde_json::from_str(&data).context("--data is not JSON")?;
    let id = uuid_v7();
    let envelope = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "toronto://cli",
        "type": ty,
        "time": chrono_now(),
        "correlationid": id,
        "data": data,
    });
    let encoding = if msgpack {
        Encoding::MessagePack
    } else {
        Encoding::Json
    };
    let raw: toronto_protocol::RawEnvelope = serde_json::from_value(envelope)?;
    let bytes = toronto_protocol::encode(&raw, encoding)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", encoding.content_type());
    if let Some(signer) = toronto_runtime::auth::process_signer() {
        signer.apply(&mut headers, &subject, &bytes);
    }
    let reply = tokio::time::timeout(
        config.nats.request_timeout(),
        client.request_with_headers(subject.clone(), headers, bytes.into()),
    )
    .await
    .with_context(|| format!("{subject} did not answer"))??;
    let reply_encoding = Encoding::from_content_type(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str()),
    )?;
    let envelope = toronto_protocol::decode_raw(&reply.payload, reply_encoding)?;
    // The reply envelope is the document: `table` prints it as pretty JSON too.
    let doc = serde_json::to_value(&envelope)?;
    println!(
        "{}",
        output.render(&doc, false, || serde_json::to_string_pretty(&doc)
            .unwrap_or_default())
    );
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        bail!("the service answered with error {}", code.as_str());
    }
    Ok(())
}

fn uuid_v7() -> String {
    toronto_protocol::envelope::new_id().to_string()
}

fn chrono_now() -> String {
    toronto_protocol::envelope::now_rfc3339()
}
