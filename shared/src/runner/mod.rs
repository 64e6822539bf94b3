//! Running one claimed deployment: source, pre-run commands, engine, outputs, each a step with
//! its own status and logs, under a lease that is renewed while the run lasts.
//!
//! The same runner serves every backend; it only talks to the `RunStore` port.

mod credentials;
pub(crate) mod engine;
mod events;
pub(crate) mod exec;
mod files;
pub(crate) mod git;
pub(crate) mod logs;
mod source;
mod state;
#[cfg(test)]
mod tests;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::deps::Deps;
use crate::domain::hooks::Event;
use crate::domain::spec::{EnvValue, RunSpec};
use crate::domain::updates::{UpdateKind, UpdateOutcome, UpdateResult};
use crate::domain::{Deployment, JobStatus, Lease, Operation, StepStatus};
use crate::ports::{Claimed, DriftRun};
use crate::sandbox::Sandbox;
use engine::Engine;
use events::EventStream;
use exec::{CommandSpec, Exit, Stdout};
use logs::{Masker, RunLog};
use watch::StopReason;

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
    /// Confines every child process.
    pub sandbox: Arc<Sandbox>,
}

pub struct Runner {
    deps: Arc<Deps>,
    cfg: RunnerConfig,
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

    /// The sandbox every child of every run is started in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.cfg.sandbox
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
        if status == JobStatus::Succeeded && d.operation == Operation::Update {
            match crate::tags::arm(&self.deps, &d.stack, time::OffsetDateTime::now_utc()).await {
                Ok(Some(due)) => {
                    let due = crate::domain::time_fmt::rfc3339(due);
                    log.line(
                        last_step,
                        &format!("The stack's ttl tag schedules its destroy for {due}."),
                    )
                    .await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e.chain(), "could not arm the stack's ttl");
                    log.line(
                        last_step,
                        "The stack's ttl tag could not schedule its destroy; see the server's log.",
                    )
                    .await;
                }
            }
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
        // Each command may write in the run's directory and its stack's state, nowhere else.
        let state = self.state_dir(run.d);
        let read_only: Vec<&Path> = spec.read_only.iter().map(PathBuf::as_path).collect();
        let launch = self
            .cfg
            .sandbox
            .launch(
                &spec.program,
                &spec.args,
                &spec.env,
                &[&run.workdir, &state],
                &read_only,
            )
            .await
            .map_err(Failure::Failed)?;
        let out = exec::run(
            spec,
            &launch,
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
            let cmd = CommandSpec::new(
                shell,
                vec!["-c".into(), command.clone()],
                program_dir.clone(),
                run.env(),
            );
            let result = self
                .command(run, idx, &cmd, Stdout::Log, &[])
                .await
                .map(|_| ());
            self.end(run, idx, result).await?;
        }

        let engine = engine::detect(&program_dir, spec.engine, &self.cfg.path_env)
            .map_err(Failure::Failed)?;
        if let Some(why) = engine::missing_engine(engine, &self.cfg.path_env) {
            return Err(Failure::Failed(why));
        }
        let op = run.d.operation;
        // Pulumi clients follow a deployment's engine events from the step whose header is
        // exactly `pulumi <operation>`, and look for its update as soon as they see it: the
        // update exists first, and the step has that name whatever the engine (its first line
        // names the engine's own command).
        self.deps
            .runs
            .start_update(run.d.id, run.lease, UpdateKind::of(op))
            .await
            .map_err(|e| Failure::Failed(format!("could not record the update: {e}")))?;
        let idx = self.begin(run, &engine_step_name(op)).await?;
        let result = self.engine_step(run, idx, engine, &program_dir).await;
        let outcome = self.end(run, idx, result).await?;

