"""GPU resources checked at compile time (no GPU needed): no hot kernel spills registers on sm_90.

Every Triton kernel of fuse, ssim and gradient_max is compiled for sm_90 at the launch
configurations of the paper's shapes (fuse (16,1,480,640), losses (16,3,480,640); float32 and
bfloat16), and every CUDA kernel in csrc/cuda with ``nvcc -Xptxas -v``, by
``benchmarks/resources.py`` in a fresh process without the interpreter. Each part is skipped
(with the reason) where its compiler is missing.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "resources.py")


def _module():
    spec = importlib.util.spec_from_file_location("hfk_resources", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("resources") / "res.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, SCRIPT, "--quiet", "--json", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_no_register_spills_in_hot_kernels(report):
    if len(report["skipped"]) == 2:
        pytest.skip("; ".join(f"{k}: {v}" for k, v in report["skipped"].items()))
    rows = report["rows"]
    spills = [f"{r['source']} {r['kernel']} [{r['variant']}, {r['dtype']}]: {r['spill_stores']} B stored, "
              f"{r['spill_loads']} B loaded" for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spills, "register spills:\n" + "\n".join(spills)
    if "triton" not in report["skipped"]:
        names = {r["kernel"] for r in rows if r["source"] == "triton"}
        for k in ("_down_kernel", "_up_blend_kernel", "_up_adjoint_kernel", "_down_adjoint_kernel",
                  "_final_kernel", "_ssim_h_kernel", "_ssim_v_kernel", "_rows_filter_kernel",
                  "_ssim_hT_kernel", "_gmax_fwd_kernel", "_gmax_coef_kernel", "_gmax_adjoint_kernel"):
            assert k in names, f"{k} was not compiled"
    if "cuda" not in report["skipped"]:
        assert any(r["source"] == "cuda" and r["kernel"].startswith("fuse_kernels.cu:") for r in rows)
        assert any(r["source"] == "cuda" and r["kernel"].startswith("loss_kernels.cu:") for r in rows)


@pytest.mark.slow
def test_fuse_triton_kernels_stay_under_128_registers(report):
    # at 128+ registers a 4-warp block gets at most 16 of an SM's 64 warps: a stencil that
    # waits on memory needs more in flight
    if "triton" in report["skipped"]:
        pytest.skip(report["skipped"]["triton"])
    fuse = {"_down_kernel", "_up_blend_kernel", "_up_adjoint_kernel", "_down_adjoint_kernel", "_final_kernel"}
    heavy = [f"{r['kernel']} [{r['variant']}, {r['dtype']}]: {r['regs']}" for r in report["rows"]
             if r["source"] == "triton" and r["kernel"] in fuse and r["regs"] >= 128]
    assert not heavy, "fuse kernels at >= 128 registers:\n" + "\n".join(heavy)


def test_occupancy_sm90():
    occ = _module().occupancy
    # 255 registers: 8192 per warp, 2 warps per sub-partition -> 8 warps, 2 blocks of 4 warps
    assert occ(255, 128) == dict(blocks_per_sm=2, warps_per_sm=8, occupancy=0.125, limited_by="regs")
    assert occ(48, 256)["warps_per_sm"] == 40  # 1536 per warp -> 10 per sub-partition
    assert occ(32, 256) == dict(blocks_per_sm=8, warps_per_sm=64, occupancy=1.0, limited_by="regs")
    assert occ(16, 32)["blocks_per_sm"] == 32 and occ(16, 32)["limited_by"] == "blocks"  # 1-warp blocks
    assert occ(32, 128, smem=100 * 1024)["blocks_per_sm"] == 2  # 101 KB a block in 228 KB
    with pytest.raises(ValueError, match="regs"):
        occ(0, 128)


def test_parse_ptxas_log():
    log = """ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 2048 bytes smem, 360 bytes cmem[0]
ptxas info    : Compiling entry function 'g' for 'sm_90'
ptxas info    : Function properties for g
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 384 bytes cmem[0]
"""
    got = _module().parse_ptxas(log)
    assert got == {
        "_Z1kPf": dict(regs=255, spill_stores=12, spill_loads=16, stack=8, smem=2048),
        "g": dict(regs=40, spill_stores=0, spill_loads=0, stack=0, smem=0),
    }
