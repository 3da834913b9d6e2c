// The schemas of every `hfkernels_ext` op, in one place; the kernels register per dispatch key
// with TORCH_LIBRARY_IMPL next to their code (CPU in csrc/cpu, CUDA glue in csrc/cuda), and their
// argument checks are shared through csrc/ext_checks.h.
//
//   fuse(vis, ir, mu, levels) -> out                      (fuse_cpu.cpp has the math)
//   fuse_backward(grad, vis, ir, mu, levels) -> (grad_vis, grad_ir, grad_mu)
//   ssim_forward(x, y, taps, lo, window_size, c1, c2, same, save_coefs)
//       -> (ssim (B,), coefs (B,C,5,Ho,Wo) or an empty tensor)
//   ssim_backward(grad (B,), x, y, coefs, taps, lo, window_size, same) -> (grad_x, grad_y)
//   gradient_max_forward(a, b, f) -> 0-dim
//   gradient_max_backward(grad (0-dim), a, b, f) -> (grad_a, grad_b, grad_f)
//
// SSIM's window is given by its kept taps: `taps` are the normalised Gaussian taps of a window of
// `window_size` from index `lo` on, chosen once in Python (hfkernels.ops.loss_torch.kept_taps) so
// that every backend drops the same ones.
#include <torch/library.h>
#include <Python.h>

TORCH_LIBRARY(hfkernels_ext, m) {
  m.def("fuse(Tensor vis, Tensor ir, Tensor mu, int levels) -> Tensor");
  m.def("fuse_backward(Tensor grad, Tensor vis, Tensor ir, Tensor mu, int levels) -> (Tensor, Tensor, Tensor)");
  m.def(
      "ssim_forward(Tensor x, Tensor y, float[] taps, int lo, int window_size, float c1, float c2, bool same, "
      "bool save_coefs) -> (Tensor, Tensor)");
  m.def(
      "ssim_backward(Tensor grad, Tensor x, Tensor y, Tensor coefs, float[] taps, int lo, int window_size, "
      "bool same) -> (Tensor, Tensor)");
  m.def("gradient_max_forward(Tensor a, Tensor b, Tensor f) -> Tensor");
  m.def("gradient_max_backward(Tensor grad, Tensor a, Tensor b, Tensor f) -> (Tensor, Tensor, Tensor)");
}

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
