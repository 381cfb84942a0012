//! Test fixture (not a product binary): one service (`test_service <planner|deployer|
//! monitor|incident-commander|chat-bridge>`), configured from `TORONTO_*` variables
//! and run through the same `service_main` as the real binaries, trusting the test
//! kit's admin key. It prints `instance <id>` once started, so that a test driving it
//! as a separate process knows which instance to `kill -9`.
#![forbid(unsafe_code)]

use std::io::Write;

use toronto_runtime::{RuntimeError, ServiceRuntime};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let kind = std::env::args().nth(1).unwrap_or_default();
    toronto_runtime::service_main(|config, shutdown| async move {
        let config = toronto_testkit::with_test_admin(config);
        let rt: ServiceRuntime = match kind.as_str() {
            "planner" => Box::pin(toronto_planner::start(config, shutdown)).await?,
            "deployer" => Box::pin(toronto_deployer::start(config, shutdown)).await?,
            "monitor" => Box::pin(toronto_monitor::start(config, shutdown)).await?,
            "incident-commander" => {
                Box::pin(toronto_incident_commander::start(config, shutdown)).await?
            }
            "chat-bridge" => Box::pin(toronto_chat_bridge::start(config, shutdown)).await?,
            other => {
                return Err(RuntimeError::Config(
                    toronto_runtime::config::ConfigError::Invalid(format!(
                        "unknown service {other:?}"
                    )),
                ));
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "instance {}", rt.host.id());
        let _ = out.flush();
        drop(out);
        rt.run_until_shutdown().await
    })
    .await
}
