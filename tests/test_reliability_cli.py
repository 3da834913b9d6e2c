"""What a careless or hostile user of the command line (and the scripts) must not be able to do:
destroy a source image or an existing file, get a traceback for a mistake of theirs, write JSON
that is not JSON, or lose a run folder's permissions; and FusionLoss's early argument checks."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hfkernels as hk
from hfkernels.cli import CLIError, main
from hfkernels.guidance import checkpoint as ckpt
from hfkernels.io import (
    OutputError,
    atomic_write_bytes,
    atomic_write_json,
    check_outputs,
)

REPO = Path(__file__).resolve().parent.parent


def _png(path, h=24, w=30, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, channels) if channels == 3 else (h, w), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def pair(tmp_path):
    return _png(tmp_path / "vis.png"), _png(tmp_path / "ir.png", channels=1, seed=1)


@pytest.fixture
def folders(tmp_path):
    d = tmp_path / "D"
    for i, n in enumerate(("a.png", "b.png")):
        _png(d / "vi" / n, seed=i)
        _png(d / "ir" / n, channels=1, seed=10 + i)
    return d


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _fail(capsys, argv, *fragments):
    """Run the CLI, expect exit 2 with one ``error:`` line holding every fragment."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


# --------------------------------------------------------------------------------------------
# no output may replace an input; existing outputs only with --overwrite


@pytest.mark.parametrize("out", [".", "vis.png", "ir.png", "sub/../vis.png"])
def test_fuse_refuses_to_write_over_a_source(pair, tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    _fail(capsys, ["fuse", "--vis", "vis.png", "--ir", "ir.png", "--out", out, "--overwrite"], "is the input")
    assert _snapshot(tmp_path) == before


def test_fuse_refuses_links_to_a_source(pair, tmp_path, capsys):
    vis, ir = pair
    before = _snapshot(tmp_path)
    (tmp_path / "sym.png").symlink_to(vis)
    os.link(vis, tmp_path / "hard.png")
    for out in ("sym.png", "hard.png"):
        _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / out), "--overwrite"],
              "input")
    assert vis.read_bytes() == before[vis] and ir.read_bytes() == before[ir]


@pytest.mark.parametrize("out", ["D/vi", "D/vi/deeper", "D/ir"])
def test_fuse_folder_run_refuses_outputs_inside_an_input_folder(folders, tmp_path, capsys, out):
    before = _snapshot(folders)
    _fail(capsys, ["fuse", "--vis", str(folders / "vi"), "--ir", str(folders / "ir"), "--out", str(tmp_path / out),
                   "--save-mu", "--overwrite"], "refusing to write over an input")
    assert _snapshot(folders) == before


def test_fuse_save_mu_may_not_land_on_a_source(tmp_path, capsys):
    # the guidance map of x/out.png goes to x/mu/out.png: here that is the visible image itself
    vis = _png(tmp_path / "mu" / "out.png")
    ir = _png(tmp_path / "ir.png", channels=1)
    before = vis.read_bytes()
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "out.png"), "--save-mu",
                   "--overwrite"], "--save-mu", "is the input")
    assert vis.read_bytes() == before and not (tmp_path / "out.png").exists()


def test_fuse_existing_output_needs_overwrite(pair, tmp_path, capsys):
    vis, ir = pair
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(out)], "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert main(["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(out), "--mu", "0.5", "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_fuse_folder_run_checks_every_output_before_writing_any(folders, tmp_path, capsys):
    out = tmp_path / "out"
    _png(out / "b.png", seed=5)
    before = (out / "b.png").read_bytes()
    _fail(capsys, ["fuse", "--vis", str(folders / "vi"), "--ir", str(folders / "ir"), "--out", str(out)],
          "b.png", "already exists")
    assert sorted(p.name for p in out.iterdir()) == ["b.png"] and (out / "b.png").read_bytes() == before


def test_fuse_two_inputs_with_one_output_name(folders, tmp_path, capsys):
    # a.png and a.jpg both pair up and would both be written as a.png
    Image.open(folders / "vi" / "a.png").save(folders / "vi" / "a.jpg")
    Image.open(folders / "ir" / "a.png").save(folders / "ir" / "a.jpg")
    _fail(capsys, ["fuse", "--vis", str(folders / "vi"), "--ir", str(folders / "ir"), "--out", str(tmp_path / "o")],
          "twice")
    assert not (tmp_path / "o").exists()


