//! What a deployment runs, typed: its source, pre-run commands, environment, options and OIDC
//! settings, read once from the effective settings and validated there.
//!
//! A deployment stores its effective settings (canonical JSON, secrets sealed, as
//! `crate::settings` makes them). `DeploymentConfig` is the one way to read them: it keeps the
//! JSON for storage and for the wire, and the `RunSpec` parsed from it when it is created or
//! read back, so nothing downstream parses or validates settings again.

pub mod oidc;
pub mod secrets;
pub mod source;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Engine;
use crate::error::{Error, Result};
use oidc::OidcSpec;
use source::{GitAuth, GitSource, validate_repo_url};
pub use source::{LocalRepos, local_path};

/// An environment variable's value as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret {
        secret: String,
    },
    /// Read from a secret store when the run starts.
    Reference(secrets::SecretRef),
}

/// The GitHub event a deployment came from, kept in its configuration under `trigger`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitHubTrigger {
    /// Always `github`.
    pub provider: String,
    pub event: String,
    pub delivery: String,
    pub repository: String,
    pub commit: String,
    pub pull_request: Option<i64>,
    /// The App installation id, if an App delivered the event.
    #[serde(default)]
    pub installation: Option<i64>,
}

/// How a deployment came from another through `pulumi_deployments` hooks: the deployment
/// that started it, and the chain of stacks that led here, oldest first (kept so that a chain
/// never comes back to a stack it passed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    pub deployment: uuid::Uuid,
    pub stacks: Vec<String>,
}

/// The longest a run may be given: a week.
pub const MAX_TIMEOUT_SECS: i64 = 7 * 86_400;

