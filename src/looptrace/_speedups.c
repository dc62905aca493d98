/*
 * looptrace._speedups: the hot path of looptrace in C.
 *
 * Two small objects replace pure-Python wrappers that run millions of times:
 *
 * StepHook    goes in place of asyncio.events.Handle._run. It times every step, publishes
 *             the running handle and its start time in a per-thread StepSlot (read by the
 *             watchdog thread), and calls back into Python only for a step at or over the
 *             threshold. asyncio's own exception handling, tracebacks and messages are
 *             untouched: for other handle classes it calls the original _run; for the
 *             stdlib's own it runs the step inline and hands a callback's exception to the
 *             original _run to report (see "inline steps").
 * FullStepHook (full mode) also records every step, (start_ns, duration_ns, owner id), in
 *             a per-thread ring of plain integers, and adds its time to its owner's figures
 *             (an OwnerTable: Python calls only the first time an owner is seen).
 * SelectTimer is set as a selector instance's `select`. It times every select/epoll wait and
 *             the busy time between two waits, and keeps the loop's counters and a lag
 *             histogram; in full mode it also fills a ring buffer with every wait.
 *
 * Both read the same clock as time.perf_counter_ns(). The pure-Python fallbacks in
 * looptrace/_hooks/ implement the same interface and are tested against the same suite.
 *
 * Contracts (who owns what, which thread touches what):
 *
 * - The GIL guards everything here. The loop threads (in the hooks) and the watchdog
 *   thread (reading slots, prune(), ring()) touch these objects only while holding it; no
 *   field is atomic. Free-threaded builds (Py_GIL_DISABLED) are therefore refused at
 *   compile time below, and looptrace uses its pure-Python hooks there.
 * - StepSlot.handle: a strong reference taken by StepHook_call for the duration of one step
 *   and given back when it ends (the outer handle is restored for a loop run inside a
 *   step); the watchdog reads it through the getter, which returns a new reference.
 * - tls_slot: a borrowed pointer, valid only while tls_generation equals the hook's
 *   generation (an uninstalled hook's registry, and its slots, may be gone). The registry
 *   owns every slot; prune() (called from the watchdog thread's housekeeping) frees only
 *   the slots of threads that no longer exist, so a living thread's cached pointer always
 *   points at a slot its registry still holds. The Python caller must pass every living
 *   thread in `alive` (looptrace passes sys._current_frames() and threading.enumerate()).
 * - A step keeps its own reference to its slot (the step may uninstall looptrace).
 * - SelectTimer.__wrapped__ reuses StepHook_get_wrapped: both structs start with
 *   PyObject_HEAD, vectorcall, original, in that order (checked by a static assertion).
 *
 * The native sampler (_sampler.c, the native_* functions) is compiled into this module
 * from its own file, the only one built with the interpreter's internal headers. Its
 * contract with this file: a StepSlot is handed to it when made (ls_sampler_watch, GIL
 * held, on the slot's own thread) and taken back in the slot's dealloc
 * (ls_sampler_forget); in between its native thread reads the slot's seq, start_ns and
 * handle fields without the GIL, never writes them, and never dereferences the handle.
 * Slots are written here only by their own thread, as before.
 */
#if defined(Py_GIL_DISABLED)
#error "looptrace._speedups relies on the GIL (see Contracts above): no free-threaded build"
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include "structmember.h"
#include "_sampler.h"

/* ---------------------------------------------------------------- clock */

static inline long long
now_ns(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);
    return (long long)t;
#else
    return (long long)_PyTime_GetPerfCounter();
#endif
}

static PyObject *
speedups_now_ns(PyObject *module, PyObject *unused)
{
    return PyLong_FromLongLong(now_ns());
}

/* Preserve the exception that is propagating out of a step while Python code of ours runs. */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} saved_error;

static inline void
save_error(saved_error *s)
{
#if PY_VERSION_HEX >= 0x030C0000
    s->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&s->type, &s->value, &s->tb);
#endif
}

static inline void
restore_error(saved_error *s)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(s->exc);
#else
    PyErr_Restore(s->type, s->value, s->tb);
#endif
}

/* Our Python callback failed. An Exception is looptrace's own fault: count it and clear it.
 * Anything else (KeyboardInterrupt, SystemExit) was raised by the program's signal handler
 * while our code happened to run: it belongs to the program, so it is moved to *interrupt,
 * to be raised from the step as it would have been without looptrace. Returns 1 then. */
static int
take_callback_error(unsigned long long *faults, saved_error *interrupt)
{
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        (*faults)++;
        return 0;
    }
    save_error(interrupt);
    return 1;
}

/* ---------------------------------------------------------------- StepSlot */

typedef struct {
    PyObject_HEAD
    PyObject *handle;               /* the handle whose step is running, or NULL */
    long long start_ns;             /* when that step started */
    unsigned long long seq;         /* steps started on this thread */
    unsigned long long blocks;      /* steps at or over the threshold */
    unsigned long thread_id;
    /* full mode: ring of (start_ns, duration_ns, owner id) */
    long long *ring;
    Py_ssize_t ring_capacity;       /* in records */
    Py_ssize_t ring_items;          /* 3 * ring_capacity: the shape of the exported buffer */
    unsigned long long ring_written;
} StepSlot;

static int
StepSlot_traverse(StepSlot *self, visitproc visit, void *arg)
{
    Py_VISIT(self->handle);
    return 0;
}

static int
StepSlot_clear(StepSlot *self)
{
    Py_CLEAR(self->handle);
    return 0;
}

