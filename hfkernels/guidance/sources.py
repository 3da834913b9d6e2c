"""Guidance maps: every way hfkernels makes the fusion weight ``mu``.

A *guidance* is a callable ``mu_fn(vis, ir) -> mu``: vis (B, 1|3, H, W) and ir (B, 1|3, H, W) in
[0, 1] give mu (B, 1, H, W) in [0, 1] (``mu = 1`` selects the infrared image). The trainer, the
``fuse`` and ``eval`` commands and the scripts all get theirs from here:

- ``"heuristic"``: the paper's hand-made map (:func:`hfkernels.fusion.heuristic_guidance`);
- a constant ``c`` in [0, 1]: the same ``mu`` everywhere;
- a trained network: a run folder or ``.safetensors`` weights file (:func:`load_guidance`), a
  network in memory (:func:`model_guidance`), or a guide shipped inside the package
  (:func:`packaged_guidance`; ``hfkernels/guidance/guides/``, each with a JSON record of how it was made).

:func:`resolve` turns a user's choice (``--mu`` / ``--checkpoint``) into a guidance, and
:func:`default_guidance` is what it gives when nothing is asked for.

Example::

    mu_fn = resolve(checkpoint="runs/msrs")       # or resolve("0.5"), resolve("heuristic")
    fused = hfkernels.fuse_color(vis, ir, mu_fn(vis, ir))
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
from importlib.resources import as_file, files
from pathlib import Path
from typing import Callable

import torch

from ..core.fusion import heuristic_guidance
from ..io import read_json_file
from .checkpoint import load_model
from .models import forward_pair

MuFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

HEURISTIC = "heuristic"


def parse(spec, name: str = "mu") -> str | float:
    """``"heuristic"`` or a constant in [0, 1] (a number, or its text) from ``spec``.

    Raises ValueError naming ``name`` for anything else, or a constant outside [0, 1].
    """
    if spec == HEURISTIC:
        return spec
    try:
        c = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 'heuristic' or a number in [0, 1], got {spec!r}") from None
    if not 0.0 <= c <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} constant must lie in [0, 1], got {c}")
    return c


def constant(c: float) -> MuFn:
    """The guidance ``mu = c`` everywhere: (B, 1, H, W) of ``ir``'s dtype and device."""
    c = parse(c)
    if c == HEURISTIC:
        raise ValueError("c must be a number in [0, 1], got 'heuristic'")
    return lambda vis, ir: torch.full_like(ir[:, :1], c)


#: the packaged guide that :func:`default_guidance` uses (``hfkernels/guidance/guides/default.*``)
SHIPPED_GUIDE = "default"


def packaged_guides() -> list[str]:
    """Names of the trained guides installed with the package (``hfkernels/guidance/guides/NAME.safetensors``
    with its record ``NAME.json``: recipe, data, held-out scores)."""
    return list(_installed_guides())


def _guides_folder():
    return files("hfkernels.guidance") / "guides"


@functools.cache
def _installed_guides() -> tuple[str, ...]:
    # read once: default_guidance() asks on every fuse_color(vis, ir) call
    folder = _guides_folder()
    if not folder.is_dir():
        return ()
    return tuple(sorted(f.name[: -len(".safetensors")] for f in folder.iterdir()
                        if f.name.endswith(".safetensors") and f.is_file()
                        and (folder / (f.name[: -len(".safetensors")] + ".json")).is_file()))


def guide_card(name: str = SHIPPED_GUIDE) -> dict:
    """The record of packaged guide ``name``: ``{"model", "weights", "recipe", "data", "scores"}``
    (ValueError naming the file if it is not such a record)."""
    if name not in packaged_guides():
        raise ValueError(f"no packaged guide {name!r}; installed: {packaged_guides() or 'none'}")
    return _card(name)


@functools.cache
def _card(name: str) -> dict:
    path = _guides_folder() / f"{name}.json"
    try:
        card = read_json_file(path, dict, "packaged guide record")
    except ValueError as e:
        raise ValueError(f"{e}; reinstall hfkernels") from None
    for field, kind in (("model", dict), ("weights", dict), ("recipe", dict)):
        if not isinstance(card.get(field), kind):
            raise ValueError(f"packaged guide record {path}: field {field!r} is missing or not an object")
    if not isinstance(card["weights"].get("sha256"), str):
        raise ValueError(f"packaged guide record {path}: field 'weights.sha256' is missing")
    return card


def packaged_guidance(name: str = SHIPPED_GUIDE, device=None) -> MuFn:
    """The packaged trained guide ``name`` as ``mu_fn(vis, ir) -> mu`` (see :func:`load_guidance`);
    loaded once per (name, device). Weights are stored in float16 and run in float32."""
    if name not in packaged_guides():
        raise ValueError(f"no packaged guide {name!r}; installed: {packaged_guides() or 'none'}")
    return _load_packaged(name, None if device is None else str(torch.device(device)))


@functools.lru_cache(maxsize=4)
def _load_packaged(name: str, device: str | None) -> MuFn:
    with as_file(_guides_folder() / f"{name}.safetensors") as path:
        # the record's hash, once per load: a damaged or swapped file is named, not run
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest != guide_card(name)["weights"]["sha256"]:
            raise ValueError(f"packaged guide {path} does not match the sha256 in its record {name}.json "
                             "(damaged or replaced); reinstall hfkernels, or use --mu heuristic")
        fn = load_guidance(path, device=device)
    fn.name = name
    return fn


