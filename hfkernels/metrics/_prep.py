"""Input checks and the per-batch preparation shared by every metric.

Protocol of the published tables: inputs in [0,1] are scaled by 255 in float32 (exact for
8-bit levels), A = visible, B = infrared, F = fused, and most metrics see ``gray(x)``:

- ``protocol="paper"`` (the released evaluation): a 1-channel image as is; a 3-channel image
  becomes ``floor(clamp(0.2989 R + 0.5870 G + 0.1140 B, 0, 255))`` (MATLAB ``rgb2gray``'s
  coefficients, truncated). Where values are truncated to levels, a value within 1e-4 of an
  integer counts as that integer first, so an 8-bit image never loses a level to rounding.
- ``protocol="standard"``: BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` without truncation, and
  histograms quantise to the *nearest* level.
"""
from __future__ import annotations

from functools import cached_property

import torch

from ..core.reference import LUMA
from ..core.validate import tensor4d

PROTOCOLS = ("paper", "standard")
#: a value this close to an integer counts as that integer before truncation
SNAP = 1e-4
PAPER_GRAY = (0.2989, 0.5870, 0.1140)
STANDARD_GRAY = LUMA  # BT.601, the same weights as the fusion's colour path


def check_protocol(protocol) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def _as_image_batch(x, name: str) -> torch.Tensor:
    x = tensor4d(x, name, batch_optional=True)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    return x


def check_inputs(vis, ir, fused, *, check_range: bool = True):
    """Validate the three batches; returns them as 4-D tensors."""
    vis = _as_image_batch(vis, "vis")
    ir = _as_image_batch(ir, "ir")
    fused = _as_image_batch(fused, "fused")
    for name, t in (("ir", ir), ("fused", fused)):
        if t.shape[0] != vis.shape[0] or t.shape[-2:] != vis.shape[-2:]:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, but vis has {tuple(vis.shape)}: "
                "batch size, height and width must agree"
            )
        if t.device != vis.device:
            raise ValueError(f"{name} is on {t.device} but vis is on {vis.device}")
    if check_range:
        for name, t in (("vis", vis), ("ir", ir), ("fused", fused)):
            lo, hi = torch.aminmax(t)
            lo, hi = float(lo), float(hi)
            if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # also catches NaN
                raise ValueError(f"{name} must hold values in [0, 1], found range [{lo:g}, {hi:g}]")
    return vis, ir, fused


def truncate(x: torch.Tensor) -> torch.Tensor:
    """floor(x), except that a value within ``SNAP`` of an integer counts as that integer."""
    # floor(x) is r = round(x) where x >= r, else r - 1; x counts as r where r - x <= SNAP.
    # r - x is exact (Sterbenz: |x - r| <= 0.5), so this is the rule above to the last bit,
    # in four passes instead of six.
    r = torch.round(x)
    return r.sub_((r - x).gt_(SNAP))


#: float64 values this close to an integer are taken as that 8-bit level (see snap_levels)
LEVEL_SNAP = 3e-5


def snap_levels(x255: torch.Tensor) -> torch.Tensor:
    """Move float64 values within ``LEVEL_SNAP`` of an integer onto it, in place.

    8-bit data often reaches float64 through float32 (v / 255 rounded to float32 is off by up to
    ~6e-8 relative, i.e. 1.5e-5 after scaling), or as v / 255 * 255 with a last-bit error. Such
    values must behave exactly like the levels they are: Qabf's protocol has jumps at gS == gF
    and gx == 0 that a 1e-5 wobble would otherwise flip. Values that are not levels move by at
    most LEVEL_SNAP, far below every metric's precision.
    """
    r = torch.round(x255)
    return torch.where((x255 - r).abs_() <= LEVEL_SNAP, r, x255)


