//! The file operations of the delivery journal, behind a small trait.
//!
//! The journal (`journal.rs`) does every read, write, sync, rename and
//! delete of its segment files through [`Disk`], so a test can run it on
//! [`sim::SimDisk`]: a simulated disk that remembers, per file and per
//! directory, what was written and what was synced, and on a "power cut"
//! keeps only what was synced (plus, for unsynced data, a random prefix of
//! it, torn mid-frame). SIGKILL keeps the page cache, so no crash test of
//! the real binary can tell a missing `fsync` from a present one; this can.
//!
//! [`OsDisk`] is the real thing: `std::fs`, with `fdatasync` for file syncs
//! and an `fsync` of the directory for directory syncs.

use std::io;
use std::path::Path;

/// A file open for appending.
pub(crate) trait DiskFile: Send {
    /// Appends all of `bytes`.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was appended durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
}

/// Where the journal's files live.
pub(crate) trait Disk: Send + Sync {
    /// Creates `dir` and its parents (not synced: see [`Disk::sync_dir`]).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `len` bytes of `path` from `offset`.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Opens `path` for appending, creating it if needed (its name is not
    /// durable until its directory is synced).
    fn append_to(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Cuts `path` to `len` bytes (not synced).
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes the content of `path` durable.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing it (not synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes `path` (not synced).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (created, renamed, deleted) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default)]
pub(crate) struct OsDisk;

impl DiskFile for std::fs::File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Disk for OsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path)?;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn append_to(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(len)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// A simulated disk for power-cut tests.
#[cfg(test)]
pub(crate) mod sim {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use super::{Disk, DiskFile};

    /// A small deterministic random number generator (splitmix64).
    #[derive(Clone, Debug)]
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A number in `0..n` (0 when `n` is 0).
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            if n == 0 { 0 } else { self.next() % n }
        }

        pub(crate) fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
    }

    #[derive(Clone, Debug, Default)]
    struct File {
        /// What a reader sees now (the page cache).
        current: Vec<u8>,
        /// What is on the platter.
        durable: Vec<u8>,
    }

    #[derive(Clone, Debug, Default)]
    struct Dir {
        current: BTreeSet<String>,
        durable: BTreeSet<String>,
    }

    #[derive(Clone, Debug, Default)]
    struct State {
        /// Directories by path. A directory's own existence is an entry in
        /// its parent; the root (`/`) always exists.
        dirs: BTreeMap<PathBuf, Dir>,
        /// File contents by path, kept after deletion (a deletion that was
        /// not synced may come back).
        files: BTreeMap<PathBuf, File>,
        power: Power,
    }

    /// When the power goes: at a chosen operation, so that a cut can fall
    /// between any two operations of any thread (a roll's sync and the
    /// next segment's creation, two deletions, ...).
    #[derive(Clone, Debug, Default)]
    struct Power {
        /// Operations that changed something (or tried to), so far.
        ops: u64,
        /// The operation before which the power goes off.
        off_at: Option<u64>,
        /// Off: every operation that would change something fails.
        off: bool,
        /// The disk as it was when the power went off.
        image: Option<Box<State>>,
    }

    /// A disk in memory that knows what was synced.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct SimDisk {
        state: Arc<Mutex<State>>,
    }

    fn split(path: &Path) -> io::Result<(PathBuf, String)> {
        let parent = path.parent().ok_or_else(|| io::Error::other("no parent"))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("no file name"))?;
        Ok((parent.to_path_buf(), name.to_string()))
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", path.display()),
        )
    }

    impl State {
        /// Counts an operation that changes the disk, and refuses it once
        /// the power is off (taking the disk's image as it goes off).
        fn tick(&mut self) -> io::Result<()> {
            if !self.power.off {
                self.power.ops += 1;
                if self.power.off_at == Some(self.power.ops) {
                    self.power_off();
                }
            }
            if self.power.off {
                return Err(io::Error::other("the power is off"));
            }
            Ok(())
        }

        fn power_off(&mut self) {
            let mut image = self.clone();
            image.power = Power::default();
            self.power.image = Some(Box::new(image));
            self.power.off = true;
        }

        fn exists(&self, path: &Path) -> bool {
            match split(path) {
                Ok((parent, name)) => self
                    .dirs
                    .get(&parent)
                    .is_some_and(|d| d.current.contains(&name)),
                Err(_) => true,
            }
        }

        fn file(&mut self, path: &Path) -> io::Result<&mut File> {
            if !self.exists(path) {
                return Err(not_found(path));
            }
            self.files.get_mut(path).ok_or_else(|| not_found(path))
        }
    }

    impl SimDisk {
        /// A disk whose root directory exists.
        pub(crate) fn new() -> SimDisk {
            let disk = SimDisk::default();
            disk.state
                .lock()
                .unwrap()
                .dirs
                .insert(PathBuf::from("/"), Dir::default());
            disk
        }

        /// Turns the power off before the `n`+1-th operation from now that
        /// changes the disk (on any thread); that one and all later fail.
        pub(crate) fn power_off_after(&self, n: u64) {
            let mut state = self.state.lock().unwrap();
            state.power.off_at = Some(state.power.ops + n + 1);
        }

        /// Turns the power off now.
        pub(crate) fn power_off_now(&self) {
            let mut state = self.state.lock().unwrap();
            if !state.power.off {
                state.power_off();
            }
        }

        /// Whether the power is off.
        pub(crate) fn is_off(&self) -> bool {
            self.state.lock().unwrap().power.off
        }

        /// The disk as it was when the power went off (as it is now, if it
        /// is still on), with the power on: what a process killed at that
        /// moment leaves (the page cache survives), independent of this
        /// disk, which the dead process's threads may still be using.
        pub(crate) fn image(&self) -> SimDisk {
            let state = self.state.lock().unwrap();
            let image = match &state.power.image {
                Some(image) => (**image).clone(),
                None => {
                    let mut image = state.clone();
                    image.power = Power::default();
                    image
                }
            };
            SimDisk {
                state: Arc::new(Mutex::new(image)),
            }
        }

        /// The disk as a power cut now leaves it: what was synced, and of
        /// what was not, a random part (a random prefix of unsynced
        /// appends; unsynced creations, deletions and truncations each
        /// kept or lost).
        pub(crate) fn after_power_cut(&self, rng: &mut Rng) -> SimDisk {
            let mut old = self.state.lock().unwrap().clone();
            if let Some(image) = old.power.image.take() {
                old = *image;
            }
            let mut new = State::default();
            for (path, dir) in &old.dirs {
                let mut kept = Dir::default();
                for name in dir.current.union(&dir.durable) {
                    let keep = match (dir.current.contains(name), dir.durable.contains(name)) {
                        (true, true) => true,
                        _ => rng.chance(2),
                    };
                    if keep {
                        kept.current.insert(name.clone());
                        kept.durable.insert(name.clone());
                    }
                }
                new.dirs.insert(path.clone(), kept);
            }
            // A directory whose entry was lost is gone, with what is in it.
            loop {
                let gone: Vec<PathBuf> = new
                    .dirs
                    .keys()
                    .filter(|p| p.as_path() != Path::new("/") && !new.exists(p))
                    .cloned()
                    .collect();
                if gone.is_empty() {
                    break;
                }
                for path in gone {
                    new.dirs.remove(&path);
                }
            }
            for (path, file) in &old.files {
                if !new.exists(path) {
                    continue;
                }
                let content = if file.current.starts_with(&file.durable) {
                    let extra = (file.current.len() - file.durable.len()) as u64;
                    let keep = file.durable.len() + rng.below(extra + 1) as usize;
                    file.current[..keep].to_vec()
                } else if rng.chance(2) {
                    file.durable.clone()
                } else {
                    file.current.clone()
                };
                new.files.insert(
                    path.clone(),
                    File {
                        durable: content.clone(),
                        current: content,
                    },
                );
            }
            SimDisk {
                state: Arc::new(Mutex::new(new)),
            }
        }

        /// The current content of `path`, for tests that damage files.
        pub(crate) fn contents(&self, path: &Path) -> Option<Vec<u8>> {
            let mut state = self.state.lock().unwrap();
            state.file(path).ok().map(|f| f.current.clone())
        }

        /// Replaces the content of `path` (durably), for tests that damage
        /// files.
        pub(crate) fn set_contents(&self, path: &Path, bytes: Vec<u8>) {
            let mut state = self.state.lock().unwrap();
            let file = state.file(path).unwrap();
            file.durable = bytes.clone();
            file.current = bytes;
        }
    }

    struct SimFile {
        disk: SimDisk,
        path: PathBuf,
    }

    impl DiskFile for SimFile {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut state = self.disk.state.lock().unwrap();
            state.tick()?;
            // An open file stays writable after its name is deleted.
            let file = state
                .files
                .get_mut(&self.path)
                .ok_or_else(|| not_found(&self.path))?;
            file.current.extend_from_slice(bytes);
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            let mut state = self.disk.state.lock().unwrap();
            state.tick()?;
            let file = state
                .files
                .get_mut(&self.path)
                .ok_or_else(|| not_found(&self.path))?;
            file.durable = file.current.clone();
            Ok(())
        }
    }

    impl Disk for SimDisk {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state.tick()?;
            let mut at = PathBuf::from("/");
            for part in dir.components().skip(1) {
                let name = part.as_os_str().to_string_lossy().to_string();
                let child = at.join(&name);
                let parent = state.dirs.get_mut(&at).ok_or_else(|| not_found(&at))?;
                if parent.current.insert(name) || !state.dirs.contains_key(&child) {
                    state.dirs.insert(child.clone(), Dir::default());
                }
                at = child;
            }
            Ok(())
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            let state = self.state.lock().unwrap();
            let dir = state.dirs.get(dir).ok_or_else(|| not_found(dir))?;
            Ok(dir.current.iter().cloned().collect())
        }

        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let mut state = self.state.lock().unwrap();
            Ok(state.file(path)?.current.clone())
        }

        fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            let mut state = self.state.lock().unwrap();
            let file = state.file(path)?;
            let start = usize::try_from(offset).map_err(io::Error::other)?;
            file.current
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short read"))
        }

        fn append_to(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
            let mut state = self.state.lock().unwrap();
            state.tick()?;
            let (parent, name) = split(path)?;
            let dir = state
                .dirs
                .get_mut(&parent)
                .ok_or_else(|| not_found(&parent))?;
            if dir.current.insert(name) {
                state.files.insert(path.to_path_buf(), File::default());
            }
            Ok(Box::new(SimFile {
                disk: self.clone(),
                path: path.to_path_buf(),
            }))
        }

        fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state.tick()?;
            let file = state.file(path)?;
            file.current
                .truncate(usize::try_from(len).map_err(io::Error::other)?);
            Ok(())
        }

        fn sync_file(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state.tick()?;
            let file = state.file(path)?;
            file.durable = file.current.clone();
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            // Simplified: the renamed name carries `from`'s data (synced as
            // it was); the entries change like any other, durable once the
            // directory is synced.
            let mut state = self.state.lock().unwrap();
            state.tick()?;
            let content = state.file(from)?.clone();
            let (from_dir, from_name) = split(from)?;
            let (to_dir, to_name) = split(to)?;
            state
                .dirs
                .get_mut(&from_dir)
                .ok_or_else(|| not_found(&from_dir))?
                .current
                .remove(&from_name);
            state
                .dirs
                .get_mut(&to_dir)
                .ok_or_else(|| not_found(&to_dir))?
                .current
                .insert(to_name);
            state.files.insert(to.to_path_buf(), content);
            Ok(())
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state.tick()?;
            let (parent, name) = split(path)?;
            let dir = state
                .dirs
                .get_mut(&parent)
                .ok_or_else(|| not_found(&parent))?;
            if !dir.current.remove(&name) {
                return Err(not_found(path));
            }
            Ok(())
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state.tick()?;
            let entry = state.dirs.get_mut(dir).ok_or_else(|| not_found(dir))?;
            entry.durable = entry.current.clone();
            Ok(())
        }
    }
}
