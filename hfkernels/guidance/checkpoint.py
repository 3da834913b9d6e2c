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

from ..io import atomic_write_bytes, atomic_write_json, read_json_file
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


def read_history(path) -> list[dict]:
    """A run's ``history.json``: a list of records, each an object with an int ``"epoch"``;
    ValueError naming the file and the record otherwise."""
    hist = read_json_file(path, list, "training history")
    for i, r in enumerate(hist):
        if not isinstance(r, dict) or isinstance(r.get("epoch"), bool) or not isinstance(r.get("epoch"), int):
            raise ValueError(f"training history {path}: record {i} must be an object with an int 'epoch', got "
                             f"{str(r)[:60]}")
    return hist


def _inside(run_dir: Path, name, field: str, record_path: Path) -> Path:
    """``run_dir / name`` for a file name read from ``record_path``, refused unless it is a plain
    name that resolves inside ``run_dir`` (a crafted record may name ``../../x`` or ``/etc/passwd``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{record_path}: field {field!r} must be a file name, got {name!r}")
    p = run_dir / name
    root = run_dir.resolve()
    if Path(name).is_absolute() or Path(name).name != name or p.resolve().parent != root:
        raise ValueError(f"{record_path}: field {field!r} names {name!r}, which is not a file inside the run "
                         f"folder {run_dir}; refusing to read it")
    return p


def load_checkpoint(run_dir, map_location="cpu", optimizer: bool = True) -> dict:
    """Read the last complete checkpoint of a run: ``{"epoch", "model" (state dict),
    "optimizer" (state dict or None), "extra", "config" (model config or None), "guide"}``;
    ``guide`` is the guide kind (``"scratch"`` for checkpoints written before the field existed).
    ``optimizer=False`` reads only the model (what fusing and evaluating need).

    Every file is untrusted: a record or weights file that is not what it should be, or that
    names files outside ``run_dir``, is a ValueError naming the file and the field."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (missing {CHECKPOINT_JSON})")
    record = read_json_file(path, dict, "checkpoint record")
    for field in ("epoch", "model"):
        if field not in record:
            raise ValueError(f"{path}: field {field!r} is missing")
    epoch = record["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{path}: field 'epoch' must be a non-negative int, got {epoch!r}")
    model_sd, config = _read_model_file(_inside(run_dir, record["model"], "model", path), map_location)
    optim = None
    if optimizer and record.get("optimizer"):
        opath = _inside(run_dir, record["optimizer"], "optimizer", path)
        tensors = _read_tensors(opath, map_location)
        try:
            optim = optimizer_state_from(tensors, record["optimizer_meta"])
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: optimizer state does not match {opath.name} ({type(e).__name__}: {e})") from None
    extra = record.get("extra", {})
    guide = (config or {}).get("guide") or record.get("guide") or GUIDE_OF_OLD_FILES
    return {"epoch": epoch, "model": model_sd, "optimizer": optim,
            "extra": extra if isinstance(extra, dict) else {}, "config": config, "guide": guide}


#: dtypes a weights file may hold (an int8 or bool "weight" loads into a float model silently)
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _read_tensors(path: Path, map_location, check: bool = True):
    from safetensors import SafetensorError

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    if check:
        for name, t in tensors.items():
            if t.dtype not in WEIGHT_DTYPES and not name.endswith(("num_batches_tracked", "/step")):
                raise ValueError(f"{path}: tensor {name!r} has dtype {t.dtype}; weights must be floating point")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return {k: v.to(map_location) for k, v in tensors.items()}


def _read_model_file(path: Path, map_location):
    from safetensors import safe_open

    tensors = _read_tensors(path, map_location)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    config = None
    if "config" in meta:
        try:
            config = json.loads(meta["config"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: the model config in its metadata is not valid JSON: {e}") from None
    return tensors, config


def check_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Names and shapes of ``state`` against ``model``'s, each mismatch named (load_state_dict
    would raise a RuntimeError listing them, or copy what it can with strict=False)."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        parts = ([f"missing {len(missing)} tensor(s), e.g. {missing[0]!r}"] if missing else []) + (
            [f"{len(extra)} unknown tensor(s), e.g. {extra[0]!r}"] if extra else [])
        raise ValueError(f"{path}: weights do not fit the model config ({'; '.join(parts)})")
    for k, t in state.items():
        if tuple(t.shape) != tuple(want[k].shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(t.shape)}, the model config needs "
                             f"{tuple(want[k].shape)}")


def load_model(path, map_location="cpu"):
    """Rebuild a :class:`~hfkernels.models.GuidanceUNet` from a run folder (its last checkpoint)
    or from a model ``.safetensors`` file; returns it in train mode on ``map_location``. Only the
    model is read (not the optimizer state); every file is checked as :func:`load_checkpoint`
    says, and the weights against the config (names, shapes, dtypes, finite values)."""
    path = Path(path)
    if path.is_dir():
        if not has_checkpoint(path):
            raise FileNotFoundError(
                f"{path} holds no trained model (no {CHECKPOINT_JSON}); train one with `hfkernels train --out {path}`"
            )
        ck = load_checkpoint(path, map_location, optimizer=False)
        state, config = ck["model"], ck["config"]
        weights = path / str(read_json_file(path / CHECKPOINT_JSON, dict)["model"])
    elif path.is_file():
        state, config = _read_model_file(path, map_location)
        weights = path
    else:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    where = str(weights)
    if config is None:
        cfg_file = (path if path.is_dir() else path.parent) / CONFIG_JSON
        if not cfg_file.is_file():
            raise ValueError(f"{path}: no model configuration (neither in the weights file nor {cfg_file})")
        saved = read_json_file(cfg_file, dict, "run configuration")
        if "model" not in saved:
            raise ValueError(f"{cfg_file}: field 'model' is missing")
        config, where = saved["model"], str(cfg_file)
    model = build_model(config, where)
    check_state(model, state, weights)
    model.load_state_dict(state)
    return model.to(map_location)


__all__ = ["read_history", "save_checkpoint", "load_checkpoint",
           "has_checkpoint", "load_model", "CHECKPOINT_JSON", "CONFIG_JSON"]
