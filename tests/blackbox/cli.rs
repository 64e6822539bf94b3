//! The `tarmac` command line as its users run it: the real binary against a real `tarmac serve`,
//! piped or on a pseudo-terminal, its profile in a config dir of its own (`XDG_CONFIG_HOME`), so
//! nothing touches the real home.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::support::{TestApp, TestRepo, stack};

/// Whether `text` holds a frame of the follow's spinner (indicatif's default spinner draws
/// Braille patterns).
fn has_spinner(text: &str) -> bool {
    text.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c))
}

/// How long any one command may take before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(60);

/// What a finished command did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code:\n{self}");
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

/// One user of the CLI: a home, config dir and temporary dir of its own, and the environment
/// its commands get.
struct Cli {
    home: TempDir,
    env: Vec<(String, String)>,
}

impl Cli {
    /// Not signed in: no profile, and no TARMAC_URL or TARMAC_TOKEN.
    fn bare() -> Self {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("tmp")).unwrap();
        Self { home, env: vec![] }
    }

    /// Pointed at `app`, with its admin token, by TARMAC_URL and TARMAC_TOKEN.
    fn new(app: &TestApp) -> Self {
        Self::bare()
            .with("TARMAC_URL", &app.url)
            .with("TARMAC_TOKEN", &app.token)
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(name, _)| name != k);
        self.env.push((k.into(), v.into()));
        self
    }

    fn without(mut self, k: &str) -> Self {
        self.env.retain(|(name, _)| name != k);
        self
    }

    fn profiles(&self) -> PathBuf {
        self.home.path().join("config/tarmac/profiles.yaml")
    }

    /// The CLI's temporary directory (`TMPDIR`).
    fn tmp(&self) -> PathBuf {
        self.home.path().join("tmp")
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_tarmac"));
        c.args(args)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("TMPDIR", self.tmp())
            .env("TERM", "xterm")
            .env_remove("TARMAC_URL")
            .env_remove("TARMAC_TOKEN")
            .env_remove("TARMAC_PROFILE")
            .env_remove("TARMAC_DATA_DIR")
            .env_remove("VISUAL")
            .env_remove("EDITOR")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        c
    }

    /// Runs to the end with nothing on stdin (which is not a terminal).
    async fn run(&self, args: &[&str]) -> Out {
        self.run_in(args, "").await
    }

    /// Runs to the end with more environment variables.
    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.command(args);
        c.envs(env.iter().copied());
        finish(c, args, "").await
    }

    /// Runs to the end with `stdin` piped in.
    async fn run_in(&self, args: &[&str], stdin: &str) -> Out {
        finish(self.command(args), args, stdin).await
    }

    /// Starts a command that runs on (a follow), its output piped and collected as it comes.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Running {
            child,
            what: format!("{args:?}"),
            stdout,
            stderr,
            terminal: None,
        }
    }

    /// Starts a command on a pseudo-terminal: stdin and stdout on one, stderr on another, so
    /// the test can tell what goes where.
    fn spawn_tty(&self, args: &[&str]) -> Running {
        let (out, err) = (Pty::open(), Pty::open());
        let child = {
            let mut c = self.command(args);
            c.stdin(Stdio::from(out.slave.try_clone().unwrap()))
                .stdout(Stdio::from(out.slave.try_clone().unwrap()))
                .stderr(Stdio::from(err.slave.try_clone().unwrap()));
            c.spawn().unwrap()
            // The command, with its copies of the terminals' ends, is dropped here.
        };
        Running {
            child,
            what: format!("{args:?} (on a terminal)"),
            stdout: Arc::clone(&out.seen),
            stderr: Arc::clone(&err.seen),
            terminal: Some(out),
        }
    }
}

