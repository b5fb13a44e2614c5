/* cgman._fastread: read many already-open cgroup files in one call.
 *
 * The exporter keeps each live container's stat files open between scrapes and
 * re-reads them with pread(fd, 0): cgroupfs regenerates a file's content on every
 * read from offset 0, and skipping open()/close() halves the kernel's work per
 * file. This function does those preads for every file of every container with
 * the GIL released, split over a few threads (the cost is kernel time, which
 * scales with cores), and returns one bytes object, or -errno, per fd.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

#define CHUNK 4096
#define MAX_THREADS 16

struct result {
    char *buf;      /* malloc'd content, or NULL */
    ssize_t len;    /* bytes, or -errno */
};

struct job {
    const int *fds;
    struct result *res;
    Py_ssize_t lo, hi;
};

static void read_one(int fd, struct result *r)
{
    size_t cap = CHUNK, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        r->buf = NULL;
        r->len = -ENOMEM;
        return;
    }
    for (;;) {
        ssize_t n = pread(fd, buf + len, cap - len, (off_t)len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r->len = -errno;
            free(buf);
            r->buf = NULL;
            return;
        }
        len += (size_t)n;
        if (n == 0 || len < cap)
            break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) {
            free(buf);
            r->buf = NULL;
            r->len = -ENOMEM;
            return;
        }
        buf = bigger;
        cap *= 2;
    }
    r->buf = buf;
    r->len = (ssize_t)len;
}

static void *work(void *arg)
{
    struct job *j = arg;
    for (Py_ssize_t i = j->lo; i < j->hi; i++)
        read_one(j->fds[i], &j->res[i]);
    return NULL;
}

/* Below this many items a thread costs more than the reads it would take over. */
#define FEW_FDS 64
#define FEW_CONTAINERS 32

/* The threads to use for ``items`` items when ``asked`` were: 1 to MAX_THREADS, and 1 for
 * fewer than ``few`` items. */
static int thread_count(int asked, Py_ssize_t items, Py_ssize_t few)
{
    if (asked < 1)
        asked = 1;
    if (asked > MAX_THREADS)
        asked = MAX_THREADS;
    return items < few ? 1 : asked;
}

/* Runs ``worker`` on each of ``n`` jobs, ``size`` bytes apart from ``jobs``: the first on this
 * thread, every other on a thread of its own, or here afterwards where its thread could not
 * be started. Called with the GIL released. */
static void run_jobs(void *(*worker)(void *), void *jobs, size_t size, int n)
{
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < n; t++)
        started[t] = pthread_create(&tids[t], NULL, worker, (char *)jobs + (size_t)t * size) == 0;
    worker(jobs);
    for (int t = 1; t < n; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            worker((char *)jobs + (size_t)t * size);    /* no thread: do its share here */
    }
}

/* The ``n`` ints of ``fast`` (a PySequence_Fast) as file descriptors, in a PyMem_RawMalloc'd
 * array of at least one element; NULL with an exception set. */
static int *fd_array(PyObject *fast, Py_ssize_t n)
{
    int *fds = PyMem_RawMalloc(sizeof(int) * (size_t)(n ? n : 1));
    if (!fds) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_RawFree(fds);
            return NULL;
        }
        fds[i] = (int)v;
    }
    return fds;
}

/* pread_all's answer: a list of each result's bytes, or of its -errno as an int. Frees every
 * result's buffer, also when it fails (NULL, with an exception set). */
static PyObject *result_list(struct result *res, Py_ssize_t n)
{
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = NULL;
        if (out) {
            item = res[i].buf ? PyBytes_FromStringAndSize(res[i].buf, res[i].len)
                              : PyLong_FromSsize_t(res[i].len);
            if (!item) {
                Py_CLEAR(out);
            } else {
                PyList_SET_ITEM(out, i, item);
            }
        }
        free(res[i].buf);
    }
    return out;
}

