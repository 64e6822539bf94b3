//! Where a branch points on its remote, asked in-process: the `ls-remote` round trip of every
//! branch-tracking run, without starting a process.
//!
//! Over HTTP(S) it reads the smart protocol's ref advertisement (`GET info/refs`, the pkt-line
//! format of gitprotocol-http(5) and gitprotocol-pack(5)), with the run's git credentials; a
//! local repository's refs are read from its files (HEAD, loose refs, `packed-refs`). Anything
//! else (SSH, `git://`, a dumb HTTP server, a tag, whose commit needs its object read) is
//! left to `git ls-remote` in the run's sandbox. This is the only git protocol Tarmac speaks
//! itself; fetches and checkouts are git's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::GitCredentials;

/// What the lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The commit the ref points at.
    Found(String),
    /// The remote answered, and has no such ref.
    Missing,
    /// Not answered here: ask `git ls-remote`.
    Git,
}

/// The most a ref advertisement may weigh: a repository's refs, not a denial of service.
const MAX_ADVERTISEMENT: usize = 32 << 20;

/// Asks `url` where `reference` (a full branch ref, or `HEAD`) points. `Err` carries a message
/// for the run's log that never holds a credential.
pub(crate) async fn head(
    http: &reqwest::Client,
    url: &str,
    creds: Option<&GitCredentials>,
    reference: &str,
    local: Option<&Path>,
) -> Result<Lookup, String> {
    let mut found = heads(http, url, creds, &[reference], local).await?;
    Ok(found.pop().unwrap_or(Lookup::Git))
}

/// `head` for several refs of one repository, in one round trip: a lookup per reference, in
/// order.
pub(crate) async fn heads(
    http: &reqwest::Client,
    url: &str,
    creds: Option<&GitCredentials>,
    references: &[&str],
    local: Option<&Path>,
) -> Result<Vec<Lookup>, String> {
    let tags = |r: &str| r.starts_with("refs/tags/");
    if references.iter().all(|r| tags(r)) {
        return Ok(references.iter().map(|_| Lookup::Git).collect());
    }
    let by_ref = |body: Option<Vec<u8>>| {
        references
            .iter()
            .map(|r| match &body {
                Some(body) if !tags(r) => advertised(body, r),
                _ => Lookup::Git,
            })
            .collect()
    };
    if let Some(path) = local {
        let path = path.to_path_buf();
        let wanted: Vec<String> = references.iter().map(|r| r.to_string()).collect();
        return tokio::task::spawn_blocking(move || {
            Ok(wanted
                .iter()
                .map(|r| match tags(r) {
                    true => Lookup::Git,
                    false => local_head(&path, r),
                })
                .collect())
        })
        .await
        .unwrap_or_else(|_| Ok(references.iter().map(|_| Lookup::Git).collect()));
    }
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Ok(by_ref(None));
    }
    Ok(by_ref(http_refs(http, url, creds).await?))
}