static void
StepSlot_dealloc(StepSlot *self)
{
    PyObject_GC_UnTrack(self);
    ls_sampler_forget(self);
    StepSlot_clear(self);
    PyMem_Free(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The ring as a read-only buffer of int64, 3 per record, so an exporter can copy the records
 * written since its last visit with one memcpy (memoryview(slot)). The view keeps the slot,
 * and so the ring, alive. */
static int
ring_getbuffer(PyObject *exporter, Py_buffer *view, int flags, long long *ring,
               Py_ssize_t *items)
{
    if (ring == NULL) {
        PyErr_SetString(PyExc_BufferError, "no ring: full mode is off");
        view->obj = NULL;
        return -1;
    }
    if (flags & PyBUF_WRITABLE) {
        PyErr_SetString(PyExc_BufferError, "the ring is read-only");
        view->obj = NULL;
        return -1;
    }
    view->obj = Py_NewRef(exporter);
    view->buf = ring;
    view->len = *items * (Py_ssize_t)sizeof(long long);
    view->readonly = 1;
    view->itemsize = sizeof(long long);
    view->format = (flags & PyBUF_FORMAT) ? "q" : NULL;
    view->ndim = 1;
    view->shape = (flags & PyBUF_ND) ? items : NULL;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? &view->itemsize : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

/* A ring's kept records, oldest first, as a list of tuples of `width` ints. */
static PyObject *
ring_to_list(const long long *ring, Py_ssize_t capacity, unsigned long long written, int width)
{
    unsigned long long cap = (unsigned long long)capacity;
    unsigned long long count = written < cap ? written : cap;
    unsigned long long first = written - count;
    PyObject *out = PyList_New((Py_ssize_t)count);
    if (out == NULL) {
        return NULL;
    }
    for (unsigned long long k = 0; k < count; k++) {
        const long long *rec = ring + width * ((first + k) % cap);
        PyObject *item = PyTuple_New(width);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)k, item);
        for (int f = 0; f < width; f++) {
            PyObject *value = PyLong_FromLongLong(rec[f]);
            if (value == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            PyTuple_SET_ITEM(item, f, value);
        }
    }
    return out;
}

static int
StepSlot_getbuffer(StepSlot *self, Py_buffer *view, int flags)
{
    return ring_getbuffer((PyObject *)self, view, flags, self->ring, &self->ring_items);
}

static PyBufferProcs StepSlot_as_buffer = {
    .bf_getbuffer = (getbufferproc)StepSlot_getbuffer,
};

static PyObject *
StepSlot_get_handle(StepSlot *self, void *closure)
{
    PyObject *h = self->handle ? self->handle : Py_None;
    Py_INCREF(h);
    return h;
}

static PyMemberDef StepSlot_members[] = {
    {"start_ns", T_LONGLONG, offsetof(StepSlot, start_ns), READONLY,
     "perf_counter_ns() when the running step started."},
    {"seq", T_ULONGLONG, offsetof(StepSlot, seq), READONLY, "Steps started on this thread."},
    {"blocks", T_ULONGLONG, offsetof(StepSlot, blocks), READONLY,
     "Steps on this thread that ran at or over the threshold."},
    {"thread_id", T_ULONG, offsetof(StepSlot, thread_id), READONLY, "The thread's ident."},
    {"ring_written", T_ULONGLONG, offsetof(StepSlot, ring_written), READONLY,
     "Full mode: steps written to the ring so far (the ring keeps the last ring_capacity)."},
    {"ring_capacity", T_PYSSIZET, offsetof(StepSlot, ring_capacity), READONLY,
     "Full mode: how many steps the ring keeps (0 when full mode is off)."},
    {NULL}
};

static PyObject *
StepSlot_get_ring(StepSlot *self, void *closure)
{
    if (self->ring == NULL) {
        Py_RETURN_NONE;
    }
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyGetSetDef StepSlot_getset[] = {
    {"handle", (getter)StepSlot_get_handle, NULL, "The handle whose step is running, or None.",
     NULL},
    {"ring", (getter)StepSlot_get_ring, NULL,
     "Full mode: a read-only memoryview of the ring (int64, 3 per step: start_ns, "
     "duration_ns, owner id; record k is at (k % ring_capacity) * 3), or None.", NULL},
    {NULL}
};

static PyTypeObject StepSlot_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "looptrace._speedups.StepSlot",
    .tp_doc = "What one thread's event loop is running now; read by the watchdog.",
    .tp_basicsize = sizeof(StepSlot),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)StepSlot_traverse,
    .tp_clear = (inquiry)StepSlot_clear,
    .tp_dealloc = (destructor)StepSlot_dealloc,
    .tp_members = StepSlot_members,
    .tp_getset = StepSlot_getset,
    .tp_as_buffer = &StepSlot_as_buffer,
};

/* ---------------------------------------------------------------- StepHook */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original;         /* the Handle._run we replaced */
    PyObject *on_long_step;     /* on_long_step(handle, start_ns, end_ns, seq) */
    PyObject *registry;         /* {thread ident: StepSlot} */
    long long threshold_ns;
    unsigned long long generation;
    unsigned long long faults;
    int enabled;
    /* full mode only (FullStepHook): the OwnerTable's parts, and each thread's ring size */
    PyObject *owner_ids;        /* {task id or callback qualname/type: owner id} */
    PyObject *task_types;       /* set of Task classes */
    PyObject *register_owner;   /* register(key, owner, callback) -> owner id */
    PyObject *owner_busy;       /* list: busy ns per owner id */
    PyObject *owner_steps;      /* list: steps per owner id */
    PyObject *owner_scheduled;  /* list: ns a task waited ready, per owner id */
    PyObject *owner_max;        /* list: longest step ns per owner id */
    PyObject *ready;            /* {id(handle): ns call_soon made the task ready} */
    PyObject *finished;         /* finished(task, owner id, end_ns): a task step ended it */
    Py_ssize_t ring_capacity;
    /* inline mode (enable_inline): run the step as Handle._run does, without entering the
     * interpreter for _run itself; only for the exact stdlib Handle classes */
    PyObject *inline_types;     /* tuple of exact handle classes, or NULL */
    PyObject *context_run;      /* contextvars.Context.run (a method descriptor) */
    Py_ssize_t off_callback, off_args, off_context;
} StepHook;

static PyTypeObject FullStepHook_Type;

/* Each thread caches its slot. The generation tells a slot of this hook from one of an
 * earlier, uninstalled hook whose registry (and slots) may be gone. The pointer is borrowed:
 * the registry owns the slot, and only slots of dead threads are ever pruned from it. */
static _Thread_local StepSlot *tls_slot = NULL;
static _Thread_local unsigned long long tls_generation = 0;
static unsigned long long next_generation = 1;