/* pread_all(fds, nthreads=2) -> list[bytes | int] */
static PyObject *pread_all(PyObject *self, PyObject *args)
{
    PyObject *seq;
    int nthreads = 2;
    if (!PyArg_ParseTuple(args, "O|i", &seq, &nthreads))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "pread_all: expected a sequence of file descriptors");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    int *fds = fd_array(fast, n);
    Py_DECREF(fast);
    if (!fds)
        return NULL;
    struct result *res = PyMem_RawCalloc((size_t)(n ? n : 1), sizeof(struct result));
    if (!res) {
        PyMem_RawFree(fds);
        return PyErr_NoMemory();
    }
    nthreads = thread_count(nthreads, n, FEW_FDS);
    struct job jobs[MAX_THREADS];
    for (int t = 0; t < nthreads; t++)
        jobs[t] = (struct job){fds, res, n * t / nthreads, n * (t + 1) / nthreads};
    Py_BEGIN_ALLOW_THREADS
    run_jobs(work, jobs, sizeof jobs[0], nthreads);
    Py_END_ALLOW_THREADS
    PyObject *out = result_list(res, n);
    PyMem_RawFree(fds);
    PyMem_RawFree(res);
    return out;
}


/* ------------------------------------------------------------------------------
 * read_parse / render: a whole scrape's kernel reads, parsing and text in C.
 *
 * The exporter's Python version (collector.py with drivers/statfiles.py parsers) spends
 * ~60 ms of a 1000-container scrape on parsing and formatting 25,000 lines; this
 * does the same work in ~5 ms. The formats are those of drivers/statfiles.py, which stays
 * the reference: tests compare both on the same files.
 *
 * Both tables are exported to Python by name (SLOTS, KINDS), so the names and their order
 * are written only here: exporter/fast.py takes its slot numbers from SLOTS, pairs each
 * KINDS name with the statfiles parser of that name, and checks at import that every name
 * it uses exists on this side.
 */

/* Per-container int64 slots (-1: absent). The first ones are the values that parsing
 * fills; after S_GONE/S_ERRORS come the record's values, which Python writes. */
#define SLOT_TABLE(X) \
    X(S_CPU_USAGE, "cpu_usage_usec") X(S_CPU_USER, "cpu_user_usec") X(S_CPU_SYSTEM, "cpu_system_usec") \
    X(S_CPU_THROTTLED, "cpu_throttled_usec") \
    X(S_MEM, "memory_bytes") X(S_MEM_WS, "memory_working_set_bytes") \
    X(S_MEM_INACTIVE, "memory_inactive_file_bytes") X(S_OOM, "memory_oom_kills") \
    X(S_MEM_RSS, "memory_rss_bytes") X(S_MEM_CACHE, "memory_cache_bytes") \
    X(S_IO_RB, "io_read_bytes") X(S_IO_WB, "io_write_bytes") X(S_IO_RO, "io_read_ops") X(S_IO_WO, "io_write_ops") \
    X(S_PIDS, "pids") X(S_FROZEN, "frozen") \
    X(S_PSI_CPU_SOME, "psi_cpu_some_usec") X(S_PSI_CPU_FULL, "psi_cpu_full_usec") \
    X(S_PSI_MEM_SOME, "psi_memory_some_usec") X(S_PSI_MEM_FULL, "psi_memory_full_usec") \
    X(S_PSI_IO_SOME, "psi_io_some_usec") X(S_PSI_IO_FULL, "psi_io_full_usec") \
    X(S_GONE, "_gone") X(S_ERRORS, "_errors") \
    X(S_INFO, "_info") X(S_START_USEC, "_start_usec") X(S_MEM_BYTE_SECONDS, "_memory_byte_seconds") \
    X(S_LIMIT_UCPUS, "_limit_ucpus") X(S_LIMIT_MEM, "_limit_memory_bytes") X(S_LIMIT_PIDS, "_limit_pids")

