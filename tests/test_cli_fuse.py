"""`hfkernels info` and `hfkernels fuse` end to end."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import hfkernels as hk
from hfkernels.cli import main
from hfkernels.io import read_image


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "hfkernels" in out and "torch" in out
    for b in ("triton", "cuda", "cpu", "torch"):
        assert b in out


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "hfkernels", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and hk.__version__ in r.stdout


def _pair(tmp_path, name="p.png", h=23, w=31, rgb=True):
    rng = np.random.default_rng(0)
    vi, ir = tmp_path / "vi", tmp_path / "ir"
    vi.mkdir(exist_ok=True)
    ir.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)).save(vi / name)
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(ir / name)
    return vi / name, ir / name


def test_fuse_single_constant_mu_matches_api(tmp_path):
    v, i = _pair(tmp_path)
    out = tmp_path / "o.png"
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(out), "--mu", "0.25", "--save-mu"]) == 0
    vis, ir = read_image(v)[None], read_image(i, "gray")[None]
    want = hk.fuse_color(vis, ir, torch.full_like(ir, 0.25))
    got = read_image(out)[None]
    assert (got - want).abs().max() <= 0.5 / 255 + 1e-6
    mu = read_image(tmp_path / "mu" / "o.png")
    assert torch.allclose(mu, torch.full_like(mu, 64 / 255))


def test_fuse_mu_zero_returns_visible(tmp_path):
    v, i = _pair(tmp_path, rgb=False)
    out = tmp_path / "o.png"
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(out), "--mu", "0"]) == 0
    assert torch.allclose(read_image(out), read_image(v), atol=0.5 / 255 + 1e-6)


def test_swapped_sources_get_a_hint(tmp_path, capsys):
    v, i = _pair(tmp_path)  # vis in colour, ir gray: as it should be
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(tmp_path / "a.png"), "--mu", "0.5"]) == 0
    assert "swapped" not in capsys.readouterr().err
    assert main(["fuse", "--vis", str(i), "--ir", str(v), "--out", str(tmp_path / "b.png"), "--mu", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "were --vis and --ir swapped?" in err and str(i) in err
    # a gray image stored as RGB (TNO) is not colour
    Image.open(i).convert("RGB").save(tmp_path / "gray_rgb.png")
    assert main(["fuse", "--vis", str(i), "--ir", str(tmp_path / "gray_rgb.png"), "--out", str(tmp_path / "c.png"),
                 "--mu", "0.5"]) == 0
    assert "swapped" not in capsys.readouterr().err


def test_fuse_folders_and_unmatched(tmp_path, capsys):
    _pair(tmp_path, "a.png")
    _pair(tmp_path, "b.png", h=10, w=12)
    out = tmp_path / "out"
    assert main(["fuse", "--vis", str(tmp_path / "vi"), "--ir", str(tmp_path / "ir"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "vi" / "lonely.png")
    assert main(["fuse", "--vis", str(tmp_path / "vi"), "--ir", str(tmp_path / "ir"), "--out", str(out)]) == 2
    assert "lonely.png" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--mu", "1.5"], "--mu constant must lie in"),
        (["--mu", "hot"], "--mu must be 'heuristic' or a number"),
    ],
)
def test_fuse_bad_mu(tmp_path, capsys, args, msg):
    v, i = _pair(tmp_path)
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(tmp_path / "o.png"), *args]) == 2
    assert msg in capsys.readouterr().err


def test_fuse_missing_and_mismatched(tmp_path, capsys):
    v, i = _pair(tmp_path)
    assert main(["fuse", "--vis", str(tmp_path / "nope.png"), "--ir", str(i), "--out", str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(i)
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(tmp_path / "o.png")]) == 2
    assert "size mismatch" in capsys.readouterr().err


@pytest.mark.data
def test_fuse_real_roadscene_pair(tmp_path, data_dir):
    vis = sorted((data_dir / "RoadScene" / "vi").iterdir())[0]
    ir = data_dir / "RoadScene" / "ir" / vis.name
    out = tmp_path / "fused.png"
    r = subprocess.run(
        [sys.executable, "-m", "hfkernels", "fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(out), "--save-mu"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    fused, v, i = read_image(out), read_image(vis), read_image(ir, "gray")
    assert fused.shape == v.shape and fused.shape[0] == 3
    # a real fusion: it differs from both sources, and lies between them on average
    assert (fused - v).abs().mean() > 0.01 and (fused.mean(0) - i[0]).abs().mean() > 0.01
    assert (tmp_path / "mu" / "fused.png").exists()


@pytest.mark.data
def test_fuse_real_folder_subset(tmp_path, data_dir):
    # two MSRS test pairs through the folder mode
    vi, ir = tmp_path / "vi", tmp_path / "ir"
    vi.mkdir()
    ir.mkdir()
    for p in sorted((data_dir / "MSRS" / "test" / "vi").iterdir())[:2]:
        (vi / p.name).symlink_to(p)
        (ir / p.name).symlink_to(data_dir / "MSRS" / "test" / "ir" / p.name)
    assert main(["fuse", "--vis", str(vi), "--ir", str(ir), "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").iterdir())) == 2
