/*
 * cgman._spawn: start a process in new namespaces and a cgroup, with no Python
 * code in the child.
 *
 * Why C: between clone and exec the child may only run async-signal-safe code
 * (the parent may be multi-threaded), and a forked Python child costs ~0.8 ms
 * more. The child here makes raw system calls only; it never touches malloc,
 * the GIL or glibc's fork handlers. Everything it needs (argv, envp, mounts) is
 * laid out by the parent before clone.
 *
 * Protocol (the parent side lives in cgman/containers/process.py and launch.py):
 *   1. spawn() clones with clone3(CLONE_INTO_CGROUP) where a cgroup2 directory
 *      fd is given, so the child is born inside its unified cgroup; it returns
 *      (pid, in_cgroup, release_fd, error_fd) to the parent.
 *   2. The child moves itself into its v1 cgroups (it writes 0 to each `tasks`
 *      in join_fds: see join_cgroups for why not the parent), then, held (the
 *      default), blocks reading release_fd. Meanwhile the parent writes the uid/gid
 *      maps and sets up networking. So the workload's first instruction runs inside
 *      all of its cgroups.
 *      Not held (held=False: the parent has nothing to do before the child goes on),
 *      the child is cloned as posix_spawn clones, CLONE_VM | CLONE_VFORK on a stack of
 *      its own: no copy of the parent's page tables (~1.5 ms for a large Python
 *      process), the parent suspended until the child execs or exits, release_fd -1.
 *      Sharing the parent's memory, the child reads its job and writes only its own
 *      stack, where it keeps a copy of the job (and errno, the suspended thread's; glibc's
 *      cancellable wrappers also flip that thread's cancel state and restore it, harmless
 *      as nothing here uses pthread_cancel); credentials change by raw system
 *      calls (glibc's set*id would signal the parent's threads), and every signal stays
 *      blocked until reset_signals. Without clone3_fn on this architecture, or clone3
 *      in the kernel, it is held after all.
 *   3. The parent writes one byte to release the child (closing without the byte
 *      aborts it). The child joins/unshares the remaining namespaces, sets the
 *      hostname, brings up lo, performs the mount operations (overlay, bind,
 *      pivot_root, /proc, masked and read-only paths), then applies the container's
 *      security settings (seccomp, the capability sets, no_new_privs; see
 *      apply_security for the order) and execs either the workload (it is PID 1)
 *      or cgman's init from a sealed memfd (cgman/_init.c), which starts the
 *      workload, forwards every signal to it, reaps zombies and exits with its
 *      status (128+N for signal N).
 *   4. error_fd is close-on-exec: EOF means exec succeeded; otherwise the child
 *      (or the init, on INIT_ERROR_FD) wrote {stage, errno, op} and exited 127.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "_proto.h"

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

/* OP_HOLD opens a path (O_PATH) before later mounts hide it; OP_BIND_HELD bind-mounts held fd
 * number ``a`` (a decimal index) onto ``b`` through /proc/self/fd, as runc mounts its sources. */
enum { OP_MOUNT = 1, OP_MKDIR, OP_TOUCH, OP_PIVOT, OP_CHDIR, OP_UMOUNT, OP_SYMLINK, OP_HOLD, OP_BIND_HELD,
       OP_RDONLY_TREE,      /* mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY): a tree read-only at once */
       OP_OVERLAY_HELD };   /* overlay on ``b``, lowerdir = held fd ``a``, the rest of the options ``data`` */
/* Or'ed into an op's kind: any error is ignored (a step with a fallback already in place). */
#define OP_TOLERANT 0x200
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
struct mount_attr_v0 { uint64_t attr_set, attr_clr, propagation, userns_fd; };
#define MAX_HELD 64
/* Or'ed into an op's kind: a path that does not exist is skipped (masked paths that this
 * kernel does not have, as runc does). */
#define OP_OPTIONAL 0x100

struct op {
    int kind;
    const char *a, *b, *c, *data;   /* mount: source, target, fstype, data */
    unsigned long flags;
};

struct job {
    char **argv, **envp;
    const char *path_env;           /* PATH from envp, for the search */
    struct op *ops;
    Py_ssize_t n_ops;
    int *setns_fds;
    Py_ssize_t n_setns;
    int netns_fd;                   /* a network namespace to join (setns CLONE_NEWNET: no other kind), or -1 */
    int *join_fds;                  /* v1 `tasks` files (opened by the parent) this thread joins */
    Py_ssize_t n_join;
    unsigned long unshare_flags;    /* after release (cgroup ns: after joining the cgroups) */
    const char *hostname;
    int lo_up, setsid_, pdeathsig;
    long uid, gid;                  /* setresuid/gid inside, -1: leave */
    long run_uid, run_gid;          /* the workload's user (an image's USER), after the mounts; -1: root */
    int release_rd, error_wr;
    int init_fd;                    /* sealed memfd of cgman-init; -1: exec the workload as PID 1 */
    char **init_argv;               /* {"cgman-init", argv...} */
    int drop_caps;                  /* reduce every capability set to cap_keep */
    uint64_t cap_keep;
    int nnp;                        /* PR_SET_NO_NEW_PRIVS */
    struct sock_fprog filter;       /* seccomp program; len 0: none */
    int parent_pidfd;               /* to notice a parent that died while pdeathsig was cleared */
    int cur_op;                     /* which op failed, for the error message */
    int held[MAX_HELD];             /* OP_HOLD's descriptors, by index */
    int n_held;
};