/// Runs `c` to the end with `stdin` piped in.
async fn finish(mut c: tokio::process::Command, args: &[&str], stdin: &str) -> Out {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The command may be done before it reads: a closed pipe is not the test's failure.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("tarmac {args:?} did not finish in {PATIENCE:?}"))
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Reads a pipe to its end into a shared buffer.
fn collect(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let into = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf).await {
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

/// A pseudo-terminal: the slave end for a command, the master end read into a buffer.
struct Pty {
    slave: OwnedFd,
    master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn open() -> Self {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let size = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(&size, None::<&nix::sys::termios::Termios>).unwrap();
        // openpty's descriptors are inherited by default: other commands this test starts
        // must not hold the terminal open.
        for fd in [&p.master, &p.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        }
        let master = std::fs::File::from(p.master);
        let mut reader = master.try_clone().unwrap();
        let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let into = Arc::clone(&seen);
        // Ends when every slave end is closed (EIO).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            slave: p.slave,
            master,
            seen,
        }
    }
}

/// A command still running, its output collected as it comes.
struct Running {
    child: tokio::process::Child,
    what: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The terminal of stdin and stdout, for commands on one.
    terminal: Option<Pty>,
}

impl Running {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until `pred` holds for (stdout, stderr).
    async fn wait_until(&mut self, what: &str, pred: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exited = None;
        loop {
            let (out, err) = (self.stdout(), self.stderr());
            if pred(&out, &err) {
                return;
            }
            if let Some(code) = exited {
                panic!(
                    "{}: exited ({code:?}) before {what}\n--- stdout\n{out}--- stderr\n{err}---",
                    self.what
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}\n--- stdout\n{out}--- stderr\n{err}---",
                self.what
            );
            if let Some(status) = self.child.try_wait().unwrap() {
                // One more look, once what it wrote last has come through.
                exited = Some(status.code());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_stdout(&mut self, needle: &str) {
        self.wait_until(&format!("{needle:?} on stdout"), |o, _| o.contains(needle))
            .await;
    }

    async fn wait_for_stderr(&mut self, needle: &str) {
        self.wait_until(&format!("{needle:?} on stderr"), |_, e| e.contains(needle))
            .await;
    }

    /// The deployment the command announced: "Deployment ID (version N) of ...".
    async fn deployment_id(&mut self) -> String {
        self.wait_for_stderr(" (version ").await;
        let err = self.stderr();
        let line = err
            .lines()
            .find(|l| l.contains(" (version "))
            .unwrap()
            .to_string();
        let id = line
            .split("Deployment ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no deployment id in {line:?}"));
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{line}");
        id.to_string()
    }

    /// Ctrl-C, as the terminal would send it.
    fn interrupt(&self) {
        let pid = self.child.id().expect("still running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
    }

    /// Types a line at the terminal.
    fn type_line(&mut self, text: &str) {
        let t = self.terminal.as_mut().expect("a command on a terminal");
        t.master.write_all(format!("{text}\n").as_bytes()).unwrap();
    }

    /// Waits for the end, within `limit`.
    async fn finish_within(mut self, limit: Duration) -> Out {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not finish in {limit:?}\n--- stdout\n{}--- stderr\n{}---",
                    self.what,
                    self.stdout(),
                    self.stderr()
                )
            })
            .unwrap();
        // What the command wrote last is still on its way through the pipes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Out {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    async fn finish(self) -> Out {
        self.finish_within(PATIENCE).await
    }
}

/// A deployment's status, from the API.
async fn status(app: &TestApp, s: &str, id: &str) -> String {
    app.deployment(s, id).await["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Settings that deploy `repo` with these pre-run commands.
fn with_pre_run(repo: &TestRepo, commands: &[&str]) -> Value {
    let mut s = repo.settings();
    s["operationContext"] = json!({ "preRunCommands": commands });
    s
}

async fn put_settings(app: &TestApp, s: &str, settings: Value) {
    let (code, v) = app
        .post(&format!("/api/stacks/{s}/deployments/settings"), settings)
        .await;
    assert_eq!(code, 200, "{v}");
}

/// The whole log as `tarmac run --follow` prints it: headers as `==> name`, one line a line.
async fn log_as_printed(app: &TestApp, s: &str, id: &str) -> String {
    let mut out = String::new();
    for line in app.log_text(s, id).await.split_inclusive('\n') {
        match line.strip_prefix("## ") {
            Some(h) => out.push_str(&format!("==> {h}")),
            None => out.push_str(line),
        }
    }
    out
}

#[tokio::test]
async fn login_keeps_a_private_profile_that_the_environment_overrides() {
    let app = TestApp::spawn().await;
    let cli = Cli::bare();

    let out = cli.run(&["stacks", "ls"]).await;
    out.assert_code(1);
    assert!(out.stderr.contains("not signed in"), "{out}");
    assert!(out.stderr.contains("tarmac login"), "{out}");

    // A wrong token is refused by the server, and nothing is saved.
    let out = cli
        .run_in(&["login", "--url", &app.url], "tmc_not-a-real-token\n")
        .await;
    out.assert_code(1);
    assert!(out.stderr.contains("401"), "{out}");
    assert!(!cli.profiles().exists());

    // The token comes on stdin; the profile is the owner's only.
    let out = cli
        .run_in(&["login", "--url", &app.url], &format!("{}\n", app.token))
        .await;
    out.assert_code(0);
    assert!(
        out.stdout
            .contains(&format!("Signed in to {} as bootstrap-admin", app.url)),
        "{out}"
    );
    assert!(out.stdout.contains("org default, role admin"), "{out}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cli.profiles()), 0o600);
    assert_eq!(mode(cli.profiles().parent().unwrap()), 0o700);
    let saved = std::fs::read_to_string(cli.profiles()).unwrap();
    assert!(
        saved.contains(&app.token) && saved.contains(&app.url),
        "{saved}"
    );
    assert!(
        !out.stdout.contains(&app.token),
        "the token is never printed"
    );

    // The profile alone is enough.
    let out = cli.run(&["tokens", "ls"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("bootstrap-admin"), "{out}");

    // TARMAC_TOKEN wins over the profile's token: a reader may not list tokens.
    let reader = app.create_token("default", "read");
    let cli = cli.with("TARMAC_TOKEN", &reader);
    let out = cli.run(&["tokens", "ls"]).await;
    out.assert_code(1);
    assert!(out.stderr.contains("403"), "{out}");
    assert!(out.stderr.contains("hint: this token's role"), "{out}");
    cli.run(&["stacks", "ls"]).await.assert_code(0);

    // TARMAC_URL wins over the profile's URL.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cli = cli.without("TARMAC_TOKEN").with("TARMAC_URL", &dead);
    let out = cli.run(&["stacks", "ls"]).await;
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!("{dead} could not be reached")),
        "{out}"
    );
    // ... and --url over both.
    cli.run(&["--url", &app.url, "stacks", "ls"])
        .await
        .assert_code(0);
    let cli = cli.without("TARMAC_URL");

    let out = cli.run(&["--profile", "elsewhere", "stacks", "ls"]).await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("there is no profile 'elsewhere'"),
        "{out}"
    );

    // Logout forgets the token; the file stays private.
    let out = cli.run(&["logout"]).await;
    out.assert_code(0);
    assert!(
        out.stdout.contains("Signed out of profile 'default'"),
        "{out}"
    );
    assert_eq!(mode(&cli.profiles()), 0o600);
    let saved = std::fs::read_to_string(cli.profiles()).unwrap();
    assert!(!saved.contains(&app.token), "{saved}");
    let out = cli.run(&["stacks", "ls"]).await;
    out.assert_code(1);
    assert!(out.stderr.contains("not signed in"), "{out}");

    // The environment alone is enough too.
    let cli = cli
        .with("TARMAC_URL", &app.url)
        .with("TARMAC_TOKEN", &app.token);
    cli.run(&["stacks", "ls"]).await.assert_code(0);

    // A token made with the CLI works until the CLI revokes it.
    let out = cli
        .run(&[
            "tokens", "create", "--name", "ci", "--role", "read", "-o", "json",
        ])
        .await;
    out.assert_code(0);
    let made = out.json();
    let (token_id, value) = (
        made["id"].as_str().unwrap().to_string(),
        made["tokenValue"].as_str().unwrap().to_string(),
    );
    assert_eq!(made["role"], "read");
    let ci = Cli::bare()
        .with("TARMAC_URL", &app.url)
        .with("TARMAC_TOKEN", &value);
    ci.run(&["stacks", "ls"]).await.assert_code(0);
    let out = cli.run(&["tokens", "ls"]).await;
    assert!(
        out.stdout.contains(&token_id) && !out.stdout.contains(&value),
        "{out}"
    );
    let out = cli.run(&["tokens", "revoke", &token_id]).await;
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!("Revoked token {token_id}.")),
        "{out}"
    );
    let out = ci.run(&["stacks", "ls"]).await;
    out.assert_code(1);
    assert!(out.stderr.contains("401"), "{out}");
}

