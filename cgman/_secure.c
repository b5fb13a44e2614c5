/*
 * cgman._secure: the two kernel filters a container gets, built in C.
 *
 * 1. compile_seccomp(): a seccomp profile (already filtered by cgman/security/seccomp.py
 *    from the Docker/OCI JSON format: which rules apply to this container's capabilities
 *    and architecture) compiled with libseccomp into a classic BPF program, returned as
 *    bytes. The launch helper loads those bytes in the child with seccomp(2); libseccomp
 *    itself is never loaded on the launch path (compiled programs are cached by hash).
 *    The names of actions, comparison operators and architectures live here only.
 * 2. attach_device_filter(): cgroup v2's device controller is a BPF program of type
 *    BPF_PROG_TYPE_CGROUP_DEVICE attached to the container's cgroup (crun and runc build
 *    the same one): allow what a rule lists, deny the rest.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <linux/bpf.h>
#include <seccomp.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---------------------------------------------------------------- seccomp */

static const struct { const char *name; uint32_t token; } ARCHES[] = {
    {"SCMP_ARCH_X86", SCMP_ARCH_X86}, {"SCMP_ARCH_X86_64", SCMP_ARCH_X86_64},
    {"SCMP_ARCH_X32", SCMP_ARCH_X32}, {"SCMP_ARCH_ARM", SCMP_ARCH_ARM},
    {"SCMP_ARCH_AARCH64", SCMP_ARCH_AARCH64}, {"SCMP_ARCH_MIPS", SCMP_ARCH_MIPS},
    {"SCMP_ARCH_MIPS64", SCMP_ARCH_MIPS64}, {"SCMP_ARCH_MIPS64N32", SCMP_ARCH_MIPS64N32},
    {"SCMP_ARCH_MIPSEL", SCMP_ARCH_MIPSEL}, {"SCMP_ARCH_MIPSEL64", SCMP_ARCH_MIPSEL64},
    {"SCMP_ARCH_MIPSEL64N32", SCMP_ARCH_MIPSEL64N32}, {"SCMP_ARCH_PPC", SCMP_ARCH_PPC},
    {"SCMP_ARCH_PPC64", SCMP_ARCH_PPC64}, {"SCMP_ARCH_PPC64LE", SCMP_ARCH_PPC64LE},
    {"SCMP_ARCH_S390", SCMP_ARCH_S390}, {"SCMP_ARCH_S390X", SCMP_ARCH_S390X},
    {"SCMP_ARCH_RISCV64", SCMP_ARCH_RISCV64},
};