static void fail(struct job *j, int stage)
{
    cg_report(j->error_wr, stage, errno, j->cur_op);
    syscall(SYS_exit_group, 127);
    _exit(127);
}

/* The child is a copy of the parent, fds and all: keep none of them past exec. */
static void cloexec_all(void)
{
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
}

/* SIG_IGN first: it discards a signal that arrived during the set-up (held by the mask of a
 * child that shares the parent's memory, where the parent's handler must not run), as the
 * copied Python handler of a held child swallowed it. Then SIG_DFL: Python ignores SIGPIPE, SIGXFSZ. */
static void reset_signals(void)
{
    sigset_t none;
    sigemptyset(&none);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP) { signal(s, SIG_IGN); signal(s, SIG_DFL); }
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Credentials by raw system calls: glibc's wrappers broadcast to every thread it knows of,
 * which in a child that shares (or copied) the parent's memory are the parent's. */
static int raw_setgroups0(void) { return (int)syscall(SYS_setgroups, 0, NULL); }
static int raw_setresgid(long g) { return (int)syscall(SYS_setresgid, g, g, g); }
static int raw_setresuid(long u) { return (int)syscall(SYS_setresuid, u, u, u); }

static int loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    int r = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (r == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        r = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    int e = errno;
    close(s);
    errno = e;
    return r;
}

/* "/proc/self/fd/N" for held descriptor ``o->a`` (an index), without snprintf. */
static int bind_held(struct job *j, struct op *o)
{
    int idx = 0;
    for (const char *c = o->a; *c; c++) idx = idx * 10 + (*c - '0');
    if (idx < 0 || idx >= j->n_held) { errno = EBADF; return -1; }
    char path[32] = "/proc/self/fd/", digits[12];
    int n = 0, fd = j->held[idx];
    do { digits[n++] = (char)('0' + fd % 10); fd /= 10; } while (fd && n < 11);
    size_t len = strlen(path);
    while (n) path[len++] = digits[--n];
    path[len] = 0;
    return mount(path, o->b, NULL, o->flags, NULL);
}

/* overlay with lowerdir=/proc/self/fd/N (a held fd) and ``o->data`` appended. */
static int overlay_held(struct job *j, struct op *o)
{
    int idx = 0;
    for (const char *c = o->a; *c; c++) idx = idx * 10 + (*c - '0');
    if (idx < 0 || idx >= j->n_held || !o->data) { errno = EBADF; return -1; }
    char opts[1024] = "lowerdir=/proc/self/fd/", digits[12];
    int n = 0, fd = j->held[idx];
    do { digits[n++] = (char)('0' + fd % 10); fd /= 10; } while (fd && n < 11);
    size_t len = strlen(opts);
    while (n) opts[len++] = digits[--n];
    size_t dl = strlen(o->data);
    if (len + dl + 1 > sizeof opts) { errno = E2BIG; return -1; }
    memcpy(opts + len, o->data, dl + 1);
    return mount("overlay", o->b, "overlay", o->flags, opts);
}

