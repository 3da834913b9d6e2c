"""``torchrun --nproc_per_node=2 -m hfkernels train``: DistributedDataParallel over gloo on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hfkernels.guidance import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent


def test_two_cpu_processes_agree(tmp_path):
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    run = tmp_path / "run"
    env = {**os.environ, "HFK_SAVE_RANK_WEIGHTS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hfkernels", "train", "--device", "cpu", "--preset", "tiny", "--epochs", "2",
           "--batch-size", "2", "--synthetic-pairs", "8", "--synthetic-size", "48x64",
           "--metrics", "EN,Qabf", "--sheet-pairs", "1", "--no-baseline", "--no-progress", "--out", str(run)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "x 2 processes" in res.stdout

    w0, w1 = load_file(run / "rank0.safetensors"), load_file(run / "rank1.safetensors")
    assert w0.keys() == w1.keys() and len(w0) > 0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
    saved = ckpt.load_checkpoint(run)
    assert saved["epoch"] == 2
    for k in w0:
        assert torch.equal(saved["model"][k], w0[k])
    # the weights moved away from the initial ones (training happened in both processes)
    torch.manual_seed(0)
    from hfkernels.guidance.models import GuidanceUNet

    init = GuidanceUNet(preset="tiny").state_dict()
    assert not torch.equal(init["inc.0.weight"], w0["inc.0.weight"])
    hist = json.loads((run / "history.json").read_text())
    # each epoch covers the 8 pairs once: 2 batches of 2 in each of the 2 processes
    assert [r["images"] for r in hist] == [8, 8] and [r["batches"] for r in hist] == [2, 2]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
