//! Engine state in S3 (the emulator's): what the worker restores before a run and saves after.

use tarmac::aws::S3StateStore;
use tarmac::domain::StackRef;
use tarmac::error::Error;
use tarmac::ports::StateStore;

/// An S3 client, a new bucket in the emulator, and a state store on it.
async fn fresh_store() -> (aws_sdk_s3::Client, String, S3StateStore) {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = tarmac::aws::s3::client(&sdk);
    let bucket = format!("tarmac-state-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = S3StateStore::new(s3.clone(), &bucket);
    (s3, bucket, store)
}

#[tokio::test]
async fn state_round_trips_through_s3_writing_only_what_changed() {
    require!(Emulator, Tools);
    let (s3, bucket, store) = fresh_store().await;
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
    let mut saved = store.restore(&stack, &state).await.unwrap();
    assert!(saved.is_empty());
    assert!(!state.join("stale.tfstate").exists());
    std::fs::create_dir_all(state.join(".pulumi/stacks")).unwrap();
    std::fs::write(state.join("terraform.tfstate"), "v1").unwrap();
    std::fs::write(state.join(".pulumi/stacks/prod.json"), "{}").unwrap();
    assert_eq!(
        store.save(&stack, &state, &mut saved).await.unwrap(),
        (2, 0)
    );
    // The manifest follows the writes: saving again writes nothing, and a further change is
    // not mistaken for somebody else's.
    assert_eq!(
        store.save(&stack, &state, &mut saved).await.unwrap(),
        (0, 0)
    );
    std::fs::write(state.join(".pulumi/stacks/prod.json"), "{\"v\":1}").unwrap();
    assert_eq!(
        store.save(&stack, &state, &mut saved).await.unwrap(),
        (1, 0)
    );

    // The next run, on another worker: the same files; only the changed one is written back,
    // and the removed one is removed.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut restored = store.restore(&stack, elsewhere.path()).await.unwrap();
    assert_eq!(restored.len(), 2);
    assert_eq!(
        std::fs::read_to_string(elsewhere.path().join("terraform.tfstate")).unwrap(),
        "v1"
    );
    std::fs::write(elsewhere.path().join("terraform.tfstate"), "v2").unwrap();
    std::fs::remove_file(elsewhere.path().join(".pulumi/stacks/prod.json")).unwrap();
    assert_eq!(
        store
            .save(&stack, elsewhere.path(), &mut restored)
            .await
            .unwrap(),
        (1, 1)
    );
    let mut restored = store.restore(&stack, &state).await.unwrap();
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        vec!["terraform.tfstate"]
    );
    assert_eq!(
        store.save(&stack, &state, &mut restored).await.unwrap(),
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
        .save(&other, &dir.path().join("o"), &mut Default::default())
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

/// Two runs that restored the same state (a lease lost while the first run's engine still ran):
/// whichever saves second is refused, for a changed, a removed and a new file alike, and the
/// first run's state stands.
#[tokio::test]
async fn a_save_never_overwrites_state_another_run_saved() {
    require!(Emulator, Tools);
    let (s3, bucket, store) = fresh_store().await;
    let stack = StackRef::new("acme", "site", "prod").unwrap();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (first.path(), second.path());
    let mut seed = store.restore(&stack, a).await.unwrap();
    std::fs::write(a.join("terraform.tfstate"), "v1").unwrap();
    std::fs::write(a.join("extra.json"), "{}").unwrap();
    store.save(&stack, a, &mut seed).await.unwrap();

    let stored = |s3: aws_sdk_s3::Client, key: &'static str| {
        let bucket = bucket.clone();
        async move {
            let out = s3
                .get_object()
                .bucket(bucket)
                .key(format!("acme/site/prod/{key}"))
                .send()
                .await
                .unwrap();
            String::from_utf8(out.body.collect().await.unwrap().to_vec()).unwrap()
        }
    };
    let conflict = |r: Result<(usize, usize), Error>| match r {
        Err(Error::Conflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    };

    // A changed file.
    let mut ours = store.restore(&stack, a).await.unwrap();
    let mut theirs = store.restore(&stack, b).await.unwrap();
    std::fs::write(a.join("terraform.tfstate"), "v2").unwrap();
    std::fs::write(b.join("terraform.tfstate"), "v2 elsewhere").unwrap();
    assert_eq!(store.save(&stack, a, &mut ours).await.unwrap(), (1, 0));
    let m = conflict(store.save(&stack, b, &mut theirs).await);
    assert!(
        m.contains(&format!("s3://{bucket}/acme/site/prod/terraform.tfstate")),
        "{m}"
    );
    assert_eq!(stored(s3.clone(), "terraform.tfstate").await, "v2");

    // A removed file that the other run changed, and a new file the other run made too.
    let mut ours = store.restore(&stack, a).await.unwrap();
    let mut theirs = store.restore(&stack, b).await.unwrap();
    std::fs::write(a.join("extra.json"), "{\"v\":2}").unwrap();
    std::fs::write(a.join("new.json"), "ours").unwrap();
    store.save(&stack, a, &mut ours).await.unwrap();
    std::fs::remove_file(b.join("extra.json")).unwrap();
    conflict(store.save(&stack, b, &mut theirs).await);
    assert_eq!(stored(s3.clone(), "extra.json").await, "{\"v\":2}");
    let mut theirs = store.restore(&stack, b).await.unwrap();
    let mut stale = theirs.clone();
    stale.remove("new.json");
    std::fs::write(b.join("new.json"), "theirs").unwrap();
    conflict(store.save(&stack, b, &mut stale).await);
    assert_eq!(stored(s3.clone(), "new.json").await, "ours");
    // The run that is up to date saves as usual.
    assert_eq!(store.save(&stack, b, &mut theirs).await.unwrap(), (1, 0));
    assert_eq!(stored(s3.clone(), "new.json").await, "theirs");

    store.delete(&stack).await.unwrap();
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
}

/// The runner's side of a lost save, on a real deployment through the worker handler: while
/// Terraform applies, its own `local-exec` provisioner disturbs the state bucket. Another run's
/// state appearing is a conflict, final at once; the bucket gone is a failure, retried, then
/// given up. Either way the run fails, its log says why, the stack is paused so that nothing
/// runs on the older state, and nothing another run stored is overwritten.
#[tokio::test]
async fn a_run_whose_state_cannot_be_saved_fails_and_pauses_its_stack() {
    require!(Emulator, Tools);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = tarmac::aws::s3::client(&sdk);
    let stack = StackRef::new("acme", "web", "dev").unwrap();

    for conflict in [true, false] {
        let bucket = format!("tarmac-state-{}", uuid::Uuid::new_v4().simple());
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let disturb = if conflict {
            format!(
                "curl -sf -X PUT --data-binary theirs {endpoint}/{bucket}/acme/web/dev/terraform.tfstate"
            )
        } else {
            format!("curl -sf -X DELETE {endpoint}/{bucket}")
        };
        // The Env outlives nothing here; leaking the bucket name gives it the 'static it wants.
        let bucket: &'static str = Box::leak(bucket.into_boxed_str());
        let env = super::Env::with(&[("TARMAC_STATE_BUCKET", bucket)]).await;
        std::fs::write(
            env.repo.path().join("infra/main.tf"),
            format!(
                "resource \"terraform_data\" \"x\" {{\n  input = \"aws\"\n  provisioner \"local-exec\" {{\n    command = \"{disturb}\"\n  }}\n}}\n"
            ),
        )
        .unwrap();
        crate::env::git(
            env.repo.path(),
            &["commit", "-qam", "disturb the state bucket"],
        );

        env.api("apigw-v2-patch-settings.json", "").await;
        let (_, created) = env.api("apigw-v2-create-deployment.json", "").await;
        let id = created["id"].as_str().unwrap().to_string();
        let started = std::time::Instant::now();
        assert!(env.work(env.receive().await).await.is_empty());
        let elapsed = started.elapsed();

        let (_, d) = env.api("apigw-v2-get-deployment.json", &id).await;
        assert_eq!(d["status"], "failed", "{d}");
        let text = env.log_text(&id).await;
        assert!(
            text.contains("Apply complete! Resources: 1 added"),
            "{text}"
        );
        let why = if conflict {
            format!(
                "s3://{bucket}/acme/web/dev/terraform.tfstate was changed by another run after this run restored it, so this run's state was not saved over it"
            )
        } else {
            format!("cannot save the stack's state to s3://{bucket}/acme/web/dev/")
        };
        assert!(text.contains(&why), "{text}");
        assert!(text.contains("The stack is paused"), "{text}");
        assert_eq!(
            env.app.deps.stacks.stack_paused(&stack).await.unwrap(),
            Some(true)
        );
        if conflict {
            let out = s3
                .get_object()
                .bucket(bucket)
                .key("acme/web/dev/terraform.tfstate")
                .send()
                .await
                .unwrap();
            assert_eq!(&out.body.collect().await.unwrap().to_vec()[..], b"theirs");
            s3.delete_object()
                .bucket(bucket)
                .key("acme/web/dev/terraform.tfstate")
                .send()
                .await
                .unwrap();
            s3.delete_bucket().bucket(bucket).send().await.unwrap();
        } else {
            // The two retries wait 1 s and 4 s before the save is given up.
            assert!(elapsed >= std::time::Duration::from_secs(5), "{elapsed:?}");
        }
    }
}
