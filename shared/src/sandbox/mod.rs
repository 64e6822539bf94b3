//! The sandbox of deployments' processes: what each may read, write, signal and connect to, its
//! resource limits and capabilities; and the server's own memory, environment and descriptors
//! kept out of their reach.
//!
//! The server never confines itself. It starts each child through a helper, this same
//! executable run as `<exe> __tarmac-sandbox [OPTIONS] -- PROGRAM ARGS...` (see [`helper`]),
//! which confines itself and then executes the program: the workspace forbids `unsafe`, which
//! rules out `pre_exec`, and an exec makes every limit hold from the program's first
//! instruction, for everything it starts.
//!
//! | | `required` | `best-effort` | `off` |
//! |---|---|---|---|
//! | server non-dumpable (no `/proc/<pid>/environ`, `mem`, `fd` of it; no core dump) | yes | yes | yes |
//! | no descriptor of the server inherited | yes | yes | std's close-on-exec only |
//! | clean environment, loader variables kept from the helper | yes | yes | the clean environment only |
//! | rlimits: no core dumps, open files, processes | yes | yes | no |
//! | `no_new_privs`; capabilities dropped (root) | yes | yes | no |
//! | Landlock: files only in the run's directories and read-only system, `PATH` and engine directories | yes (ABI 3 or later, which refuses `truncate`), or the server does not start | if the kernel has it | no |
//! | Landlock ABI 6 scopes: no signal to, no abstract socket of, a process outside the run | if the kernel has them | if the kernel has them | no |

mod helper;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
pub use helper::trampoline;

/// How strictly runs are confined (`--sandbox`, `TARMAC_SANDBOX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Every run is confined with Landlock; a server whose kernel cannot do it does not start.
    #[default]
    Required,
    /// Whatever this kernel supports is applied, and what it does not is logged once.
    BestEffort,
    /// Children are started directly, with a clean environment and nothing else.
    Off,
}

impl FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "required" => Ok(Self::Required),
            "best-effort" => Ok(Self::BestEffort),
            "off" => Ok(Self::Off),
            _ => Err(format!(
                "the sandbox mode must be required, best-effort or off, not '{s}'"
            )),
        }
    }
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Required => "required",
            Self::BestEffort => "best-effort",
            Self::Off => "off",
        })
    }
}

/// The sandbox as configured.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// More directories runs may read and execute from (`--sandbox-ro`).
    pub read_only: Vec<PathBuf>,
    /// Directories runs may also write (`--sandbox-rw`), e.g. a shared provider cache.
    pub read_write: Vec<PathBuf>,
    /// The executable that starts children in their sandbox. By default this process's own,
    /// which works when its `main` calls [`trampoline`] first; a process whose `main` does not
    /// (a test harness) names a Tarmac binary here.
    pub helper: Option<PathBuf>,
}

/// Makes this process non-dumpable: its children (same user, no `CAP_SYS_PTRACE`) cannot read
/// its memory, `/proc/<pid>/environ` or `/proc/<pid>/fd`, nor attach to it, and it leaves no core
/// dump. Every process that runs deployments does this before its first run; it does no harm to
/// one that does not.
pub fn harden_self() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not make this process non-dumpable; its children could read its environment");
    }
}

/// How much of Landlock a kernel enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enforcement {
    /// Everything asked for.
    Full,
    /// An older ABI: files, but not every right or scope.
    Partial,
    /// No Landlock.
    None,
}

/// What the helper could apply on this machine, as its probe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub landlock: Enforcement,
    /// The kernel's Landlock ABI (0: none).
    pub abi: u32,
    /// Signals and abstract Unix sockets are scoped to the run (ABI 6).
    pub scoped: bool,
    pub no_new_privs: bool,
    pub capabilities_dropped: bool,
}

