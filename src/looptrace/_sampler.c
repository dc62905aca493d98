/*
 * looptrace._speedups, part two: the native sampler.
 *
 * A Python watchdog cannot run while C code holds the GIL (sorted, re, json, pickle,
 * hashlib, zlib, sqlite3...), so it samples a blocked loop only after the call returned.
 * This native thread reads the loop thread's stack without the GIL, the way py-spy does
 * from outside the process: every read of interpreter memory goes through
 * process_vm_readv on our own pid (or, where that is refused, a write into a pipe), which
 * returns an error for an unmapped address instead of faulting. Every pointer read is
 * checked (a code object's type is PyCode_Type, an instruction lies inside its code) and
 * every walk is bounded, so a stack that changes under the reader gives a wrong or a
 * dropped sample, never a crash.
 *
 * The same reader tells which thread holds the GIL (the GIL's last_holder) and whether the
 * loop thread is waiting for it: its /proc/self/task/<tid>/syscall shows a futex wait on
 * the GIL's own condition variable or mutex.
 *
 * Ownership and threads (the contract):
 * - `sampler` (below) is one per process. Its table of watched threads, the sample rings
 *   and the code table belong to `sampler.lock`: the native thread takes it for each tick,
 *   Python-side callers (always holding the GIL) take it in ls_sampler_watch/_forget and
 *   in take(). The native thread NEVER takes the GIL and never calls the C API, so a
 *   thread holding the GIL may wait for `sampler.lock` without a deadlock.
 * - A watched thread's StepSlot fields (seq, start_ns, handle) are written by the loop
 *   thread and only read here, as plain word loads; the slot's memory stays valid until
 *   ls_sampler_forget, which its dealloc calls under `sampler.lock`.
 * - PyThreadState, frames and code objects are never dereferenced directly: they may be
 *   freed at any moment. Only the GIL state, which lives as long as the interpreter, is
 *   read directly.
 * - Python objects are built only in take(), on a Python thread, from copied bytes: a
 *   code object seen by the sampler may be gone by then; nothing dereferences it again.
 * - Free-threaded builds (no GIL) and Pythons other than 3.11-3.13 compile without the
 *   reader: status() says why and start() refuses.
 */
#define PY_SSIZE_T_CLEAN
#include <patchlevel.h>
#include <pyconfig.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED) \
    && defined(__linux__)
#define LS_NATIVE 1
/* The interpreter's own layouts (frames, thread states, the GIL): this file only, which is
 * why the sampler is a file of its own. */
#define Py_BUILD_CORE 1
#else
#define LS_NATIVE 0
#endif

#include <Python.h>

#if LS_NATIVE
#include "internal/pycore_frame.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#endif

#include "_sampler.h"

#if !LS_NATIVE

void ls_sampler_watch(void *owner, unsigned long ident, const unsigned long long *seq,
                      const long long *start_ns, PyObject *const *handle) {}
void ls_sampler_forget(void *owner) {}

PyObject *
ls_native_status(PyObject *module, PyObject *unused)
{
#ifdef Py_GIL_DISABLED
    return PyUnicode_FromString("native sampler: off on free-threaded builds");
#else
    return PyUnicode_FromString("native sampler: built for CPython 3.11-3.13 on Linux only");
#endif
}

PyObject *
ls_native_start(PyObject *module, PyObject *args)
{
    Py_RETURN_FALSE;
}

PyObject *
ls_native_stop(PyObject *module, PyObject *unused)
{
    Py_RETURN_NONE;
}

PyObject *
ls_native_take(PyObject *module, PyObject *arg)
{
    return Py_BuildValue("([]{}i)", 0);
}

PyObject *
ls_native_ticks(PyObject *module, PyObject *unused)
{
    return PyLong_FromLong(0);
}

#else  /* LS_NATIVE */

#define LS_DEPTH 48            /* frames kept per stack */
#define LS_WALK 256            /* frames walked at most (a cycle ends here too) */
#define LS_RING 256            /* samples kept per thread between two take() */
#define LS_THREADS 16          /* watched loop threads */
#define LS_CODES 512           /* code table slots */
#define LS_NAME 256            /* bytes copied of a file name or qualname */
#define LS_LINETABLE 4096      /* bytes copied of a line table */