def test_fuse_output_must_be_an_image_name(pair, tmp_path, capsys):
    vis, ir = pair
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.txt")], "not an image")


def test_fuse_never_replaces_a_checkpoint_file(pair, tmp_path, capsys):
    from hfkernels.guidance.models import GuidanceUNet

    run = tmp_path / "run"
    ckpt.save_checkpoint(run, GuidanceUNet(preset="tiny"), None, epoch=1)
    weights = run / "model-e0001.safetensors"
    before = weights.read_bytes()
    vis, ir = pair
    # an output with an image name that is a link to the run's commit record
    target = run / "checkpoint.png"
    target.symlink_to(run / "checkpoint.json")
    _fail(capsys, ["fuse", "--checkpoint", str(run), "--vis", str(vis), "--ir", str(ir), "--out", str(target),
                   "--overwrite", "--device", "cpu"], "checkpoint.json")
    assert weights.read_bytes() == before and json.loads((run / "checkpoint.json").read_text())["epoch"] == 1


def _eval_set(root, n=2, h=48, w=56):
    g = torch.Generator().manual_seed(0)
    from hfkernels.io import write_image

    for i in range(n):
        write_image(root / "vi" / f"{i}.png", torch.rand(3, h, w, generator=g))
        write_image(root / "ir" / f"{i}.png", torch.rand(1, h, w, generator=g))
    return root


def test_eval_outputs_follow_the_rule(tmp_path, capsys):
    d = _eval_set(tmp_path / "set")
    base = ["eval", "--data", str(d), "--method", "vis", "--metrics", "EN", "--device", "cpu"]
    before = _snapshot(d)
    _fail(capsys, [*base, "--json", str(d / "vi" / "0.png"), "--overwrite"], "is the input")
    _fail(capsys, [*base, "--csv", str(d / "ir" / "new.csv")], "lies inside the input folder")
    _fail(capsys, [*base, "--json", str(tmp_path / "m"), "--csv", str(tmp_path / "m")], "twice")
    assert _snapshot(d) == before
    js = tmp_path / "m.json"
    js.write_text("keep")
    _fail(capsys, [*base, "--json", str(js)], "already exists")
    assert js.read_text() == "keep"
    assert main([*base, "--json", str(js), "--overwrite"]) == 0
    assert json.loads(js.read_text())["metrics"] == ["EN"]


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_eval_json_to_a_stream(tmp_path):
    # a device is written through, never replaced by a file (an atomic rename would do that)
    # (through a link in tmp_path, so that a failure replaces the link, not /dev/null)
    d = _eval_set(tmp_path / "set", n=1)
    out = tmp_path / "null.json"
    out.symlink_to("/dev/null")
    for extra in ([], ["--overwrite"]):
        assert main(["eval", "--data", str(d), "--method", "vis", "--metrics", "EN", "--device", "cpu",
                     "--json", str(out), *extra]) == 0
        assert out.is_symlink() and stat.S_ISCHR(os.stat(out).st_mode)


def test_bench_plot_follows_the_rule(tmp_path, capsys):
    res = tmp_path / "r.json"
    res.write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"median": 0.01}}]}))
    before = res.read_bytes()
    _fail(capsys, ["bench", str(res), "--plot", str(res), "--overwrite"], "is the input")
    assert res.read_bytes() == before
    plot = tmp_path / "p.png"
    plot.write_bytes(b"old")
    _fail(capsys, ["bench", str(res), "--plot", str(plot)], "already exists")
    assert plot.read_bytes() == b"old"


