"""Backend registry: which implementations exist, where they can run, and how one is chosen.

A backend is a name (``"triton"``, ``"cuda"``, ``"cpu"``, ``"torch"``), a capability check per
device, a preference rank per device type, the dtypes it accepts and the tolerances its results
must meet against the reference. Op modules (``hfkernels/ops/*.py``) attach implementations to
a backend with :func:`implements`; the public API asks :func:`select` for one. Adding a backend
is one :func:`register_backend` call at the end of this module (:data:`BACKEND_NAMES` follows)
and its op modules in ``hfkernels/ops`` (found there by name).

Selection order: the ``backend=`` argument, else the ``HFK_BACKEND`` environment variable, else
the highest-ranked backend that is available on the tensor's device, implements the op and
accepts the dtype. Asking explicitly (``backend=``) for a backend that cannot run raises
:class:`BackendUnavailableError` with the reason (``TypeError`` for a dtype it does not take).

``HFK_BACKEND`` is a preference, not a demand: where the named backend cannot run the call (not
available on the device, op not implemented, dtype not accepted), the automatic choice is used
instead; :func:`env_preference` lists those fallbacks and their reasons (``hfkernels info``
prints them). Only a value that names no backend at all is an error (``ValueError`` naming the
variable).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

ENV_VAR = "HFK_BACKEND"

#: Every op a backend may implement. Op names are checked against this list where they are
#: used (:func:`implements` at import, :func:`select` at call), so a misspelt name fails loudly
#: at once instead of surfacing as "no backend implements" on some device later.
OPS = ("fuse", "laplacian_pyramid", "reconstruct", "ssim", "gradient_max", "lossterms")


def check_op(op: str) -> str:
    """``op`` if it is one of :data:`OPS`; ValueError naming the known ops otherwise."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; the ops are {', '.join(OPS)} (hfkernels.core.backends.OPS)")
    return op


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here (the message says why)."""


@dataclass
class Backend:
    name: str
    #: ``check(device) -> (ok, reason)``; reason explains a ``False``.
    check: Callable[[torch.device], tuple[bool, str]]
    #: preference per device type; higher wins. Missing device type = cannot run there.
    rank: dict[str, int]
    #: dtypes accepted per device type.
    dtypes: dict[str, tuple[torch.dtype, ...]]
    #: (atol, rtol) against the reference, per dtype, for forward values.
    tolerances: dict[torch.dtype, tuple[float, float]]
    ops: dict[str, Callable] = field(default_factory=dict)

    def available(self, device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type not in self.rank:
            return False, f"backend {self.name!r} does not run on {device.type} devices"
        return self.check(device)


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    _load_ops()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}"
        )
    return _REGISTRY[name]


def implements(op: str, *backends: str):
    """Decorator: register ``fn`` as the implementation of ``op`` for each named backend.
    Raises ValueError for an op not in :data:`OPS` or a backend not registered."""
    check_op(op)
    for b in backends:
        if b not in _REGISTRY:
            raise ValueError(f"implements({op!r}): unknown backend {b!r}; registered: {', '.join(_REGISTRY)}")

    def deco(fn):
        for b in backends:
            _REGISTRY[b].ops[op] = fn
        return fn

    return deco


_LOADED = False


def _load_ops():
    """Import the op modules once, so each registers its implementations."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from .. import ops  # noqa: F401  (registration side effects)