typedef struct {
    uintptr_t code;
    int32_t offset;            /* bytes into co_code_adaptive, as co_positions counts */
} ls_frame;

typedef struct {
    unsigned long long seq;    /* the watched slot's step number when sampled */
    long long t_ns;
    unsigned char in_step;     /* a step was running (else: between steps, e.g. select) */
    unsigned char waiting;     /* the thread waited for the GIL */
    unsigned long holder;      /* the GIL holder's thread ident, 0 if unknown */
    long long run_ns, wait_ns; /* schedstat at a step's first sample, else -1 */
    long long held_run_ns;     /* the holder's time on a CPU so far, else -1 */
    unsigned short n, hn;
    ls_frame frames[LS_DEPTH]; /* innermost first */
    ls_frame held[LS_DEPTH];   /* the holder's stack, when waiting */
} ls_sample;

typedef struct {
    void *owner;               /* the StepSlot; NULL: free entry */
    unsigned long ident;
    PyThreadState *tstate;
    long tid;
    const volatile unsigned long long *seq;
    const volatile long long *start_ns;
    PyObject *const volatile *handle;
    int waiting;
    uintptr_t waited_for;       /* the holder when last seen waiting */
    unsigned long waited_switch;   /* the GIL's switch number then */
    unsigned long long sched_seq;  /* the step whose schedstat was read */
    unsigned long long written;
    unsigned long long dropped;
    ls_sample *ring;
} ls_watched;

typedef struct {
    uintptr_t code;            /* 0: free */
    uintptr_t filename, qualname, linetable;
    int firstlineno;
    unsigned char fn_kind, qn_kind;
    unsigned short fn_len, qn_len, lt_len;   /* in characters / bytes */
    char fn[LS_NAME];
    char qn[LS_NAME];
    char lt[LS_LINETABLE];
} ls_code;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    int running;               /* the thread exists */
    int stop;
    long long poll_ns, arm_ns, interval_ns;
    unsigned long long ticks;
    ls_watched watched[LS_THREADS];
    ls_code *codes;
    int code_count;
    struct _gil_runtime_state *gil;
    PyInterpreterState *interp;
    pid_t pid;
    int use_pipe;              /* process_vm_readv refused: read through a pipe */
    int pipe_fd[2];
    const char *off_reason;    /* why the sampler is off, or NULL */
    int checked;
} sampler = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .pipe_fd = {-1, -1},
};

/* ------------------------------------------------------------ safe reads */

static long long
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Copy n bytes from addr in our own address space; -1 if any of it is unmapped. */
static int
safe_read(uintptr_t addr, void *out, size_t n)
{
    if (addr == 0 || n == 0) {
        return -1;
    }
    if (!sampler.use_pipe) {
        struct iovec local = {out, n}, remote = {(void *)addr, n};
        ssize_t got = process_vm_readv(sampler.pid, &local, 1, &remote, 1, 0);
        return got == (ssize_t)n ? 0 : -1;
    }
    /* write() from an unmapped address fails with EFAULT instead of faulting. Only the
     * native thread reads through the pipe (the self-test runs before it starts). */
    char *dst = out;
    while (n > 0) {
        size_t part = n < 4096 ? n : 4096;
        if (write(sampler.pipe_fd[1], (void *)addr, part) != (ssize_t)part) {
            return -1;
        }
        if (read(sampler.pipe_fd[0], dst, part) != (ssize_t)part) {
            return -1;
        }
        n -= part;
        addr += part;
        dst += part;
    }
    return 0;
}

static int
read_ptr(uintptr_t addr, uintptr_t *out)
{
    return safe_read(addr, out, sizeof(*out));
}

/* ------------------------------------------------------------ code objects */

