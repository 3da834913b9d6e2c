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

# Hypothesis profiles of the fuzz suite (tests/test_fuzz.py), loaded here so that
# `--hypothesis-profile=NAME` (applied after this file is imported) can override the default:
# - "ci" (default): few examples, derandomized, so the file takes about a minute on 2 cores and a
#   run is reproducible;
# - "long": 10x the examples and fresh random draws, for a local run of about ten minutes.
# max_examples is the unit each fuzz test scales by its cost (test_fuzz.examples).
try:
    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", max_examples=10, derandomize=True, **_common)
    settings.register_profile("long", max_examples=100, **_common)
    settings.load_profile("ci")
except ImportError:  # the fuzz suite skips itself
    pass


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_device_pairs(op: str):
    """(backend, device) for every backend that runs ``op`` on a device present here."""
    from hfkernels.core.backends import get_backend

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
        pytest.skip("real image pairs not found: set HFK_DATA, or place them in shared/data next to the checkout")
    return root


#: {profile name, {case: [valid, invalid]}} of the fuzz tests (tests/test_fuzz.py), for the summary
FUZZ_COUNTS = pytest.StashKey[tuple]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fuzz tests' example counts, after the progress dots (printed while the tests run, the
    table landed in the middle of them)."""
    got = config.stash.get(FUZZ_COUNTS, None)
    if not got:
        return
    profile, counts = got
    terminalreporter.write_sep("-", f"fuzz examples (profile {profile}): valid + invalid calls")
    for name, (ok, bad) in counts.items():
        terminalreporter.write_line(f"  {name:24} {ok:6} + {bad:5}")
