"""The image-fusion evaluation suite: EN, MI, VIF, Qabf, SSIM, SD, SF, AG, SCD, CC, PSNR, MSE, Nabf.

Every metric takes a batch of visible images ``vis``, infrared images ``ir`` and fused images
``fused``, each (B, 1|3, H, W) (or a single (C, H, W) image) with values in [0, 1], on any
device, and returns a (B,) float64 tensor (A = vis, B = ir, F = fused). ``protocol="paper"``
(default) reproduces the published evaluation code, quirks included; ``protocol="standard"``
gives the textbook definitions. :func:`evaluate` computes several at once and shares their
preparation. What differs between the protocols, and the defined value of each metric on
degenerate inputs (no NaN for any accepted input): docs/design.md, sections 8.6 and 8.7.

Video: :func:`flicker` (and :class:`FlickerMeter` for a stream) measures a fused video's
frame-to-frame change that neither source's change accounts for (:mod:`.temporal`).
"""
from __future__ import annotations

import torch

from . import basic, gradient, histogram, structural, tiled
from . import vif as _vif
from ._prep import PROTOCOLS, MetricUnavailable, Prepared, check_inputs, check_protocol
from .temporal import FlickerMeter, flicker

#: metric name -> function of a :class:`Prepared` batch, in the order tables list them
_PREPARED = {
    "EN": histogram.en_prepared,
    "MI": histogram.mi_prepared,
    "VIF": _vif.vif_prepared,
    "Qabf": gradient.qabf_prepared,
    "SSIM": structural.ssim_prepared,
    "SD": basic.sd_prepared,
    "SF": gradient.sf_prepared,
    "AG": gradient.ag_prepared,
    "SCD": structural.scd_prepared,
    "CC": structural.cc_prepared,
    "PSNR": basic.psnr_prepared,
    "MSE": basic.mse_prepared,
    "Nabf": gradient.nabf_prepared,
}
#: all metric names, in table order
METRICS = tuple(_PREPARED)
#: the metrics the reference tables report
PAPER_METRICS = ("EN", "MI", "VIF", "Qabf", "SSIM", "SD")
#: True where a larger value is better
HIGHER_IS_BETTER = {name: name not in ("MSE", "Nabf") for name in METRICS} | {"flicker": False}


def check_names(names) -> tuple[str, ...]:
    """Normalise ``names`` (None = all; a comma-separated string or an iterable; case-insensitive)."""
    if names is None:
        return METRICS
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    by_lower = {m.lower(): m for m in METRICS}
    out = []
    for n in names:
        m = by_lower.get(str(n).strip().lower())
        if m is None:
            raise ValueError(f"unknown metric {n!r} in names; choose from {', '.join(METRICS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("names is empty; choose from " + ", ".join(METRICS))
    return tuple(out)


@torch.no_grad()
def evaluate(vis, ir, fused, names=None, protocol: str = "paper", unavailable: str = "raise") -> dict[str, torch.Tensor]:
    """Compute several metrics at once.

    Args:
        vis: (B, 1|3, H, W) visible images (A) in [0, 1].
        ir: (B, 1|3, H, W) infrared images (B) in [0, 1].
        fused: (B, 1|3, H, W) fused images (F) in [0, 1].
        names: metric names (see :data:`METRICS`), a comma-separated string, or None for all.
        protocol: ``"paper"`` or ``"standard"`` (see the module docstring).
        unavailable: ``"raise"`` (default) or ``"nan"``: a metric the images are too small for
            is then NaN ("not available") instead of an error.

    Returns:
        dict name -> (B,) float64 tensor on the inputs' device, in the order of ``names``.
    Raises:
        ValueError / TypeError naming the argument for bad shapes, values outside [0, 1],
        unknown names or protocol; ValueError for images smaller than a metric's window
        (VIF needs at least 41x41 pixels, SSIM 11x11): :class:`MetricUnavailable`.

    Images of more than ``tiled.TILE_PIXELS`` pixels (over the batch) are measured in bands of
    rows with bounded memory (:mod:`.tiled`); the values are the same to float64 rounding.
    """
    names = check_names(names)
    if unavailable not in ("raise", "nan"):
        raise ValueError(f"unavailable must be 'raise' or 'nan', got {unavailable!r}")
    check_protocol(protocol)
    vis, ir, fused = check_inputs(vis, ir, fused)
    b, _, h, w = vis.shape
    if tiled.should_tile(b, h, w):
        return tiled.evaluate_bands(vis, ir, fused, names, protocol, unavailable)
    x = Prepared(vis, ir, fused, protocol, check_range=False)
    out = {}
    for n in names:
        try:
            out[n] = _PREPARED[n](x)
        except MetricUnavailable:
            if unavailable == "raise":
                raise
            out[n] = torch.full((x.batch,), float("nan"), dtype=torch.float64, device=x.f.device)
    return out


def _single(name: str):
    fn = _PREPARED[name]

    def metric(vis, ir, fused, protocol: str = "paper") -> torch.Tensor:
        return evaluate(vis, ir, fused, [name], protocol)[name]

    metric.__name__ = name.lower()
    metric.__qualname__ = name.lower()
    metric.__doc__ = (
        f"{name} of fused images given their sources: vis, ir, fused (B, 1|3, H, W) in [0, 1]; "
        f"returns (B,) float64. Definition: see hfkernels.metrics.{fn.__module__.rsplit('.', 1)[-1]}."
    )
    return metric


# one function a metric, named after it in lower case (METRICS order)
# One function per metric, ``name(vis, ir, fused, protocol="paper") -> (B,)``. ``metrics.ssim`` is
# the evaluation metric (SSIM(A, F) + SSIM(B, F), 0 to 2), not ``hfkernels.ssim``, the
# differentiable SSIM of two images that the training loss uses.
en, mi, vif, qabf, ssim, sd, sf, ag, scd, cc, psnr, mse, nabf = map(_single, METRICS)

__all__ = [
    "METRICS", "PAPER_METRICS", "PROTOCOLS", "HIGHER_IS_BETTER", "MetricUnavailable", "evaluate", "check_names",
    "flicker", "FlickerMeter",
    "en", "mi", "vif", "qabf", "ssim", "sd", "sf", "ag", "scd", "cc", "psnr", "mse", "nabf",
]
