//! The data directory is private to its owner: `0700` for directories,
//! `0600` for files (it holds function secrets and token hashes).
//!
//! New directories are created so by the store; new files by the server,
//! which sets its umask to `077` before it opens the store. A data
//! directory from an earlier version, or copied with looser modes, is
//! tightened here at open, with one log line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::{Result, StoreError};

/// Mode bits of group and others.
const OTHERS: u32 = 0o077;

/// Takes every permission of group and others off `dir` and everything in
/// it (symbolic links are left alone). Returns how many entries changed.
pub(crate) fn tighten(dir: &Path) -> Result<usize> {
    let mut changed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let metadata = std::fs::symlink_metadata(&path).map_err(|source| StoreError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        if metadata.file_type().is_symlink() {
            continue;
        }
        let mode = metadata.permissions().mode();
        if mode & OTHERS != 0 {
            let tight = if metadata.is_dir() { 0o700 } else { 0o600 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(tight)).map_err(
                |source| StoreError::Io {
                    context: format!("making {} private", path.display()),
                    source,
                },
            )?;
            changed += 1;
        }
        if metadata.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|source| StoreError::Io {
                context: format!("listing {}", path.display()),
                source,
            })?;
            stack.extend(entries.flatten().map(|e| e.path()));
        }
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
}