static StepSlot *
slot_for_this_thread(StepHook *hook)
{
    if (tls_generation == hook->generation && tls_slot != NULL) {
        return tls_slot;
    }
    unsigned long ident = PyThread_get_thread_ident();
    PyObject *key = PyLong_FromUnsignedLong(ident);
    if (key == NULL) {
        return NULL;
    }
    StepSlot *slot = (StepSlot *)PyDict_GetItemWithError(hook->registry, key);
    if (slot == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
        slot = PyObject_GC_New(StepSlot, &StepSlot_Type);
        if (slot == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        slot->handle = NULL;
        slot->start_ns = 0;
        slot->seq = 0;
        slot->blocks = 0;
        slot->thread_id = ident;
        slot->ring = NULL;
        slot->ring_capacity = 0;
        slot->ring_items = 0;
        slot->ring_written = 0;
        if (hook->ring_capacity > 0) {
            slot->ring = PyMem_Calloc((size_t)hook->ring_capacity * 3, sizeof(long long));
            if (slot->ring == NULL) {
                Py_DECREF(slot);
                Py_DECREF(key);
                PyErr_NoMemory();
                return NULL;
            }
            slot->ring_capacity = hook->ring_capacity;
            slot->ring_items = 3 * hook->ring_capacity;
        }
        PyObject_GC_Track(slot);
        ls_sampler_watch(slot, ident, &slot->seq, &slot->start_ns, &slot->handle);
        int failed = PyDict_SetItem(hook->registry, key, (PyObject *)slot);
        Py_DECREF(slot);  /* the registry owns it now */
        if (failed) {
            Py_DECREF(key);
            return NULL;
        }
    }
    Py_DECREF(key);
    tls_slot = slot;
    tls_generation = hook->generation;
    return slot;
}

static PyObject *str_callback, *str_self, *str_qualname, *str_done;

/* getattr(obj, name, None) without raising and catching AttributeError. */
static inline int
lookup_optional_attr(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    return _PyObject_LookupAttr(obj, name, result);
#endif
}

static int
add_to_list_item(PyObject *list, Py_ssize_t i, long long amount)
{
    if (!PyList_Check(list) || i < 0 || i >= PyList_GET_SIZE(list)) {
        PyErr_SetString(PyExc_IndexError, "owner id out of range");
        return -1;
    }
    long long old = PyLong_AsLongLong(PyList_GET_ITEM(list, i));
    if (old == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *value = PyLong_FromLongLong(old + amount);
    if (value == NULL) {
        return -1;
    }
    return PyList_SetItem(list, i, value);   /* steals value */
}

static int
max_list_item(PyObject *list, Py_ssize_t i, long long value)
{
    if (!PyList_Check(list) || i < 0 || i >= PyList_GET_SIZE(list)) {
        PyErr_SetString(PyExc_IndexError, "owner id out of range");
        return -1;
    }
    long long old = PyLong_AsLongLong(PyList_GET_ITEM(list, i));
    if (old == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value <= old) {
        return 0;
    }
    PyObject *item = PyLong_FromLongLong(value);
    if (item == NULL) {
        return -1;
    }
    return PyList_SetItem(list, i, item);   /* steals item */
}

/* Full mode, a task's step: the time it waited ready (from the mark call_soon left under
 * id(handle); a wake the step made of its own task is another handle, left for the next
 * step), and, when the step ended the task, OwnerTable.finished. Mirrors
 * looptrace._hooks.steps.FullStepHook. */
static int
record_task_step(StepHook *hook, PyObject *handle, PyObject *owner, PyObject *oid,
                 Py_ssize_t i, long long start, long long end)
{
    PyObject *hkey = PyLong_FromVoidPtr(handle);
    if (hkey == NULL) {
        return -1;
    }
    PyObject *mark = PyDict_GetItemWithError(hook->ready, hkey);   /* borrowed */
    if (mark != NULL) {
        long long ready_ns = PyLong_AsLongLong(mark);
        if ((ready_ns == -1 && PyErr_Occurred()) || PyDict_DelItem(hook->ready, hkey) < 0
            || add_to_list_item(hook->owner_scheduled, i, start - ready_ns) < 0) {
            Py_DECREF(hkey);
            return -1;
        }
    }
    Py_DECREF(hkey);
    if (mark == NULL && PyErr_Occurred()) {
        return -1;
    }
    PyObject *done = PyObject_CallMethodNoArgs(owner, str_done);
    if (done == NULL) {
        return -1;
    }
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (is_done <= 0) {
        return is_done;
    }
    PyObject *r = PyObject_CallFunction(hook->finished, "OOL", owner, oid, end);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Full mode: the step's owner id (a dict hit after the owner's first step), its figures,
 * and the ring record. Mirrors looptrace._hooks.steps.FullStepHook. */
static int
record_step(StepHook *hook, StepSlot *slot, PyObject *handle, long long start, long long duration)
{
    PyObject *callback = NULL, *owner = NULL, *key = NULL, *new_oid = NULL;
    int status = -1;
    callback = PyObject_GetAttr(handle, str_callback);
    if (callback == NULL || lookup_optional_attr(callback, str_self, &owner) < 0) {
        goto done;
    }
    int is_task = 0;
    if (owner != NULL) {
        is_task = PySet_Contains(hook->task_types, (PyObject *)Py_TYPE(owner));
        if (is_task < 0) {
            goto done;
        }
    }
    if (is_task) {
        key = PyLong_FromVoidPtr(owner);
        if (key == NULL) {
            goto done;
        }
    }
    else {
        if (lookup_optional_attr(callback, str_qualname, &key) < 0) {
            goto done;
        }
        int truthy = key != NULL ? PyObject_IsTrue(key) : 0;
        if (truthy < 0) {
            goto done;
        }
        if (!truthy) {
            Py_XDECREF(key);
            key = Py_NewRef((PyObject *)Py_TYPE(callback));
        }
    }
    PyObject *oid = PyDict_GetItemWithError(hook->owner_ids, key);   /* borrowed */
    if (oid == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        new_oid = PyObject_CallFunctionObjArgs(hook->register_owner, key,
                                               owner != NULL ? owner : Py_None, callback, NULL);
        if (new_oid == NULL) {
            goto done;
        }
        oid = new_oid;
    }
    Py_ssize_t i = PyLong_AsSsize_t(oid);
    if (i == -1 && PyErr_Occurred()) {
        goto done;
    }
    if (add_to_list_item(hook->owner_busy, i, duration) < 0
        || add_to_list_item(hook->owner_steps, i, 1) < 0
        || max_list_item(hook->owner_max, i, duration) < 0) {
        goto done;
    }
    if (is_task && record_task_step(hook, handle, owner, oid, i, start, start + duration) < 0) {
        goto done;
    }
    if (slot->ring != NULL) {
        long long *rec = slot->ring
                         + 3 * (slot->ring_written % (unsigned long long)slot->ring_capacity);
        rec[0] = start;
        rec[1] = duration;
        rec[2] = (long long)i;
        slot->ring_written++;
    }
    status = 0;
done:
    Py_XDECREF(callback);
    Py_XDECREF(owner);
    Py_XDECREF(key);
    Py_XDECREF(new_oid);
    return status;
}

/* ---------------------------------------------------------------- inline steps */

/* The error path of an inline step. The callback already raised; the original
 * Handle._run must report it, exactly as asyncio always does (same message, same handle,
 * same context for the exception handler, same traceback). So the handle's callback is
 * swapped for this object for one call of the original _run: when _run calls it (inside the
 * handle's own context), it puts the real callback and arguments back, then raises the
 * callback's exception again, from C, so no frame of ours enters the traceback. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *handle;
    PyObject *callback;          /* what _callback held before the swap */
    PyObject *args;              /* what _args held before the swap */
    Py_ssize_t off_callback, off_args;
    saved_error error;
    int armed;
} Reraise;

static inline PyObject **
slot_at(PyObject *obj, Py_ssize_t offset)
{
    return (PyObject **)((char *)obj + offset);
}

/* Put the handle's callback and arguments back (idempotent). */
static void
Reraise_restore(Reraise *self)
{
    if (self->handle == NULL) {
        return;
    }
    Py_XSETREF(*slot_at(self->handle, self->off_callback), self->callback);
    Py_XSETREF(*slot_at(self->handle, self->off_args), self->args);
    self->callback = NULL;
    self->args = NULL;
    Py_CLEAR(self->handle);
}

static PyObject *
Reraise_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                   PyObject *kwnames)
{
    Reraise *self = (Reraise *)callable;
    Reraise_restore(self);
    if (!self->armed) {
        PyErr_SetString(PyExc_RuntimeError, "looptrace: nothing to raise");
        return NULL;
    }
    self->armed = 0;
    restore_error(&self->error);   /* hands our references to the error indicator */
    return NULL;
}

static void
Reraise_dealloc(Reraise *self)
{
    Reraise_restore(self);
    if (self->armed) {
#if PY_VERSION_HEX >= 0x030C0000
        Py_XDECREF(self->error.exc);
#else
        Py_XDECREF(self->error.type);
        Py_XDECREF(self->error.value);
        Py_XDECREF(self->error.tb);
#endif
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject Reraise_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "looptrace._speedups._Reraise",
    .tp_basicsize = sizeof(Reraise),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Reraise, vectorcall),
    .tp_dealloc = (destructor)Reraise_dealloc,
};

/* Handle._run for a stdlib handle, without the interpreter entry for _run: call
 * handle._context.run(handle._callback, *handle._args). On an exception other than
 * SystemExit/KeyboardInterrupt, let the original _run report it (see Reraise). Returns
 * NULL with an error set only for what the original would let through. */
