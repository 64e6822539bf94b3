//! Running one claimed deployment: source, pre-run commands, engine, outputs, each a step with
//! its own status and logs, under a lease that is renewed while the run lasts.
//!
//! The same runner serves every backend; it only talks to the `RunStore` port.

pub mod engine;
pub mod exec;
pub mod git;
pub mod logs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::deps::Deps;
use crate::domain::hooks::Event;
use crate::domain::spec::{EnvValue, RunSpec};
use crate::domain::{Deployment, JobStatus, Lease, Operation, StepStatus};
use crate::error::Error;
use crate::oidc::ExchangeRequest;
use crate::ports::{Claimed, DriftRun};
use engine::Engine;
use exec::{CommandSpec, Exit, Stdout};
use logs::{Masker, RunLog};

/// Stops runs from outside: server shutdown, or the end of a Lambda invocation. The message
/// says why, in the stopped deployment's log.
#[derive(Debug, Clone)]
pub struct StopSignal {
    pub token: CancellationToken,
    pub message: Arc<str>,
}

impl StopSignal {
    pub fn new(message: &str) -> Self {
        Self {
            token: CancellationToken::new(),
            message: message.into(),
        }
    }
}

/// How runs are carried out on this host.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Fresh per-deployment working directories go under here, removed after each run.
    pub work_dir: PathBuf,
    /// `PATH` for child processes (where git and the engines are found).
    pub path_env: String,
    pub lang: String,
    pub default_timeout: Duration,
    /// How long a stopped process group gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How often the lease is renewed and cancellation checked.
    pub heartbeat_every: Duration,
}

pub struct Runner {
    deps: Arc<Deps>,
    cfg: RunnerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    TimedOut(Duration),
    Shutdown,
    LeaseLost,
}

/// How a run's steps ended.
struct Outcome {
    /// The closing line of the log.
    summary: String,
    /// For detect-drift: whether drift was found.
    drift: Option<bool>,
}

/// One of the run's own environment variables, decrypted.
struct EnvVar {
    name: String,
    value: String,
    secret: bool,
}

/// Why a run ended early.
enum Failure {
    Stopped,
    Failed(String),
}

type StepResult<T = ()> = Result<T, Failure>;

/// Everything one run's steps share.
struct Run<'a> {
    d: &'a Deployment,
    lease: &'a Lease,
    log: RunLog,
    stop: CancellationToken,
    workdir: PathBuf,
    /// The child environment shared by pre-run commands and the engine; the OIDC step adds to it.
    env: Mutex<Vec<(String, String)>>,
    /// Names of the steps started so far; the last one gets the run's closing line.
    steps: Mutex<Vec<String>>,
}

