//! A TCP proxy in front of a nats-server: cutting it is a client's host dying (no
//! goodbye, nothing released; the client only fails to reconnect), while the server
//! and every other client go on.

use std::net::SocketAddr;

use tokio::task::JoinSet;

/// A TCP proxy to one address; connect through [`TcpProxy::url`].
pub struct TcpProxy {
    /// `nats://` URL of the proxy's listener.
    pub url: String,
    tasks: JoinSet<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `to`.
    pub async fn start(to: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let url = format!("nats://{}", listener.local_addr().expect("a bound address"));
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        TcpProxy { url, tasks }
    }

    /// Closes the listener and every proxied connection.
    pub fn cut(mut self) {
        self.tasks.abort_all();
    }
}