static PyObject *
run_inline(StepHook *hook, PyObject *handle, PyObject *const *args, size_t nargsf)
{
    PyObject *context = *slot_at(handle, hook->off_context);
    PyObject *callback = *slot_at(handle, hook->off_callback);
    PyObject *cb_args = *slot_at(handle, hook->off_args);
    if (context == NULL || callback == NULL || cb_args == NULL || !PyTuple_CheckExact(cb_args)) {
        return PyObject_Vectorcall(hook->original, args, nargsf, NULL);
    }
    /* The callback may cancel its own handle, which drops these: hold them. */
    Py_INCREF(context);
    Py_INCREF(callback);
    Py_INCREF(cb_args);
    Py_ssize_t n = PyTuple_GET_SIZE(cb_args);
    PyObject *small[8];
    PyObject **stack = small;
    if (n + 2 > 8) {
        stack = PyMem_Malloc((size_t)(n + 2) * sizeof(PyObject *));
        if (stack == NULL) {
            Py_DECREF(context);
            Py_DECREF(callback);
            Py_DECREF(cb_args);
            return PyObject_Vectorcall(hook->original, args, nargsf, NULL);
        }
    }
    stack[0] = context;
    stack[1] = callback;
    for (Py_ssize_t i = 0; i < n; i++) {
        stack[i + 2] = PyTuple_GET_ITEM(cb_args, i);
    }
    PyObject *result = PyObject_Vectorcall(hook->context_run, stack, (size_t)(n + 2), NULL);
    if (stack != small) {
        PyMem_Free(stack);
    }
    Py_DECREF(context);
    Py_DECREF(callback);
    Py_DECREF(cb_args);
    if (result != NULL) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return NULL;   /* _run re-raises these */
    }
    Reraise *reraise = PyObject_New(Reraise, &Reraise_Type);
    if (reraise == NULL) {
        return NULL;
    }
    reraise->vectorcall = Reraise_vectorcall;
    save_error(&reraise->error);
    reraise->armed = 1;
    reraise->off_callback = hook->off_callback;
    reraise->off_args = hook->off_args;
    reraise->handle = Py_NewRef(handle);
    /* Take the slots' references (they may be NULL or None if the callback cancelled its
     * handle); the handle holds ours until Reraise_restore gives them back. */
    reraise->callback = *slot_at(handle, hook->off_callback);
    reraise->args = *slot_at(handle, hook->off_args);
    *slot_at(handle, hook->off_callback) = Py_NewRef((PyObject *)reraise);
    *slot_at(handle, hook->off_args) = PyTuple_New(0);
    if (*slot_at(handle, hook->off_args) == NULL) {
        PyErr_Clear();
        *slot_at(handle, hook->off_args) = Py_NewRef(Py_None);
    }
    PyObject *reported = PyObject_Vectorcall(hook->original, args, nargsf, NULL);
    Reraise_restore(reraise);   /* in case _run never called it */
    Py_DECREF(reraise);
    return reported;
}

static PyObject *
StepHook_enable_inline(StepHook *self, PyObject *args)
{
    PyObject *types, *descrs, *context_run;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyTuple_Type, &types, &PyTuple_Type, &descrs,
                          &context_run)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(descrs) != 3) {
        PyErr_SetString(PyExc_ValueError, "expected the _callback, _args and _context slots");
        return NULL;
    }
    Py_ssize_t offsets[3];
    for (int i = 0; i < 3; i++) {
        PyObject *d = PyTuple_GET_ITEM(descrs, i);
        if (!PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
            PyErr_SetString(PyExc_TypeError, "handle attributes must be __slots__ members");
            return NULL;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)d)->d_member;
        if (member->type != T_OBJECT_EX && member->type != T_OBJECT) {
            PyErr_SetString(PyExc_TypeError, "handle slots must hold objects");
            return NULL;
        }
        offsets[i] = member->offset;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        if (!PyType_Check(PyTuple_GET_ITEM(types, i))) {
            PyErr_SetString(PyExc_TypeError, "expected handle classes");
            return NULL;
        }
    }
    Py_XSETREF(self->inline_types, Py_NewRef(types));
    Py_XSETREF(self->context_run, Py_NewRef(context_run));
    self->off_callback = offsets[0];
    self->off_args = offsets[1];
    self->off_context = offsets[2];
    Py_RETURN_NONE;
}

static inline int
runs_inline(StepHook *hook, PyObject *handle)
{
    PyObject *types = hook->inline_types;
    if (types == NULL) {
        return 0;
    }
    PyTypeObject *type = Py_TYPE(handle);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++) {
        if ((PyObject *)type == PyTuple_GET_ITEM(types, i)) {
            return 1;
        }
    }
    return 0;
}

static PyObject *
StepHook_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    StepHook *hook = (StepHook *)callable;
    if (!hook->enabled || PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        return PyObject_Vectorcall(hook->original, args, nargsf, kwnames);
    }
    StepSlot *slot = slot_for_this_thread(hook);
    if (slot == NULL) {
        PyErr_Clear();
        hook->faults++;
        return PyObject_Vectorcall(hook->original, args, nargsf, kwnames);
    }
    /* The step runs arbitrary code, which may uninstall looptrace and drop the registry. */
    Py_INCREF(slot);
    PyObject *handle = args[0];
    Py_INCREF(handle);
    PyObject *outer_handle = slot->handle;   /* non-NULL only for nested loops in one thread */
    long long outer_start = slot->start_ns;
    unsigned long long seq = ++slot->seq;
    long long start = now_ns();
    slot->handle = handle;
    slot->start_ns = start;

    PyObject *result = runs_inline(hook, handle)
                       ? run_inline(hook, handle, args, nargsf)
                       : PyObject_Vectorcall(hook->original, args, nargsf, NULL);

    long long end = now_ns();
    slot->handle = outer_handle;
    slot->start_ns = outer_start;
    saved_error interrupt;
    int interrupted = 0;
    if (hook->owner_ids != NULL && hook->enabled) {
        saved_error saved;
        save_error(&saved);
        if (record_step(hook, slot, handle, start, end - start) < 0) {
            /* never raise an error of ours into the program */
            interrupted = take_callback_error(&hook->faults, &interrupt);
        }
        restore_error(&saved);
    }
    if (!interrupted && end - start >= hook->threshold_ns && hook->enabled) {
        slot->blocks++;
        saved_error saved;
        save_error(&saved);
        PyObject *r = PyObject_CallFunction(hook->on_long_step, "OLLK", handle, start, end, seq);
        if (r == NULL) {
            /* never raise an error of ours into the program; the Python side counts faults */
            interrupted = take_callback_error(&hook->faults, &interrupt);
        }
        else {
            Py_DECREF(r);
        }
        restore_error(&saved);
    }
    Py_DECREF(handle);
    Py_DECREF(slot);
    if (interrupted) {
        Py_XDECREF(result);
        PyErr_Clear();   /* the step's own error, if any: the interrupt wins, as it would */
        restore_error(&interrupt);
        return NULL;
    }
    return result;
}

static PyObject *
StepHook_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"original", "on_long_step", "threshold_ns", NULL};
    static char *full_kwlist[] = {"original", "on_long_step", "threshold_ns", "owners",
                                  "ring_capacity", NULL};
    PyObject *original, *on_long_step, *owners = NULL;
    long long threshold_ns;
    Py_ssize_t ring_capacity = 0;
    int full = PyType_IsSubtype(type, &FullStepHook_Type);
    if (full ? !PyArg_ParseTupleAndKeywords(args, kwds, "OOLO|n", full_kwlist, &original,
                                            &on_long_step, &threshold_ns, &owners,
                                            &ring_capacity)
             : !PyArg_ParseTupleAndKeywords(args, kwds, "OOL", kwlist, &original,
                                            &on_long_step, &threshold_ns)) {
        return NULL;
    }
    if (!PyCallable_Check(original) || !PyCallable_Check(on_long_step)) {
        PyErr_SetString(PyExc_TypeError, "original and on_long_step must be callable");
        return NULL;
    }
    if (ring_capacity < 0) {
        PyErr_SetString(PyExc_ValueError, "ring_capacity must be >= 0");
        return NULL;
    }
    StepHook *self = (StepHook *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (full) {
        self->owner_ids = PyObject_GetAttrString(owners, "ids");
        self->task_types = self->owner_ids ? PyObject_GetAttrString(owners, "task_types") : NULL;
        self->register_owner = self->task_types ? PyObject_GetAttrString(owners, "register")
                                                : NULL;
        self->owner_busy = self->register_owner ? PyObject_GetAttrString(owners, "busy_ns")
                                                : NULL;
        self->owner_steps = self->owner_busy ? PyObject_GetAttrString(owners, "steps") : NULL;
        self->owner_scheduled = self->owner_steps
                                ? PyObject_GetAttrString(owners, "scheduled_ns") : NULL;
        self->owner_max = self->owner_scheduled
                          ? PyObject_GetAttrString(owners, "max_step_ns") : NULL;
        self->ready = self->owner_max ? PyObject_GetAttrString(owners, "ready") : NULL;
        self->finished = self->ready ? PyObject_GetAttrString(owners, "finished") : NULL;
        if (self->finished == NULL) {
            Py_DECREF(self);
            return NULL;
        }
        if (!PyDict_Check(self->owner_ids) || !PyAnySet_Check(self->task_types)
            || !PyList_Check(self->owner_busy) || !PyList_Check(self->owner_steps)
            || !PyList_Check(self->owner_scheduled) || !PyList_Check(self->owner_max)
            || !PyDict_Check(self->ready)) {
            PyErr_SetString(PyExc_TypeError,
                            "owners must have dict ids, set task_types, list busy_ns and steps");
            Py_DECREF(self);
            return NULL;
        }
        self->ring_capacity = ring_capacity;
    }
    self->registry = PyDict_New();
    if (self->registry == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->vectorcall = StepHook_vectorcall;
    Py_INCREF(original);
    self->original = original;
    Py_INCREF(on_long_step);
    self->on_long_step = on_long_step;
    self->threshold_ns = threshold_ns;
    self->generation = next_generation++;
    self->faults = 0;
    self->enabled = 1;
    return (PyObject *)self;
}

static int
StepHook_traverse(StepHook *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->on_long_step);
    Py_VISIT(self->registry);
    Py_VISIT(self->owner_ids);
    Py_VISIT(self->task_types);
    Py_VISIT(self->register_owner);
    Py_VISIT(self->owner_busy);
    Py_VISIT(self->owner_steps);
    Py_VISIT(self->owner_scheduled);
    Py_VISIT(self->owner_max);
    Py_VISIT(self->ready);
    Py_VISIT(self->finished);
    Py_VISIT(self->inline_types);
    Py_VISIT(self->context_run);
    return 0;
}