static void run_ops(struct job *j)
{
    for (Py_ssize_t i = 0; i < j->n_ops; i++) {
        struct op *o = &j->ops[i];
        int optional = o->kind & OP_OPTIONAL, r = 0, stage = 0;
        j->cur_op = (int)i;
        switch (o->kind & ~(OP_OPTIONAL | OP_TOLERANT)) {
        case OP_MOUNT:
            r = mount(o->a, o->b, o->c, o->flags, o->data); stage = ST_MOUNT;
            break;
        case OP_MKDIR:         /* mode 0755, or ``flags`` set exactly (no umask) */
            r = mkdir(o->a, 0755); stage = ST_MKDIR;
            if (r < 0 && errno == EEXIST) r = 0;
            if (r == 0 && o->flags) r = chmod(o->a, (mode_t)o->flags);
            break;
        case OP_TOUCH: {
            int fd = open(o->a, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
            r = fd < 0 ? -1 : close(fd); stage = ST_TOUCH;
            break;
        }
        case OP_PIVOT:   /* runc's pivot_root(".", "."): no put_old directory needed */
            if (chdir(o->a) < 0) fail(j, ST_CHDIR);
            if (syscall(SYS_pivot_root, ".", ".") < 0) fail(j, ST_PIVOT);
            if (umount2(".", MNT_DETACH) < 0) fail(j, ST_UMOUNT);
            r = chdir("/"); stage = ST_CHDIR;
            break;
        case OP_CHDIR:
            r = chdir(o->a); stage = ST_CHDIR;
            break;
        case OP_UMOUNT:
            r = umount2(o->a, (int)o->flags); stage = ST_UMOUNT;
            break;
        case OP_SYMLINK:
            r = symlink(o->a, o->b); stage = ST_SYMLINK;
            if (r < 0 && errno == EEXIST) r = 0;
            break;
        case OP_HOLD:
            stage = ST_MOUNT;
            if (j->n_held >= MAX_HELD) { errno = E2BIG; r = -1; break; }
            r = open(o->a, O_PATH | O_CLOEXEC);
            if (r >= 0) { j->held[j->n_held++] = r; r = 0; }
            break;
        case OP_BIND_HELD:
            r = bind_held(j, o); stage = ST_MOUNT;
            break;
        case OP_OVERLAY_HELD:
            r = overlay_held(j, o); stage = ST_MOUNT;
            break;
        case OP_RDONLY_TREE: {
            struct mount_attr_v0 attr = {1 /* MOUNT_ATTR_RDONLY */, 0, 0, 0};
            r = (int)syscall(SYS_mount_setattr, AT_FDCWD, o->a, AT_RECURSIVE, &attr, sizeof attr);
            stage = ST_MOUNT;
            break;
        }
        }
        if (r < 0 && !(optional && errno == ENOENT) && !(o->kind & OP_TOLERANT)) fail(j, stage);
    }
}

/* Bounding set first (needs CAP_SETPCAP, which capset may take away), ambient cleared,
 * then effective, permitted and inheritable reduced to the kept set. */
static int drop_caps(uint64_t keep)
{
    for (int c = 0; c < 64; c++)
        if (!(keep & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL) return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) return -1;
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    uint32_t lo = (uint32_t)keep, hi = (uint32_t)(keep >> 32);
    struct __user_cap_data_struct d[2] = {{lo, lo, lo}, {hi, hi, hi}};
    return (int)syscall(SYS_capset, &h, d);
}

static int load_filter(struct job *j)
{
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &j->filter);
}

/* runc's order: without no_new_privs only a process with CAP_SYS_ADMIN may load a seccomp
 * filter, so it goes in before the capabilities are dropped (the profile must then allow
 * capset, prctl and execve, as Docker's does); with no_new_privs it goes in last, so the
 * fewest syscalls run under it before the exec. */
static void rearm_pdeathsig(struct job *j);

/* An image's USER: after the bounding set is dropped (that needs CAP_SETPCAP, which a
 * non-root uid loses) and before no_new_privs; the kernel then clears the permitted and
 * effective sets, as for any process that leaves uid 0 (Docker's behaviour). */
static void switch_user(struct job *j)
{
    if (j->run_uid < 0 && j->run_gid < 0) return;
    if (raw_setgroups0() < 0) fail(j, ST_SETGROUPS);
    if (j->run_gid >= 0 && raw_setresgid(j->run_gid) < 0) fail(j, ST_SETGID);
    if (j->run_uid >= 0 && raw_setresuid(j->run_uid) < 0) fail(j, ST_SETUID);
    rearm_pdeathsig(j);
}

