//! The run cache on this host: git mirrors, engines' plugins and stacks' dependency caches,
//! shared across runs, bounded in size, least recently used first out.
//!
//! ```text
//! <root>/.key                               HMAC key naming the mirrors (never leaves the root)
//! <root>/<org>/mirrors/<scope>/repo.git     a bare mirror: one per org, URL and credentials
//! <root>/<org>/mirrors/<scope>/trees/<sha>  a commit's files (tree/) and git index, extracted once
//! <root>/<org>/plugins/<engine>             Terraform's plugin cache, Pulumi's plugins
//! <root>/<org>/stacks/<hash>                a stack's npm, pip and go caches
//! ```
//!
//! Each of the last three kinds is an *entry*: the unit of eviction, with a `.lock` file
//! (held shared by every run using it; the evictor takes it exclusively, and skips the entry
//! if it cannot) and a `.used` file whose modification time says when a run last used it. A
//! mirror also has `.fetch.lock`, held by the one run fetching into it or extracting from it:
//! runs that only copy a commit already extracted never wait for it.
//!
//! A mirror's name is an HMAC of the org, the URL and the credentials, so a tenant reaches only
//! mirrors its own credentials filled, and no credential can be guessed from a name. Nothing
//! secret is written into a mirror: fetches name the URL on the command line and carry
//! credentials in the environment, and write no `FETCH_HEAD`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use super::GitCredentials;
use crate::domain::StackRef;

/// The cap where none is configured: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// A size such as `10G`, `500M`, `64K` or `4096` (bytes; powers of 1024).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, shift) = match v.char_indices().last()? {
        (i, 'K' | 'k') => (&v[..i], 10),
        (i, 'M' | 'm') => (&v[..i], 20),
        (i, 'G' | 'g') => (&v[..i], 30),
        (i, 'T' | 't') => (&v[..i], 40),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Files of an entry that are the cache's own, not its content.
const LOCK: &str = ".lock";
pub(crate) const FETCH_LOCK: &str = ".fetch.lock";
const USED: &str = ".used";

/// The cache root and its size cap.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    max_bytes: u64,
    key: String,
    /// When a trim last started (seconds since the epoch), and whether one is going.
    last_trim: AtomicU64,
    trimming: AtomicBool,
}

/// Runs' ends trim the cache at most this often (what they add is dependency caches, which
/// grow slowly); a new mirror or tree trims at once.
const TRIM_EVERY_SECS: u64 = 60;

/// What a prune did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub entries: usize,
    pub evicted: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Entries over the cap that a run was using, left for the next prune.
    pub busy: usize,
}

/// An entry (or a lock file) held by a run. Released on drop.
#[derive(Debug)]
pub(crate) struct Held {
    _file: File,
}

