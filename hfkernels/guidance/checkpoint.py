"""Training checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A run folder holds::

    RUN/config.json                  model + training configuration (written when the run starts)
    RUN/checkpoint.json              the commit record: epoch, guide kind, the two files below, optimizer groups
    RUN/model-e0003.safetensors      model weights and buffers after epoch 3 (+ config in metadata)
    RUN/optim-e0003.safetensors      optimizer state after epoch 3
    RUN/history.json                 one record per completed epoch (written by the trainer)

Every file is written to a temporary name in the same folder, flushed to disk and renamed over
its final name (``os.replace`` is atomic on POSIX and Windows). The epoch's tensor files get new
names, and ``checkpoint.json`` — renamed last — is what points at them; files of older epochs are
deleted only after it. So a run killed at any moment leaves either the previous or the new
checkpoint complete, never a mix, and ``--resume`` continues from the last complete epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..io import atomic_write_bytes, atomic_write_json, read_json
from .models import GUIDE_OF_OLD_FILES, build_model

CHECKPOINT_JSON = "checkpoint.json"
CONFIG_JSON = "config.json"
FORMAT = "hfkernels-checkpoint-1"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors (safetensors refuses views/shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in _unwrap(model).state_dict().items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``state/<param>/<key>``) and a JSON part."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state/{idx}/{key}"] = val.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{idx}/{key}"] = val
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = t
    for name, v in meta.get("scalars", {}).items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = v
    state = dict(sorted(state.items()))  # safetensors sorts names as strings ("10" < "2")
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir, model, optimizer=None, epoch: int = 0, extra: dict | None = None) -> Path:
    """Write the checkpoint of ``epoch`` into ``run_dir`` atomically; returns checkpoint.json's path.

    ``model`` may be wrapped (DDP); its :meth:`config` (if any) goes into the safetensors metadata
    so the weights file alone is enough to rebuild the network (guide kind included; it is
    also written to checkpoint.json as ``"guide"`` for readers of the record).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    inner = _unwrap(model)
    meta = {"format": FORMAT, "epoch": str(epoch)}
    if hasattr(inner, "config"):
        meta["config"] = json.dumps(inner.config())
    model_name = f"model-e{epoch:04d}.safetensors"
    atomic_write_bytes(run_dir / model_name, st_save(model_tensors(inner), metadata=meta))
    record = {"format": FORMAT, "epoch": epoch, "model": model_name, "optimizer": None,
              "extra": extra or {}}
    if hasattr(inner, "config"):
        record["guide"] = inner.config().get("guide")
    if optimizer is not None:
        tensors, ometa = optimizer_tensors(optimizer)
        optim_name = f"optim-e{epoch:04d}.safetensors"
        atomic_write_bytes(run_dir / optim_name, st_save(tensors, metadata={"format": FORMAT}))
        record["optimizer"] = optim_name
        record["optimizer_meta"] = ometa
    atomic_write_json(run_dir / CHECKPOINT_JSON, record)  # the commit point
    keep = {record["model"], record["optimizer"]}
    for p in list(run_dir.glob("model-e*.safetensors")) + list(run_dir.glob("optim-e*.safetensors")):
        if p.name not in keep:
            p.unlink(missing_ok=True)
    return run_dir / CHECKPOINT_JSON


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / CHECKPOINT_JSON).is_file()


def load_checkpoint(run_dir, map_location="cpu") -> dict:
    """Read the last complete checkpoint of a run: ``{"epoch", "model" (state dict),
    "optimizer" (state dict or None), "extra", "config" (model config or None), "guide"}``;
    ``guide`` is the guide kind (``"scratch"`` for checkpoints written before the field existed)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (missing {CHECKPOINT_JSON})")
    record = read_json(path)
    model_sd, config = _read_model_file(run_dir / record["model"], map_location)
    optim = None
    if record.get("optimizer"):
        tensors = _read_tensors(run_dir / record["optimizer"], map_location)
        optim = optimizer_state_from(tensors, record["optimizer_meta"])
    guide = (config or {}).get("guide") or record.get("guide") or GUIDE_OF_OLD_FILES
    return {"epoch": int(record["epoch"]), "model": model_sd, "optimizer": optim,
            "extra": record.get("extra", {}), "config": config, "guide": guide}


def _read_tensors(path: Path, map_location):
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    tensors = st_load(path.read_bytes())
    return {k: v.to(map_location) for k, v in tensors.items()}


def _read_model_file(path: Path, map_location):
    from safetensors import safe_open

    tensors = _read_tensors(path, map_location)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    config = json.loads(meta["config"]) if "config" in meta else None
    return tensors, config


def load_model(path, map_location="cpu"):
    """Rebuild a :class:`~hfkernels.models.GuidanceUNet` from a run folder (its last checkpoint)
    or from a model ``.safetensors`` file; returns it in train mode on ``map_location``."""
    path = Path(path)
    if path.is_dir():
        if not has_checkpoint(path):
            raise FileNotFoundError(
                f"{path} holds no trained model (no {CHECKPOINT_JSON}); train one with `hfkernels train --out {path}`"
            )
        ck = load_checkpoint(path, map_location)
        state, config = ck["model"], ck["config"]
    elif path.is_file():
        state, config = _read_model_file(path, map_location)
    else:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if config is None:
        cfg_file = (path if path.is_dir() else path.parent) / CONFIG_JSON
        if not cfg_file.is_file():
            raise ValueError(f"{path}: no model configuration (neither in the weights file nor {cfg_file})")
        config = read_json(cfg_file)["model"]
    model = build_model(config)
    model.load_state_dict(state)
    return model.to(map_location)


__all__ = ["atomic_write_bytes", "atomic_write_json", "read_json", "save_checkpoint", "load_checkpoint",
           "has_checkpoint", "load_model", "CHECKPOINT_JSON", "CONFIG_JSON"]
