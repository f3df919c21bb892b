// faultshim: an LD_PRELOAD library for FaultTests (compiled by the test with `cc -shared`).
//
// It counts, per call type, the calls a process makes on paths under CAIRN_FAULT_ROOT, and
// makes one type's calls fail from the Nth on, while a flag file exists:
//
//   CAIRN_FAULT_ROOT   the spool (calls on other paths pass untouched and uncounted)
//   CAIRN_FAULT_COUNTS a file rewritten after every counted call: "TYPE COUNT" lines, then
//                      "injected N" and "path P" lines (the files of injected failures, up to 16)
//   CAIRN_FAULT_CALL   write | fsync | rename | mkdir | create | link | unlink (none: count only)
//   CAIRN_FAULT_NTH    N: calls N, N+1, … of that type fail (1-based)
//   CAIRN_FAULT_ERRNO  EIO | ENOSPC
//   CAIRN_FAULT_FLAG   the failures last while this file exists; once it is gone, never again
//   CAIRN_FAULT_NO_RENAMEAT2=1  renameat2 answers EINVAL (not a fault: a filesystem without it,
//                      like GlusterFS's FUSE mount), so first-writer-wins takes link + unlink
//
// Call types and the libc entry points behind them (what Swift, swift-system and Foundation
// call; `syscall(SYS_renameat2)` is how CSystemShims makes first-writer-wins renames):
//   write  write pwrite pwrite64 writev           fsync  fsync fdatasync
//   rename rename renameat renameat2 syscall(SYS_renameat2)
//   mkdir  mkdir mkdirat                          link   link linkat
//   create open/openat/creat (+64, __open_2 …) with O_CREAT
//   unlink unlink unlinkat rmdir
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { T_WRITE, T_FSYNC, T_RENAME, T_MKDIR, T_CREATE, T_LINK, T_UNLINK, T_COUNT };
static const char *type_names[T_COUNT] = {"write", "fsync", "rename", "mkdir", "create", "link", "unlink"};

static char root[PATH_MAX], root_real[PATH_MAX];
static size_t root_len, root_real_len;
static const char *counts_path, *flag_path;
static int fault_type = -1, fault_errno = EIO;
static long fault_nth = 0;
static long counts[T_COUNT];
static long injected;
static int faults_over;
enum { MAX_PATHS = 16 };
static char injected_paths[MAX_PATHS][512];  // the distinct files of injected failures
static int path_count;
static pthread_mutex_t path_lock = PTHREAD_MUTEX_INITIALIZER;
static int ready, no_renameat2;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned);
static long (*real_syscall)(long, ...);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_mkdirat)(int, const char *, mode_t);
static int (*real_link)(const char *, const char *);
static int (*real_linkat)(int, const char *, int, const char *, int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_rmdir)(const char *);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real___open_2)(const char *, int);
static int (*real___open64_2)(const char *, int);
static int (*real___openat_2)(int, const char *, int);
static int (*real___openat64_2)(int, const char *, int);
static int (*real_creat)(const char *, mode_t);
static int (*real_creat64)(const char *, mode_t);

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)
// A wrapper may run before the constructor (from another library's constructor): resolve lazily.
static void *resolve_symbol(void **slot, const char *name) {
    if (!*slot) *slot = dlsym(RTLD_NEXT, name);
    return *slot;
}
#define REAL(name) ((__typeof__(real_##name))resolve_symbol((void **)&real_##name, #name))

__attribute__((constructor)) static void faultshim_init(void) {
    RESOLVE(write); RESOLVE(pwrite); RESOLVE(pwrite64); RESOLVE(writev);
    RESOLVE(fsync); RESOLVE(fdatasync);
    RESOLVE(rename); RESOLVE(renameat); RESOLVE(renameat2); RESOLVE(syscall);
    RESOLVE(mkdir); RESOLVE(mkdirat); RESOLVE(link); RESOLVE(linkat);
    RESOLVE(unlink); RESOLVE(unlinkat); RESOLVE(rmdir);
    RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64);
    RESOLVE(__open_2); RESOLVE(__open64_2); RESOLVE(__openat_2); RESOLVE(__openat64_2);
    RESOLVE(creat); RESOLVE(creat64);
    const char *r = getenv("CAIRN_FAULT_ROOT");
    if (!r || !*r) return;
    snprintf(root, sizeof root, "%s", r);
    root_len = strlen(root);
    while (root_len > 1 && root[root_len - 1] == '/') root[--root_len] = 0;
    if (realpath(root, root_real)) root_real_len = strlen(root_real);
    counts_path = getenv("CAIRN_FAULT_COUNTS");
    flag_path = getenv("CAIRN_FAULT_FLAG");
    const char *c = getenv("CAIRN_FAULT_CALL");
    for (int i = 0; c && i < T_COUNT; i++) if (strcmp(c, type_names[i]) == 0) fault_type = i;
    const char *n = getenv("CAIRN_FAULT_NTH");
    fault_nth = n ? atol(n) : 0;
    const char *e = getenv("CAIRN_FAULT_ERRNO");
    if (e && strcmp(e, "ENOSPC") == 0) fault_errno = ENOSPC;
    const char *nr = getenv("CAIRN_FAULT_NO_RENAMEAT2");
    no_renameat2 = nr && strcmp(nr, "1") == 0;
    ready = 1;
}