static int
StepHook_clear(StepHook *self)
{
    self->enabled = 0;
    Py_CLEAR(self->original);
    Py_CLEAR(self->on_long_step);
    Py_CLEAR(self->registry);
    Py_CLEAR(self->owner_ids);
    Py_CLEAR(self->task_types);
    Py_CLEAR(self->register_owner);
    Py_CLEAR(self->owner_busy);
    Py_CLEAR(self->owner_steps);
    Py_CLEAR(self->owner_scheduled);
    Py_CLEAR(self->owner_max);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->finished);
    Py_CLEAR(self->inline_types);
    Py_CLEAR(self->context_run);
    return 0;
}

static void
StepHook_dealloc(StepHook *self)
{
    PyObject_GC_UnTrack(self);
    StepHook_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* As a class attribute it binds like a function: `handle._run()` passes the handle. */
static PyObject *
StepHook_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyObject *
StepHook_slots(StepHook *self, PyObject *unused)
{
    if (self->registry == NULL) {
        return PyList_New(0);
    }
    return PyDict_Values(self->registry);
}

static PyObject *
StepHook_current_slot(StepHook *self, PyObject *unused)
{
    if (self->registry == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the step hook was cleared");
        return NULL;
    }
    StepSlot *slot = slot_for_this_thread(self);
    if (slot == NULL) {
        return NULL;
    }
    Py_INCREF(slot);
    return (PyObject *)slot;
}

/* Drop the slots of threads that no longer exist; `alive` holds the idents that do. */
static PyObject *
StepHook_prune(StepHook *self, PyObject *alive)
{
    if (self->registry == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *keys = PyDict_Keys(self->registry);
    if (keys == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        int contained = PySequence_Contains(alive, key);
        if (contained < 0) {
            Py_DECREF(keys);
            return NULL;
        }
        if (!contained && PyDict_DelItem(self->registry, key) < 0) {
            Py_DECREF(keys);
            return NULL;
        }
    }
    Py_DECREF(keys);
    Py_RETURN_NONE;
}

static PyObject *
StepHook_get_wrapped(StepHook *self, void *closure)
{
    PyObject *o = self->original ? self->original : Py_None;
    Py_INCREF(o);
    return o;
}

static PyObject *
StepHook_get_name(StepHook *self, void *closure)
{
    return PyUnicode_FromString("_run");
}

/* Full mode: one thread's kept steps, oldest first, as (start_ns, duration_ns, owner id). */
static PyObject *
StepHook_ring(StepHook *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &StepSlot_Type)) {
        PyErr_SetString(PyExc_TypeError, "ring() takes a StepSlot");
        return NULL;
    }
    StepSlot *slot = (StepSlot *)arg;
    if (slot->ring == NULL) {
        return PyList_New(0);
    }
    return ring_to_list(slot->ring, slot->ring_capacity, slot->ring_written, 3);
}

static PyMethodDef StepHook_methods[] = {
    {"slots", (PyCFunction)StepHook_slots, METH_NOARGS, "The slots of every thread seen."},
    {"ring", (PyCFunction)StepHook_ring, METH_O,
     "Full mode: a slot's kept steps, oldest first, as (start_ns, duration_ns, owner id)."},
    {"enable_inline", (PyCFunction)StepHook_enable_inline, METH_VARARGS,
     "enable_inline((Handle, TimerHandle), (_callback, _args, _context slots), Context.run):"
     " run steps of exactly these classes as Handle._run does, without its frame."},
    {"current_slot", (PyCFunction)StepHook_current_slot, METH_NOARGS,
     "The calling thread's slot, created on first use."},
    {"prune", (PyCFunction)StepHook_prune, METH_O,
     "Forget the slots of threads whose ident is not in the given collection."},
    {NULL}
};

static PyMemberDef StepHook_members[] = {
    {"threshold_ns", T_LONGLONG, offsetof(StepHook, threshold_ns), 0,
     "Steps this long or longer are reported to on_long_step."},
    {"enabled", T_INT, offsetof(StepHook, enabled), 0,
     "0 turns the hook into a plain call of the original."},
    {"faults", T_ULONGLONG, offsetof(StepHook, faults), READONLY,
     "Errors swallowed by the hook itself."},
    {"ring_capacity", T_PYSSIZET, offsetof(StepHook, ring_capacity), READONLY,
     "Full mode: how many steps each thread's ring keeps."},
    {NULL}
};

static PyGetSetDef StepHook_getset[] = {
    {"__wrapped__", (getter)StepHook_get_wrapped, NULL, "The original Handle._run.", NULL},
    {"__name__", (getter)StepHook_get_name, NULL, NULL, NULL},
    {NULL}
};

static PyTypeObject StepHook_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "looptrace._speedups.StepHook",
    .tp_doc = "StepHook(original, on_long_step, threshold_ns): a timed Handle._run.",
    .tp_basicsize = sizeof(StepHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR
                | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = StepHook_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(StepHook, vectorcall),
    .tp_descr_get = StepHook_descr_get,
    .tp_traverse = (traverseproc)StepHook_traverse,
    .tp_clear = (inquiry)StepHook_clear,
    .tp_dealloc = (destructor)StepHook_dealloc,
    .tp_methods = StepHook_methods,
    .tp_members = StepHook_members,
    .tp_getset = StepHook_getset,
};

/* Full mode: the same hook, built with an OwnerTable and a ring size. A type of its own so
 * `isinstance(hook, looptrace._hooks.steps.FullStepHook)` tells the modes apart. */
static PyTypeObject FullStepHook_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "looptrace._speedups.FullStepHook",
    .tp_doc = "FullStepHook(original, on_long_step, threshold_ns, owners, ring_capacity=0): "
              "a timed Handle._run that also records every step.",
    .tp_basicsize = sizeof(StepHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR
                | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_base = &StepHook_Type,
    .tp_new = StepHook_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(StepHook, vectorcall),
    .tp_descr_get = StepHook_descr_get,
    .tp_traverse = (traverseproc)StepHook_traverse,
    .tp_clear = (inquiry)StepHook_clear,
    .tp_dealloc = (destructor)StepHook_dealloc,
};