/// The smart-HTTP ref advertisement of `url`; `None` if it cannot be read here (git must).
async fn http_refs(
    http: &reqwest::Client,
    url: &str,
    creds: Option<&GitCredentials>,
) -> Result<Option<Vec<u8>>, String> {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return Ok(None);
    };
    // Credentials in the URL, as git takes them; the settings' own win, as git's header does.
    let mut auth = match (parsed.username(), parsed.password()) {
        ("", None) => None,
        (user, password) => Some(super::git::basic_auth(
            &percent_decode(user),
            &percent_decode(password.unwrap_or_default()),
        )),
    };
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    if let Some(c) = creds {
        match c.http_basic() {
            Some((user, password)) => auth = Some(super::git::basic_auth(user, password)),
            // An SSH key for an HTTP URL: git decides what to do with it.
            None => return Ok(None),
        }
    }
    let shown = parsed.to_string();
    let base = shown.trim_end_matches('/');
    let mut req = http
        .get(format!("{base}/info/refs?service=git-upload-pack"))
        .header("User-Agent", "git/2.0 (tarmac)")
        .timeout(Duration::from_secs(30));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("could not reach {shown}: {}", without_url(&e)))?;
    match resp.status().as_u16() {
        200 => {}
        401 | 403 => {
            return Err(format!(
                "{shown} refused the run's git credentials (HTTP {})",
                resp.status().as_u16()
            ));
        }
        404 => return Err(format!("{shown} has no repository (HTTP 404)")),
        _ => return Ok(None),
    }
    let smart = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-git-upload-pack-advertisement"));
    if !smart {
        return Ok(None);
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("could not read {shown}'s refs: {}", without_url(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ADVERTISEMENT {
            return Ok(None);
        }
    }
    Ok(Some(body))
}

/// The commit a ref advertisement (protocol v0/v1) names for `reference`; `Git` if it cannot
/// be read (another protocol, a malformed line). `HEAD`, when the remote advertises it, is its
/// first line.
fn advertised(body: &[u8], reference: &str) -> Lookup {
    parse_advertisement(body, reference).unwrap_or(Lookup::Git)
}

fn parse_advertisement(body: &[u8], reference: &str) -> Option<Lookup> {
    let mut rest = body;
    let mut found = None;
    let mut lines = 0;
    while rest.len() >= 4 {
        let len = usize::from_str_radix(std::str::from_utf8(&rest[..4]).ok()?, 16).ok()?;
        if len == 0 {
            rest = &rest[4..];
            continue;
        }
        if len < 4 || len > rest.len() {
            return None;
        }
        let line = std::str::from_utf8(&rest[4..len])
            .ok()?
            .trim_end_matches('\n');
        rest = &rest[len..];
        if line.starts_with('#') || line.starts_with("version ") {
            continue;
        }
        lines += 1;
        // The first ref line carries the capabilities after a NUL.
        let line = line.split('\0').next().unwrap_or_default();
        let (sha, name) = line.split_once(' ')?;
        if !super::git::is_full_sha(sha) {
            return None;
        }
        if name == reference {
            found = Some(sha.to_string());
        }
    }
    // A v2 server's capability advertisement has no ref lines at all.
    match found {
        Some(sha) => Some(Lookup::Found(sha)),
        None => (lines > 0).then_some(Lookup::Missing),
    }
}

/// A local repository's ref, read from its files.
fn local_head(repo: &Path, reference: &str) -> Lookup {
    let Some(git_dir) = git_dir(repo) else {
        return Lookup::Git;
    };
    let mut name = reference.to_string();
    // HEAD, and branches that are symbolic refs, point at another ref: a few hops at most.
    for _ in 0..5 {
        match loose(&git_dir, &name) {
            Some(Ref::Sha(sha)) => return Lookup::Found(sha),
            Some(Ref::Symbolic(target)) => {
                name = target;
                continue;
            }
            Some(Ref::Unknown) => return Lookup::Git,
            None => {}
        }
        return match packed(&git_dir, &name) {
            Lookup::Missing if !name.starts_with("refs/heads/") => Lookup::Git,
            found => found,
        };
    }
    Lookup::Git
}

enum Ref {
    Sha(String),
    Symbolic(String),
    Unknown,
}

/// The repository's git directory: `.git` of a work tree, or the repository itself if bare.
/// (`.git` files, worktrees and reftables are left to git.)
fn git_dir(repo: &Path) -> Option<PathBuf> {
    let dot = repo.join(".git");
    let dir = match std::fs::symlink_metadata(&dot) {
        Ok(m) if m.is_dir() => dot,
        Ok(_) => return None,
        Err(_) => repo.to_path_buf(),
    };
    let plain = dir.join("HEAD").is_file()
        && dir.join("refs").is_dir()
        && !dir.join("commondir").exists()
        && !dir.join("reftable").exists();
    plain.then_some(dir)
}

/// A loose ref, never through a link: a repository is the tenant's, and its files must not
/// lead the server anywhere else.
fn loose(git_dir: &Path, name: &str) -> Option<Ref> {
    if name != "HEAD" && !name.starts_with("refs/") || name.split('/').any(|c| c == "..") {
        return Some(Ref::Unknown);
    }
    let text = super::files::read_to_string(&git_dir.join(name)).ok()?;
    let text = text.trim();
    Some(match text.strip_prefix("ref: ") {
        Some(target) if target.starts_with("refs/") => Ref::Symbolic(target.to_string()),
        Some(_) => Ref::Unknown,
        None if super::git::is_full_sha(text) => Ref::Sha(text.to_ascii_lowercase()),
        None => Ref::Unknown,
    })
}

/// The ref in `packed-refs`.
fn packed(git_dir: &Path, name: &str) -> Lookup {
    let text = match super::files::read_to_string(&git_dir.join("packed-refs")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
        Err(_) => return Lookup::Git,
    };
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with('^') {
            continue;
        }
        let Some((sha, ref_name)) = line.split_once(' ') else {
            return Lookup::Git;
        };
        if ref_name == name {
            return match super::git::is_full_sha(sha) {
                true => Lookup::Found(sha.to_ascii_lowercase()),
                false => Lookup::Git,
            };
        }
    }
    Lookup::Missing
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request error's message without its URL (which may hold credentials).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    if text.is_empty() {
        "the request failed".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    #[test]
    fn a_v0_advertisement_names_branches_and_head() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let body = format!(
            "{}0000{}{}{}0000",
            pkt("# service=git-upload-pack\n"),
            pkt(&format!(
                "{a} HEAD\0multi_ack symref=HEAD:refs/heads/main\n"
            )),
            pkt(&format!("{a} refs/heads/main\n")),
            pkt(&format!("{b} refs/heads/next\n")),
        );
        let got = |r: &str| advertised(body.as_bytes(), r);
        assert_eq!(got("HEAD"), Lookup::Found(a.clone()));
        assert_eq!(got("refs/heads/next"), Lookup::Found(b));
        assert_eq!(got("refs/heads/gone"), Lookup::Missing);
        // Garbage, or a v2 capability list, is left to git.
        assert_eq!(advertised(b"zzzz", "HEAD"), Lookup::Git);
        let v2 = format!(
            "{}0000{}{}0000",
            pkt("# service=git-upload-pack\n"),
            pkt("version 2\n"),
            pkt("ls-refs\n")
        );
        assert_eq!(advertised(v2.as_bytes(), "HEAD"), Lookup::Git);
    }

    #[test]
    fn local_refs_are_read_loose_packed_and_symbolic_and_never_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            assert!(
                std::process::Command::new("git")
                    .args(["-c", "user.email=t@e", "-c", "user.name=T"])
                    .args(args)
                    .current_dir(dir.path())
                    .status()
                    .unwrap()
                    .success()
            );
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("f"), "x").unwrap();
        git(&["add", "f"]);
        git(&["commit", "-q", "-m", "one"]);
        git(&["branch", "packed"]);
        git(&["pack-refs", "--all"]);
        std::fs::write(dir.path().join("f"), "y").unwrap();
        git(&["commit", "-q", "-am", "two"]);
        let sha = |r: &str| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", r])
                .current_dir(dir.path())
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let head = |r: &str| local_head(dir.path(), r);
        assert_eq!(head("refs/heads/main"), Lookup::Found(sha("main")));
        assert_eq!(head("HEAD"), Lookup::Found(sha("main")));
        assert_eq!(head("refs/heads/packed"), Lookup::Found(sha("packed")));
        assert_ne!(sha("main"), sha("packed"));
        assert_eq!(head("refs/heads/none"), Lookup::Missing);
        assert_eq!(head("refs/heads/../../config"), Lookup::Git);
        // A branch that is a link to a file elsewhere is not read.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, format!("{}\n", "c".repeat(40))).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join(".git/refs/heads/linked")).unwrap();
        assert_ne!(head("refs/heads/linked"), Lookup::Found("c".repeat(40)));
    }
}
