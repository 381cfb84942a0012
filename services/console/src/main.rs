//! The `toronto-console` binary: configuration from `TORONTO_*`, runs until SIGTERM.
#![forbid(unsafe_code)]

/// mimalloc, as every service binary (see `services/planner/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    toronto_runtime::service_main(toronto_console::run).await
}
