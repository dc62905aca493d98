/* The native sampler's interface to the rest of the accelerator (see _sampler.c). */
#ifndef LOOPTRACE_SAMPLER_H
#define LOOPTRACE_SAMPLER_H

#include <Python.h>

/* Called with the GIL held on a thread whose StepSlot was just made: the sampler watches
 * that thread. The pointers are the slot's own fields; they stay valid until
 * ls_sampler_forget(owner) (called from the slot's dealloc). */
void ls_sampler_watch(void *owner, unsigned long ident, const unsigned long long *seq,
                      const long long *start_ns, PyObject *const *handle);
void ls_sampler_forget(void *owner);

PyObject *ls_native_status(PyObject *module, PyObject *unused);
PyObject *ls_native_start(PyObject *module, PyObject *args);
PyObject *ls_native_stop(PyObject *module, PyObject *unused);
PyObject *ls_native_take(PyObject *module, PyObject *arg);
PyObject *ls_native_ticks(PyObject *module, PyObject *unused);

#endif
