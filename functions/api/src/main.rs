//! The `api` Lambda: Tarmac's one HTTP router behind API Gateway (HTTP API v2 or REST API v1).
#![forbid(unsafe_code)]

use tarmac::aws::AwsConfig;
use tarmac::lambda::AwsApp;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tarmac::telemetry::init(true);
    let cfg = AwsConfig::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let app = AwsApp::build(cfg, &sdk).await?;
    lambda_http::run(tarmac::lambda::api_service(app.deps)).await
}