impl Report {
    fn line(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let landlock = match self.landlock {
            Enforcement::Full => "full",
            Enforcement::Partial => "partial",
            Enforcement::None => "none",
        };
        format!(
            "landlock={landlock} abi={} scoped={} no_new_privs={} capabilities_dropped={}",
            self.abi,
            yes(self.scoped),
            yes(self.no_new_privs),
            yes(self.capabilities_dropped)
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut r = Report {
            landlock: Enforcement::None,
            abi: 0,
            scoped: false,
            no_new_privs: false,
            capabilities_dropped: false,
        };
        let mut seen = 0;
        for word in line.split_whitespace() {
            let (k, v) = word.split_once('=')?;
            let yes = v == "yes";
            match k {
                "landlock" => {
                    r.landlock = match v {
                        "full" => Enforcement::Full,
                        "partial" => Enforcement::Partial,
                        _ => Enforcement::None,
                    }
                }
                "abi" => r.abi = v.parse().ok()?,
                "scoped" => r.scoped = yes,
                "no_new_privs" => r.no_new_privs = yes,
                "capabilities_dropped" => r.capabilities_dropped = yes,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 5).then_some(r)
    }

    /// What this report leaves unprotected, for the log; empty when nothing.
    fn gaps(&self) -> Vec<&'static str> {
        let mut gaps = vec![];
        match self.landlock {
            Enforcement::None => gaps.push(
                "no Landlock on this kernel: runs can read and write whatever this OS user can (other runs' directories, other stacks' state)",
            ),
            Enforcement::Partial if self.abi < MIN_REQUIRED_ABI => gaps.push(
                "a Landlock ABI before 3: runs can truncate files they may not otherwise touch (the data dir's key and database)",
            ),
            Enforcement::Partial => gaps.push("an older Landlock ABI: some file rights are not enforced"),
            Enforcement::Full => {}
        }
        if !self.scoped {
            gaps.push("no Landlock scopes (ABI 6): runs can signal this server's processes and connect to their abstract Unix sockets");
        }
        if !self.no_new_privs {
            gaps.push("no_new_privs could not be set");
        }
        if !self.capabilities_dropped {
            gaps.push("capabilities could not be dropped");
        }
        gaps
    }
}

/// A child as it is to be started: the helper and its options, or the program itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

/// The sandbox of one server: its mode, the directories every run may use, and (once probed)
/// what this machine can enforce.
#[derive(Debug)]
pub struct Sandbox {
    mode: SandboxMode,
    /// The helpers to try, in order: the small `tarmac-sandbox` beside this executable, then
    /// this executable itself. The probe picks the first that answers.
    helpers: Vec<PathBuf>,
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
    /// What no run may see: the data dir, or every run's and stack's directories.
    protected: Vec<PathBuf>,
    probed: OnceCell<std::result::Result<Option<Probed>, String>>,
}

/// The helper that answered the probe, and what it said.
#[derive(Debug)]
struct Probed {
    helper: PathBuf,
    report: Report,
}

/// The helper alone, built beside `tarmac` (`src/bin/tarmac-sandbox.rs`): a child started
/// through it maps a small executable, not the whole server.
const SMALL_HELPER: &str = "tarmac-sandbox";

/// System directories every run reads: programs, libraries, `/proc` and `/sys`. `/etc`, `/dev`
/// and `/run` only in part (see `SYSTEM_FILES`): as root, a run could read `/etc/shadow`, SSH
/// host keys or a raw disk there.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sys",
];

/// What programs read in `/etc`; a symlink's target is added too. Others by `--sandbox-ro`.
const SYSTEM_FILES: &[&str] = &[
    "/etc/alternatives",
    "/etc/alpine-release",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/crypto-policies",
    "/etc/debian_version",
    "/etc/gai.conf",
    "/etc/gitconfig",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/inputrc",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/lsb-release",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/pki/ca-trust",
    "/etc/pki/tls/cert.pem",
    "/etc/pki/tls/certs",
    "/etc/pki/tls/openssl.cnf",
    "/etc/protocols",
    "/etc/redhat-release",
    "/etc/resolv.conf",
    "/etc/services",
    "/etc/ssh/ssh_config",
    "/etc/ssh/ssh_config.d",
    "/etc/ssh/ssh_known_hosts",
    "/etc/ssh/ssh_known_hosts2",
    "/etc/ssl/cert.pem",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/system-release",
    "/etc/terminfo",
    "/etc/timezone",
];