/* What each file is, by the name of its parser in drivers/statfiles.py (K_SKIP: not read). */
#define KIND_TABLE(X) \
    X(K_SKIP, "skip") X(K_V2_CPU_STAT, "v2_cpu_stat") X(K_CPUACCT_USAGE, "v1_cpuacct_usage") \
    X(K_CPUACCT_STAT, "v1_cpuacct_stat") X(K_V1_CPU_STAT, "v1_cpu_stat") X(K_MEM_BYTES, "memory_bytes") \
    X(K_V1_MEM_STAT, "v1_memory_stat") X(K_V2_MEM_STAT, "v2_memory_stat") X(K_OOM, "oom_kills") \
    X(K_BLKIO_BYTES, "v1_blkio_bytes") X(K_BLKIO_OPS, "v1_blkio_ops") X(K_V2_IO_STAT, "v2_io_stat") \
    X(K_PIDS, "pids") X(K_V1_FREEZER, "v1_freezer") X(K_V2_EVENTS, "v2_events") \
    X(K_PSI_CPU, "psi_cpu") X(K_PSI_MEM, "psi_memory") X(K_PSI_IO, "psi_io") \
    X(K_V1_MEM_STAT_RSS, "v1_memory_stat_rss") X(K_V2_MEM_STAT_RSS, "v2_memory_stat_rss")

#define AS_ENUM(id, name) id,
#define AS_NAME(id, name) name,
enum { SLOT_TABLE(AS_ENUM) NSLOTS };
enum { KIND_TABLE(AS_ENUM) NKINDS };
static const char *const slot_names[NSLOTS] = { SLOT_TABLE(AS_NAME) };
static const char *const kind_names[NKINDS] = { KIND_TABLE(AS_NAME) };

#define RBUF (128 * 1024)

static long long tick_usec = 10000;