static const struct { const char *name; enum scmp_compare op; } OPS[] = {
    {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
    {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
    {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ},
};

#define N(a) (sizeof a / sizeof *a)

static int arch_token(const char *name, uint32_t *out)
{
    for (size_t i = 0; i < N(ARCHES); i++)
        if (strcmp(ARCHES[i].name, name) == 0) { *out = ARCHES[i].token; return 0; }
    PyErr_Format(PyExc_ValueError, "unknown architecture %s", name);
    return -1;
}

/* An action name (+ errno for ERRNO and TRACE) as libseccomp's action value. */
static int action_value(const char *name, int ret, uint32_t *out)
{
    if (!strcmp(name, "SCMP_ACT_ALLOW")) *out = SCMP_ACT_ALLOW;
    else if (!strcmp(name, "SCMP_ACT_ERRNO")) *out = SCMP_ACT_ERRNO((uint16_t)ret);
    else if (!strcmp(name, "SCMP_ACT_KILL") || !strcmp(name, "SCMP_ACT_KILL_THREAD")) *out = SCMP_ACT_KILL;
    else if (!strcmp(name, "SCMP_ACT_KILL_PROCESS")) *out = SCMP_ACT_KILL_PROCESS;
    else if (!strcmp(name, "SCMP_ACT_TRAP")) *out = SCMP_ACT_TRAP;
    else if (!strcmp(name, "SCMP_ACT_LOG")) *out = SCMP_ACT_LOG;
    else if (!strcmp(name, "SCMP_ACT_TRACE")) *out = SCMP_ACT_TRACE((uint16_t)ret);
    else {
        PyErr_Format(PyExc_ValueError, "unknown action %s", name);
        return -1;
    }
    return 0;
}

static int compare_op(const char *name, enum scmp_compare *out)
{
    for (size_t i = 0; i < N(OPS); i++)
        if (strcmp(OPS[i].name, name) == 0) { *out = OPS[i].op; return 0; }
    PyErr_Format(PyExc_ValueError, "unknown operator %s", name);
    return -1;
}

static PyObject *py_native_arch(PyObject *self, PyObject *unused)
{
    uint32_t t = seccomp_arch_native();
    for (size_t i = 0; i < N(ARCHES); i++)
        if (ARCHES[i].token == t) return PyUnicode_FromString(ARCHES[i].name);
    return PyUnicode_FromString("unknown");
}

static PyObject *py_check_names(PyObject *self, PyObject *args)
{
    /* check_names(kind, name): True when libseccomp knows it (kind: syscall, action, op, arch). */
    const char *kind, *name;
    if (!PyArg_ParseTuple(args, "ss", &kind, &name)) return NULL;
    int ok;
    uint32_t u;
    enum scmp_compare c;
    if (!strcmp(kind, "syscall")) ok = seccomp_syscall_resolve_name(name) != __NR_SCMP_ERROR;
    else if (!strcmp(kind, "action")) ok = action_value(name, 1, &u) == 0;
    else if (!strcmp(kind, "op")) ok = compare_op(name, &c) == 0;
    else if (!strcmp(kind, "arch")) ok = arch_token(name, &u) == 0;
    else { PyErr_SetString(PyExc_ValueError, "kind: syscall, action, op or arch"); return NULL; }
    PyErr_Clear();
    return PyBool_FromLong(ok);
}

/* One rule: (names, action, errno, args) with args ((index, op, value, value2), ...). */
/* One rule of the profile; the number of syscalls it added (0: its action is the default), or -1. */
static int add_rule(scmp_filter_ctx ctx, uint32_t deflt, PyObject *rule)
{
    PyObject *names, *cargs;
    const char *action;
    int ret;
    if (!PyArg_ParseTuple(rule, "OsiO", &names, &action, &ret, &cargs)) return -1;
    uint32_t act;
    if (action_value(action, ret, &act) < 0) return -1;
    if (act == deflt) return 0;       /* libseccomp refuses a rule equal to the default */
    struct scmp_arg_cmp cmp[6];
    Py_ssize_t nargs = PySequence_Size(cargs);
    if (nargs < 0 || nargs > 6) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "at most 6 argument conditions");
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *a = PySequence_GetItem(cargs, i);
        unsigned int index;
        const char *op;
        unsigned long long v, v2;
        int ok = a && PyArg_ParseTuple(a, "IsKK", &index, &op, &v, &v2);
        Py_XDECREF(a);
        if (!ok) return -1;
        if (index > 5) { PyErr_Format(PyExc_ValueError, "argument index %u is above 5", index); return -1; }
        enum scmp_compare c;
        if (compare_op(op, &c) < 0) return -1;
        cmp[i] = (struct scmp_arg_cmp){index, c, v, v2};
    }
    Py_ssize_t n = PySequence_Size(names);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_GetItem(names, i);
        const char *name = o ? PyUnicode_AsUTF8(o) : NULL;
        int nr = name ? seccomp_syscall_resolve_name(name) : __NR_SCMP_ERROR;
        if (!name) { Py_XDECREF(o); return -1; }
        if (nr == __NR_SCMP_ERROR) {
            PyErr_Format(PyExc_ValueError, "unknown syscall %s", name);
            Py_DECREF(o);
            return -1;
        }
        int r = seccomp_rule_add_array(ctx, act, nr, (unsigned int)nargs, cmp);
        if (r < 0) {
            PyErr_Format(PyExc_ValueError, "syscall %s: libseccomp refused the rule: %s", name, strerror(-r));
            Py_DECREF(o);
            return -1;
        }
        Py_DECREF(o);
    }
    return (int)n;
}

