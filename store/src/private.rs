//! The data directory is private to its owner: `0700` for directories,
//! `0600` for files (it holds function secrets and token hashes).
//!
//! New directories are created so by the store; new files by the server,
//! which sets its umask to `077` before it opens the store. A data
//! directory from an earlier version, or copied with looser modes, is
//! tightened here at open, with one log line.

use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Result, StoreError};

/// Mode bits of group and others.
const OTHERS: u32 = 0o077;

/// What Sluice keeps in a data directory: only these are tightened (with
/// everything under them), so `--data-dir` pointed at a directory holding
/// other things (a home directory) changes none of those.
pub(crate) const OWNED: [&str; 5] = [
    "db",
    "deliveries",
    "artifacts",
    "admin.token",
    "sluice.lock",
];

/// Takes every permission of group and others off `dir` itself and off
/// what Sluice keeps in it ([`OWNED`], recursively). The walk goes by
/// descriptor: each directory is listed through the descriptor it was
/// opened as (`/proc/self/fd/N`), each entry opened beneath it without
/// following a symbolic link (`O_NOFOLLOW`) and changed through its own
/// descriptor (`fchmod`), so no name is resolved twice and a link is never
/// followed out of the directory. Entries owned by another user than the
/// directory's are left alone, and so are entries the owner cannot open.
/// Returns how many entries changed.
pub(crate) fn tighten(dir: &Path) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let mut changed = 0;
    // The directory itself may be a link its owner made (to another disk).
    let top = File::open(dir).map_err(io(dir, "opening"))?;
    let owner = top.metadata().map_err(io(dir, "reading"))?.uid();
    changed += tighten_open(&top, dir)?;
    for name in OWNED {
        changed += tighten_tree(&top, dir, name.as_ref(), owner, 0)?;
    }
    if changed > 0 {
        tracing::warn!(
            dir = %dir.display(),
            changed,
            "the data directory was readable by others: made it and its files private to the owner (0700, 0600)"
        );
    }
    Ok(changed)
}

/// How deep below the data directory the walk goes (Sluice's own layout
/// is two levels deep).
const MAX_DEPTH: usize = 8;

/// Tightens `name` in the open directory `parent` (at `parent_path`), and
/// everything under it.
fn tighten_tree(
    parent: &File,
    parent_path: &Path,
    name: &std::ffi::OsStr,
    owner: u32,
    depth: usize,
) -> Result<usize> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let path = parent_path.join(name);
    let beneath = Path::new("/proc/self/fd").join(parent.as_raw_fd().to_string());
    let through = if beneath.exists() {
        beneath.join(name)
    } else {
        path.clone()
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&through)
    {
        Ok(file) => file,
        // Not made yet, or a symbolic link: nothing to do.
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Ok(0);
        }
        // Not something to open (a socket), or its owner shut themselves
        // out: not Sluice's doing, left as it is.
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EACCES | libc::ENXIO | libc::EPERM)
            ) =>
        {
            tracing::warn!(path = %path.display(), %error, "left as it is: cannot open it to make it private");
            return Ok(0);
        }
        Err(error) => return Err(io(&path, "opening")(error)),
    };
    let metadata = file.metadata().map_err(io(&path, "reading"))?;
    if metadata.uid() != owner {
        tracing::warn!(path = %path.display(), "left as it is: owned by another user than the data directory");
        return Ok(0);
    }
    let mut changed = tighten_open(&file, &path)?;
    if metadata.is_dir() && depth < MAX_DEPTH {
        let listed = Path::new("/proc/self/fd").join(file.as_raw_fd().to_string());
        let listed = if listed.exists() {
            listed
        } else {
            path.clone()
        };
        let entries = std::fs::read_dir(&listed).map_err(io(&path, "listing"))?;
        for entry in entries.flatten() {
            changed += tighten_tree(&file, &path, &entry.file_name(), owner, depth + 1)?;
        }
    }
    Ok(changed)
}

/// Tightens the open `file` (at `path`) through its descriptor; 1 if it
/// changed.
fn tighten_open(file: &File, path: &Path) -> Result<usize> {
    let metadata = file.metadata().map_err(io(path, "reading"))?;
    if metadata.permissions().mode() & OTHERS == 0 {
        return Ok(0);
    }
    let tight = if metadata.is_dir() { 0o700 } else { 0o600 };
    file.set_permissions(std::fs::Permissions::from_mode(tight))
        .map_err(io(path, "making private"))?;
    Ok(1)
}

fn io<'a>(path: &'a Path, doing: &'static str) -> impl Fn(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        context: format!("{doing} {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looser_modes_are_tightened_and_private_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("db");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("db");
        std::fs::write(&file, b"secret").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(tighten(dir.path()).unwrap(), 3);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(tighten(dir.path()).unwrap(), 0, "nothing left to change");
    }

    #[test]
    fn only_what_sluice_keeps_is_tightened_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let loose = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        // The user's own things beside Sluice's (a data dir in a home).
        let notes = data.join("notes.txt");
        std::fs::write(&notes, b"mine").unwrap();
        loose(&notes, 0o644);
        // A link among Sluice's names pointing out of the directory.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"not sluice's").unwrap();
        loose(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, data.join("admin.token")).unwrap();
        let artifacts = data.join("artifacts");
        std::fs::create_dir(&artifacts).unwrap();
        std::fs::write(artifacts.join("a.cwasm"), b"code").unwrap();
        loose(&artifacts.join("a.cwasm"), 0o644);
        loose(&artifacts, 0o755);
        loose(&data, 0o755);
        assert_eq!(
            tighten(&data).unwrap(),
            3,
            "the directory, the artifacts' and the artifact"
        );
        assert_eq!(mode(&artifacts), 0o700);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&artifacts.join("a.cwasm")), 0o600);
        assert_eq!(mode(&notes), 0o644, "not Sluice's: left alone");
        assert_eq!(mode(&outside), 0o644, "a link is not followed");
    }
}