/* ---------------------------------------------------------------- ReadyMarks */

/* Full mode: BaseEventLoop.call_soon, marking when a task's step became ready (for its
 * scheduled time) and counting the wakes a task makes of itself. The Python version, and
 * every rare path (a Task subclass not learnt yet, a task not registered yet, a full mark
 * table), is looptrace._hooks.tasks.TaskWatch._mark, which ``slow`` calls. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original;      /* the call_soon we replaced */
    PyObject *ready;         /* OwnerTable.ready: {id(handle): ns} */
    PyObject *born;          /* OwnerTable.born: {id(task): first ready ns} */
    PyObject *ids;           /* OwnerTable.ids */
    PyObject *task_types;    /* OwnerTable.task_types */
    PyObject *self_wakes;    /* OwnerTable.counts["self_wakes"] */
    PyObject *current_task;  /* current_task(loop), or the dict _current_tasks' get */
    PyObject *future_type;   /* asyncio.Future: a subclass may be a Task subclass */
    PyObject *slow;          /* slow(loop, callback, handle) */
    PyObject *on_error;      /* on_error(exception): looptrace's fault, never raised */
    Py_ssize_t max_ready;
    unsigned long long faults;
    int enabled;
} ReadyMarks;

static int
ready_marks_mark(ReadyMarks *self, PyObject *loop, PyObject *callback, PyObject *handle)
{
    PyObject *owner = NULL, *hkey = NULL, *key = NULL, *now = NULL, *current = NULL;
    int status = -1;
    if (lookup_optional_attr(callback, str_self, &owner) < 0) {
        return -1;
    }
    if (owner == NULL) {
        return 0;
    }
    int is_task = PySet_Contains(self->task_types, (PyObject *)Py_TYPE(owner));
    if (is_task < 0) {
        goto done;
    }
    if (!is_task || PyDict_GET_SIZE(self->ready) >= self->max_ready) {
        int future = is_task ? 1 : PyObject_IsInstance(owner, self->future_type);
        if (future > 0) {
            PyObject *r = PyObject_CallFunctionObjArgs(self->slow, loop, callback, handle, NULL);
            if (r == NULL) {
                goto done;
            }
            Py_DECREF(r);
        }
        status = future < 0 ? -1 : 0;
        goto done;
    }
    now = PyLong_FromLongLong(now_ns());
    hkey = now ? PyLong_FromVoidPtr(handle) : NULL;
    key = hkey ? PyLong_FromVoidPtr(owner) : NULL;
    if (key == NULL || PyDict_SetItem(self->ready, hkey, now) < 0) {
        goto done;
    }
    int known = PyDict_Contains(self->born, key);
    if (known < 0 || (!known && PyDict_SetItem(self->born, key, now) < 0)) {
        goto done;
    }
    current = PyObject_CallOneArg(self->current_task, loop);
    if (current == NULL) {
        goto done;
    }
    if (current == owner) {
        PyObject *oid = PyDict_GetItemWithError(self->ids, key);   /* borrowed */
        if (oid == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            /* its first step is running: let Python register it */
            PyObject *r = PyObject_CallFunctionObjArgs(self->slow, loop, callback, handle, NULL);
            if (r == NULL) {
                goto done;
            }
            Py_DECREF(r);
        }
        else {
            Py_ssize_t i = PyLong_AsSsize_t(oid);
            if ((i == -1 && PyErr_Occurred()) || add_to_list_item(self->self_wakes, i, 1) < 0) {
                goto done;
            }
        }
    }
    status = 0;
done:
    Py_XDECREF(owner);
    Py_XDECREF(hkey);
    Py_XDECREF(key);
    Py_XDECREF(now);
    Py_XDECREF(current);
    return status;
}

static PyObject *
ReadyMarks_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    ReadyMarks *self = (ReadyMarks *)callable;
    PyObject *handle = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    if (handle == NULL || !self->enabled || PyVectorcall_NARGS(nargsf) < 2) {
        return handle;
    }
    if (ready_marks_mark(self, args[0], args[1], handle) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(handle);   /* KeyboardInterrupt and the like belong to the program */
            return NULL;
        }
        self->faults++;
        saved_error saved;
        save_error(&saved);
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc = saved.exc;
#else
        PyErr_NormalizeException(&saved.type, &saved.value, &saved.tb);
        PyObject *exc = saved.value;
        Py_XDECREF(saved.type);
        Py_XDECREF(saved.tb);
#endif
        PyObject *r = PyObject_CallOneArg(self->on_error, exc != NULL ? exc : Py_None);
        Py_XDECREF(r);
        Py_XDECREF(exc);
        PyErr_Clear();   /* never into the program */
    }
    return handle;
}

static PyObject *
ReadyMarks_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"original", "owners", "current_task", "future_type", "slow",
                             "on_error", NULL};
    PyObject *original, *owners, *current_task, *future_type, *slow, *on_error;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO", kwlist, &original, &owners,
                                     &current_task, &future_type, &slow, &on_error)) {
        return NULL;
    }
    ReadyMarks *self = (ReadyMarks *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = ReadyMarks_vectorcall;
    self->original = Py_NewRef(original);
    self->current_task = Py_NewRef(current_task);
    self->future_type = Py_NewRef(future_type);
    self->slow = Py_NewRef(slow);
    self->on_error = Py_NewRef(on_error);
    self->enabled = 1;
    PyObject *counts = PyObject_GetAttrString(owners, "counts");
    PyObject *max_ready = counts ? PyObject_GetAttrString(owners, "MAX_READY") : NULL;
    self->ready = max_ready ? PyObject_GetAttrString(owners, "ready") : NULL;
    self->born = self->ready ? PyObject_GetAttrString(owners, "born") : NULL;
    self->ids = self->born ? PyObject_GetAttrString(owners, "ids") : NULL;
    self->task_types = self->ids ? PyObject_GetAttrString(owners, "task_types") : NULL;
    self->self_wakes = (self->task_types && PyDict_Check(counts))
                       ? PyDict_GetItemString(counts, "self_wakes") : NULL;
    Py_XINCREF(self->self_wakes);
    self->max_ready = max_ready ? PyLong_AsSsize_t(max_ready) : -1;
    Py_XDECREF(counts);
    Py_XDECREF(max_ready);
    if (PyErr_Occurred() || self->self_wakes == NULL || !PyDict_Check(self->ready)
        || !PyDict_Check(self->born) || !PyDict_Check(self->ids)
        || !PyAnySet_Check(self->task_types) || !PyList_Check(self->self_wakes)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "owners must be a looptrace OwnerTable");
        }
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
ReadyMarks_traverse(ReadyMarks *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->ready);
    Py_VISIT(self->born);
    Py_VISIT(self->ids);
    Py_VISIT(self->task_types);
    Py_VISIT(self->self_wakes);
    Py_VISIT(self->current_task);
    Py_VISIT(self->future_type);
    Py_VISIT(self->slow);
    Py_VISIT(self->on_error);
    return 0;
}

static int
ReadyMarks_clear(ReadyMarks *self)
{
    self->enabled = 0;
    Py_CLEAR(self->original);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->born);
    Py_CLEAR(self->ids);
    Py_CLEAR(self->task_types);
    Py_CLEAR(self->self_wakes);
    Py_CLEAR(self->current_task);
    Py_CLEAR(self->future_type);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->on_error);
    return 0;
}

