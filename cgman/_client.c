/*
 * The `cgman` command: a C front for the Python CLI (cgman/cli/thin.py says why and what).
 *
 * `cgman [GLOBAL...] run ...` while an agent of that cgroup root listens: the run is handed to
 * the agent over its socket (the protocol of cgman/cli/wire.py) and this process relays
 * signals and exits with the run's status. Every other command line, and a run no agent
 * takes, is exec'd into the Python CLI installed next to this program (same pid, same
 * arguments). Names, numbers and messages come from the generated _client.h (thin.header()).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "_client.h"

extern char **environ;

struct where {
    const char *run_dir, *root;
    int verbose, is_run;
};

static int listed(const char *const *names, const char *word, size_t len)
{
    for (; *names; names++)
        if (strlen(*names) == len && memcmp(*names, word, len) == 0)
            return 1;
    return 0;
}

/* thin.flags(): the workload is the first word after the command that is neither an option
 * nor an option's value; only words before it are cgman's. The last value given wins. */
static struct where read_line(int argc, char **argv)
{
    struct where w = {0, 0, 0, 0};
    int command_seen = 0;
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0;) {
        const char *word = argv[i], *eq = strchr(word, '=');
        size_t keylen = eq ? (size_t)(eq - word) : strlen(word);
        if (word[0] != '-' || keylen == 1) {       /* a word, or "-" (stdin) before any '=' */
            if (command_seen)
                break;
            command_seen = 1;
            w.is_run = strcmp(word, "run") == 0;
            i++;
        } else if (listed(CG_FLAGS, word, keylen)) {
            w.verbose |= listed(CG_VERBOSE, word, keylen);
            i++;
        } else {
            const char **slot = 0;
            if (keylen == strlen(CG_RUN_DIR_OPTION) && !strncmp(word, CG_RUN_DIR_OPTION, keylen))
                slot = &w.run_dir;
            else if (keylen == strlen(CG_ROOT_OPTION) && !strncmp(word, CG_ROOT_OPTION, keylen))
                slot = &w.root;
            if (slot)
                *slot = eq ? eq + 1 : i + 1 < argc ? argv[i + 1] : "";
            i += eq ? 1 : 2;
        }
    }
    return w;
}

/* state/agentsock.socket_path: <run dir>/agent-<root, '/' as '_', without '/' at its ends>.sock */
static int socket_path(const struct where *w, char *out, size_t size)
{
    const char *run = w->run_dir && *w->run_dir ? w->run_dir : getenv(CG_RUN_DIR_ENV);
    const char *root = w->root && *w->root ? w->root : getenv(CG_ROOT_ENV);
    if (!run || !*run)
        run = CG_DEFAULT_RUN_DIR;
    if (!root || !*root)
        root = CG_DEFAULT_ROOT;
    while (*root == '/')
        root++;
    size_t rootlen = strlen(root);
    while (rootlen && root[rootlen - 1] == '/')
        rootlen--;
    if (rootlen == 0)          /* an empty root: the direct path says what is wrong with it */
        return -1;
    char name[PATH_MAX];
    if (rootlen >= sizeof name)
        return -1;
    for (size_t i = 0; i < rootlen; i++)
        name[i] = root[i] == '/' ? CG_ROOT_SEPARATOR_AS : root[i];
    name[rootlen] = 0;
    int n = snprintf(out, size, "%s%s%s%s%s", run, run[strlen(run) - 1] == '/' ? "" : "/",
                     CG_SOCKET_PREFIX, name, CG_SOCKET_SUFFIX);
    if (n < 0 || (size_t)n >= size)
        return -1;
    return 0;
}

/* The request: HEADER (magic, version, 3 pad bytes, body length) + three string lists. */
struct buf {
    char *data;
    size_t len, cap;
};

