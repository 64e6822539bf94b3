//! AWS mode: DynamoDB, SQS and S3 adapters of the ports, KMS envelope encryption, and the
//! configuration the Lambda functions read from their environment.

pub mod app;
pub mod config;
pub mod dynamo;
mod dynamo_notifications;
mod dynamo_schedules;
pub mod item;
pub mod kms;
pub mod lambda;
pub mod oidc;
pub mod s3;
pub mod sqs;

pub use app::AwsApp;
pub use config::AwsConfig;
pub use dynamo::DynamoStore;
pub use s3::S3StateStore;
pub use sqs::SqsQueue;
