//! Reliability drills (issue 7) at CI scale; `TARMAC_DRILL_SCALE=full` runs the full scale.
//!
//! The engine is a trivial `terraform` script that appends `start`/`end` lines with the stack,
//! the deployment version and a timestamp to a trace file, so the drills can check what ran,
//! how often, in which order and whether two runs of one stack ever overlapped.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestApp, TestRepo};

fn full() -> bool {
    std::env::var("TARMAC_DRILL_SCALE").as_deref() == Ok("full")
}

/// The trace file the engine writes, in a directory of its own that the sandbox lets runs write
/// (`--sandbox-rw`).
fn trace_in(dir: &Path) -> (PathBuf, String) {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    (out.join("trace"), out.display().to_string())
}

/// A bin dir whose `terraform` records its runs in the file named by `TRACE_FILE`.
fn trivial_engine(dir: &Path, work_ms: u64) -> PathBuf {
    let bin = dir.join("drill-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  init) exit 0 ;;\n  output) echo '{{}}'; exit 0 ;;\nesac\n\
         echo \"start $TARMAC_STACK $PULUMI_CI_BUILD_NUMBER $(date +%s%N)\" >> \"$TRACE_FILE\"\n\
         sleep {}\n\
         echo \"end $TARMAC_STACK $PULUMI_CI_BUILD_NUMBER $(date +%s%N)\" >> \"$TRACE_FILE\"\n",
        work_ms as f64 / 1000.0
    );
    let engine = bin.join("terraform");
    std::fs::write(&engine, script).unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// One engine run: start time and, unless it was cut off, end time (nanoseconds).
type Run = (u128, Option<u128>);

/// `(stack, version) ->` every engine run of that deployment.
struct Trace {
    runs: HashMap<(String, i64), Vec<Run>>,
}

fn read_trace(path: &Path) -> Trace {
    let mut runs: HashMap<(String, i64), Vec<Run>> = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let p: Vec<&str> = line.split_whitespace().collect();
        if p.len() != 4 {
            continue;
        }
        let key = (p[1].to_string(), p[2].parse().unwrap());
        let t: u128 = p[3].parse().unwrap();
        let entry = runs.entry(key).or_default();
        if p[0] == "start" {
            entry.push((t, None));
        } else if let Some(last) = entry.last_mut() {
            last.1 = Some(t);
        }
    }
    Trace { runs }
}

impl Trace {
    /// Runs of one stack never overlap. A run cut off by a crash has no end: it ended by
    /// the time the next one started, or the drill would have caught the orphan running on.
    fn assert_no_overlap(&self) {
        let mut by_stack: HashMap<&str, Vec<Run>> = HashMap::new();
        for ((stack, _), runs) in &self.runs {
            by_stack
                .entry(stack)
                .or_default()
                .extend(runs.iter().copied());
        }
        for (stack, mut runs) in by_stack {
            runs.sort();
            for pair in runs.windows(2) {
                if let Some(end) = pair[0].1 {
                    assert!(
                        end <= pair[1].0,
                        "stack {stack}: two runs overlapped: {pair:?}"
                    );
                }
            }
        }
    }
}