static int put(struct buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = (b->cap ? b->cap : 4096);
        while (cap < b->len + n)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d, b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static int put_u32(struct buf *b, size_t v)
{
    if (v > UINT32_MAX)
        return -1;
    uint32_t be = htonl((uint32_t)v);
    return put(b, &be, 4);
}

static int put_list(struct buf *b, char *const *items, size_t count)
{
    if (put_u32(b, count) < 0)
        return -1;
    for (size_t i = 0; i < count; i++)
        if (put_u32(b, strlen(items[i])) < 0 || put(b, items[i], strlen(items[i])) < 0)
            return -1;
    return 0;
}

static int request(struct buf *b, int argc, char **argv)
{
    char cwd[PATH_MAX], *cwds[1] = {cwd};
    size_t n = 0, k = 0;
    if (!getcwd(cwd, sizeof cwd))
        return -1;
    for (char **e = environ; *e; e++)
        n++;
    char **env = calloc(n + 1, sizeof *env);
    if (!env)
        return -1;
    for (char **e = environ; *e; e++)
        if ((*e)[0] != '=' && strchr(*e, '='))      /* as Python's os.environ: KEY=VALUE only */
            env[k++] = *e;
    char head[CG_HEADER_SIZE] = CG_MAGIC;
    head[4] = CG_VERSION;
    int r = put(b, head, sizeof head) < 0 || put_list(b, argv, (size_t)argc) < 0 ||
            put_list(b, env, k) < 0 || put_list(b, cwds, 1) < 0 ? -1 : 0;
    free(env);
    if (r == 0) {
        uint32_t len = htonl((uint32_t)(b->len - CG_HEADER_SIZE));
        memcpy(b->data + 8, &len, 4);
    }
    return r;
}

static int send_request(int sock, struct buf *b)
{
    int fds[CG_N_FDS] = {0, 1, 2};
    char control[CMSG_SPACE(sizeof fds)];
    struct iovec iov = {b->data, b->len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    memset(control, 0, sizeof control);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    for (size_t off = sent < 0 ? b->len : (size_t)sent; off < b->len;) {
        ssize_t w = send(sock, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (w < 0 && errno != EINTR)
            return -1;
        off += w > 0 ? (size_t)w : 0;
    }
    return sent < 0 ? -1 : 0;
}

/* The next FRAME (type byte, u32); -1 at the end of the stream. A forwarded signal's
 * handler interrupts the read, which goes on. */
static int read_frame(int sock, char *kind, uint32_t *value)
{
    unsigned char f[CG_FRAME_SIZE];
    size_t got = 0;
    while (got < sizeof f) {
        ssize_t r = read(sock, f + got, sizeof f - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    *kind = (char)f[0];
    *value = (uint32_t)f[1] << 24 | (uint32_t)f[2] << 16 | (uint32_t)f[3] << 8 | f[4];
    return 0;
}

static int relay_to = -1;

static void forward(int sig)
{
    unsigned char f[CG_FRAME_SIZE] = {CG_SIGNAL, 0, 0, 0, (unsigned char)sig};
    int saved = errno;
    ssize_t r = send(relay_to, f, sizeof f, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)r;
    errno = saved;
}

/* After ACCEPTED: forward signals until the supervisor reports the exit status. */
static int relay(int sock, const char *path, uint32_t supervisor)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;           /* no SA_RESTART: the read sees EINTR and goes on */
    sigemptyset(&sa.sa_mask);
    relay_to = sock;
    for (const int *s = CG_FORWARDED; *s; s++)
        sigaction(*s, &sa, 0);
    char kind;
    uint32_t value;
    if (read_frame(sock, &kind, &value) < 0 || kind != CG_EXITED) {
        dprintf(2, CG_MSG_LOST_WHILE, path, supervisor);
        return 1;
    }
    return (int)(value & 0xff);
}

/* A connection to the agent at ``addr``, or -1 to launch here. */
static int connect_agent(const struct sockaddr_un *addr, int verbose)
{
    /* A closed stdin, stdout or stderr: the socket would take its number and be sent as the
     * container's stdio. The direct path reports what it has to. */
    for (int fd = 0; fd < CG_N_FDS; fd++)
        if (fcntl(fd, F_GETFD) < 0) {
            if (verbose)
                dprintf(2, CG_MSG_CLOSED_STDIO, fd);
            return -1;
        }
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)addr, sizeof *addr) < 0) {
        if (verbose)           /* no agent; not root (the socket is 0600) */
            dprintf(2, CG_MSG_NO_AGENT, addr->sun_path, strerror(errno));
        if (sock >= 0)
            close(sock);
        return -1;
    }
    struct ucred peer = {.uid = (uid_t)-1};
    socklen_t len = sizeof peer;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0 || peer.uid != 0) {
        if (verbose)           /* the environment and the terminal go to root's agent only */
            dprintf(2, CG_MSG_NOT_ROOTS, addr->sun_path, (unsigned)peer.uid);
        close(sock);
        return -1;
    }
    return sock;
}