/// Devices runs may open, read and write; no other (a raw disk is readable by root).
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A path as the kernel will see it: symlinks resolved when it exists.
fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Where a program is installed: the directory above its `bin/`, or its own directory.
fn install_dirs(bin: &Path) -> Vec<PathBuf> {
    let Some(dir) = bin.parent() else {
        return vec![];
    };
    let mut out = vec![];
    if dir.file_name().is_some_and(|n| n == "bin")
        && let Some(prefix) = dir.parent()
    {
        out.push(prefix.to_path_buf());
    }
    out.push(dir.to_path_buf());
    out
}

/// A script's interpreter (`#!/path/python`, or `#!/usr/bin/env python` looked up on `path_env`).
fn interpreter(script: &Path, path_env: &str) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let first = head[..n].split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first.strip_prefix(b"#!")?).ok()?;
    let mut words = line.split_whitespace();
    let program = PathBuf::from(words.next()?);
    if program.file_name().is_some_and(|n| n == "env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        return std::env::split_paths(path_env)
            .map(|d| d.join(name))
            .find(|p| p.is_file());
    }
    Some(program)
}

impl Sandbox {
    /// The sandbox of a server whose runs' `PATH` is `path_env` and whose engines and git were
    /// found at `tools`; `protected` is what no run may see (the data dir, or the roots of the
    /// runs' and stacks' directories). Makes this process non-dumpable.
    ///
    /// Fails when an extra directory (`--sandbox-ro`, `--sandbox-rw`) or a system directory
    /// overlaps a protected one. A `PATH` or engine directory that does is left out, with a
    /// warning. Probes nothing yet: see [`Sandbox::ready`].
    pub fn new(
        cfg: &SandboxConfig,
        path_env: &str,
        tools: &[PathBuf],
        protected: &[PathBuf],
    ) -> Result<Self> {
        harden_self();
        if cfg.mode == SandboxMode::Off {
            return Ok(Self::off());
        }
        let protected: Vec<PathBuf> = protected
            .iter()
            .flat_map(|p| [p.clone(), real(p)])
            .collect();
        let clash = |p: &Path| {
            protected
                .iter()
                .find(|q| overlaps(p, q) || overlaps(&real(p), q))
                .cloned()
        };

        let mut read_only: Vec<PathBuf> = vec![];
        for dir in SYSTEM_DIRS {
            let dir = Path::new(dir);
            if let Some(q) = clash(dir) {
                return Err(Error::invalid(format!(
                    "{} is inside {}, which every run reads: move it elsewhere (e.g. under /var/lib)",
                    q.display(),
                    dir.display()
                )));
            }
            read_only.push(dir.to_path_buf());
        }
        let mut derived: Vec<PathBuf> = vec![];
        for file in SYSTEM_FILES {
            let file = Path::new(file);
            derived.push(file.to_path_buf());
            let target = real(file);
            if target != file {
                derived.push(target);
            }
        }
        for dir in std::env::split_paths(path_env).filter(|d| d.is_absolute()) {
            derived.push(dir);
        }
        // An engine may be a symlink into its install tree, or a script whose interpreter lives
        // elsewhere (a virtualenv's Python, say): each needs its install directory.
        for tool in tools {
            let mut programs = vec![tool.clone(), real(tool)];
            if let Some(i) = interpreter(tool, path_env) {
                programs.push(real(&i));
                programs.push(i);
            }
            for program in programs {
                match install_dirs(&program)
                    .into_iter()
                    .find(|d| d.parent().is_some() && clash(d).is_none())
                {
                    Some(d) => derived.push(d),
                    None => {
                        tracing::warn!(program = %program.display(), "the sandbox cannot give runs this program's directory: it holds the data dir")
                    }
                }
            }
        }
        for dir in derived {
            if dir.parent().is_none() {
                continue;
            }
            match clash(&dir) {
                None => read_only.push(dir),
                Some(q) => tracing::warn!(
                    dir = %dir.display(),
                    protected = %q.display(),
                    "runs cannot read this directory under the sandbox: it overlaps what they may not see"
                ),
            }
        }
        let extra = |paths: &[PathBuf], flag: &str| -> Result<Vec<PathBuf>> {
            paths
                .iter()
                .map(|p| {
                    if !p.is_absolute() {
                        return Err(Error::invalid(format!(
                            "{flag} needs absolute paths, not {}",
                            p.display()
                        )));
                    }
                    if let Some(q) = clash(p) {
                        return Err(Error::invalid(format!(
                            "{flag} {} overlaps {}, which runs may not see",
                            p.display(),
                            q.display()
                        )));
                    }
                    Ok(p.clone())
                })
                .collect()
        };
        read_only.extend(extra(&cfg.read_only, "--sandbox-ro")?);
        let mut read_write: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
        read_write.extend(extra(&cfg.read_write, "--sandbox-rw")?);
        dedup(&mut read_only);
        dedup(&mut read_write);

        let helpers = match (&cfg.helper, cfg.mode) {
            (_, SandboxMode::Off) => vec![],
            (Some(h), _) => vec![h.clone()],
            (None, _) if helper::installed() => std::env::current_exe()
                .map(|exe| {
                    let small = exe.with_file_name(SMALL_HELPER);
                    let mut found: Vec<PathBuf> =
                        small.is_file().then_some(small).into_iter().collect();
                    found.push(exe);
                    found
                })
                .unwrap_or_default(),
            (None, _) => vec![],
        };
        Ok(Self {
            mode: cfg.mode,
            helpers,
            read_only,
            read_write,
            protected,
            probed: OnceCell::new(),
        })
    }

