/*
 * cgman-init: the container's PID 1 (and the parent of each `cgman exec` command).
 *
 * Why a separate, static program: the container must not see the host through its
 * PID 1. A fork of the cgman CLI that never execs would show the operator's whole
 * environment in /proc/1/environ and the host's Python binary as /proc/1/exe (the
 * set-up of CVE-2019-5736). cgman copies this binary into a sealed memfd once per
 * process and the launch helper execs that copy, so /proc/1/exe is an immutable
 * anonymous file and /proc/1/environ is the workload's own clean environment.
 *
 * Usage (by cgman._spawn only): argv = {"cgman-init", WORKLOAD ARGV...}, envp = the
 * workload's environment, fd INIT_ERROR_FD = the launch's error pipe. It starts the
 * workload (vfork + exec: borrowing memory is safe and cheap), reports a workload that
 * could not be exec'd as {ST_EXEC, errno} on that pipe, forwards every signal it can
 * catch to the workload, reaps every zombie, and exits with the workload's status
 * (128+N after signal N).
 *
 * Without a workload (argv = {"cgman-keeper"}) it is the keeper of a container's systemd
 * scope (containers/scope.py): it sleeps in the scope's keeper/ cgroup so that the scope,
 * whose cgroup systemd removes once it is empty, outlives the workload until cgman has read
 * the final usage; cgman then ends it with cgroup.kill. Only SIGKILL ends it: a stop of the
 * scope (SIGTERM to all) must not take the scope away before the container is billed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "_proto.h"

extern char **environ;

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* The keeper outlives the command that started it (a detached container's scope: days), so it
 * keeps nothing of that command's: no fd above stderr (a pipe someone waits on for EOF, a
 * flock'd file), no working directory (a mount that could not be unmounted). */
static int keep(void)
{
    prctl(PR_SET_NAME, "cgman-keeper");
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {          /* before Linux 5.9 */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < (max > 0 && max < (1L << 20) ? max : 1024); fd++) close((int)fd);
    }
    if (chdir("/") < 0) return 127;
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);     /* SIGKILL and SIGSTOP cannot be blocked */
    for (;;) pause();
}

int main(int argc, char **argv)
{
    if (argc < 2) return keep();
    prctl(PR_SET_NAME, "cgman-init");       /* exec of a memfd names it memfd:cgman-init */
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &all, NULL);    /* no signal lost between vfork and sigwaitinfo */
    fcntl(INIT_ERROR_FD, F_SETFD, FD_CLOEXEC);
    char **wargv = argv + 1;
    const char *path = cg_path_env(environ);
    pid_t child = vfork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);    /* the workload never outlives its init */
        sigprocmask(SIG_SETMASK, &none, NULL);
        cg_exec_search(wargv, environ, path);
        cg_report(INIT_ERROR_FD, ST_EXEC, errno, -1);
        _exit(127);
    }
    if (child < 0) {
        cg_report(INIT_ERROR_FD, ST_FORK, errno, -1);
        return 127;
    }
    close(INIT_ERROR_FD);                    /* EOF for the parent: the workload runs */
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&all, &si);
        if (sig < 0) continue;
        if (sig == SIGCHLD) {
            int st;
            pid_t p;
            while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                if (p == child) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
            continue;
        }
        kill(child, sig);
    }
}