/* Value of "key <int>" where key starts a line; -1 if absent. */
static long long keyed(const char *b, size_t n, const char *key)
{
    size_t kl = strlen(key);
    const char *p = b, *end = b + n;
    while (p < end) {
        if ((size_t)(end - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == ' ')
            return strtoll(p + kl + 1, NULL, 10);
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        p = nl + 1;
    }
    return -1;
}

/* Sets *slot to the value of ``key`` in the "key value" lines of b, where it has one. */
static void set_keyed(const char *b, size_t n, const char *key, long long *slot)
{
    long long x = keyed(b, n, key);
    if (x >= 0)
        *slot = x;
}

/* cpu.stat (v2): usage, user, system and throttled time, in microseconds. */
static void parse_v2_cpu_stat(const char *b, size_t n, long long *v)
{
    set_keyed(b, n, "usage_usec", &v[S_CPU_USAGE]);
    set_keyed(b, n, "user_usec", &v[S_CPU_USER]);
    set_keyed(b, n, "system_usec", &v[S_CPU_SYSTEM]);
    set_keyed(b, n, "throttled_usec", &v[S_CPU_THROTTLED]);
}

/* cpuacct.stat (v1): user and system time, in clock ticks. */
static void parse_cpuacct_stat(const char *b, size_t n, long long *v)
{
    long long u = keyed(b, n, "user"), s = keyed(b, n, "system");
    if (u >= 0) v[S_CPU_USER] = u * tick_usec;
    if (s >= 0) v[S_CPU_SYSTEM] = s * tick_usec;
}

/* cpu.stat (v1): throttled time, in nanoseconds. */
static void parse_v1_cpu_stat(const char *b, size_t n, long long *v)
{
    long long t = keyed(b, n, "throttled_time");
    if (t >= 0) v[S_CPU_THROTTLED] = t / 1000;
}

/* memory.stat, v1 or v2 names, with RSS and cache for --compat cadvisor (only then: the
 * default scrape does not pay for two more scans). */
static void parse_memory_stat_rss(int v1, const char *b, size_t n, long long *v)
{
    set_keyed(b, n, v1 ? "total_inactive_file" : "inactive_file", &v[S_MEM_INACTIVE]);
    set_keyed(b, n, v1 ? "total_rss" : "anon", &v[S_MEM_RSS]);
    set_keyed(b, n, v1 ? "total_cache" : "file", &v[S_MEM_CACHE]);
}

/* blkio.throttle.io_service_bytes_recursive or io_serviced_recursive (v1): the "MAJ:MIN Read
 * value" and "MAJ:MIN Write value" lines, summed over devices. */
static void parse_blkio(const char *b, long long *read, long long *write)
{
    long long r = 0, w = 0;
    const char *line = b;
    while (line && *line) {
        const char *nl = strchr(line, '\n');
        char dev[64], op[16];
        long long val;
        if (sscanf(line, "%63s %15s %lld", dev, op, &val) == 3) {
            if (strcmp(op, "Read") == 0) r += val;
            else if (strcmp(op, "Write") == 0) w += val;
        }
        line = nl ? nl + 1 : NULL;
    }
    *read = r;
    *write = w;
}

/* io.stat (v2): rbytes=, wbytes=, rios= and wios= of the "MAJ:MIN key=value..." lines, summed
 * over devices. */
static void parse_v2_io_stat(char *b, long long *v)
{
    long long rb = 0, wb = 0, ro = 0, wo = 0;
    char *p = b;
    while ((p = strchr(p, '=')) != NULL) {
        char *k = p;
        while (k > b && k[-1] != ' ' && k[-1] != '\n') k--;
        long long val = strtoll(p + 1, &p, 10);
        size_t kl = (size_t)(strchr(k, '=') - k);
        if (kl == 6 && memcmp(k, "rbytes", 6) == 0) rb += val;
        else if (kl == 6 && memcmp(k, "wbytes", 6) == 0) wb += val;
        else if (kl == 4 && memcmp(k, "rios", 4) == 0) ro += val;
        else if (kl == 4 && memcmp(k, "wios", 4) == 0) wo += val;
    }
    v[S_IO_RB] = rb; v[S_IO_WB] = wb; v[S_IO_RO] = ro; v[S_IO_WO] = wo;
}

/* A pressure file (PSI): the total= of its "some" line into some[0] and that of its "full"
 * line, where it has one, into some[1] (each resource's FULL slot follows its SOME slot). */
static void parse_psi(const char *b, long long *some)
{
    const char *t = strstr(b, "total=");
    if (t) {
        some[0] = strtoll(t + 6, NULL, 10);
        t = strstr(t + 6, "total=");
        if (t) some[1] = strtoll(t + 6, NULL, 10);
    }
}

/* Parses one file of ``kind``, its n bytes at b (which has room for a NUL after them), into
 * the container's slots v; a value the file lacks leaves its slot as it was. */
static void parse_file(int kind, char *b, size_t n, long long *v)
{
    b[n] = 0;
    switch (kind) {
    case K_V2_CPU_STAT: parse_v2_cpu_stat(b, n, v); break;
    case K_CPUACCT_USAGE: v[S_CPU_USAGE] = strtoll(b, NULL, 10) / 1000; break;
    case K_CPUACCT_STAT: parse_cpuacct_stat(b, n, v); break;
    case K_V1_CPU_STAT: parse_v1_cpu_stat(b, n, v); break;
    case K_MEM_BYTES: v[S_MEM] = strtoll(b, NULL, 10); break;
    case K_V1_MEM_STAT: set_keyed(b, n, "total_inactive_file", &v[S_MEM_INACTIVE]); break;
    case K_V2_MEM_STAT: set_keyed(b, n, "inactive_file", &v[S_MEM_INACTIVE]); break;
    case K_V1_MEM_STAT_RSS: parse_memory_stat_rss(1, b, n, v); break;
    case K_V2_MEM_STAT_RSS: parse_memory_stat_rss(0, b, n, v); break;
    case K_OOM: set_keyed(b, n, "oom_kill", &v[S_OOM]); break;
    case K_BLKIO_BYTES: parse_blkio(b, &v[S_IO_RB], &v[S_IO_WB]); break;
    case K_BLKIO_OPS: parse_blkio(b, &v[S_IO_RO], &v[S_IO_WO]); break;
    case K_V2_IO_STAT: parse_v2_io_stat(b, v); break;
    case K_PIDS: v[S_PIDS] = strtoll(b, NULL, 10); break;
    case K_V1_FREEZER: v[S_FROZEN] = strncmp(b, "THAWED", 6) == 0 ? 0 : 1; break;
    case K_V2_EVENTS: set_keyed(b, n, "frozen", &v[S_FROZEN]); break;
    case K_PSI_CPU: parse_psi(b, &v[S_PSI_CPU_SOME]); break;
    case K_PSI_MEM: parse_psi(b, &v[S_PSI_MEM_SOME]); break;
    case K_PSI_IO: parse_psi(b, &v[S_PSI_IO_SOME]); break;
    default: break;
    }
}

struct pjob {
    const int *fds;
    const unsigned char *kinds;
    Py_ssize_t nk;
    long long *vals;
    Py_ssize_t lo, hi;      /* containers */
};

static void *parse_work(void *arg)
{
    struct pjob *j = arg;
    char *buf = malloc(RBUF + 1);
    if (!buf)
        return NULL;
    for (Py_ssize_t c = j->lo; c < j->hi; c++) {
        long long *v = j->vals + c * NSLOTS;
        for (int s = 0; s < S_INFO; s++)
            v[s] = -1;
        v[S_GONE] = 0;
        v[S_ERRORS] = 0;
        for (Py_ssize_t k = 0; k < j->nk; k++) {
            int fd = j->fds[c * j->nk + k];
            if (fd < 0 || j->kinds[k] == K_SKIP)
                continue;
            ssize_t n;
            do {
                n = pread(fd, buf, RBUF, 0);
            } while (n < 0 && errno == EINTR);
            if (n < 0) {
                if (errno == ENODEV || errno == ENOENT) {
                    v[S_GONE] = 1;
                    break;
                }
                v[S_ERRORS]++;
                continue;
            }
            parse_file(j->kinds[k], buf, (size_t)n, v);
        }
        if (v[S_MEM] >= 0) {
            long long ws = v[S_MEM] - (v[S_MEM_INACTIVE] > 0 ? v[S_MEM_INACTIVE] : 0);
            v[S_MEM_WS] = ws > 0 ? ws : 0;
        }
    }
    free(buf);
    return NULL;
}

/* The fds of ``seq``, nk per container, in a PyMem_RawMalloc'd array (fd_array), and the
 * number of containers in *nc; NULL with an exception set. */
static int *container_fds(PyObject *seq, Py_ssize_t nk, Py_ssize_t *nc)
{
    PyObject *fast = PySequence_Fast(seq, "read_parse: expected a sequence of file descriptors");
    if (!fast)
        return NULL;
    Py_ssize_t nfd = PySequence_Fast_GET_SIZE(fast);
    int *fds = NULL;
    if (nk == 0 || nfd % nk)
        PyErr_SetString(PyExc_ValueError, "read_parse: len(fds) must be a multiple of len(kinds)");
    else
        fds = fd_array(fast, nfd);
    Py_DECREF(fast);
    *nc = fds ? nfd / nk : 0;
    return fds;
}

/* read_parse(fds, kinds, nthreads) -> bytearray of int64[ncontainers * NSLOTS] */
static PyObject *read_parse(PyObject *self, PyObject *args)
{
    PyObject *seq;
    Py_buffer kinds;
    int nthreads = 2;
    if (!PyArg_ParseTuple(args, "Oy*|i", &seq, &kinds, &nthreads))
        return NULL;
    Py_ssize_t nk = kinds.len, nc;
    int *fds = container_fds(seq, nk, &nc);
    if (!fds) {
        PyBuffer_Release(&kinds);
        return NULL;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(sizeof(long long) * NSLOTS * (size_t)nc));
    if (!out) {
        PyMem_RawFree(fds);
        PyBuffer_Release(&kinds);
        return PyErr_NoMemory();
    }
    long long *vals = (long long *)PyByteArray_AS_STRING(out);
    nthreads = thread_count(nthreads, nc, FEW_CONTAINERS);
    struct pjob jobs[MAX_THREADS];
    for (int t = 0; t < nthreads; t++)
        jobs[t] = (struct pjob){fds, (const unsigned char *)kinds.buf, nk, vals, nc * t / nthreads,
                                nc * (t + 1) / nthreads};
    Py_BEGIN_ALLOW_THREADS
    run_jobs(parse_work, jobs, sizeof jobs[0], nthreads);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(fds);
    PyBuffer_Release(&kinds);
    return out;
}

/* One entry of render()'s metrics, unpacked: the bytes are borrowed from its tuple. */
struct metric {
    const char *header, *name;
    Py_ssize_t header_len, name_len;
    long slot;
    int micro;
};

/* An upper bound of the length of render()'s text, having checked that every label is bytes
 * and every metric a (bytes, bytes, _, _) tuple; -1 with an exception set. */
static Py_ssize_t render_bound(PyObject *lf, Py_ssize_t nc, PyObject *mf, Py_ssize_t nm)
{
    Py_ssize_t maxlab = 0, bound = 0;
    for (Py_ssize_t c = 0; c < nc; c++) {
        PyObject *l = PySequence_Fast_GET_ITEM(lf, c);
        if (!PyBytes_Check(l)) {
            PyErr_SetString(PyExc_TypeError, "render: labels must be bytes");
            return -1;
        }
        if (PyBytes_GET_SIZE(l) > maxlab) maxlab = PyBytes_GET_SIZE(l);
    }
    for (Py_ssize_t m = 0; m < nm; m++) {
        PyObject *t = PySequence_Fast_GET_ITEM(mf, m);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 4 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_ValueError, "render: metrics are (header, name, slot, micro) tuples");
            return -1;
        }
        bound += PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 0)) +
                 nc * (PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1)) + maxlab + 32);
    }
    return bound;
}

