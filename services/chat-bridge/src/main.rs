//! The `toronto-chat-bridge` binary: configuration from `TORONTO_*`, runs until SIGTERM.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    toronto_runtime::service_main(toronto_chat_bridge::run).await
}
