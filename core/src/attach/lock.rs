//! The node lock: the right to run the replicator of one database file on this host.
//!
//! A POSIX record lock (`fcntl(F_SETLK)`) on `<state folder>/replicator.lock`. The kernel releases it when the
//! process exits or is killed, and — unlike `flock` and OFD locks — a child made by `fork()` does not inherit
//! it, so a forked worker can never keep a dead parent's lock alive. POSIX locks belong to the process, not to
//! a file descriptor: a second open in the same process would "succeed", and closing *any* descriptor of the
//! file would drop the lock. So this module is the only code that opens the file, and a process-wide registry
//! answers for the opens of this process before the kernel is asked.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};

const LOCK_FILE: &str = "replicator.lock";
/// Who holds the lock (for messages only; never trusted for correctness).
const HOLDER_FILE: &str = "replicator.json";

fn held_here() -> MutexGuard<'static, HashSet<PathBuf>> {
    static HELD: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held while this process runs the node's replicator; released on drop.
#[derive(Debug)]
pub(crate) struct NodeLock {
    path: PathBuf,
    file: Option<File>,
}

impl NodeLock {
    /// Takes the lock of the node whose canonical state folder is `state_dir`, or `None` when another
    /// process, or another handle of this one, holds it.
    pub(crate) fn try_acquire(state_dir: &Path) -> Result<Option<NodeLock>> {
        let Some(lock) = NodeLock::try_lock(state_dir)? else {
            return Ok(None);
        };
        let holder = serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "since_ms": crate::clock::wall_millis(),
        });
        if let Err(err) = std::fs::write(state_dir.join(HOLDER_FILE), holder.to_string()) {
            tracing::debug!(%err, "could not record the replicator's pid");
        }
        Ok(Some(lock))
    }

    fn try_lock(state_dir: &Path) -> Result<Option<NodeLock>> {
        let path = state_dir.join(LOCK_FILE);
        let mut held = held_here();
        if held.contains(&path) {
            return Ok(None);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| Error::io(path.display(), err))?;
        if !lock_file(&file).map_err(|err| Error::io(path.display(), err))? {
            // Nobody in this process holds a lock on the file, so closing this descriptor drops nothing.
            return Ok(None);
        }
        held.insert(path.clone());
        Ok(Some(NodeLock {
            path,
            file: Some(file),
        }))
    }

    /// Whether some process (this one included) holds the lock right now.
    #[cfg(test)]
    pub(crate) fn is_held(state_dir: &Path) -> Result<bool> {
        Ok(NodeLock::try_lock(state_dir)?.is_none())
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        let mut held = held_here();
        drop(self.file.take()); // closing the only descriptor releases the lock
        held.remove(&self.path);
    }
}

/// The pid the last holder recorded (it may have exited since).
pub(crate) fn recorded_holder(state_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(state_dir.join(HOLDER_FILE)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .get("pid")?
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
}

#[cfg(unix)]
fn lock_file(file: &File) -> std::io::Result<bool> {
    use rustix::fs::{fcntl_lock, FlockOperation};
    use rustix::io::Errno;
    match fcntl_lock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        // POSIX allows either for "held by another process".
        Err(err) if err == Errno::AGAIN || err == Errno::ACCESS => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Without POSIX record locks every open runs its own replicator, as before ADR 0010.
#[cfg(not(unix))]
fn lock_file(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_folder_in_a_process_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let other = tempfile::tempdir().expect("temp dir");
        let lock = NodeLock::try_acquire(dir.path())
            .expect("lock")
            .expect("free");
        assert!(NodeLock::try_acquire(dir.path()).expect("ask").is_none());
        assert!(NodeLock::is_held(dir.path()).expect("ask"));
        assert!(
            NodeLock::try_acquire(dir.path()).expect("ask").is_none(),
            "asking does not drop the lock"
        );
        assert_eq!(recorded_holder(dir.path()), Some(std::process::id()));
        let independent = NodeLock::try_acquire(other.path()).expect("lock");
        assert!(independent.is_some());
        drop(lock);
        assert!(!NodeLock::is_held(dir.path()).expect("ask"));
        assert!(NodeLock::try_acquire(dir.path()).expect("lock").is_some());
    }
}