    /// A sandbox that starts children directly (`--sandbox off`).
    pub fn off() -> Self {
        Self {
            mode: SandboxMode::Off,
            helpers: vec![],
            read_only: vec![],
            read_write: vec![],
            protected: vec![],
            probed: OnceCell::new(),
        }
    }

    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// Runs the helper once to learn what this machine enforces, and says what it does not,
    /// once, in the log. In `required` mode, an error names what is missing: a server checks
    /// this before it takes work. Later calls answer the first one's result.
    pub async fn ready(&self) -> Result<()> {
        self.report().await.map(|_| ())
    }

    /// The probe's report; none when children are started directly.
    async fn report(&self) -> Result<Option<&Report>> {
        Ok(self.probed().await?.map(|p| &p.report))
    }

    async fn probed(&self) -> Result<Option<&Probed>> {
        match self.probed.get_or_init(|| self.probe()).await {
            Ok(probed) => Ok(probed.as_ref()),
            Err(e) => Err(Error::invalid(e.clone())),
        }
    }

    async fn probe(&self) -> std::result::Result<Option<Probed>, String> {
        if self.mode == SandboxMode::Off {
            tracing::warn!(
                "the sandbox is off: deployments' processes can read and write whatever this OS user can"
            );
            return Ok(None);
        }
        if self.helpers.is_empty() {
            let why = "this program cannot start the sandbox helper (its main does not call tarmac::sandbox::trampoline)";
            if self.mode == SandboxMode::Required {
                return Err(format!("--sandbox required: {why}"));
            }
            tracing::warn!("sandbox (best-effort): {why}; runs are started unconfined");
            return Ok(None);
        }
        let mut args: Vec<OsString> = vec![helper::HELPER_ARG.into(), "--best-effort".into()];
        for dir in &self.read_only {
            args.extend(["--ro".into(), dir.into()]);
        }
        args.push("--probe".into());
        let mut why = String::new();
        // A small helper left from another build that does not answer is passed over.
        for helper in &self.helpers {
            let out = tokio::process::Command::new(helper)
                .args(&args)
                .env_clear()
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await;
            let own = format!("helper={:016x}", helper::HELPER_ID);
            let report = match &out {
                Ok(o) if o.status.success() => {
                    let line = String::from_utf8_lossy(&o.stdout);
                    // Another build's helper may confine differently: not ours to use.
                    let same = line.split_whitespace().any(|w| w == own);
                    Report::parse(line.trim()).filter(|_| same)
                }
                _ => None,
            };
            if let Some(report) = report {
                decide(self.mode, &report)?;
                return Ok(Some(Probed {
                    helper: helper.clone(),
                    report,
                }));
            }
            let detail = match out {
                Ok(o) if o.status.success() => "it is another build's helper".to_string(),
                Ok(o) => format!(
                    "{}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => e.to_string(),
            };
            why = format!(
                "the sandbox helper {} did not answer its probe ({detail})",
                helper.display()
            );
        }
        if self.mode == SandboxMode::Required {
            return Err(format!("--sandbox required: {why}"));
        }
        tracing::warn!("sandbox (best-effort): {why}");
        Ok(None)
    }

    /// Whether a run may be given `path` (a local repository to clone, say): nothing that
    /// overlaps what runs may not see.
    pub(crate) fn may_grant(&self, path: &Path) -> bool {
        let real = real(path);
        !self
            .protected
            .iter()
            .any(|q| overlaps(path, q) || overlaps(&real, q))
    }

    /// How to start `program`: through the helper, allowed to write in `read_write` (the run's
    /// directory and its stack's state) and to read `read_only` beyond what every run reads;
    /// or directly, when the sandbox is off or cannot start. `env` is the child's whole
    /// environment.
    pub(crate) async fn launch(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        read_write: &[&Path],
        read_only: &[&Path],
    ) -> std::result::Result<Launch, String> {
        let direct = || Launch {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        };
        if self.mode == SandboxMode::Off {
            return Ok(direct());
        }
        // Best-effort without a working helper: the probe said so in the log, once.
        let Some(Probed { helper, .. }) = self.probed().await.map_err(|e| e.to_string())? else {
            return Ok(direct());
        };
        let mut hargs: Vec<OsString> = vec![helper::HELPER_ARG.into()];
        if self.mode == SandboxMode::BestEffort {
            hargs.push("--best-effort".into());
        }
        for dir in self
            .read_only
            .iter()
            .map(PathBuf::as_path)
            .chain(read_only.iter().copied())
        {
            hargs.extend(["--ro".into(), dir.into()]);
        }
        for dir in self
            .read_write
            .iter()
            .map(PathBuf::as_path)
            .chain(read_write.iter().copied())
        {
            hargs.extend(["--rw".into(), dir.into()]);
        }
        hargs.push("--".into());
        hargs.push(program.into());
        hargs.extend(args.iter().map(OsString::from));
        let env = env
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                (
                    OsString::from(format!("{}{i}", helper::ENV_PREFIX)),
                    OsString::from(format!("{k}={v}")),
                )
            })
            .collect();
        Ok(Launch {
            program: helper.into(),
            args: hargs,
            env,
        })
    }
}

