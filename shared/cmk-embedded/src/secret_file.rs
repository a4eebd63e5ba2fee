//! Secret and key files that are created atomically and read fail-closed.
//!
//! A secret file is either absent or complete: it is written to a temporary file (owner-only),
//! fsynced, then hard-linked to its name (which, unlike a rename, never replaces a file another
//! process created first), and the directory is fsynced. Processes that start together on a
//! new data directory therefore all end up with the first complete secret, and a crash leaves
//! at worst a stray temporary file, never a short secret.
//!
//! Reading never repairs: a file that is empty or shorter than the secret it must hold is an
//! error naming the file, so a process refuses to start instead of signing with a weak key.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Creates `path` holding `bytes` unless it exists. Returns `false` when another process (or an
/// earlier run) created it first; its content is then left as it is.
pub fn create_private(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = temp_name(path);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a secret file that must hold at least `min_len` bytes; anything shorter is an error
/// that names the file.
pub fn read_secret(path: &Path, min_len: usize, what: &str) -> io::Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read the {what} {}: {e}", path.display()),
        )
    })?;
    if bytes.len() < min_len {
        return Err(short(path, what, bytes.len(), min_len));
    }
    Ok(bytes)
}

/// The error for a secret file shorter than it must be.
fn short(path: &Path, what: &str, len: usize, min_len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the {what} {} holds {len} bytes, fewer than the {min_len} it must: refusing to use it \
             (restore it from a backup, or remove it to create a new one, which invalidates what it protected)",
            path.display()
        ),
    )
}

/// A temporary name beside `path`, random: a file left by a crashed run (whose process id a
/// container reuses) never collides with it.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()))
}

/// Makes a new directory entry durable (a no-op where directories cannot be opened).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_creator_wins_and_later_ones_keep_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        assert!(create_private(&path, b"first").expect("create"));
        assert!(!create_private(&path, b"second").expect("create again"));
        assert_eq!(fs::read(&path).expect("read"), b"first");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        create_private(&path, b"x").expect("create");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_short_secret_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.secret");
        fs::write(&path, b"abc").expect("write");
        let e = read_secret(&path, 32, "token secret").expect_err("short");
        assert!(e.to_string().contains("token.secret"), "{e}");
        assert!(e.to_string().contains("3 bytes"), "{e}");
    }
}
