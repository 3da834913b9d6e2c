// The one schema namespace of the extension: `hfkernels_ext`. Op files add their schemas with
// TORCH_LIBRARY_FRAGMENT(hfkernels_ext, m) and their kernels with TORCH_LIBRARY_IMPL per
// dispatch key (CPU in csrc/cpu, CUDA glue in csrc/cuda), so adding an op touches only its files.
#include <torch/library.h>
#include <Python.h>

TORCH_LIBRARY(hfkernels_ext, m) {}

// `import hfkernels._C` loads the library (and so registers the ops) and tells Python whether
// CUDA kernels were compiled in.
static struct PyModuleDef hfk_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&hfk_module);
  if (m == nullptr) return nullptr;
#ifdef HFK_WITH_CUDA
  PyModule_AddObject(m, "HAS_CUDA", Py_True);
  Py_INCREF(Py_True);
#else
  PyModule_AddObject(m, "HAS_CUDA", Py_False);
  Py_INCREF(Py_False);
#endif
  return m;
}