def _device_of(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def backend_status(device=None) -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every backend on ``device`` (default: cuda if present)."""
    _load_ops()
    dev = _device_of(device)
    return {n: b.available(dev) for n, b in _REGISTRY.items()}


def available_backends(device=None) -> list[str]:
    """Names of the backends that can run on ``device`` here, most preferred first."""
    dev = _device_of(device)
    names = [n for n, (ok, _) in backend_status(dev).items() if ok]
    return sorted(names, key=lambda n: -_REGISTRY[n].rank[dev.type])


def env_backend() -> str | None:
    """The backend named by ``HFK_BACKEND`` (None when unset or empty); ValueError naming the
    variable when it names no backend."""
    name = os.environ.get(ENV_VAR) or None
    if name is not None and name not in BACKEND_NAMES:
        raise ValueError(
            f"environment variable {ENV_VAR}={name!r} names no backend; set it to one of "
            f"{', '.join(BACKEND_NAMES)}, or unset it for the automatic choice"
        )
    return name


def _cannot(name: str, op: str, dev: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` cannot run ``op`` for ``dtype`` on ``dev`` (None if it can)."""
    b = _REGISTRY[name]
    ok, why = b.available(dev)
    if not ok:
        return f"{name!r} cannot run on {dev}: {why}"
    if op not in b.ops:
        return f"{name!r} does not implement {op!r}"
    if dtype not in b.dtypes.get(dev.type, ()):
        ok_dt = ", ".join(str(d).replace("torch.", "") for d in b.dtypes.get(dev.type, ()))
        return f"{name!r} takes only {ok_dt} on {dev.type}"
    return None


def _automatic(op: str, dev: torch.device, dtype: torch.dtype) -> str | None:
    for n in available_backends(dev):
        b = _REGISTRY[n]
        if op in b.ops and dtype in b.dtypes.get(dev.type, ()):
            return n
    return None


_log = logging.getLogger(__name__)
_LOGGED: set = set()


def select(op: str, device, dtype: torch.dtype, backend: str | None = None) -> tuple[str, Callable]:
    """Return ``(backend_name, implementation)`` of ``op`` for tensors on ``device`` of ``dtype``."""
    check_op(op)
    _load_ops()
    dev = torch.device(device)
    if backend is not None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
        b = get_backend(backend)
        ok, why = b.available(dev)
        if not ok:
            raise BackendUnavailableError(f"backend={backend!r} cannot run on {dev}: {why}")
        if op not in b.ops:
            raise BackendUnavailableError(f"backend={backend!r} does not implement {op!r}")
        if dtype not in b.dtypes.get(dev.type, ()):
            ok_dt = ", ".join(str(d).replace("torch.", "") for d in b.dtypes.get(dev.type, ()))
            raise TypeError(
                f"backend={backend!r} does not support dtype {dtype} on {dev.type} (supported: {ok_dt})"
            )
        return backend, b.ops[op]
    name = env_backend()
    if name is not None:
        why = _cannot(name, op, dev, dtype)
        if why is None:
            return name, _REGISTRY[name].ops[op]
        key = (name, op, dev.type, dtype)
        if key not in _LOGGED:  # once per case: this runs on every call
            _LOGGED.add(key)
            _log.info("%s=%s: %s; using the automatic choice for %s", ENV_VAR, name, why, op)
    n = _automatic(op, dev, dtype)
    if n is None:
        raise BackendUnavailableError(f"no backend implements {op!r} for {dtype} on {dev}")
    return n, _REGISTRY[n].ops[op]


#: the dtypes :func:`env_preference` reports on
REPORT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def env_preference(device=None) -> dict | None:
    """What ``HFK_BACKEND`` does on ``device`` (default: cuda if present).

    None when it is unset; else a dict with ``"name"`` (the value), ``"error"`` (why the value
    is invalid, or None), ``"unavailable"`` (why the backend cannot run on the device at all,
    or None) and ``"fallbacks"``: ``[(op, dtypes, used, reason), ...]`` for the ops and dtypes
    (of :data:`REPORT_DTYPES`) that the backend cannot run and that go to the automatic choice
    ``used`` instead (None: no backend runs them).
    """
    _load_ops()
    raw = os.environ.get(ENV_VAR) or None
    if raw is None:
        return None
    out = {"name": raw, "error": None, "unavailable": None, "fallbacks": []}
    try:
        name = env_backend()
    except ValueError as e:
        out["error"] = str(e)
        return out
    dev = _device_of(device)
    ok, why = _REGISTRY[name].available(dev)
    if not ok:
        out["unavailable"] = f"{name!r} cannot run on {dev}: {why}"
    groups: dict = {}
    for op in sorted({op for b in _REGISTRY.values() for op in b.ops}):
        for dt in REPORT_DTYPES:
            reason = _cannot(name, op, dev, dt)
            if reason is not None:
                groups.setdefault((op, _automatic(op, dev, dt), reason), []).append(dt)
    out["fallbacks"] = [(op, tuple(dts), used, reason) for (op, used, reason), dts in groups.items()]
    return out


def cpu_bf16() -> tuple[bool, str]:
    """``(native, description)``: whether this CPU computes bfloat16 in hardware (AVX512-BF16 or
    AMX). Without it, bf16 autocast on the CPU is emulated and far slower than float32 (a
    17 M-parameter U-Net sat for minutes per call on an AVX2-only EPYC)."""
    cap = torch.backends.cpu.get_cpu_capability()
    probe = getattr(torch, "cpu", None)
    native = any(bool(getattr(probe, f, lambda: False)()) for f in ("_is_avx512_bf16_supported",
                                                                   "_is_amx_tile_supported"))
    return native, f"{cap}, {'with' if native else 'without'} native bfloat16 (AVX512-BF16/AMX)"


def tolerance(name: str, dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) that backend ``name`` promises against the reference for ``dtype``."""
    return get_backend(name).tolerances[dtype]


# ---------------------------------------------------------------------------------------------
# Capability checks


def _always(device):
    return True, "pure PyTorch: runs wherever torch does"


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_check(device):
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return False, f"triton is not importable ({type(e).__name__}: {e})"
    if device.type == "cpu":
        if triton_interpreting():
            return True, "Triton interpreter (TRITON_INTERPRET=1): slow, for testing"
        return False, "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing triton"
    if not torch.cuda.is_available():
        return False, "torch has no CUDA device"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 7:
        return False, f"GPU compute capability {major}.x is below 7.0"
    return True, "Triton on CUDA"


def _ext_check(device):
    from . import ext as _ext

    if _ext.ERROR is not None:
        return False, f"the C++ extension hfkernels._C is not built ({_ext.ERROR})"
    if device.type == "cuda":
        if not _ext.HAS_CUDA:
            return False, "hfkernels._C was built without CUDA kernels"
        if not torch.cuda.is_available():
            return False, "torch has no CUDA device"
        return True, "C++/CUDA extension"
    return True, "C++ extension (at::parallel_for, vectorised)"


_F32_64 = (torch.float32, torch.float64)
_ALL = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_GPU = (torch.float32, torch.float16, torch.bfloat16)
_TOL_EXACT = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

# Registration order is the order of BACKEND_NAMES (and of `hfkernels info`).
# The interpreter is correct but slow: on CPU it ranks last.
# Triton's kernels compute in float64 for float64 inputs (ACC64), on a GPU as in the interpreter.
register_backend(Backend("triton", _triton_check, {"cuda": 30, "cpu": -1}, {"cpu": _ALL, "cuda": _ALL}, _TOL_EXACT))
register_backend(Backend("cuda", _ext_check, {"cuda": 20}, {"cuda": _GPU}, _TOL_EXACT))
register_backend(Backend("cpu", _ext_check, {"cpu": 20}, {"cpu": _F32_64}, _TOL_EXACT))
register_backend(Backend("torch", _always, {"cuda": 0, "cpu": 10}, {"cpu": _ALL, "cuda": _ALL}, _TOL_EXACT))

#: every registered backend's name, in registration order
BACKEND_NAMES = tuple(_REGISTRY)
