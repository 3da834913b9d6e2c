"""Reference ("torch") backend of the loss ops "ssim" and "gradient_max", in plain PyTorch.

SSIM is a ``torch.library`` custom op with its own backward:

- the five statistics (x, y, x^2, y^2, xy) are stacked and filtered in one separable pass;
- each 1-D pass is a banded matrix product in blocks (``T @ rows`` with a (blk, blk+k-1) band
  ``T``): BLAS does the multiply-adds, about 20x faster on CPU than ``conv1d``/``conv2d`` with
  one channel, and the zero padding of "same" (and of the transposed passes) is handled by
  cutting columns off ``T`` at the edges rather than by padding copies;
- only the taps :func:`kept_taps` keeps are applied (a window of 48 at sigma 1.5 keeps 17 taps in
  float32, 25 in float64), by every backend; the valid output range still follows the full window;
- the derivative maps of the pointwise SSIM formula w.r.t. the five statistics come from
  autograd (so its conventions at the clamps are torch's); backward scales them by the incoming
  gradient and runs the transposed filter on them.

What SSIM saves for backward, on every backend (torch, cpu/cuda, triton): the inputs ``x``, ``y``
(references, no copies) and the five derivative maps ``d ssim_map / d (E[x], E[y], E[x^2],
E[y^2], E[xy])`` at output resolution (5 x B x C x H' x W' values in float32, float64 for
float64 inputs; the layout is each backend's). The forward writes them only when an input
requires grad (:func:`hfkernels.ops._wiring.wants_grad`; an empty tensor otherwise) and a
backward that finds them empty recomputes them. Why: they are exactly what the backward filters,
and the forward has every statistic in registers when it forms the SSIM map, so keeping them
spares the backward a second window filter over five full-size maps (the dominant cost) for the
memory of five output-sized maps. Every backend makes the same trade, so switching backends
changes neither a training step's memory nor the work its backward repeats.

``gradient_max`` evaluates ``loss_reference.sobel_replicate`` on one stacked tensor without
autograd; its backward forms the per-pixel coefficients with autograd's conventions (sign(0) = 0,
ties of ``maximum`` split in halves) and applies the adjoint Sobel and replicate padding in place.
"""
from __future__ import annotations

import functools

import torch

from ..core import loss_reference as lref
from ..core.backends import implements
from ..core.filters import band, filter_rows
from ._contracts import (
    HALF,
    gradient_max_reference_vjp,
    kept_taps,
    saved_or_recomputed,
    ssim_from_stats,
    ssim_out_size,
    ssim_reference_vjp,
)
from ._host import geometry
from ._wiring import wants_grad, wire

# Block lengths of the banded products: measured best on a 2-core CPU for 480x640 images.
_BLOCK_ROWS = 64
_BLOCK_COLS = 32


# ----------------------------------------------------------------------------------------------
# Taps and separable filtering