/* The run's exit code, or -1 to launch here (the Python CLI's direct path). */
static int served(int argc, char **argv, const char *path, int verbose)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    struct buf b = {0, 0, 0};
    if (strlen(path) >= sizeof addr.sun_path) {
        if (verbose)
            dprintf(2, CG_MSG_NO_AGENT, path, strerror(ENAMETOOLONG));
        return -1;
    }
    strcpy(addr.sun_path, path);
    int sock = connect_agent(&addr, verbose);
    if (sock < 0)
        return -1;
    if (request(&b, argc, argv) < 0 || send_request(sock, &b) < 0) {
        if (verbose)
            dprintf(2, CG_MSG_NO_AGENT, path, strerror(errno));
        close(sock);
        free(b.data);
        return -1;
    }
    free(b.data);
    char kind;
    uint32_t value;
    if (read_frame(sock, &kind, &value) < 0 || (kind != CG_ACCEPTED && kind != CG_DECLINED)) {
        dprintf(2, CG_MSG_LOST_BEFORE, path);
        return 1;
    }
    if (kind == CG_DECLINED) {
        if (verbose && value < CG_N_DECLINE_REASONS && *CG_DECLINE_REASONS[value])
            dprintf(2, CG_MSG_DECLINED, path, CG_DECLINE_REASONS[value]);
        else if (verbose)
            dprintf(2, CG_MSG_DECLINED_UNNAMED, path, value);
        close(sock);
        return -1;
    }
    if (verbose)
        dprintf(2, CG_MSG_SERVED, path, value);
    return relay(sock, path, value);
}

/* The Python CLI: CLI_SCRIPT in this program's own directory. */
static int exec_cli(char **argv)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
    } else if (strchr(argv[0], '/') && strlen(argv[0]) < sizeof self) {
        if (!realpath(argv[0], self))  /* no /proc: the path we were started by */
            strcpy(self, argv[0]);
    } else {
        dprintf(2, CG_MSG_NO_CLI, CG_CLI_SCRIPT, "cannot find this program's own directory (is /proc mounted?)");
        return 1;
    }
    char *slash = strrchr(self, '/');
    if (!slash || (size_t)(slash - self) + sizeof "/" CG_CLI_SCRIPT > sizeof self)
        return 1;
    char cli[PATH_MAX], real[PATH_MAX];
    memcpy(cli, self, (size_t)(slash - self) + 1);
    strcpy(cli + (slash - self) + 1, CG_CLI_SCRIPT);
    if (realpath(cli, real) && strcmp(real, self) == 0) {      /* a link back to this program */
        dprintf(2, CG_MSG_NO_CLI, cli, "it is this program");
        return 1;
    }
    strcpy(self, cli);
    execv(self, argv);
    dprintf(2, CG_MSG_NO_CLI, self, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 1)
        return 1;
    struct where w = read_line(argc, argv);
    char path[PATH_MAX];
    if (w.is_run && socket_path(&w, path, sizeof path) == 0) {
        int code = served(argc, argv, path, w.verbose);
        if (code >= 0)
            return code;
    } else if (w.is_run && w.verbose) {
        dprintf(2, CG_MSG_NO_SOCKET);
    }
    return exec_cli(argv);
}