static void apply_security(struct job *j)
{
    if (j->filter.len && !j->nnp && load_filter(j) < 0) fail(j, ST_SECCOMP);
    if (j->drop_caps && drop_caps(j->cap_keep) < 0) fail(j, ST_CAPS);
    switch_user(j);
    if (j->nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail(j, ST_NNP);
    if (j->filter.len && j->nnp && load_filter(j) < 0) fail(j, ST_SECCOMP);
}

/* Exec cgman-init from its sealed memfd, the error pipe on INIT_ERROR_FD. */
static void exec_init(struct job *j)
{
    int err = fcntl(j->error_wr, F_DUPFD_CLOEXEC, INIT_ERROR_FD + 1);
    int init = fcntl(j->init_fd, F_DUPFD_CLOEXEC, INIT_ERROR_FD + 1);
    if (err < 0 || init < 0) fail(j, ST_INIT);
    j->error_wr = err;
    if (dup2(err, INIT_ERROR_FD) < 0) fail(j, ST_INIT);     /* dup2 leaves it open across exec */
    syscall(SYS_execveat, init, "", j->init_argv, j->envp, AT_EMPTY_PATH);
    fail(j, ST_INIT);
}

/* Set PR_SET_PDEATHSIG (again after a change of credentials, which clears it), then make sure
 * the parent did not die before it was set (getppid() is 0 across a pid namespace): the child's
 * first instruction can come long after the clone (born frozen into a frozen cgroup), and a
 * parent that died meanwhile sends nothing. */
static void rearm_pdeathsig(struct job *j)
{
    if (!j->pdeathsig) return;
    prctl(PR_SET_PDEATHSIG, j->pdeathsig);
    if (j->parent_pidfd >= 0) {
        struct pollfd pfd = {j->parent_pidfd, POLLIN, 0};
        if (poll(&pfd, 1, 0) > 0) { errno = ECANCELED; fail(j, ST_RELEASE); }
    }
}

/* Join the v1 cgroups: write 0 (this thread) to each one's `tasks`. A thread that moves
 * itself skips the cgroup threadgroup rwsem, whose first writer after an idle spell waits
 * out an RCU grace period (8-12 ms here); the parent writing our pid to cgroup.procs takes
 * it. Done before the release, so the workload still starts inside all of its cgroups. */
static void join_cgroups(struct job *j)
{
    for (Py_ssize_t i = 0; i < j->n_join; i++) {
        ssize_t w;
        do { w = write(j->join_fds[i], "0", 1); } while (w < 0 && errno == EINTR);
        if (w != 1) fail(j, ST_JOIN);
        close(j->join_fds[i]);
    }
}

static int child_main(struct job *j)
{
    char c;
    rearm_pdeathsig(j);
    join_cgroups(j);
    if (j->release_rd >= 0) {
        /* EOF here means the parent died or gave up (its release byte may be here, though). */
        ssize_t n;
        do { n = read(j->release_rd, &c, 1); } while (n < 0 && errno == EINTR);
        if (n != 1) { errno = ECANCELED; fail(j, ST_RELEASE); }
        close(j->release_rd);
    }

    for (Py_ssize_t i = 0; i < j->n_setns; i++)
        if (setns(j->setns_fds[i], 0) < 0) fail(j, ST_SETNS);
    if (j->netns_fd >= 0 && setns(j->netns_fd, CLONE_NEWNET) < 0) fail(j, ST_SETNS);
    if (j->gid >= 0) {
        if (raw_setgroups0() < 0) fail(j, ST_SETGROUPS);
        if (raw_setresgid(j->gid) < 0) fail(j, ST_SETGID);
    }
    if (j->uid >= 0 && raw_setresuid(j->uid) < 0) fail(j, ST_SETUID);
    if (j->uid >= 0 || j->gid >= 0) rearm_pdeathsig(j);
    if (j->unshare_flags && unshare(j->unshare_flags) < 0) fail(j, ST_UNSHARE);
    if (j->hostname && sethostname(j->hostname, strlen(j->hostname)) < 0) fail(j, ST_HOSTNAME);
    if (j->lo_up && loopback_up() < 0) fail(j, ST_LOOPBACK);
    run_ops(j);
    j->cur_op = -1;
    if (j->setsid_ && setsid() < 0) fail(j, ST_SETSID);
    reset_signals();
    cloexec_all();
    apply_security(j);
    if (j->init_fd >= 0) {
        sigset_t all;          /* the init unblocks them for the workload once it can forward */
        sigfillset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        exec_init(j);
    }
    cg_exec_search(j->argv, j->envp, j->path_env);
    fail(j, ST_EXEC);
    return 127;
}

/* ---------------------------------------------------------------- Python glue */

static int bytes_list(PyObject *seq, char ***out, PyObject **keep)
{
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of bytes");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **arr = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!arr) { Py_DECREF(fast); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(it)) {
            PyMem_Free(arr); Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "argv/envp items must be bytes");
            return -1;
        }
        arr[i] = PyBytes_AS_STRING(it);
    }
    *out = arr;
    *keep = fast;
    return 0;
}

static const char *opt_str(PyObject *o)
{
    return (o == Py_None) ? NULL : PyBytes_AsString(o);
}

/* What a job's pointers borrow from (argv, envp, ops: Python objects; the seccomp program: a
 * buffer), held until the clone is done and released by job_free. */
struct job_refs {
    PyObject *argv, *envp, *ops;
    Py_buffer filter;
};

static int job_filter(struct job *j, Py_buffer *filter)
{
    if (!filter->buf) return 0;
    if (filter->len % sizeof(struct sock_filter) || filter->len == 0 ||
        filter->len / sizeof(struct sock_filter) > BPF_MAXINSNS) {
        PyErr_SetString(PyExc_ValueError, "seccomp: not a BPF program (size)");
        return -1;
    }
    j->filter.len = (unsigned short)(filter->len / sizeof(struct sock_filter));
    j->filter.filter = filter->buf;
    return 0;
}

