//! Files in the directories a run may write (its own directory, its stack's state), as the
//! server reads and writes them: never through a symbolic link, and never blocking on a FIFO,
//! since the run (or the repository it cloned) may have put either there. Followed, a link
//! would let a run point the server at the data dir's key or another stack's state.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;

/// `O_NOFOLLOW`: a link in the last component fails (`ELOOP`); `O_NONBLOCK`: a FIFO opens at
/// once (and is then refused), where it would wait for a writer.
fn flags() -> i32 {
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits()
}

fn regular(f: File) -> io::Result<File> {
    if f.metadata()?.is_file() {
        Ok(f)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// Opens `path` for reading, if it is a regular file.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    regular(
        OpenOptions::new()
            .read(true)
            .custom_flags(flags())
            .open(path)?,
    )
}

pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

pub(crate) fn read_to_string(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    open_regular(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Replaces whatever is at `path` (a file, a link, a FIFO) with a new regular file holding
/// `contents`. `O_EXCL` never follows a link, so a link recreated meanwhile makes this fail.
pub(crate) fn write_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(flags())
        .open(path)?
        .write_all(contents)
}

/// Appends `text` to `path`, a regular file, created if missing.
pub(crate) fn append(path: &Path, text: &str) -> io::Result<()> {
    regular(
        OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(flags())
            .open(path)?,
    )?
    .write_all(text.as_bytes())
}

/// Makes `dir` an empty directory, whatever was there: where a state store restores into.
pub(crate) fn fresh_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(dir)
}

/// A key's path below the stack's prefix, if it is a plain relative path to a file: no `..`,
/// no root, no `.`, no empty segment (two keys could otherwise name one file), no folder key.
pub(crate) fn relative(rel: &str) -> Option<PathBuf> {
    let plain = !rel.is_empty()
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    let path = PathBuf::from(rel);
    (plain && path.components().all(|c| matches!(c, Component::Normal(_)))).then_some(path)
}

/// Pulumi's file backend keeps a copy of the state per update under these; the bucket's
/// versions already are that history, and syncing them would grow every run's restore.
pub(crate) const SKIPPED_DIRS: [&str; 2] = [".pulumi/history", ".pulumi/backups"];

/// Every file under `dir`, as `/`-separated relative paths.
pub(crate) fn list_state_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let skipped = entry
                    .path()
                    .strip_prefix(dir)
                    .is_ok_and(|rel| SKIPPED_DIRS.iter().any(|s| rel == Path::new(s)));
                if !skipped {
                    pending.push(entry.path());
                }
            } else if kind.is_file()
                && let Ok(rel) = entry.path().strip_prefix(dir)
            {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_not_followed_and_fifos_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret.key");
        std::fs::write(&secret, "key").unwrap();
        let link = dir.path().join("terraform.tfstate");
        std::os::unix::fs::symlink(&secret, &link).unwrap();

        assert!(read(&link).is_err());
        assert!(read_to_string(&link).is_err());
        assert!(append(&link, "1\n").is_err());
        write_new(&link, b"override").unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "key");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(read(&link).unwrap(), b"override");

        let fifo = dir.path().join("process-groups");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_to_string(&fifo).is_err());
        assert!(append(&fifo, "1\n").is_err());

        let plain = dir.path().join("groups");
        append(&plain, "1\n").unwrap();
        append(&plain, "2\n").unwrap();
        assert_eq!(read_to_string(&plain).unwrap(), "1\n2\n");
        assert_eq!(
            read(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