/// The oldest Landlock ABI `required` accepts: 3 adds `truncate` to what it can refuse.
const MIN_REQUIRED_ABI: u32 = 3;

/// Whether a mode accepts what the probe found; logs what is missing.
fn decide(mode: SandboxMode, report: &Report) -> std::result::Result<(), String> {
    let gaps = report.gaps();
    if mode == SandboxMode::Required && report.landlock == Enforcement::None {
        return Err(format!(
            "--sandbox required, but this kernel cannot confine deployments: Landlock is not available \
             (it needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK and landlock in the lsm= boot list). \
             Start with --sandbox best-effort (TARMAC_SANDBOX=best-effort) to run deployments without it; see the README's Security section ({})",
            report.line()
        ));
    }
    // Before ABI 3 (Linux 6.2) Landlock cannot refuse `truncate`: a run could empty the data
    // dir's key or database through a path it may not otherwise touch.
    if mode == SandboxMode::Required && report.abi < MIN_REQUIRED_ABI {
        return Err(format!(
            "--sandbox required, but this kernel's Landlock (ABI {}) cannot stop a deployment from truncating files it may not write; \
             it needs ABI {MIN_REQUIRED_ABI} (Linux 6.2 or later). Start with --sandbox best-effort (TARMAC_SANDBOX=best-effort) to run deployments with what it has; \
             see the README's Security section",
            report.abi
        ));
    }
    if mode == SandboxMode::Required && !(report.no_new_privs && report.capabilities_dropped) {
        return Err(format!(
            "--sandbox required, but the sandbox could not be applied: {}",
            gaps.join("; ")
        ));
    }
    if gaps.is_empty() {
        tracing::info!(
            landlock_abi = report.abi,
            "sandbox: deployments are confined (Landlock files and scopes, no capabilities, resource limits)"
        );
    } else {
        tracing::warn!(mode = %mode, landlock_abi = report.abi, "sandbox: not applied on this machine: {}", gaps.join("; "));
    }
    Ok(())
}

