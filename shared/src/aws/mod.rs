//! AWS mode's adapters: DynamoDB, SQS and S3 for the stores and the queue, KMS for envelope
//! encryption and signing, STS for credentials, Lambda for the worker's credential broker;
//! and the configuration the functions read from their environment.

pub mod config;
pub mod dynamo;
pub mod item;
pub mod kms;
pub mod oidc;
pub mod s3;
pub mod sqs;
pub mod sts;

pub use config::AwsConfig;
pub use dynamo::DynamoStore;
pub use kms::KmsSigner;
pub use s3::S3StateStore;
pub use sqs::SqsQueue;
pub use sts::StsExchange;

/// An AWS SDK error as ours: `context` names the call (`DynamoDB PutItem`), the SDK's error is
/// kept as the cause, and timeouts, dropped connections, throttling and the service's own
/// passing faults are retryable.
pub(crate) fn sdk_error<E, R>(
    context: impl Into<String>,
    e: aws_sdk_dynamodb::error::SdkError<E, R>,
) -> crate::Error
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::SdkError;
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