static PyObject *export_bpf(scmp_filter_ctx ctx)
{
    int fd = memfd_create("cgman-seccomp", MFD_CLOEXEC);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    int r = seccomp_export_bpf(ctx, fd);
    PyObject *out = NULL;
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "libseccomp could not export the filter: %s", strerror(-r));
    } else {
        off_t size = lseek(fd, 0, SEEK_END);
        out = PyBytes_FromStringAndSize(NULL, size);
        if (out && pread(fd, PyBytes_AS_STRING(out), (size_t)size, 0) != size) {
            Py_CLEAR(out);
            PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    close(fd);
    return out;
}

static PyObject *py_compile(PyObject *self, PyObject *args)
{
    /* compile_seccomp(default_action, default_errno, arches, rules) -> bytes */
    const char *deflt_name;
    int deflt_ret;
    PyObject *arches, *rules;
    if (!PyArg_ParseTuple(args, "siOO", &deflt_name, &deflt_ret, &arches, &rules)) return NULL;
    uint32_t deflt;
    if (action_value(deflt_name, deflt_ret, &deflt) < 0) return NULL;
    scmp_filter_ctx ctx = seccomp_init(deflt);
    if (!ctx) return PyErr_NoMemory();
    PyObject *out = NULL;
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);    /* cgman sets no_new_privs itself, or not */
    Py_ssize_t na = PySequence_Size(arches);
    for (Py_ssize_t i = 0; i < na; i++) {
        PyObject *o = PySequence_GetItem(arches, i);
        const char *name = o ? PyUnicode_AsUTF8(o) : NULL;
        uint32_t tok;
        int bad = !name || arch_token(name, &tok) < 0;
        Py_XDECREF(o);
        if (bad) goto done;
        int r = seccomp_arch_add(ctx, tok);
        if (r < 0 && r != -EEXIST) {
            PyErr_Format(PyExc_ValueError, "architecture %s: %s", name, strerror(-r));
            goto done;
        }
    }
    Py_ssize_t nr = PySequence_Size(rules), added = 0;
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *rule = PySequence_GetItem(rules, i);
        int n = rule ? add_rule(ctx, deflt, rule) : -1;
        Py_XDECREF(rule);
        if (n < 0) goto done;
        added += n;
    }
    /* A binary tree of syscall numbers, not a list: the kernel walks the program for every
     * syscall number of every architecture when it loads it (the constant-action cache, under
     * a spinlock), and again on each syscall the container makes. Default profile: 325 -> 401
     * instructions, load 390 -> 250 us here. Only for a long rule list, as runc does (> 32):
     * libseccomp up to 2.5.3 loses the default action of a tree without rules (libseccomp#370);
     * before 2.5.0 the attribute is unknown and refused, which leaves the list. */
    if (added > 32) seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    out = export_bpf(ctx);
done:
    seccomp_release(ctx);
    return out;
}

/* ---------------------------------------------------------------- device filter */

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define MAX_RULES 256
#define PER_RULE 7

/* Registers: r2 = access (mknod 1, read 2, write 4), r3 = type (block 1, char 2),
 * r4 = major, r5 = minor; each rule either returns 1 or jumps to the next rule. */
static int build_program(PyObject *rules, struct bpf_insn *p)
{
    int n = 0;
    p[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_1, 0, 0);
    p[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_2, 0, 0);
    p[n++] = INSN(BPF_ALU64 | BPF_AND | BPF_K, BPF_REG_3, 0, 0, 0xffff);
    p[n++] = INSN(BPF_ALU64 | BPF_RSH | BPF_K, BPF_REG_2, 0, 0, 16);
    p[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_4, BPF_REG_1, 4, 0);
    p[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_5, BPF_REG_1, 8, 0);
    Py_ssize_t nr = PySequence_Size(rules);
    if (nr < 0 || nr > MAX_RULES) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "too many device rules");
        return -1;
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *r = PySequence_GetItem(rules, i);
        int type, major, minor, access;      /* type: 0 any, 1 block, 2 char; -1: any number */
        int ok = r && PyArg_ParseTuple(r, "iiii", &type, &major, &minor, &access);
        Py_XDECREF(r);
        if (!ok) return -1;
        struct bpf_insn block[PER_RULE];
        int k = 0;
        if (type) block[k++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_3, 0, 0, type);
        if ((access & 7) != 7) {
            block[k++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_0, BPF_REG_2, 0, 0);
            block[k++] = INSN(BPF_ALU64 | BPF_AND | BPF_K, BPF_REG_0, 0, 0, ~access & 7);
            block[k++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_0, 0, 0, 0);
        }
        if (major >= 0) block[k++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_4, 0, 0, major);
        if (minor >= 0) block[k++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_5, 0, 0, minor);
        for (int x = 0; x < k; x++) {            /* jumps land after this rule's "return 1" */
            if (BPF_OP(block[x].code) == BPF_JNE) block[x].off = (short)(k - x - 1 + 2);
            p[n++] = block[x];
        }
        p[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1);
        p[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    }
    p[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0);
    p[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    return n;
}

