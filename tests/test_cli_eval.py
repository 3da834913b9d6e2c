"""`hfkernels eval`: per-image rows and means, JSON/CSV, on-the-fly fusions, the baseline table,
and clear errors for unmatched, unreadable and mis-sized files."""
import csv
import json

import pytest
import torch

import hfkernels
from hfkernels.cli import main
from hfkernels.io import read_image, write_image
from hfkernels.metrics import evaluate

H, W = 48, 56


def make_dataset(root, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    (root / "vi").mkdir(parents=True)
    (root / "ir").mkdir()
    for i in range(n):
        write_image(root / "vi" / f"{i:02d}.png", torch.rand(3, H, W, generator=g))
        write_image(root / "ir" / f"{i:02d}.png", torch.rand(1, H, W, generator=g))
    return root


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "set")


def pair(root, name):
    return read_image(root / "vi" / name, "rgb")[None], read_image(root / "ir" / name, "gray")[None]


def test_fused_folder_json_csv(data, tmp_path, capsys):
    out = tmp_path / "fused"
    for p in sorted((data / "vi").iterdir()):
        vis, ir = pair(data, p.name)
        write_image(out / p.name, (0.3 * vis + 0.7 * ir)[0])
    js, cs = tmp_path / "m.json", tmp_path / "m.csv"
    rc = main(["eval", "--vis", str(data / "vi"), "--ir", str(data / "ir"), "--fused", str(out),
               "--json", str(js), "--csv", str(cs), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "00.png" in printed and "mean" in printed and "Qabf" in printed
    res = json.loads(js.read_text())
    assert res["protocol"] == "paper" and set(res["per_image"]) == {"00.png", "01.png", "02.png"}
    vis, ir = pair(data, "01.png")
    want = evaluate(vis, ir, read_image(out / "01.png", "keep")[None])
    for k, v in want.items():
        assert res["per_image"]["01.png"][k] == pytest.approx(float(v[0]), rel=1e-12, nan_ok=True)
    assert res["mean"]["EN"] == pytest.approx(sum(r["EN"] for r in res["per_image"].values()) / 3)
    rows = list(csv.reader(cs.open()))
    assert rows[0][0] == "image" and rows[-1][0] == "mean" and len(rows) == 5
    assert float(rows[2][rows[0].index("SSIM")]) == pytest.approx(res["per_image"]["01.png"]["SSIM"])


def blend_on_luma(vis, ir):
    """The per-pixel blend on the default (colour) path: blend the luma, keep Cb/Cr."""
    from hfkernels.core.reference import rgb_to_ycbcr, ycbcr_to_rgb

    ycc = rgb_to_ycbcr(vis)
    y = hfkernels.heuristic_blend(ycc[:, :1], ir)
    return ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], 1)).clamp(0, 1)


@pytest.mark.parametrize("method", ["vis", "ir", "laplacian", "blend", "heuristic", "0.25"])
def test_methods(data, tmp_path, method):
    js = tmp_path / "m.json"
    rc = main(["eval", "--data", str(data), "--method", method, "--metrics", "EN,SSIM,Qabf",
               "--json", str(js), "--quiet", "--device", "cpu"])
    assert rc == 0
    res = json.loads(js.read_text())
    assert res["metrics"] == ["EN", "SSIM", "Qabf"]
    vis, ir = pair(data, "02.png")
    fused = {
        "vis": vis,
        "ir": ir,
        "laplacian": hfkernels.fuse(vis, ir, hfkernels.heuristic_guidance(vis, ir)).clamp(0, 1),
        "blend": blend_on_luma(vis, ir),
        "heuristic": hfkernels.fuse_color(vis, ir, hfkernels.heuristic_guidance(vis, ir)),
        "0.25": hfkernels.fuse_color(vis, ir, torch.full_like(ir, 0.25)),
    }[method]
    want = evaluate(vis, ir, fused, "EN,SSIM,Qabf")
    for k, v in want.items():
        assert res["per_image"]["02.png"][k] == pytest.approx(float(v[0]), rel=1e-9)


