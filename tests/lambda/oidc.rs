//! The `oidc` function (KMS, STS, leases) and the worker's broker that invokes it.

use super::*;

/// An RSA-2048 signing key in the emulator's KMS.
async fn kms_signing_key(kms: &aws_sdk_kms::Client) -> String {
    kms.create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id
}

#[tokio::test]
async fn the_oidc_function_signs_with_kms_exchanges_at_sts_and_answers_only_the_lease_holder() {
    require!(Emulator, Tools);
    use tarmac::aws::oidc::Reply;
    use tarmac::domain::{Lease, NewDeployment, Operation, StackRef};
    use tarmac::lambda::OidcFunction;
    use tarmac::ports::ClaimOutcome;

    let env = Env::new().await;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let kms = aws_sdk_kms::Client::new(&sdk);
    let first_key = kms_signing_key(&kms).await;
    let table = env.app.cfg.table.clone();
    let vars = [
        ("TARMAC_TABLE", table.clone()),
        (
            "TARMAC_PUBLIC_URL",
            "https://tarmac.example.com".to_string(),
        ),
        ("TARMAC_OIDC_KMS_KEY_ID", first_key.clone()),
    ];
    let lookup = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let function = OidcFunction::build(lookup, &sdk).await.unwrap();
    // A second cold start finds the key registered and keeps it.
    OidcFunction::build(lookup, &sdk).await.unwrap();

    // A running deployment with AWS OIDC settings, held by the worker's lease.
    let stack = StackRef::new("acme", "web", "oidc").unwrap();
    let id = uuid::Uuid::new_v4();
    env.app
        .deps
        .deployments
        .create_deployment(NewDeployment {
            id,
            stack: stack.clone(),
            operation: Operation::Update,
            config: DeploymentConfig::parse(
                serde_json::json!({
                    "sourceContext": {"git": {"repoUrl": "https://example.com/r.git"}},
                    "operationContext": {"oidc": {"aws": {
                        "roleArn": "arn:aws:iam::123456789012:role/deployer",
                        "sessionName": "${organization.name}-${deployment.id}",
                        "policyArns": ["arn:aws:iam::aws:policy/ReadOnlyAccess"],
                    }}},
                }),
                SourcePolicy::Stored,
            )
            .unwrap(),
            initiator: "api".into(),
            requested_by: "ci".into(),
            approval: None,
        })
        .await
        .unwrap();
    let lease = Lease {
        owner: "lambda-worker-1".into(),
        ttl: Duration::from_secs(60),
    };
    let claimed = env.app.deps.runs.claim(&stack, id, &lease).await.unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed(_)));
    env.app.deps.runs.mark_running(id, &lease).await.unwrap();

    let ask = |owner: &str| serde_json::json!({"org": "acme", "project": "web", "stack": "oidc", "deploymentId": id, "lease": owner});
    let reply = |v: Value| serde_json::from_value::<Reply>(v).unwrap();
    let Reply::Credentials(creds) = reply(function.handle(ask("lambda-worker-1")).await) else {
        panic!("the lease holder was refused");
    };
    let aws = creds.aws.as_ref().expect("AWS credentials from STS");
    assert!(!aws.access_key_id.is_empty() && !aws.session_token.is_empty());
    assert!(
        creds
            .notes
            .iter()
            .any(|n| n.contains(&format!("assumed-role/deployer/acme-{id}"))),
        "{:?}",
        creds.notes
    );

    // The API serves the KMS key's JWKS; the token verifies against it.
    let (status, jwks) = env.call("GET", "/oidc/.well-known/jwks.json", None).await;
    assert_eq!(status, 200, "{jwks}");
    let issuer = "https://tarmac.example.com/oidc";
    let claims = signing::verify(&creds.token, &jwks, issuer, "acme").unwrap();
    assert_eq!(
        claims["sub"],
        "pulumi:deploy:org:acme:project:web:stack:oidc:operation:update:scope:write"
    );
    let (_, discovery) = env
        .call("GET", "/oidc/.well-known/openid-configuration", None)
        .await;
    assert_eq!(discovery["issuer"], issuer);

    // Refused: a wrong lease, another stack's path, a request that is not one.
    for bad in [
        ask("someone-else"),
        serde_json::json!({"org": "acme", "project": "web", "stack": "dev", "deploymentId": id, "lease": "lambda-worker-1"}),
    ] {
        match reply(function.handle(bad).await) {
            Reply::Error { code, .. } => assert_eq!(code, 403),
            Reply::Credentials(_) => panic!("credentials for a caller without the lease"),
        }
    }
    assert!(matches!(
        reply(function.handle(serde_json::json!({"hello": 1})).await),
        Reply::Error { code: 400, .. }
    ));

    // Rotation to a second KMS key: new tokens carry its kid, old ones still verify.
    let old_kid = signing::kid(&creds.token);
    let second_key = kms_signing_key(&kms).await;
    // As `tarmac oidc rotate-key --kms-key-id` does it.
    let new_kid = tarmac::app::rotate_kms_key(&table, &second_key)
        .await
        .unwrap();
    assert_ne!(new_kid, old_kid);
    let Reply::Credentials(after) = reply(function.handle(ask("lambda-worker-1")).await) else {
        panic!("refused after the rotation");
    };
    assert_eq!(signing::kid(&after.token), new_kid);
    let (_, jwks) = env.call("GET", "/oidc/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    signing::verify(&creds.token, &jwks, issuer, "acme").unwrap();
    signing::verify(&after.token, &jwks, issuer, "acme").unwrap();

    // A finished deployment gets nothing, even with its lease.
    env.app
        .deps
        .runs
        .finish(id, &lease, tarmac::domain::JobStatus::Succeeded)
        .await
        .unwrap();
    assert!(matches!(
        reply(function.handle(ask("lambda-worker-1")).await),
        Reply::Error { code: 403, .. }
    ));
}