fn dedup(paths: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [
            SandboxMode::Required,
            SandboxMode::BestEffort,
            SandboxMode::Off,
        ] {
            assert_eq!(m.to_string().parse::<SandboxMode>(), Ok(m));
        }
        assert!(
            "on".parse::<SandboxMode>()
                .unwrap_err()
                .contains("best-effort")
        );
    }

    #[test]
    fn reports_round_trip() {
        let r = Report {
            landlock: Enforcement::Partial,
            abi: 5,
            scoped: false,
            no_new_privs: true,
            capabilities_dropped: true,
        };
        assert_eq!(Report::parse(&r.line()), Some(r));
        assert_eq!(Report::parse("landlock=full"), None);
    }

    #[test]
    fn required_refuses_a_kernel_without_landlock_and_best_effort_runs_on() {
        let none = Report {
            landlock: Enforcement::None,
            abi: 0,
            scoped: false,
            no_new_privs: true,
            capabilities_dropped: true,
        };
        let err = decide(SandboxMode::Required, &none).unwrap_err();
        assert!(err.contains("Landlock is not available"), "{err}");
        assert!(err.contains("--sandbox best-effort"), "{err}");
        assert!(decide(SandboxMode::BestEffort, &none).is_ok());
        let partial = Report {
            landlock: Enforcement::Partial,
            abi: 4,
            ..none
        };
        assert!(decide(SandboxMode::Required, &partial).is_ok());
        // ABI 2 cannot refuse truncate: a run could empty the data dir's key.
        let old = Report { abi: 2, ..partial };
        let err = decide(SandboxMode::Required, &old).unwrap_err();
        assert!(err.contains("ABI 2") && err.contains("truncat"), "{err}");
        assert!(decide(SandboxMode::BestEffort, &old).is_ok());
    }

    #[test]
    fn nothing_overlapping_the_protected_dirs_is_granted() {
        let data = tempfile::tempdir().unwrap();
        let inside = data.path().join("bin");
        std::fs::create_dir_all(&inside).unwrap();
        let path_env = format!(
            "{}:/usr/bin:{}",
            inside.display(),
            data.path().parent().unwrap().display()
        );
        let cfg = SandboxConfig::default();
        let s = Sandbox::new(&cfg, &path_env, &[], &[data.path().to_path_buf()]).unwrap();
        assert!(s.read_only.contains(&PathBuf::from("/usr/bin")));
        assert!(
            !s.read_only.iter().any(|p| overlaps(p, data.path())),
            "{:?}",
            s.read_only
        );
        assert!(!s.read_only.contains(&PathBuf::from("/etc")));
        assert!(!s.read_only.contains(&PathBuf::from("/dev")));
        assert!(s.read_write.contains(&PathBuf::from("/dev/null")));
        assert!(!s.may_grant(data.path()));
        assert!(!s.may_grant(&data.path().join("work/x")));
        assert!(s.may_grant(Path::new("/srv/repo")));

        for cfg in [
            SandboxConfig {
                read_write: vec![data.path().join("state")],
                ..Default::default()
            },
            SandboxConfig {
                read_only: vec![data.path().parent().unwrap().to_path_buf()],
                ..Default::default()
            },
            SandboxConfig {
                read_only: vec!["relative".into()],
                ..Default::default()
            },
        ] {
            assert!(
                Sandbox::new(&cfg, "/usr/bin", &[], &[data.path().to_path_buf()]).is_err(),
                "{cfg:?}"
            );
        }
        let err = Sandbox::new(
            &SandboxConfig::default(),
            "",
            &[],
            &["/usr/local/tarmac".into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("inside /usr"), "{err}");
    }

    #[test]
    fn an_engine_script_brings_its_interpreters_install_dir() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv/bin");
        std::fs::create_dir_all(&venv).unwrap();
        std::fs::write(venv.join("python"), "").unwrap();
        let tools = dir.path().join("tools/bin");
        std::fs::create_dir_all(&tools).unwrap();
        let engine = tools.join("terraform");
        std::fs::write(
            &engine,
            format!("#!{}\nprint()\n", venv.join("python").display()),
        )
        .unwrap();
        let s = Sandbox::new(
            &SandboxConfig::default(),
            "/usr/bin",
            &[engine],
            &["/nonexistent/data".into()],
        )
        .unwrap();
        assert!(
            s.read_only.contains(&dir.path().join("venv")),
            "{:?}",
            s.read_only
        );
        assert!(
            s.read_only.contains(&dir.path().join("tools")),
            "{:?}",
            s.read_only
        );
    }

    #[tokio::test]
    async fn off_starts_programs_directly_with_their_environment() {
        let s = Sandbox::off();
        let l = s
            .launch(
                "git",
                &["status".into()],
                &[("A".into(), "1".into())],
                &[],
                &[],
            )
            .await
            .unwrap();
        assert_eq!(l.program, "git");
        assert_eq!(l.env, [("A".into(), "1".into())]);
    }

    #[tokio::test]
    async fn a_helper_from_another_build_is_passed_over() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let report = "landlock=full abi=6 scoped=yes no_new_privs=yes capabilities_dropped=yes";
        let fake = |name: &str, line: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\necho '{line}'\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        // An older build's helper answers without its code's fingerprint, or with another.
        let stale = fake("stale", report.to_string());
        let other = fake("other", format!("{report} helper=0000000000000000"));
        let ours = fake(
            "ours",
            format!("{report} helper={:016x}", helper::HELPER_ID),
        );
        let cfg = SandboxConfig {
            mode: SandboxMode::BestEffort,
            ..Default::default()
        };
        let s = Sandbox {
            helpers: vec![stale.clone(), other, ours.clone()],
            ..Sandbox::new(&cfg, "/usr/bin", &[], &["/nonexistent/data".into()]).unwrap()
        };
        assert_eq!(s.probed().await.unwrap().unwrap().helper, ours);
        let s = Sandbox {
            helpers: vec![stale],
            ..Sandbox::new(&cfg, "/usr/bin", &[], &["/nonexistent/data".into()]).unwrap()
        };
        assert!(
            s.probed().await.unwrap().is_none(),
            "best-effort runs unconfined"
        );
    }

    #[tokio::test]
    async fn through_the_helper_the_environment_is_encoded_and_the_program_follows_the_options() {
        let cfg = SandboxConfig {
            mode: SandboxMode::BestEffort,
            helper: Some("/nonexistent/tarmac".into()),
            ..Default::default()
        };
        let s = Sandbox::new(&cfg, "/usr/bin", &[], &["/nonexistent/data".into()]).unwrap();
        let l = s
            .launch(
                "sh",
                &["-c".into(), "echo hi".into()],
                &[("LD_PRELOAD".into(), "/x.so".into())],
                &[Path::new("/w")],
                &[],
            )
            .await
            .unwrap();
        // The helper could not be probed: best-effort starts the program directly.
        assert_eq!(l.program, "sh");

        let s = Sandbox {
            probed: OnceCell::new_with(Some(Ok(Some(Probed {
                helper: "/nonexistent/tarmac".into(),
                report: Report {
                    landlock: Enforcement::Full,
                    abi: 6,
                    scoped: true,
                    no_new_privs: true,
                    capabilities_dropped: true,
                },
            })))),
            ..Sandbox::new(&cfg, "/usr/bin", &[], &["/nonexistent/data".into()]).unwrap()
        };
        let l = s
            .launch(
                "sh",
                &["-c".into(), "echo hi".into()],
                &[("LD_PRELOAD".into(), "/x.so".into())],
                &[Path::new("/w")],
                &[],
            )
            .await
            .unwrap();
        assert_eq!(l.program, "/nonexistent/tarmac");
        assert_eq!(l.args[0], helper::HELPER_ARG);
        assert_eq!(l.args[1], "--best-effort");
        let dashes = l.args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            l.args[dashes + 1..],
            ["sh", "-c", "echo hi"].map(OsString::from)
        );
        assert!(l.args.windows(2).any(|w| w[0] == "--rw" && w[1] == "/w"));
        assert_eq!(
            l.env,
            [(
                OsString::from("TARMAC_SANDBOX_ENV_0"),
                OsString::from("LD_PRELOAD=/x.so")
            )]
        );
    }
}
