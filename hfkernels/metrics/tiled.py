"""Every metric of a large image in bands of rows, so memory stays bounded.

The whole-image path (:func:`hfkernels.metrics.evaluate` below :data:`TILE_PIXELS`) holds about
a dozen float64 maps of the image at once (~390 bytes a pixel), too much for tens of megapixels.
Here the images are cut into bands of whole rows; each band is prepared and measured alone, and
only what adds up over bands is kept:

- EN, MI: the (joint) histograms' counts (exact integers);
- SD: count, mean and count * variance of gray F, merged band by band (Chan et al.);
- MSE, PSNR, CC, SCD: sums of squared differences and of the moments A, B, F, AA, ..., AB;
- Qabf, Nabf, SF, AG: sums of per-pixel terms; Sobel and forward differences reach one row,
  so each band is read with one row of context above and below;
- SSIM: sums of its map over the windows whose top row is in the band (context: 10 rows below);
- VIF: scale 1 likewise (17-row window: 16 rows below). The next scale's image is the previous
  one filtered and subsampled by 2; bands start on even rows, so each band yields its own rows of
  it, and these small images (1/4, 1/16, ... of the pixels) are kept and measured band by band
  in turn.

Every per-pixel term is computed by the same operations as on the whole image, so the values
agree to float64 rounding of the sums (tests/test_metrics_tiled.py).
"""
from __future__ import annotations

import torch

from ..core.filters import filter_valid
from . import basic, gradient, histogram, structural
from . import vif as _vif
from ._prep import MetricUnavailable, Prepared

#: images with more pixels than this (over the batch) are measured in bands; tests lower it
TILE_PIXELS = 1 << 21
#: about how many pixels (over the batch) one band covers; its peak memory is ~500 bytes a pixel
BAND_PIXELS = 1 << 20
#: rows of context a band needs below it: VIF's 17-row window at full resolution (SSIM's 11 rows
#: and the one row of Sobel and forward differences are within it)
REACH = 16
#: bands are a multiple of this many rows, so they start on even rows, as VIF's subsampling
#: needs for a band to yield whole rows of the next scale
ALIGN = 8