def test_train_run_folder_rules(folders, tmp_path, capsys):
    from hfkernels.cli.train import check_run_folder
    from hfkernels.training.loop import TrainConfig

    before = _snapshot(folders)
    _fail(capsys, ["train", "--data", str(folders), "--out", str(folders), "--overwrite"], "is the input")
    _fail(capsys, ["train", "--data", f"{folders / 'vi'},{folders / 'ir'}", "--out", str(folders / "vi" / "run")],
          "lies inside")
    # someone else's folder: refused unless --overwrite (even with --resume: there is no run to resume)
    _fail(capsys, ["train", "--out", str(folders), "--epochs", "1"], "not a training run folder", "vi")
    _fail(capsys, ["train", "--out", str(folders), "--resume"], "not a training run folder")
    _fail(capsys, ["train", "--out", str(folders / "vi" / "a.png")], "is a file")
    assert _snapshot(folders) == before
    check_run_folder(TrainConfig(out=str(folders)), overwrite=True)  # the explicit way in
    # a run folder (with a note of the user's beside it) is the trainer's business, not this rule's
    run = tmp_path / "run"
    atomic_write_json(run / ckpt.CONFIG_JSON, {"format": ckpt.FORMAT})
    (run / "notes.txt").write_text("mine")
    check_run_folder(TrainConfig(out=str(run)), overwrite=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_run_folder(TrainConfig(out=str(empty)), overwrite=False)


def _script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "python" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scripts_follow_the_rule(tmp_path):
    d = _eval_set(tmp_path / "set")
    table8 = _script("table8")
    out = tmp_path / "t8.json"
    out.write_text("keep")
    with pytest.raises(OutputError, match="already exists"):
        table8.main(["--data", str(d), "--metrics", "EN", "--device", "cpu", "--json", str(out)])
    with pytest.raises(OutputError, match="inside the input folder"):
        table8.main(["--data", str(d), "--metrics", "EN", "--device", "cpu", "--json", str(d / "t8.json")])
    assert out.read_text() == "keep"

    fetch = _script("fetch_datasets")
    real = tmp_path / "data" / "RoadScene" / "vi"
    _png(real / "x.png")
    src = tmp_path / "clone" / "crop_LR_visible"
    _png(src / "y.png")
    with pytest.raises(FileExistsError, match="--overwrite"):
        fetch.link(src, real)
    assert (real / "x.png").is_file()
    fetch.link(src, real, overwrite=True)
    assert real.is_symlink() and (real / "y.png").is_file()
    fetch.link(src, real)  # an earlier link is simply replaced


def test_script_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "python" / "table8.py"), "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("table8.py: error:")


def test_check_outputs_unit(tmp_path):
    a = _png(tmp_path / "in" / "a.png")
    check_outputs([("--out", tmp_path / "new.png")], [a, tmp_path / "in"])
    with pytest.raises(OutputError, match="is the input"):
        check_outputs([("--out", a)], [a], overwrite=True)
    with pytest.raises(OutputError, match="inside the input folder"):
        check_outputs([("--out", tmp_path / "in" / "x" / "y.png")], [tmp_path / "in"], overwrite=True)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(OutputError, match="already exists"):
        check_outputs([("--out", tmp_path / "dangling.png")])
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs([("--out", tmp_path / "in")], overwrite=True)
    many = [("--out", _png(tmp_path / f"e{i}.png")) for i in range(7)]
    with pytest.raises(OutputError, match=r"\(7 files\) already exist") as e:
        check_outputs(many)
    assert "and 2 more" in str(e.value)
    check_outputs(many, overwrite=True)


# --------------------------------------------------------------------------------------------
# eval --json: strict JSON; the metrics list is the rows' columns


def test_eval_json_is_strict_json(tmp_path, monkeypatch):
    import hfkernels.metrics as M

    d = _eval_set(tmp_path / "set")
    real = M.evaluate

    def degenerate(vis, ir, fused, names=None, protocol="paper", unavailable="raise"):
        out = real(vis, ir, fused, names, protocol, unavailable)
        out["EN"] = torch.full_like(out["EN"], float("nan"))
        out["SD"] = torch.full_like(out["SD"], float("inf"))
        return out

    import hfkernels.evaluation.scoring as E

    monkeypatch.setattr(E, "evaluate", degenerate)  # the scoring loop's reference to the metrics
    js, bj = tmp_path / "m.json", tmp_path / "b.json"
    base = ["eval", "--data", str(d), "--metrics", "EN,SD,SSIM", "--device", "cpu"]
    assert main([*base, "--method", "vis", "--json", str(js), "--quiet"]) == 0
    assert main([*base, "--baselines", "--json", str(bj)]) == 0
    for path in (js, bj):
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {path.name}"))
    res = json.loads(js.read_text())
    assert res["per_image"]["0.png"]["EN"] is None and res["mean"]["SD"] is None
    assert isinstance(res["mean"]["SSIM"], float) and math.isfinite(res["mean"]["SSIM"])
    assert json.loads(bj.read_text())["mean"]["visible as fused"]["EN"] is None


