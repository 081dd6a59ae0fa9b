/*
 * Open-file-description locks for the addon's own copy of SQLite (Linux).
 *
 * A Node app's better-sqlite3 carries its own statically linked SQLite, and this addon carries the
 * engine's: two copies of SQLite in one process, on one file. SQLite locks with POSIX fcntl() record
 * locks, which belong to the process, so locks taken by one copy never conflict with the other's:
 * both can write the WAL at once, and each can take the other's shared-memory index for abandoned
 * and reset it. The databases get corrupted.
 *
 * Open-file-description (OFD) locks belong to the open file description instead, and the kernel
 * makes them conflict with POSIX locks even inside one process. So this copy's fcntl() system call
 * is replaced (through the unix VFS's xSetSystemCall) by one that turns F_GETLK/F_SETLK/F_SETLKW
 * into F_OFD_GETLK/F_OFD_SETLK/F_OFD_SETLKW: the two copies then exclude each other as two
 * processes would. Other processes see ordinary conflicting locks too.
 *
 * This is sound because the engine keeps one connection per database in this copy (OFD locks are
 * not shared between two descriptors the way SQLite's in-process lock bookkeeping assumes).
 *
 * One POSIX rule remains: closing ANY descriptor of a file drops every POSIX lock the process holds
 * on it, so this copy closing its database, -wal or -shm descriptor (when a replica closes) would
 * silently drop the locks better-sqlite3 holds at that moment (its write lock, its claim on the
 * shared-memory index). So this copy's close() is replaced too: a descriptor of a named regular
 * file gives up its OFD locks and is kept open instead (three descriptors per closed replica, until
 * the process ends); everything else (directories, unlinked temp files) is closed as usual.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sqlite3.h"

static int harmonylite_ofd_fcntl(int fd, int cmd, ...) {
  int ofd_cmd = 0;
  int rc;
  va_list args;
  switch (cmd) {
    case F_GETLK: ofd_cmd = F_OFD_GETLK; break;
    case F_SETLK: ofd_cmd = F_OFD_SETLK; break;
    case F_SETLKW: ofd_cmd = F_OFD_SETLKW; break;
    default: break;
  }
  va_start(args, cmd);
  if (ofd_cmd) {
    struct flock *lock = va_arg(args, struct flock *);
    lock->l_pid = 0; /* required by the OFD commands */
    rc = fcntl(fd, ofd_cmd, lock);
  } else {
    /* SQLite's other uses (F_GETFD, F_SETFD) take an int. */
    int value = va_arg(args, int);
    rc = fcntl(fd, cmd, value);
  }
  va_end(args);
  return rc;
}

static int harmonylite_close(int fd) {
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink > 0) {
    struct flock unlock;
    unlock.l_type = F_UNLCK;
    unlock.l_whence = SEEK_SET;
    unlock.l_start = 0;
    unlock.l_len = 0; /* the whole file */
    unlock.l_pid = 0;
    fcntl(fd, F_OFD_SETLK, &unlock);
    return 0; /* kept open: see above */
  }
  return close(fd);
}

/* Installs the replacements; call before the first connection opens. Returns an SQLite result code. */
int harmonylite_use_ofd_locks(void) {
  sqlite3_vfs *vfs = sqlite3_vfs_find("unix");
  int rc;
  if (vfs == 0 || vfs->iVersion < 3 || vfs->xSetSystemCall == 0) return SQLITE_ERROR;
  rc = vfs->xSetSystemCall(vfs, "fcntl", (sqlite3_syscall_ptr)harmonylite_ofd_fcntl);
  if (rc != SQLITE_OK) return rc;
  return vfs->xSetSystemCall(vfs, "close", (sqlite3_syscall_ptr)harmonylite_close);
}
