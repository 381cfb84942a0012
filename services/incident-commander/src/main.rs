//! The `toronto-incident-commander` binary: configuration from `TORONTO_*`, runs until SIGTERM.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    toronto_runtime::service_main(toronto_incident_commander::run).await
}
