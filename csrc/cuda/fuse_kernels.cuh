// Framework-free CUDA launchers of the fused pyramid fusion (CUDA headers only, so CI can compile
// the device code with nvcc on machines whose torch has no CUDA headers). The torch glue that
// builds the tables and registers the CUDA dispatch key is fuse_cuda.cpp.
//
// The algorithm mirrors csrc/cpu/fuse_cpu.cpp pass for pass (see its header comment for the math):
// the same 1-D banded tables (csrc/cpu/fuse_plan.h), uploaded as int32 indices and float weights,
// applied separably; intermediates (the small levels) are float32; inputs/outputs are
// float, __half or __nv_bfloat16 with float accumulation.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace hfk {
namespace cuda {

constexpr int kMaxLevels = 12;

// One 1-D banded operator on the device: output i reads idx[i*width + s] with weight w[...].
struct DEll {
  const int* idx = nullptr;
  const float* w = nullptr;
  int width = 1;
  int n_out = 0;
};

// Tables of one dimension (height or width) for levels 0..L (see fuse_plan.h for their meaning).
struct DDim {
  int n[kMaxLevels + 1];
  DEll dn[kMaxLevels], up[kMaxLevels], upT[kMaxLevels], dnT[kMaxLevels];
  DEll rmu[kMaxLevels + 1], rmuT[kMaxLevels + 1];
};

struct FuseShape {
  int B = 0, C = 0, Cir = 0, L = 0;
};

// Number of floats of device workspace the forward (backward = false) or backward needs.
size_t fuse_workspace_floats(const FuseShape& s, const DDim& h, const DDim& w, bool backward);

// out = fuse(vis, ir, mu, L); all contiguous NCHW on the device; T in {float, __half, __nv_bfloat16}.
template <typename T>
cudaError_t fuse_forward(const FuseShape& s, const DDim& h, const DDim& w, const T* vis, const T* ir, const T* mu,
                         T* out, float* workspace, cudaStream_t stream);

// (grad_vis, grad_ir, grad_mu) of fuse for the output gradient `grad`.
template <typename T>
cudaError_t fuse_backward(const FuseShape& s, const DDim& h, const DDim& w, const T* grad, const T* vis,
                          const T* ir, const T* mu, T* grad_vis, T* grad_ir, T* grad_mu, float* workspace,
                          cudaStream_t stream);

}  // namespace cuda
}  // namespace hfk