/* Unpacks metric tuple t (render_bound checked its shape) into *m; -1 with an exception set
 * when its slot is not one of NSLOTS or its micro has no truth value. */
static int unpack_metric(PyObject *t, struct metric *m)
{
    m->header = PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 0));
    m->header_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 0));
    m->name = PyBytes_AS_STRING(PyTuple_GET_ITEM(t, 1));
    m->name_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(t, 1));
    m->slot = PyLong_AsLong(PyTuple_GET_ITEM(t, 2));
    m->micro = PyObject_IsTrue(PyTuple_GET_ITEM(t, 3));
    if (m->slot < 0 || m->slot >= NSLOTS || m->micro < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "render: bad metric slot");
        return -1;
    }
    return 0;
}

/* Writes " <x>\n" into num: x as it is, or with micro x/1e6 exactly (no trailing zeros in
 * the fraction, no fraction when it is 0); its length. */
static int format_value(char *num, size_t size, long long x, int micro)
{
    int k;
    if (micro) {
        long long ip = x / 1000000, fp = x % 1000000;
        if (fp) {
            k = snprintf(num, size, " %lld.%06lld", ip, fp);
            while (num[k - 1] == '0') k--;
        } else {
            k = snprintf(num, size, " %lld", ip);
        }
    } else {
        k = snprintf(num, size, " %lld", x);
    }
    num[k++] = '\n';
    return k;
}

