"""Separable Gaussian filtering by banded matrix products, fast on CPUs and GPUs alike: the one
implementation in the package, used by the metrics (valid windows, float64, subsampling) and by
the "torch" backend of the SSIM loss (:func:`filter_rows` and :func:`band`, for its zero-padded
and transposed passes).

The metrics filter many full-size maps with small Gaussian windows (VIF: 17/9/5/3 taps, SSIM: 11),
partly in float64 where local variances ``E[x^2] - E[x]^2`` would otherwise cancel catastrophically.
Depthwise ``conv2d`` is slow on CPUs (and very slow in float64), so each 1-D pass is a matrix
product instead, along the *rows* of the data (the strided dimension), which needs no copy:

- all maps are seen as one tall stack of rows (map m's row i is global row ``m * pitch + i``);
  the output rows are cut into blocks of ``P``; block b reads ``K = (P - 1) * stride + n``
  consecutive input rows, an ``as_strided`` view (blocks overlap, nothing is copied), and one
  banded (P, K) matrix maps them to its P output rows: a single batched GEMM per pass.
  Blocks that straddle two maps give rows nobody reads (about (n - 1) / H of the work).
- the second pass transposes the result once (the only copy) and runs the same row pass.
- ``stride`` > 1 computes only every stride-th output row/column (VIF's filter-then-subsample),
  so the skipped outputs cost nothing.

The result is a view in the input's logical orientation, (..., Ho, Wo), stored transposed; every
consumer here is elementwise or a reduction, for which the memory order does not matter.
:func:`filter_valid_sums` goes one step further for consumers that only reduce over the image
(VIF, SSIM): the first pass writes its blocks transposed, so the second pass needs no copy at all,
and the result comes in a blocked layout. This work is memory-bound: the copy was a third of it.
"""
from __future__ import annotations

import math

import torch

#: output rows per GEMM block: small blocks waste fewer multiply-adds on the band's zeros
_BLOCK = 16


