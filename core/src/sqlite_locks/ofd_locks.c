/*
 * Lets the engine's own copy of SQLite share a file with any other SQLite copy in the process (Linux).
 * See ADR 0012 and sqlite_locks/mod.rs.
 *
 * SQLite's unix VFS locks with POSIX fcntl() record locks. Those belong to the process: two SQLite
 * copies in one process (the engine's bundled one and an app's apsw, better-sqlite3, a statically
 * linked Python sqlite3...) never exclude each other, and closing ANY descriptor of a file drops
 * every POSIX lock the process holds on it. Both corrupt databases.
 *
 * Through the VFS's xSetSystemCall this file replaces three system calls of the engine's copy only:
 *
 * fcntl  F_GETLK/F_SETLK/F_SETLKW become F_OFD_GETLK/F_OFD_SETLK/F_OFD_SETLKW, ALWAYS issued on one
 *        descriptor per inode that this file opens itself (the "lock descriptor"). An OFD lock belongs
 *        to an open file description and conflicts with POSIX locks even inside one process, so the
 *        copy excludes other copies as another process would. Routing every lock of an inode through
 *        one description keeps the semantics SQLite's unixInodeInfo bookkeeping was written for
 *        (one lock owner per inode per copy): SQLite counts shared locks per inode and issues the
 *        fcntl() on whichever connection's descriptor comes first or last; on separate descriptions
 *        a shared lock taken through one connection and released through another would stay held,
 *        and two connections of the copy would block each other.
 *
 * close  A descriptor of a regular file that still has a name is not closed, since that would drop the
 *        other copies' POSIX locks on the file. It is kept, and the copy's own locks on the inode are
 *        released (what a POSIX close does for the copy; SQLite relies on it for the -shm file's
 *        dead-man-switch lock). A kept descriptor is handed out again when the copy reopens the same
 *        file with the same access mode, so open/close loops do not grow the process's descriptors.
 *        A file that lost its name (deleted) has its kept descriptors closed once the copy holds
 *        no descriptor of it.
 *
 * open   Hands out a kept descriptor of the same inode and access mode instead of a new one; records
 *        every descriptor it returns so that close() and the collector know which are the copy's.
 *
 * fork   A child shares the parent's open file descriptions, so a lock descriptor inherited by a child
 *        would keep the parent's locks alive after the parent died. The child closes the shim's own
 *        descriptors (lock and kept ones) at once (pthread_atfork): it has no locks of its own yet, and
 *        the parent's locks stay with the parent's references.
 *
 * Descriptors 0-2 are never kept or handed out (SQLite's robust_open refuses them and retries).
 * The tables are small arrays under one mutex, which is a leaf lock: it is taken inside SQLite's
 * inode mutexes and never held while blocking.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sqlite3.h"

/* A descriptor the copy opened: in use by SQLite (live) or closed by SQLite and kept. */
struct tracked_fd {
  int fd;
  int kept;
  int accmode;
  dev_t dev;
  ino_t ino;
};

/* One per inode the copy has locked: the descriptor every lock of that inode goes through. */
struct lock_owner {
  dev_t dev;
  ino_t ino;
  int lock_fd;
};

static pthread_mutex_t table_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct tracked_fd *fds;
static size_t fds_len, fds_cap;
static struct lock_owner *owners;
static size_t owners_len, owners_cap;

static int (*real_open)(const char *, int, ...) = open;

static int grow(void **items, size_t *cap, size_t len, size_t size) {
  if (len < *cap) return 0;
  size_t next = *cap ? *cap * 2 : 16;
  void *bigger = realloc(*items, next * size);
  if (bigger == NULL) return -1;
  *items = bigger;
  *cap = next;
  return 0;
}

static struct tracked_fd *find_fd(int fd) {
  for (size_t i = 0; i < fds_len; i++)
    if (fds[i].fd == fd) return &fds[i];
  return NULL;
}

static void remove_fd(struct tracked_fd *entry) {
  *entry = fds[--fds_len];
}

static struct lock_owner *find_owner(dev_t dev, ino_t ino) {
  for (size_t i = 0; i < owners_len; i++)
    if (owners[i].dev == dev && owners[i].ino == ino) return &owners[i];
  return NULL;
}

static int live_fds_of(dev_t dev, ino_t ino) {
  int n = 0;
  for (size_t i = 0; i < fds_len; i++)
    if (!fds[i].kept && fds[i].dev == dev && fds[i].ino == ino) n++;
  return n;
}

