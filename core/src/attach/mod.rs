//! Several processes, one replicator (ADR 0010).
//!
//! One database file on one host has at most one running replicator. The process that holds the node lock
//! (`lock.rs`, a POSIX record lock on `<db>.harmonylite/replicator.lock`, released by the kernel when the
//! process dies) runs it and serves a Unix socket beside the lock (`server.rs`); every other process that
//! opens the same file attaches to that socket (`client.rs`) and keeps trying the lock, so one of them takes
//! over when the replicator exits or is killed. `protocol.rs` is what travels on the socket.

pub(crate) mod client;
pub(crate) mod lock;
pub(crate) mod protocol;
pub(crate) mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::Replicator;
use crate::error::Result;
use protocol::{Answer, Request};

const SOCKET_FILE: &str = "replicator.sock";
/// `sun_path` holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 100;

/// Where the replicator of the node whose (canonical) state folder is `state_dir` listens:
/// `<state_dir>/replicator.sock`, or, when that path is too long for a Unix socket, a name in `/tmp` derived
/// from the folder (the same in every process, whatever its `$TMPDIR`).
pub(crate) fn socket_path(state_dir: &Path) -> PathBuf {
    let beside = state_dir.join(SOCKET_FILE);
    if beside.as_os_str().len() <= MAX_SOCKET_PATH {
        return beside;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/tmp").join(format!("harmonylite-{hex}.sock"))
}

/// Runs one request against the local replicator: the attach server answers its clients with this, and a
/// handle whose process runs the replicator calls it directly, so both paths behave the same.
pub(crate) async fn answer(
    replicator: &Replicator,
    attached: u32,
    request: Request,
) -> Result<Answer> {
    match request {
        Request::Status => {
            let mut status = replicator.status_inner().await?;
            status.attached_handles = attached;
            Ok(Answer::Status(Box::new(status)))
        }
        Request::RecentStatus => {
            let mut status = replicator.recent_status().await?;
            status.attached_handles = attached;
            Ok(Answer::Status(Box::new(status)))
        }
        Request::Metrics { prefix } => replicator.metrics_inner(&prefix).await.map(Answer::Metrics),
        Request::Sync { timeout_ms } => replicator
            .sync_inner(Duration::from_millis(timeout_ms))
            .await
            .map(Answer::Token),
        Request::WaitReady { timeout_ms } => replicator
            .wait_ready(Duration::from_millis(timeout_ms))
            .await
            .map(|()| Answer::Done),
        Request::SaveSnapshot => replicator.save_snapshot_inner().await.map(Answer::Snapshot),
        // Handled by the server itself (it starts forwarding events on that connection).
        Request::Events => Ok(Answer::Done),
        Request::Conflicts { after, limit } => replicator
            .conflicts_inner(after, limit as usize)
            .await
            .map(Answer::Conflicts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_state_folders_get_a_short_socket_path() {
        let short = Path::new("/srv/app/app.db.harmonylite");
        assert_eq!(socket_path(short), short.join("replicator.sock"));
        let long = PathBuf::from(format!("/srv/{}/app.db.harmonylite", "x".repeat(120)));
        let path = socket_path(&long);
        assert!(path.as_os_str().len() <= MAX_SOCKET_PATH, "{path:?}");
        assert_eq!(path, socket_path(&long), "stable");
        assert_ne!(
            path,
            socket_path(&PathBuf::from(format!(
                "/srv/{}/other.db.harmonylite",
                "x".repeat(120)
            )))
        );
    }
}
