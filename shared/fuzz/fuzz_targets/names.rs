//! Names and paths that come from clients: org, project and stack names, token and pool
//! labels, tags, repository URLs, `repoDir` and git refs, Vault paths, and state file keys.
//!
//! Invariants (from the doc comments in `shared/src/domain` and `runner/files.rs`):
//! - every check returns, never panics;
//! - an accepted org, project or stack name is 1 to 100 of `[A-Za-z0-9_.-]`, not only dots; a
//!   stack's name reads back from its `org/project/stack` form, and its directory is three plain
//!   components under the root;
//! - an accepted label has 1 to 100 characters, not all blank, and no control character;
//! - an accepted tag name is 1 to 40 of `[A-Za-z0-9-_.:]`, its value at most 256 bytes, and a
//!   `ttl` is 1 minute to a year;
//! - an accepted repository URL does not start with `-`, is never a git remote helper
//!   (`<transport>::<address>`, which can run commands), and, unless the server allows local
//!   repositories, never a local path or `file://`; one accepted without them is accepted with;
//! - an accepted `repoDir` is relative and never leaves the checkout; an accepted branch or tag
//!   cannot be read as an option; an accepted commit is 4 to 64 hex digits;
//! - an accepted Vault path or mount has no empty, `.` or `..` segment and no `?`, `#` or `\`;
//! - an accepted state file key is a plain relative path that names exactly one file below the
//!   stack's prefix.
#![no_main]

use std::path::{Component, Path};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tarmac::crypto::Cipher;
use tarmac::domain::spec::source::{LocalRepos, local_path, validate_repo_url};
use tarmac::domain::stacks::{MAX_TAG_NAME, MAX_TAG_VALUE, MAX_TTL_MINUTES, TTL_TAG, ttl_minutes};
use tarmac::domain::{StackRef, validate_label, validate_name};
use tarmac::fuzzing;

/// Pieces names and paths are made of, so the checks' edge cases come up often.
const PIECES: &[&str] = &[
    "a", "Z", "0", "_", "-", ".", "..", "/", "//", ":", "::", "@", "\\", "?", "#", " ", "\t", "\n",
    "\0", "\u{7f}", "\u{85}", "é", "ext", "file://", "FILE://", "https://", "ssh://", "git@",
    "git://", "http://", "~", "%2e", "ttl", "1", "525600", "+1", "-1",
];

#[derive(Arbitrary, Debug)]
enum Piece {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Text(Vec<Piece>);

impl Text {
    fn string(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Known(i) => PIECES[usize::from(*i) % PIECES.len()].to_string(),
                Piece::Other(s) => s.clone(),
            })
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    org: Text,
    project: Text,
    stack: Text,
    label: Text,
    tag: (Text, Text),
    url: Text,
    repo_dir: Text,
    git_ref: Text,
    commit: Text,
    vault: (Text, Text),
    key: Text,
}

fn names(input: &Input) {
    let (org, project, stack) = (
        input.org.string(),
        input.project.string(),
        input.stack.string(),
    );
    for name in [&org, &project, &stack] {
        if validate_name("stack", name).is_ok() {
            assert!((1..=100).contains(&name.len()), "{name:?}");
            assert!(!name.bytes().all(|b| b == b'.'), "{name:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
                "{name:?}"
            );
        }
    }
    let _ = StackRef::parse(&org);
    if let Ok(s) = StackRef::new(&org, &project, &stack) {
        assert_eq!(StackRef::parse(&s.to_string()).ok(), Some(s.clone()));
        let root = Path::new("/var/lib/tarmac/state");
        let dir = s.dir_under(root);
        let below = dir.strip_prefix(root).expect("under the root");
        assert_eq!(below.components().count(), 3, "{dir:?}");
        assert!(
            below
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "{dir:?}"
        );
    }
}