impl Cache {
    /// Opens (creating) the cache at `root`, kept under `max_bytes`.
    pub fn open(root: &Path, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        let key_path = root.join(".key");
        let key = match std::fs::read_to_string(&key_path) {
            Ok(k) if k.trim().len() == 64 => k.trim().to_string(),
            _ => {
                let mut bytes = [0u8; 32];
                aws_lc_rs::rand::fill(&mut bytes).map_err(|_| io::Error::other("no randomness"))?;
                let k = crate::crypto::to_hex(&bytes);
                let tmp = root.join(format!(".key.{}", uuid::Uuid::new_v4()));
                crate::crypto::write_private(&tmp, k.as_bytes()).map_err(io::Error::other)?;
                std::fs::rename(&tmp, &key_path)?;
                k
            }
        };
        Ok(Self {
            root: root.to_path_buf(),
            max_bytes,
            key,
            last_trim: AtomicU64::new(0),
            trimming: AtomicBool::new(false),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mirror entry of `url` for `org` and these credentials.
    pub(crate) fn mirror(&self, org: &str, url: &str, creds: Option<&GitCredentials>) -> PathBuf {
        let who = match creds {
            None => String::new(),
            Some(GitCredentials::Token { token }) => format!("token\0{token}"),
            Some(GitCredentials::Basic { user, password }) => format!("basic\0{user}\0{password}"),
            Some(GitCredentials::Ssh { private_key }) => format!("ssh\0{private_key}"),
        };
        let scope =
            crate::crypto::hmac_sha256_hex(&self.key, format!("{org}\0{url}\0{who}").as_bytes());
        self.root.join(org).join("mirrors").join(&scope[..32])
    }

    /// The org's plugin cache entry for `engine` (`terraform`, `pulumi`).
    pub(crate) fn plugins(&self, org: &str, engine: &str) -> PathBuf {
        self.root.join(org).join("plugins").join(engine)
    }

    /// The stack's dependency cache entry.
    pub(crate) fn stack(&self, stack: &StackRef) -> PathBuf {
        let name =
            crate::crypto::sha256_hex(format!("{}/{}", stack.project, stack.stack).as_bytes());
        self.root.join(&stack.org).join("stacks").join(&name[..32])
    }

    /// Takes `entry` (creating it) for a run's use, keeping it from eviction. Marks it used.
    pub(crate) async fn hold(entry: &Path) -> io::Result<Held> {
        let entry = entry.to_path_buf();
        tokio::task::spawn_blocking(move || Self::hold_blocking(&entry))
            .await
            .map_err(io::Error::other)?
    }

    /// `hold`, on the calling thread; tried twice, since an eviction may remove the entry
    /// between its creation and its lock.
    pub(crate) fn hold_blocking(entry: &Path) -> io::Result<Held> {
        let once = || -> io::Result<Held> {
            std::fs::create_dir_all(entry)?;
            let file = lock_file(&entry.join(LOCK))?;
            file.lock_shared()?;
            // An evictor that took the entry first has unlinked this lock file: ours must still
            // be the one at the path.
            use std::os::unix::fs::MetadataExt;
            let still = std::fs::metadata(entry.join(LOCK))
                .is_ok_and(|m| m.ino() == file.metadata().map(|f| f.ino()).unwrap_or(0));
            if !still {
                return Err(io::Error::other("the cache entry was evicted meanwhile"));
            }
            touch(&entry.join(USED))?;
            Ok(Held { _file: file })
        };
        once().or_else(|_| once())
    }

    /// Brings the cache under its cap, in the background: now if it has just `grown` by a
    /// mirror or a tree, else at most once a minute. One trim at a time.
    pub(crate) fn trim_soon(self: &std::sync::Arc<Self>, grown: bool) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_trim.load(Ordering::Relaxed);
        if !grown && now < last + TRIM_EVERY_SECS {
            return;
        }
        if self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_trim.store(now, Ordering::Relaxed);
        let cache = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            match cache.prune(cache.max_bytes) {
                Ok(r) if r.evicted > 0 => tracing::info!(
                    evicted = r.evicted,
                    bytes_before = r.bytes_before,
                    bytes_after = r.bytes_after,
                    "trimmed the run cache"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not trim the run cache"),
            }
            cache.trimming.store(false, Ordering::Release);
        });
    }

    /// Holds `file` exclusively (creating it) until the guard drops: one fetch into a mirror at
    /// a time, and one Terraform `init` per plugin cache (it is not safe for two).
    pub(crate) async fn serialise(file: &Path) -> io::Result<Held> {
        let file = file.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let f = lock_file(&file)?;
            f.lock()?;
            Ok(Held { _file: f })
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Evicts entries, least recently used first, until the cache holds at most `max_bytes`.
    /// An entry a run is using is skipped. `tarmac cache prune` calls it too.
    pub fn prune(&self, max_bytes: u64) -> io::Result<PruneReport> {
        let mut entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut report = PruneReport {
            entries: entries.len(),
            bytes_before: total,
            ..PruneReport::default()
        };
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if total <= max_bytes {
                break;
            }
            let Ok(file) = lock_file(&e.path.join(LOCK)) else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {
                    // The lock file goes first: anyone who opened it and waits finds it gone.
                    let _ = std::fs::remove_file(e.path.join(LOCK));
                    remove_dir_all_quiet(&e.path)?;
                    total = total.saturating_sub(e.bytes);
                    report.evicted += 1;
                }
                Err(_) => report.busy += 1,
            }
        }
        report.bytes_after = total;
        Ok(report)
    }

    /// Every entry, with its size and last use.
    fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut out = vec![];
        for org in read_dirs(&self.root)? {
            for kind in ["mirrors", "plugins", "stacks"] {
                for path in read_dirs(&org.join(kind))? {
                    let used = std::fs::metadata(path.join(USED))
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    let bytes = size_of(&path);
                    out.push(Entry { path, bytes, used });
                }
            }
        }
        Ok(out)
    }
}

