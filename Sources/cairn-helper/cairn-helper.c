/*
 * cairn-helper: the `cairn` that script workflows find first on their PATH when the daemon
 * serves their helpers (docs/scripts.md, "How helpers reach the daemon").
 *
 * A helper call (`cairn step NAME -- CMD`, `cairn now` …) asks the daemon that runs the
 * script over a Unix socket; the daemon does the helper's work with its own code (the
 * journal, the execution's lock, the records and messages of the whole binary) and answers.
 * A step's CMD runs here, in the script's process group and environment. For anything the
 * daemon does not serve, and whenever the daemon cannot be asked, this program runs the
 * whole binary (CAIRN_HELPER_EXE) with the same arguments: it never decides anything itself.
 *
 * Plain C with libc only, so that it starts in about a millisecond: the whole binary needs
 * ten or more before main. Built by `make build` with the system's C compiler (the Swift
 * build links a C executable against the Swift runtime, which doubles its start).
 * The wire is described in Sources/CairnCLI/Commands/HelperServer.swift.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "cairn-helper 1"
#define OUTPUT_LIMIT ((size_t)64 << 20) /* StepHelper.outputLimit */
#define FRAME_LIMIT (OUTPUT_LIMIT + 4096)

static int g_argc;
static char **g_argv;
/* A frame that arrived while CMD ran (the daemon's answer after a kill): the main loop's next. */
static struct frame_slot {
    int full;
    char type;
    unsigned char *data;
    size_t len;
} g_next;

static void fallback(void) {
    const char *exe = getenv("CAIRN_HELPER_EXE");
    if (exe && *exe) {
        execv(exe, g_argv);
        fprintf(stderr, "cairn: %s: cannot run: %s\n", exe, strerror(errno));
        exit(1);
    }
    fprintf(stderr, "cairn: this is the scripts' helper client; run `cairn` helpers inside a script workflow started by `cairn daemon`\n");
    exit(2);
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = fd == STDOUT_FILENO || fd == STDERR_FILENO ? write(fd, p, n) : send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v & 0xff;
    p[1] = (v >> 8) & 0xff;
    p[2] = (v >> 16) & 0xff;
    p[3] = (v >> 24) & 0xff;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int send_frame(int fd, char type, const void *a, size_t an, const void *b, size_t bn) {
    unsigned char h[5];
    put32(h, (uint32_t)(an + bn + 1));
    h[4] = (unsigned char)type;
    if (write_all(fd, h, 5) < 0) return -1;
    if (an && write_all(fd, a, an) < 0) return -1;
    if (bn && write_all(fd, b, bn) < 0) return -1;
    return 0;
}

struct frame {
    char type;
    unsigned char *data;
    size_t len;
};

/* 0, or -1 at the end of the connection (or a frame that breaks the protocol). */
static int read_frame(int fd, struct frame *f) {
    unsigned char h[5];
    if (read_all(fd, h, 5) < 0) return -1;
    uint32_t n = get32(h);
    if (n < 1 || n > FRAME_LIMIT) return -1;
    f->type = (char)h[4];
    f->len = n - 1;
    f->data = malloc(f->len + 1);
    if (!f->data) return -1;
    if (f->len && read_all(fd, f->data, f->len) < 0) return -1;
    f->data[f->len] = 0;
    return 0;
}

/* CMD's status when kill_tree reaped it. */
static int g_cmd_reaped, g_cmd_status;

/* The descendants of this process (from /proc) into found[1..], found[0] being this
 * process, parents before their children; *alive counts those not yet zombies. */
static int scan_tree(pid_t *found, int cap, int *alive) {
    int n = 0;
    *alive = 0;
    found[n++] = getpid();
    for (int grew = 1; grew && n < cap;) {
        grew = 0;
        DIR *d = opendir("/proc");
        if (!d) break;
        struct dirent *e;
        while ((e = readdir(d)) && n < cap) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            if (*end || pid <= 0) continue;
            char path[64], buf[512];
            snprintf(path, sizeof path, "/proc/%ld/stat", pid);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t r = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (r <= 0) continue;
            buf[r] = 0;
            char *close_paren = strrchr(buf, ')');
            if (!close_paren) continue;
            char state;
            long ppid;
            if (sscanf(close_paren + 1, " %c %ld", &state, &ppid) != 2) continue;
            int parent_found = 0, known = 0;
            for (int i = 0; i < n; i++) {
                if (found[i] == (pid_t)ppid) parent_found = 1;
                if (found[i] == (pid_t)pid) known = 1;
            }
            if (parent_found && !known) {
                found[n++] = (pid_t)pid;
                grew = 1;
                if (state != 'Z') (*alive)++;
            }
        }
        closedir(d);
    }
    return n;
}

/* Kills everything CMD started, and CMD: this process is a child subreaper (run_attempt), so
 * a process whose parent dies is reparented here instead of escaping to init. Each round
 * first freezes the tree (SIGSTOP, parents first, until a scan finds no process it has not
 * stopped), then kills it: killed one by one while running, a shell whose `sleep` died
 * before it did ran its next command (`sleep 5; touch late` touched). A process forking
 * meanwhile is caught by the next round. */
