"""The guidance network: a U-Net that predicts the per-pixel fusion weight ``mu`` (and a log-variance).

:class:`GuidanceUNet` takes (B, 2, H, W) -- ``[luma(vis), luma(ir)]`` mapped to [-1, 1], see
:func:`guidance_input` -- of any size and returns ``mu`` (B, 1, H, W) in [0, 1] (1 selects the
infrared image), a log-variance and the raw output ``z``. Presets (:data:`PRESETS`): ``paper``
(17.3 M parameters), ``small`` (608 K), ``tiny`` (68 K). The guide kind (:data:`GUIDES`) says
how ``z`` becomes ``mu``: ``"scratch"`` (the paper's, ``sigmoid(z)``, starts at 0.5) or
``"residual"`` (a correction to the logit of the heuristic map, which it equals before
training); ``"direct"`` (Table 8's pure U-Net) makes ``sigmoid(z)`` the fused luminance itself,
no pyramid (``model.fuses``; :func:`hfkernels.core.fusion.with_luma` puts the chroma back).
Architecture, the exact residual formula and the KL term (:func:`kl_term`):
docs/design.md, sections 7.1 and 7.2.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.fusion import heuristic_guidance
from ..core.reference import luma

#: base width of each preset (the widths of the 5 encoder stages are b, 2b, 4b, 8b, 8b).
PRESETS = {"paper": 64, "small": 12, "tiny": 4}
#: how output channel 0 becomes ``mu`` (see the module docstring)
GUIDES = ("residual", "scratch", "direct")
#: the guide kind a model file without one (written before residual guides existed) is
GUIDE_OF_OLD_FILES = "scratch"
#: the heuristic's clamp before its logit in residual guides (see the module docstring)
EPS = 1e-3


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2; (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int, mid: int | None = None):
        mid = mid or cout
        super().__init__(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """x2 bilinear up-sampling of the deeper map, zero-padded to the skip's size, concatenated
    ``[skip, up]`` and passed through a :class:`DoubleConv` (middle width ``cin // 2``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = DoubleConv(cin, cout, cin // 2)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, scale_factor=2, mode="bilinear", align_corners=True)
        dh, dw = skip.shape[-2] - up.shape[-2], skip.shape[-1] - up.shape[-1]
        if dh or dw:
            up = F.pad(up, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, up], dim=1))


