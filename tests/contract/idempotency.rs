//! Idempotency keys: taken once per org, replayed with the same request, refused with another,
//! held while the first request runs, given back after a server-side failure, forgotten when
//! they expire.

use std::time::Duration;

use time::OffsetDateTime;

use tarmac::ports::*;

use crate::Backend;

const HOLD: Duration = Duration::from_secs(60);

pub(crate) async fn an_idempotency_key_replays_refuses_and_expires(b: Backend) {
    let store = &b.idempotency;
    let now = OffsetDateTime::now_utc();
    let kept = KeptResponse {
        status: 202,
        content_type: Some("application/json".into()),
        body: br#"{"id":"x"}"#.to_vec(),
    };
    assert_eq!(
        store.start("org", "k1", "fp-a", now, HOLD).await.unwrap(),
        IdempotentStart::Run
    );
    // While it runs: the same request waits, another is refused.
    assert_eq!(
        store.start("org", "k1", "fp-a", now, HOLD).await.unwrap(),
        IdempotentStart::InProgress
    );
    assert_eq!(
        store.start("org", "k1", "fp-b", now, HOLD).await.unwrap(),
        IdempotentStart::Mismatch
    );
    // Another org's key of the same name is its own.
    assert_eq!(
        store.start("other", "k1", "fp-b", now, HOLD).await.unwrap(),
        IdempotentStart::Run
    );
    store
        .keep("org", "k1", "fp-a", &kept, now + Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        store.start("org", "k1", "fp-a", now, HOLD).await.unwrap(),
        IdempotentStart::Replay(kept.clone())
    );
    assert_eq!(
        store.start("org", "k1", "fp-b", now, HOLD).await.unwrap(),
        IdempotentStart::Mismatch
    );
    // A keep by a request that no longer holds the key (another fingerprint) changes nothing.
    let other = KeptResponse {
        status: 500,
        ..kept.clone()
    };
    store
        .keep("org", "k1", "fp-b", &other, now + Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        store.start("org", "k1", "fp-a", now, HOLD).await.unwrap(),
        IdempotentStart::Replay(kept.clone())
    );

    // A released key (the first attempt failed on the server's side) runs again.
    assert_eq!(
        store.start("org", "k2", "fp", now, HOLD).await.unwrap(),
        IdempotentStart::Run
    );
    store.release("org", "k2", "fp").await.unwrap();
    assert_eq!(
        store.start("org", "k2", "fp", now, HOLD).await.unwrap(),
        IdempotentStart::Run
    );
    // A hold that ran out (a server that died mid-request) frees the key.
    let later = now + HOLD + Duration::from_secs(1);
    assert_eq!(
        store.start("org", "k2", "fp", later, HOLD).await.unwrap(),
        IdempotentStart::Run
    );
    // A kept response is forgotten once it expires.
    let after_a_day = now + Duration::from_secs(3601);
    assert_eq!(
        store
            .start("org", "k1", "fp-b", after_a_day, HOLD)
            .await
            .unwrap(),
        IdempotentStart::Run
    );
}