static void kill_tree(pid_t cmd) {
    for (int round = 0; round < 200; round++) {
        pid_t found[4096];
        int alive, n = scan_tree(found, 4096, &alive);
        for (int pass = 0; pass < 100 && n > 1; pass++) {
            for (int i = 1; i < n; i++) kill(found[i], SIGSTOP);
            int again_alive, again = scan_tree(found, 4096, &again_alive);
            int same = again == n;
            n = again;
            alive = again_alive;
            if (same) break;
        }
        for (int i = 1; i < n; i++) kill(found[i], SIGKILL);
        int status;
        pid_t reaped;
        while ((reaped = waitpid(-1, &status, WNOHANG)) > 0) {
            if (reaped == cmd) {
                g_cmd_reaped = 1;
                g_cmd_status = status;
            }
        }
        if (n == 1 || (alive == 0 && round > 0)) break;
        usleep(1000);
    }
}

/* CMD's path: as given when it has a slash, else the first regular, executable file of
 * that name on PATH, found before the fork (execvp would try execve in each directory in
 * turn), or NULL. */
static char *resolve(const char *name) {
    if (strchr(name, '/')) return strdup(name);
    const char *path = getenv("PATH");
    if (!path) path = "/usr/bin:/bin";
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t dn = (size_t)(end - p);
        char *full = malloc(dn + strlen(name) + 3);
        if (!full) return NULL;
        if (dn == 0) strcpy(full, "./"); else { memcpy(full, p, dn); full[dn] = '/'; full[dn + 1] = 0; }
        strcat(full, name);
        struct stat st;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode) && access(full, X_OK) == 0) return full;
        free(full);
        if (!*end) return NULL;
        p = end;
    }
}