@pytest.mark.parametrize("spec,want", [("VIF,Qabf", ["VIF", "Qabf"]), ("qabf, vif,QABF", ["Qabf", "VIF"])])
def test_eval_json_metrics_are_the_columns(tmp_path, spec, want):
    d = _eval_set(tmp_path / "set", n=1)
    js, cs = tmp_path / "m.json", tmp_path / "m.csv"
    assert main(["eval", "--data", str(d), "--method", "blend", "--metrics", spec, "--json", str(js),
                 "--csv", str(cs), "--device", "cpu", "--quiet"]) == 0
    res = json.loads(js.read_text())
    assert res["metrics"] == want
    assert all(list(row) == want for row in res["per_image"].values()) and list(res["mean"]) == want
    assert cs.read_text().splitlines()[0] == ",".join(["image", *want])


# --------------------------------------------------------------------------------------------
# errors a user makes are one line (exit 2); Ctrl-C is one line (exit 130); bugs keep a trace


@pytest.mark.parametrize("extra,fragment", [
    (["--backend", "cuda"], "cuda"),
    (["--backend", "bogus"], "unknown backend"),
    (["--device", "foo"], "--device must be cpu, cuda or cuda:N"),
    (["--device", "cuda:7"] if torch.cuda.is_available() else ["--device", "cuda"], "--device cuda"),
    (["--levels", "0"], "levels"),
])
def test_fuse_user_errors_are_one_line(pair, tmp_path, capsys, extra, fragment):
    vis, ir = pair
    err = _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                         "--device", "cpu", *extra], fragment)
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("cmd", [
    ["eval", "--data", "{d}", "--method", "laplacian", "--metrics", "EN", "--device", "foo"],
    ["eval", "--data", "{d}", "--method", "laplacian", "--metrics", "EN", "--backend", "bogus", "--device", "cpu"],
    ["train", "--out", "{t}/run", "--device", "foo"],
    ["train", "--out", "{t}/run", "--backend", "bogus", "--device", "cpu"],
    ["bench", "{t}/missing.json"],
])
def test_other_commands_user_errors_are_one_line(tmp_path, capsys, cmd):
    d = _eval_set(tmp_path / "set", n=1)
    argv = [a.format(d=d, t=tmp_path) for a in cmd]
    err = _fail(capsys, argv)
    assert err.startswith(f"hfkernels {argv[0]}: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_interrupt_and_debug(pair, tmp_path, capsys, monkeypatch):
    import hfkernels.cli.fuse as F

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    vis, ir = pair
    argv = ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"), "--device", "cpu"]
    monkeypatch.setattr(F, "fuse_pair", interrupted)
    monkeypatch.delenv("HFK_DEBUG", raising=False)
    assert main(argv) == 130
    assert capsys.readouterr().err == "hfkernels fuse: interrupted\n"
    monkeypatch.setenv("HFK_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.undo()
    # a user error keeps its traceback under HFK_DEBUG; a bug always does
    monkeypatch.setenv("HFK_DEBUG", "1")
    with pytest.raises(CLIError, match="--device"):
        main([*argv, "--device", "foo"])
    monkeypatch.delenv("HFK_DEBUG")

    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(F, "fuse_pair", bug)
    with pytest.raises(ZeroDivisionError):
        main(argv)


def test_no_traceback_end_to_end(pair, tmp_path):
    """The real entry point, in a fresh process: `--device foo` was a RuntimeError traceback."""
    vis, ir = pair
    env = {k: v for k, v in os.environ.items() if k != "HFK_DEBUG"}
    r = subprocess.run([sys.executable, "-m", "hfkernels", "fuse", "--vis", str(vis), "--ir", str(ir),
                        "--out", str(tmp_path / "o.png"), "--device", "foo"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["hfkernels fuse: error: --device must be cpu, cuda or cuda:N, got 'foo'"]


# --------------------------------------------------------------------------------------------
# --save-mu then eval --fused: the guidance maps are out of eval's way


def test_save_mu_then_eval(tmp_path, capsys):
    d = _eval_set(tmp_path / "set")
    wf = tmp_path / "wf"
    assert main(["fuse", "--vis", str(d / "vi"), "--ir", str(d / "ir"), "--out", str(wf), "--save-mu",
                 "--mu", "0.3", "--device", "cpu"]) == 0
    assert sorted(p.name for p in wf.iterdir()) == ["0.png", "1.png", "mu"]
    mu = np.asarray(Image.open(wf / "mu" / "1.png"))
    assert mu.shape == (48, 56) and (mu == mu.flat[0]).all() and abs(int(mu.flat[0]) - 0.3 * 255) <= 0.5
    js = tmp_path / "m.json"
    assert main(["eval", "--data", str(d), "--fused", str(wf), "--metrics", "EN", "--json", str(js),
                 "--device", "cpu"]) == 0
    assert set(json.loads(js.read_text())["per_image"]) == {"0.png", "1.png"}
    # maps of an older version, lying among the fused images: named, and the way out said
    Image.open(wf / "mu" / "0.png").save(wf / "MU_0.png")
    err = _fail(capsys, ["eval", "--data", str(d), "--fused", str(wf), "--metrics", "EN"], "MU_0.png")
    assert "mu" in err and "guidance maps" in err


# --------------------------------------------------------------------------------------------
# atomic writes honour the umask


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_run_files_honour_the_umask(tmp_path, umask):
    from hfkernels.guidance.models import GuidanceUNet

    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        model = GuidanceUNet(preset="tiny")
        ckpt.save_checkpoint(run, model, torch.optim.SGD(model.parameters(), 0.1), epoch=1)
        atomic_write_json(run / ckpt.CONFIG_JSON, {"format": ckpt.FORMAT})
        atomic_write_json(run / "history.json", [])
        atomic_write_json(run / "history.json", [{"epoch": 1}])  # replacing keeps the rule
    finally:
        os.umask(old)
    files = sorted(p.name for p in run.iterdir())
    assert files == ["checkpoint.json", "config.json", "history.json", "model-e0001.safetensors",
                     "optim-e0001.safetensors"]
    for name in files:
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name


def test_atomic_write_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# FusionLoss: the backend is checked when built; the input range is checked at each call


def test_fusion_loss_checks_backend_when_built():
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        hk.FusionLoss(backend="bogus")
    with pytest.raises(TypeError, match="backend must be a string"):
        hk.FusionLoss(backend=3)
    with pytest.raises(TypeError, match="check_range"):
        hk.FusionLoss(check_range="yes")
    assert hk.FusionLoss(backend="torch").backend == "torch"


def test_fusion_loss_input_range():
    g = torch.Generator().manual_seed(0)
    vis, ir = torch.rand(1, 3, 16, 18, generator=g), torch.rand(1, 1, 16, 18, generator=g)
    fused = 0.5 * vis + 0.5 * ir
    loss = hk.FusionLoss(window_size=7)
    with pytest.raises(ValueError, match=r"vis must lie in \[-1, 1\].*255"):
        loss(vis * 255, ir * 255, fused * 255)
    with pytest.raises(ValueError, match="ir must lie in"):
        loss(vis * 2 - 1, ir * 255, fused)
    nan_ir = (ir * 2 - 1).clone()
    nan_ir[0, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="ir must lie in"):
        loss(vis * 2 - 1, nan_ir, fused)
    # in range (with float slack) and an overshooting fused image are accepted
    assert torch.isfinite(loss((vis * 2 - 1) * 1.0005, ir * 2 - 1, fused * 3 - 1.5))
    # check_range=False: any range, as the released code
    free = hk.FusionLoss(window_size=7, check_range=False)
    assert torch.isfinite(free(vis * 255, ir * 255, fused * 255))
