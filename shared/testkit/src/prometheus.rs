//! A real Prometheus (Debian's `prometheus`, or `TORONTO_PROMETHEUS_BIN`) on a free
//! port, scraping one target every 200 ms.

use std::net::SocketAddr;
use std::time::Duration;

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    /// The process (kill it to test an outage).
    pub child: tokio::process::Child,
    /// Its HTTP API, `http://127.0.0.1:<port>`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` under the job name `job`, and waits until
    /// it is ready and has scraped `target` once (a fresh Prometheus takes a few
    /// seconds to start its scrape loops; a test that deploys at once would otherwise
    /// find no data where a running Prometheus has some).
    pub async fn start(target: SocketAddr, job: &str) -> Prometheus {
        let bin = std::env::var("TORONTO_PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("the configuration is written");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} (apt-get install prometheus, or set TORONTO_PROMETHEUS_BIN): {e}")
            });
        let url = format!("http://127.0.0.1:{port}");
        let http = toronto_runtime::tls::http_client()
            .build()
            .expect("an HTTP client");
        for _ in 0..150 {
            if let Ok(r) = http.get(format!("{url}/-/ready")).send().await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let up = format!("{url}/api/v1/query?query=up%7Bjob%3D%22{job}%22%7D");
        for _ in 0..150 {
            let scraped = match http.get(&up).send().await {
                Ok(r) => r.json::<serde_json::Value>().await.ok(),
                Err(_) => None,
            };
            let is_up = scraped.is_some_and(|v| {
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|s| s["value"][1] == "1"))
            });
            if is_up {
                return Prometheus {
                    child,
                    url,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("Prometheus never became ready or never scraped {target}:\n{log}");
    }
}