/* R: run CMD (argv from the index the daemon gives) once, answer D. */
static void run_attempt(int sock, const struct frame *r) {
    if (r->len < 9) exit(1);
    int32_t attempt = (int32_t)get32(r->data);
    int is_last = r->data[4];
    uint32_t index = get32(r->data + 5);
    const char *key = (const char *)r->data + 9;
    const char *key_end = memchr(key, 0, r->len - 9);
    if (!key_end) exit(1);
    const char *name = key_end + 1;
    if (!memchr(name, 0, r->len - (size_t)(name - (const char *)r->data))) exit(1);
    unsigned char d[5];

    if (index < 2 || (int)index >= g_argc) {
        const char *why = "no command";
        put32(d, 1);
        d[4] = 1;
        send_frame(sock, 'D', d, 5, why, strlen(why));
        return;
    }
    char **cmd = g_argv + index;
    char number[16];
    snprintf(number, sizeof number, "%d", attempt);
    setenv("CAIRN_IDEMPOTENCY_KEY", key, 1);
    setenv("CAIRN_STEP_ATTEMPT", number, 1);
    setenv("CAIRN_IN_STEP", name, 1);

    char *exe = resolve(cmd[0]);
    if (!exe) {
        const char *why = "not found on PATH";
        put32(d, 127);
        d[4] = 1;
        send_frame(sock, 'D', d, 5, why, strlen(why));
        return;
    }
    /* Orphans of CMD's tree come to this process, so a timeout's kill reaches them all. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    int out[2], status_pipe[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(status_pipe, O_CLOEXEC) < 0) {
        fprintf(stderr, "cairn: cannot make a pipe: %s\n", strerror(errno));
        exit(1);
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "cairn: cannot fork: %s\n", strerror(errno));
        exit(1);
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        /* As the whole binary starts it (posix_spawn): default dispositions, an empty
         * signal mask, and only stdin, stdout and stderr open. */
        for (int sig = 1; sig < NSIG; sig++)
            if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int keep = status_pipe[1];
        if (dup2(keep, 3) == 3) keep = 3;
        fcntl(keep, F_SETFD, FD_CLOEXEC);
        syscall(SYS_close_range, 4, ~0U, 0);
        execv(exe, cmd);
        int e = errno;
        ssize_t ignored = write(keep, &e, sizeof e);
        (void)ignored;
        _exit(127);
    }
    free(exe);
    close(out[1]);
    close(status_pipe[1]);
    int exec_errno = 0;
    if (read_all(status_pipe[0], &exec_errno, sizeof exec_errno) == 0) {
        close(status_pipe[0]);
        close(out[0]);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        const char *why = strerror(exec_errno);
        put32(d, 127);
        d[4] = 1;
        send_frame(sock, 'D', d, 5, why, strlen(why));
        return;
    }
    close(status_pipe[0]);

    /* CMD's end is the attempt's end, as for the whole binary: what a background process
     * it left writes to the pipe afterwards is neither waited for nor recorded. */
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), draining = 0;
    size_t cap = 65536, len = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) exit(1);
    int too_large = 0, open_out = 1;
    while (open_out) {
        /* Once the daemon has answered, only the pipe is read (to its end). */
        struct pollfd p[3] = {{.fd = out[0], .events = POLLIN}, {.fd = g_next.full ? -1 : sock, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
        if (draining) {
            p[0].revents = p[1].revents = p[2].revents = 0; /* read on until the pipe is empty */
        } else if (poll(p, 3, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents) {
            struct frame k;
            if (read_frame(sock, &k) < 0) {
                /* The daemon is gone: nothing can be recorded; stop what was started. */
                kill_tree(pid);
                fprintf(stderr, "cairn: the daemon closed the helper connection during step %s\n", name);
                exit(1);
            }
            kill_tree(pid);
            /* Killed: what CMD printed is not recorded, and a process that got away with
             * the pipe must not hold this helper (or the script) up. */
            open_out = 0;
            if (k.type == 'K') {
                free(k.data);
            } else {
                /* The daemon moved on (its answer after a timeout's kill can overtake the
                 * kill's effect here): kept for the main loop, never dropped. */
                g_next.full = 1;
                g_next.type = k.type;
                g_next.data = k.data;
                g_next.len = k.len;
            }
        }
        if (pidfd >= 0 && p[2].revents) {
            /* What CMD wrote before it ended is in the pipe: read it without waiting. */
            fcntl(out[0], F_SETFL, fcntl(out[0], F_GETFL) | O_NONBLOCK);
            close(pidfd);
            pidfd = -1;
            draining = 1;
        }
        if (p[0].revents || draining) {
            if (len == cap) {
                cap *= 2;
                unsigned char *bigger = realloc(buf, cap);
                if (!bigger) exit(1);
                buf = bigger;
            }
            ssize_t n = read(out[0], buf + len, too_large ? cap : cap - len);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EAGAIN) {
                open_out = 0; /* CMD ended and the pipe is drained */
            } else if (n <= 0) {
                open_out = 0;
            } else if (!too_large) {
                len += (size_t)n;
                if (len > OUTPUT_LIMIT) {
                    too_large = 1;
                    kill_tree(pid);
                    len = 0; /* the rest is read and dropped until the pipe closes */
                }
            }
        }
    }
    close(out[0]);
    if (pidfd >= 0) close(pidfd);
    int status = g_cmd_status;
    if (!g_cmd_reaped)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    g_cmd_reaped = 0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
    if (code != 0 && !is_last && !too_large)
        fprintf(stderr, "cairn: step %s attempt %d: %s exited with %d; step failed, will retry\n", name, attempt, cmd[0], code);
    put32(d, (uint32_t)code);
    d[4] = too_large ? 2 : 0;
    send_frame(sock, 'D', d, 5, buf, too_large ? 0 : len);
    free(buf);
}

int main(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
    const char *path = getenv("CAIRN_HELPER_SOCKET"), *exec_id = getenv("CAIRN_EXEC"), *run = getenv("CAIRN_RUN_ID"),
               *in_step = getenv("CAIRN_IN_STEP");
    if (argc < 2 || !path || !*path || !exec_id || !run || (in_step && *in_step)) fallback();

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) fallback();
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) fallback();

    size_t n = sizeof VERSION + strlen(exec_id) + 1 + strlen(run) + 1;
    for (int i = 1; i < argc; i++) n += strlen(argv[i]) + 1;
    if (n > FRAME_LIMIT) fallback();
    char *q = malloc(n), *p = q;
    if (!q) fallback();
    p = stpcpy(p, VERSION) + 1;
    p = stpcpy(p, exec_id) + 1;
    p = stpcpy(p, run) + 1;
    for (int i = 1; i < argc; i++) p = stpcpy(p, argv[i]) + 1;
    if (send_frame(sock, 'Q', q, n, NULL, 0) < 0) fallback();
    free(q);

    for (int answered = 0;; answered = 1) {
        struct frame f;
        if (g_next.full) {
            f.type = g_next.type;
            f.data = g_next.data;
            f.len = g_next.len;
            g_next.full = 0;
        } else if (read_frame(sock, &f) < 0) {
            /* Turned away before any answer (a daemon at its connection limit): nothing was
             * done, so the whole binary does it. */
            if (!answered) {
                close(sock);
                fallback();
            }
            fprintf(stderr, "cairn: the daemon closed the helper connection without an answer (did it stop?)\n");
            return 1;
        }
        switch (f.type) {
        case 'F':
            close(sock);
            fallback();
            break;
        case 'O': {
            if (f.len < 8) return 1;
            int32_t code = (int32_t)get32(f.data);
            uint32_t err_len = get32(f.data + 4);
            if (err_len > f.len - 8) return 1;
            if (err_len) write_all(STDERR_FILENO, f.data + 8, err_len);
            if (f.len - 8 - err_len) write_all(STDOUT_FILENO, f.data + 8 + err_len, f.len - 8 - err_len);
            return code;
        }
        case 'X':
            /* The execution ends here (a wait): what the daemon recorded says why. */
            if (f.len) write_all(STDERR_FILENO, f.data, f.len);
            kill(0, SIGKILL);
            for (;;) pause();
        case 'R':
            run_attempt(sock, &f);
            break;
        case 'K':
            break; /* nothing runs now */
        default:
            fprintf(stderr, "cairn: unexpected answer from the daemon's helper socket\n");
            return 1;
        }
        free(f.data);
    }
}