def test_baselines_table(data, tmp_path, capsys):
    js = tmp_path / "b.json"
    assert main(["eval", "--data", str(data), "--baselines", "--json", str(js), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for label in ("visible as fused", "infrared as fused", "heuristic guidance",
                  "heuristic per-pixel blend", "mu = 0.5"):
        assert label in out
    for m in ("EN", "MI", "VIF", "Qabf", "SSIM", "SD"):
        assert m in out.splitlines()[1]
    assert "fusion path of every guided row: color" in out
    res = json.loads(js.read_text())
    assert res["path"] == "color"
    vis, ir = pair(data, "00.png")
    assert res["per_image"]["visible as fused"]["00.png"]["EN"] == pytest.approx(float(evaluate(vis, ir, vis, "EN")["EN"][0]))
    # every guided row goes through fuse_color: the heuristic row is `--method heuristic`'s
    want = evaluate(vis, ir, hfkernels.fuse_color(vis, ir, hfkernels.heuristic_guidance(vis, ir)), "EN")
    assert res["per_image"]["heuristic guidance"]["00.png"]["EN"] == pytest.approx(float(want["EN"][0]), rel=1e-9)


def test_baselines_rgb_path_and_no_mixed_paths(data, tmp_path, capsys):
    js = tmp_path / "b.json"
    assert main(["eval", "--data", str(data), "--baselines", "--path", "rgb", "--metrics", "EN",
                 "--json", str(js), "--device", "cpu"]) == 0
    assert "fusion path of every guided row: rgb" in capsys.readouterr().out
    res = json.loads(js.read_text())
    vis, ir = pair(data, "00.png")
    want = evaluate(vis, ir, hfkernels.fuse(vis, ir, hfkernels.heuristic_guidance(vis, ir)).clamp(0, 1), "EN")
    assert res["per_image"]["heuristic guidance"]["00.png"]["EN"] == pytest.approx(float(want["EN"][0]), rel=1e-9)
    # the paper's Laplacian baseline by name is the rgb path: beside colour rows it is refused
    err = err_of(capsys, ["eval", "--data", str(data), "--method", "laplacian,heuristic"])
    assert "mix fusion paths" in err and "--path" in err


def test_terminal_shows_the_papers_rows(tmp_path, capsys):
    data = make_dataset(tmp_path / "RoadScene")
    assert main(["eval", "--data", str(data), "--baselines", "--metrics", "EN,VIF", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "paper: 2 epochs on MSRS, zero-shot" in out and "published" in out and "0-2" in out


@pytest.mark.parametrize("layout", ["visible_infrared", "harvard_root", "harvard_set", "msrs"])
def test_data_reads_every_layout_train_reads(tmp_path, layout, capsys):
    """eval --data goes through the trainer's layout reader (find_sets, test split)."""
    from hfkernels.io.datasets import find_sets

    if layout == "visible_infrared":
        root = tmp_path / "set"
        make_dataset(root)
        (root / "vi").rename(root / "visible")
        (root / "ir").rename(root / "infrared")
    elif layout == "harvard_root":
        root = tmp_path / "Harvard"
        for a in ("CT", "PET"):
            make_dataset(root / f"{a}-MRI", n=2)
            (root / f"{a}-MRI" / "vi").rename(root / f"{a}-MRI" / a)
            (root / f"{a}-MRI" / "ir").rename(root / f"{a}-MRI" / "MRI")
    elif layout == "harvard_set":
        root = tmp_path / "CT-MRI"
        make_dataset(root, n=2)
        (root / "vi").rename(root / "CT")
        (root / "ir").rename(root / "MRI")
    else:
        root = tmp_path / "MSRS"
        make_dataset(root / "train", n=1)
        make_dataset(root / "test", n=2, seed=1)
    js = tmp_path / "m.json"
    assert main(["eval", "--data", str(root), "--method", "vis", "--metrics", "EN", "--json", str(js),
                 "--device", "cpu", "--quiet"]) == 0
    res = json.loads(js.read_text())
    sets = find_sets(root, split="test")
    if len(sets) > 1:
        assert set(res["sets"]) == {s.name for s in sets} == {"Harvard/CT-MRI", "Harvard/PET-MRI"}
        assert all(len(r["per_image"]) == 2 for r in res["sets"].values())
    else:
        assert len(res["per_image"]) == len(list(sets[0].vis_dir.iterdir()))
    if layout == "msrs":
        assert len(res["per_image"]) == 2  # the test split, not train


def test_standard_protocol_and_single_files(data, tmp_path):
    js = tmp_path / "s.json"
    v, i = data / "vi" / "00.png", data / "ir" / "00.png"
    assert main(["eval", "--vis", str(v), "--ir", str(i), "--fused", str(v), "--protocol", "standard",
                 "--json", str(js), "--device", "cpu"]) == 0
    res = json.loads(js.read_text())
    vis, ir = pair(data, "00.png")
    want = evaluate(vis, ir, read_image(v, "keep")[None], protocol="standard")
    assert res["protocol"] == "standard"
    assert res["per_image"]["00.png"]["SSIM"] == pytest.approx(float(want["SSIM"][0]))


def err_of(capsys, argv):
    rc = main(argv)
    assert rc == 2
    return capsys.readouterr().err


def test_unmatched_files_listed(data, capsys):
    write_image(data / "vi" / "zz_extra.png", torch.rand(3, H, W))
    write_image(data / "ir" / "yy_extra.png", torch.rand(1, H, W))
    err = err_of(capsys, ["eval", "--data", str(data), "--method", "vis"])
    assert "zz_extra.png" in err and "yy_extra.png" in err and "no partner" in err


def test_unmatched_fused_listed(data, tmp_path, capsys):
    out = tmp_path / "fused"
    write_image(out / "00.png", torch.rand(3, H, W))
    err = err_of(capsys, ["eval", "--data", str(data), "--fused", str(out)])
    assert "01.png" in err and "02.png" in err


def test_unreadable_and_missized_files_named(data, capsys):
    (data / "vi" / "01.png").write_bytes(b"not a png")
    write_image(data / "ir" / "02.png", torch.rand(1, H, W - 1))
    err = err_of(capsys, ["eval", "--data", str(data), "--method", "vis"])
    assert "2 of 3 pair(s)" in err
    assert "01.png" in err and "cannot read" in err
    assert "02.png" in err and f"{W}x{H}" in err and f"{W - 1}x{H}" in err


def test_user_errors(data, tmp_path, capsys):
    assert "--method" in err_of(capsys, ["eval", "--data", str(data), "--method", "magic"])
    assert "[0, 1]" in err_of(capsys, ["eval", "--data", str(data), "--method", "1.5"])
    assert "BOGUS" in err_of(capsys, ["eval", "--data", str(data), "--method", "vis", "--metrics", "EN,BOGUS"])
    assert "does not exist" in err_of(capsys, ["eval", "--vis", str(tmp_path / "nope"), "--ir", str(data / "ir"), "--method", "vis"])
    (tmp_path / "empty").mkdir()
    assert "no image pairs" in err_of(capsys, ["eval", "--data", str(tmp_path / "empty"), "--method", "vis"])
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(data)])  # no fusion source given


def test_checkpoint(data, tmp_path):
    from hfkernels.guidance import load_guidance
    from hfkernels.guidance.checkpoint import save_checkpoint
    from hfkernels.guidance.models import GuidanceUNet

    torch.manual_seed(0)
    run = tmp_path / "run"
    save_checkpoint(run, GuidanceUNet(preset="tiny"), None, epoch=1)
    js = tmp_path / "c.json"
    assert main(["eval", "--data", str(data), "--checkpoint", str(run), "--metrics", "EN,Qabf",
                 "--json", str(js), "--device", "cpu"]) == 0
    res = json.loads(js.read_text())
    vis, ir = pair(data, "01.png")
    with torch.no_grad():
        fused = hfkernels.fuse_color(vis, ir, load_guidance(run, device="cpu")(vis, ir).clamp(0, 1))
    want = evaluate(vis, ir, fused, "EN,Qabf")
    assert res["source"] == f"checkpoint {run}"
    assert res["per_image"]["01.png"]["Qabf"] == pytest.approx(float(want["Qabf"][0]), rel=1e-6)
