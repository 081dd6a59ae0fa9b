//! Noticing the app's commits without polling: on Linux, an inotify watch on the database's `-wal` file
//! wakes the database thread whenever any connection (the app's, in this process or another) writes to it.
//! In WAL mode every commit writes its frames to that file, so a commit is never more than one wake-up away;
//! the thread then confirms it with `PRAGMA data_version` and stamps.
//!
//! Polling stays as the safety net (network file systems deliver no inotify events; a commit's wal-index
//! update can land just after the write that woke us), but at the idle interval rather than every
//! millisecond: before this, noticing a commit was most of the commit → visible-elsewhere latency.

use std::path::Path;
use std::time::Duration;

/// A running watch; dropping it stops the watcher thread (and releases the sender it holds).
pub struct CommitWatch {
    #[cfg(target_os = "linux")]
    _running: linux::Watch,
}

impl CommitWatch {
    /// Starts watching `wal` (the `-wal` file, which must exist). `wake` is called after writes to it, at
    /// most once per `min_interval` (writes meanwhile are folded into the next call), and returns false once
    /// nobody listens any more; `None` when the platform or file system cannot watch.
    pub fn start(
        wal: &Path,
        min_interval: Duration,
        wake: impl FnMut() -> bool + Send + 'static,
    ) -> Option<CommitWatch> {
        #[cfg(target_os = "linux")]
        {
            linux::Watch::start(wal, min_interval, wake)
                .map(|running| CommitWatch { _running: running })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (wal, min_interval, wake);
            None
        }
    }
}

