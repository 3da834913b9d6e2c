// Torch glue of the CUDA backend of `hfkernels_ext::fuse` / `fuse_backward` (schemas in
// csrc/registry.cpp, argument checks in csrc/ext_checks.h). Built only where torch has CUDA (setup.py). It builds the same 1-D
// tables as the CPU backend (fuse_plan.h), keeps them on the device (once per device and shape,
// see device_tables), allocates one float32 workspace for the small pyramid levels and calls the
// framework-free launchers of fuse_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "../cpu/fuse_plan.h"
#include "../ext_checks.h"
#include "fuse_kernels.cuh"

namespace hfk {
namespace {

struct DevTables {
  at::Tensor idx, w;  // own the device memory that the DEll pointers in h and wd point into
  cuda::DDim h, wd;
};

// Copies the tables to `dev` with blocking host-to-device copies: the host vectors are freed on
// return, and a table that is complete before any launch may be read from every stream.
DevTables upload(const DimPlan& hp, const DimPlan& wp, int L, const at::Device& dev) {
  std::vector<int32_t> idx;
  std::vector<float> w;
  std::vector<std::pair<const Ell*, cuda::DEll*>> slots;
  DevTables t;
  auto collect = [&](const DimPlan& p, cuda::DDim& d) {
    for (int k = 0; k <= L; ++k) d.n[k] = static_cast<int>(p.n[k]);
    for (int k = 0; k < L; ++k) {
      slots.emplace_back(&p.dn[k], &d.dn[k]);
      slots.emplace_back(&p.up[k], &d.up[k]);
      slots.emplace_back(&p.upT[k], &d.upT[k]);
      slots.emplace_back(&p.dnT[k], &d.dnT[k]);
    }
    for (int k = 0; k <= L; ++k) {
      slots.emplace_back(&p.rmu[k], &d.rmu[k]);
      slots.emplace_back(&p.rmuT[k], &d.rmuT[k]);
    }
  };
  collect(hp, t.h);
  collect(wp, t.wd);
  std::vector<size_t> offsets;
  for (const auto& s : slots) {
    offsets.push_back(idx.size());
    for (int64_t v : s.first->idx) idx.push_back(static_cast<int32_t>(v));
    w.insert(w.end(), s.first->wf.begin(), s.first->wf.end());
  }
  const auto n = static_cast<int64_t>(idx.size());
  t.idx = at::from_blob(idx.data(), {n}, at::kInt).to(dev);
  t.w = at::from_blob(w.data(), {n}, at::kFloat).to(dev);
  const int32_t* di = t.idx.data_ptr<int32_t>();
  const float* dw = t.w.data_ptr<float>();
  for (size_t i = 0; i < slots.size(); ++i) {
    cuda::DEll& e = *slots[i].second;
    e.idx = di + offsets[i];
    e.w = dw + offsets[i];
    e.width = static_cast<int>(slots[i].first->width);
    e.n_out = static_cast<int>(slots[i].first->n_out);
  }
  return t;
}

// The tables of (device, H, W, levels), uploaded on first use and then reused, so that a forward
// or backward issues no host-to-device copy (no stream stall; capturable in a CUDA graph once
// the shape has run before capture, as any warm-up does). Entries are never freed: kernels of
// earlier calls may still read them on any stream. Past kMaxCached shapes per process a new
// shape gets fresh tables per call, freed on the calling stream after its kernels (stream order
// makes that safe), so memory stays bounded when shapes keep changing.
std::shared_ptr<const DevTables> device_tables(int64_t H, int64_t W, int L, const at::Device& dev) {
  constexpr size_t kMaxCached = 256;
  using Key = std::tuple<int, int64_t, int64_t, int>;
  static std::mutex mutex;
  // Leaked on purpose: destroying device tensors at process exit may run after CUDA shut down.
  static auto* cache = new std::map<Key, std::shared_ptr<const DevTables>>();
  const Key key{dev.index(), H, W, L};
  {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
              "hfkernels_ext::fuse (CUDA): the first call for shape (H=", H, ", W=", W, ", levels=", L,
              ") on this device uploads its tables and cannot run inside CUDA graph capture; "
              "run it once before capturing");
  const auto hpl = cached_dim_plan(H, L), wpl = cached_dim_plan(W, L);
  auto tables = std::make_shared<const DevTables>(upload(*hpl, *wpl, L, dev));
  const std::lock_guard<std::mutex> lock(mutex);
  if (cache->size() < kMaxCached) cache->emplace(key, tables);  // a racing twin keeps the first
  return tables;
}

template <typename F>
void dispatch(at::ScalarType st, const F& f) {
  switch (st) {
    case at::kFloat: f(float{}, float{}); break;
    case at::kHalf: f(at::Half{}, __half{}); break;
    case at::kBFloat16: f(at::BFloat16{}, __nv_bfloat16{}); break;
    default: TORCH_CHECK(false, "hfkernels_ext::fuse (CUDA): dtype ", st, " is not supported (float32, float16, bfloat16)");
  }
}

// What a forward or backward launch needs: the checked contiguous inputs, the device tables of
// their shape, the launch shape and a float32 workspace. The caller holds the device guard.
struct Launch {
  hfk_ext::FuseInputs in;
  std::shared_ptr<const DevTables> tables;
  cuda::FuseShape s;
  at::Tensor ws;
};

Launch prepare(const at::Tensor& vis, const at::Tensor& ir, const at::Tensor& mu, int64_t levels,
               const at::Tensor& grad) {
  Launch l{hfk_ext::fuse_inputs(vis, ir, mu, levels, cuda::kMaxLevels, grad), nullptr, {}, {}};
  TORCH_CHECK(vis.numel() < (int64_t(1) << 31), "hfkernels_ext::fuse (CUDA): tensors above 2^31 elements");
  const int L = static_cast<int>(levels);
  l.tables = device_tables(vis.size(2), vis.size(3), L, vis.device());
  l.s.B = static_cast<int>(vis.size(0));
  l.s.C = static_cast<int>(vis.size(1));
  l.s.Cir = static_cast<int>(ir.size(1));
  l.s.L = L;
  const size_t n = cuda::fuse_workspace_floats(l.s, l.tables->h, l.tables->wd, grad.defined());
  l.ws = at::empty({static_cast<int64_t>(n)}, vis.options().dtype(at::kFloat));
  return l;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "hfkernels_ext::", op, " (CUDA): ", cudaGetErrorString(err));
}

at::Tensor fuse_cuda(const at::Tensor& vis, const at::Tensor& ir, const at::Tensor& mu, int64_t levels) {
  const c10::cuda::CUDAGuard guard(vis.device());
  const Launch l = prepare(vis, ir, mu, levels, at::Tensor());
  auto out = at::empty_like(l.in.vis);
  dispatch(vis.scalar_type(), [&](auto at_t, auto cu_t) {
    using AT = decltype(at_t);
    using CT = decltype(cu_t);
    auto in = [](const at::Tensor& x) { return reinterpret_cast<const CT*>(x.data_ptr<AT>()); };
    check_launch(cuda::fuse_forward<CT>(l.s, l.tables->h, l.tables->wd, in(l.in.vis), in(l.in.ir), in(l.in.mu),
                                        reinterpret_cast<CT*>(out.data_ptr<AT>()), l.ws.data_ptr<float>(),
                                        c10::cuda::getCurrentCUDAStream().stream()),
                 "fuse");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fuse_backward_cuda(const at::Tensor& grad, const at::Tensor& vis,
                                                                  const at::Tensor& ir, const at::Tensor& mu,
                                                                  int64_t levels) {
  const c10::cuda::CUDAGuard guard(vis.device());
  const Launch l = prepare(vis, ir, mu, levels, grad);
  auto gvis = at::empty_like(l.in.vis), gir = at::empty_like(l.in.ir), gmu = at::empty_like(l.in.mu);
  dispatch(vis.scalar_type(), [&](auto at_t, auto cu_t) {
    using AT = decltype(at_t);
    using CT = decltype(cu_t);
    auto in = [](const at::Tensor& x) { return reinterpret_cast<const CT*>(x.data_ptr<AT>()); };
    auto outp = [](at::Tensor& x) { return reinterpret_cast<CT*>(x.data_ptr<AT>()); };
    check_launch(cuda::fuse_backward<CT>(l.s, l.tables->h, l.tables->wd, in(l.in.grad), in(l.in.vis), in(l.in.ir),
                                         in(l.in.mu), outp(gvis), outp(gir), outp(gmu), l.ws.data_ptr<float>(),
                                         c10::cuda::getCurrentCUDAStream().stream()),
                 "fuse_backward");
  });
  return {gvis, gir, gmu};
}

}  // namespace
}  // namespace hfk

TORCH_LIBRARY_IMPL(hfkernels_ext, CUDA, m) {
  m.impl("fuse", &hfk::fuse_cuda);
  m.impl("fuse_backward", &hfk::fuse_backward_cuda);
}
