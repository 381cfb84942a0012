//! A JetStream cluster of real nats-server processes.

use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use crate::bin::nats_server_bin;
use crate::error::TestkitError;
use crate::node::{ClusterConf, Node, Ports, Readiness, free_ports, render_config};
use crate::server::FRESH_PORT_ATTEMPTS;

/// How long a cluster gets to elect a JetStream meta leader, and a node to come back.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// The cluster name in the generated configs.
const CLUSTER_NAME: &str = "toronto-test";

/// A JetStream cluster of real nats-server processes on 127.0.0.1 (routes between all
/// nodes, server names `n0`, `n1`, ..., a store per node), for tests of failover.
///
/// Nodes can be killed and restarted on the same ports with the same store. It always runs
/// the nats-server binary (`TORONTO_TESTKIT_NATS` only affects [`crate::NatsServer`]).
/// Dropping it kills every node and removes the directories.
#[derive(Debug)]
pub struct NatsCluster {
    // Field order matters: the processes are killed before their directory is removed.
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts a cluster of `nodes` servers (3 for a usual R3 setup) with JetStream, routes
    /// between all nodes, server names `n0`..`n{nodes-1}`, a store per node and free client,
    /// cluster and monitoring ports; returns once every node accepts clients and JetStream
    /// answers through every node (so there is a meta leader), at most ~30 s.
    ///
    /// # Panics
    ///
    /// With the [`TestkitError`] message when the cluster cannot be started, and when `nodes`
    /// is 0.
    pub async fn start(nodes: usize) -> NatsCluster {
        Self::try_start(nodes)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NatsCluster::start`] returning the error instead of panicking.
    ///
    /// # Errors
    ///
    /// When no suitable nats-server is found (see [`crate::nats_server_bin`]) or the cluster
    /// does not become ready in time.
    ///
    /// # Panics
    ///
    /// When `nodes` is 0.
    pub async fn try_start(nodes: usize) -> Result<NatsCluster, TestkitError> {
        assert!(nodes > 0, "a NatsCluster needs at least one node");
        let bin = nats_server_bin()?;
        let mut attempt = 1;
        loop {
            match Self::try_start_once(&bin, nodes).await {
                Err(TestkitError::PortInUse { .. }) if attempt < FRESH_PORT_ATTEMPTS => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_start_once(
        bin: &std::path::Path,
        count: usize,
    ) -> Result<NatsCluster, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("toronto-nats-cluster-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating a temporary directory", e))?;
        let p = free_ports(3 * count)?;
        let ports: Vec<Ports> = (0..count)
            .map(|i| Ports {
                client: p[3 * i],
                http: p[3 * i + 1],
                cluster: Some(p[3 * i + 2]),
            })
            .collect();
        let conf = ClusterConf {
            name: CLUSTER_NAME.to_owned(),
            route_ports: ports.iter().filter_map(|p| p.cluster).collect(),
        };

        let mut nodes = Vec::with_capacity(count);
        for (i, ports) in ports.into_iter().enumerate() {
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir(&node_dir)
                .map_err(|e| TestkitError::io(format!("creating {}", node_dir.display()), e))?;
            let label = format!(
                "node n{i} on 127.0.0.1:{} (files in {})",
                ports.client,
                node_dir.display()
            );
            let node = Node::new(bin.to_path_buf(), &node_dir, label, ports);
            let name = format!("n{i}");
            node.write_config(&render_config(
                Some(&name),
                ports,
                &node.store_dir,
                Some(&conf),
                "",
            ))?;
            nodes.push(node);
        }
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for node in &mut cluster.nodes {
            node.spawn()?;
        }
        cluster.wait_all_ready().await?;
        Ok(cluster)
    }

    /// Waits until every node answers JetStream requests; fails fast if a node exits.
    async fn wait_all_ready(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut ready = vec![false; self.nodes.len()];
        let mut last_error = vec![String::from("no probe finished yet"); self.nodes.len()];
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if let Some(err) = node.check_exited() {
                    return Err(err);
                }
                if ready[i] {
                    continue;
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    let err = node.not_ready(CLUSTER_TIMEOUT, last_error[i].clone());
                    for node in &self.nodes {
                        node.kill().await;
                    }
                    return Err(err);
                }
                match node.probe(Readiness::JetStream, remaining).await {
                    Ok(()) => ready[i] = true,
                    Err(e) => last_error[i] = e,
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client URLs of all nodes, `nats://127.0.0.1:<port>`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The client URL of node `node` (server name `n<node>`).
    ///
    /// # Panics
    ///
    /// When `node` is out of range.
    pub fn url(&self, node: usize) -> String {
        self.node(node).url()
    }

    /// A client connected to node `node` (default options: it reconnects forever and may
    /// fail over to other nodes it learns about).
    ///
    /// # Panics
    ///
    /// When `node` is out of range or the connection fails.
    pub async fn client(&self, node: usize) -> async_nats::Client {
        let url = self.url(node);
        async_nats::connect(url.as_str()).await.unwrap_or_else(|e| {
            panic!(
                "{}",
                TestkitError::Connect {
                    url,
                    detail: e.to_string()
                }
            )
        })
    }

    /// Kills node `node` with SIGKILL and waits for it to exit; its ports and store are kept
    /// for [`NatsCluster::restart_node`]. No-op if it is not running.
    ///
    /// # Panics
    ///
    /// When `node` is out of range.
    pub async fn kill(&mut self, node: usize) {
        self.node(node).kill().await;
    }

    /// Starts node `node` again with the same ports and store and waits until it accepts
    /// clients (at most ~30 s). It does not wait for JetStream, so that restarting nodes of a
    /// cluster that lost its quorum works; use [`NatsCluster::wait_for_jetstream`] for that.
    /// A running node is stopped (SIGTERM) first.
    ///
    /// # Panics
    ///
    /// When `node` is out of range or it does not come back in time.
    pub async fn restart_node(&mut self, node: usize) {
        let n = self.node_mut(node);
        if n.is_running() {
            n.stop().await;
        }
        if let Err(e) = n.start(Readiness::Clients, CLUSTER_TIMEOUT, true).await {
            panic!("{e}");
        }
    }

    /// Waits until JetStream answers through node `node` (at most ~30 s), e.g. after
    /// [`NatsCluster::restart_node`].
    ///
    /// # Panics
    ///
    /// When `node` is out of range or not running, or JetStream does not answer in time.
    pub async fn wait_for_jetstream(&self, node: usize) {
        let n = self.node(node);
        assert!(
            n.is_running(),
            "node n{node} is not running: restart_node({node}) first"
        );
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        if let Err(e) = n
            .wait_ready(Readiness::JetStream, deadline, CLUSTER_TIMEOUT)
            .await
        {
            panic!("{e}");
        }
    }

    /// Whether node `node`'s process is running.
    ///
    /// # Panics
    ///
    /// When `node` is out of range.
    pub fn is_running(&self, node: usize) -> bool {
        self.node(node).is_running()
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never true: [`NatsCluster::start`] needs at least one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn node(&self, node: usize) -> &Node {
        let len = self.nodes.len();
        self.nodes
            .get(node)
            .unwrap_or_else(|| panic!("node {node} out of range: the cluster has {len} nodes"))
    }

    fn node_mut(&mut self, node: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(node)
            .unwrap_or_else(|| panic!("node {node} out of range: the cluster has {len} nodes"))
    }
}

impl Drop for NatsCluster {
    /// Kills every node; the temporary directories are removed afterwards.
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill_blocking();
        }
    }
}