def band_rows(batch: int, width: int) -> int:
    """Rows per band for a batch of images ``width`` wide (a multiple of :data:`ALIGN`)."""
    return max(ALIGN, BAND_PIXELS // (batch * width) // ALIGN * ALIGN)


def should_tile(batch: int, h: int, w: int) -> bool:
    """Whether a (batch, *, h, w) batch is measured in bands (more than one band needed)."""
    return batch * h * w > TILE_PIXELS and h > band_rows(batch, w)


#: peak memory of the whole-image path per pixel, and of the banded one per pixel of a band with
#: its context and per pixel of the images (VIF's smaller scales), beyond the inputs (measured,
#: see the README)
WHOLE_BYTES_PER_PIXEL, BAND_BYTES_PER_PIXEL, BANDED_BYTES_PER_PIXEL = 400, 500, 4


def needed_bytes(batch: int, h: int, w: int) -> int:
    """About how much memory :func:`hfkernels.metrics.evaluate` needs for all metrics of a
    (batch, C, h, w) batch, beyond the inputs themselves."""
    if not should_tile(batch, h, w):
        return WHOLE_BYTES_PER_PIXEL * batch * h * w
    band = batch * w * min(h, band_rows(batch, w) + REACH + 1)
    return BAND_BYTES_PER_PIXEL * band + BANDED_BYTES_PER_PIXEL * batch * h * w


def _bands(h: int, rows: int):
    return ((r0, min(r0 + rows, h)) for r0 in range(0, h, rows))


class _Sums(dict):
    """Running totals over bands, one per key, starting with the first band's value."""

    def add(self, key, value):
        self[key] = self[key] + value if key in self else value


def _vif_band(x, scale, r0, rows, maps, sums, nxt):
    """One band of VIF at ``scale``: x (B, 3, h, W) float64 holds rows r0 .. r0 + h - 1 of that
    scale's image, the band's ``rows`` rows and the context below them. Adds the band's terms to
    ``sums`` and writes its rows of the next scale's image into ``nxt`` (None at scale 4)."""
    if x.shape[-2] >= _vif.window_size(scale):  # else no window starts in this band
        num, den = _vif.scale_terms(x, scale, maps)
        sums.add("VIF", torch.stack([num, den]))
    if nxt is not None:
        n2 = _vif.window_size(scale + 1)
        src = x[..., : min(rows + n2 - 1, x.shape[-2]), :]
        if src.shape[-2] >= n2:
            # rows r0 / 2 .. of the next scale (r0 is even); _vif.downsample may transpose
            d = filter_valid(src, _vif.window(scale + 1, src), stride=2)
            nxt[..., r0 // 2 : r0 // 2 + d.shape[-2], :] = d


def _next_scale(b: int, h: int, w: int, scale: int, device) -> torch.Tensor | None:
    """An empty float64 buffer for the (b, 3, ., .) images of scale + 1 when scale's are h x w;
    None after the last scale."""
    if scale == _vif.SCALES[-1]:
        return None
    n = _vif.window_size(scale + 1)
    return torch.empty(b, 3, (h - n) // 2 + 1, (w - n) // 2 + 1, dtype=torch.float64, device=device)


def _vif_small_scales(x: torch.Tensor, sums: _Sums) -> None:
    """VIF's scales 2..4, band by band; x (B, 3, H2, W2) float64 is scale 2's image."""
    for scale in _vif.SCALES[1:]:
        h, w = x.shape[-2:]
        nxt = _next_scale(x.shape[0], h, w, scale, x.device)
        reach = _vif.window_size(scale) - 1
        rows = band_rows(x.shape[0], w)
        for r0, r1 in _bands(h, rows):
            _vif_band(x[..., r0 : min(r1 + reach, h), :], scale, r0, r1 - r0, None, sums, nxt)
        x = nxt


def _measure_band(p: Prepared, top: int, rows: int, h: int, r0: int, want, sums: _Sums, x2) -> None:
    """Add one band's sums. ``p``: the prepared rows r0 - top .. of the images, holding the
    band's ``rows`` rows from ``top`` on, one row of context above (unless r0 = 0) and up to
    :data:`REACH` rows below; h is the images' height."""
    r1 = r0 + rows
    core, deep = p.crop(top, rows), p.crop(top, p.gf.shape[-2] - top)  # deep: core + rows below
    if "EN" in want:
        sums.add("EN", histogram.en_counts(core))
    if "MI" in want:
        sums.add("MI", histogram.mi_counts(core))
    if want & {"SD", "MSE", "PSNR", "CC", "SCD"}:
        g = deep.gray64[..., :rows, :]
        if "SD" in want:
            s = basic.sd_moments(g)
            sums["SD"] = basic.merge_moments(sums["SD"], s) if "SD" in sums else s
        if want & {"MSE", "PSNR"}:
            sums.add("MSE", basic.squared_error_sums(g))
        if want & {"CC", "SCD"}:
            sums.add("COV", structural.moment_sums(g, deep.moment_maps[..., :rows, :]))
    if want & {"Qabf", "Nabf"}:
        g3 = torch.cat([p.ga, p.gb, p.gf], dim=1)[..., : min(r1 + 1, h) - r0 + top, :]
        sums.add("EDGE", gradient.edge_sums(g3, top, rows, p.protocol))
    if want & {"SF", "AG"}:
        sums.add("SFAG", gradient.sf_ag_sums(deep.gf[..., : min(r1 + 1, h) - r0, :], rows))
    if "SSIM" in want:
        m = deep.moment_maps[..., : min(r1 + structural.SSIM_WINDOW - 1, h) - r0, :]
        if m.shape[-2] >= structural.SSIM_WINDOW:  # else no window starts in this band
            c = structural.ssim_constants(p.protocol)
            sums.add("SSIM", structural.ssim_map(m, *c).sum(dim=(-3, -2, -1)))
    if "VIF" in want:
        _vif_band(deep.gray64, 1, r0, rows, deep.moment_maps, sums, x2)


def _finish(name: str, sums: _Sums, h: int, w: int, protocol: str) -> torch.Tensor:
    n = h * w
    if name == "EN":
        return histogram.en_from_counts(sums["EN"], protocol)
    if name == "MI":
        return histogram.mi_from_counts(sums["MI"])
    if name == "VIF":
        return _vif.vif_from_terms(*sums["VIF"])
    if name in ("Qabf", "Nabf"):
        return gradient.edge_from_sums(sums["EDGE"], n)[name == "Nabf"]
    if name == "SSIM":
        valid = (h - structural.SSIM_WINDOW + 1) * (w - structural.SSIM_WINDOW + 1)
        return (sums["SSIM"] / valid).sum(dim=1)
    if name == "SD":
        return torch.sqrt(sums["SD"][:, 2] / n)
    if name in ("SF", "AG"):
        return gradient.sf_ag_from_sums(sums["SFAG"], h, w)[name == "AG"]
    if name in ("CC", "SCD"):
        cov = structural.covariances(sums["COV"], n)
        return structural.cc_from_covariances(*cov) if name == "CC" else structural.scd_from_covariances(*cov)
    mse = basic.mse_from_sums(sums["MSE"], n)
    return mse if name == "MSE" else basic.psnr_from_mse(mse)


_SIZE_CHECKS = {"VIF": _vif.check_size, "SSIM": structural.check_ssim_size}


def evaluate_bands(vis, ir, fused, names, protocol: str, unavailable: str) -> dict[str, torch.Tensor]:
    """:func:`hfkernels.metrics.evaluate` band by band, for checked (B, C, H, W) inputs with
    H > one band's rows; same arguments and result."""
    b, _, h, w = vis.shape
    skipped = set()
    for name in names:  # before any work: a window larger than the image
        try:
            _SIZE_CHECKS.get(name, lambda h, w: None)(h, w)
        except MetricUnavailable:
            if unavailable == "raise":
                raise
            skipped.add(name)
    want = set(names) - skipped
    sums = _Sums()
    x2 = _next_scale(b, h, w, 1, vis.device) if "VIF" in want else None
    rows = band_rows(b, w)
    for r0, r1 in _bands(h, rows):
        lo, hi = max(r0 - 1, 0), min(r1 + REACH, h)
        p = Prepared(vis[..., lo:hi, :], ir[..., lo:hi, :], fused[..., lo:hi, :], protocol, check_range=False)
        _measure_band(p, r0 - lo, r1 - r0, h, r0, want, sums, x2)
        del p
    if x2 is not None:
        _vif_small_scales(x2, sums)
    nan = torch.full((b,), float("nan"), dtype=torch.float64, device=vis.device)
    return {n: nan.clone() if n in skipped else _finish(n, sums, h, w, protocol) for n in names}
