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
    int *fds = PyMem_RawMalloc(sizeof(int) * (size_t)(n ? n : 1));
    struct result *res = PyMem_RawCalloc((size_t)(n ? n : 1), sizeof(struct result));
    if (!fds || !res) {
        PyMem_RawFree(fds);
        PyMem_RawFree(res);
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_RawFree(fds);
            PyMem_RawFree(res);
            Py_DECREF(fast);
            return NULL;
        }
        fds[i] = (int)v;
    }
    Py_DECREF(fast);
    if (nthreads < 1)
        nthreads = 1;
    if (nthreads > MAX_THREADS)
        nthreads = MAX_THREADS;
    if (n < 64)
        nthreads = 1;               /* a thread costs more than a few reads */

    struct job jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    Py_BEGIN_ALLOW_THREADS
    for (int t = 0; t < nthreads; t++) {
        jobs[t].fds = fds;
        jobs[t].res = res;
        jobs[t].lo = n * t / nthreads;
        jobs[t].hi = n * (t + 1) / nthreads;
        if (t > 0 && pthread_create(&tids[t], NULL, work, &jobs[t]) == 0)
            started[t] = 1;
    }
    work(&jobs[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            work(&jobs[t]);         /* no thread: do its share here */
    }
    Py_END_ALLOW_THREADS

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
    PyMem_RawFree(fds);
    PyMem_RawFree(res);
    return out;
}

static PyMethodDef methods[] = {
    {"pread_all", pread_all, METH_VARARGS,
     "pread_all(fds, nthreads=2) -> list[bytes | int]\n\n"
     "Read each fd from offset 0 to its end; an int item is -errno for that fd."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cgman._fastread", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastread(void) { return PyModule_Create(&module); }