static void
ReadyMarks_dealloc(ReadyMarks *self)
{
    PyObject_GC_UnTrack(self);
    ReadyMarks_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
ReadyMarks_wrapped(ReadyMarks *self, void *closure)
{
    return Py_NewRef(self->original != NULL ? self->original : Py_None);
}

static PyMemberDef ReadyMarks_members[] = {
    {"enabled", T_INT, offsetof(ReadyMarks, enabled), 0, "0 turns the marks off."},
    {"faults", T_ULONGLONG, offsetof(ReadyMarks, faults), READONLY,
     "Errors of looptrace's own caught (each also handed to on_error)."},
    {NULL},
};

static PyGetSetDef ReadyMarks_getset[] = {
    {"__wrapped__", (getter)ReadyMarks_wrapped, NULL, "The original call_soon.", NULL},
    {NULL},
};

static PyTypeObject ReadyMarks_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "looptrace._speedups.ReadyMarks",
    .tp_doc = "ReadyMarks(original, owners, current_task, future_type, slow, on_error): "
              "BaseEventLoop.call_soon that marks when each task step became ready.",
    .tp_basicsize = sizeof(ReadyMarks),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR
                | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = ReadyMarks_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ReadyMarks, vectorcall),
    .tp_descr_get = StepHook_descr_get,
    .tp_traverse = (traverseproc)ReadyMarks_traverse,
    .tp_clear = (inquiry)ReadyMarks_clear,
    .tp_dealloc = (destructor)ReadyMarks_dealloc,
    .tp_members = ReadyMarks_members,
    .tp_getset = ReadyMarks_getset,
};

/* ---------------------------------------------------------------- SelectTimer */

/* Lag histogram: 8 sub-buckets per power of two, so a percentile read from it is within
 * 1/8 (12.5%) of the true value, from 16 ns to 2**63 ns. */
#define HIST_SUB_BITS 3
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_BUCKETS (64 * HIST_SUB)

static inline int
hist_index(long long v)
{
    if (v < HIST_SUB * 2) {
        return (int)(v < 0 ? 0 : v);
    }
    int bits = 63 - __builtin_clzll((unsigned long long)v);   /* floor(log2(v)) */
    int sub = (int)((v >> (bits - HIST_SUB_BITS)) & (HIST_SUB - 1));
    return (bits - HIST_SUB_BITS + 1) * HIST_SUB + sub;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original;           /* the selector's bound select method */
    PyObject *on_long_iteration;  /* on_long_iteration(start_ns, end_ns) */
    long long threshold_ns;
    long long last_end_ns;        /* when the previous select returned; 0 = none yet */
    long long waiting_since_ns;   /* when the select in progress began; 0 = not waiting */
    unsigned long long select_calls;
    unsigned long long events;
    long long io_wait_ns;
    long long busy_ns;
    long long max_busy_ns;
    unsigned long long long_iterations;
    unsigned long long faults;
    unsigned long long hist[HIST_BUCKETS];
    /* full mode: ring of (start_ns, duration_ns, timeout_ns or -1, events) */
    long long *ring;
    Py_ssize_t ring_capacity;     /* in records */
    Py_ssize_t ring_items;        /* 4 * ring_capacity: the shape of the exported buffer */
    unsigned long long ring_written;
    int enabled;
} SelectTimer;

static PyObject *
SelectTimer_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    SelectTimer *self = (SelectTimer *)callable;
    if (!self->enabled) {
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    }
    long long start = now_ns();
    /* The busy time since the previous wait is known now, before this wait: a program
     * stopped while the loop sleeps (SIGTERM, a snapshot) still has it counted. */
    if (self->last_end_ns) {
        long long busy = start - self->last_end_ns;
        self->busy_ns += busy;
        self->hist[hist_index(busy)]++;
        if (busy > self->max_busy_ns) {
            self->max_busy_ns = busy;
        }
        if (busy >= self->threshold_ns) {
            self->long_iterations++;
            PyObject *r = PyObject_CallFunction(self->on_long_iteration, "LL",
                                                self->last_end_ns, start);
            saved_error interrupt;
            if (r == NULL && take_callback_error(&self->faults, &interrupt)) {
                self->last_end_ns = 0;
                restore_error(&interrupt);   /* the program's KeyboardInterrupt */
                return NULL;
            }
            Py_XDECREF(r);
        }
        self->last_end_ns = 0;
    }
    self->waiting_since_ns = start;
    PyObject *ready = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    long long end = now_ns();
    self->waiting_since_ns = 0;
    if (ready == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_Check(ready) ? PyList_GET_SIZE(ready) : 0;
    self->select_calls++;
    self->events += (unsigned long long)n;
    self->io_wait_ns += end - start;
    self->last_end_ns = end;
    if (self->ring != NULL) {
        long long timeout_ns = -1;
        PyObject *timeout = NULL;
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
        if (nargs >= 1) {
            timeout = args[0];
        }
        if (timeout != NULL && timeout != Py_None) {
            double t = PyFloat_AsDouble(timeout);
            if (t == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
            }
            else {
                timeout_ns = (long long)(t * 1e9);
            }
        }
        long long *rec = self->ring + 4 * (self->ring_written % (unsigned long long)self->ring_capacity);
        rec[0] = start;
        rec[1] = end - start;
        rec[2] = timeout_ns;
        rec[3] = (long long)n;
        self->ring_written++;
    }
    return ready;
}

static PyObject *
SelectTimer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"original", "on_long_iteration", "threshold_ns", "ring_capacity",
                             NULL};
    PyObject *original, *on_long_iteration;
    long long threshold_ns;
    Py_ssize_t ring_capacity = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOL|n", kwlist, &original, &on_long_iteration,
                                     &threshold_ns, &ring_capacity)) {
        return NULL;
    }
    if (ring_capacity < 0) {
        PyErr_SetString(PyExc_ValueError, "ring_capacity must be >= 0");
        return NULL;
    }
    SelectTimer *self = (SelectTimer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (ring_capacity > 0) {
        self->ring = PyMem_Calloc((size_t)ring_capacity * 4, sizeof(long long));
        if (self->ring == NULL) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
        self->ring_capacity = ring_capacity;
        self->ring_items = 4 * ring_capacity;
    }
    self->vectorcall = SelectTimer_vectorcall;
    Py_INCREF(original);
    self->original = original;
    Py_INCREF(on_long_iteration);
    self->on_long_iteration = on_long_iteration;
    self->threshold_ns = threshold_ns;
    self->enabled = 1;
    return (PyObject *)self;
}

static int
SelectTimer_traverse(SelectTimer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->on_long_iteration);
    return 0;
}

static int
SelectTimer_clear(SelectTimer *self)
{
    self->enabled = 0;
    Py_CLEAR(self->original);
    Py_CLEAR(self->on_long_iteration);
    return 0;
}

