//! AWS mode in-process: the `events/` fixtures, the Lambda handlers, and the whole path
//! api → SQS FIFO → worker → DynamoDB, on the local AWS emulator that tests/run.sh starts,
//! with a real git repository and the real Terraform engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::apigw::{ApiGatewayProxyRequest, ApiGatewayV2httpRequest};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use tarmac::crypto::{new_token, token_hash};
use tarmac::domain::Role;
use tarmac::domain::spec::{DeploymentConfig, SourcePolicy};
use tarmac::lambda::AwsApp;
use tower::ServiceExt;

#[macro_use]
#[path = "../support/require.rs"]
mod require;
#[path = "../support/emulator.rs"]
mod emulator;
#[path = "../support/escapes.rs"]
mod escapes;
#[path = "../support/signing.rs"]
mod signing;
// Shared with the black-box tests; this crate uses part of it.
mod env;
#[allow(dead_code)]
#[path = "../support/fakes.rs"]
mod fakes;
mod fixtures;
#[path = "../support/git_server.rs"]
mod git_server;
mod infra;
mod notifications;
mod oidc;
mod pools;
mod sandbox;
mod scheduler;
mod state;
mod worker;

use env::Env;
use env::git;
use fixtures::fixture;
