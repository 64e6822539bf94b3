//! AWS mode's adapters: DynamoDB, SQS and S3 for the stores and the queue, KMS for envelope
//! encryption and signing, STS for credentials, Lambda for the worker's credential broker;
//! and the configuration the functions read from their environment.
//!
//! Only STS is always built: `tarmac serve` exchanges deployments' OIDC tokens there. The rest
//! is the `aws` feature, which the Lambda functions and `infra/` turn on.

#[cfg(feature = "aws")]
pub mod config;
#[cfg(feature = "aws")]
pub mod dynamo;
#[cfg(feature = "aws")]
pub mod item;
#[cfg(feature = "aws")]
pub mod kms;
#[cfg(feature = "aws")]
pub mod oidc;
#[cfg(feature = "aws")]
pub mod s3;
#[cfg(feature = "aws")]
pub mod sqs;
pub mod sts;

#[cfg(feature = "aws")]
pub use config::AwsConfig;
#[cfg(feature = "aws")]
pub use dynamo::DynamoStore;
#[cfg(feature = "aws")]
pub use kms::KmsSigner;
#[cfg(feature = "aws")]
pub use s3::S3StateStore;
#[cfg(feature = "aws")]
pub use sqs::SqsQueue;
pub use sts::StsExchange;

/// An AWS SDK error as ours: `context` names the call (`DynamoDB PutItem`), the SDK's error is
/// kept as the cause, and timeouts, dropped connections, throttling and the service's own
/// passing faults are retryable.
pub(crate) fn sdk_error<E, R>(
    context: impl Into<String>,
    e: aws_sdk_sts::error::SdkError<E, R>,
) -> crate::Error
where
    E: std::error::Error + aws_sdk_sts::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_sts::error::SdkError;
    let retryable = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => se.err().code().is_some_and(|code| {
            code.contains("Throttl")
                || matches!(
                    code,
                    "ProvisionedThroughputExceededException"
                        | "RequestLimitExceeded"
                        | "TransactionConflict"
                        | "InternalServerError"
                        | "InternalFailure"
                        | "ServiceUnavailable"
                        | "SlowDown"
                        | "KMSInternalException"
                )
        }),
        _ => false,
    };
    crate::Error::backend(context, e, retryable)
}
