//! The `worker` Lambda: consumes the SQS FIFO queue and runs deployments, reporting partial
//! batch failures.
#![forbid(unsafe_code)]

use std::sync::Arc;

use lambda_runtime::service_fn;
use tarmac::aws::AwsConfig;
use tarmac::lambda::AwsApp;

fn main() -> Result<(), lambda_runtime::Error> {
    // First: started as a deployment's sandbox helper, this process becomes that child.
    tarmac::sandbox::trampoline();
    run()
}

#[tokio::main]
async fn run() -> Result<(), lambda_runtime::Error> {
    tarmac::telemetry::init(true);
    let cfg = AwsConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let app = Arc::new(AwsApp::build(cfg, &sdk).await?);
    // Before the first message: `required` on a kernel that cannot confine runs fails the
    // function's init, saying why, instead of failing every deployment.
    app.runner.sandbox().ready().await?;
    lambda_runtime::run(service_fn(move |event| {
        let app = Arc::clone(&app);
        async move { tarmac::lambda::worker(&app, event).await }
    }))
    .await
}
