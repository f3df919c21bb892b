#ifndef CAIRN_SHIMS_H
#define CAIRN_SHIMS_H

/// Thin wrappers for syscalls Glibc does not expose cleanly to Swift.
/// Each returns what the wrapped call returns (-1 with errno set on failure).

/// renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE):
/// atomic rename that fails with EEXIST instead of replacing (first writer wins).
int cairn_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);

/// flock(fd, operation): whole-file advisory lock, released by the kernel when the
/// holder dies. operation is one of the CAIRN_LOCK_* values below.
int cairn_flock(int fd, int operation);
#define CAIRN_LOCK_EX_NB 1
#define CAIRN_LOCK_EX 2
#define CAIRN_LOCK_UN 3
#define CAIRN_LOCK_SH_NB 4

/// prctl(PR_SET_PDEATHSIG, sig): deliver sig to this process when its parent dies.
int cairn_set_parent_death_signal(int sig);

/// fcntl(fd, F_SETFD, FD_CLOEXEC | current flags): mark fd close-on-exec.
int cairn_set_cloexec(int fd);

/// fcntl(fd, F_GETFD) & FD_CLOEXEC: 1 when fd is close-on-exec, 0 when not, -1 on error.
int cairn_is_cloexec(int fd);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK): a counter fd used to wake a poll(2) loop.
int cairn_eventfd(void);

/// Runs a script workflow under a small supervisor so that it never outlives the daemon:
/// pidfd_open(expected_parent), fork, execv(path, argv) in the child (in the supervisor's
/// process group), poll on both pidfds; when the daemon dies first, kill(0, SIGKILL) ends
/// the whole group. Returns only on failure;
/// otherwise exits with the child's status (128 + signal when killed by a signal).
int cairn_supervise_exec(const char *path, char *const argv[], int expected_parent);
/// The floor for benchmarks: n iterations of open(O_CREAT|O_EXCL) + write(len bytes) +
/// fsync + close + rename + fsync(dir) in `dir`, in plain C. Returns seconds in total, or
/// -1 on error.
double cairn_fsync_rename_floor(const char *dir, int n, int len);
/// statfs(path).f_type: the filesystem's magic number (linux/magic.h), or -1 with errno set.
long long cairn_statfs_type(const char *path);
/// prctl(PR_SET_CHILD_SUBREAPER, 1): orphans of this process's descendants come to it.
int cairn_set_child_subreaper(void);
/// accept4(fd, NULL, NULL, SOCK_CLOEXEC): a connection, or -1 with errno set.
int cairn_accept_cloexec(int fd);
/// The uid of a Unix socket's peer (SO_PEERCRED): 0 and *uid set, or -1 with errno set.
int cairn_peer_uid(int fd, unsigned int *uid);
/// The process's argc and argv as the C runtime passed them (glibc hands them to ELF
/// constructors): the Swift runtime reads its arguments from /proc/self/cmdline on Linux,
/// which a chroot without /proc lacks (every command then saw none and printed the help).
int cairn_argc(void);
char *const *cairn_argv(void);
#endif
