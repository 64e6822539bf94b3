//! Stacks, settings, orgs, tokens and integrations.

use std::sync::Arc;

use serde_json::json;

use tarmac::domain::*;
use tarmac::error::Error;

use crate::{Backend, call, create, stack};

pub(crate) async fn settings_writes_are_optimistic(b: Backend) {
    let st = stack("set");
    assert!(b.stacks.get_settings(&st).await.unwrap().is_none());
    assert_eq!(
        b.stacks
            .put_settings(&st, &json!({"a": 1}), 0)
            .await
            .unwrap(),
        1
    );
    assert!(
        b.stacks.stack_exists(&st).await.unwrap(),
        "settings create the stack"
    );
    assert!(matches!(
        b.stacks.put_settings(&st, &json!({"a": 2}), 0).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        b.stacks
            .put_settings(&st, &json!({"a": 2}), 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        b.stacks.get_settings(&st).await.unwrap().unwrap().settings,
        json!({"a": 2})
    );
    // A delete of settings that changed since they were read (version 1, or none) is refused.
    for stale in [1, 0] {
        assert!(matches!(
            b.stacks.delete_settings(&st, stale).await,
            Err(Error::Conflict(_))
        ));
    }
    assert!(b.stacks.get_settings(&st).await.unwrap().is_some());
    assert!(b.stacks.delete_settings(&st, 2).await.unwrap());
    assert!(b.stacks.get_settings(&st).await.unwrap().is_none());
    assert!(
        !b.stacks.delete_settings(&st, 0).await.unwrap(),
        "nothing left to delete"
    );
    assert!(matches!(
        b.stacks.delete_settings(&st, 2).await,
        Err(Error::Conflict(_))
    ));
    // Versions keep counting after a delete.
    assert_eq!(
        b.stacks
            .put_settings(&st, &json!({"a": 3}), 0)
            .await
            .unwrap(),
        3
    );
    assert!(matches!(
        b.stacks.delete_settings(&stack("none"), 0).await,
        Err(Error::NotFound(_))
    ));
}

pub(crate) async fn stacks_orgs_and_tokens(b: Backend) {
    let st = stack("explicit");
    b.stacks.create_stack(&st).await.unwrap();
    assert!(matches!(
        b.stacks.create_stack(&st).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(b.stacks.get_outputs(&st).await.unwrap(), Some(json!({})));
    assert_eq!(b.stacks.get_outputs(&stack("none")).await.unwrap(), None);
    b.stacks.set_stack_paused(&st, true).await.unwrap();
    let id = create(&b, &stack("other"), Operation::Preview).await;
    let org = b.orgs.org_state("org").await.unwrap();
    assert!(!org.paused);
    assert_eq!(org.paused_stacks, vec!["proj/explicit".to_string()]);
    assert_eq!(org.counts.0.get(&JobStatus::NotStarted), Some(&1));
    assert!(
        b.deployments
            .get_deployment(&stack("other"), id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        b.deployments
            .get_deployment(&st, id)
            .await
            .unwrap()
            .is_none(),
        "ids are scoped to their stack"
    );

    assert_eq!(b.tokens.token_count().await.unwrap(), 0);
    b.tokens
        .create_token("h1", "org", Role::Read, "reader")
        .await
        .unwrap();
    b.tokens
        .create_token("h2", "acme", Role::Admin, "boss")
        .await
        .unwrap();
    assert_eq!(b.tokens.token_count().await.unwrap(), 2);
    let p = b.tokens.find_token("h2").await.unwrap().unwrap();
    assert_eq!(
        (p.org.as_str(), p.role, p.token_name.as_str()),
        ("acme", Role::Admin, "boss")
    );
    assert!(b.tokens.find_token("nope").await.unwrap().is_none());
}

pub(crate) async fn a_bootstrap_secret_gives_one_admin_token(b: Backend) {
    use tower::ServiceExt;
    let secret = "tmb_the-secret";
    let d = Arc::new(tarmac::deps::Deps {
        bootstrap_sha256: Some(tarmac::crypto::sha256_hex(secret.as_bytes())),
        ..(*b.app.deps).clone()
    });
    let post = |body: serde_json::Value| {
        let router = tarmac::http::router(Arc::clone(&d));
        async move {
            let req = axum::http::Request::builder()
                .method("POST")
                .uri("/api/bootstrap")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        }
    };
    // Refusals write nothing.
    for (body, want) in [
        (json!({"secret": "tmb_wrong", "organization": "acme"}), 401),
        (json!({"organization": "acme"}), 400),
        (json!({"secret": secret, "organization": "no/such"}), 400),
    ] {
        let (status, v) = post(body.clone()).await;
        assert_eq!(status, want, "{body} -> {v}");
        assert_eq!(v["code"], want, "{v}");
    }
    assert_eq!(b.tokens.token_count().await.unwrap(), 0);

    let (status, v) = post(json!({"secret": secret, "organization": "acme"})).await;
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap();
    let p = b
        .tokens
        .find_token(&tarmac::crypto::token_hash(token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.org.as_str(), p.role), ("acme", Role::Admin));
    assert_eq!(p.token_name, "bootstrap-admin");
    assert!(!v.to_string().contains(secret));

    // Once only, for this org or any other.
    let (status, v) = post(json!({"secret": secret, "organization": "other"})).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(b.tokens.token_count().await.unwrap(), 1);
    // The store refuses a second redemption by itself, too.
    let hash = tarmac::crypto::sha256_hex(secret.as_bytes());
    assert!(matches!(
        b.tokens
            .redeem_bootstrap(&hash, "h2", "acme", "again")
            .await,
        Err(tarmac::error::Error::Conflict(_))
    ));
    assert!(b.tokens.find_token("h2").await.unwrap().is_none());

    // Without a configured secret the route does not exist.
    let (status, v) = call(
        &b,
        "POST",
        "/api/bootstrap",
        Some(json!({"secret": secret, "organization": "acme"})),
    )
    .await;
    assert_eq!(status, 404, "{v}");
}

pub(crate) async fn integrations_and_an_orgs_stack_settings(b: Backend) {
    assert_eq!(b.orgs.get_integration("org", "github").await.unwrap(), None);
    let cfg = json!({"webhookSecret": "sealed", "apiUrl": "https://api.github.com"});
    b.orgs
        .put_integration("org", "github", Some(&cfg))
        .await
        .unwrap();
    assert_eq!(
        b.orgs.get_integration("org", "github").await.unwrap(),
        Some(cfg)
    );
    assert_eq!(
        b.orgs.get_integration("other", "github").await.unwrap(),
        None
    );
    b.orgs.put_integration("org", "github", None).await.unwrap();
    assert_eq!(b.orgs.get_integration("org", "github").await.unwrap(), None);

    let with = stack("with-settings");
    b.stacks
        .put_settings(&with, &json!({"gitHub": {"repository": "o/r"}}), 0)
        .await
        .unwrap();
    b.stacks.create_stack(&stack("bare")).await.unwrap();
    let elsewhere = StackRef::new("other-org", "proj", "x").unwrap();
    b.stacks
        .put_settings(&elsewhere, &json!({}), 0)
        .await
        .unwrap();
    let listed = b.stacks.list_stack_settings("org").await.unwrap();
    assert_eq!(
        listed,
        vec![(with, json!({"gitHub": {"repository": "o/r"}}))]
    );
}