static int under(const char *p, const char *r, size_t len) {
    return len > 0 && strncmp(p, r, len) == 0 && (p[len] == 0 || p[len] == '/');
}

static int under_root(const char *p) {
    return p && (under(p, root, root_len) || under(p, root_real, root_real_len));
}

// The absolute path of `path` relative to `dirfd` (AT_FDCWD: as given or from the cwd).
static void resolve_at(int dirfd, const char *path, char *out, size_t size) {
    out[0] = 0;
    if (!path) return;
    if (path[0] == '/') { snprintf(out, size, "%s", path); return; }
    char dir[PATH_MAX], link[64];
    ssize_t n;
    (void)n;
    if (dirfd == AT_FDCWD) {
        if (!getcwd(dir, sizeof dir)) return;
        n = (ssize_t)strlen(dir);
    } else {
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        n = readlink(link, dir, sizeof dir - 1);
        if (n < 0) return;
        dir[n] = 0;
    }
    if (strlen(dir) + strlen(path) + 2 > size) return;
    strcpy(out, dir);
    strcat(out, "/");
    strcat(out, path);
}

static int fd_path(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n < 0) { out[0] = 0; return 0; }
    out[n] = 0;
    return 1;
}

static void save_counts(void) {
    if (!counts_path) return;
    char buf[(MAX_PATHS + 1) * 520];
    int len = 0;
    for (int i = 0; i < T_COUNT; i++)
        len += snprintf(buf + len, sizeof buf - len, "%s %ld\n", type_names[i], __atomic_load_n(&counts[i], __ATOMIC_RELAXED));
    len += snprintf(buf + len, sizeof buf - len, "injected %ld\n", __atomic_load_n(&injected, __ATOMIC_RELAXED));
    pthread_mutex_lock(&path_lock);
    for (int i = 0; i < path_count; i++) len += snprintf(buf + len, sizeof buf - len, "path %s\n", injected_paths[i]);
    pthread_mutex_unlock(&path_lock);
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.%d.%ld", counts_path, getpid(), (long)syscall(SYS_gettid));
    int fd = REAL(open)(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t ignored = REAL(write)(fd, buf, (size_t)len);
    (void)ignored;
    close(fd);
    REAL(rename)(tmp, counts_path);
}

// Counts a call of `type` on `path`; returns the errno to fail it with, or 0.
static int check(int type, const char *path) {
    if (!ready || !under_root(path)) return 0;
    long index = __atomic_add_fetch(&counts[type], 1, __ATOMIC_RELAXED);
    int fail = 0;
    if (type == fault_type && fault_nth > 0 && index >= fault_nth && !__atomic_load_n(&faults_over, __ATOMIC_RELAXED)) {
        if (flag_path && access(flag_path, F_OK) == 0) {
            fail = fault_errno;
            __atomic_add_fetch(&injected, 1, __ATOMIC_RELAXED);
            pthread_mutex_lock(&path_lock);
            int seen = 0;
            for (int i = 0; i < path_count; i++) seen |= strcmp(injected_paths[i], path) == 0;
            if (!seen && path_count < MAX_PATHS) snprintf(injected_paths[path_count++], sizeof injected_paths[0], "%s", path);
            pthread_mutex_unlock(&path_lock);
        } else {
            __atomic_store_n(&faults_over, 1, __ATOMIC_RELAXED);
        }
    }
    save_counts();
    return fail;
}

static int check_at(int type, int dirfd, const char *path) {
    if (!ready || !path) return 0;
    char full[PATH_MAX];
    resolve_at(dirfd, path, full, sizeof full);
    return check(type, full);
}

static int check_fd(int type, int fd) {
    if (!ready || root_len == 0) return 0;
    char p[PATH_MAX];
    if (!fd_path(fd, p, sizeof p)) return 0;
    return check(type, p);
}

#define FAIL_IF(e) do { int _e = (e); if (_e) { errno = _e; return -1; } } while (0)

ssize_t write(int fd, const void *b, size_t n) { FAIL_IF(check_fd(T_WRITE, fd)); return REAL(write)(fd, b, n); }
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) { FAIL_IF(check_fd(T_WRITE, fd)); return REAL(pwrite)(fd, b, n, o); }
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) { FAIL_IF(check_fd(T_WRITE, fd)); return REAL(pwrite64)(fd, b, n, o); }
ssize_t writev(int fd, const struct iovec *v, int n) { FAIL_IF(check_fd(T_WRITE, fd)); return REAL(writev)(fd, v, n); }
int fsync(int fd) { FAIL_IF(check_fd(T_FSYNC, fd)); return REAL(fsync)(fd); }
int fdatasync(int fd) { FAIL_IF(check_fd(T_FSYNC, fd)); return REAL(fdatasync)(fd); }