        if engine::records_outputs(op) {
            let idx = self.begin(run, "Record outputs").await?;
            let result = self.record_outputs(run, idx, engine, &program_dir).await;
            self.end(run, idx, result).await?;
        }
        Ok(outcome)
    }

    /// The engine's environment: the run's, plus what keeps the stack's state in its state
    /// directory (the run's own variables of the same name win).
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
        let stack = &run.d.stack;
        let setup = engine::state_setup(engine, program_dir, &state, || {
            self.deps
                .cipher
                .derive(&format!("pulumi-passphrase:{stack}"))
        });
        for (path, text) in setup.files {
            files::write_new(&path, text.as_bytes())
                .map_err(|e| Failure::Failed(format!("cannot write {}: {e}", path.display())))?;
        }
        let mut env = run.env();
        for (k, v) in setup.env {
            if !env.iter().any(|(name, _)| *name == k) {
                env.push((k, v));
            }
        }
        Ok(env)
    }

    /// The engine step: the operation between its update's first and last events, then the
    /// update's end (its result, changes and the resources the state holds).
    async fn engine_step(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<Outcome> {
        let stack = &run.d.stack;
        let kind = UpdateKind::of(run.d.operation);
        let events: Events = Arc::new(Mutex::new(EventStream::new(
            &stack.project,
            &stack.stack,
            kind == UpdateKind::Preview,
        )));
        let prelude = lock(&events).prelude();
        run.log.event(idx, prelude).await;
        let result = self
            .engine_with_state(run, idx, engine, program_dir, &events)
            .await;
        let (update_result, summary) = match &result {
            Ok(_) => (UpdateResult::Succeeded, "succeeded"),
            Err(Failure::Stopped) => (UpdateResult::Failed, "canceled"),
            Err(Failure::Failed(_)) => (UpdateResult::Failed, "failed"),
        };
        let closing = lock(&events).finish(summary);
        for e in closing {
            run.log.event(idx, e).await;
        }
        // Every event is stored before the update is seen to end.
        run.log.flush().await;
        let outcome = UpdateOutcome {
            result: update_result,
            resource_changes: lock(&events).changes().clone(),
            resource_count: engine::resource_count(engine, program_dir, &self.state_dir(run.d)),
        };
        if let Err(e) = self
            .deps
            .runs
            .finish_update(run.d.id, run.lease, &outcome)
            .await
        {
            tracing::warn!(error = %e.chain(), "could not record the update's end");
        }
        result
    }

    async fn engine_operation(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
        events: &Events,
    ) -> StepResult<Outcome> {
        let env = self.engine_env(run, engine, program_dir).await?;
        let plan = engine::plan(engine, run.d.operation, &run.d.stack.stack);
        let last = plan.commands.len() - 1;
        let mut drift = None;
        for (i, mut args) in plan.commands.into_iter().enumerate() {
            let main = i == last;
            let event_log = run.workdir.join("engine-events.jsonl");
            if main && plan.events == engine::EventSource::EventLog {
                args.extend([
                    engine::EVENT_LOG_FLAG.to_string(),
                    event_log.display().to_string(),
                ]);
            }
            let cmd = CommandSpec::new(
                engine.binary(),
                args,
                program_dir.to_path_buf(),
                env.clone(),
            );
            run.log.line(idx, &format!("$ {}", display_cmd(&cmd))).await;
            let ok: Vec<i32> = if main {
                plan.drift_exit_code.into_iter().collect()
            } else {
                vec![]
            };
            let mode = match plan.events {
                engine::EventSource::JsonStdout if main => {
                    Stdout::TerraformJson(Arc::clone(events))
                }
                _ => Stdout::Log,
            };
            let tail = (main && plan.events == engine::EventSource::EventLog).then(|| {
                let done = CancellationToken::new();
                let task = tokio::spawn(events::tail_event_log(
                    event_log.clone(),
                    run.log.clone(),
                    idx,
                    Arc::clone(events),
                    done.clone(),
                ));
                (done, task)
            });
            let result = self.command(run, idx, &cmd, mode, &ok).await;
            if let Some((done, task)) = tail {
                done.cancel();
                let _ = task.await;
            }
            let (code, _) = result?;
            if main && plan.drift_exit_code.is_some() {
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
        let source = engine::outputs_source(engine, program_dir, &self.state_dir(run.d));
        let parsed = match &source {
            engine::OutputsSource::StateFile(path) => {
                // No state yet means no outputs.
                let state = files::read(path).unwrap_or_default();
                engine::parse_outputs(&source, &state, None)
            }
            engine::OutputsSource::Commands { shown, masked } => {
                let env = self.engine_env(run, engine, program_dir).await?;
                let capture = |args: &Vec<String>| {
                    CommandSpec::new(
                        engine.binary(),
                        args.clone(),
                        program_dir.to_path_buf(),
                        env.clone(),
                    )
                };
                let (_, shown) = self
                    .command(run, idx, &capture(shown), Stdout::Capture, &[])
                    .await?;
                let masked = match masked {
                    Some(args) => Some(
                        self.command(run, idx, &capture(args), Stdout::Capture, &[])
                            .await?
                            .1,
                    ),
                    None => None,
                };
                engine::parse_outputs(&source, &shown, masked.as_deref())
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

/// The name of a deployment's engine step, which Pulumi clients look for in its log.
fn engine_step_name(op: Operation) -> String {
    format!("pulumi {op}")
}

/// The update's events, shared by the command that makes them and the step that closes them.
type Events = Arc<Mutex<EventStream>>;

fn lock(events: &Events) -> std::sync::MutexGuard<'_, EventStream> {
    events.lock().unwrap_or_else(|p| p.into_inner())
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
