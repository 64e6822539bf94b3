//! The test harness: `TestApp` (a `tarmac serve` process) and `TestRepo` (a git repository).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The directory tests/setup.sh fills with the Terraform shim, if it ran (tests that deploy
/// need it: `require!(Tools)`).
pub(crate) fn tools_bin() -> Option<PathBuf> {
    let tools = std::env::var("TARMAC_TEST_TOOLS").ok()?;
    let bin = Path::new(&tools).join("bin");
    assert!(
        bin.join("terraform").exists(),
        "{} has no terraform shim: run tests/setup.sh",
        bin.display()
    );
    Some(bin)
}

/// A running `tarmac serve`, killed when dropped.
pub(crate) struct TestApp {
    pub url: String,
    pub token: String,
    pub data_dir: TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    pub client: reqwest::Client,
}

impl TestApp {
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Starts a server on a fresh data dir with extra `serve` flags. Tests clone `file://`
    /// repositories, so local repositories are allowed.
    pub(crate) async fn spawn_with(args: &[&str]) -> Self {
        let mut all = vec!["--allow-local-repos"];
        all.extend_from_slice(args);
        Self::spawn_strict(&all).await
    }

    /// Starts a server with exactly these extra flags (local repositories refused by default).
    pub(crate) async fn spawn_strict(args: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let extra_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, url, token) = start(data_dir.path(), &extra_args);
        let token = token.expect("a new data dir prints a bootstrap token");
        // No connection reuse: the server may close a connection after refusing a body, and a
        // pooled client would then fail the next request for reasons unrelated to the test.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Self {
            url,
            token,
            data_dir,
            child: Some(child),
            extra_args,
            client,
        }
    }

    /// SIGKILLs the server, as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit, returning how long that took.
    pub(crate) fn terminate(&mut self) -> Duration {
        let mut c = self.child.take().expect("server running");
        let t = Instant::now();
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        let status = c.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
        t.elapsed()
    }

    /// Starts the server again on the same data dir (and a new port, unless it was started with
    /// `--listen`), with `args` appended.
    pub(crate) fn restart_with(&mut self, args: &[&str]) {
        self.kill();
        let mut all = self.extra_args.clone();
        all.extend(args.iter().map(|s| s.to_string()));
        let (child, url, token) = start(self.data_dir.path(), &all);
        assert!(
            token.is_none(),
            "a restart must not mint a new bootstrap token"
        );
        self.child = Some(child);
        self.url = url;
    }

    pub(crate) fn data(&self) -> &Path {
        self.data_dir.path()
    }

    /// Mints a token with the real CLI.
    pub(crate) fn create_token(&self, org: &str, role: &str) -> String {
        self.create_named_token(org, role, "api-token")
    }

    /// Mints a token with the real CLI, under a name of its own (what its deployments and
    /// approvals are recorded as).
    pub(crate) fn create_named_token(&self, org: &str, role: &str, name: &str) -> String {
        self.admin(&[
            "token", "create", "--org", org, "--role", role, "--name", name,
        ])
        .trim()
        .to_string()
    }

    /// Runs one of the real CLI's commands on this server's machine, against its data dir;
    /// its stdout. It must succeed.
    pub(crate) fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_tarmac"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tarmac {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("Authorization", format!("token {t}"));
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        };
        (status, v)
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(&self.token), None)
            .await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::POST,
            path,
            Some(&self.token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub(crate) async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::PUT,
            path,
            Some(&self.token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub(crate) async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, Some(&self.token), None)
            .await
    }

    /// Creates a deployment and returns its id; panics unless the answer is 202.
    pub(crate) async fn deploy(&self, stack: &str, body: Value) -> String {
        let (status, v) = self
            .post(&format!("/api/stacks/{stack}/deployments"), body)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "create deployment: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub(crate) async fn deployment(&self, stack: &str, id: &str) -> Value {
        let (status, v) = self
            .get(&format!("/api/stacks/{stack}/deployments/{id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    /// Polls until the deployment's status is `want` (or any terminal one if `want` is None).
    pub(crate) async fn wait_for(&self, stack: &str, id: &str, want: Option<&str>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self.deployment(stack, id).await;
            let status = d["status"].as_str().unwrap().to_string();
            let terminal = matches!(status.as_str(), "succeeded" | "failed" | "skipped");
            match want {
                Some(w) if status == w => return d,
                None if terminal => return d,
                Some(w) if terminal => panic!(
                    "deployment {id} ended {status}, expected {w}; logs:\n{}",
                    self.log_text(stack, id).await
                ),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} still {status} after 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole streaming log, as text (headers as `## name`).
    pub(crate) async fn log_text(&self, stack: &str, id: &str) -> String {
        let mut out = String::new();
        let mut token: Option<String> = None;
        for _ in 0..1000 {
            let q = token
                .as_ref()
                .map(|t| format!("?continuationToken={t}"))
                .unwrap_or_default();
            let (status, v) = self
                .get(&format!("/api/stacks/{stack}/deployments/{id}/logs{q}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{v}");
            assert_eq!(v["__type"], "DeploymentLogs");
            let lines = v["lines"].as_array().unwrap();
            for l in lines {
                if let Some(h) = l["header"].as_str() {
                    out.push_str(&format!("## {h}\n"));
                } else {
                    out.push_str(l["line"].as_str().unwrap_or_default());
                }
            }
            match v["nextToken"].as_str() {
                Some(t) if !lines.is_empty() => token = Some(t.to_string()),
                Some(_) => return out, // still running, nothing new: enough for callers
                None => return out,
            }
        }
        out
    }
}

fn start(data_dir: &Path, args: &[String]) -> (Child, String, Option<String>) {
    let path = match tools_bin() {
        Some(bin) => format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    let stderr = if std::env::var_os("TARMAC_TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    // Any free port, unless the test names one (to restart a server where its clients are).
    let listen: &[&str] = if args.iter().any(|a| a == "--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tarmac"))
        .arg("serve")
        .args(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("PATH", path)
        .env_remove("TARMAC_DATA_DIR")
        .env("AWS_ACCESS_KEY_ID", "AKIAPLATFORMSECRET")
        .env("AWS_SECRET_ACCESS_KEY", "platform-secret-key-must-not-leak")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start tarmac serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    let mut token = None;
    // The banner's last line is the Ctrl+C hint.
    while let Some(Ok(line)) = lines.next() {
        if let Some(u) = line.strip_prefix("Tarmac listening on ") {
            url = Some(u.trim().to_string());
        } else if let Some(t) = line.trim().strip_prefix("tmc_") {
            token = Some(format!("tmc_{t}"));
        } else if line.starts_with("Press Ctrl+C") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url.expect("serve printed its URL"), token)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A git repository on disk, with a Terraform program in `infra/`.
pub(crate) struct TestRepo {
    pub dir: TempDir,
}

pub(crate) const PROGRAM: &str = r#"
variable "v" {
  type    = string
  default = "one"
}
resource "terraform_data" "x" {
  input = var.v
}
output "val" { value = terraform_data.x.output }
output "pw" {
  value     = "sensitive-output"
  sensitive = true
}
"#;

impl TestRepo {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Self { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.commit(&[("infra/main.tf", PROGRAM)], "init");
        repo
    }

    pub(crate) fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.email=t@example.com",
                "-c",
                "user.name=Test",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Writes files, commits them, and returns the commit's sha.
    pub(crate) fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, text) in files {
            let p = self.dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub(crate) fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Settings that deploy `infra/` from this repo's main branch.
    pub(crate) fn settings(&self) -> Value {
        json!({"sourceContext": {"git": {"repoUrl": self.url(), "branch": "refs/heads/main", "repoDir": "infra"}}})
    }
}

/// Unique stack paths, so tests sharing nothing never collide.
pub(crate) fn stack(name: &str) -> String {
    format!("default/proj/{name}")
}
