/*
 * What cgman/_spawn.c and cgman/_init.c share: the stages a failing child reports
 * (the parent maps them to words through _spawn.STAGES), the fd on which the
 * exec'd init reports a workload that could not be started, and the PATH search.
 * One definition, included by both, so the two C programs cannot drift apart.
 */
#ifndef CGMAN_PROTO_H
#define CGMAN_PROTO_H

#include <errno.h>
#include <string.h>
#include <unistd.h>

enum {
    ST_RELEASE = 1, ST_SETNS, ST_SETGROUPS, ST_SETGID, ST_SETUID, ST_UNSHARE, ST_HOSTNAME,
    ST_LOOPBACK, ST_MOUNT, ST_MKDIR, ST_TOUCH, ST_PIVOT, ST_CHDIR, ST_FORK, ST_EXEC, ST_SETSID,
    ST_UMOUNT, ST_SYMLINK, ST_CAPS, ST_NNP, ST_SECCOMP, ST_INIT, ST_JOIN,
};

#define STAGE_NAMES                                                                               \
    "", "waiting for the parent", "joining a namespace", "dropping groups", "setting the gid",     \
    "setting the uid", "creating namespaces", "setting the hostname", "bringing up lo", "mounting", \
    "creating a directory", "creating a mount point", "pivot_root", "changing directory",          \
    "forking the workload", "exec", "creating a session", "unmounting", "creating a symlink",      \
    "dropping capabilities", "setting no_new_privs", "loading the seccomp filter", "starting the init", \
    "joining its cgroups"

/* The exec'd init (cgman/_init.c) finds the error pipe here: no argument in its cmdline. */
#define INIT_ERROR_FD 3

static inline void cg_report(int fd, int stage, int err, int op)
{
    int msg[3] = {stage, err, op};
    ssize_t r = write(fd, msg, sizeof msg);
    (void)r;
}

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* execvp without malloc: PATH comes from the workload's environment (async-signal-safe). */
static inline void cg_exec_search(char **argv, char **envp, const char *path_env)
{
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return;
    }
    const char *p = path_env ? path_env : DEFAULT_PATH;
    char buf[4096];
    size_t flen = strlen(file);
    int saw_eacces = 0;
    while (*p) {
        const char *end = strchr(p, ':');
        size_t dlen = end ? (size_t)(end - p) : strlen(p);
        if (dlen + flen + 2 <= sizeof buf) {
            if (dlen == 0) { buf[0] = '.'; dlen = 1; } else memcpy(buf, p, dlen);
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, file, flen + 1);
            execve(buf, argv, envp);
            if (errno == EACCES) saw_eacces = 1;
            else if (errno != ENOENT && errno != ENOTDIR) return;
        }
        if (!end) break;
        p = end + 1;
    }
    errno = saw_eacces ? EACCES : ENOENT;
}

static inline const char *cg_path_env(char **envp)
{
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0) return *e + 5;
    return NULL;
}

#endif