/* Load the program for ``rules``; its fd, or -1 with a Python error set. */
static int load_device_filter(PyObject *rules)
{
    static struct bpf_insn prog[8 + MAX_RULES * (PER_RULE + 2)];
    int n = build_program(rules, prog);
    if (n < 0) return -1;
    char log[4096] = "";
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    a.insns = (uintptr_t)prog;
    a.insn_cnt = (uint32_t)n;
    a.license = (uintptr_t)"Apache-2.0";
    a.log_buf = (uintptr_t)log;
    a.log_size = sizeof log;
    a.log_level = 1;
    int pfd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (pfd < 0 && errno == ENOSPC) {              /* the verifier's log overflowed: load without it */
        a.log_buf = 0; a.log_size = 0; a.log_level = 0;
        pfd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    }
    if (pfd < 0) {
        for (char *c = log; *c; c++)
            if (*c == '\n') *c = ' ';                /* errors are one line */
        PyErr_Format(PyExc_OSError, "loading the device filter (BPF_PROG_LOAD): %s%s%.200s", strerror(errno),
                     log[0] ? ": " : "", log);
    }
    return pfd;
}

static PyObject *py_load_device_filter(PyObject *self, PyObject *rules)
{
    /* load_device_filter(rules) -> fd of the loaded program (close-on-exec). One program
     * serves any number of cgroups: loading (the verifier) is the dear part, so the caller
     * keeps it. */
    int pfd = load_device_filter(rules);
    if (pfd < 0) return NULL;
    return PyLong_FromLong(pfd);
}

static PyObject *py_attach_device_filter(PyObject *self, PyObject *args)
{
    /* attach_device_filter(cgroup_fd, program_fd) */
    int cgfd, pfd;
    if (!PyArg_ParseTuple(args, "ii", &cgfd, &pfd)) return NULL;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.target_fd = (uint32_t)cgfd;
    a.attach_bpf_fd = (uint32_t)pfd;
    a.attach_type = BPF_CGROUP_DEVICE;
    a.attach_flags = BPF_F_ALLOW_MULTI;            /* ancestors' filters (systemd's) still apply too */
    int r = (int)syscall(SYS_bpf, BPF_PROG_ATTACH, &a, sizeof a);
    int e = errno;
    if (r < 0) {
        errno = e;
        return PyErr_Format(PyExc_OSError, "attaching the device filter (BPF_PROG_ATTACH): %s", strerror(e));
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"compile_seccomp", py_compile, METH_VARARGS,
     "compile_seccomp(default_action, default_errno, arches, rules) -> bytes (classic BPF)\n"
     "rules: ((names, action, errno, ((index, op, value, value2), ...)), ...)"},
    {"check_name", py_check_names, METH_VARARGS,
     "check_name(kind, name) -> bool; kind: syscall, action, op or arch"},
    {"native_arch", py_native_arch, METH_NOARGS, "native_arch() -> 'SCMP_ARCH_X86_64', ..."},
    {"load_device_filter", py_load_device_filter, METH_O,
     "load_device_filter(((type, major, minor, access), ...)) -> program fd; type 0 any, 1 block,\n"
     "2 char; major/minor -1 any; access bits mknod 1, read 2, write 4"},
    {"attach_device_filter", py_attach_device_filter, METH_VARARGS,
     "attach_device_filter(cgroup_fd, program_fd): attach (BPF_F_ALLOW_MULTI) to a cgroup2 directory"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "cgman._secure", NULL, -1, methods};

PyMODINIT_FUNC PyInit__secure(void)
{
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "DEV_BLOCK", BPF_DEVCG_DEV_BLOCK);
    PyModule_AddIntConstant(m, "DEV_CHAR", BPF_DEVCG_DEV_CHAR);
    PyModule_AddIntConstant(m, "ACC_MKNOD", BPF_DEVCG_ACC_MKNOD);
    PyModule_AddIntConstant(m, "ACC_READ", BPF_DEVCG_ACC_READ);
    PyModule_AddIntConstant(m, "ACC_WRITE", BPF_DEVCG_ACC_WRITE);
    return m;
}
