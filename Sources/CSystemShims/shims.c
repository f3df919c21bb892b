#define _GNU_SOURCE
#include "cairn_shims.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <poll.h>
#include <time.h>
#include <string.h>
#include <stdlib.h>
#include <sys/vfs.h>
#include <sys/socket.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

int cairn_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE);
}

int cairn_flock(int fd, int operation) {
    int op;
    switch (operation) {
    case CAIRN_LOCK_EX_NB: op = LOCK_EX | LOCK_NB; break;
    case CAIRN_LOCK_EX: op = LOCK_EX; break;
    case CAIRN_LOCK_UN: op = LOCK_UN; break;
    case CAIRN_LOCK_SH_NB: op = LOCK_SH | LOCK_NB; break;
    default: errno = EINVAL; return -1;
    }
    int rc;
    do { rc = flock(fd, op); } while (rc == -1 && errno == EINTR);
    return rc;
}

int cairn_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

int cairn_set_parent_death_signal(int sig) {
    return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0);
}

int cairn_set_cloexec(int fd) {
    int flags = fcntl(fd, F_GETFD);
    if (flags == -1) return -1;
    return fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

int cairn_is_cloexec(int fd) {
    int flags = fcntl(fd, F_GETFD);
    if (flags == -1) return -1;
    return (flags & FD_CLOEXEC) ? 1 : 0;
}

int cairn_eventfd(void) {
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

int cairn_supervise_exec(const char *path, char *const argv[], int expected_parent) {
    /* No signals here: this may run on any thread of a multithreaded process, where a
       signal mask would not cover the others. Two pidfds tell everything: the daemon's
       (PR_SET_PDEATHSIG follows the parent *thread*, which may exit early) and the
       script's. The daemon stops a script by killing its whole process group. */
    int parent = expected_parent > 0 ? expected_parent : (int)getppid();
    int parentfd = (int)syscall(SYS_pidfd_open, parent, 0);
    if (parentfd < 0 || getppid() != parent) _exit(137);  /* the daemon is already gone */
    pid_t child = fork();
    if (child < 0) return -1;
    if (child == 0) {
        close(parentfd);
        /* The daemon ignores SIGPIPE, and the thread that forked may block signals (a
           Dispatch or cooperative-pool thread blocks most): a script gets every signal's
           default disposition and an empty mask, as docs/scripts.md says. */
        for (int s = 1; s < NSIG; s++)
            if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(path, argv);
        {
            int e = errno;
            dprintf(2, "cairn: cannot execute %s: %s%s\n", path, strerror(e),
                    e == ENOEXEC ? " (a script needs a #! line, e.g. #!/bin/sh)" :
                    e == EACCES ? " (it needs the executable bit: chmod +x)" : "");
        }
        _exit(127);
    }
    int childfd = (int)syscall(SYS_pidfd_open, child, 0);
    struct pollfd fds[2] = {{.fd = parentfd, .events = POLLIN}, {.fd = childfd, .events = POLLIN}};
    for (;;) {
        int n = poll(fds, childfd >= 0 ? 2 : 1, childfd >= 0 ? -1 : 100);
        if (n < 0 && errno != EINTR) break;
        if (fds[0].revents) {  /* the daemon died: take the whole group down */
            kill(0, SIGKILL);
            _exit(137);
        }
        int status;
        pid_t r = waitpid(child, &status, WNOHANG);
        if (r == child) {
            if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
            if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
            _exit(1);
        }
    }
    kill(0, SIGKILL);
    _exit(137);
}

double cairn_fsync_rename_floor(const char *dir, int n, int len) {
    char tmp[4096], dst[4096];
    char *buf = malloc(len > 0 ? len : 1);
    if (!buf) return -1;
    memset(buf, 'x', len);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) { free(buf); return -1; }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        snprintf(tmp, sizeof tmp, "%s/floor-%d.tmp", dir, i);
        snprintf(dst, sizeof dst, "%s/floor-%06d.json", dir, i);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, buf, len) != len || fsync(fd) != 0 || close(fd) != 0 || rename(tmp, dst) != 0 || fsync(dfd) != 0) {
            close(dfd); free(buf); return -1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (int i = 0; i < n; i++) { snprintf(dst, sizeof dst, "%s/floor-%06d.json", dir, i); unlink(dst); }
    close(dfd);
    free(buf);
    return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
}

long long cairn_statfs_type(const char *path) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return -1;
    return (long long)(unsigned int)fs.f_type;
}

int cairn_accept_cloexec(int fd) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC);
}

int cairn_peer_uid(int fd, unsigned int *uid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *uid = cred.uid;
    return 0;
}

static int saved_argc;
static char *const *saved_argv;

/* glibc calls ELF constructors with (argc, argv, envp). */
__attribute__((constructor)) static void cairn_save_arguments(int argc, char *const *argv, char *const *envp) {
    (void)envp;
    saved_argc = argc;
    saved_argv = argv;
}

int cairn_argc(void) { return saved_argc; }

char *const *cairn_argv(void) { return saved_argv; }
