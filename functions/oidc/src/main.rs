//! The `oidc` Lambda: the only signer of OIDC tokens (`kms:Sign`). Workers invoke it with an
//! exchange request; it checks the caller's lease, signs the deployment's token and exchanges
//! it for cloud credentials.
#![forbid(unsafe_code)]

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use tarmac::lambda::OidcFunction;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tarmac::telemetry::init(true);
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let function = Arc::new(OidcFunction::build(|k| std::env::var(k).ok(), &sdk).await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let function = Arc::clone(&function);
        async move { Ok::<_, lambda_runtime::Error>(function.handle(event.payload).await) }
    }))
    .await
}
