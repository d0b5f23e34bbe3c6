/* What attnlab's compiled kernels (_thin.c, _step.c) share: whether the CPU can run their AVX2
 * and FMA code, checked at run time, and the module function that says so. */
#ifndef ATTNLAB_AVX2_H
#define ATTNLAB_AVX2_H

#include <Python.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ATTNLAB_X86 1
#endif

static int cpu_supported(void) {
#ifdef ATTNLAB_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static PyObject *supported(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(cpu_supported());
}

#endif /* ATTNLAB_AVX2_H */