class GuidanceUNet(nn.Module):
    """U-Net guidance network.

    Args:
        in_channels: input channels (2: visible luma and infrared).
        out_channels: output channels (2: the ``mu`` logit and a log-variance).
        base: base width ``b`` (encoder widths b, 2b, 4b, 8b, 8b); or give ``preset``.
        preset: ``"paper"`` (b = 64), ``"small"`` (12) or ``"tiny"`` (4).
        guide: ``"scratch"`` (the paper's network, the default here) or ``"residual"`` (a
            correction to the heuristic guidance, which it equals before training; needs
            ``in_channels == 2`` holding :func:`guidance_input`). See the module docstring.

    ``forward(x, tile=None, margin=160)``: with ``tile``, an input of more than ``tile**2`` pixels
    goes through the network tile by tile (memory of one tile; see :meth:`_trunk_tiled`).

    ``forward(x)`` takes (B, in_channels, H, W) and returns ``(mu, logvar)``, each (B, 1, H, W):
    ``mu`` in [0, 1] (``sigmoid(output 0)`` for ``scratch``; the corrected heuristic for
    ``residual``, in float32; for ``direct``, ``sigmoid(output 0)`` is the fused luminance) and
    ``logvar = output 1``. With ``return_logit=True`` it returns
    ``(mu, logvar, z)`` with ``z`` the raw output 0 (the logit for ``scratch``, the logit
    correction ``delta`` for ``residual``), which the KL term regularises.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 2, base: int | None = None,
                 preset: str | None = None, guide: str = "scratch"):
        super().__init__()
        if guide not in GUIDES:
            raise ValueError(f"guide must be one of {', '.join(GUIDES)}, got {guide!r}")
        if guide == "residual" and in_channels != 2:
            raise ValueError(f"guide 'residual' needs in_channels=2 (visible and infrared luma), got {in_channels}")
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
            if base is not None and base != PRESETS[preset]:
                raise ValueError(f"base={base} contradicts preset {preset!r} (base {PRESETS[preset]})")
            base = PRESETS[preset]
        base = PRESETS["paper"] if base is None else base
        if isinstance(base, bool) or not isinstance(base, int) or base < 1:
            raise ValueError(f"base must be a positive int, got {base!r}")
        if out_channels < 1 or in_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        self.in_channels, self.out_channels, self.base = in_channels, out_channels, base
        self.preset = preset or next((k for k, v in PRESETS.items() if v == base), None)
        b = base
        self.inc = DoubleConv(in_channels, b)
        self.downs = nn.ModuleList([DoubleConv(b, 2 * b), DoubleConv(2 * b, 4 * b),
                                    DoubleConv(4 * b, 8 * b), DoubleConv(8 * b, 8 * b)])
        self.ups = nn.ModuleList([Up(16 * b, 4 * b), Up(8 * b, 2 * b), Up(4 * b, b), Up(2 * b, b)])
        self.outc = nn.Conv2d(b, out_channels, 1)
        self.guide = guide
        #: whether output 0 is the fused luminance itself (not a guidance for the pyramid)
        self.fuses = guide == "direct"
        if guide == "residual":
            # delta = 0 exactly at step 0 (whatever the features): the network starts as the heuristic
            with torch.no_grad():
                self.outc.weight[0].zero_()
                self.outc.bias[0].zero_()

    #: inputs are padded to a multiple of this (4 poolings) ...
    MULTIPLE = 16
    #: ... and to at least this size, so the bottleneck is at least 2x2.
    MIN_SIZE = 32

    def config(self) -> dict:
        """JSON-able constructor arguments (what :func:`build_model` takes back)."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "base": self.base, "preset": self.preset, "guide": self.guide}

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.outc(y)

    def _trunk_tiled(self, x: torch.Tensor, tile: int, margin: int) -> torch.Tensor:
        """``_trunk(x)`` tile by tile on a padded input (sides multiples of 16): windows start on
        the pooling grid, so each tile sees the full-image computation except for zero padding
        ``margin`` pixels beyond its edge."""
        m = self.MULTIPLE
        tile, margin = max(m, tile // m * m), -(-margin // m) * m
        h, w = x.shape[-2:]
        out = None
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
                ya, xa, yb, xb = max(0, y0 - margin), max(0, x0 - margin), min(h, y1 + margin), min(w, x1 + margin)
                o = self._trunk(x[..., ya:yb, xa:xb])
                if out is None:
                    out = o.new_empty(x.shape[0], o.shape[1], h, w)
                out[..., y0:y1, x0:x1] = o[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
        return out

    def forward(self, x: torch.Tensor, return_logit: bool = False, tile: int | None = None, margin: int = 160):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got {x.shape[1]}")
        x0 = x
        h, w = x.shape[-2:]
        ph = max(self.MIN_SIZE, -(-h // self.MULTIPLE) * self.MULTIPLE) - h
        pw = max(self.MIN_SIZE, -(-w // self.MULTIPLE) * self.MULTIPLE) - w
        if ph or pw:
            # replicate (not reflect): reflect needs the pad to be smaller than the image.
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate")
        out = self._trunk(x) if tile is None or x.shape[-2] * x.shape[-1] <= tile * tile else \
            self._trunk_tiled(x, tile, margin)
        if ph or pw:
            out = out[..., ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]
        z = out[:, :1]
        logvar = out[:, 1:2] if self.out_channels > 1 else torch.zeros_like(z)
        mu = residual_mu(heuristic_from_input(x0), z) if self.guide == "residual" else torch.sigmoid(z)
        return (mu, logvar, z) if return_logit else (mu, logvar)


def heuristic_from_input(x: torch.Tensor) -> torch.Tensor:
    """The heuristic guidance map (B, 1, H, W), float32, of a network input x (B, 2, H, W) made by
    :func:`guidance_input` (its channels are the two lumas in [-1, 1], which is all the heuristic
    reads). Computed in float32 outside any autocast region, without gradient."""
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        x = x.float()
        return heuristic_guidance(x[:, :1], x[:, 1:2], value_range=(-1.0, 1.0))


def residual_mu(h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``clamp(h + sigmoid(l + delta) - sigmoid(l), 0, 1)`` with ``l = logit(clamp(h, EPS, 1 - EPS))``:
    the guidance ``h`` (B, 1, H, W) in [0, 1] corrected by ``delta`` (B, 1, H, W) in logit space;
    float32, equal to ``h`` bit for bit where ``delta == 0`` (see the module docstring)."""
    h = h.float()
    lg = torch.logit(h.clamp(EPS, 1 - EPS))
    # the parenthesis matters: sigmoid(lg + 0) - sigmoid(lg) is exactly 0, so mu == h at delta 0
    return (h + (torch.sigmoid(lg + delta.float()) - torch.sigmoid(lg))).clamp(0.0, 1.0)


#: bounds of a model config read from a file: the presets' range (a crafted "base": 3000 would
#: allocate gigabytes before anything else could fail)
CONFIG_BOUNDS = {"in_channels": (1, 4), "out_channels": (1, 4), "base": (1, max(PRESETS.values()))}


def check_config(config, where: str = "model config") -> dict:
    """``config`` (as :meth:`GuidanceUNet.config` writes it) checked field by field: a dict with
    only known fields, ints within :data:`CONFIG_BOUNDS`, a known preset and guide. Raises
    ValueError naming ``where`` and the field."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the model config must be a JSON object, got {type(config).__name__}")
    extra = sorted(set(config) - {"in_channels", "out_channels", "base", "preset", "guide"})
    if extra:
        raise ValueError(f"{where}: unknown model config field(s) {', '.join(map(repr, extra))}")
    for key, (lo, hi) in CONFIG_BOUNDS.items():
        v = config.get(key)
        if v is None and key == "base":
            continue
        if key in config and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
            raise ValueError(f"{where}: model config field {key!r} must be an int in [{lo}, {hi}], "
                             f"got {v!r} ({type(v).__name__})")
    if config.get("preset") is not None and config["preset"] not in PRESETS:
        raise ValueError(f"{where}: model config field 'preset' must be one of {sorted(PRESETS)} or null, "
                         f"got {config['preset']!r}")
    if "guide" in config and config["guide"] not in GUIDES:
        raise ValueError(f"{where}: model config field 'guide' must be one of {', '.join(GUIDES)}, "
                         f"got {config['guide']!r}")
    return dict(config)


def build_model(config: dict, where: str = "model config") -> GuidanceUNet:
    """A :class:`GuidanceUNet` from :meth:`GuidanceUNet.config` output (a config without ``guide``,
    as written before residual guides existed, builds a ``scratch`` guide), checked by
    :func:`check_config` (``where`` names its source in errors)."""
    cfg = check_config(config, where)
    cfg.setdefault("guide", GUIDE_OF_OLD_FILES)
    preset = cfg.pop("preset", None)
    base = cfg.pop("base", None)
    if base is None:
        return GuidanceUNet(preset=preset or "paper", **cfg)
    return GuidanceUNet(base=base, **cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def guidance_input(vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """Network input (B, 2, H, W) in [-1, 1]: [luma(vis), luma(ir)] from vis (B, 1|3, H, W) and
    ir (B, 1|3, H, W) in [0, 1] (BT.601 luma for 3 channels)."""
    for name, t in (("vis", vis), ("ir", ir)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] not in (1, 3):
            raise ValueError(f"{name} must be (B, 1|3, H, W), got {getattr(t, 'shape', type(t))}")
    if vis.shape[0] != ir.shape[0] or vis.shape[-2:] != ir.shape[-2:]:
        raise ValueError(f"ir has shape {tuple(ir.shape)}, incompatible with vis {tuple(vis.shape)}")
    return torch.cat([luma(vis), luma(ir).to(vis.dtype)], dim=1) * 2 - 1


def forward_pair(net: nn.Module, vis: torch.Tensor, ir: torch.Tensor, *, fast: bool = True, **kwargs):
    """``net(guidance_input(vis, ir), **kwargs)`` run the way the trainer runs it.

    vis (B, 1|3, H, W) and ir (B, 1|3, H, W) in [0, 1]. With ``fast`` on a CUDA input, the network
    input is made channels-last (the trainer's network is) and the forward runs under bf16
    autocast; elsewhere, or with ``fast=False``, it is a plain float32 forward. Returns what
    ``net`` returns (``(mu, logvar)``, or ``(mu, logvar, z)`` with ``return_logit=True``).
    """
    x = guidance_input(vis, ir)
    cuda = fast and x.device.type == "cuda"
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        return net(x, **kwargs)


def kl_term(logit: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``-0.5 * mean(1 + logvar - m^2 - exp(logvar))`` with ``m`` the network's raw output 0.

    logit, logvar: (B, 1, H, W). We take the raw output as the Gaussian's mean (the VAE convention
    the term comes from): the sigmoid is a read-out for the blend, not part of the latent. With
    weight 1e-5 the term only keeps the outputs and log-variances from drifting. For a ``scratch``
    guide the raw output is the logit of ``mu``, so the term pulls ``mu`` gently towards 0.5; for
    a ``residual`` guide it is the correction ``delta``, so the term pulls the guidance gently
    towards the heuristic (the prior is centred on it) and is 0 for the mean at step 0.
    """
    logit, logvar = logit.float(), logvar.float()
    return -0.5 * torch.mean(1 + logvar - logit.pow(2) - logvar.exp())


__all__ = ["PRESETS", "GUIDES", "EPS", "GuidanceUNet", "build_model", "check_config", "CONFIG_BOUNDS", "count_parameters", "guidance_input",
           "forward_pair", "heuristic_from_input", "residual_mu", "kl_term"]
