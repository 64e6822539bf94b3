//! An agent pool's overheads: how long from a trigger until the run starts on a `tarmac agent`,
//! and how long a line the run prints takes to be readable through the API.
//!
//! Starts a release `tarmac serve`, a pool, one `tarmac agent` (both on this machine, over
//! loopback HTTP), a git smart-HTTP server (`tests/tools/git_http_server.py`, since agents clone
//! over the network) and a trivial engine that records when it starts and prints `--lines`
//! timestamped lines `--interval-ms` apart. Closed loop over one stack.
//!
//! cargo bench --bench agent -- [--deployments 50] [--lines 50] [--interval-ms 20]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Kills a child process on drop.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let (deployments, lines, interval) = (
        common::arg("--deployments", 50) as usize,
        common::arg("--lines", 50),
        common::arg("--interval-ms", 20),
    );
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let trace = out.join("trace");
    // The engine: on `apply`, records its start, then prints timestamped lines.
    let engine = bin.join("terraform");
    std::fs::write(
        &engine,
        format!(
            "#!/bin/bash\nif [ \"$1\" = init ]; then echo \"$PULUMI_CI_BUILD_ID $(date +%s%N)\" >> \"$TRACE_FILE\"; fi\n\
             if [ \"$1\" = apply ]; then for i in $(seq {lines}); do echo \"LINE $(date +%s%N)\"; sleep {}; done; fi\n\
             if [ \"$1\" = output ]; then echo '{{}}'; fi\nexit 0\n",
            interval as f64 / 1000.0
        ),
    )
    .unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = common::repo_with(work.path(), "# trivial\n");

    // Agents clone over the network: the repository behind real `git http-backend`.
    let root = work.path().join("git");
    std::fs::create_dir_all(&root).unwrap();
    assert!(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&repo)
            .arg(root.join("repo.git"))
            .status()
            .unwrap()
            .success()
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/tools/git_http_server.py"
    );
    let mut git = Command::new("python3")
        .arg(script)
        .arg(&root)
        .args(["u", "p"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(git.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _git = Killed(git);
    let repo_url = format!("http://127.0.0.1:{}/repo.git", port.trim());

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let server = common::Server::start(&work.path().join("data"), &[], Some(&path));
    let client = reqwest::Client::new();
    let pool: Value = client
        .post(format!("{}/api/orgs/default/agent-pools", server.url))
        .header("Authorization", &server.auth)
        .json(&json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut agent_cmd = Command::new(env!("CARGO_BIN_EXE_tarmac"));
    agent_cmd
        .args(["agent", "--url", &server.url, "--work-dir"])
        .arg(work.path().join("agent"))
        .arg("--sandbox-rw")
        .arg(&out)
        .env("TARMAC_AGENT_TOKEN", pool["tokenValue"].as_str().unwrap())
        .env("PATH", &path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _agent = Killed(agent_cmd.spawn().unwrap());

    let stack = format!("{}/api/stacks/default/bench/agent", server.url);
    let settings = json!({
        "agentPoolID": pool["id"],
        "sourceContext": {"git": {"repoUrl": repo_url, "branch": "main", "repoDir": "infra",
            "gitAuth": {"basicAuth": {"userName": {"secret": "u"}, "password": {"secret": "p"}}}}},
        "operationContext": {"environmentVariables": {"TRACE_FILE": trace.display().to_string()}},
    });
    let r = client
        .post(format!("{stack}/deployments/settings"))
        .header("Authorization", &server.auth)
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    let mut sent = Vec::new();
    let mut ship = Vec::new();
    for _ in 0..deployments {
        let t0 = common::now_ns();
        let id = common::create_deployment(
            &client,
            &stack,
            &server.auth,
            &json!({"operation": "update"}),
        )
        .await;
        // Follows the log as a client would, every 5 ms, noting when each line arrives.
        let mut token = String::new();
        loop {
            let url = format!("{stack}/deployments/{id}/logs?continuationToken={token}");
            let v: Value = client
                .get(url)
                .header("Authorization", &server.auth)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let now = common::now_ns();
            for l in v["lines"].as_array().into_iter().flatten() {
                if let Some(t) = l["line"].as_str().and_then(|s| s.strip_prefix("LINE ")) {
                    let printed: u128 = t.trim().parse().unwrap();
                    ship.push(now.saturating_sub(printed) as f64 / 1e6);
                }
            }
            match v["nextToken"].as_str() {
                Some(t) => token = t.to_string(),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let d = common::wait_succeeded(
            &client,
            &format!("{stack}/deployments/{id}"),
            &server.auth,
            Duration::from_millis(20),
        )
        .await;
        sent.push((id, t0, d["jobs"][0]["steps"].clone()));
    }
    let starts: std::collections::HashMap<String, u128> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (id, t) = l.split_once(' ')?;
            Some((id.to_string(), t.trim().parse().ok()?))
        })
        .collect();
    let step_ns = |steps: &Value, i: usize| -> u128 {
        time::OffsetDateTime::parse(
            steps[i]["started"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp_nanos() as u128
    };
    let mut to_claim: Vec<f64> = sent
        .iter()
        .map(|(_, t0, st)| step_ns(st, 0).saturating_sub(*t0) as f64 / 1e6)
        .collect();
    let mut to_engine: Vec<f64> = sent
        .iter()
        .map(|(id, t0, _)| starts[id].saturating_sub(*t0) as f64 / 1e6)
        .collect();
    let mut source: Vec<f64> = sent
        .iter()
        .map(|(_, _, st)| (step_ns(st, 1) - step_ns(st, 0)) as f64 / 1e6)
        .collect();
    assert_eq!(
        ship.len(),
        deployments * lines as usize,
        "every line arrived once"
    );
    println!(
        "agent pool, embedded server and one `tarmac agent` on this machine, over loopback HTTP"
    );
    println!("deployments={deployments} lines={lines} interval={interval}ms");
    println!("| span | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            common::percentile(v, 50.0),
            common::percentile(v, 95.0),
            common::percentile(v, 99.0),
            v[v.len() - 1]
        );
    };
    row(
        "trigger -> 'Get source' step start (API, agent's long poll and claim over HTTP)",
        &mut to_claim,
    );
    row(
        "'Get source' step (git clone over HTTP + rev-parse)",
        &mut source,
    );
    row("trigger -> engine process start", &mut to_engine);
    row(
        "line printed -> readable through the logs API (5 ms polls)",
        &mut ship,
    );
}
