//! Fairness across orgs: org A bursts `--burst` deployments (default 5,000) over `--stacks`
//! stacks (default 100), while org B submits one deployment a second for `--seconds` (default
//! 60), each on a stack of its own. Reports B's queue wait (creation to the run's start, from
//! the deployments' own records): a fair queue starts B's runs next, whatever A has queued.
//! The engine is a trivial `terraform` script; the git clone of a local repository is real.
//!
//! cargo bench --bench fairness -- [--burst 5000] [--seconds 60] [--workers 4] [--stacks 100]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let (burst, seconds, workers, stacks) = (
        common::arg("--burst", 5000) as usize,
        common::arg("--seconds", 60),
        common::arg("--workers", 2 * cores),
        common::arg("--stacks", 100) as usize,
    );
    let work = tempfile::tempdir().unwrap();
    let bin = common::trivial_engine(work.path());
    let repo = common::repo_with(work.path(), "# trivial\n");
    let data = work.path().join("data");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let server = common::Server::start(
        &data,
        &["--allow-local-repos", "--workers", &workers.to_string()],
        Some(&path),
    );
    let (url, a_auth) = (server.url.clone(), server.auth.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .args([
            "token",
            "create",
            "--org",
            "b",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let b_auth = format!("token {}", String::from_utf8(out.stdout).unwrap().trim());
    let client = reqwest::Client::new();
    let settings = json!({"sourceContext": {"git": {"repoUrl": format!("file://{}", repo.display()), "branch": "main", "repoDir": "infra"}}});
    common::put_settings(
        &client,
        &a_auth,
        (0..stacks).map(|s| format!("{url}/api/stacks/default/burst/s{s}")),
        &settings,
    )
    .await;

    // A's burst, as fast as 32 clients can create it.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, url, auth, next) = (client.clone(), url.clone(), a_auth.clone(), next.clone());
        creators.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= burst {
                    break;
                }
                let stack = format!("{url}/api/stacks/default/burst/s{}", i % stacks);
                common::create_deployment(&client, &stack, &auth, &json!({"operation": "update"}))
                    .await;
            }
        });
    }
    // B: one a second, each on its own stack, while A's burst is queued.
    let mut b_runs = vec![];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for i in 0..seconds {
        tick.tick().await;
        let mut body = settings.clone();
        body["operation"] = json!("update");
        let stack = format!("{url}/api/stacks/b/single/s{i}");
        let id = common::create_deployment(&client, &stack, &b_auth, &body).await;
        b_runs.push(format!("{stack}/deployments/{id}"));
    }
    creators.join_all().await;
    let created_in = started.elapsed();
    let mut waits = vec![];
    for d in &b_runs {
        let d = common::wait_succeeded(&client, d, &b_auth, Duration::from_millis(100)).await;
        waits.push(
            (common::parse_time(d["jobs"][0]["started"].as_str().unwrap())
                - common::parse_time(d["created"].as_str().unwrap()))
            .as_seconds_f64(),
        );
    }
    // What A still had queued then: the runs B did not wait behind.
    let a_left: Value = client
        .get(format!("{url}/api/orgs/default/deployments/metadata"))
        .header("Authorization", &a_auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    drop(server);
    waits.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "Fairness: org A bursts {burst} deployments over {stacks} stacks (created in {:.1} s); org B submits 1/s for {seconds} s; --workers {workers}, trivial engine",
        created_in.as_secs_f64()
    );
    println!("| B's runs | queue wait p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {:.2} s | {:.2} s | {:.2} s |",
        waits.len(),
        common::percentile(&waits, 50.0),
        common::percentile(&waits, 99.0),
        waits.last().unwrap()
    );
    println!("org A when B's last run ended: {a_left}");
}
