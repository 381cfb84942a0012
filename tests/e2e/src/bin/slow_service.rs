//! Test fixture (not a product binary): a service with a slow endpoint, run through
//! the same `service_main` as the real services.
#![forbid(unsafe_code)]

use std::time::Duration;

use toronto_e2e::{SLEEP_VERB, Sleep, Slept};
use toronto_protocol::{ErrorBody, ServiceKind};
use toronto_runtime::{Request, ServiceRuntime};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    toronto_runtime::service_main(|config, shutdown| async move {
        let rt = ServiceRuntime::start(ServiceKind::Planner, "0.0.0", config, shutdown).await?;
        rt.endpoint(SLEEP_VERB, |req: Request<Sleep>| async move {
            let ms = req.data().ms;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, ErrorBody>(Slept { ms })
        })
        .await?;
        rt.run_until_shutdown().await
    })
    .await
}