struct Entry {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

fn read_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
}

/// Bytes under `path`, links not followed.
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// Opens (creating) one of the cache's own files, never through a link.
fn lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

fn touch(path: &Path) -> io::Result<()> {
    lock_file(path)?.set_modified(SystemTime::now())
}

impl crate::ports::StackCache for Cache {
    fn clear_stack(&self, stack: &StackRef) -> io::Result<bool> {
        let entry = self.stack(stack);
        if !entry.exists() {
            return Ok(true);
        }
        let file = lock_file(&entry.join(LOCK))?;
        if file.try_lock().is_err() {
            return Ok(false);
        }
        // The lock file goes first: anyone who opened it and waits finds it gone.
        let _ = std::fs::remove_file(entry.join(LOCK));
        remove_dir_all_quiet(&entry)?;
        Ok(true)
    }
}

pub(crate) fn remove_dir_all_quiet(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Copies the tree at `from` into `to` (which must not exist): directories, regular files
/// with their mode, and links as links, never followed. Anything else is skipped.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_file() {
            let mut input = super::files::open_regular(&src)?;
            let mode = input.metadata()?.permissions().mode();
            let mut output = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & 0o777)
                .open(&dst)?;
            io::copy(&mut input, &mut output)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(entry: &Path, bytes: usize, age_secs: u64) {
        std::fs::create_dir_all(entry).unwrap();
        std::fs::write(entry.join("data"), vec![0u8; bytes]).unwrap();
        std::fs::write(entry.join(LOCK), b"").unwrap();
        let used = File::create(entry.join(USED)).unwrap();
        used.set_modified(SystemTime::now() - std::time::Duration::from_secs(age_secs))
            .unwrap();
    }

    #[test]
    fn mirrors_are_apart_by_org_url_and_credentials_and_name_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 30).unwrap();
        let token = |t: &str| GitCredentials::Token { token: t.into() };
        let a = cache.mirror("a", "https://h/r.git", Some(&token("s3cret")));
        assert_eq!(
            a,
            cache.mirror("a", "https://h/r.git", Some(&token("s3cret")))
        );
        assert_ne!(
            a,
            cache.mirror("b", "https://h/r.git", Some(&token("s3cret")))
        );
        assert_ne!(
            a,
            cache.mirror("a", "https://h/r.git", Some(&token("other")))
        );
        assert_ne!(a, cache.mirror("a", "https://h/r.git", None));
        assert_ne!(
            a,
            cache.mirror("a", "https://h/s.git", Some(&token("s3cret")))
        );
        assert!(!a.display().to_string().contains("s3cret"));
        // The key survives a reopen, so mirrors do too.
        let again = Cache::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            a,
            again.mirror("a", "https://h/r.git", Some(&token("s3cret")))
        );
    }

    #[tokio::test]
    async fn prune_evicts_least_recently_used_first_and_spares_entries_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 30).unwrap();
        let (old, mid, new) = (
            dir.path().join("o/mirrors/old"),
            dir.path().join("o/stacks/mid"),
            dir.path().join("p/plugins/terraform"),
        );
        fill(&old, 4000, 300);
        fill(&mid, 4000, 200);
        fill(&new, 4000, 100);
        // Under the cap: nothing goes.
        assert_eq!(cache.prune(1 << 20).unwrap().evicted, 0);
        // 12,000 bytes into 9,000: the oldest goes.
        let r = cache.prune(9000).unwrap();
        assert_eq!((r.entries, r.evicted, r.busy), (3, 1, 0));
        assert!(!old.exists() && mid.exists() && new.exists());
        // An entry in use is skipped, and the next oldest goes instead.
        let held = Cache::hold(&mid).await.unwrap();
        let r = cache.prune(1000).unwrap();
        assert_eq!((r.evicted, r.busy), (1, 1));
        assert!(mid.exists() && !new.exists());
        drop(held);
        assert_eq!(cache.prune(0).unwrap().evicted, 1);
        assert!(!mid.exists());
    }

    #[test]
    fn copies_keep_modes_and_links_and_follow_none() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            from.join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", from.join("link")).unwrap();
        copy_tree(&from, &dir.path().join("to")).unwrap();
        let to = dir.path().join("to");
        let mode = std::fs::metadata(to.join("sub/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
    }
}
