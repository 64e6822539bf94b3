//! The signing keyring, the issuer across a rotation, and the credential exchange.

use std::sync::Arc;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use tarmac::domain::*;
use tarmac::error::Error;

use tarmac::oidc::{Issuer, LocalSigner};

use crate::{Backend, claim, claimed, create, lease, stack};

pub(crate) async fn the_signing_keyring_is_written_optimistically(b: Backend) {
    use tarmac::domain::keys::{KeyMaterial, SigningKey};
    let key = |kid: &str| SigningKey {
        kid: kid.into(),
        n: "n".into(),
        e: "AQAB".into(),
        created: 1,
        retired_until: None,
        material: KeyMaterial::Kms(kid.into()),
    };
    // Embedded, the app made its first key when it was built; AWS registers one on the
    // `oidc` function's first cold start, so its keyring starts empty.
    let (_, v) = b.keys.keyring().await.unwrap();
    assert_eq!(b.keys.put_keyring(&[key("a")], v).await.unwrap(), v + 1);
    assert!(matches!(
        b.keys.put_keyring(&[key("b")], v).await,
        Err(Error::Conflict(_))
    ));
    let both = [key("a"), key("b")];
    assert_eq!(b.keys.put_keyring(&both, v + 1).await.unwrap(), v + 2);
    assert!(matches!(
        b.keys.put_keyring(&[key("c")], v + 1).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(b.keys.keyring().await.unwrap(), (both.to_vec(), v + 2));
}

pub(crate) async fn tokens_verify_against_the_jwks_across_a_rotation(b: Backend) {
    let signer = LocalSigner::new(b.cipher.clone());
    let issuer = Issuer::new(
        "https://tarmac.test/oidc",
        b.keys.clone(),
        Arc::new(signer.clone()),
    );
    issuer
        .ensure_key(async || signer.generate().await)
        .await
        .unwrap();
    issuer
        .ensure_key(async || signer.generate().await)
        .await
        .unwrap();
    let jwks = issuer.jwks().await.unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        1,
        "one key, made once"
    );
    let claims = |n: i64| {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        json!({"iss": "https://tarmac.test/oidc", "aud": "org", "sub": format!("s{n}"), "iat": now, "nbf": now, "exp": now + 600})
    };
    let before = issuer.sign(&claims(1)).await.unwrap();
    let old_kid = crate::signing::kid(&before);
    let new_kid = issuer
        .rotate(signer.generate().await.unwrap())
        .await
        .unwrap();
    assert_ne!(old_kid, new_kid);
    let after = issuer.sign(&claims(2)).await.unwrap();
    assert_eq!(
        crate::signing::kid(&after),
        new_kid,
        "new tokens carry the new kid"
    );
    let jwks = issuer.jwks().await.unwrap();
    let verify = |t: &str| crate::signing::verify(t, &jwks, "https://tarmac.test/oidc", "org");
    assert_eq!(
        verify(&before).unwrap()["sub"],
        "s1",
        "tokens signed before the rotation still verify"
    );
    assert_eq!(verify(&after).unwrap()["sub"], "s2");
    // A token whose payload was changed does not verify.
    let mut parts: Vec<&str> = after.split('.').collect();
    let forged = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(3).to_string())
    };
    parts[1] = &forged;
    assert!(verify(&parts.join(".")).is_err());
}

pub(crate) async fn only_a_running_deployments_worker_gets_its_credentials(b: Backend) {
    use tarmac::oidc::{CredentialBroker, ExchangeRequest, Exchanger};
    let signer = LocalSigner::new(b.cipher.clone());
    let issuer = Arc::new(Issuer::new(
        "https://tarmac.test/oidc",
        b.keys.clone(),
        Arc::new(signer.clone()),
    ));
    issuer
        .ensure_key(async || signer.generate().await)
        .await
        .unwrap();
    let exchanger = Exchanger::new(
        b.runs.clone(),
        issuer.clone(),
        Arc::new(tarmac::aws::StsExchange::default()),
    );
    let request = |st: &StackRef, id: Uuid, lease: &str| ExchangeRequest {
        org: st.org.clone(),
        project: st.project.clone(),
        stack: st.stack.clone(),
        deployment_id: id,
        lease: lease.into(),
    };
    let refused = |r: tarmac::error::Result<tarmac::oidc::RunCredentials>| match r {
        Err(e) => e.status().as_u16() == 403,
        Ok(_) => false,
    };

    let (mine, theirs) = (stack("creds"), stack("creds-other"));
    let n = crate::new_with(
        &mine,
        Operation::Preview,
        json!({"oidc": {"readScope": true}}),
    );
    let id = b.deployments.create_deployment(n).await.unwrap().id;
    let other = create(&b, &theirs, Operation::Update).await;
    // Queued: nobody runs it yet.
    assert!(refused(exchanger.exchange(&request(&mine, id, "w")).await));
    let (w, w2) = (lease("w", 60_000), lease("w2", 60_000));
    claimed(claim(&b, &mine, id, &w).await);
    b.runs.mark_running(id, &w).await.unwrap();
    claimed(claim(&b, &theirs, other, &w2).await);
    b.runs.mark_running(other, &w2).await.unwrap();

    let creds = exchanger.exchange(&request(&mine, id, "w")).await.unwrap();
    assert!(creds.aws.is_none() && creds.azure.is_none() && creds.gcp.is_none());
    let claims = crate::signing::verify(
        &creds.token,
        &issuer.jwks().await.unwrap(),
        "https://tarmac.test/oidc",
        "org",
    )
    .unwrap();
    assert_eq!(
        claims["sub"],
        "pulumi:deploy:org:org:project:proj:stack:creds:operation:preview:scope:read"
    );
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["deployment"], 1);
    assert_eq!(creds.expires, claims["exp"].as_i64().unwrap());

    // A wrong lease, another deployment's lease, another stack's path: all 403.
    assert!(refused(
        exchanger.exchange(&request(&mine, id, "thief")).await
    ));
    assert!(refused(exchanger.exchange(&request(&mine, id, "w2")).await));
    assert!(refused(
        exchanger.exchange(&request(&theirs, other, "w")).await
    ));
    assert!(refused(
        exchanger.exchange(&request(&theirs, id, "w")).await
    ));
    // A running deployment without OIDC settings gets no token (400, not a token by default).
    assert_eq!(
        exchanger
            .exchange(&request(&theirs, other, "w2"))
            .await
            .unwrap_err()
            .status()
            .as_u16(),
        400
    );
    // Once finished, not even its own worker gets credentials.
    b.runs.finish(id, &w, JobStatus::Succeeded).await.unwrap();
    assert!(refused(exchanger.exchange(&request(&mine, id, "w")).await));
}