/* A str's characters: up to LS_NAME bytes of its data, and its kind. */
static int
copy_str(uintptr_t addr, char *out, unsigned short *len, unsigned char *kind)
{
    PyASCIIObject head;
    if (safe_read(addr, &head, sizeof(head)) < 0 || (uintptr_t)head.ob_base.ob_type
        != (uintptr_t)&PyUnicode_Type || !head.state.compact) {
        return -1;
    }
    unsigned int k = head.state.kind;
    if (k != 1 && k != 2 && k != 4) {
        return -1;
    }
    uintptr_t data = addr + (head.state.ascii ? sizeof(PyASCIIObject)
                                              : sizeof(PyCompactUnicodeObject));
    Py_ssize_t chars = head.length;
    if (chars < 0) {
        return -1;
    }
    if ((size_t)chars * k > LS_NAME) {
        chars = LS_NAME / k;
    }
    if (chars > 0 && safe_read(data, out, (size_t)chars * k) < 0) {
        return -1;
    }
    *len = (unsigned short)chars;
    *kind = (unsigned char)k;
    return 0;
}

/* The code object at addr, copied into the code table (once per object): its type is
 * checked, so a frame that changed under us is dropped. Returns the entry or NULL. */
static ls_code *
code_info(uintptr_t addr, PyCodeObject *head)
{
    size_t slot = (size_t)(addr >> 4) % LS_CODES;
    for (int probe = 0; probe < 8; probe++) {
        ls_code *c = &sampler.codes[(slot + probe) % LS_CODES];
        if (c->code == addr && c->filename == (uintptr_t)head->co_filename
            && c->qualname == (uintptr_t)head->co_qualname
            && c->linetable == (uintptr_t)head->co_linetable
            && c->firstlineno == head->co_firstlineno) {
            return c;
        }
        if (c->code == 0 || c->code == addr) {
            c->code = 0;
            if (copy_str((uintptr_t)head->co_filename, c->fn, &c->fn_len, &c->fn_kind) < 0
                || copy_str((uintptr_t)head->co_qualname, c->qn, &c->qn_len, &c->qn_kind) < 0) {
                return NULL;
            }
            PyBytesObject bytes;
            uintptr_t lt = (uintptr_t)head->co_linetable;
            if (safe_read(lt, &bytes, offsetof(PyBytesObject, ob_sval)) < 0
                || (uintptr_t)bytes.ob_base.ob_base.ob_type != (uintptr_t)&PyBytes_Type
                || bytes.ob_base.ob_size < 0) {
                return NULL;
            }
            Py_ssize_t size = bytes.ob_base.ob_size;
            if (size > LS_LINETABLE) {
                size = LS_LINETABLE;   /* later instructions get no line: said in take() */
            }
            if (size > 0 && safe_read(lt + offsetof(PyBytesObject, ob_sval), c->lt,
                                      (size_t)size) < 0) {
                return NULL;
            }
            c->lt_len = (unsigned short)size;
            c->filename = (uintptr_t)head->co_filename;
            c->qualname = (uintptr_t)head->co_qualname;
            c->linetable = lt;
            c->firstlineno = head->co_firstlineno;
            c->code = addr;
            sampler.code_count++;
            return c;
        }
    }
    return NULL;   /* the neighbourhood is full: this frame is dropped */
}

/* ------------------------------------------------------------ stacks */

static uintptr_t
current_frame_of(uintptr_t tstate)
{
    uintptr_t frame = 0;
#if PY_VERSION_HEX >= 0x030D0000
    if (read_ptr(tstate + offsetof(PyThreadState, current_frame), &frame) < 0) {
        return 0;
    }
#else
    uintptr_t cframe = 0;
    if (read_ptr(tstate + offsetof(PyThreadState, cframe), &cframe) < 0
        || read_ptr(cframe + offsetof(_PyCFrame, current_frame), &frame) < 0) {
        return 0;
    }
#endif
    return frame;
}

/* Walk the frames of the thread state at `tstate`, innermost first; returns how many
 * were kept. Frames that fail a check are skipped, the walk ends at a bad link. */
