//! The `scheduler` Lambda: the periodic tick (reaper and reconciler), on an EventBridge
//! `rate(1 minute)` rule.
#![forbid(unsafe_code)]

use std::sync::Arc;

use lambda_runtime::service_fn;
use tarmac::aws::AwsConfig;
use tarmac::lambda::AwsApp;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tarmac::telemetry::init(true);
    let cfg = AwsConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let app = Arc::new(AwsApp::build(cfg, &sdk).await?);
    lambda_runtime::run(service_fn(move |event| {
        let app = Arc::clone(&app);
        async move { tarmac::lambda::scheduler(&app, event).await }
    }))
    .await
}
