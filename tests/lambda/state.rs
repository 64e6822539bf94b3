//! Engine state in S3 (the emulator's): what the worker restores before a run and saves after.

use tarmac::aws::S3StateStore;
use tarmac::domain::StackRef;
use tarmac::ports::StateStore;

#[tokio::test]
async fn state_round_trips_through_s3_writing_only_what_changed() {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = tarmac::aws::s3::client(&sdk);
    let bucket = format!("tarmac-state-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = S3StateStore::new(s3.clone(), &bucket);
    let stack = StackRef::new("acme", "site", "prod").unwrap();
    let other = StackRef::new("acme", "site", "dev").unwrap();
    assert_eq!(
        store.location(&stack),
        format!("s3://{bucket}/acme/site/prod/")
    );

    // A first run: nothing to restore; a stale file on this worker's disk is cleared.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("stale.tfstate"), "old worker's leftovers").unwrap();
    let restored = store.restore(&stack, &state).await.unwrap();
    assert!(restored.is_empty());
    assert!(!state.join("stale.tfstate").exists());
    std::fs::create_dir_all(state.join(".pulumi/stacks")).unwrap();
    std::fs::write(state.join("terraform.tfstate"), "v1").unwrap();
    std::fs::write(state.join(".pulumi/stacks/prod.json"), "{}").unwrap();
    assert_eq!(store.save(&stack, &state, &restored).await.unwrap(), (2, 0));

    // The next run, on another worker: the same files; only the changed one is written back,
    // and the removed one is removed.
    let elsewhere = tempfile::tempdir().unwrap();
    let restored = store.restore(&stack, elsewhere.path()).await.unwrap();
    assert_eq!(restored.len(), 2);
    assert_eq!(
        std::fs::read_to_string(elsewhere.path().join("terraform.tfstate")).unwrap(),
        "v1"
    );
    std::fs::write(elsewhere.path().join("terraform.tfstate"), "v2").unwrap();
    std::fs::remove_file(elsewhere.path().join(".pulumi/stacks/prod.json")).unwrap();
    assert_eq!(
        store
            .save(&stack, elsewhere.path(), &restored)
            .await
            .unwrap(),
        (1, 1)
    );
    let restored = store.restore(&stack, &state).await.unwrap();
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        vec!["terraform.tfstate"]
    );
    assert_eq!(
        store.save(&stack, &state, &restored).await.unwrap(),
        (0, 0),
        "an unchanged state writes nothing"
    );

    // Stacks do not see each other's state; deleting one leaves the other.
    assert!(
        store
            .restore(&other, dir.path().join("o").as_path())
            .await
            .unwrap()
            .is_empty()
    );
    std::fs::write(dir.path().join("o/terraform.tfstate"), "other").unwrap();
    store
        .save(&other, &dir.path().join("o"), &Default::default())
        .await
        .unwrap();
    store.delete(&stack).await.unwrap();
    assert!(store.restore(&stack, &state).await.unwrap().is_empty());
    assert_eq!(store.restore(&other, &state).await.unwrap().len(), 1);

    store.delete(&other).await.unwrap();
    let left = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert!(left.contents().is_empty(), "{:?}", left.contents());
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
}
