"""OpenMP waiting policy set on import (throughput beside other busy processes)."""
import os
import subprocess
import sys

import pytest

_PROBE = "import os, hfkernels; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spincount(**env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    res = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def test_import_sets_a_short_spin_count():
    assert _spincount() == "1000"


@pytest.mark.parametrize("env, want", [({"GOMP_SPINCOUNT": "50000"}, "50000"), ({"OMP_WAIT_POLICY": "active"}, "None")])
def test_users_own_setting_wins(env, want):
    assert _spincount(**env) == want