def default_guidance(device=None) -> MuFn:
    """The guidance used when none is asked for: the packaged trained guide (``SHIPPED_GUIDE``)
    when it is installed, else the heuristic map. ``device`` is where the network runs (default:
    the inputs' device). ``describe_default()`` says which one it is."""
    if SHIPPED_GUIDE in packaged_guides():
        return packaged_guidance(SHIPPED_GUIDE, device)
    _say_no_guide()
    return heuristic_guidance


@functools.cache
def _say_no_guide() -> None:
    # once per process: a fallback nobody hears of makes "the trained guide" a lie
    print(f"hfkernels: warning: the packaged trained guide ({_guides_folder() / (SHIPPED_GUIDE + '.safetensors')}) "
          "is not installed; using the heuristic guidance map", file=sys.stderr)


def describe_default() -> str:
    """One line naming the default guidance (for ``hfkernels info`` and the CLI)."""
    if SHIPPED_GUIDE not in packaged_guides():
        return "heuristic map (no trained guide is installed)"
    card = guide_card(SHIPPED_GUIDE)
    m, r = card["model"], card["recipe"]
    return (f"packaged trained guide '{SHIPPED_GUIDE}' ({m.get('preset')} {m.get('guide')} U-Net, "
            f"trained {r['train_seconds']:.0f} s on CPU: {r['images']} images seen over {r['epochs']} epoch "
            "record(s), cut by time budgets); "
            "--mu heuristic for the hand-made map")


def resolve(mu=None, checkpoint=None, device=None) -> MuFn:
    """The guidance a user asked for.

    Args:
        mu: ``"heuristic"``, a constant in [0, 1] (number or text), or None.
        checkpoint: a training run folder or model ``.safetensors`` file (see :func:`load_guidance`);
            when given, ``mu`` is ignored.
        device: where a network runs (default: the inputs' device).

    Returns:
        ``mu_fn(vis, ir) -> mu``; with neither ``mu`` nor ``checkpoint``, :func:`default_guidance`.
    """
    if checkpoint is not None:
        return load_guidance(checkpoint, device=device)
    if mu is None:
        return default_guidance(device)
    spec = parse(mu)
    return heuristic_guidance if spec == HEURISTIC else constant(spec)


def load_guidance(run_dir, device=None) -> MuFn:
    """Load a trained guidance network from a training run folder (or a ``.safetensors`` model
    file with ``config.json`` beside it) and return ``mu_fn(vis, ir) -> mu``.

    ``mu_fn`` takes vis (B, 1|3, H, W) and ir (B, 1|3, H, W) in [0, 1] and returns mu
    (B, 1, H, W) in [0, 1] (float32, on the inputs' device, no gradient). The network runs in
    float32 and eval mode (BatchNorm running statistics) on ``device`` (default: the inputs'
    device). The guide kind stored with the weights is used (``mu_fn.guide``; files written
    before residual guides existed hold scratch guides); ``mu_fn.model`` is the network. For a
    ``direct`` network (``mu_fn.fuses``) the map returned is the fused luminance, not a guidance:
    :func:`hfkernels.evaluation.colour` knows the difference.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
    model = load_model(run_dir, map_location="cpu")
    model.eval()
    dev = torch.device(device) if device is not None else None
    if dev is not None:
        model.to(dev)

    @torch.no_grad()
    def mu_fn(vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        target = dev or vis.device
        if next(model.parameters()).device != target:
            model.to(target)
        mu = tiled_forward(model, vis.to(target, torch.float32), ir.to(target, torch.float32))
        if not bool(torch.isfinite(mu).all()):
            # finite but huge weights overflow: never let NaN through as an all-black fusion
            raise ValueError(f"the guidance network of {run_dir} gives NaN or infinite mu for this input "
                             "(damaged weights?)")
        return mu.float().clamp(0, 1).to(vis.device)

    mu_fn.model = model
    mu_fn.guide = model.guide
    mu_fn.fuses = model.fuses
    return mu_fn


#: side of the square tiles a large image's guidance is computed in, and the context each tile
#: sees beyond its edges (the U-Net's reach)
TILE, MARGIN = 1024, 160


def tiled_forward(model: torch.nn.Module, vis: torch.Tensor, ir: torch.Tensor, *, tile: int | None = None,
                  margin: int | None = None, fast: bool = False) -> torch.Tensor:
    """The network's ``mu`` (B, 1, H, W) for vis (B, 1|3, H, W), ir (B, 1|3, H, W) in [0, 1],
    computed tile by tile when the image has more than ``tile**2`` pixels (see
    :class:`hfkernels.models.GuidanceUNet`): memory is then bounded by one tile whatever the image
    size (a full-image forward of the ``small`` guide takes about 280 MB a megapixel)."""
    return forward_pair(model, vis, ir, fast=fast, tile=tile or TILE, margin=MARGIN if margin is None else margin)[0]


def model_guidance(model: torch.nn.Module) -> MuFn:
    """The guidance of a network being trained: ``model`` is put in eval mode and run as the
    trainer runs it (:func:`hfkernels.models.forward_pair`: bf16 autocast on CUDA), without
    gradient; mu is (B, 1, H, W) float32."""
    model.eval()

    @torch.no_grad()
    def mu_fn(vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        return tiled_forward(model, vis, ir, fast=True).float()

    mu_fn.model = model
    mu_fn.fuses = getattr(model, "fuses", False)
    return mu_fn


__all__ = ["MuFn", "HEURISTIC", "SHIPPED_GUIDE", "parse", "constant", "packaged_guides", "guide_card",
           "packaged_guidance", "default_guidance", "describe_default", "resolve", "load_guidance",
           "model_guidance", "tiled_forward", "TILE", "MARGIN"]