/* argv and envp as C arrays; with an init (j->init_fd >= 0) also {"cgman-init", argv...}. */
static int job_argv(struct job *j, PyObject *argv_o, PyObject *envp_o, struct job_refs *refs)
{
    if (bytes_list(argv_o, &j->argv, &refs->argv) < 0) return -1;
    if (!j->argv[0]) { PyErr_SetString(PyExc_ValueError, "empty argv"); return -1; }
    if (bytes_list(envp_o, &j->envp, &refs->envp) < 0) return -1;
    j->path_env = cg_path_env(j->envp);
    if (j->init_fd >= 0) {
        Py_ssize_t n = 0;
        while (j->argv[n]) n++;
        j->init_argv = PyMem_Calloc((size_t)n + 2, sizeof(char *));
        if (!j->init_argv) { PyErr_NoMemory(); return -1; }
        j->init_argv[0] = "cgman-init";
        memcpy(j->init_argv + 1, j->argv, (size_t)n * sizeof(char *));
    }
    return 0;
}

/* The mount operations: a sequence of (kind, a, b, c, flags, data) tuples. */
static int job_ops(struct job *j, PyObject *ops_o, PyObject **keep)
{
    if (!ops_o || ops_o == Py_None) return 0;
    *keep = PySequence_Fast(ops_o, "ops must be a sequence");
    if (!*keep) return -1;
    j->n_ops = PySequence_Fast_GET_SIZE(*keep);
    j->ops = PyMem_Calloc((size_t)j->n_ops + 1, sizeof(struct op));
    if (!j->ops) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < j->n_ops; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(*keep, i);
        PyObject *a = Py_None, *b = Py_None, *c = Py_None, *d = Py_None;
        unsigned long fl = 0;
        if (!PyArg_ParseTuple(t, "i|OOOkO", &j->ops[i].kind, &a, &b, &c, &fl, &d)) return -1;
        j->ops[i].a = opt_str(a); j->ops[i].b = opt_str(b);
        j->ops[i].c = opt_str(c); j->ops[i].data = opt_str(d);
        j->ops[i].flags = fl;
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

/* A sequence of fds (setns_fds: the namespaces `cgman exec` joins, in order; join_fds: the
 * v1 `tasks` files the child writes itself into). */
static int job_fds(PyObject *seq, const char *what, int **out, Py_ssize_t *n)
{
    if (!seq || seq == Py_None) return 0;
    PyObject *f = PySequence_Fast(seq, what);
    if (!f) return -1;
    *n = PySequence_Fast_GET_SIZE(f);
    *out = PyMem_Calloc((size_t)*n + 1, sizeof(int));
    for (Py_ssize_t i = 0; *out && i < *n; i++)
        (*out)[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(f, i));
    Py_DECREF(f);
    if (!*out) { PyErr_NoMemory(); return -1; }
    return PyErr_Occurred() ? -1 : 0;
}

static void job_free(struct job *j, struct job_refs *refs)
{
    if (j->parent_pidfd > 0) close(j->parent_pidfd);
    PyMem_Free(j->argv);
    PyMem_Free(j->init_argv);
    PyMem_Free(j->envp);
    if (refs->filter.buf) PyBuffer_Release(&refs->filter);
    PyMem_Free(j->ops);
    PyMem_Free(j->setns_fds);
    PyMem_Free(j->join_fds);
    Py_XDECREF(refs->argv);
    Py_XDECREF(refs->envp);
    Py_XDECREF(refs->ops);
}

#define CHILD_STACK_BYTES (256 * 1024)

#ifdef __x86_64__
/* clone3 whose child calls fn(arg) on the stack given in ``ca`` and exits with its value: the
 * child must never return through the frames of the parent, whose memory it shares (glibc has
 * no clone3 wrapper to do this). The parent gets the pid or -errno. */
static long clone3_fn(struct clone_args_v2 *ca, int (*fn)(void *), void *arg)
{
    long ret;
    register long r_fn __asm__("r12") = (long)fn;
    register long r_arg __asm__("r13") = (long)arg;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov %%eax, %%edi\n\t"
                     "mov $231, %%eax\n\t"       /* exit_group */
                     "syscall\n\t"
                     "hlt\n"
                     "1:\n\t"
                     : "=a"(ret)
                     : "0"((long)SYS_clone3), "D"(ca), "S"(sizeof *ca), "r"(r_fn), "r"(r_arg)
                     : "rcx", "r11", "memory", "cc");
    return ret;
}

/* The child works on its own copy of the job, on its own stack: child_main writes job fields
 * (cur_op, held[], error_wr), and the original is on the suspended parent's stack. */
static int vfork_entry(void *arg)
{
    struct job copy = *(const struct job *)arg;
    child_main(&copy);
    return 127;
}
#endif

/* A child that is not held: CLONE_VM | CLONE_VFORK on a stack of its own (as posix_spawn), every
 * signal blocked meanwhile (no handler of the parent may run in it; glibc's own signals too, hence
 * the raw call) and the GIL released while this thread is suspended. -1 with errno ENOSYS where
 * this architecture has no clone3_fn. */