#[tokio::test]
async fn run_follow_prints_the_log_and_exits_with_the_outcome() {
    require!(Tools);
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    repo.git(&["checkout", "-q", "-b", "broken"]);
    repo.commit(
        &[("infra/main.tf", "resource \"terraform_data\" \"x\" {\n")],
        "break it",
    );
    repo.git(&["checkout", "-q", "main"]);
    let cli = Cli::new(&app);
    let (ok, broken, failing) = (stack("ok"), stack("broken"), stack("failing"));

    // Settings by key path, from the CLI.
    let out = cli
        .run(&[
            "settings",
            "set",
            &ok,
            &format!("sourceContext.git.repoUrl={}", repo.url()),
            "sourceContext.git.branch=refs/heads/main",
            "sourceContext.git.repoDir=infra",
            r#"operationContext.preRunCommands=["echo \"v=$FOO s=$BAR\""]"#,
        ])
        .await;
    out.assert_code(0);
    assert!(
        out.stderr
            .contains(&format!("Saved the settings of {ok} (version 1)")),
        "{out}"
    );
    put_settings(&app, &broken, repo.settings()).await;
    put_settings(
        &app,
        &failing,
        with_pre_run(&repo, &["echo failing on purpose; exit 7"]),
    )
    .await;

    let secret = cli.home.path().join("bar");
    std::fs::write(&secret, "hunter2-sekrit\n").unwrap();
    let secret_arg = format!("BAR=@{}", secret.display());
    let ok_args = [
        "run",
        &ok,
        "--follow",
        "--env",
        "FOO=hello",
        "--secret-env",
        &secret_arg,
    ];
    let broken_args = ["run", &broken, "--branch", "broken", "--follow"];
    let failing_args = ["run", &failing, "--follow"];
    let (ok_out, broken_out, failing_out) = tokio::join!(
        cli.run(&ok_args),
        cli.run(&broken_args),
        cli.run(&failing_args),
    );

    // Success: the engine's own output, under step headers; the outcome on stderr.
    ok_out.assert_code(0);
    for want in [
        "==> Get source\n",
        "==> Pre-run command 1\n",
        "v=hello s=[secret]\n",
        "==> pulumi update\n",
        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.",
        "==> Record outputs\n",
    ] {
        assert!(ok_out.stdout.contains(want), "{want:?} missing:\n{ok_out}");
    }
    assert!(!ok_out.stdout.contains("hunter2"), "{ok_out}");
    assert!(!ok_out.stderr.contains("hunter2"), "{ok_out}");
    assert!(ok_out.stderr.contains("succeeded."), "{ok_out}");
    // Piped, there is no spinner and no terminal control.
    for o in [&ok_out, &broken_out, &failing_out] {
        assert!(!has_spinner(&o.stderr) && !o.stderr.contains('\x1b'), "{o}");
    }
    // Everything logged, once, in order.
    let id = ok_out
        .stderr
        .split("Deployment ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(ok_out.stdout, log_as_printed(&app, &ok, id).await);

    // Failures exit 3, whatever failed.
    broken_out.assert_code(3);
    assert!(
        broken_out.stdout.contains("==> pulumi update"),
        "{broken_out}"
    );
    assert!(broken_out.stderr.contains(" failed."), "{broken_out}");
    failing_out.assert_code(3);
    assert!(
        failing_out.stdout.contains("failing on purpose"),
        "{failing_out}"
    );
    assert!(
        !failing_out.stdout.contains("==> pulumi update"),
        "{failing_out}"
    );

    // `logs` prints the same lines afterwards, named as it was or by the console URL that
    // `run` printed; and one step's lines with --step.
    let out = cli.run(&["logs", &format!("{ok}/{id}")]).await;
    out.assert_code(0);
    assert_eq!(out.stdout, ok_out.stdout);
    let console = format!("{}/{ok}/deployments/1", app.url);
    assert!(ok_out.stderr.contains(&console), "{ok_out}");
    let out = cli.run(&["logs", &console]).await;
    out.assert_code(0);
    assert_eq!(out.stdout, ok_out.stdout);
    let out = cli
        .run(&["deployments", "get", &console, "-o", "json"])
        .await;
    out.assert_code(0);
    assert_eq!(out.json()["id"], id);
    let out = cli.run(&["logs", id, "--step", "1"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("v=hello s=[secret]"), "{out}");
    assert!(!out.stdout.contains("Apply complete"), "{out}");
}

#[tokio::test]
async fn cancelled_and_skipped_runs_have_their_own_exit_codes() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let cli = Cli::new(&app);
    let s = stack("slow");
    put_settings(&app, &s, with_pre_run(&repo, &["echo waiting; sleep 60"])).await;

    let mut first = cli.spawn(&["run", &s, "--follow"]);
    let a = first.deployment_id().await;
    first.wait_for_stdout("waiting\n").await;
    // Queued behind the first: the stack runs one deployment at a time.
    let mut second = cli.spawn(&["run", &s, "--follow"]);
    let b = second.deployment_id().await;
    assert_eq!(status(&app, &s, &b).await, "not-started");

    // Piped, Ctrl-C has no one to ask: following stops and the deployment goes on.
    let mut watcher = cli.spawn(&["logs", &format!("{s}/{a}"), "--follow"]);
    watcher.wait_for_stdout("waiting\n").await;
    watcher.interrupt();
    let out = watcher.finish().await;
    out.assert_code(130);
    assert!(
        out.stderr
            .contains("Stopped following; the deployment goes on"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("tarmac logs {s}/{a} --follow")),
        "{out}"
    );
    assert_eq!(status(&app, &s, &a).await, "running");

    // Cancelled while queued: skipped.
    let out = cli
        .run(&["deployments", "cancel", &format!("{s}/{b}")])
        .await;
    out.assert_code(0);
    assert!(
        out.stdout
            .contains(&format!("Cancel requested for {s}/{b}")),
        "{out}"
    );
    let out = second.finish().await;
    out.assert_code(5);
    assert!(out.stdout.contains("Cancelled before it started."), "{out}");
    assert!(out.stderr.contains("was skipped"), "{out}");

    // Cancelled while running (by its bare id, from another process): cancelled.
    cli.run(&["deployments", "cancel", &a]).await.assert_code(0);
    let out = first.finish().await;
    out.assert_code(4);
    assert_eq!(
        out.stdout.lines().last(),
        Some("Deployment cancelled."),
        "{out}"
    );
    assert!(out.stderr.contains("was cancelled"), "{out}");
    assert_eq!(status(&app, &s, &a).await, "failed");

    // A finished deployment cannot be cancelled; the CLI says why.
    let out = cli.run(&["deployments", "cancel", &a]).await;
    out.assert_code(1);
    assert!(out.stderr.contains("409"), "{out}");
    assert!(out.stderr.contains("has already finished"), "{out}");
}

#[tokio::test]
async fn read_commands_print_the_servers_json() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let cli = Cli::new(&app);
    let s = stack("shapes");
    // A run that ends at once, engine or not.
    put_settings(&app, &s, with_pre_run(&repo, &["exit 1"])).await;

    let out = cli.run(&["run", &s, "--output", "json"]).await;
    out.assert_code(0);
    let created = out.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["consoleUrl"],
        format!("{}/{s}/deployments/1", app.url)
    );
    app.wait_for(&s, &id, Some("failed")).await;

    let out = cli.run(&["-o", "json", "deployments", "ls", &s]).await;
    out.assert_code(0);
    let listed = out.json();
    let d = &listed["deployments"][0];
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["version"], 1);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["pulumiOperation"], "update");
    assert_eq!(
        (d["projectName"].as_str(), d["stackName"].as_str()),
        (Some("proj"), Some("shapes"))
    );
    assert!(d["jobs"][0]["steps"].is_array(), "{d}");
    // The org's list without a stack.
    let out = cli.run(&["deployments", "ls", "-o", "json"]).await;
    out.assert_code(0);
    assert_eq!(out.json()["deployments"][0]["id"], id.as_str());

    let out = cli.run(&["stacks", "ls", "-o", "json"]).await;
    out.assert_code(0);
    let stacks = out.json();
    let st = &stacks["stacks"][0];
    assert_eq!(stacks["stacks"].as_array().unwrap().len(), 1, "{stacks}");
    assert_eq!(st["orgName"], "default");
    assert_eq!(st["projectName"], "proj");
    assert_eq!(st["stackName"], "shapes");
    assert_eq!(st["lastDeployment"]["id"], id.as_str());

    let out = cli
        .run(&[
            "schedules",
            "create",
            &s,
            "--cron",
            "0 3 * * *",
            "-o",
            "json",
        ])
        .await;
    out.assert_code(0);
    let sid = out.json()["id"].as_str().unwrap().to_string();
    let out = cli.run(&["schedules", "ls", &s, "--output", "json"]).await;
    out.assert_code(0);
    let listed = out.json();
    let sc = &listed["schedules"][0];
    assert_eq!(sc["id"], sid.as_str());
    assert_eq!(sc["scheduleCron"], "0 3 * * *");
    assert_eq!(sc["definition"]["request"]["operation"], "update");
    assert_eq!(sc["paused"], false);
    // YAML is the same value.
    let out = cli.run(&["schedules", "ls", &s, "-o", "yaml"]).await;
    out.assert_code(0);
    let yaml: Value = serde_yaml_ng::from_str(&out.stdout).unwrap();
    assert_eq!(yaml, listed);
    // A schedule's life: paused, resumed, its (empty) history, deleted.
    let schedule = async |verb: &str| {
        let out = cli.run(&["schedules", verb, &s, &sid, "-o", "json"]).await;
        out.assert_code(0);
        out
    };
    schedule("pause").await;
    let out = cli.run(&["schedules", "ls", &s, "-o", "json"]).await;
    assert_eq!(out.json()["schedules"][0]["paused"], true, "{out}");
    assert!(schedule("resume").await.stdout.contains("Resumed schedule"));
    let out = schedule("history").await;
    assert!(out.json()["scheduleHistoryEvents"].is_array(), "{out}");
    schedule("rm").await;
    let out = cli.run(&["schedules", "ls", &s, "-o", "json"]).await;
    assert_eq!(out.json()["schedules"], json!([]), "{out}");
    // Tags, by name.
    cli.run(&["tags", "set", &s, "team=web", "tier=gold"])
        .await
        .assert_code(0);
    cli.run(&["tags", "rm", &s, "tier"]).await.assert_code(0);
    let out = cli.run(&["tags", "ls", &s, "-o", "json"]).await;
    out.assert_code(0);
    assert_eq!(out.json(), json!({"team": "web"}));
    // Tables are for people: a header and a row.
    let out = cli.run(&["deployments", "ls", &s]).await;
    out.assert_code(0);
    let mut lines = out.stdout.lines();
    assert!(lines.next().unwrap().starts_with("ID "), "{out}");
    assert!(lines.next().unwrap().starts_with(&id), "{out}");

    // Pause and resume, seen in the stack's JSON.
    let paused = async || {
        cli.run(&["stacks", "ls", "-o", "json"]).await.json()["stacks"][0]["paused"].clone()
    };
    let out = cli.run(&["pause", "proj/shapes"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains(&format!("Paused {s}.")), "{out}");
    assert_eq!(paused().await, true);
    cli.run(&["resume", &s]).await.assert_code(0);
    assert_eq!(paused().await, false);

    // Deleting a stack wants a confirmation, which piped input cannot give.
    let out = cli.run_in(&["stacks", "rm", &s], "shapes\n").await;
    out.assert_code(1);
    assert!(out.stderr.contains("pass --yes"), "{out}");
    let out = cli.run(&["stack", "rm", &s, "--yes"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains(&format!("Deleted {s}.")), "{out}");
    let out = cli.run(&["stacks", "ls", "-o", "json"]).await;
    assert_eq!(out.json(), json!({"stacks": []}));

    // Completions, and the exit codes in --help.
    let out = cli.run(&["completions", "bash"]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("_tarmac()"), "{out}");
    let out = cli.run(&["run", "--help"]).await;
    out.assert_code(0);
    for code in [
        "  3    the deployment failed",
        "  4    the deployment was cancelled",
        "  5    the deployment was skipped",
    ] {
        assert!(out.stdout.contains(code), "{out}");
    }
    cli.run(&["run"]).await.assert_code(2);
}

/// A stacks file for `count` stacks of project `fleet`: defaults, two templates, and one secret.
fn fleet_file(count: usize) -> String {
    let mut text = String::from(
        r#"name: fleet
defaults:
  settings:
    sourceContext:
      git: {repoUrl: "https://git.example.com/fleet.git", branch: refs/heads/main}
  tags: {team: platform}
templates:
  web:
    settings:
      sourceContext: {git: {repoDir: "stacks/${stack}"}}
      operationContext: {environmentVariables: {TIER: web}}
    schedules:
      - drift: "0 * * * *"
  nightly:
    schedules:
      - cron: "0 3 * * *"
        operation: refresh
stacks:
"#,
    );
    for i in 0..count {
        let template = if i % 2 == 0 { "[web, nightly]" } else { "web" };
        text.push_str(&format!(
            "  - stack: fleet/s{i:02}\n    template: {template}\n    tags: {{index: \"{i}\"}}\n"
        ));
        if i == 0 {
            text.push_str("    secrets:\n      DB_PASSWORD: {env: FLEET_DB_PASSWORD}\n");
        }
    }
    text
}

/// Each fleet stack's settings version, or None where it does not exist.
async fn versions(app: &TestApp, count: usize) -> Vec<Option<i64>> {
    let mut out = vec![];
    for i in 0..count {
        let (code, v) = app
            .get(&format!(
                "/api/stacks/default/fleet/s{i:02}/deployments/settings"
            ))
            .await;
        out.push((code == 200).then(|| v["version"].as_i64().unwrap()));
    }
    out
}

async fn schedule_ids(app: &TestApp, s: &str) -> Vec<String> {
    let (_, v) = app
        .get(&format!("/api/stacks/{s}/deployments/schedules"))
        .await;
    let mut ids: Vec<String> = v["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn apply_makes_twenty_stacks_match_their_file_and_nothing_more() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app).with("FLEET_DB_PASSWORD", "fleet-db-sekrit");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stacks.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, fleet_file(20)).unwrap();
    // A stack the file does not manage, which --prune must leave alone.
    put_settings(
        &app,
        "default/other/keep",
        json!({"sourceContext": {"git": {"repoUrl": "https://git.example.com/other.git", "branch": "refs/heads/main"}}}),
    )
    .await;

    // --dry-run: a diff per stack, and nothing written.
    let out = cli.run(&["apply", "-f", f, "--dry-run"]).await;
    out.assert_code(0);
    for i in 0..20 {
        assert!(
            out.stdout
                .contains(&format!("+ default/fleet/s{i:02}: new stack\n")),
            "s{i:02}:\n{out}"
        );
        assert!(
            out.stdout
                .contains(&format!("+     repoDir: stacks/s{i:02}\n")),
            "s{i:02}:\n{out}"
        );
    }
    for want in [
        "  + tag team=platform\n",
        "  + tag tarmac:apply=fleet\n",
        "  + schedule: drift check on cron 0 * * * *\n",
        "  + schedule: refresh on cron 0 3 * * *\n",
        "    + secret DB_PASSWORD (value from its source)\n",
        "20 stack(s): 20 would be created\n",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing:\n{out}");
    }
    assert!(!out.stdout.contains("fleet-db-sekrit"), "{out}");
    assert_eq!(versions(&app, 20).await, vec![None; 20]);
    let (code, _) = app.get("/api/stacks/default/fleet/s00").await;
    assert_eq!(code, 404, "a dry run creates no stack");

    // Apply: every stack made as declared.
    let out = cli.run(&["apply", "-f", f]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("20 stack(s): 20 created\n"), "{out}");
    let made = versions(&app, 20).await;
    assert!(made.iter().all(Option::is_some), "{made:?}");
    for i in [0usize, 7] {
        let s = format!("default/fleet/s{i:02}");
        let (_, st) = app.get(&format!("/api/stacks/{s}")).await;
        assert_eq!(
            st["tags"],
            json!({"team": "platform", "index": i.to_string(), "tarmac:apply": "fleet"}),
            "{s}"
        );
        let (_, settings) = app
            .get(&format!("/api/stacks/{s}/deployments/settings"))
            .await;
        assert_eq!(
            settings["sourceContext"]["git"]["repoDir"],
            format!("stacks/s{i:02}")
        );
        let env = &settings["operationContext"]["environmentVariables"];
        assert_eq!(env["TIER"], "web");
        assert_eq!(
            env["DB_PASSWORD"].get("ciphertext").is_some(),
            i == 0,
            "{env}"
        );
        assert_eq!(
            schedule_ids(&app, &s).await.len(),
            if i % 2 == 0 { 2 } else { 1 }
        );
    }
    let schedules_before = schedule_ids(&app, "default/fleet/s01").await;

    // Again: all unchanged, and nothing written.
    let out = cli.run(&["apply", "-f", f]).await;
    out.assert_code(0);
    assert!(out.stdout.contains("20 stack(s): 20 unchanged\n"), "{out}");
    assert_eq!(versions(&app, 20).await, made);
    assert_eq!(
        schedule_ids(&app, "default/fleet/s01").await,
        schedules_before
    );
    let out = cli.run(&["apply", "-f", f, "-o", "json"]).await;
    out.assert_code(0);
    let results = out.json();
    assert_eq!(results["stacks"].as_array().unwrap().len(), 20);
    assert!(
        results["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "unchanged"),
        "{results}"
    );

    // --prune: what the file no longer declares goes, and only that.
    cli.run(&["tags", "set", "fleet/s01", "extra=1"])
        .await
        .assert_code(0);
    cli.run(&["schedules", "create", "fleet/s01", "--cron", "5 4 * * *"])
        .await
        .assert_code(0);
    std::fs::write(&file, fleet_file(19)).unwrap();
    let out = cli.run(&["apply", "-f", f, "--prune", "--dry-run"]).await;
    out.assert_code(0);
    for want in [
        "~ default/fleet/s01: changes\n",
        "  - tag extra\n",
        ": update on cron 5 4 * * *\n",
        "- default/fleet/s19: would be removed (no longer declared)\n",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing:\n{out}");
    }
    assert!(!out.stdout.contains("default/other/keep"), "{out}");
    let (code, _) = app.get("/api/stacks/default/fleet/s19").await;
    assert_eq!(code, 200, "a dry run removes nothing");

    let out = cli.run(&["apply", "-f", f, "--prune"]).await;
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("20 stack(s): 1 removed, 18 unchanged, 1 updated\n"),
        "{out}"
    );
    let (code, _) = app.get("/api/stacks/default/fleet/s19").await;
    assert_eq!(code, 404);
    let (_, st) = app.get("/api/stacks/default/fleet/s01").await;
    assert!(st["tags"].get("extra").is_none(), "{st}");
    assert_eq!(
        schedule_ids(&app, "default/fleet/s01").await,
        schedules_before
    );
    let (code, _) = app.get("/api/stacks/default/other/keep").await;
    assert_eq!(code, 200, "--prune touches only the file's own stacks");
    let left = versions(&app, 19).await;
    assert_eq!(left, made[..19]);

    // A bad file names file, line and field, and changes nothing on the server: not even
    // the good stack declared before the bad one.
    let good = fleet_file(19).replace(
        "  - stack: fleet/s05\n    template: web\n    tags: {index: \"5\"}\n",
        "  - stack: fleet/new\n    template: web\n",
    );
    for (bad, marker, field) in [
        (
            "    template: web\n    tagz: {a: b}\n",
            "tagz:",
            "unknown field `tagz`",
        ),
        (
            "    template: web\n    schedules: [{cron: \"61 * * * *\"}]\n",
            "stack: fleet/s05",
            "schedules: invalid scheduleCron '61 * * * *'",
        ),
        (
            "    template: nope\n",
            "stack: fleet/s05",
            "template 'nope' is not defined",
        ),
        (
            "    template: web\n    settings: {sourceContext: {git: {branch: 5}}}\n",
            "stack: fleet/s05",
            "sourceContext.git.branch must be a string",
        ),
    ] {
        let text = format!("{good}  - stack: fleet/s05\n{bad}");
        let line = text.lines().position(|l| l.contains(marker)).unwrap() + 1;
        std::fs::write(&file, &text).unwrap();
        let out = cli.run(&["apply", "-f", f, "--prune"]).await;
        out.assert_code(1);
        assert!(
            out.stderr.contains(&format!("{f}:{line}: ")),
            "{bad}expected {f}:{line}:\n{out}"
        );
        assert!(out.stderr.contains(field), "{bad}{out}");
        assert!(
            out.stderr.contains("nothing was changed on the server"),
            "{out}"
        );
        let (code, _) = app.get("/api/stacks/default/fleet/new").await;
        assert_eq!(code, 404, "{bad}");
        assert_eq!(versions(&app, 19).await, left, "{bad}");
    }
}

#[tokio::test]
async fn settings_edit_saves_what_the_server_accepts_and_nothing_else() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let cli = Cli::new(&app);
    let s = stack("edited");
    let path = format!("/api/stacks/{s}/deployments/settings");
    let pw = cli.home.path().join("pw");
    std::fs::write(&pw, "edit-sekrit\n").unwrap();
    cli.run(&[
        "settings",
        "set",
        &s,
        &format!("sourceContext.git.repoUrl={}", repo.url()),
        "sourceContext.git.branch=refs/heads/main",
        "sourceContext.git.repoDir=infra",
        "--secret",
        &format!("operationContext.environmentVariables.DB=@{}", pw.display()),
    ])
    .await
    .assert_code(0);
    let (_, before) = app.get(&path).await;
    let ciphertext = before["operationContext"]["environmentVariables"]["DB"]["ciphertext"].clone();
    assert!(ciphertext.is_string(), "{before}");

    // An editor that keeps a copy of what it was shown and makes one change.
    let seen = cli.home.path().join("seen.yaml");
    let editor = |name: &str, edit: &str| {
        let script = cli.home.path().join(name);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\ncp \"$1\" '{}'\n{edit}\n",
                seen.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script.display().to_string()
    };
    let ok = editor("ok.sh", r#"sed -i 's/repoDir: infra/repoDir: app/' "$1""#);
    let edit = |script: String| {
        let args = ["settings", "edit", s.as_str()];
        let cli = &cli;
        async move { cli.run_env(&args, &[("EDITOR", &script)]).await }
    };
    let out = edit(ok).await;
    out.assert_code(0);
    assert!(
        out.stderr
            .contains(&format!("Saved the settings of {s} (version 2)")),
        "{out}"
    );
    let shown = std::fs::read_to_string(&seen).unwrap();
    assert!(shown.starts_with("# Deployment settings of "), "{shown}");
    assert!(shown.contains("repoDir: infra"), "{shown}");
    assert!(shown.contains("ciphertext:"), "{shown}");
    assert!(!shown.contains("edit-sekrit"), "{shown}");
    let (_, after) = app.get(&path).await;
    assert_eq!(after["version"], 2);
    assert_eq!(after["sourceContext"]["git"]["repoDir"], "app");
    assert_eq!(
        after["operationContext"]["environmentVariables"]["DB"]["ciphertext"], ciphertext,
        "the secret is kept as it was"
    );

    // An edit the server refuses: not saved, kept for the user, exit 1 (no one to ask again).
    let bad = editor(
        "bad.sh",
        r#"sed -i 's/branch: refs.heads.main/branch: 5/; s/repoDir: app/repoDir: lost/' "$1""#,
    );
    let out = edit(bad).await;
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("sourceContext.git.branch must be a string"),
        "{out}"
    );
    assert!(out.stderr.contains("the settings were not saved"), "{out}");
    let kept = cli.tmp().join("tarmac-settings-default-proj-edited.yaml");
    assert!(out.stderr.contains(&kept.display().to_string()), "{out}");
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap()
            .contains("repoDir: lost")
    );
    let (_, now) = app.get(&path).await;
    assert_eq!(now, after, "nothing saved");

    // Not YAML at all: the same.
    let broken = editor("broken.sh", r#"echo 'sourceContext: [' >> "$1""#);
    let out = edit(broken).await;
    out.assert_code(1);
    assert!(out.stderr.contains("the settings were not saved"), "{out}");
    assert_eq!(app.get(&path).await.1, after);

    // No change, and an emptied file: nothing to save, and that is fine.
    let out = edit(editor("same.sh", "true")).await;
    out.assert_code(0);
    assert!(out.stderr.contains("No changes."), "{out}");
    let out = edit(editor("empty.sh", r#": > "$1""#)).await;
    out.assert_code(0);
    assert!(out.stderr.contains("Empty file: nothing saved."), "{out}");
    assert_eq!(app.get(&path).await.1, after);

    // On a terminal a refused edit is offered again, until the server accepts one: saving the
    // refused text again unchanged does not pass for "no changes".
    let count = cli.home.path().join("count");
    let retry = editor(
        "retry.sh",
        &format!(
            r#"n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'
case $n in
  1) sed -i 's/branch: refs.heads.main/branch: 5/' "$1" ;;
  3) sed -i 's/branch: 5/branch: refs\/heads\/dev/' "$1" ;;
esac"#,
            c = count.display()
        ),
    );
    let cli = cli.with("EDITOR", &retry);
    let mut t = cli.spawn_tty(&["settings", "edit", &s]);
    let again = "Edit again? [Y/n] ";
    t.wait_until("the first refusal", |_, e| e.matches(again).count() == 1)
        .await;
    t.type_line("y");
    t.wait_until("the second refusal", |_, e| e.matches(again).count() == 2)
        .await;
    t.type_line("");
    let out = t.finish().await;
    out.assert_code(0);
    assert!(
        out.stderr
            .contains(&format!("Saved the settings of {s} (version 3)")),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    let (_, now) = app.get(&path).await;
    assert_eq!(now["sourceContext"]["git"]["branch"], "refs/heads/dev");
    assert_eq!(now["sourceContext"]["git"]["repoDir"], "app");
}

/// A free port for a server that must come back where it was. It is taken below Linux's
/// ephemeral range (32768 and up), so that while the server is down no connection or `:0` bind
/// elsewhere is given it.
fn free_port() -> u16 {
    let start = 20_000 + (uuid::Uuid::new_v4().as_u128() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

#[tokio::test]
async fn a_follow_survives_a_server_restart_without_repeating_a_line() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut app = TestApp::spawn_with(&["--listen", &listen, "--lease-secs", "2"]).await;
    let repo = TestRepo::new();
    let cli = Cli::new(&app);
    let s = stack("restarted");
    put_settings(
        &app,
        &s,
        with_pre_run(
            &repo,
            &["i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo tick $i; sleep 0.05; done"],
        ),
    )
    .await;

    let mut run = cli.spawn(&["run", &s, "--follow"]);
    let id = run.deployment_id().await;
    let mut logs = cli.spawn(&["logs", &format!("{s}/{id}"), "--follow"]);
    run.wait_for_stdout("tick 20\n").await;
    logs.wait_for_stdout("tick 20\n").await;

    // A crash: the followers lose their connections and keep trying.
    app.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let printed_before = run.stdout();
    app.restart_with(&[]);
    assert_eq!(app.url, format!("http://{listen}"));

    // The restarted server fails the run its predecessor had (its lease lapsed); both
    // followers see that, and every line exactly once.
    let (run, logs) = tokio::join!(run.finish(), logs.finish());
    let log = log_as_printed(&app, &s, &id).await;
    for out in [&run, &logs] {
        out.assert_code(3);
        assert!(out.stderr.contains("reconnecting"), "{out}");
        assert!(
            out.stdout.starts_with(&printed_before),
            "lines printed before the crash changed:\n{out}"
        );
        assert_eq!(out.stdout, log, "not every line exactly once:\n{out}");
        assert!(
            out.stdout.trim_end().ends_with(
                "The worker running this deployment stopped renewing its lease (it crashed or was killed); marked failed."
            ),
            "{out}"
        );
    }
    assert_eq!(run.stdout, logs.stdout);
    let ticks: Vec<u32> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(ticks.len() >= 20, "{run}");
    assert_eq!(
        ticks,
        (1..=ticks.len() as u32).collect::<Vec<_>>(),
        "ticks out of order, repeated or lost"
    );
    assert_eq!(status(&app, &s, &id).await, "failed");
}

#[tokio::test]
async fn on_a_terminal_the_follow_spins_and_ctrl_c_asks_before_cancelling() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let cli = Cli::new(&app);
    let s = stack("tty");
    put_settings(&app, &s, with_pre_run(&repo, &["echo waiting; sleep 60"])).await;

    // "n": following stops, the deployment goes on.
    let mut t = cli.spawn_tty(&["run", &s, "--follow"]);
    let id = t.deployment_id().await;
    t.wait_for_stdout("waiting").await;
    t.wait_until("the spinner on stderr", |_, err| {
        has_spinner(err) && err.contains("running · Pre-run command 1")
    })
    .await;
    let prompt = format!("Cancel deployment {s}/{id}? [y/N] ");
    t.interrupt();
    t.wait_for_stderr(&prompt).await;
    // The prompt stays on screen: the spinner does not draw over it while it waits (nor after).
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.type_line("n");
    let out = t.finish().await;
    let after_prompt = &out.stderr[out.stderr.find(&prompt).unwrap() + prompt.len()..];
    assert!(
        !has_spinner(after_prompt),
        "the spinner drew over the prompt: {after_prompt:?}"
    );
    out.assert_code(130);
    assert!(
        out.stderr
            .contains("Stopped following; the deployment goes on"),
        "{out}"
    );
    assert!(
        !has_spinner(&out.stdout),
        "the spinner is on stderr only: {out}"
    );
    assert!(out.stdout.contains("==> Pre-run command 1"), "{out}");
    assert_eq!(status(&app, &s, &id).await, "running");

    // Ctrl-C at the prompt stops following at once, too.
    let mut t = cli.spawn_tty(&["logs", &format!("{s}/{id}"), "--follow"]);
    t.wait_for_stdout("waiting").await;
    t.interrupt();
    t.wait_for_stderr(&prompt).await;
    t.interrupt();
    let out = t.finish_within(Duration::from_secs(5)).await;
    out.assert_code(130);
    assert_eq!(status(&app, &s, &id).await, "running");

    // "y": the deployment is cancelled, and the follow waits for it to end.
    let mut t = cli.spawn_tty(&["logs", &format!("{s}/{id}"), "--follow"]);
    t.wait_for_stdout("waiting").await;
    t.interrupt();
    t.wait_for_stderr(&prompt).await;
    t.type_line("y");
    let out = t.finish().await;
    out.assert_code(4);
    assert!(out.stderr.contains("Cancel requested"), "{out}");
    assert!(
        out.stderr
            .contains(&format!("Deployment {id} was cancelled.")),
        "{out}"
    );
    assert!(out.stdout.contains("Deployment cancelled."), "{out}");
    assert_eq!(status(&app, &s, &id).await, "failed");
}

#[tokio::test]
async fn a_cancel_that_comes_too_late_does_not_pass_for_a_cancel() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let cli = Cli::new(&app);
    let s = stack("late");
    put_settings(
        &app,
        &s,
        with_pre_run(&repo, &["echo waiting; sleep 1; exit 1"]),
    )
    .await;
    let mut t = cli.spawn_tty(&["run", &s, "--follow"]);
    let id = t.deployment_id().await;
    t.wait_for_stdout("waiting").await;
    t.interrupt();
    t.wait_for_stderr("? [y/N] ").await;
    // While the question waits, the deployment fails on its own.
    app.wait_for(&s, &id, Some("failed")).await;
    t.type_line("y");
    let out = t.finish().await;
    out.assert_code(3);
    assert!(
        out.stderr.contains(&format!("Deployment {id} failed.")),
        "{out}"
    );
}

/// A gateway in front of `upstream` that, like API Gateway, cannot stream (so the CLI polls
/// the logs' continuation token), and that fails every third request for a log page with a
/// 502. Stops when dropped.
struct FlakyGateway {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FlakyGateway {
    async fn start(upstream: &str) -> Self {
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let upstream = upstream.to_string();
        let client = reqwest::Client::new();
        let pages = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (upstream, client, pages) = (upstream.clone(), client.clone(), Arc::clone(&pages));
                async move {
                    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                    if uri.path().ends_with("/stream") {
                        let body = json!({"code": 404, "message": "live streams are not available here; poll logs?continuationToken="});
                        return (StatusCode::NOT_FOUND, body.to_string());
                    }
                    if uri.path().ends_with("/logs") && pages.fetch_add(1, Ordering::SeqCst) % 3 == 1 {
                        return (StatusCode::BAD_GATEWAY, r#"{"message":"Bad Gateway"}"#.to_string());
                    }
                    let mut req = client.request(method, format!("{upstream}{path}")).body(body);
                    for name in ["authorization", "content-type", "accept"] {
                        if let Some(v) = headers.get(name) {
                            req = req.header(name, v.as_bytes());
                        }
                    }
                    let resp = req.send().await.unwrap();
                    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                    (status, resp.text().await.unwrap())
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, task }
    }
}

#[tokio::test]
async fn where_the_server_cannot_stream_the_follow_polls_through_lost_pages() {
    let app = TestApp::spawn().await;
    let repo = TestRepo::new();
    let gateway = FlakyGateway::start(&app.url).await;
    let cli = Cli::new(&app).with("TARMAC_URL", &gateway.url);
    let s = stack("polled");
    put_settings(
        &app,
        &s,
        with_pre_run(
            &repo,
            &["i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo tick $i; sleep 0.05; done; exit 1"],
        ),
    )
    .await;
    let out = cli.run(&["run", &s, "--follow"]).await;
    out.assert_code(3);
    assert!(
        out.stderr.contains("502"),
        "the gateway failed no page:\n{out}"
    );
    let id = out
        .stderr
        .split("Deployment ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(out.stdout, log_as_printed(&app, &s, id).await, "{out}");
    let ticks: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("tick "))
        .collect();
    let want: Vec<String> = (1..=40).map(|i| format!("tick {i}")).collect();
    assert_eq!(ticks, want);
}
