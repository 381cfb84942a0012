//! A recorder of what is published on the bus, for tests that wait for a message: it
//! subscribes before the test acts, keeps everything it saw, and finds a typed message
//! whether it arrived before or after the wait began.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use toronto_protocol::{Encoding, Message};

/// How long [`Recorder::wait`] waits for a matching message.
pub const WAIT: Duration = Duration::from_secs(60);

/// Every message published on some subjects since it started.
#[derive(Debug)]
pub struct Recorder {
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Bytes)>,
    seen: Vec<(String, Bytes)>,
}

impl Recorder {
    /// Subscribes to `subjects` (wildcards allowed) and returns once the server has the
    /// subscriptions, so nothing published afterwards is missed.
    pub async fn start(client: &async_nats::Client, subjects: &[&str]) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for s in subjects {
            let mut sub = client
                .subscribe(s.to_string())
                .await
                .expect("subscribe the recorder");
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let _ = tx.send((m.subject.to_string(), m.payload));
                }
            });
        }
        toronto_runtime::service::confirm_subscriptions(client).await;
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// The data of the first message on `subject` (exactly) that decodes as `T` and
    /// satisfies `f`, seen already or arriving within [`WAIT`]; panics otherwise.
    pub async fn wait<T: Message>(&mut self, subject: &str, f: impl Fn(&T) -> bool) -> T {
        let decode = |p: &Bytes| toronto_protocol::decode::<T>(p, Encoding::Json).ok();
        let found = self
            .find(subject, |p| decode(p).is_some_and(|d| f(&d.data)))
            .await;
        decode(&found).expect("decoded when found").data
    }

    /// The bytes of the first message on `subject` (exactly), seen already or arriving
    /// within [`WAIT`]; panics otherwise.
    pub async fn raw(&mut self, subject: &str) -> Bytes {
        self.find(subject, |_| true).await
    }

    /// The data of every message seen so far on `subject` (exactly) that decodes as `T`,
    /// after taking in what has arrived; it does not wait.
    pub fn all<T: Message>(&mut self, subject: &str) -> Vec<T> {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        self.seen
            .iter()
            .filter(|(s, _)| s == subject)
            .filter_map(|(_, p)| toronto_protocol::decode::<T>(p, Encoding::Json).ok())
            .map(|e| e.data)
            .collect()
    }

    async fn find(&mut self, subject: &str, matches: impl Fn(&Bytes) -> bool) -> Bytes {
        if let Some((_, p)) = self.seen.iter().find(|(s, p)| s == subject && matches(p)) {
            return p.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (s, p) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing matching on {subject} within {WAIT:?}"))
                .expect("the recorder's subscriptions ended");
            self.seen.push((s.clone(), p.clone()));
            if s == subject && matches(&p) {
                return p;
            }
        }
    }
}