static pid_t clone_vfork(struct job *j, struct clone_args_v2 *ca)
{
#ifdef __x86_64__
    void *stack = mmap(NULL, CHILD_STACK_BYTES, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return -1;
    struct clone_args_v2 va = *ca;
    va.flags |= CLONE_VM | CLONE_VFORK;
    va.stack = (uint64_t)(uintptr_t)stack;
    va.stack_size = CHILD_STACK_BYTES;
    uint64_t all = ~0ULL, old = 0;
    long r;
    Py_BEGIN_ALLOW_THREADS
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof all);
    r = clone3_fn(&va, vfork_entry, j);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof old);
    Py_END_ALLOW_THREADS
    munmap(stack, CHILD_STACK_BYTES);     /* the child has exec'd or exited: its stack is free */
    if (r < 0) { errno = (int)-r; return -1; }
    return (pid_t)r;
#else
    (void)j; (void)ca;
    errno = ENOSYS;
    return -1;
#endif
}

/* Clone the child, born in the cgroup2 directory cgroup_fd (>= 0) where the kernel can
 * (clone3 CLONE_INTO_CGROUP, Linux 5.7+; before, a plain clone3 or clone and the parent attaches
 * it: *in_cgroup says which). The child closes the parent's pipe ends and runs child_main.
 * ``*held`` on entry: whether the child waits for release; where a child that is not held
 * cannot be made here, it is held after all (*held = 1). */
