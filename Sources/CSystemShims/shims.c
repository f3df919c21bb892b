#define _GNU_SOURCE
#include "cairn_shims.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

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