/// Sleeps for what is left of `min_interval` since the wake-up, reading the clock once. Reading it twice
/// (`while elapsed < min { sleep(min - elapsed) }`) raced: the interval could end between the two reads, and
/// the subtraction then panicked the watcher thread (`overflow when subtracting durations`), after which
/// commits were noticed by polling only. `std::thread::sleep` never returns early, so one sleep suffices.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn pause_rest_of(
    min_interval: Duration,
    elapsed: impl FnOnce() -> Duration,
    sleep: impl FnOnce(Duration),
) {
    let rest = min_interval.saturating_sub(elapsed());
    if !rest.is_zero() {
        sleep(rest);
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustix::event::{PollFd, PollFlags};
    use rustix::fd::OwnedFd;
    use rustix::fs::inotify;
    use rustix::io::Errno;
    use tracing::{debug, warn};

    pub struct Watch {
        fd: Arc<OwnedFd>,
        wd: i32,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Watch {
        pub fn start(
            wal: &Path,
            min_interval: Duration,
            mut wake: impl FnMut() -> bool + Send + 'static,
        ) -> Option<Watch> {
            let fd = match inotify::init(inotify::CreateFlags::CLOEXEC) {
                Ok(fd) => Arc::new(fd),
                Err(err) => {
                    warn!(error = %err, "inotify unavailable: noticing commits by polling");
                    return None;
                }
            };
            let wd = match inotify::add_watch(&*fd, wal, inotify::WatchFlags::MODIFY) {
                Ok(wd) => wd,
                Err(err) => {
                    warn!(wal = %wal.display(), error = %err, "cannot watch the WAL file: noticing commits by polling");
                    return None;
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (reader_fd, reader_stop) = (fd.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name("harmonylite-wal".into())
                .spawn(move || {
                    // Only "something was written" matters, not which events: one wake per read.
                    let mut buf = [0u8; 4096];
                    // Bounded waits, so the thread also ends when the watch vanished with its file
                    // (then no event would ever end a blocking read).
                    let limit = rustix::event::Timespec {
                        tv_sec: 0,
                        tv_nsec: 200_000_000,
                    };
                    while !reader_stop.load(Ordering::Acquire) {
                        let mut fds = [PollFd::new(&*reader_fd, PollFlags::IN)];
                        match rustix::event::poll(&mut fds, Some(&limit)) {
                            Ok(0) | Err(Errno::INTR) => continue,
                            Ok(_) => {}
                            Err(err) => {
                                warn!(error = %err, "waiting for inotify events failed: noticing commits by polling");
                                break;
                            }
                        }
                        match rustix::io::read(&*reader_fd, &mut buf[..]) {
                            Ok(_) => {
                                if reader_stop.load(Ordering::Acquire) || !wake() {
                                    break;
                                }
                                // Events queued meanwhile are read (and folded) after the pause.
                                let woke = Instant::now();
                                super::pause_rest_of(
                                    min_interval,
                                    || woke.elapsed(),
                                    std::thread::sleep,
                                );
                            }
                            Err(Errno::INTR) => {}
                            Err(err) => {
                                warn!(error = %err, "reading inotify events failed: noticing commits by polling");
                                break;
                            }
                        }
                    }
                    debug!("WAL watcher stopped");
                })
                .ok()?;
            Some(Watch {
                fd,
                wd,
                stop,
                thread: Some(thread),
            })
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            // Removing the watch queues an IN_IGNORED event, which ends the watcher's wait at once; if the
            // watch is already gone (with its file), the wait ends within its time limit.
            let _ = inotify::remove_watch(&*self.fd, self.wd);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::CommitWatch;

    #[test]
    fn a_write_to_the_file_wakes_and_dropping_stops_the_watcher() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = dir.path().join("app.db-wal");
        std::fs::write(&wal, b"").expect("create");
        let (woke, wakes) = mpsc::channel();
        let watch = CommitWatch::start(&wal, Duration::from_micros(500), move || {
            woke.send(()).is_ok()
        })
        .expect("inotify");
        assert!(
            wakes.recv_timeout(Duration::from_millis(300)).is_err(),
            "woke without a write"
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&wal)
            .expect("open");
        file.write_all(b"frame").expect("write");
        wakes
            .recv_timeout(Duration::from_secs(30))
            .expect("a write must wake the watcher");
        // Dropping joins the thread, which drops the callback and with it the sender.
        drop(watch);
        while wakes.try_recv().is_ok() {}
        assert_eq!(
            wakes.recv_timeout(Duration::from_secs(30)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn the_pause_after_a_wake_never_underflows() {
        let min = Duration::from_micros(500);
        // The interval ended before the clock was read: no sleep, no panic (this read-twice race panicked).
        let mut slept = Vec::new();
        super::pause_rest_of(min, || Duration::from_micros(600), |d| slept.push(d));
        assert!(slept.is_empty(), "{slept:?}");
        super::pause_rest_of(min, || min, |d| slept.push(d));
        assert!(slept.is_empty(), "{slept:?}");
        super::pause_rest_of(
            Duration::ZERO,
            || Duration::from_nanos(1),
            |d| slept.push(d),
        );
        assert!(slept.is_empty(), "{slept:?}");
        // Otherwise it sleeps exactly for the rest of the interval, once.
        super::pause_rest_of(min, || Duration::from_micros(200), |d| slept.push(d));
        assert_eq!(slept, vec![Duration::from_micros(300)]);
    }

    #[test]
    fn the_watcher_survives_writes_that_race_its_pause() {
        // Intervals of the order of one clock read made the old code's two reads straddle the end of the
        // interval (the race seen under load); thousands of wakes must all be delivered to a live thread.
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = dir.path().join("app.db-wal");
        std::fs::write(&wal, b"").expect("create");
        let (woke, wakes) = mpsc::channel();
        let watch = CommitWatch::start(&wal, Duration::from_nanos(40), move || {
            woke.send(()).is_ok()
        })
        .expect("inotify");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&wal)
            .expect("open");
        let mut received = 0;
        for _ in 0..2_000 {
            file.write_all(b"f").expect("write");
            wakes
                .recv_timeout(Duration::from_secs(30))
                .expect("the watcher must still be alive and wake for each write");
            received += 1;
        }
        assert_eq!(received, 2_000);
        drop(watch);
    }

    #[test]
    fn a_missing_file_means_polling() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(
            CommitWatch::start(&dir.path().join("absent-wal"), Duration::ZERO, || true).is_none()
        );
    }
}