/* Writes metric m's family at out + len: its header, then "name{labels} value" for each
 * container that is not gone and has a value (>= 0) in m's slot; nothing when none has.
 * The new length. m comes by value: the writes through out could alias a pointed-to metric,
 * which would make the compiler reload its fields for every sample. */
static Py_ssize_t render_family(char *out, Py_ssize_t len, struct metric m, const long long *vals,
                                PyObject *lf, Py_ssize_t nc)
{
    char num[48];
    int any = 0;
    for (Py_ssize_t c = 0; c < nc; c++) {
        const long long *v = vals + c * NSLOTS;
        long long x = v[m.slot];
        if (v[S_GONE] || x < 0)
            continue;
        if (!any) {
            memcpy(out + len, m.header, (size_t)m.header_len);
            len += m.header_len;
            any = 1;
        }
        PyObject *l = PySequence_Fast_GET_ITEM(lf, c);
        int k = format_value(num, sizeof num, x, m.micro);
        memcpy(out + len, m.name, (size_t)m.name_len);
        len += m.name_len;
        memcpy(out + len, PyBytes_AS_STRING(l), (size_t)PyBytes_GET_SIZE(l));
        len += PyBytes_GET_SIZE(l);
        memcpy(out + len, num, (size_t)k);
        len += k;
    }
    return len;
}

