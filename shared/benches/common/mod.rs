//! What the benchmarks share: a release `tarmac serve` on 127.0.0.1:0 (stopped on drop), a
//! local git repository, and waiting for a deployment to succeed.
// Each benchmark is its own crate and uses only some of these.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub(crate) struct Server {
    child: Child,
    pub url: String,
    /// The first-start admin token, as `Authorization` wants it.
    pub auth: String,
}

impl Server {
    /// Starts `tarmac serve` on a fresh `data_dir` with extra flags and, if given, the `PATH`
    /// its deployments (and it) see.
    pub(crate) fn start(data_dir: &Path, args: &[&str], path: Option<&str>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tarmac"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let mut child = cmd.spawn().expect("start tarmac serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut token) = (String::new(), String::new());
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(u) = line.strip_prefix("Tarmac listening on ") {
                url = u.to_string();
            } else if line.trim().starts_with("tmc_") {
                token = line.trim().to_string();
            } else if line.starts_with("Press Ctrl+C") {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url,
            auth: format!("token {token}"),
        }
    }

    /// The server's resident memory (`VmRSS`), in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A git repository in `dir/repo` with `program` committed as `infra/main.tf` on `main`.
pub(crate) fn repo_with(dir: &Path, program: &str) -> std::path::PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("infra")).unwrap();
    std::fs::write(repo.join("infra/main.tf"), program).unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &["commit", "-q", "-m", "init"],
    ] {
        let ok = Command::new("git")
            .args(["-c", "user.email=b@example.com", "-c", "user.name=bench"])
            .args(args)
            .current_dir(&repo)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    repo
}

/// Polls a deployment (its URL) every `poll` until it succeeds, and returns it. Panics if it
/// fails or is skipped: a benchmark of failing runs measures nothing.
pub(crate) async fn wait_succeeded(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
    poll: std::time::Duration,
) -> serde_json::Value {
    loop {
        let d: serde_json::Value = client
            .get(url)
            .header("Authorization", auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match d["status"].as_str().unwrap() {
            "succeeded" => return d,
            "failed" | "skipped" => panic!("deployment {url} ended {}", d["status"]),
            _ => tokio::time::sleep(poll).await,
        }
    }
}

/// A numeric flag's value (`--name N`), or `default`.
pub(crate) fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds since the Unix epoch: comparable with `date +%s%N` in another process.
pub(crate) fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The `p`th percentile of sorted samples (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A `bin` directory under `dir` whose `terraform` does nothing (and outputs `{}`): for the
/// benchmarks that measure everything but the engine. Put it first on the server's `PATH`.
pub(crate) fn trivial_engine(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let engine = bin.join("terraform");
    std::fs::write(
        &engine,
        "#!/bin/sh\n[ \"$1\" = output ] && echo '{}'\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A deployment's time, in either of the API's forms (RFC 3339, or Pulumi's `created`).
pub(crate) fn parse_time(t: &str) -> time::OffsetDateTime {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(t, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{}Z", t.replace(' ', "T")), &Rfc3339))
        .unwrap()
}

/// Writes `settings` to each stack (`{url}/api/stacks/{org}/{project}/{stack}`).
pub(crate) async fn put_settings(
    client: &reqwest::Client,
    auth: &str,
    stacks: impl IntoIterator<Item = String>,
    settings: &serde_json::Value,
) {
    for stack in stacks {
        let r = client
            .post(format!("{stack}/deployments/settings"))
            .header("Authorization", auth)
            .json(settings)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{stack}: {}", r.status());
    }
}

/// Creates a deployment of `stack` (its URL) with `body`, and returns its id; panics unless
/// the answer is 202.
pub(crate) async fn create_deployment(
    client: &reqwest::Client,
    stack: &str,
    auth: &str,
    body: &serde_json::Value,
) -> String {
    let r = client
        .post(format!("{stack}/deployments"))
        .header("Authorization", auth)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}