static int
walk(uintptr_t tstate, ls_frame *out, int max)
{
    int kept = 0;
    uintptr_t addr = current_frame_of(tstate);
    for (int steps = 0; addr != 0 && steps < LS_WALK && kept < max; steps++) {
        _PyInterpreterFrame frame;
        if (safe_read(addr, &frame, offsetof(_PyInterpreterFrame, localsplus)) < 0) {
            break;
        }
        uintptr_t next = (uintptr_t)frame.previous;
#if PY_VERSION_HEX >= 0x030C0000
        if (frame.owner == FRAME_OWNED_BY_CSTACK) {
            addr = next;
            continue;
        }
#endif
#if PY_VERSION_HEX >= 0x030D0000
        uintptr_t code = (uintptr_t)frame.f_executable;
        uintptr_t instr = (uintptr_t)frame.instr_ptr;
#else
        uintptr_t code = (uintptr_t)frame.f_code;
        uintptr_t instr = (uintptr_t)frame.prev_instr;
#endif
        PyCodeObject head;
        if (safe_read(code, &head, offsetof(PyCodeObject, co_code_adaptive)) == 0
            && (uintptr_t)Py_TYPE(&head) == (uintptr_t)&PyCode_Type) {
            uintptr_t first = code + offsetof(PyCodeObject, co_code_adaptive);
            Py_ssize_t units = Py_SIZE(&head);
            if (instr >= first && instr < first + (uintptr_t)units * sizeof(_Py_CODEUNIT)) {
                ls_code *info = code_info(code, &head);
                if (info != NULL) {
                    out[kept].code = code;
                    out[kept].offset = (int32_t)(instr - first);
                    kept++;
                }
            }
        }
        addr = next;
    }
    return kept;
}

/* ------------------------------------------------------------ the GIL */

/* Whether the thread `tid` sleeps in a futex wait on the GIL's condition variable or
 * mutex (take_gil), read from /proc/self/task/<tid>/syscall. */