/// What a run needs from the effective settings, typed and validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSpec {
    pub source: GitSource,
    pub pre_run_commands: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    pub shell: Option<String>,
    pub skip_intermediate: bool,
    pub delete_after_destroy: bool,
    pub remediate_if_drift_detected: bool,
    pub timeout_secs: Option<u64>,
    pub engine: Option<Engine>,
    /// `operationContext.oidc`: when set, the run gets a token and cloud credentials.
    pub oidc: Option<OidcSpec>,
    /// Set when GitHub triggered the deployment.
    pub trigger: Option<GitHubTrigger>,
    /// Set when another stack's deployment started it through a hook.
    pub upstream: Option<Upstream>,
    /// `agentPoolID`: the pool whose agents run it; `None` for the built-in workers.
    pub agent_pool: Option<String>,
    /// `approvals` (a Tarmac extension): the operations that wait for approval.
    pub approvals: Option<super::approvals::ApprovalRule>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawSettings {
    source_context: RawSource,
    git_hub: RawGitHub,
    operation_context: RawOperation,
    trigger: Option<GitHubTrigger>,
    upstream: Option<Upstream>,
    #[serde(rename = "agentPoolID")]
    agent_pool_id: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawSource {
    git: RawGit,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawGit {
    repo_url: Option<String>,
    branch: Option<String>,
    repo_dir: Option<String>,
    commit: Option<String>,
    tag: Option<String>,
    git_auth: Option<GitAuth>,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawGitHub {
    repository: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawOperation {
    pre_run_commands: Vec<String>,
    environment_variables: BTreeMap<String, EnvValue>,
    options: RawOptions,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawOptions {
    skip_intermediate_deployments: bool,
    delete_after_destroy: bool,
    remediate_if_drift_detected: bool,
    shell: Option<String>,
    timeout: Option<i64>,
    engine: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// Which repository URLs a parse accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePolicy<'a> {
    /// Remote URLs, and the local repositories the server allows.
    Server(&'a LocalRepos),
    /// Whatever was accepted when the deployment was created (reading it back from storage);
    /// the clone itself is still limited to the server's protocols.
    Stored,
}

impl RunSpec {
    /// Reads canonical effective settings. Refuses settings a run could not start from.
    pub fn parse(config: &Value, policy: SourcePolicy<'_>) -> Result<Self> {
        let oidc = checked(config)?;
        let raw: RawSettings = serde_json::from_value(config.clone())
            .map_err(|e| Error::invalid(format!("invalid settings: {e}")))?;
        let git = raw.source_context.git;
        // As the deploy-demos client expects, a GitHub repository stands in for a clone URL.
        let repo_url = match (non_empty(git.repo_url), non_empty(raw.git_hub.repository)) {
            (Some(url), _) => url,
            (None, Some(repo)) => format!("https://github.com/{repo}.git"),
            (None, None) => {
                return Err(Error::invalid(
                    "no source to deploy: set sourceContext.git.repoUrl (or gitHub.repository) in the request or the stack's settings",
                ));
            }
        };
        if let SourcePolicy::Server(local) = policy {
            validate_repo_url(&repo_url, local)?;
        }
        let options = raw.operation_context.options;
        Ok(Self {
            source: GitSource {
                repo_url,
                branch: non_empty(git.branch),
                commit: non_empty(git.commit),
                tag: non_empty(git.tag),
                repo_dir: non_empty(git.repo_dir),
                auth: git.git_auth,
            },
            pre_run_commands: raw.operation_context.pre_run_commands,
            env: raw
                .operation_context
                .environment_variables
                .into_iter()
                .collect(),
            shell: non_empty(options.shell),
            skip_intermediate: options.skip_intermediate_deployments,
            delete_after_destroy: options.delete_after_destroy,
            remediate_if_drift_detected: options.remediate_if_drift_detected,
            timeout_secs: options.timeout.map(|t| t as u64),
            engine: non_empty(options.engine).map(|e| e.parse()).transpose()?,
            oidc,
            trigger: raw.trigger,
            upstream: raw.upstream,
            agent_pool: non_empty(raw.agent_pool_id),
            approvals: super::approvals::ApprovalRule::from_settings(config)?,
        })
    }
}

/// Refuses settings no run could use, whether or not they are complete (a stack's stored
/// settings need not name a source): bad OIDC options, globs, engine, timeout or repoDir.
pub fn check_settings(settings: &Value) -> Result<()> {
    checked(settings).map(|_| ())
}

/// `check_settings`, returning the OIDC settings it read.
fn checked(settings: &Value) -> Result<Option<OidcSpec>> {
    let oidc = OidcSpec::from_config(settings)?;
    check_globs(settings)?;
    let git = &settings["sourceContext"]["git"];
    if let Some(dir) = git["repoDir"].as_str().filter(|d| !d.trim().is_empty()) {
        let p = std::path::Path::new(dir);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::invalid(format!(
                "sourceContext.git.repoDir '{dir}' must be a relative path inside the repository"
            )));
        }
    }
    // Git takes these as arguments: a commit is a commit id, and no ref looks like an option.
    if let Some(c) = git["commit"].as_str().filter(|c| !c.trim().is_empty())
        && (!(4..=64).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::invalid(format!(
            "sourceContext.git.commit '{c}' is not a commit id (4 to 64 hexadecimal digits)"
        )));
    }
    for key in ["branch", "tag"] {
        if let Some(r) = git[key]
            .as_str()
            .filter(|r| r.starts_with('-') || r.contains(['\0', '\n', ' ']))
        {
            return Err(Error::invalid(format!(
                "sourceContext.git.{key} '{}' is not a git ref name",
                r.escape_debug()
            )));
        }
    }
    if let Some(pool) = settings["agentPoolID"]
        .as_str()
        .filter(|p| !p.trim().is_empty())
        && super::pools::parse_pool_id(pool).is_none()
    {
        return Err(Error::invalid(format!(
            "agentPoolID '{pool}' is not an agent pool id (a UUID from /api/orgs/{{org}}/agent-pools)"
        )));
    }
    super::approvals::ApprovalRule::from_settings(settings)?;
    let options = &settings["operationContext"]["options"];
    if let Some(t) = options["timeout"].as_i64()
        && !(t > 0 && t <= MAX_TIMEOUT_SECS)
    {
        return Err(Error::invalid(format!(
            "operationContext.options.timeout must be between 1 and {MAX_TIMEOUT_SECS} seconds, not {t}"
        )));
    }
    if let Some(e) = options["engine"].as_str().filter(|e| !e.trim().is_empty()) {
        e.parse::<Engine>().map_err(|_| {
            Error::invalid(format!(
                "operationContext.options.engine '{e}' is not one of pulumi, terraform, tofu"
            ))
        })?;
    }
    Ok(oidc)
}

/// Refuses `gitHub`/`vcs` `paths` and `tagFilters` that are not globs (a leading `!` excludes).
pub fn check_globs(settings: &Value) -> Result<()> {
    for key in ["paths", "tagFilters"] {
        for section in ["gitHub", "vcs"] {
            if let Some(list) = settings[section][key].as_array() {
                for p in list.iter().filter_map(Value::as_str) {
                    let pattern = p.strip_prefix('!').unwrap_or(p);
                    globset::Glob::new(pattern).map_err(|e| {
                        Error::invalid(format!("{section}.{key}: '{p}' is not a glob: {e}"))
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// A deployment's configuration: its effective settings as stored and the run spec read from
/// them. It is stored and serialised as the settings JSON, and every read of it parses the
/// spec once, here.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentConfig {
    settings: Value,
    spec: RunSpec,
}

impl DeploymentConfig {
    /// Validates effective settings under `policy`.
    pub fn parse(settings: Value, policy: SourcePolicy<'_>) -> Result<Self> {
        let spec = RunSpec::parse(&settings, policy)?;
        Ok(Self { settings, spec })
    }

    /// The canonical settings JSON (secrets sealed).
    pub fn settings(&self) -> &Value {
        &self.settings
    }

    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    /// Records the deployment (and chain) that started this one through a hook.
    pub fn with_upstream(mut self, upstream: Upstream) -> Result<Self> {
        self.settings["upstream"] = serde_json::to_value(&upstream)?;
        self.spec.upstream = Some(upstream);
        Ok(self)
    }

    /// Records the GitHub event that asked for this deployment.
    pub fn with_trigger(mut self, trigger: GitHubTrigger) -> Result<Self> {
        self.settings["trigger"] = serde_json::to_value(&trigger)?;
        self.spec.trigger = Some(trigger);
        Ok(self)
    }
}

impl Serialize for DeploymentConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.settings.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DeploymentConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let settings = Value::deserialize(d)?;
        Self::parse(settings, SourcePolicy::Stored).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SERVER: SourcePolicy<'static> = SourcePolicy::Server(&LocalRepos::Denied);

    #[test]
    fn run_spec_needs_a_source_and_a_safe_repo_dir() {
        let err = RunSpec::parse(&json!({}), SERVER).unwrap_err().to_string();
        assert!(err.contains("no source to deploy"));
        let spec = RunSpec::parse(&json!({"gitHub": {"repository": "o/r"}}), SERVER).unwrap();
        assert_eq!(spec.source.repo_url, "https://github.com/o/r.git");
        let err = RunSpec::parse(
            &json!({"sourceContext":{"git":{"repoUrl":"https://h/r","repoDir":"../x"}}}),
            SERVER,
        )
        .unwrap_err();
        assert!(err.to_string().contains("relative path"));
    }

    #[test]
    fn local_repositories_depend_on_the_policy_and_stored_configs_read_back() {
        let local = json!({"sourceContext":{"git":{"repoUrl":"file:///srv/r"}}});
        let err = RunSpec::parse(&local, SERVER).unwrap_err().to_string();
        assert!(err.contains("--allow-local-repos"), "{err}");
        let allowed = SourcePolicy::Server(&LocalRepos::Any);
        let config = DeploymentConfig::parse(local.clone(), allowed).unwrap();
        let stored = serde_json::to_string(&config).unwrap();
        let back: DeploymentConfig = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.settings(), &local);
    }

    #[test]
    fn options_are_typed_and_checked() {
        let config = json!({"sourceContext":{"git":{"repoUrl":"https://h/r"}},
            "operationContext":{"options":{"engine":"tofu","timeout":60,"deleteAfterDestroy":true}}});
        let spec = RunSpec::parse(&config, SERVER).unwrap();
        assert_eq!(spec.engine, Some(Engine::Tofu));
        assert_eq!(spec.timeout_secs, Some(60));
        assert!(spec.delete_after_destroy && !spec.remediate_if_drift_detected);
        for (options, want) in [
            (json!({"engine": "ansible"}), "is not one of pulumi"),
            (json!({"timeout": 0}), "between 1 and"),
        ] {
            let mut c = config.clone();
            c["operationContext"]["options"] = options;
            let err = RunSpec::parse(&c, SERVER).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
