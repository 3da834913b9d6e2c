"""Guidance: every way hfkernels makes the fusion weight ``mu`` -- the heuristic, a constant, a
trained network (:mod:`.models`), its checkpoints (:mod:`.checkpoint`) and the guides shipped
in the package (``guides/``). :mod:`.sources` holds the choosing and loading.

Layer: imports :mod:`hfkernels.core` and :mod:`hfkernels.io` only.
"""
from .sources import (
    HEURISTIC,
    MARGIN,
    SHIPPED_GUIDE,
    TILE,
    MuFn,
    constant,
    default_guidance,
    describe_default,
    guide_card,
    load_guidance,
    model_guidance,
    packaged_guidance,
    packaged_guides,
    parse,
    resolve,
    tiled_forward,
)

__all__ = [
    "SHIPPED_GUIDE", "HEURISTIC", "MuFn", "constant", "default_guidance", "describe_default",
    "guide_card", "load_guidance", "model_guidance", "packaged_guidance", "packaged_guides",
    "parse", "resolve", "TILE", "MARGIN", "tiled_forward",
]