async fn settings(app: &TestApp, repo: &TestRepo, stack: &str, trace: &Path) {
    let mut s = repo.settings();
    s["operationContext"] =
        json!({"environmentVariables": {"TRACE_FILE": trace.display().to_string()}});
    let (status, v) = app
        .post(
            &format!("/api/stacks/default/drill/{stack}/deployments/settings"),
            s,
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

async fn status_of(app: &TestApp, stack: &str, id: &str) -> String {
    app.deployment(&format!("default/drill/{stack}"), id).await["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// R1: SIGKILL the server at random moments while deployments run; restart it each time.
#[tokio::test]
async fn r1_kills_lose_nothing_and_never_overlap_a_stack() {
    require!(Tools);
    let (kills, stacks, per_stack) = if full() { (200, 20, 20) } else { (4, 4, 2) };
    let lease = 2.0;
    let repo = TestRepo::new();
    let scratch = tempfile::tempdir().unwrap();
    // Three leases long, so a run cut off by a crash would still be going when its stack's next
    // run starts, unless the restart kills it.
    let bin = trivial_engine(scratch.path(), 6000);
    let (trace, out) = trace_in(scratch.path());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut app = TestApp::spawn_with(&[
        "--lease-secs",
        "2",
        "--workers",
        "4",
        "--child-path",
        &path,
        "--sandbox-rw",
        &out,
    ])
    .await;
    let mut ids: Vec<(String, String)> = vec![];
    for s in 0..stacks {
        settings(&app, &repo, &format!("s{s}"), &trace).await;
    }
    for _ in 0..per_stack {
        for s in 0..stacks {
            let stack = format!("s{s}");
            ids.push((
                stack.clone(),
                app.deploy(
                    &format!("default/drill/{stack}"),
                    json!({"operation": "update"}),
                )
                .await,
            ));
        }
    }
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut done = std::collections::HashSet::new();
    for _ in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(200 + rng % 800)).await;
        // What is in flight at the crash: running or accepted just before it. (Runs the
        // restarted server starts are not: they may rightly take their full six seconds.)
        let mut inflight = vec![];
        for (stack, id) in &ids {
            if done.contains(id) {
                continue;
            }
            let st = status_of(&app, stack, id).await;
            if matches!(st.as_str(), "succeeded" | "failed" | "skipped") {
                done.insert(id.clone());
            } else if st == "running" || st == "accepted" {
                inflight.push((stack.clone(), id.clone()));
            }
        }
        app.kill();
        app.restart_with(&[]);
        // Whatever was running at the crash is terminal within two leases of the restart.
        let restarted = Instant::now();
        for (stack, id) in &inflight {
            loop {
                let st = status_of(&app, stack, id).await;
                if matches!(st.as_str(), "succeeded" | "failed" | "skipped") {
                    break;
                }
                assert!(
                    restarted.elapsed().as_secs_f64() < 2.0f64.mul_add(lease, 1.0),
                    "{id} still {st} two leases after the restart"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Nothing is lost: every deployment ends.
    for (stack, id) in &ids {
        app.wait_for(&format!("default/drill/{stack}"), id, None)
            .await;
    }
    let t = read_trace(&trace);
    t.assert_no_overlap();
    for runs in t.runs.values() {
        assert_eq!(
            runs.len(),
            1,
            "a deployment's engine started twice: {runs:?}"
        );
    }
}

/// R3: bursts of deployments over many stacks: all end, each stack in creation order, no 5xx.
#[tokio::test]
async fn r3_bursts_end_in_order_with_no_server_errors() {
    require!(Tools);
    let (total, stacks) = if full() {
        (10_000, 1_000)
    } else {
        (1_000, 100)
    };
    let repo = TestRepo::new();
    let scratch = tempfile::tempdir().unwrap();
    let bin = trivial_engine(scratch.path(), 0);
    let (trace, out) = trace_in(scratch.path());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let app = TestApp::spawn_with(&[
        "--workers",
        "4",
        "--child-path",
        &path,
        "--sandbox-rw",
        &out,
    ])
    .await;
    for s in 0..stacks {
        settings(&app, &repo, &format!("s{s}"), &trace).await;
    }
    // Bursts: 16 concurrent clients, each sending a run of creates.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, url, token, next) = (
            app.client.clone(),
            app.url.clone(),
            app.token.clone(),
            next.clone(),
        );
        clients.spawn(async move {
            let mut made = vec![];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return made;
                }
                let stack = format!("s{}", i % stacks);
                let resp = client
                    .post(format!(
                        "{url}/api/stacks/default/drill/{stack}/deployments"
                    ))
                    .header("Authorization", format!("token {token}"))
                    .json(&json!({"operation": "update"}))
                    .send()
                    .await
                    .unwrap();
                assert!(
                    resp.status().as_u16() < 500,
                    "server error {}",
                    resp.status()
                );
                assert_eq!(resp.status(), 202);
                let v: Value = resp.json().await.unwrap();
                made.push((
                    stack,
                    v["version"].as_i64().unwrap(),
                    v["id"].as_str().unwrap().to_string(),
                ));
            }
        });
    }
    let made: Vec<(String, i64, String)> = clients.join_all().await.into_iter().flatten().collect();
    assert_eq!(made.len(), total);
    let deadline = Instant::now() + Duration::from_secs(if full() { 3600 } else { 300 });
    for (stack, _, id) in &made {
        loop {
            let st = status_of(&app, stack, id).await;
            if st == "succeeded" {
                break;
            }
            assert!(
                !matches!(st.as_str(), "failed" | "skipped"),
                "{id} ended {st}"
            );
            assert!(Instant::now() < deadline, "{id} still {st}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Each stack's engine runs started in version (creation) order, once each.
    let t = read_trace(&trace);
    assert_eq!(t.runs.len(), total);
    let mut by_stack: HashMap<&str, Vec<(u128, i64)>> = HashMap::new();
    for ((stack, version), runs) in &t.runs {
        assert_eq!(runs.len(), 1);
        by_stack
            .entry(stack)
            .or_default()
            .push((runs[0].0, *version));
    }
    for (stack, mut starts) in by_stack {
        starts.sort();
        let versions: Vec<i64> = starts.iter().map(|s| s.1).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        assert_eq!(versions, sorted, "stack {stack} ran out of order");
    }
    t.assert_no_overlap();
}