static void
SelectTimer_dealloc(SelectTimer *self)
{
    PyObject_GC_UnTrack(self);
    SelectTimer_clear(self);
    PyMem_Free(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
SelectTimer_getbuffer(SelectTimer *self, Py_buffer *view, int flags)
{
    return ring_getbuffer((PyObject *)self, view, flags, self->ring, &self->ring_items);
}

static PyBufferProcs SelectTimer_as_buffer = {
    .bf_getbuffer = (getbufferproc)SelectTimer_getbuffer,
};

static PyObject *
SelectTimer_ring_view(SelectTimer *self, PyObject *unused)
{
    if (self->ring == NULL) {
        Py_RETURN_NONE;
    }
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyObject *
SelectTimer_histogram(SelectTimer *self, PyObject *unused)
{
    /* [(bucket_low_ns, count), ...] for the non-empty buckets */
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (int i = 0; i < HIST_BUCKETS; i++) {
        if (self->hist[i] == 0) {
            continue;
        }
        long long low;
        if (i < HIST_SUB * 2) {
            low = i;
        }
        else {
            int bits = i / HIST_SUB + HIST_SUB_BITS - 1;
            int sub = i % HIST_SUB;
            low = (1LL << bits) + ((long long)sub << (bits - HIST_SUB_BITS));
        }
        PyObject *item = Py_BuildValue("(LK)", low, self->hist[i]);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *
SelectTimer_ring(SelectTimer *self, PyObject *unused)
{
    /* The kept waits, oldest first, as (start_ns, duration_ns, timeout_ns, events). */
    if (self->ring == NULL) {
        return PyList_New(0);
    }
    return ring_to_list(self->ring, self->ring_capacity, self->ring_written, 4);
}

static PyObject *
SelectTimer_forget_last(SelectTimer *self, PyObject *unused)
{
    /* The loop stopped: the time until it runs again is not busy time. */
    self->last_end_ns = 0;
    Py_RETURN_NONE;
}

static PyMethodDef SelectTimer_methods[] = {
    {"histogram", (PyCFunction)SelectTimer_histogram, METH_NOARGS,
     "Busy time per iteration: [(bucket_low_ns, count)] for non-empty buckets."},
    {"ring", (PyCFunction)SelectTimer_ring, METH_NOARGS,
     "Full mode: the kept waits, oldest first, as (start_ns, duration_ns, timeout_ns, events)."},
    {"ring_view", (PyCFunction)SelectTimer_ring_view, METH_NOARGS,
     "Full mode: a read-only memoryview of the ring (int64, 4 per wait: start_ns, "
     "duration_ns, timeout_ns or -1, events; wait k is at (k % ring_capacity) * 4), or None."},
    {"forget_last", (PyCFunction)SelectTimer_forget_last, METH_NOARGS,
     "Start a new busy period: the loop stopped and will run again later."},
    {NULL}
};

static PyMemberDef SelectTimer_members[] = {
    {"threshold_ns", T_LONGLONG, offsetof(SelectTimer, threshold_ns), 0, NULL},
    {"enabled", T_INT, offsetof(SelectTimer, enabled), 0, NULL},
    {"select_calls", T_ULONGLONG, offsetof(SelectTimer, select_calls), READONLY, NULL},
    {"events", T_ULONGLONG, offsetof(SelectTimer, events), READONLY, NULL},
    {"io_wait_ns", T_LONGLONG, offsetof(SelectTimer, io_wait_ns), READONLY, NULL},
    {"busy_ns", T_LONGLONG, offsetof(SelectTimer, busy_ns), READONLY, NULL},
    {"max_busy_ns", T_LONGLONG, offsetof(SelectTimer, max_busy_ns), READONLY, NULL},
    {"long_iterations", T_ULONGLONG, offsetof(SelectTimer, long_iterations), READONLY, NULL},
    {"last_end_ns", T_LONGLONG, offsetof(SelectTimer, last_end_ns), READONLY, NULL},
    {"waiting_since_ns", T_LONGLONG, offsetof(SelectTimer, waiting_since_ns), READONLY,
     "When the wait in progress began (0: not waiting)."},
    {"ring_written", T_ULONGLONG, offsetof(SelectTimer, ring_written), READONLY, NULL},
    {"ring_capacity", T_PYSSIZET, offsetof(SelectTimer, ring_capacity), READONLY, NULL},
    {"faults", T_ULONGLONG, offsetof(SelectTimer, faults), READONLY, NULL},
    {NULL}
};

/* SelectTimer_getset reuses StepHook_get_wrapped: the `original` fields must line up. */
_Static_assert(offsetof(SelectTimer, original) == offsetof(StepHook, original),
               "SelectTimer.original must sit where StepHook.original does");

static PyGetSetDef SelectTimer_getset[] = {
    {"__wrapped__", (getter)StepHook_get_wrapped, NULL, "The selector's own select.", NULL},
    {NULL}
};

static PyTypeObject SelectTimer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "looptrace._speedups.SelectTimer",
    .tp_doc = "SelectTimer(original, on_long_iteration, threshold_ns, ring_capacity=0): "
              "a timed selector.select.",
    .tp_basicsize = sizeof(SelectTimer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = SelectTimer_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(SelectTimer, vectorcall),
    .tp_traverse = (traverseproc)SelectTimer_traverse,
    .tp_clear = (inquiry)SelectTimer_clear,
    .tp_dealloc = (destructor)SelectTimer_dealloc,
    .tp_methods = SelectTimer_methods,
    .tp_members = SelectTimer_members,
    .tp_getset = SelectTimer_getset,
    .tp_as_buffer = &SelectTimer_as_buffer,
};

/* ---------------------------------------------------------------- module */

/* sys._current_frames() with the garbage collector held off. On CPython 3.11 it holds the
 * runtime's thread-list lock while it makes frame objects; a collection started by one of
 * those allocations may free a threading.local, whose destructor takes that lock again:
 * the process hangs, GIL held (CPython gh-106883). No Python code runs in between, so no
 * other thread sees the collector off. */
static PyObject *
speedups_current_frames(PyObject *module, PyObject *unused)
{
    PyObject *current_frames = PySys_GetObject("_current_frames");  /* borrowed */
    if (current_frames == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sys._current_frames is missing");
        return NULL;
    }
    Py_INCREF(current_frames);
    int was_enabled = PyGC_Disable();
    PyObject *frames = PyObject_CallNoArgs(current_frames);
    if (was_enabled) {
        PyGC_Enable();
    }
    Py_DECREF(current_frames);
    return frames;
}

static PyMethodDef module_methods[] = {
    {"now_ns", speedups_now_ns, METH_NOARGS, "The clock of time.perf_counter_ns()."},
    {"current_frames", speedups_current_frames, METH_NOARGS,
     "sys._current_frames() with the garbage collector held off (CPython gh-106883)."},
    {"native_status", ls_native_status, METH_NOARGS,
     "None when the native sampler can run here, else why it is off."},
    {"native_start", ls_native_start, METH_VARARGS,
     "native_start(poll_ns, arm_ns, interval_ns): start (or retune) the native sampler."},
    {"native_stop", ls_native_stop, METH_NOARGS, "Stop the native sampler thread."},
    {"native_take", ls_native_take, METH_O,
     "native_take(thread_ident): (samples, codes, dropped) sampled since the last take."},
    {"native_ticks", ls_native_ticks, METH_NOARGS, "How many times the native sampler looked."},
    {NULL}
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "looptrace._speedups",
    .m_doc = "C accelerator for looptrace's step and select hooks.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_callback = PyUnicode_InternFromString("_callback");
    str_self = PyUnicode_InternFromString("__self__");
    str_qualname = PyUnicode_InternFromString("__qualname__");
    str_done = PyUnicode_InternFromString("done");
    if (str_callback == NULL || str_self == NULL || str_qualname == NULL || str_done == NULL) {
        return NULL;
    }
    if (PyType_Ready(&StepSlot_Type) < 0 || PyType_Ready(&StepHook_Type) < 0
        || PyType_Ready(&FullStepHook_Type) < 0 || PyType_Ready(&SelectTimer_Type) < 0
        || PyType_Ready(&Reraise_Type) < 0 || PyType_Ready(&ReadyMarks_Type) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "StepSlot", (PyObject *)&StepSlot_Type) < 0
        || PyModule_AddObjectRef(m, "StepHook", (PyObject *)&StepHook_Type) < 0
        || PyModule_AddObjectRef(m, "FullStepHook", (PyObject *)&FullStepHook_Type) < 0
        || PyModule_AddObjectRef(m, "ReadyMarks", (PyObject *)&ReadyMarks_Type) < 0
        || PyModule_AddObjectRef(m, "SelectTimer", (PyObject *)&SelectTimer_Type) < 0
        || PyModule_AddIntConstant(m, "HIST_SUB_BITS", HIST_SUB_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
