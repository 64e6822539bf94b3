//! A git remote over smart HTTP for tests, shared by the black-box and Lambda tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `tests/tools/git_http_server.py`: real `git http-backend` behind Basic auth. Killed on drop.
pub(crate) struct GitServer {
    child: Child,
    pub url: String,
    _root: tempfile::TempDir,
}

impl GitServer {
    pub(crate) fn start(repo: &Path, user: &str, password: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("repo.git");
        let ok = Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(repo)
            .arg(&bare)
            .status()
            .unwrap();
        assert!(ok.success());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/tools/git_http_server.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .arg(root.path())
            .args([user, password])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{}/repo.git", port.trim()),
            _root: root,
        }
    }
}

#[allow(dead_code)]
impl GitServer {
    /// The bare repository it serves: push here to move its branches.
    pub(crate) fn bare(&self) -> std::path::PathBuf {
        self._root.path().join("repo.git")
    }

    /// The requests served so far, as "METHOD PATH?QUERY".
    pub(crate) fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self._root.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many ref advertisements (`ls-remote`'s round trip) it has served.
    pub(crate) fn ref_lookups(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/info/refs"))
            .count()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