static int
waits_for_gil(long tid)
{
    char path[64], text[256];
    snprintf(path, sizeof(path), "/proc/self/task/%ld/syscall", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    ssize_t got = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (got <= 0) {
        return 0;
    }
    text[got] = '\0';
    char *end;
    long number = strtol(text, &end, 10);
    if (end == text || number != SYS_futex) {
        return 0;
    }
    uintptr_t uaddr = (uintptr_t)strtoull(end, NULL, 16);
    uintptr_t cond = (uintptr_t)&sampler.gil->cond, mutex = (uintptr_t)&sampler.gil->mutex;
    return (uaddr >= cond && uaddr < cond + sizeof(sampler.gil->cond))
           || (uaddr >= mutex && uaddr < mutex + sizeof(sampler.gil->mutex));
}

/* The thread's time on a CPU and waiting for one, from /proc/self/task/<tid>/schedstat. */
static int
read_schedstat(long tid, long long *run_ns, long long *wait_ns)
{
    char path[64], text[128];
    snprintf(path, sizeof(path), "/proc/self/task/%ld/schedstat", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t got = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (got <= 0) {
        return -1;
    }
    text[got] = '\0';
    return sscanf(text, "%lld %lld", run_ns, wait_ns) == 2 ? 0 : -1;
}

/* The thread state holding the GIL now, if it is not `self`. */
static uintptr_t
other_holder(PyThreadState *self)
{
    struct _gil_runtime_state *gil = sampler.gil;
#if PY_VERSION_HEX >= 0x030D0000
    int locked = __atomic_load_n(&gil->locked, __ATOMIC_RELAXED);
    uintptr_t holder = (uintptr_t)__atomic_load_n(&gil->last_holder, __ATOMIC_RELAXED);
#else
    int locked = __atomic_load_n(&gil->locked._value, __ATOMIC_RELAXED);
    uintptr_t holder = __atomic_load_n(&gil->last_holder._value, __ATOMIC_RELAXED);
#endif
    if (locked <= 0 || holder == 0 || holder == (uintptr_t)self) {
        return 0;
    }
    return holder;
}

/* ------------------------------------------------------------ the thread */

static ls_sample *
next_sample(ls_watched *w)
{
    if (w->written >= LS_RING) {
        w->dropped++;   /* the oldest sample is overwritten */
    }
    ls_sample *s = &w->ring[w->written % LS_RING];
    w->written++;
    return s;
}

/* One look at one watched thread; returns 1 if it needs a quick next look. */
static int
look(ls_watched *w, long long now)
{
    PyObject *handle = *w->handle;
    unsigned long long seq = *w->seq;
    long long start = *w->start_ns;
    int in_step = handle != NULL;
    int long_step = in_step && now - start >= sampler.arm_ns;
    uintptr_t holder = other_holder(w->tstate);
    unsigned long switches = __atomic_load_n(&sampler.gil->switch_number, __ATOMIC_RELAXED);
    /* A waiter wakes every switch interval to ask for the GIL, and is seen running then:
     * while the same holder keeps the GIL without a switch, it is still waiting. */
    int waiting = holder != 0
                  && (waits_for_gil(w->tid) || (w->waiting && holder == w->waited_for
                                                 && switches == w->waited_switch));
    if (!long_step && !waiting && !w->waiting) {
        return holder != 0;
    }
    ls_sample *s = next_sample(w);
    s->seq = seq;
    s->t_ns = now;
    s->in_step = (unsigned char)in_step;
    s->waiting = (unsigned char)waiting;
    s->holder = 0;
    s->hn = 0;
    s->run_ns = s->wait_ns = -1;
    if (long_step && seq != w->sched_seq) {
        /* The step's CPU figures from the moment it is seen long (the watchdog may only
         * read them after it ended). */
        w->sched_seq = seq;
        if (read_schedstat(w->tid, &s->run_ns, &s->wait_ns) < 0) {
            s->run_ns = s->wait_ns = -1;
        }
    }
    s->n = (unsigned short)walk((uintptr_t)w->tstate, s->frames, LS_DEPTH);
    s->held_run_ns = -1;
    if (waiting) {
        unsigned long ident = 0, holder_tid = 0;
        long long unused;
        if (read_ptr(holder + offsetof(PyThreadState, thread_id), (uintptr_t *)&ident) == 0) {
            s->holder = ident;
        }
        /* Whether the holder works or is itself starved of CPU (a loaded machine that
         * preempts whichever thread holds the GIL). */
        if (read_ptr(holder + offsetof(PyThreadState, native_thread_id),
                     (uintptr_t *)&holder_tid) == 0 && holder_tid != 0
            && read_schedstat((long)holder_tid, &s->held_run_ns, &unused) < 0) {
            s->held_run_ns = -1;
        }
        s->hn = (unsigned short)walk(holder, s->held, LS_DEPTH);
    }
    w->waiting = waiting;
    w->waited_for = holder;
    w->waited_switch = switches;
    return 1;
}

static void *
run(void *unused)
{
    pthread_mutex_lock(&sampler.lock);
    while (!sampler.stop) {
        long long now = mono_ns();
        int quick = 0;
        for (int i = 0; i < LS_THREADS; i++) {
            if (sampler.watched[i].owner != NULL && sampler.watched[i].ring != NULL) {
                quick |= look(&sampler.watched[i], now);
            }
        }
        sampler.ticks++;
        long long wait = quick ? sampler.interval_ns : sampler.poll_ns;
        /* A step about to pass the arming age gets its first sample on time. */
        for (int i = 0; i < LS_THREADS && !quick; i++) {
            ls_watched *w = &sampler.watched[i];
            if (w->owner != NULL && *w->handle != NULL) {
                long long due = *w->start_ns + sampler.arm_ns - now;
                if (due > 0 && due < wait) {
                    wait = due;
                }
            }
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        long long ns = until.tv_nsec + (wait > 200000 ? wait : 200000);
        until.tv_sec += ns / 1000000000LL;
        until.tv_nsec = ns % 1000000000LL;
        while (!sampler.stop
               && pthread_cond_timedwait(&sampler.wake, &sampler.lock, &until) == EINTR) {
        }
    }
    pthread_mutex_unlock(&sampler.lock);
    return NULL;
}

/* ------------------------------------------------------------ set-up and self-test */

/* Is the reader right about this very thread? Its innermost frame must be the caller's
 * code at the caller's instruction; any other answer means the layouts we were built
 * against are not the ones running, and the sampler stays off. */
static const char *
self_test(void)
{
    PyFrameObject *frame = PyEval_GetFrame();   /* borrowed */
    if (frame == NULL) {
        return "native sampler: off (self-test needs a Python caller)";
    }
    PyCodeObject *code = PyFrame_GetCode(frame);
    int lasti = PyFrame_GetLasti(frame);
    ls_frame got[2];
    int n = walk((uintptr_t)PyThreadState_Get(), got, 2);
    int ok = n >= 1 && got[0].code == (uintptr_t)code && got[0].offset == lasti;
    Py_DECREF(code);
    return ok ? NULL : "native sampler: off (self-test failed: this build's frame layout "
                       "is not the running interpreter's)";
}

static const char *
prepare(void)
{
    if (sampler.checked) {
        return sampler.off_reason;
    }
    sampler.checked = 1;
    if (Py_Version < 0x030B0000 || (Py_Version >> 16) != (PY_VERSION_HEX >> 16)) {
        return sampler.off_reason = "native sampler: off (built for another Python)";
    }
    sampler.codes = calloc(LS_CODES, sizeof(ls_code));
    if (sampler.codes == NULL) {
        return sampler.off_reason = "native sampler: off (no memory)";
    }
    sampler.pid = getpid();
    char probe = 0, byte = 7;
    if (safe_read((uintptr_t)&byte, &probe, 1) < 0 || probe != 7) {
        /* process_vm_readv refused (a seccomp profile, say): read through a pipe */
        if (pipe2(sampler.pipe_fd, O_CLOEXEC) < 0) {
            return sampler.off_reason = "native sampler: off (no safe way to read memory)";
        }
        sampler.use_pipe = 1;
    }
    PyThreadState *tstate = PyThreadState_Get();
    sampler.interp = tstate->interp;
#if PY_VERSION_HEX >= 0x030C0000
    sampler.gil = sampler.interp->ceval.gil;
#else
    sampler.gil = &sampler.interp->runtime->ceval.gil;
#endif
    return sampler.off_reason = self_test();
}

static void
after_fork_in_child(void)
{
    /* The thread did not survive the fork; its lock may be held by it. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    sampler.lock = fresh;
    sampler.running = 0;
    sampler.stop = 0;
    sampler.pid = getpid();
}

void
ls_sampler_watch(void *owner, unsigned long ident, const unsigned long long *seq,
                 const long long *start_ns, PyObject *const *handle)
{
    PyThreadState *tstate = PyThreadState_Get();
    if (tstate->interp != PyInterpreterState_Main()) {
        return;   /* subinterpreters have their own GIL (3.12+) and frames: not watched */
    }
    ls_sample *ring = calloc(LS_RING, sizeof(ls_sample));
    if (ring == NULL) {
        return;
    }
    pthread_mutex_lock(&sampler.lock);
    /* A thread has one current slot, the newest hook's: a slot of an uninstalled hook
     * that is not freed yet no longer counts. */
    int at = -1;
    for (int i = 0; i < LS_THREADS && at < 0; i++) {
        if (sampler.watched[i].owner != NULL && sampler.watched[i].ident == ident) {
            free(sampler.watched[i].ring);
            memset(&sampler.watched[i], 0, sizeof(ls_watched));
            at = i;
        }
    }
    for (int i = at >= 0 ? at : 0; i < LS_THREADS; i++) {
        ls_watched *w = &sampler.watched[i];
        if (w->owner == NULL) {
            *w = (ls_watched){
                .owner = owner, .ident = ident, .tstate = tstate,
                .tid = (long)tstate->native_thread_id, .seq = seq, .start_ns = start_ns,
                .handle = handle, .ring = ring,
            };
            ring = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&sampler.lock);
    free(ring);   /* NULL unless every entry was taken: that thread is not watched */
}

void
ls_sampler_forget(void *owner)
{
    pthread_mutex_lock(&sampler.lock);
    for (int i = 0; i < LS_THREADS; i++) {
        ls_watched *w = &sampler.watched[i];
        if (w->owner == owner) {
            free(w->ring);
            memset(w, 0, sizeof(*w));
        }
    }
    pthread_mutex_unlock(&sampler.lock);
}

/* ------------------------------------------------------------ the Python API */

PyObject *
ls_native_status(PyObject *module, PyObject *unused)
{
    const char *reason = prepare();
    if (reason == NULL) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(reason);
}

PyObject *
ls_native_start(PyObject *module, PyObject *args)
{
    long long poll_ns, arm_ns, interval_ns;
    if (!PyArg_ParseTuple(args, "LLL", &poll_ns, &arm_ns, &interval_ns)) {
        return NULL;
    }
    if (prepare() != NULL) {
        Py_RETURN_FALSE;
    }
    static int atfork_done = 0;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_in_child);
        atfork_done = 1;
    }
    pthread_mutex_lock(&sampler.lock);
    sampler.poll_ns = poll_ns > 1000000 ? poll_ns : 1000000;
    sampler.arm_ns = arm_ns > 0 ? arm_ns : 0;
    sampler.interval_ns = interval_ns > 200000 ? interval_ns : 200000;
    int started = sampler.running;
    pthread_mutex_unlock(&sampler.lock);
    if (started) {
        Py_RETURN_TRUE;
    }
    /* The thread takes no signal: they stay with the program's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&sampler.wake, &attr);
    pthread_condattr_destroy(&attr);
    sampler.stop = 0;
    int failed = pthread_create(&sampler.thread, NULL, run, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (failed) {
        Py_RETURN_FALSE;
    }
    sampler.running = 1;
    Py_RETURN_TRUE;
}

PyObject *
ls_native_stop(PyObject *module, PyObject *unused)
{
    if (!sampler.running) {
        Py_RETURN_NONE;
    }
    pthread_mutex_lock(&sampler.lock);
    sampler.stop = 1;
    pthread_cond_signal(&sampler.wake);
    pthread_mutex_unlock(&sampler.lock);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(sampler.thread, NULL);
    Py_END_ALLOW_THREADS
    sampler.running = 0;
    pthread_mutex_lock(&sampler.lock);
    memset(sampler.codes, 0, LS_CODES * sizeof(ls_code));
    sampler.code_count = 0;
    pthread_mutex_unlock(&sampler.lock);
    Py_RETURN_NONE;
}

PyObject *
ls_native_ticks(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(sampler.ticks);
}

/* What take() copies out under the lock, so that it builds Python objects without it: an
 * allocation may start a garbage collection that frees a StepSlot, whose dealloc takes
 * the lock (ls_sampler_forget). */
typedef struct {
    ls_sample *samples;
    unsigned long long count, dropped;
    ls_code *codes;            /* the code entries the samples name */
    int code_count;
} ls_taken;

static void
copy_codes(ls_taken *out, const ls_frame *frames, int n)
{
    for (int i = 0; i < n; i++) {
        uintptr_t addr = frames[i].code;
        int seen = 0;
        for (int k = 0; k < out->code_count && !seen; k++) {
            seen = out->codes[k].code == addr;
        }
        size_t slot = (size_t)(addr >> 4) % LS_CODES;
        for (int probe = 0; probe < 8 && !seen && out->code_count < LS_CODES; probe++) {
            const ls_code *c = &sampler.codes[(slot + probe) % LS_CODES];
            if (c->code == addr) {
                out->codes[out->code_count++] = *c;
                seen = 1;
            }
        }
    }
}

/* Under the lock: move the thread's samples and the code entries they name into `out`. */
static int
take_locked(unsigned long ident, ls_taken *out)
{
    for (int i = 0; i < LS_THREADS; i++) {
        ls_watched *w = &sampler.watched[i];
        if (w->owner == NULL || w->ident != ident || w->ring == NULL) {
            continue;
        }
        unsigned long long count = w->written < LS_RING ? w->written : LS_RING;
        for (unsigned long long k = w->written - count; k < w->written; k++) {
            const ls_sample *s = &w->ring[k % LS_RING];
            out->samples[out->count++] = *s;
            copy_codes(out, s->frames, s->n);
            copy_codes(out, s->held, s->hn);
        }
        out->dropped = w->dropped;
        w->written = 0;
        w->dropped = 0;
        break;
    }
    if (sampler.code_count > LS_CODES / 2) {
        /* What the samples needed is copied: start the table afresh. */
        memset(sampler.codes, 0, LS_CODES * sizeof(ls_code));
        sampler.code_count = 0;
    }
    return 0;
}

static PyObject *
frames_tuple(const ls_frame *frames, int n, const ls_taken *taken, PyObject *codes)
{
    PyObject *out = PyTuple_New(n);
    for (int i = 0; out != NULL && i < n; i++) {
        PyObject *item = Py_BuildValue("(Ki)", (unsigned long long)frames[i].code,
                                       (int)frames[i].offset);
        if (item == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, item);
        PyObject *key = PyTuple_GET_ITEM(item, 0);
        int known = PyDict_Contains(codes, key);
        if (known < 0) {
            Py_CLEAR(out);
            break;
        }
        if (known) {
            continue;
        }
        /* The code's copied description; a slot reused since gives no description. */
        const ls_code *c = NULL;
        for (int k = 0; k < taken->code_count && c == NULL; k++) {
            if (taken->codes[k].code == frames[i].code) {
                c = &taken->codes[k];
            }
        }
        PyObject *info = c == NULL ? Py_NewRef(Py_None) : Py_BuildValue(
            "(NNiy#)",
            PyUnicode_FromKindAndData(c->fn_kind, c->fn, c->fn_len),
            PyUnicode_FromKindAndData(c->qn_kind, c->qn, c->qn_len),
            c->firstlineno, c->lt, (Py_ssize_t)c->lt_len);
        if (info == NULL || PyDict_SetItem(codes, key, info) < 0) {
            Py_XDECREF(info);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(info);
    }
    return out;
}

static PyObject *
taken_to_python(const ls_taken *taken)
{
    PyObject *samples = PyList_New(0), *codes = PyDict_New();
    int failed = samples == NULL || codes == NULL;
    for (unsigned long long k = 0; k < taken->count && !failed; k++) {
        const ls_sample *s = &taken->samples[k];
        PyObject *frames = frames_tuple(s->frames, s->n, taken, codes);
        PyObject *held = frames != NULL ? frames_tuple(s->held, s->hn, taken, codes) : NULL;
        PyObject *item = held == NULL ? NULL : Py_BuildValue(
            "(KLiikOOLLL)", s->seq, s->t_ns, (int)s->in_step, (int)s->waiting, s->holder,
            frames, held, s->run_ns, s->wait_ns, s->held_run_ns);
        failed = item == NULL || PyList_Append(samples, item) < 0;
        Py_XDECREF(frames);
        Py_XDECREF(held);
        Py_XDECREF(item);
    }
    if (failed) {
        Py_XDECREF(samples);
        Py_XDECREF(codes);
        return NULL;
    }
    return Py_BuildValue("(NNK)", samples, codes, taken->dropped);
}

/* take(thread_ident) -> (samples, codes, dropped): the samples of that thread since the
 * last take, oldest first, as (seq, t_ns, in_step, waiting, holder_ident, frames,
 * holder_frames, run_ns, wait_ns, holder_run_ns), frames innermost first as (code_key, offset); codes
 * maps a code_key to (filename, qualname, firstlineno, linetable) or None; run_ns and
 * wait_ns are the thread's schedstat at a step's first sample, else -1; holder_run_ns
 * the GIL holder's time on a CPU so far, else -1. */
PyObject *
ls_native_take(PyObject *module, PyObject *arg)
{
    unsigned long ident = PyLong_AsUnsignedLong(arg);
    if (ident == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    ls_taken taken = {0};
    if (sampler.codes == NULL) {
        return taken_to_python(&taken);
    }
    taken.samples = malloc(LS_RING * sizeof(ls_sample));
    taken.codes = malloc(LS_CODES * sizeof(ls_code));
    if (taken.samples == NULL || taken.codes == NULL) {
        free(taken.samples);
        free(taken.codes);
        return PyErr_NoMemory();
    }
    pthread_mutex_lock(&sampler.lock);
    take_locked(ident, &taken);
    pthread_mutex_unlock(&sampler.lock);
    PyObject *result = taken_to_python(&taken);
    free(taken.samples);
    free(taken.codes);
    return result;
}

#endif  /* LS_NATIVE */