/* The text of every metric of mf for the nc containers of vals. One allocation of ``bound``
 * bytes, written in place and shrunk at the end: no realloc chain and no final copy, so a
 * 2 MB body costs 2 MB at the peak, not 6. NULL with an exception set. */
static PyObject *render_text(Py_ssize_t bound, const long long *vals, PyObject *lf, Py_ssize_t nc,
                             PyObject *mf, Py_ssize_t nm)
{
    PyObject *res = PyBytes_FromStringAndSize(NULL, bound);
    if (!res)
        return NULL;
    Py_ssize_t len = 0;
    for (Py_ssize_t i = 0; i < nm; i++) {
        struct metric m;
        if (unpack_metric(PySequence_Fast_GET_ITEM(mf, i), &m) < 0) {
            Py_DECREF(res);
            return NULL;
        }
        len = render_family(PyBytes_AS_STRING(res), len, m, vals, lf, nc);
    }
    if (_PyBytes_Resize(&res, len) < 0)
        return NULL;
    return res;
}

/* render(values, labels, metrics) -> bytes
 * metrics: [(header: bytes, name: bytes, slot: int, micro: bool)]; a container whose GONE
 * slot is set, or a value < 0, is left out; micro prints value/1e6 exactly. */
static PyObject *render(PyObject *self, PyObject *args)
{
    Py_buffer vb;
    PyObject *labels, *metrics, *res = NULL;
    if (!PyArg_ParseTuple(args, "y*OO", &vb, &labels, &metrics))
        return NULL;
    PyObject *lf = PySequence_Fast(labels, "render: labels");
    PyObject *mf = lf ? PySequence_Fast(metrics, "render: metrics") : NULL;
    if (!lf || !mf) {
        Py_XDECREF(lf);
        PyBuffer_Release(&vb);
        return NULL;
    }
    Py_ssize_t nc = PySequence_Fast_GET_SIZE(lf), nm = PySequence_Fast_GET_SIZE(mf), bound = -1;
    if ((size_t)vb.len < sizeof(long long) * NSLOTS * (size_t)nc)
        PyErr_SetString(PyExc_ValueError, "render: values shorter than labels");
    else
        bound = render_bound(lf, nc, mf, nm);
    if (bound >= 0)
        res = render_text(bound, vb.buf, lf, nc, mf, nm);
    Py_DECREF(lf);
    Py_DECREF(mf);
    PyBuffer_Release(&vb);
    return res;
}

static PyMethodDef methods[] = {
    {"pread_all", pread_all, METH_VARARGS,
     "pread_all(fds, nthreads=2) -> list[bytes | int]\n\n"
     "Read each fd from offset 0 to its end; an int item is -errno for that fd."},
    {"read_parse", read_parse, METH_VARARGS,
     "read_parse(fds, kinds, nthreads=2) -> bytearray\n\n"
     "pread and parse each container's stat files (len(kinds) fds per container, -1: absent);\n"
     "int64 slots per container (named by SLOTS), -1 where a value is absent."},
    {"render", render, METH_VARARGS,
     "render(values, labels, metrics) -> bytes: the text exposition of the values' slots."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cgman._fastread", NULL, -1, methods};

/* Adds a tuple of the n names to the module as ``attr``; -1 on error. */
static int add_names(PyObject *m, const char *attr, const char *const *names, int n)
{
    PyObject *t = PyTuple_New(n);
    if (!t)
        return -1;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    int rc = PyModule_AddObjectRef(m, attr, t);
    Py_DECREF(t);
    return rc;
}

PyMODINIT_FUNC PyInit__fastread(void)
{
    long hz = sysconf(_SC_CLK_TCK);
    if (hz > 0)
        tick_usec = 1000000 / hz;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "NSLOTS", NSLOTS) < 0 || add_names(m, "SLOTS", slot_names, NSLOTS) < 0 ||
        add_names(m, "KINDS", kind_names, NKINDS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
