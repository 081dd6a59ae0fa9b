//! `snapshot.store = "dir"`: a local directory or a shared mount (`[snapshot.dir] path`), through
//! object_store's local file store, which writes each object aside and renames it into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;

use super::{ObjectSnapshotStore, StoreDetails, Visibility};
use crate::error::{Error, Result};

/// Files up to this size go up in one write; larger ones are copied in parts of this size.
const PART_SIZE: u64 = 8 << 20;

/// A directory as a snapshot store.
pub type DirStore = ObjectSnapshotStore<DirDetails>;

pub struct DirDetails {
    root: PathBuf,
}

impl StoreDetails for DirDetails {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn target(&self, full_key: &str) -> String {
        self.root.join(full_key).display().to_string()
    }
}

impl DirStore {
    /// Opens (creating it if needed) the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<DirStore> {
        let root: PathBuf = root.into();
        if root.as_os_str().is_empty() {
            return Err(Error::config(
                "snapshot.dir.path",
                "is required when snapshot.store = \"dir\"",
            ));
        }
        std::fs::create_dir_all(&root).map_err(|err| Error::io(root.display(), err))?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|err| {
            Error::Snapshot(format!(
                "cannot open {} as a snapshot store: {}",
                root.display(),
                super::error_chain(&err)
            ))
        })?;
        Ok(ObjectSnapshotStore::wrap(
            Arc::new(store),
            DirDetails { root },
            "",
            PART_SIZE,
            Visibility::Atomic,
            true,
        ))
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.details().root
    }
}