static void track(int fd, const struct stat *st, int accmode) {
  struct tracked_fd *entry = find_fd(fd);
  if (entry == NULL) {
    if (grow((void **)&fds, &fds_cap, fds_len, sizeof *fds) != 0) return; /* untracked: closed as usual */
    entry = &fds[fds_len++];
  }
  entry->fd = fd;
  entry->kept = 0;
  entry->accmode = accmode;
  entry->dev = st->st_dev;
  entry->ino = st->st_ino;
}

/*
 * Closes what belongs to deleted files the copy no longer uses: their kept descriptors and their lock
 * descriptor. Nothing can reopen such a file by name, so nothing else in the process can be using it
 * through a lock these descriptors would drop... except a descriptor opened before the deletion, whose
 * POSIX locks on the nameless inode no longer protect anyone.
 */
static void collect_deleted(void) {
  struct stat st;
  for (size_t i = 0; i < fds_len;) {
    if (fds[i].kept && (fstat(fds[i].fd, &st) != 0 || st.st_nlink == 0) &&
        live_fds_of(fds[i].dev, fds[i].ino) == 0) {
      close(fds[i].fd);
      remove_fd(&fds[i]);
      continue;
    }
    i++;
  }
  for (size_t i = 0; i < owners_len;) {
    if ((fstat(owners[i].lock_fd, &st) != 0 || st.st_nlink == 0) &&
        live_fds_of(owners[i].dev, owners[i].ino) == 0) {
      close(owners[i].lock_fd);
      owners[i] = owners[--owners_len];
      continue;
    }
    i++;
  }
}

/* The lock descriptor of fd's inode, opened (read-write when the file allows it, so that write locks
 * work whichever connection locks first) at the inode's first lock. -1 with errno set on failure. */
static int lock_fd_for(int fd) {
  struct stat st;
  /* A descriptor the copy opened through this file has its inode recorded: SQLite locks several times per
   * transaction, and an fstat() for each lock was most of the shim's cost on a busy writer. */
  struct tracked_fd *known = find_fd(fd);
  if (known != NULL && !known->kept) {
    struct lock_owner *owner = find_owner(known->dev, known->ino);
    if (owner != NULL) return owner->lock_fd;
  }
  if (fstat(fd, &st) != 0) return -1;
  struct lock_owner *owner = find_owner(st.st_dev, st.st_ino);
  if (owner != NULL) return owner->lock_fd;

  int accmode = fcntl(fd, F_GETFL) & O_ACCMODE;
  int lock_fd = -1;
  if (accmode != O_RDWR) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    lock_fd = real_open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (lock_fd >= 0 && lock_fd < 3) {
      /* stdin/out/err were closed: move up, and keep the low one (closing it would drop locks). */
      int moved = fcntl(lock_fd, F_DUPFD_CLOEXEC, 3);
      lock_fd = moved;
    }
  }
  if (lock_fd < 0) lock_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (lock_fd < 0) return -1;
  if (grow((void **)&owners, &owners_cap, owners_len, sizeof *owners) != 0) {
    errno = ENOMEM;
    return -1; /* lock_fd leaks; it is never closed, which is the safe side */
  }
  owners[owners_len].dev = st.st_dev;
  owners[owners_len].ino = st.st_ino;
  owners[owners_len].lock_fd = lock_fd;
  owners_len++;
  /* A descriptor opened before the shim was installed is the copy's too: count it as in use. */
  if (find_fd(fd) == NULL) track(fd, &st, accmode);
  return lock_fd;
}

static int harmonylite_fcntl(int fd, int cmd, ...) {
  int ofd_cmd = 0;
  va_list args;
  switch (cmd) {
    case F_GETLK: ofd_cmd = F_OFD_GETLK; break;
    case F_SETLK: ofd_cmd = F_OFD_SETLK; break;
    case F_SETLKW: ofd_cmd = F_OFD_SETLKW; break;
    default: break;
  }
  va_start(args, cmd);
  if (!ofd_cmd) {
    /* SQLite's other uses (F_GETFD, F_SETFD, F_GETFL) take an int. */
    int value = va_arg(args, int);
    va_end(args);
    return fcntl(fd, cmd, value);
  }
  struct flock *lock = va_arg(args, struct flock *);
  va_end(args);
  pthread_mutex_lock(&table_mutex);
  int lock_fd = lock_fd_for(fd);
  pthread_mutex_unlock(&table_mutex);
  if (lock_fd < 0) return -1;
  /* lock_fd stays open while fd is in use (collect_deleted spares inodes with live descriptors). */
  lock->l_pid = 0; /* required by the OFD commands */
  return fcntl(lock_fd, ofd_cmd, lock);
}