/// The worker's side of the exchange, over a real Lambda Invoke on the emulator, for the answers
/// a real run cannot provoke: the function behind it is a stand-in (a mock, in Python) that
/// refuses as the `oidc` function does (the test above covers the real one's refusals, and
/// `infra.rs` the real worker invoking the real, deployed function).
#[tokio::test]
async fn the_workers_broker_invokes_the_oidc_function_and_reads_its_refusals() {
    require!(Emulator, Tools);
    use tarmac::oidc::{CredentialBroker, ExchangeRequest};
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let lambda = aws_sdk_lambda::Client::new(&sdk);
    let dir = tempfile::tempdir().unwrap();
    let handler = r#"
import json
def handler(event, context):
    if event.get("lease") == "held":
        return {"credentials": {"token": "t", "expires": 1, "aws": None, "azure": None,
                                "gcp": None, "notes": [json.dumps(event, sort_keys=True)]}}
    return {"error": {"code": 403, "message": "not held: " + event["deploymentId"]}}
"#;
    std::fs::write(dir.path().join("stand_in.py"), handler).unwrap();
    let zip = dir.path().join("f.zip");
    let ok = std::process::Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.write(sys.argv[2], 'stand_in.py'); z.close()"])
        .arg(&zip)
        .arg(dir.path().join("stand_in.py"))
        .status()
        .unwrap();
    assert!(ok.success());
    let name = format!("tarmac-oidc-{}", uuid::Uuid::new_v4().simple());
    lambda
        .create_function()
        .function_name(&name)
        .runtime(aws_sdk_lambda::types::Runtime::Python312)
        .role("arn:aws:iam::123456789012:role/oidc")
        .handler("stand_in.handler")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(
                    std::fs::read(&zip).unwrap(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let broker = tarmac::aws::oidc::LambdaBroker::new(lambda.clone(), &name);
    let id = uuid::Uuid::new_v4();
    let request = |lease: &str| ExchangeRequest {
        org: "acme".into(),
        project: "web".into(),
        stack: "dev".into(),
        deployment_id: id,
        lease: lease.into(),
    };
    let creds = broker.exchange(&request("held")).await.unwrap();
    // The function received the request as the worker sent it.
    let received: Value = serde_json::from_str(&creds.notes[0]).unwrap();
    assert_eq!(received, serde_json::to_value(request("held")).unwrap());
    let refused = broker.exchange(&request("stolen")).await.unwrap_err();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(refused.to_string(), format!("not held: {id}"));
    lambda
        .delete_function()
        .function_name(&name)
        .send()
        .await
        .unwrap();
}