fn labels_and_tags(input: &Input) {
    let label = input.label.string();
    if validate_label(&label).is_ok() {
        assert!((1..=100).contains(&label.chars().count()), "{label:?}");
        assert!(!label.trim().is_empty(), "{label:?}");
        assert!(!label.chars().any(char::is_control), "{label:?}");
    }
    let (name, value) = (input.tag.0.string(), input.tag.1.string());
    for name in [name.as_str(), TTL_TAG] {
        if tarmac::domain::stacks::validate_tag(name, &value).is_ok() {
            assert!((1..=MAX_TAG_NAME).contains(&name.len()), "{name:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')),
                "{name:?}"
            );
            assert!(value.len() <= MAX_TAG_VALUE);
            if name == TTL_TAG {
                let m = ttl_minutes(&value).expect("a valid ttl");
                assert!((1..=MAX_TTL_MINUTES).contains(&m), "{value:?}");
            }
        }
    }
}

/// Git's rule for `<transport>::<address>`: a letter, then letters, digits, `+`, `-` or `.`.
fn remote_helper(url: &str) -> bool {
    let scheme: String = url
        .chars()
        .enumerate()
        .take_while(|(i, c)| {
            c.is_ascii_alphabetic()
                || *i > 0 && (c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
        })
        .map(|(_, c)| c)
        .collect();
    !scheme.is_empty() && url[scheme.len()..].starts_with("::")
}

fn urls(input: &Input) {
    let url = input.url.string();
    let _ = local_path(&url);
    let denied = validate_repo_url(&url, &LocalRepos::Denied).is_ok();
    let any = validate_repo_url(&url, &LocalRepos::Any).is_ok();
    if denied {
        assert!(any, "{url:?} is accepted only without local repositories");
        let lower = url.to_ascii_lowercase();
        assert!(
            !lower.starts_with("file://") && !url.starts_with('/'),
            "{url:?} reads the server's disk"
        );
    }
    if any {
        assert!(!url.starts_with('-'), "{url:?} reads as an option");
        assert!(!remote_helper(&url), "{url:?} names a git remote helper");
    }
}

fn source(input: &Input) {
    let (dir, git_ref, commit) = (
        input.repo_dir.string(),
        input.git_ref.string(),
        input.commit.string(),
    );
    let settings = |git: serde_json::Value| json!({"sourceContext": {"git": git}});
    let check = |git| tarmac::domain::spec::check_settings(&settings(git)).is_ok();
    if check(json!({"repoDir": dir})) && !dir.trim().is_empty() {
        let p = Path::new(&dir);
        assert!(
            p.components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "repoDir {dir:?} leaves the checkout"
        );
    }
    for key in ["branch", "tag"] {
        if check(json!({ key: git_ref })) {
            assert!(
                !git_ref.starts_with('-') && !git_ref.contains(['\0', '\n', ' ']),
                "{key} {git_ref:?}"
            );
        }
    }
    if check(json!({"commit": commit})) && !commit.trim().is_empty() {
        assert!((4..=64).contains(&commit.len()), "{commit:?}");
        assert!(commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit:?}");
    }
}

fn vault(input: &Input) {
    let key = Cipher::from_key(&[3; 32]);
    let c = key.for_org("acme");
    let (path, mount) = (input.vault.0.string(), input.vault.1.string());
    let body = json!({"operationContext": {"environmentVariables": {"TOKEN": {"fromVault": {
        "address": "https://vault.example.com:8200", "path": path, "key": "k",
        "auth": {"jwt": {"role": "r", "mount": mount}},
    }}}}});
    if fuzzing::canonicalize_settings(&body, &c).is_ok() {
        for p in [&path, &mount] {
            let p = p.trim_matches('/');
            assert!(
                !p.split('/').any(|s| s.is_empty() || s == "." || s == ".."),
                "{p:?}"
            );
            assert!(!p.contains(['?', '#', '\\']), "{p:?}");
        }
    }
}

fn state_files(input: &Input) {
    let key = input.key.string();
    if let Some(p) = fuzzing::state_file_path(&key) {
        assert!(p.is_relative(), "{key:?}");
        assert!(
            p.components().all(|c| matches!(c, Component::Normal(_))),
            "{key:?}"
        );
        // One key, one file: the path is the key, so no two keys name the same file.
        assert_eq!(p.to_str(), Some(key.as_str()));
        let prefix = Path::new("/srv/state/acme/p/dev");
        assert!(prefix.join(&p).starts_with(prefix));
    }
}

fuzz_target!(|input: Input| {
    names(&input);
    labels_and_tags(&input);
    urls(&input);
    source(&input);
    vault(&input);
    state_files(&input);
});
