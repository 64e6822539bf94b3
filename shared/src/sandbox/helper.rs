//! The child side of the sandbox: this same executable, started as
//! `<exe> __tarmac-sandbox [OPTIONS] -- PROGRAM [ARGS]...`, confines itself and then becomes
//! the program, so every limit holds from the program's first instruction and for everything it
//! starts.
//!
//! In order: descriptors the server left open are closed; resource limits are lowered; the
//! Landlock ruleset is built (while the paths can still be opened); capabilities are dropped;
//! `no_new_privs` is set and the ruleset enforced; the program is executed with the run's own
//! environment, which reaches this process only encoded (see [`ENV_PREFIX`]), so that nothing a
//! run sets (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `GLIBC_TUNABLES`) acts on this process before it
//! is confined.
//!
//! Options are written by the server alone and parsed strictly: an unknown option is an error,
//! and everything after `--` is the program and its arguments, never read as options.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, LandlockStatus, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::{Enforcement, Report};

/// The first argument that makes an executable the sandbox helper.
pub(crate) const HELPER_ARG: &str = "__tarmac-sandbox";

/// This helper's code, as a fingerprint of its source: the probe reports it, and the server
/// uses only a helper whose code is its own (never a `tarmac-sandbox` left by another build).
pub(crate) const HELPER_ID: u64 = fnv1a(include_bytes!("helper.rs"));

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The run's environment reaches the helper as `TARMAC_SANDBOX_ENV_<n>=<NAME>=<value>`, and
/// nothing else: the dynamic loader and the C library act on none of these names.
pub(crate) const ENV_PREFIX: &str = "TARMAC_SANDBOX_ENV_";

/// The Landlock ABI whose rights and scopes this code asks for and is tested with (Linux 6.12:
/// every filesystem right up to device ioctls, plus signal and abstract-socket scoping). A
/// kernel with an older ABI gets what it supports (see `Enforcement`).
const ABI_USED: ABI = ABI::V6;

/// Most descriptors one process of a run may hold open.
pub(crate) const MAX_OPEN_FILES: u64 = 8192;
/// Most processes (and threads) the run's OS user may have. Linux counts every process of the
/// user, the server's own threads and other runs' included, and does not apply the limit to
/// root.
pub(crate) const MAX_PROCESSES: u64 = 4096;

/// Exit codes, as shells use them: the program could not be run, or was not found.
const CANNOT_RUN: i32 = 126;
const NOT_FOUND: i32 = 127;

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether this process's `main` called [`trampoline`], so its own executable can start
/// sandboxed children.
pub(crate) fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Call first thing in `main` of every binary that runs deployments, before any runtime or
/// thread starts. Started as the sandbox helper, it never returns: it confines itself and
/// executes the program it was given (or exits with 126/127 saying why it could not).
/// Otherwise it returns at once, and this executable can serve as the helper.
pub fn trampoline() {
    let mut args = std::env::args_os();
    let _exe = args.next();
    if args.next().as_deref() != Some(OsStr::new(HELPER_ARG)) {
        INSTALLED.store(true, Ordering::Relaxed);
        return;
    }
    let code = helper(args.collect());
    #[allow(
        clippy::exit,
        reason = "the helper is a process of its own and ends here"
    )]
    std::process::exit(code)
}

/// What the server asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    best_effort: bool,
    probe: bool,
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
    program: Option<OsString>,
    args: Vec<OsString>,
}

fn parse(args: Vec<OsString>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    let path = |flag: &str, v: Option<OsString>| -> Result<PathBuf, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a path"))?;
        let p = PathBuf::from(v);
        if !p.is_absolute() {
            return Err(format!(
                "{flag} needs an absolute path, not {}",
                p.display()
            ));
        }
        Ok(p)
    };
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--best-effort") => o.best_effort = true,
            Some("--ro") => o.read_only.push(path("--ro", it.next())?),
            Some("--rw") => o.read_write.push(path("--rw", it.next())?),
            Some("--probe") => {
                if it.next().is_some() {
                    return Err("--probe must come last".into());
                }
                o.probe = true;
                return Ok(o);
            }
            Some("--") => {
                o.program = Some(it.next().ok_or("no program after --")?);
                o.args = it.collect();
                return Ok(o);
            }
            _ => return Err(format!("unknown option {}", arg.to_string_lossy())),
        }
    }
    Err("no program given (expected -- PROGRAM [ARGS]...)".into())
}

/// The run's environment, decoded from this process's own.
fn run_env() -> Vec<(OsString, OsString)> {
    let mut vars: Vec<(u64, OsString, OsString)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let n = k.to_str()?.strip_prefix(ENV_PREFIX)?.parse().ok()?;
            let bytes = v.as_bytes();
            let eq = bytes.iter().position(|b| *b == b'=')?;
            Some((
                n,
                OsStr::from_bytes(&bytes[..eq]).to_os_string(),
                OsStr::from_bytes(&bytes[eq + 1..]).to_os_string(),
            ))
        })
        .collect();
    vars.sort_by_key(|(n, _, _)| *n);
    vars.into_iter().map(|(_, k, v)| (k, v)).collect()
}