def matlab_gaussian(size: int, sigma: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """1-D taps ``t`` such that ``outer(t, t)`` is MATLAB's ``fspecial('gaussian', size, sigma)``.

    fspecial zeroes the 2-D values below ``eps * max`` before normalising; for the windows the
    metrics use (size <= 17, sigma = size / 5 or 1.5) the smallest 2-D value is >= exp(-6) of the
    largest, so nothing is zeroed and the normalised 2-D window is exactly separable.
    """
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    t = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    if (t.min() / t.max()) ** 2 < torch.finfo(torch.float64).eps:  # pragma: no cover - guard
        raise ValueError(f"window {size}/{sigma} is not separable under fspecial's thresholding")
    return (t / t.sum()).to(dtype=dtype, device=device)


def band(taps: torch.Tensor, block: int, stride: int = 1) -> torch.Tensor:
    """(block, (block - 1) * stride + n) matrix B with B[i, i * stride + k] = taps[k], in taps'
    dtype and device: ``B @ rows`` filters ``block`` consecutive outputs at once."""
    n = taps.numel()
    b = torch.zeros(block, (block - 1) * stride + n, dtype=taps.dtype, device=taps.device)
    i = torch.arange(block, device=taps.device)
    for k in range(n):  # n <= 17 small scatters, independent of the image size
        b[i, i * stride + k] = taps[k]
    return b


def _row_pass(x: torch.Tensor, taps: torch.Tensor, stride: int, block: int = _BLOCK, *, blocks_out: bool = False) -> torch.Tensor:
    """Valid correlation along dim 1 of x (M, R, C), keeping every stride-th output row.

    x must have strides (pitch * sR, sR, 1) with pitch % stride == 0 (rows evenly spaced across
    maps). Returns a (M, (R - n) // stride + 1, C) view of a fresh buffer; with ``blocks_out``
    the raw (nb, C, block) buffer instead, block b holding global output rows b*block .. + block-1
    transposed (the second pass then needs no transposing copy).
    """
    m, r, c = x.shape
    s_map, s_row, s_col = x.stride()
    n = taps.numel()
    ro = (r - n) // stride + 1
    pitch = s_map // s_row if m > 1 else r + (-r) % stride
    out_pitch = pitch // stride  # output rows per map in the global numbering
    total = (m - 1) * out_pitch + ro  # global output rows that must be computed
    p = min(block, total)
    k = (p - 1) * stride + n
    nb = math.ceil(total / p)
    base = x.storage_offset()
    in_rows = (m - 1) * pitch + r  # global input rows that exist
    # blocks whose K input rows all exist; the last one or two may run past the end
    nfull = min(nb, (in_rows - k) // (p * stride) + 1) if in_rows >= k else 0
    bmat = band(taps, p, stride)
    out = x.new_empty(nb * p, c)

    def gemm(v, o):  # o (blocks * p, c) rows of out
        if blocks_out:
            torch.matmul(v.transpose(1, 2), bmat.t(), out=o.view(v.shape[0], c, p))
        else:
            torch.matmul(bmat, v, out=o.view(v.shape[0], p, c))

    if nfull:
        gemm(x.as_strided((nfull, k, c), (p * stride * s_row, s_row, 1), base), out[: nfull * p])
    if nfull < nb:  # the tail: copy its few remaining rows into a zero-padded block
        r0 = nfull * p * stride
        need = (nb - nfull - 1) * p * stride + k
        tail = x.new_zeros(need, c)
        have = min(in_rows - r0, need)
        tail[:have] = x.as_strided((have, c), (s_row, 1), base + r0 * s_row)
        gemm(tail.as_strided((nb - nfull, k, c), (p * stride * c, c, 1)), out[nfull * p :])
    if blocks_out:
        return out.view(nb, c, p)
    return out.as_strided((m, ro, c), (out_pitch * c, c, 1))


def _rows_ready(x: torch.Tensor, stride: int) -> torch.Tensor:
    """x (M, R, C) with unit column stride and map starts on row boundaries that are multiples
    of ``stride`` (copied into such a buffer if needed)."""
    m, r, c = x.shape
    s_map, s_row, s_col = x.stride()
    if s_col == 1 and (m == 1 or (s_row >= c and s_map % (s_row * stride) == 0)):
        return x
    # zeros, not empty: the row pass multiplies padding rows by zero band entries, and an
    # uninitialised NaN/inf there would turn 0 * x into NaN in a valid output
    buf = x.new_zeros(m, r + (-r) % stride, c)
    buf[:, :r] = x
    return buf[:, :r]


def filter_rows(x: torch.Tensor, taps: torch.Tensor, offset: int, out_len: int, block: int = _BLOCK) -> torch.Tensor:
    """``out[:, p] = sum_j taps[j] * x[:, p + offset + j]`` for p in 0..out_len-1, along dim 1 of
    x (M, R, C) with unit column stride, x taken as zero outside its R rows (so ``offset`` may be
    negative and the window may run past the end: "same" padding and transposed passes).

    Returns (M, out_len, C), a view of a fresh buffer (possibly not contiguous), in x's dtype
    (``taps`` is cast to it). Rows already in range are read in place; only a window that runs
    past the rows costs a zero-padded copy.
    """
    m, r, c = x.shape
    n = taps.numel()
    need = out_len + n - 1  # input rows offset .. offset + need - 1
    lo, hi = max(offset, 0), min(offset + need, r)
    if hi <= lo:
        return x.new_zeros(m, out_len, c)
    xs = x[:, lo:hi]
    if lo - offset or offset + need - hi:
        xs = torch.nn.functional.pad(xs, (0, 0, lo - offset, offset + need - hi))
    return _row_pass(_rows_ready(xs, 1), taps.to(dtype=x.dtype, device=x.device), 1, block)


def filter_valid(x: torch.Tensor, taps: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """2-D 'valid' correlation of (..., H, W) with ``outer(taps, taps)``, subsampled by ``stride``.

    Returns (..., (H - n) // stride + 1, (W - n) // stride + 1), i.e.
    ``conv2d_valid(x, outer(taps, taps))[..., ::stride, ::stride]``, computed in ``x``'s dtype
    (``taps`` is cast to it); a view, possibly not contiguous (see the module docstring).
    Requires H, W >= n.
    """
    n = taps.numel()
    h, w = x.shape[-2:]
    if w < n or h < n:
        raise ValueError(f"image of size {tuple(x.shape[-2:])} is smaller than the {n}x{n} window")
    taps = taps.to(dtype=x.dtype, device=x.device)
    lead = x.shape[:-2]
    x3 = x.reshape(-1, h, w)
    # filter along whichever image axis is the strided one first: no copy needed
    transposed = x3.stride(-1) != 1 and x3.stride(-2) == 1
    if transposed:
        x3 = x3.transpose(1, 2)
    y = _row_pass(_rows_ready(x3, stride), taps, stride)  # (M, R', C)
    yt = _rows_ready(y.transpose(1, 2), stride)  # the one copy: (M, C, R')
    z = _row_pass(yt, taps, stride)  # (M, C', R')
    if not transposed:
        z = z.transpose(1, 2)
    return z.reshape(*lead, *z.shape[-2:])


def _blocks_for(h: int, n: int) -> int:
    """A block size P (8..24) with P | H and P | H - n + 1 (0 if none): then every map's output
    rows fill whole blocks of the global row numbering, none shared with the next map."""
    for p in range(24, 7, -1):
        if h % p == 0 and (h - n + 1) % p == 0:
            return p
    return 0


def filter_valid_sums(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``filter_valid(x, taps)`` (stride 1) in a *blocked* layout, for consumers that only combine
    maps elementwise and reduce over all pixels: (..., nb, Wo, P) where element (j, c, i) is output
    pixel (j * P + i, c); sum over the last three dims for a sum over the image. Saves the
    transposing copy of :func:`filter_valid` (this is memory-bound work). Falls back to
    ``filter_valid(x, taps)[..., None, :, :]`` where no block size fits the height.
    """
    n = taps.numel()
    h, w = x.shape[-2:]
    p = _blocks_for(h, n) if h >= n and w >= n else 0
    lead = x.shape[:-2]
    x3 = x.reshape(-1, h, w)
    if not p or x3.stride(-1) != 1 or (x3.shape[0] > 1 and x3.stride(0) != h * x3.stride(1)):
        return filter_valid(x, taps)[..., None, :, :]
    taps = taps.to(dtype=x.dtype, device=x.device)
    y = _row_pass(x3, taps, 1, p, blocks_out=True)  # (nb1, W, P), nb1 = M * H / P (+ tail)
    z = _row_pass(y, taps, 1)  # (nb1, Wo, P): rows of each block filtered along W
    nbm, nbv = h // p, (h - n + 1) // p
    m = x3.shape[0]
    s0, s1, s2 = z.stride()  # map j of the pass-2 numbering = block j of pass 1
    z = z.as_strided((m, nbv, *z.shape[1:]), (nbm * s0, s0, s1, s2), z.storage_offset())
    return z.reshape(*lead, *z.shape[1:])