int rename(const char *a, const char *b) { FAIL_IF(check_at(T_RENAME, AT_FDCWD, b)); return REAL(rename)(a, b); }
int renameat(int fa, const char *a, int fb, const char *b) { FAIL_IF(check_at(T_RENAME, fb, b)); return REAL(renameat)(fa, a, fb, b); }
int renameat2(int fa, const char *a, int fb, const char *b, unsigned f) {
    if (no_renameat2) { errno = EINVAL; return -1; }
    FAIL_IF(check_at(T_RENAME, fb, b)); return REAL(renameat2)(fa, a, fb, b, f); }

long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_renameat2) {
        if (no_renameat2) { errno = EINVAL; return -1; }
        FAIL_IF(check_at(T_RENAME, (int)a3, (const char *)a4));
    }
    return REAL(syscall)(number, a1, a2, a3, a4, a5, a6);
}

int mkdir(const char *p, mode_t m) { FAIL_IF(check_at(T_MKDIR, AT_FDCWD, p)); return REAL(mkdir)(p, m); }
int mkdirat(int d, const char *p, mode_t m) { FAIL_IF(check_at(T_MKDIR, d, p)); return REAL(mkdirat)(d, p, m); }
int link(const char *a, const char *b) { FAIL_IF(check_at(T_LINK, AT_FDCWD, b)); return REAL(link)(a, b); }
int linkat(int fa, const char *a, int fb, const char *b, int f) { FAIL_IF(check_at(T_LINK, fb, b)); return REAL(linkat)(fa, a, fb, b, f); }
int unlink(const char *p) { FAIL_IF(check_at(T_UNLINK, AT_FDCWD, p)); return REAL(unlink)(p); }
int unlinkat(int d, const char *p, int f) { FAIL_IF(check_at(T_UNLINK, d, p)); return REAL(unlinkat)(d, p, f); }
int rmdir(const char *p) { FAIL_IF(check_at(T_UNLINK, AT_FDCWD, p)); return REAL(rmdir)(p); }

#define MODE_ARG(flags) mode_t mode = 0; if ((flags) & (O_CREAT | __O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
#define CREATE_CHECK(dirfd, p, flags) if ((flags) & O_CREAT) FAIL_IF(check_at(T_CREATE, dirfd, p))

int open(const char *p, int flags, ...) { MODE_ARG(flags); CREATE_CHECK(AT_FDCWD, p, flags); return REAL(open)(p, flags, mode); }
int open64(const char *p, int flags, ...) { MODE_ARG(flags); CREATE_CHECK(AT_FDCWD, p, flags); return REAL(open64)(p, flags, mode); }
int openat(int d, const char *p, int flags, ...) { MODE_ARG(flags); CREATE_CHECK(d, p, flags); return REAL(openat)(d, p, flags, mode); }
int openat64(int d, const char *p, int flags, ...) { MODE_ARG(flags); CREATE_CHECK(d, p, flags); return REAL(openat64)(d, p, flags, mode); }
int __open_2(const char *p, int flags) { CREATE_CHECK(AT_FDCWD, p, flags); return REAL(__open_2)(p, flags); }
int __open64_2(const char *p, int flags) { CREATE_CHECK(AT_FDCWD, p, flags); return REAL(__open64_2)(p, flags); }
int __openat_2(int d, const char *p, int flags) { CREATE_CHECK(d, p, flags); return REAL(__openat_2)(d, p, flags); }
int __openat64_2(int d, const char *p, int flags) { CREATE_CHECK(d, p, flags); return REAL(__openat64_2)(d, p, flags); }
int creat(const char *p, mode_t m) { FAIL_IF(check_at(T_CREATE, AT_FDCWD, p)); return REAL(creat)(p, m); }
int creat64(const char *p, mode_t m) { FAIL_IF(check_at(T_CREATE, AT_FDCWD, p)); return REAL(creat64)(p, m); }