static int harmonylite_open(const char *path, int flags, int mode) {
  struct stat st;
  int accmode = flags & O_ACCMODE;
  pthread_mutex_lock(&table_mutex);
  collect_deleted();
  if ((flags & (O_EXCL | O_TRUNC)) == 0 &&
      ((flags & O_NOFOLLOW) ? lstat(path, &st) : stat(path, &st)) == 0 && S_ISREG(st.st_mode)) {
    for (size_t i = 0; i < fds_len; i++) {
      struct stat kept;
      if (fds[i].kept && fds[i].dev == st.st_dev && fds[i].ino == st.st_ino && fds[i].accmode == accmode &&
          fstat(fds[i].fd, &kept) == 0 && kept.st_nlink > 0) {
        fds[i].kept = 0;
        int fd = fds[i].fd;
        pthread_mutex_unlock(&table_mutex);
        return fd;
      }
    }
  }
  int fd = real_open(path, flags, mode);
  if (fd >= 3 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) track(fd, &st, accmode);
  pthread_mutex_unlock(&table_mutex);
  return fd;
}

static int harmonylite_close(int fd) {
  struct stat st;
  pthread_mutex_lock(&table_mutex);
  struct tracked_fd *entry = find_fd(fd);
  if (fd < 3 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (entry != NULL) remove_fd(entry);
    pthread_mutex_unlock(&table_mutex);
    return close(fd);
  }
  /* What a POSIX close does to the copy: its locks on the inode are gone. */
  struct lock_owner *owner = find_owner(st.st_dev, st.st_ino);
  if (owner != NULL) {
    struct flock unlock;
    memset(&unlock, 0, sizeof unlock);
    unlock.l_type = F_UNLCK;
    unlock.l_whence = SEEK_SET; /* l_start = l_len = 0: the whole file */
    fcntl(owner->lock_fd, F_OFD_SETLK, &unlock);
  }
  int rc = 0;
  if (st.st_nlink > 0) {
    if (entry == NULL) {
      track(fd, &st, fcntl(fd, F_GETFL) & O_ACCMODE);
      entry = find_fd(fd);
    }
    if (entry != NULL) entry->kept = 1; /* else: cannot record it, so keep it open untracked */
  } else {
    if (entry != NULL) remove_fd(entry);
    rc = close(fd);
  }
  collect_deleted();
  pthread_mutex_unlock(&table_mutex);
  return rc;
}

static void before_fork(void) { pthread_mutex_lock(&table_mutex); }
static void after_fork_in_parent(void) { pthread_mutex_unlock(&table_mutex); }
static void after_fork_in_child(void) {
  for (size_t i = 0; i < owners_len; i++) close(owners[i].lock_fd);
  owners_len = 0;
  for (size_t i = 0; i < fds_len; i++)
    if (fds[i].kept) close(fds[i].fd);
  fds_len = 0; /* the inherited live descriptors belong to connections the child must not use */
  pthread_mutex_unlock(&table_mutex);
}

/* Installs the replacements in the copy's unix VFS; call before the copy opens any file.
 * Returns an SQLite result code. */
int harmonylite_sqlite_use_ofd_locks(void) {
  sqlite3_vfs *vfs = sqlite3_vfs_find("unix");
  int rc;
  if (vfs == 0 || vfs->iVersion < 3 || vfs->xSetSystemCall == 0) return SQLITE_ERROR;
  if (pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child) != 0) return SQLITE_ERROR;
  rc = vfs->xSetSystemCall(vfs, "open", (sqlite3_syscall_ptr)harmonylite_open);
  if (rc != SQLITE_OK) return rc;
  rc = vfs->xSetSystemCall(vfs, "fcntl", (sqlite3_syscall_ptr)harmonylite_fcntl);
  if (rc != SQLITE_OK) return rc;
  return vfs->xSetSystemCall(vfs, "close", (sqlite3_syscall_ptr)harmonylite_close);
}

/* For tests: how many descriptors the shim holds (kept + lock descriptors), and how many it tracks. */
void harmonylite_sqlite_fd_counts(int *kept, int *lock_fds, int *live) {
  pthread_mutex_lock(&table_mutex);
  int k = 0, l = 0;
  for (size_t i = 0; i < fds_len; i++) {
    if (fds[i].kept) k++; else l++;
  }
  *kept = k;
  *lock_fds = (int)owners_len;
  *live = l;
  pthread_mutex_unlock(&table_mutex);
}