@functools.lru_cache(maxsize=64)
def _band(taps: tuple[float, ...], block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(block, block + k - 1) matrix with row p holding the taps at columns p..p+k-1."""
    return band(torch.tensor(taps, dtype=torch.float64), block).to(dtype=dtype, device=device)


def filter1d(x: torch.Tensor, taps: tuple[float, ...], dim: int, offset: int, out_len: int) -> torch.Tensor:
    """``out[p] = sum_j taps[j] * x[p + offset + j]`` along ``dim`` (-1 or -2) of a 3-D tensor
    ``x`` (N, R, C), for p in 0..out_len-1, with x taken as zero outside its extent."""
    return (_filter_cols if dim == -1 else _filter_rows)(x.contiguous(), taps, offset, out_len)


def _filter_cols(x, taps, offset, out_len):
    # One mm per block of output columns, written in place: ``mm(out=column slice)`` is fast,
    # and edge blocks use only the band columns that land inside x (implicit zero padding).
    n, k = x.shape[-1], len(taps)
    block = max(1, min(_BLOCK_COLS, out_len))
    band = _band(taps, block, x.dtype, x.device)
    out = x.new_empty(x.shape[:-1] + (out_len,))
    x2, out2 = x.view(-1, n), out.view(-1, out_len)
    for p0 in range(0, out_len, block):
        m = min(block, out_len - p0)
        a = p0 + offset  # input index of band column 0
        ca, cb = max(0, -a), min(m + k - 1, n - a)
        if cb <= ca:
            out2[:, p0 : p0 + m].zero_()
        else:
            torch.mm(x2[:, a + ca : a + cb], band[:m, ca:cb].t(), out=out2[:, p0 : p0 + m])
    return out


def _filter_rows(x, taps, offset, out_len):
    # The metrics' row pass: all row blocks in one batched product over overlapping windows.
    return filter_rows(x, torch.tensor(taps, dtype=torch.float64), offset, out_len, _BLOCK_ROWS)


def filter2d(x: torch.Tensor, taps, lo: int, window_size: int, padding: str) -> torch.Tensor:
    """Separable Gaussian filtering of planes x (N, H, W) -> (N, H', W')."""
    _, h, w = x.shape
    ox, nx = geometry(w, window_size, lo, padding)
    oy, ny = geometry(h, window_size, lo, padding)
    return filter1d(filter1d(x, taps, -1, ox, nx), taps, -2, oy, ny)


def filter2d_transposed(g: torch.Tensor, taps, lo: int, window_size: int, padding: str, h: int, w: int) -> torch.Tensor:
    """Adjoint of :func:`filter2d`: (N, H', W') -> (N, H, W)."""
    k = len(taps)
    flipped = tuple(reversed(taps))
    ox, _ = geometry(w, window_size, lo, padding)
    oy, _ = geometry(h, window_size, lo, padding)
    g = filter1d(g, flipped, -2, -oy - (k - 1), h)
    return filter1d(g, flipped, -1, -ox - (k - 1), w)


# ----------------------------------------------------------------------------------------------
# SSIM


def _stats(x, y, window_size, sigma, padding):
    b, c, h, w = x.shape
    taps, lo = kept_taps(window_size, sigma, x.dtype)
    planes = torch.stack([x, y, x * x, y * y, x * y]).view(5 * b * c, h, w)
    st = filter2d(planes, taps, lo, window_size, padding)
    return st.view(5, b, c, st.shape[-2], st.shape[-1])


def _ssim_formula(c1: float, c2: float):
    return lambda st: ssim_from_stats(*st.unbind(0), c1, c2)


@torch.library.custom_op("hfkernels::ssim_torch", mutates_args=())
def ssim_torch(
    x: torch.Tensor, y: torch.Tensor, window_size: int, sigma: float, c1: float, c2: float, padding: str,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-image mean SSIM (B,), derivative maps (5, B, C, H', W') if ``save`` else empty)."""
    st = _stats(x, y, window_size, sigma, padding)
    if not save:
        return _ssim_formula(c1, c2)(st).flatten(1).mean(1), x.new_empty(0)
    smap, vjp = torch.func.vjp(_ssim_formula(c1, c2), st)
    (coefs,) = vjp(torch.ones_like(smap))
    return smap.flatten(1).mean(1), coefs


def _ssim_fake(x, y, window_size, sigma, c1, c2, padding, save):
    b, c, h, w = x.shape
    hh, ww = ssim_out_size(h, w, window_size, padding)
    return x.new_empty(b), x.new_empty((5, b, c, hh, ww) if save else (0,))


@torch.library.custom_op("hfkernels::ssim_torch_backward", mutates_args=())
def ssim_torch_backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, coefs: torch.Tensor,
    window_size: int, sigma: float, padding: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    _, b, c, hh, ww = coefs.shape
    h, w = x.shape[-2:]
    gst = coefs * (grad / (c * hh * ww)).reshape(1, b, 1, 1, 1)  # d loss / d map is grad[b] / (C H' W')
    taps, lo = kept_taps(window_size, sigma, x.dtype)
    g = filter2d_transposed(gst.reshape(5 * b * c, hh, ww), taps, lo, window_size, padding, h, w)
    g = g.view(5, b, c, h, w)
    gx = g[0] + 2 * x * g[2] + y * g[4]
    gy = g[1] + 2 * y * g[3] + x * g[4]
    return gx, gy


def _ssim_backward(grad, x, y, coefs, window_size, sigma, c1, c2, padding, save):
    coefs = saved_or_recomputed(coefs, x, lambda: ssim_torch(x, y, window_size, sigma, c1, c2, padding, True)[1])
    return ssim_torch_backward(grad, x, y, coefs, window_size, sigma, padding)


wire(
    ssim_torch, tensors=2, kernel=_ssim_backward, fake=_ssim_fake, backward_op=ssim_torch_backward,
    reference=ssim_reference_vjp,
)


@implements("ssim", "torch")
def ssim(x, y, window_size: int, sigma: float, c1: float, c2: float, padding: str) -> torch.Tensor:
    """Per-image mean SSIM (B,) of x, y (B,C,H,W); half precision is computed in float32."""
    dtype = x.dtype
    if dtype in HALF:
        x, y = x.float(), y.float()
    value, _ = ssim_torch(
        x.contiguous(), y.contiguous(), window_size, float(sigma), float(c1), float(c2), padding, wants_grad(x, y)
    )
    return value.to(dtype)


# ----------------------------------------------------------------------------------------------
# Gradient max: forward without autograd, hand-written backward (slicing and replicate padding
# under autograd cost ~1 s per 480x640 image on CPU in zero-filled slice gradients).


def _sign(v: torch.Tensor) -> torch.Tensor:
    return torch.sign(v)


def _sobel_adjoint(cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Adjoint of ``loss_reference.sobel_replicate`` applied to coefficient maps (N, C, H, W)."""
    *lead, h, w = cx.shape
    gp = cx.new_zeros(*lead, h + 2, w + 2)  # gradient w.r.t. the replicate-padded image
    for r, s in ((0, 1.0), (1, 2.0), (2, 1.0)):
        gp[..., r : r + h, 2 : 2 + w] += s * cx  # gx: +P[i+r-1, j+1]
        gp[..., r : r + h, 0:w] -= s * cx  # gx: -P[i+r-1, j-1]
        gp[..., 2 : 2 + h, r : r + w] += s * cy  # gy: +P[i+1, j+r-1]
        gp[..., 0:h, r : r + w] -= s * cy  # gy: -P[i-1, j+r-1]
    # adjoint of replicate padding: the border copies flow back to the border pixels
    gp[..., 1, :] += gp[..., 0, :]
    gp[..., h, :] += gp[..., h + 1, :]
    gp[..., :, 1] += gp[..., :, 0]
    gp[..., :, w] += gp[..., :, w + 1]
    return gp[..., 1 : h + 1, 1 : w + 1]


def _coefficients(fv, av, bv, gs):
    """d loss / d (Sobel f, Sobel a, Sobel b) of mean(| |f| - max(|a|, |b|) |), autograd's
    conventions: sign(0) = 0, maximum splits its gradient equally at ties."""
    fa, aa, ba = fv.abs(), av.abs(), bv.abs()
    sd = _sign(fa - torch.maximum(aa, ba))
    gm = -gs * sd
    half = gm / 2
    zero = torch.zeros_like(gm)
    ga = torch.where(aa > ba, gm, torch.where(aa == ba, half, zero))
    gb = torch.where(ba > aa, gm, torch.where(aa == ba, half, zero))
    return gs * sd * _sign(fv), ga * _sign(av), gb * _sign(bv)


@torch.library.custom_op("hfkernels::gradient_max_torch", mutates_args=())
def gradient_max_torch(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    gx, gy = lref.sobel_replicate(torch.stack([a, b, f]).view(3 * n, c, h, w))
    gx, gy = gx.view(3, -1).abs(), gy.view(3, -1).abs()
    lx = (gx[2] - torch.maximum(gx[0], gx[1])).abs().mean()
    ly = (gy[2] - torch.maximum(gy[0], gy[1])).abs().mean()
    return lx + ly


@torch.library.custom_op("hfkernels::gradient_max_torch_backward", mutates_args=())
def gradient_max_torch_backward(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c, h, w = f.shape
    gx, gy = lref.sobel_replicate(torch.stack([a, b, f]).view(3 * n, c, h, w))
    gx, gy = gx.view(3, n, c, h, w), gy.view(3, n, c, h, w)
    gs = grad / f.numel()
    cfx, cax, cbx = _coefficients(gx[2], gx[0], gx[1], gs)
    cfy, cay, cby = _coefficients(gy[2], gy[0], gy[1], gs)
    g = _sobel_adjoint(torch.stack([cax, cbx, cfx]), torch.stack([cay, cby, cfy]))
    return g[0].clone(), g[1].clone(), g[2].clone()  # own storage: custom ops may not alias


wire(
    gradient_max_torch, tensors=3, kernel=gradient_max_torch_backward, reference=gradient_max_reference_vjp,
    fake=lambda a, b, f: f.new_empty(()), backward_op=gradient_max_torch_backward,
)


@implements("gradient_max", "torch")
def gradient_max(a, b, f) -> torch.Tensor:
    """0-dim gradient-max loss of a, b, f (B,C,H,W); half precision is computed in float32."""
    dtype = f.dtype
    if dtype in HALF:
        a, b, f = a.float(), b.float(), f.float()
    return gradient_max_torch(a.contiguous(), b.contiguous(), f.contiguous()).to(dtype)
