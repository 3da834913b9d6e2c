"""Shared test set-up.

Without an NVIDIA GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET must be set
before triton is first imported, so it is set here, before any test module imports hfkernels.
"""
import os
import shutil

if not (os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import hfkernels  # noqa: E402
from hfkernels.io import data_root  # noqa: E402

torch.manual_seed(0)


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_device_pairs(op: str):
    """(backend, device) for every backend that runs ``op`` on a device present here."""
    from hfkernels.backends import get_backend

    out = []
    for d in devices():
        for b in hfkernels.available_backends(d):
            if op in get_backend(b).ops:
                out.append((b, d))
    return out


@pytest.fixture(scope="session")
def data_dir():
    root = data_root()
    if root is None:
        pytest.skip("real image pairs not found: set HFK_DATA or place them at ../shared/data")
    return root