static pid_t clone_child(struct job *j, unsigned long long clone_flags, int cgroup_fd,
                         int release_wr, int error_rd, int *in_cgroup, int *held)
{
    struct clone_args_v2 ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = clone_flags;
    ca.exit_signal = SIGCHLD;
    if (cgroup_fd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)cgroup_fd;
    }
    *in_cgroup = 0;
    if (!*held) {
        int release_rd = j->release_rd;
        j->release_rd = -1;
        pid_t vpid = clone_vfork(j, &ca);
        if (vpid >= 0) {
            *in_cgroup = cgroup_fd >= 0;
            return vpid;
        }
        if (errno != ENOSYS && errno != E2BIG && errno != EINVAL) return -1;
        j->release_rd = release_rd;       /* held after all */
        *held = 1;
    }
    pid_t pid = (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
    if (pid < 0 && cgroup_fd >= 0 && (errno == E2BIG || errno == ENOSYS || errno == EINVAL)) {
        ca.flags &= ~CLONE_INTO_CGROUP;     /* kernel < 5.7: the parent attaches instead */
        ca.cgroup = 0;
        pid = (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
    } else if (pid >= 0) {
        *in_cgroup = cgroup_fd >= 0;
    }
    if (pid < 0 && errno == ENOSYS)
        pid = (pid_t)syscall(SYS_clone, (unsigned long)(clone_flags & 0xffffffffULL) | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) {
        close(release_wr);
        close(error_rd);
        child_main(j);
        _exit(127);
    }
    return pid;
}

/* The pipes and the clone; the parent's side as (pid, in_cgroup, release_fd, error_fd),
 * release_fd -1 for a child that is not held (it has exec'd or failed by now). */
static PyObject *start_job(struct job *j, unsigned long long clone_flags, int cgroup_fd, int held)
{
    PyObject *result = NULL;
    int release[2] = {-1, -1}, errp[2] = {-1, -1}, in_cgroup = 0;
    if (pipe2(release, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    j->release_rd = release[0];
    j->error_wr = errp[1];
    j->parent_pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);   /* -1 before Linux 5.3: skip the check */
    pid_t pid = clone_child(j, clone_flags, cgroup_fd, release[1], errp[0], &in_cgroup, &held);
    if (pid < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    close(release[0]); release[0] = -1;
    close(errp[1]); errp[1] = -1;
    if (!held) { close(release[1]); release[1] = -1; }
    result = Py_BuildValue("(iOii)", (int)pid, in_cgroup ? Py_True : Py_False, release[1], errp[0]);
    release[1] = errp[0] = -1;
out:
    for (int i = 0; i < 2; i++) {
        if (release[i] >= 0) close(release[i]);
        if (errp[i] >= 0) close(errp[i]);
    }
    return result;
}

static PyObject *py_spawn(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"argv", "envp", "clone_flags", "cgroup_fd", "unshare_flags", "hostname",
                             "lo_up", "ops", "init_fd", "setsid", "pdeathsig", "uid", "gid", "setns_fds",
                             "drop_caps", "cap_keep", "no_new_privs", "seccomp", "run_uid", "run_gid", "join_fds",
                             "held", "netns_fd", NULL};
    PyObject *argv_o, *envp_o, *hostname_o = Py_None, *ops_o = NULL, *setns_o = NULL, *join_o = NULL;
    unsigned long long clone_flags = 0, cap_keep = 0;
    unsigned long unshare_flags = 0;
    int cgroup_fd = -1, lo_up = 0, init_fd = -1, setsid_ = 1, pdeathsig = SIGKILL, drop = 0, nnp = 0, held = 1;
    int netns_fd = -1;
    long uid = -1, gid = -1, run_uid = -1, run_gid = -1;
    struct job_refs refs;
    memset(&refs, 0, sizeof refs);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|KikOpOipillOpKpz*llOpi", kwlist, &argv_o, &envp_o,
                                     &clone_flags, &cgroup_fd, &unshare_flags, &hostname_o, &lo_up,
                                     &ops_o, &init_fd, &setsid_, &pdeathsig, &uid, &gid, &setns_o,
                                     &drop, &cap_keep, &nnp, &refs.filter, &run_uid, &run_gid, &join_o, &held,
                                     &netns_fd))
        return NULL;

    struct job j;
    memset(&j, 0, sizeof j);
    j.parent_pidfd = -1; j.cur_op = -1; j.init_fd = init_fd; j.netns_fd = netns_fd;
    j.drop_caps = drop; j.cap_keep = cap_keep; j.nnp = nnp;
    j.unshare_flags = unshare_flags;
    j.lo_up = lo_up; j.setsid_ = setsid_; j.pdeathsig = pdeathsig;
    j.uid = uid; j.gid = gid;
    j.run_uid = run_uid; j.run_gid = run_gid;
    PyObject *result = NULL;
    if (job_filter(&j, &refs.filter) < 0 || job_argv(&j, argv_o, envp_o, &refs) < 0) goto out;
    j.hostname = opt_str(hostname_o);
    if (PyErr_Occurred() || job_ops(&j, ops_o, &refs.ops) < 0 || job_fds(setns_o, "setns_fds must be a sequence", &j.setns_fds, &j.n_setns) < 0 ||
        job_fds(join_o, "join_fds must be a sequence", &j.join_fds, &j.n_join) < 0) goto out;
    result = start_job(&j, clone_flags, cgroup_fd, held);
out:
    job_free(&j, &refs);
    return result;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23           /* Linux 5.14 */
#endif

/* Fault in, writable, each (address, length) range of ``ranges`` (native uint64 pairs, page
 * aligned) as a write to every page would: a private page this process shares with its parent
 * since a fork is copied now, not when first written (served.py's spare supervisor). A range
 * no longer mapped is skipped; EINVAL (a kernel without the advice, or a range it may not
 * populate) ends the work. Returns the bytes populated. */
static PyObject *py_populate_write(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    const uint64_t *r = buf.buf;
    size_t n = (size_t)buf.len / (2 * sizeof(uint64_t));
    unsigned long long done = 0;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < n; i++) {
        if (madvise((void *)(uintptr_t)r[2 * i], (size_t)r[2 * i + 1], MADV_POPULATE_WRITE) == 0)
            done += r[2 * i + 1];
        else if (errno == EINVAL)
            break;                       /* not this kernel's (or not a range it may populate) */
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLongLong(done);
}

/* A network namespace made now, for a later launch to join (containers/netns_ahead.py): a thread of
 * its own unshares it (the calling thread, and so this process, never leaves its namespace),
 * brings lo up where asked and opens it; the thread then ends, the descriptor keeps it. */
struct netns_job { int lo_up, fd, err; };

static void *netns_thread(void *arg)
{
    struct netns_job *n = arg;
    if (unshare(CLONE_NEWNET) < 0 || (n->lo_up && loopback_up() < 0)) {
        n->err = errno;
        return NULL;
    }
    n->fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (n->fd < 0) n->err = errno;
    return NULL;
}

static PyObject *py_new_netns(PyObject *self, PyObject *args)
{
    int lo_up = 1, r;
    if (!PyArg_ParseTuple(args, "|p", &lo_up)) return NULL;
    struct netns_job n = {lo_up, -1, 0};
    pthread_t t;
    Py_BEGIN_ALLOW_THREADS
    r = pthread_create(&t, NULL, netns_thread, &n);
    if (r == 0) pthread_join(t, NULL);
    Py_END_ALLOW_THREADS
    if (r != 0 || n.fd < 0) {
        errno = r ? r : n.err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(n.fd);
}

static PyMethodDef methods[] = {
    {"new_netns", py_new_netns, METH_VARARGS,
     "new_netns(lo_up=True) -> int\n\n"
     "A new network namespace (lo up where asked), made by a thread of its own: an O_CLOEXEC\n"
     "descriptor of it, for a child to join with setns_fds."},
    {"populate_write", py_populate_write, METH_VARARGS,
     "populate_write(ranges: bytes) -> int\n\n"
     "madvise(MADV_POPULATE_WRITE) over each (address, length) pair of native uint64s in ranges;\n"
     "the bytes populated (0 where the kernel lacks it)."},
    {"spawn", (PyCFunction)(void (*)(void))py_spawn, METH_VARARGS | METH_KEYWORDS,
     "spawn(argv, envp, clone_flags=0, cgroup_fd=-1, unshare_flags=0, hostname=None, lo_up=False,\n"
     "      ops=None, init_fd=-1, setsid=True, pdeathsig=SIGKILL, uid=-1, gid=-1, setns_fds=None,\n"
     "      drop_caps=False, cap_keep=0, no_new_privs=False, seccomp=None, run_uid=-1, run_gid=-1,\n"
     "      join_fds=None, held=True, netns_fd=-1)\n"
     "      -> (pid, in_cgroup, release_fd, error_fd)\n\n"
     "Clone a child that joins the v1 cgroups of join_fds (their `tasks` files, open for writing),\n"
     "waits for one byte on release_fd (held; otherwise it goes straight on, sharing this process's\n"
     "memory until it execs, and release_fd is -1), then sets itself up and execs argv\n"
     "(through cgman-init from the sealed memfd init_fd when that is >= 0). netns_fd >= 0: the\n"
     "network namespace it joins (setns with CLONE_NEWNET, so nothing else is taken for one).\n"
     "See cgman/containers/launch.py for the protocol."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "cgman._spawn", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spawn(void)
{
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "OP_MOUNT", OP_MOUNT);
    PyModule_AddIntConstant(m, "OP_MKDIR", OP_MKDIR);
    PyModule_AddIntConstant(m, "OP_TOUCH", OP_TOUCH);
    PyModule_AddIntConstant(m, "OP_PIVOT", OP_PIVOT);
    PyModule_AddIntConstant(m, "OP_CHDIR", OP_CHDIR);
    PyModule_AddIntConstant(m, "OP_UMOUNT", OP_UMOUNT);
    PyModule_AddIntConstant(m, "OP_SYMLINK", OP_SYMLINK);
    PyModule_AddIntConstant(m, "OP_OPTIONAL", OP_OPTIONAL);
    PyModule_AddIntConstant(m, "OP_HOLD", OP_HOLD);
    PyModule_AddIntConstant(m, "OP_BIND_HELD", OP_BIND_HELD);
    PyModule_AddIntConstant(m, "OP_RDONLY_TREE", OP_RDONLY_TREE);
    PyModule_AddIntConstant(m, "OP_OVERLAY_HELD", OP_OVERLAY_HELD);
    PyModule_AddIntConstant(m, "OP_TOLERANT", OP_TOLERANT);
    PyModule_AddIntConstant(m, "MS_RDONLY", MS_RDONLY);
    PyModule_AddIntConstant(m, "MS_NOSUID", MS_NOSUID);
    PyModule_AddIntConstant(m, "MS_NODEV", MS_NODEV);
    PyModule_AddIntConstant(m, "MS_NOEXEC", MS_NOEXEC);
    PyModule_AddIntConstant(m, "MS_REMOUNT", MS_REMOUNT);
    PyModule_AddIntConstant(m, "MS_BIND", MS_BIND);
    PyModule_AddIntConstant(m, "MS_REC", MS_REC);
    PyModule_AddIntConstant(m, "MS_PRIVATE", MS_PRIVATE);
    PyModule_AddIntConstant(m, "MS_NOATIME", MS_NOATIME);
    PyModule_AddIntConstant(m, "MS_NODIRATIME", MS_NODIRATIME);
    PyModule_AddIntConstant(m, "MS_RELATIME", MS_RELATIME);
    PyModule_AddIntConstant(m, "MS_STRICTATIME", MS_STRICTATIME);
    PyModule_AddIntConstant(m, "CLONE_NEWCGROUP", CLONE_NEWCGROUP);
    PyModule_AddIntConstant(m, "CLONE_NEWUTS", CLONE_NEWUTS);
    PyModule_AddIntConstant(m, "CLONE_NEWIPC", CLONE_NEWIPC);
    PyModule_AddIntConstant(m, "CLONE_NEWPID", CLONE_NEWPID);
    PyModule_AddIntConstant(m, "CLONE_NEWNET", CLONE_NEWNET);
    PyModule_AddIntConstant(m, "CLONE_NEWNS", CLONE_NEWNS);
    PyModule_AddIntConstant(m, "CLONE_NEWUSER", CLONE_NEWUSER);
    static const char *stages[] = {STAGE_NAMES};
    PyObject *names = PyTuple_New(sizeof stages / sizeof *stages);
    if (!names) return NULL;
    for (size_t i = 0; i < sizeof stages / sizeof *stages; i++)
        PyTuple_SET_ITEM(names, i, PyUnicode_FromString(stages[i]));
    PyModule_AddObject(m, "STAGES", names);
    return m;
}