def gray(x255: torch.Tensor, protocol: str) -> torch.Tensor:
    """(B, 1|3, H, W) in 0..255 -> (B, 1, H, W) per the protocol (see module docstring)."""
    if x255.shape[1] == 1:
        return x255
    r, g, b = x255[:, 0:1], x255[:, 1:2], x255[:, 2:3]
    if protocol == "paper":
        # the sum is formed in float64 as the released code does: in float32 an 8-bit gray level
        # v (R = G = B = v) can land within SNAP of v instead of at 0.9999 v and keep its level
        c = PAPER_GRAY
        r, g, b = r.double(), g.double(), b.double()
        return truncate((c[0] * r + c[1] * g + c[2] * b).clamp(0, 255)).to(x255.dtype)
    c = STANDARD_GRAY
    return c[0] * r + c[1] * g + c[2] * b


def quantised(x255: torch.Tensor, protocol: str) -> torch.Tensor:
    """Integer levels 0..255 (int64) for histograms: truncated (paper) or rounded (standard)."""
    q = truncate(x255) if protocol == "paper" else torch.round(x255)
    return q.clamp(0, 255).to(torch.int64)



class MetricUnavailable(ValueError):
    """A metric that is not defined for these inputs (images smaller than its window)."""


class Prepared:
    """The three images scaled to 0..255, their gray versions, and cached derived maps.

    Maps that only one metric family uses (e.g. the Sobel responses) are built by that family's
    module and kept in ``cache``, so this module depends on no metric.

    Work dtype: float64 if any input is float64, else float32. ``a``, ``b``, ``f``: (B, C, H, W);
    ``ga``, ``gb``, ``gf``: (B, 1, H, W).
    """

    def __init__(self, vis, ir, fused, protocol: str = "paper", *, check_range: bool = True):
        self.protocol = check_protocol(protocol)
        vis, ir, fused = check_inputs(vis, ir, fused, check_range=check_range)
        dt = torch.float64 if torch.float64 in (vis.dtype, ir.dtype, fused.dtype) else torch.float32
        self.dtype = dt
        # scale by 255 in the work dtype: v / 255 * 255 == v for 8-bit levels in float32
        self.a, self.b, self.f = (t.to(dt) * 255.0 for t in (vis, ir, fused))
        if dt == torch.float64:
            self.a, self.b, self.f = (snap_levels(t) for t in (self.a, self.b, self.f))
        self.ga, self.gb, self.gf = (gray(t, self.protocol) for t in (self.a, self.b, self.f))
        self.batch = vis.shape[0]
        self.cache: dict = {}  # derived maps shared between metrics

    def crop(self, top: int, rows: int) -> "Prepared":
        """Rows ``top .. top + rows - 1`` of these images, as views (no copy, an empty cache):
        for the metrics of one band of a large image (:mod:`.tiled`)."""
        c = object.__new__(Prepared)
        c.protocol, c.dtype, c.batch, c.cache = self.protocol, self.dtype, self.batch, {}
        for k in ("a", "b", "f", "ga", "gb", "gf"):
            setattr(c, k, getattr(self, k)[..., top:top + rows, :])
        return c

    @cached_property
    def gray_levels(self) -> torch.Tensor:
        """(3, B, H*W) int64 levels of gray A, gray B, gray F."""
        g = torch.stack([self.ga, self.gb, self.gf]).flatten(2)
        return quantised(g, self.protocol)

    @cached_property
    def gray64(self) -> torch.Tensor:
        """(B, 3, H, W) float64 stack of gray A, B, F (for the float64 metrics and the moments)."""
        return torch.cat([self.ga, self.gb, self.gf], dim=1).double()

    @cached_property
    def moment_maps(self) -> torch.Tensor:
        """(B, 8, H, W) float64 moment maps of gray A, B, F (see :func:`moment_maps`), built once
        and filtered by both VIF (scale 1) and SSIM."""
        return moment_maps(self.gray64)


def moment_maps(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) [A, B, F] -> (B, 8, H, W) [A, B, F, A^2, B^2, F^2, AF, BF]: the maps whose
    local means give local means, variances and covariances."""
    out = x.new_empty(x.shape[0], 8, *x.shape[-2:])
    out[:, :3] = x
    torch.mul(x, x, out=out[:, 3:6])
    torch.mul(x[:, :2], x[:, 2:], out=out[:, 6:8])
    return out
