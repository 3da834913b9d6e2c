// Torch glue of the CUDA backend of `hfkernels_ext::fuse` / `fuse_backward` (schemas in
// csrc/cpu/fuse_cpu.cpp). Built only where torch has CUDA (setup.py). It builds the same 1-D
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

void check_inputs(const at::Tensor& vis, const at::Tensor& ir, const at::Tensor& mu, int64_t levels) {
  TORCH_CHECK(vis.dim() == 4 && ir.dim() == 4 && mu.dim() == 4, "hfkernels_ext::fuse: vis, ir, mu must be 4-D");
  TORCH_CHECK(levels >= 1 && levels <= cuda::kMaxLevels, "hfkernels_ext::fuse (CUDA): levels must be in 1..",
              cuda::kMaxLevels, ", got ", levels);
  TORCH_CHECK(vis.numel() > 0, "hfkernels_ext::fuse: vis must not be empty");
  TORCH_CHECK(ir.scalar_type() == vis.scalar_type() && mu.scalar_type() == vis.scalar_type(),
              "hfkernels_ext::fuse: vis, ir, mu must share one dtype");
  TORCH_CHECK(ir.device() == vis.device() && mu.device() == vis.device(),
              "hfkernels_ext::fuse: vis, ir, mu must be on one device");
  const auto B = vis.size(0), C = vis.size(1), H = vis.size(2), W = vis.size(3);
  TORCH_CHECK(ir.size(0) == B && (ir.size(1) == 1 || ir.size(1) == C) && ir.size(2) == H && ir.size(3) == W,
              "hfkernels_ext::fuse: ir must be (B, 1|C, H, W) like vis ", vis.sizes(), ", got ", ir.sizes());
  TORCH_CHECK(mu.size(0) == B && mu.size(1) == 1 && mu.size(2) == H && mu.size(3) == W,
              "hfkernels_ext::fuse: mu must be (B, 1, H, W), got ", mu.sizes());
  TORCH_CHECK(vis.numel() < (int64_t(1) << 31), "hfkernels_ext::fuse (CUDA): tensors above 2^31 elements");
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

at::Tensor fuse_cuda(const at::Tensor& vis_, const at::Tensor& ir_, const at::Tensor& mu_, int64_t levels) {
  check_inputs(vis_, ir_, mu_, levels);
  const c10::cuda::CUDAGuard guard(vis_.device());
  const auto vis = vis_.contiguous(), ir = ir_.contiguous(), mu = mu_.contiguous();
  const int L = static_cast<int>(levels);
  const auto tables = device_tables(vis.size(2), vis.size(3), L, vis.device());
  const DevTables& t = *tables;
  cuda::FuseShape s;
  s.B = static_cast<int>(vis.size(0));
  s.C = static_cast<int>(vis.size(1));
  s.Cir = static_cast<int>(ir.size(1));
  s.L = L;
  auto ws = at::empty({static_cast<int64_t>(cuda::fuse_workspace_floats(s, t.h, t.wd, false))},
                      vis.options().dtype(at::kFloat));
  auto out = at::empty_like(vis);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(vis.scalar_type(), [&](auto at_t, auto cu_t) {
    using AT = decltype(at_t);
    using CT = decltype(cu_t);
    const cudaError_t err = cuda::fuse_forward<CT>(
        s, t.h, t.wd, reinterpret_cast<const CT*>(vis.data_ptr<AT>()), reinterpret_cast<const CT*>(ir.data_ptr<AT>()),
        reinterpret_cast<const CT*>(mu.data_ptr<AT>()), reinterpret_cast<CT*>(out.data_ptr<AT>()),
        ws.data_ptr<float>(), stream);
    TORCH_CHECK(err == cudaSuccess, "hfkernels_ext::fuse (CUDA): ", cudaGetErrorString(err));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fuse_backward_cuda(const at::Tensor& grad_, const at::Tensor& vis_,
                                                                  const at::Tensor& ir_, const at::Tensor& mu_,
                                                                  int64_t levels) {
  check_inputs(vis_, ir_, mu_, levels);
  TORCH_CHECK(grad_.sizes() == vis_.sizes(), "hfkernels_ext::fuse_backward: grad must have vis's shape");
  const c10::cuda::CUDAGuard guard(vis_.device());
  const auto vis = vis_.contiguous(), ir = ir_.contiguous(), mu = mu_.contiguous();
  const auto grad = grad_.to(vis.scalar_type()).contiguous();
  const int L = static_cast<int>(levels);
  const auto tables = device_tables(vis.size(2), vis.size(3), L, vis.device());
  const DevTables& t = *tables;
  cuda::FuseShape s;
  s.B = static_cast<int>(vis.size(0));
  s.C = static_cast<int>(vis.size(1));
  s.Cir = static_cast<int>(ir.size(1));
  s.L = L;
  auto ws = at::empty({static_cast<int64_t>(cuda::fuse_workspace_floats(s, t.h, t.wd, true))},
                      vis.options().dtype(at::kFloat));
  auto gvis = at::empty_like(vis), gir = at::empty_like(ir), gmu = at::empty_like(mu);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch(vis.scalar_type(), [&](auto at_t, auto cu_t) {
    using AT = decltype(at_t);
    using CT = decltype(cu_t);
    auto in = [](const at::Tensor& x) { return reinterpret_cast<const CT*>(x.data_ptr<AT>()); };
    auto outp = [](at::Tensor& x) { return reinterpret_cast<CT*>(x.data_ptr<AT>()); };
    const cudaError_t err = cuda::fuse_backward<CT>(s, t.h, t.wd, in(grad), in(vis), in(ir), in(mu), outp(gvis),
                                                    outp(gir), outp(gmu), ws.data_ptr<float>(), stream);
    TORCH_CHECK(err == cudaSuccess, "hfkernels_ext::fuse_backward (CUDA): ", cudaGetErrorString(err));
  });
  return {gvis, gir, gmu};
}

}  // namespace
}  // namespace hfk

TORCH_LIBRARY_IMPL(hfkernels_ext, CUDA, m) {
  m.impl("fuse", &hfk::fuse_cuda);
  m.impl("fuse_backward", &hfk::fuse_backward_cuda);
}