impl Run<'_> {
    fn env(&self) -> Vec<(String, String)> {
        self.env.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets variables, replacing any of the same name.
    fn set_env(&self, vars: Vec<(String, String)>) {
        let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in vars {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
    }
}

impl Runner {
    pub fn new(deps: Arc<Deps>, cfg: RunnerConfig) -> Self {
        Self { deps, cfg }
    }

    /// Runs a claimed deployment to a terminal status, which it returns. When `stop` fires the
    /// run is stopped and failed with its message.
    #[tracing::instrument(skip_all, fields(deployment_id = %claimed.deployment.id, org = %claimed.deployment.stack.org,
        project = %claimed.deployment.stack.project, stack = %claimed.deployment.stack.stack,
        version = claimed.deployment.version, operation = %claimed.deployment.operation))]
    pub async fn run(
        &self,
        claimed: Claimed,
        lease: &Lease,
        stop_signal: &StopSignal,
    ) -> JobStatus {
        let d = claimed.deployment;
        if let Err(e) = self.deps.runs.mark_running(d.id, lease).await {
            tracing::warn!(error = %e.chain(), "could not start a claimed deployment");
            return JobStatus::Failed;
        }
        tracing::info!("deployment started");
        crate::webhooks::events::deployment(&self.deps, &d, Event::DeploymentStarted).await;
        let prepared = self.prepare(&d);
        // Everything secret the run knows is masked: its secret variables and git credentials.
        let secrets: Vec<String> = match &prepared {
            Ok((spec, env)) => {
                let vars = env.iter().filter(|e| e.secret).map(|e| e.value.clone());
                vars.chain(self.git_secrets(spec, &d.stack.org))
                    .chain(git::url_credentials(&spec.source.repo_url))
                    .collect()
            }
            Err(_) => vec![],
        };
        let masker = Masker::new(secrets);
        let log = RunLog::start(Arc::clone(&self.deps.runs), d.id, lease.clone(), masker);

        let stop = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let timeout = prepared
            .as_ref()
            .ok()
            .and_then(|(spec, _)| spec.timeout_secs)
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.default_timeout);
        let watchdog = self.watch(
            d.id,
            lease.clone(),
            timeout,
            stop.clone(),
            Arc::clone(&reason),
            stop_signal.token.clone(),
        );

        let workdir = self.cfg.work_dir.join(d.id.to_string());
        let user_env = match &prepared {
            Ok((_, env)) => env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            Err(_) => vec![],
        };
        let run = Run {
            d: &d,
            lease,
            log: log.clone(),
            stop: stop.clone(),
            env: Mutex::new(self.child_env(&d, &workdir, user_env)),
            workdir: workdir.clone(),
            steps: Mutex::new(Vec::new()),
        };
        let outcome = match &prepared {
            Err(msg) => Err(Failure::Failed(msg.clone())),
            Ok((spec, _)) => self.steps(&run, spec).await,
        };
        let last_step = run
            .steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            .saturating_sub(1);
        watchdog.abort();
        let workdir_clone = workdir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(workdir_clone)).await;

        let reason = *reason.lock().unwrap_or_else(|p| p.into_inner());
        let drift = outcome.as_ref().ok().and_then(|o| o.drift);
        let (status, message) = match (outcome.map(|o| o.summary), reason) {
            (_, Some(StopReason::LeaseLost)) => {
                tracing::warn!("lease lost; another party owns this deployment now");
                return JobStatus::Failed;
            }
            (Ok(msg), _) => (JobStatus::Succeeded, msg),
            (Err(Failure::Stopped), Some(StopReason::Cancelled)) => {
                (JobStatus::Failed, "Deployment cancelled.".to_string())
            }
            (Err(Failure::Stopped), Some(StopReason::TimedOut(t))) => (
                JobStatus::Failed,
                format!(
                    "Deployment timed out after {}s and was stopped.",
                    t.as_secs()
                ),
            ),
            (Err(Failure::Stopped), _) => (JobStatus::Failed, stop_signal.message.to_string()),
            (Err(Failure::Failed(msg)), _) => (JobStatus::Failed, msg),
        };
        log.line(last_step, &message).await;
        let delete_after =
            d.operation == Operation::Destroy && d.config.spec().delete_after_destroy;
        if delete_after && status != JobStatus::Succeeded {
            log.line(last_step, "The destroy did not succeed, so deleteAfterDestroy left the stack, its settings and its schedules in place.")
                .await;
        }
        log.flush().await;
        if let Err(e) = self.deps.runs.finish(d.id, lease, status).await {
            tracing::warn!(error = %e.chain(), "could not record the deployment's end");
            return JobStatus::Failed;
        }
        tracing::info!(status = %status, "deployment finished");
        let succeeded = status == JobStatus::Succeeded;
        let event = if succeeded {
            Event::DeploymentSucceeded
        } else {
            Event::DeploymentFailed
        };
        crate::webhooks::events::deployment(&self.deps, &d, event).await;
        if d.operation == Operation::RemediateDrift {
            crate::webhooks::events::drift_remediation(&self.deps, &d, succeeded).await;
        }
        self.after(&d, status, drift, delete_after).await;
        status
    }

    /// What follows a finished run: a detect-drift run is recorded (and remediated if asked);
    /// a successful destroy with `deleteAfterDestroy` deletes the stack. Failures here are
    /// logged; the deployment's own status stands.
    async fn after(
        &self,
        d: &Deployment,
        status: JobStatus,
        drift: Option<bool>,
        delete_after: bool,
    ) {
        if d.operation == Operation::DetectDrift {
            let run = DriftRun {
                id: Uuid::new_v4(),
                stack: d.stack.clone(),
                created: time::OffsetDateTime::now_utc(),
                detect: (d.id, d.version),
                drift_detected: drift == Some(true),
                remediation: None,
            };
            if let Err(e) = self.deps.drift.record_drift_run(&run).await {
                tracing::error!(error = %e.chain(), "could not record the drift run");
                return;
            }
            crate::webhooks::events::drift_detection(
                &self.deps,
                d,
                run.id,
                run.drift_detected,
                status == JobStatus::Succeeded,
            )
            .await;
            if status == JobStatus::Succeeded
                && drift == Some(true)
                && d.config.spec().remediate_if_drift_detected
            {
                let body =
                    serde_json::json!({"operation": "remediate-drift", "inheritSettings": true});
                let request = crate::service::CreateRequest::new(
                    &d.stack,
                    &body,
                    "drift-remediation",
                    &d.requested_by,
                );
                match crate::service::create(&self.deps, &request).await {
                    Ok(r) => {
                        if let Err(e) = self
                            .deps
                            .drift
                            .link_remediation(&d.stack, run.id, (r.id, r.version))
                            .await
                        {
                            tracing::error!(error = %e.chain(), "could not link the remediation to its drift run");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e.chain(), "could not start the drift remediation")
                    }
                }
            }
        }
        if delete_after && status == JobStatus::Succeeded {
            match self.deps.stacks.delete_stack(&d.stack).await {
                Ok(()) => {
                    tracing::info!("deleteAfterDestroy: the stack was deleted");
                    self.deps.forget_state(&d.stack).await;
                }
                Err(e) => {
                    tracing::error!(error = %e.chain(), "deleteAfterDestroy: could not delete the stack")
                }
            }
        }
    }

    /// The run spec and the run's environment variables, decrypted.
    fn prepare<'d>(&self, d: &'d Deployment) -> Result<(&'d RunSpec, Vec<EnvVar>), String> {
        let spec = d.config.spec();
        let mut env = Vec::with_capacity(spec.env.len());
        for (name, value) in &spec.env {
            match value {
                EnvValue::Plain(v) => env.push(EnvVar {
                    name: name.clone(),
                    value: v.clone(),
                    secret: false,
                }),
                EnvValue::Secret { secret } => {
                    let plain = self.deps.cipher.for_org(&d.stack.org).open(secret).ok_or_else(|| {
                        format!("the secret environment variable {name} cannot be decrypted with this server's key")
                    })?;
                    env.push(EnvVar {
                        name: name.clone(),
                        value: plain,
                        secret: true,
                    });
                }
            }
        }
        Ok((spec, env))
    }

    fn git_secrets(&self, spec: &RunSpec, org: &str) -> Vec<String> {
        let cipher = self.deps.cipher.for_org(org);
        spec.source
            .auth
            .iter()
            .flat_map(|auth| auth.sealed())
            .filter_map(|s| cipher.open(s))
            .collect()
    }

    /// Renews the lease, and stops the run on cancel, timeout, shutdown or a lost lease.
    fn watch(
        &self,
        id: Uuid,
        lease: Lease,
        timeout: Duration,
        stop: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(&self.deps.runs);
        let every = self.cfg.heartbeat_every;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let why = loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => match store.heartbeat(id, &lease).await {
                        Ok(hb) if hb.cancel_requested => break StopReason::Cancelled,
                        Ok(_) => {}
                        Err(Error::Conflict(_)) => break StopReason::LeaseLost,
                        // A transient store error: the lease has slack for a few misses.
                        Err(e) => tracing::warn!(error = %e.chain(), "heartbeat failed"),
                    },
                    _ = tokio::time::sleep_until(deadline) => break StopReason::TimedOut(timeout),
                    _ = shutdown.cancelled() => break StopReason::Shutdown,
                }
            };
            *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            stop.cancel();
        })
    }

    /// The child environment: nothing of the server's own but `PATH` and `LANG`.
    fn child_env(
        &self,
        d: &Deployment,
        workdir: &Path,
        user: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), self.cfg.path_env.clone()),
            ("HOME".into(), workdir.join("home").display().to_string()),
            ("TMPDIR".into(), workdir.join("tmp").display().to_string()),
            ("LANG".into(), self.cfg.lang.clone()),
            ("CI".into(), "true".into()),
            ("PULUMI_CI_SYSTEM".into(), "Tarmac".into()),
            ("PULUMI_CI_BUILD_ID".into(), d.id.to_string()),
            ("PULUMI_CI_BUILD_NUMBER".into(), d.version.to_string()),
            ("PULUMI_SKIP_UPDATE_CHECK".into(), "true".into()),
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
            ("CHECKPOINT_DISABLE".into(), "1".into()),
            ("TARMAC_DEPLOYMENT_ID".into(), d.id.to_string()),
            ("TARMAC_ORG".into(), d.stack.org.clone()),
            ("TARMAC_PROJECT".into(), d.stack.project.clone()),
            ("TARMAC_STACK".into(), d.stack.stack.clone()),
            ("TARMAC_OPERATION".into(), d.operation.to_string()),
        ];
        // The run's own variables win over the defaults above.
        for (k, v) in user {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        env
    }

    async fn begin(&self, run: &Run<'_>, name: &str) -> StepResult<usize> {
        let idx = self
            .deps
            .runs
            .start_step(run.d.id, run.lease, name)
            .await
            .map_err(|e| Failure::Failed(format!("could not record step '{name}': {e}")))?;
        run.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
        Ok(idx)
    }

    async fn end<T>(&self, run: &Run<'_>, idx: usize, result: StepResult<T>) -> StepResult<T> {
        if let Err(Failure::Failed(msg)) = &result {
            run.log.line(idx, msg).await;
        }
        run.log.flush().await;
        let status = if result.is_ok() {
            StepStatus::Succeeded
        } else {
            StepStatus::Failed
        };
        if let Err(e) = self
            .deps
            .runs
            .finish_step(run.d.id, run.lease, idx, status)
            .await
        {
            tracing::warn!(error = %e.chain(), "could not record a step's end");
        }
        // The step's failure has been logged in it; the deployment's end says the rest.
        result.map_err(|f| match f {
            Failure::Stopped => Failure::Stopped,
            Failure::Failed(_) => {
                Failure::Failed(format!("Step '{}' failed.", step_name(run, idx)))
            }
        })
    }

    /// Runs one command in a step; a non-zero exit other than `ok_codes` fails it.
    async fn command(
        &self,
        run: &Run<'_>,
        idx: usize,
        spec: &CommandSpec,
        mode: Stdout,
        ok_codes: &[i32],
    ) -> StepResult<(i32, Vec<u8>)> {
        let groups = run.workdir.join(exec::GROUPS_FILE);
        let out = exec::run(
            spec,
            &run.log,
            idx,
            mode,
            &run.stop,
            self.cfg.stop_grace,
            &groups,
        )
        .await;
        match out.exit {
            Exit::Code(c) if c == 0 || ok_codes.contains(&c) => Ok((c, out.stdout)),
            Exit::Code(c) => Err(Failure::Failed(format!(
                "{} exited with code {c}",
                display_cmd(spec)
            ))),
            Exit::Stopped => Err(Failure::Stopped),
            Exit::SpawnFailed(msg) => Err(Failure::Failed(msg)),
        }
    }

    async fn steps(&self, run: &Run<'_>, spec: &RunSpec) -> StepResult<Outcome> {
        for dir in ["home", "tmp"] {
            tokio::fs::create_dir_all(run.workdir.join(dir))
                .await
                .map_err(|e| {
                    Failure::Failed(format!("cannot create the working directory: {e}"))
                })?;
        }

        let idx = self.begin(run, "Get source").await?;
        let result = self.get_source(run, idx, spec).await;
        let program_dir = self.end(run, idx, result).await?;

        if spec.oidc.is_some() {
            let idx = self
                .begin(run, "Fetch provider credentials via OIDC")
                .await?;
            let result = self.fetch_credentials(run, idx).await;
            self.end(run, idx, result).await?;
        }

        for (i, command) in spec.pre_run_commands.iter().enumerate() {
            let idx = self
                .begin(run, &format!("Pre-run command {}", i + 1))
                .await?;
            let shell = spec.shell.clone().unwrap_or_else(default_shell);
            run.log.line(idx, &format!("$ {command}")).await;
            let cmd = CommandSpec {
                program: shell,
                args: vec!["-c".into(), command.clone()],
                cwd: program_dir.clone(),
                env: run.env(),
            };
            let result = self
                .command(run, idx, &cmd, Stdout::Log, &[])
                .await
                .map(|_| ());
            self.end(run, idx, result).await?;
        }

        let engine = engine::detect(&program_dir, spec.engine, &self.cfg.path_env)
            .map_err(Failure::Failed)?;
        let op = run.d.operation;
        let idx = self
            .begin(run, &format!("{} {}", engine.binary(), op))
            .await?;
        let result = self.engine_with_state(run, idx, engine, &program_dir).await;
        let outcome = self.end(run, idx, result).await?;

        if engine::records_outputs(op) {
            let idx = self.begin(run, "Record outputs").await?;
            let result = self.record_outputs(run, idx, engine, &program_dir).await;
            self.end(run, idx, result).await?;
        }
        Ok(outcome)
    }

    async fn get_source(&self, run: &Run<'_>, idx: usize, spec: &RunSpec) -> StepResult<PathBuf> {
        let mut env = vec![
            ("PATH".to_string(), self.cfg.path_env.clone()),
            (
                "HOME".to_string(),
                run.workdir.join("home").display().to_string(),
            ),
            ("LANG".to_string(), self.cfg.lang.clone()),
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            // Marks the run's processes, so a restarted server can recognise its orphans.
            ("TARMAC_DEPLOYMENT_ID".to_string(), run.d.id.to_string()),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            (
                "GIT_ALLOW_PROTOCOL".to_string(),
                git::allowed_protocols(self.deps.allow_local_repos).to_string(),
            ),
        ];
        let source = &spec.source;
        if let Some(auth) = &source.auth {
            let open = |s: &Option<crate::domain::spec::source::SealedValue>| {
                s.as_ref()
                    .and_then(|v| self.deps.cipher.for_org(&run.d.stack.org).open(&v.secret))
            };
            if let Some(ssh) = &auth.ssh_auth {
                let key = open(&ssh.ssh_private_key).ok_or(Failure::Failed(
                    "gitAuth.sshAuth has no usable private key".into(),
                ))?;
                let key_path = run.workdir.join("ssh-key");
                let mut key = key;
                if !key.ends_with('\n') {
                    key.push('\n');
                }
                crate::crypto::write_private(&key_path, key.as_bytes())
                    .map_err(|e| Failure::Failed(format!("cannot write the SSH key: {e}")))?;
                env.push((
                    "GIT_SSH_COMMAND".into(),
                    format!(
                        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}",
                        key_path.display(),
                        run.workdir.join("known_hosts").display()
                    ),
                ));
            } else if let Some(token) = open(&auth.access_token) {
                env.extend(git::http_auth_env("x-access-token", &token));
            } else if let Some(basic) = &auth.basic_auth {
                let user = open(&basic.user_name).unwrap_or_default();
                let password = open(&basic.password).unwrap_or_default();
                env.extend(git::http_auth_env(&user, &password));
            }
        }
        let what = source.describe_ref();
        run.log
            .line(idx, &format!("Cloning {} at {what}", source.repo_url))
            .await;
        for args in git::clone_commands(source, "src") {
            let cmd = CommandSpec {
                program: "git".into(),
                args,
                cwd: run.workdir.clone(),
                env: env.clone(),
            };
            self.command(run, idx, &cmd, Stdout::Log, &[]).await?;
        }
        let src = run.workdir.join("src");
        let rev = CommandSpec {
            program: "git".into(),
            args: vec!["rev-parse".into(), "HEAD".into()],
            cwd: src.clone(),
            env,
        };
        let (_, sha) = self.command(run, idx, &rev, Stdout::Capture, &[]).await?;
        run.log
            .line(
                idx,
                &format!("Checked out {}", String::from_utf8_lossy(&sha).trim()),
            )
            .await;
        let program_dir = match &source.repo_dir {
            Some(dir) => src.join(dir),
            None => src,
        };
        if !program_dir.is_dir() {
            return Err(Failure::Failed(format!(
                "repoDir '{}' does not exist in the repository",
                source.repo_dir.as_deref().unwrap_or_default()
            )));
        }
        Ok(program_dir)
    }

    /// Trades the run's lease for its OIDC token and cloud credentials, which join the
    /// environment of every later step and are masked in the log from now on.
    async fn fetch_credentials(&self, run: &Run<'_>, idx: usize) -> StepResult<()> {
        let broker = &self.deps.credentials;
        let request = ExchangeRequest {
            org: run.d.stack.org.clone(),
            project: run.d.stack.project.clone(),
            stack: run.d.stack.stack.clone(),
            deployment_id: run.d.id,
            lease: run.lease.owner.clone(),
        };
        let exchanged = tokio::select! {
            r = broker.exchange(&request) => r,
            _ = run.stop.cancelled() => return Err(Failure::Stopped),
        };
        let creds = exchanged.map_err(|e| {
            if e.is_internal() {
                tracing::error!(error = %e.chain(), "OIDC credential exchange failed");
                Failure::Failed("The OIDC credential exchange failed inside Tarmac; the server's log has the cause.".into())
            } else {
                Failure::Failed(format!("The OIDC credential exchange failed: {e}"))
            }
        })?;
        run.log.mask_also(creds.secrets());
        for note in &creds.notes {
            run.log.line(idx, note).await;
        }
        let dir = run.workdir.join("oidc");
        let (env, files) = creds.environment(&dir);
        let written = async {
            tokio::fs::create_dir_all(&dir).await?;
            for (path, contents) in files {
                crate::crypto::write_private(&path, contents.as_bytes())?;
            }
            Ok::<_, Error>(())
        };
        written
            .await
            .map_err(|e| Failure::Failed(format!("cannot write the OIDC credential files: {e}")))?;
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        run.log
            .line(idx, &format!("Set {}", names.join(", ")))
            .await;
        run.set_env(env);
        Ok(())
    }

    fn state_dir(&self, d: &Deployment) -> PathBuf {
        d.stack.dir_under(&self.deps.state_dir)
    }

    /// Engine variables: where state lives, and Pulumi's per-stack passphrase.
    async fn engine_env(
        &self,
        run: &Run<'_>,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<Vec<(String, String)>> {
        let state = self.state_dir(run.d);
        tokio::fs::create_dir_all(&state).await.map_err(|e| {
            Failure::Failed(format!("cannot create the stack's state directory: {e}"))
        })?;
        let mut env = run.env();
        match engine {
            Engine::Terraform | Engine::Tofu => {
                if !engine::declares_backend(program_dir) {
                    let text = engine::terraform_backend_override(&state.join("terraform.tfstate"));
                    tokio::fs::write(program_dir.join(engine::BACKEND_OVERRIDE_FILE), text)
                        .await
                        .map_err(|e| {
                            Failure::Failed(format!("cannot write the backend override: {e}"))
                        })?;
                }
            }
            Engine::Pulumi => {
                let set = |env: &mut Vec<(String, String)>, k: &str, v: String| {
                    if !env.iter().any(|(name, _)| name == k) {
                        env.push((k.to_string(), v));
                    }
                };
                set(
                    &mut env,
                    "PULUMI_BACKEND_URL",
                    format!("file://{}", state.display()),
                );
                let stack = &run.d.stack;
                set(
                    &mut env,
                    "PULUMI_CONFIG_PASSPHRASE",
                    self.deps
                        .cipher
                        .derive(&format!("pulumi-passphrase:{stack}")),
                );
            }
        }
        Ok(env)
    }

    /// The engine operation, between restoring the stack's state and saving it when the state
    /// lives off this machine. State is saved whatever the engine's outcome: a failed or
    /// stopped apply may still have created resources its state records.
    async fn engine_with_state(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<Outcome> {
        let Some(store) = &self.deps.state_store else {
            return self.engine_operation(run, idx, engine, program_dir).await;
        };
        let stack = &run.d.stack;
        let dir = self.state_dir(run.d);
        let location = store.location(stack);
        let mut saved = store.restore(stack, &dir).await.map_err(|e| {
            tracing::error!(error = %e.chain(), "could not restore the stack's state");
            Failure::Failed(format!("cannot restore the stack's state from {location}"))
        })?;
        run.log
            .line(
                idx,
                &format!("Restored {} state file(s) from {location}", saved.len()),
            )
            .await;
        let result = self.engine_operation(run, idx, engine, program_dir).await;
        // A retry resumes where the failed attempt stopped (`saved` follows each write); a
        // conflict is final: another run's state is not to be overwritten.
        let mut outcome = store.save(stack, &dir, &mut saved).await;
        for wait in [1, 4] {
            match &outcome {
                Err(e) if !matches!(e, Error::Conflict(_)) => {
                    tracing::warn!(error = %e.chain(), "could not save the stack's state; retrying");
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    outcome = store.save(stack, &dir, &mut saved).await;
                }
                _ => break,
            }
        }
        match outcome {
            Ok((0, 0)) => run.log.line(idx, "The stack's state is unchanged").await,
            Ok((written, removed)) => {
                run.log
                    .line(
                        idx,
                        &format!(
                            "Saved the stack's state to {location} ({written} written, {removed} removed)"
                        ),
                    )
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e.chain(), "could not save the stack's state");
                // The next run would start from a state that does not record what this run
                // did, and could make resources twice: nothing runs on this stack until
                // someone has looked.
                let paused = self.deps.stacks.set_stack_paused(stack, true).await.is_ok();
                let why = match &e {
                    Error::Conflict(m) => format!("{m}, so this run's state was not saved over it"),
                    _ => format!("cannot save the stack's state to {location}"),
                };
                let message = format!(
                    "{why}: the state this run wrote exists only on this worker. {}",
                    if paused {
                        "The stack is paused so that no deployment runs against the older state; resume it once the state is checked."
                    } else {
                        "Pause the stack until its state is checked."
                    }
                );
                // The engine's own failure, if any, is the one to report; the lost save is
                // logged beside it.
                return match result {
                    Err(f) => {
                        run.log.line(idx, &message).await;
                        Err(f)
                    }
                    Ok(_) => Err(Failure::Failed(message)),
                };
            }
        }
        result
    }

    async fn engine_operation(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<Outcome> {
        let env = self.engine_env(run, engine, program_dir).await?;
        let plan = engine::plan(engine, run.d.operation, &run.d.stack.stack);
        let last = plan.commands.len() - 1;
        let mut drift = None;
        for (i, args) in plan.commands.into_iter().enumerate() {
            let cmd = CommandSpec {
                program: engine.binary().into(),
                args,
                cwd: program_dir.to_path_buf(),
                env: env.clone(),
            };
            run.log.line(idx, &format!("$ {}", display_cmd(&cmd))).await;
            let ok: Vec<i32> = if i == last {
                plan.drift_exit_code.into_iter().collect()
            } else {
                vec![]
            };
            let (code, _) = self.command(run, idx, &cmd, Stdout::Log, &ok).await?;
            if i == last && plan.drift_exit_code.is_some() {
                drift = Some(Some(code) == plan.drift_exit_code);
            }
        }
        let summary = match drift {
            Some(true) => "Drift detected: the stack's resources differ from its program.".into(),
            Some(false) => "No drift detected.".into(),
            None => format!("{} {} succeeded.", engine.binary(), run.d.operation),
        };
        Ok(Outcome { summary, drift })
    }

    async fn record_outputs(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<()> {
        let parsed = match engine {
            // With the backend Tarmac provides, the outputs are in the state file the engine has
            // just written: no need to start the engine again to print them.
            Engine::Terraform | Engine::Tofu if !engine::declares_backend(program_dir) => {
                let state = tokio::fs::read(self.state_dir(run.d).join("terraform.tfstate"))
                    .await
                    .unwrap_or_default();
                engine::parse_terraform_state_outputs(&state)
            }
            _ => {
                let env = self.engine_env(run, engine, program_dir).await?;
                let capture = |show: bool| CommandSpec {
                    program: engine.binary().into(),
                    args: engine::outputs_command(engine, show),
                    cwd: program_dir.to_path_buf(),
                    env: env.clone(),
                };
                let (_, shown) = self
                    .command(run, idx, &capture(true), Stdout::Capture, &[])
                    .await?;
                match engine {
                    Engine::Pulumi => {
                        let (_, masked) = self
                            .command(run, idx, &capture(false), Stdout::Capture, &[])
                            .await?;
                        engine::parse_pulumi_outputs(&shown, &masked)
                    }
                    _ => engine::parse_terraform_outputs(&shown),
                }
            }
        }
        .map_err(Failure::Failed)?;
        let mut outputs = serde_json::Map::new();
        let mut names = Vec::new();
        for (name, value, secret) in parsed {
            let stored = if secret {
                serde_json::json!({ "secret": self.deps.cipher.for_org(&run.d.stack.org).seal(&value.to_string()) })
            } else {
                serde_json::json!({ "value": value })
            };
            names.push(name.clone());
            outputs.insert(name, stored);
        }
        names.sort();
        self.deps
            .runs
            .record_outputs(run.d.id, run.lease, &serde_json::Value::Object(outputs))
            .await
            .map_err(|e| Failure::Failed(format!("could not store outputs: {e}")))?;
        let listed = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        run.log
            .line(idx, &format!("Recorded {} outputs: {listed}", names.len()))
            .await;
        Ok(())
    }
}

fn step_name(run: &Run<'_>, idx: usize) -> String {
    run.steps
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(idx)
        .cloned()
        .unwrap_or_default()
}

fn default_shell() -> String {
    if Path::new("/bin/bash").exists() {
        "/bin/bash".into()
    } else {
        "/bin/sh".into()
    }
}

fn display_cmd(spec: &CommandSpec) -> String {
    std::iter::once(spec.program.as_str())
        .chain(spec.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}
