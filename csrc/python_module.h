// The extension modules (metaif._C, the tests' metaif._emulate) are empty Python modules whose
// import runs the static initialisers that register their ops (STABLE_TORCH_LIBRARY: no pybind11,
// no Python-side bindings), built on the Python limited API (Py_LIMITED_API, set by CMakeLists.txt:
// one abi3 binary for every CPython >= 3.10). The import fails with a clear ImportError when the
// BLAS routines the CPU kernels call are missing.
#pragma once

#include <Python.h>

#include "blas.h"

namespace metaif {

inline PyObject* create_module(PyModuleDef* def) {
  if (const char* error = blas::routines().error) {
    PyErr_SetString(PyExc_ImportError, error);
    return nullptr;
  }
  return PyModule_Create(def);
}

}  // namespace metaif