fn helper(args: Vec<OsString>) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tarmac sandbox: {e}");
            return CANNOT_RUN;
        }
    };
    let env = run_env();
    close_inherited();
    let mut failures = Vec::new();
    if let Err(e) = limit_resources() {
        failures.push(format!("resource limits: {e}"));
    }
    let ruleset = match ruleset(&o) {
        Ok(r) => Some(r),
        Err(e) => {
            failures.push(format!("Landlock ruleset: {e}"));
            None
        }
    };
    let capabilities = drop_capabilities();
    if let Err(e) = &capabilities {
        failures.push(format!("capabilities: {e}"));
    }
    let no_new_privs = nix::sys::prctl::set_no_new_privs().is_ok();
    let status = ruleset.map(RulesetCreated::restrict_self);
    let report = match &status {
        Some(Ok(s)) => report(s, capabilities.is_ok(), no_new_privs),
        Some(Err(e)) => {
            failures.push(format!("Landlock: {e}"));
            unconfined(capabilities.is_ok(), no_new_privs)
        }
        None => unconfined(capabilities.is_ok(), no_new_privs),
    };
    if o.probe {
        println!("{} helper={HELPER_ID:016x}", report.line());
        for f in &failures {
            eprintln!("tarmac sandbox: {f}");
        }
        return 0;
    }
    if !o.best_effort {
        let why = if !failures.is_empty() {
            Some(failures.join("; "))
        } else if report.landlock == Enforcement::None {
            Some("Landlock is not available on this kernel".into())
        } else {
            None
        };
        if let Some(why) = why {
            eprintln!("tarmac sandbox: the sandbox is required and could not be applied: {why}");
            return CANNOT_RUN;
        }
    }
    let program = o.program.expect("parse gives a program unless probing");
    let err = std::process::Command::new(&program)
        .args(&o.args)
        .env_clear()
        .envs(env)
        .exec();
    eprintln!("could not start {}: {err}", program.to_string_lossy());
    if err.kind() == std::io::ErrorKind::NotFound {
        NOT_FOUND
    } else {
        CANNOT_RUN
    }
}

/// Closes every descriptor above stderr: whatever the server had open without close-on-exec
/// (a library's file, a socket) stays out of the run.
fn close_inherited() {
    let open: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        // No /proc: the usual range.
        Err(_) => (3..1024).collect(),
    };
    for fd in open.into_iter().filter(|fd| *fd > 2) {
        // EBADF for the listing's own descriptor, already closed.
        let _ = nix::unistd::close(fd);
    }
}

fn limit_resources() -> nix::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    for (resource, most) in [
        (Resource::RLIMIT_NOFILE, MAX_OPEN_FILES),
        (Resource::RLIMIT_NPROC, MAX_PROCESSES),
    ] {
        let (soft, hard) = getrlimit(resource)?;
        let hard = hard.min(most);
        setrlimit(resource, soft.min(hard), hard)?;
    }
    Ok(())
}

/// Reading and executing in the read-only directories; everything in the read-write ones.
/// Nothing else: no other file, no signal to a process outside the run, no abstract Unix socket
/// made outside it. Paths that do not exist are left out.
fn ruleset(o: &Options) -> Result<RulesetCreated, landlock::RulesetError> {
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_USED))?
        .scope(Scope::from_all(ABI_USED))?
        .create()?
        .add_rules(path_beneath_rules(
            &o.read_only,
            AccessFs::from_read(ABI_USED),
        ))?
        .add_rules(path_beneath_rules(
            &o.read_write,
            AccessFs::from_all(ABI_USED),
        ))
}

/// Root's capabilities would let a run read any process's memory and environment, and any file
/// Landlock does not cover; exec would grant them back from the bounding set, so it is cleared
/// too. A process without capabilities has nothing to drop.
fn drop_capabilities() -> Result<(), String> {
    use caps::{CapSet, Capability};
    let e = |e: caps::errors::CapsError| e.to_string();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(e)? {
        caps::clear(None, CapSet::Bounding).map_err(e)?;
    }
    caps::clear(None, CapSet::Ambient).map_err(e)?;
    caps::clear(None, CapSet::Inheritable).map_err(e)?;
    caps::clear(None, CapSet::Permitted).map_err(e)?;
    Ok(())
}

fn report(s: &RestrictionStatus, capabilities_dropped: bool, no_new_privs: bool) -> Report {
    let abi = match s.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi.unwrap_or(effective_abi as i32).max(0) as u32,
        _ => 0,
    };
    let landlock = match s.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    };
    Report {
        landlock,
        abi,
        scoped: landlock != Enforcement::None && abi >= ABI_USED as u32,
        no_new_privs: no_new_privs || s.no_new_privs,
        capabilities_dropped,
    }
}

fn unconfined(capabilities_dropped: bool, no_new_privs: bool) -> Report {
    Report {
        landlock: Enforcement::None,
        abi: 0,
        scoped: false,
        no_new_privs,
        capabilities_dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_are_parsed_strictly_and_the_program_is_never_an_option() {
        let o = parse(args(&[
            "--best-effort",
            "--ro",
            "/usr",
            "--rw",
            "/w",
            "--",
            "sh",
            "-c",
            "--rw / --",
        ]))
        .unwrap();
        assert!(o.best_effort && !o.probe);
        assert_eq!(o.read_only, [PathBuf::from("/usr")]);
        assert_eq!(o.read_write, [PathBuf::from("/w")]);
        assert_eq!(o.program.as_deref(), Some(OsStr::new("sh")));
        assert_eq!(o.args, args(&["-c", "--rw / --"]));

        for bad in [
            &["sh", "-c", "true"][..],
            &["--rw"],
            &["--rw", "relative", "--", "sh"],
            &["--"],
            &["--probe", "--", "sh"],
            &["--mode", "off", "--", "sh"],
            &[],
        ] {
            assert!(parse(args(bad)).is_err(), "{bad:?}");
        }
        assert!(parse(args(&["--ro", "/usr", "--probe"])).unwrap().probe);
    }
}
