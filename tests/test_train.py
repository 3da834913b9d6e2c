"""Trainer, checkpoints and the train / fuse CLI, end to end on CPU at small sizes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hfkernels.cli import build_parser, main
from hfkernels.cli.train import config_from_args
from hfkernels.guidance import checkpoint as ckpt
from hfkernels.guidance.models import GuidanceUNet, guidance_input
from hfkernels.io import atomic_write_json
from hfkernels.training.loop import TrainConfig, Trainer
from hfkernels.training.config import DATA_LR, LOSS_WEIGHTS

REPO = Path(__file__).resolve().parent.parent
# small, fast settings shared by the CLI runs below (generated scenes unless --data is given)
FAST = ["--preset", "tiny", "--batch-size", "4", "--synthetic-pairs", "8", "--synthetic-size", "48x64",
        "--metrics", "EN,SSIM,Qabf", "--sheet-pairs", "2", "--no-progress", "--no-baseline"]


def _weights(run_dir):
    return ckpt.load_checkpoint(run_dir)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- checkpoints
def _step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 20, 24, generator=g)
    mu, logvar = model(x)
    (mu.square().mean() + logvar.abs().mean()).backward()
    opt.step()
    opt.zero_grad()


def test_checkpoint_round_trip_bit_exact(tmp_path):
    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
    for s in range(2):
        _step(m, opt, s)
    ckpt.save_checkpoint(tmp_path, m, opt, epoch=2, extra={"note": "x"})
    state = ckpt.load_checkpoint(tmp_path)
    assert state["epoch"] == 2 and state["extra"] == {"note": "x"} and state["config"] == m.config()
    assert _same(state["model"], {k: v for k, v in m.state_dict().items()})

    m2 = GuidanceUNet(preset="tiny")
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3, weight_decay=1e-4)
    m2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    sa, sb = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        a, b = sa[i], sb[i]
        assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
    # the same next step from both copies gives the same weights, bit for bit
    _step(m, opt, 5)
    _step(m2, opt2, 5)
    assert _same(m.state_dict(), m2.state_dict())
    # only the newest epoch's files remain
    ckpt.save_checkpoint(tmp_path, m, opt, epoch=3)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model-e0003.safetensors", "optim-e0003.safetensors"]


def test_checkpoint_crash_leaves_previous(tmp_path, monkeypatch):
    m = GuidanceUNet(preset="tiny")
    opt = torch.optim.AdamW(m.parameters())
    _step(m, opt, 0)
    ckpt.save_checkpoint(tmp_path, m, opt, epoch=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _step(m, opt, 1)

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while committing")

    monkeypatch.setattr(ckpt, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, m, opt, epoch=2)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and _same(state["model"], before)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"v": 1})

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(p, {"v": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]


# ----------------------------------------------------------------------------- training
def test_loss_decreases_on_fixed_batch(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), synthetic_pairs=4, synthetic_size=(48, 64), lr=3e-3,
                      baseline=False)
    tr = Trainer(cfg, progress=False)
    tr._build()
    vis = torch.stack([tr.train_set[i][0] for i in range(4)]).float() / 255
    ir = torch.stack([tr.train_set[i][1] for i in range(4)]).float() / 255
    tr.model.train()
    losses = []
    for _ in range(12):
        total, terms = tr.step_loss(vis, ir)
        tr.optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0)
        tr.optimizer.step()
        losses.append(float(total.detach()))
        assert set(terms) >= {"max", "consist", "grad", "ssim", "color", "kl"}
    assert losses[-1] < losses[0] * 0.97, losses
    assert min(losses[-3:]) < min(losses[:3])


def test_batchnorm_recalibration(tmp_path):
    """After re-estimating BatchNorm statistics on one batch, eval mode reproduces the train-mode
    output on that batch (up to the unbiased/biased variance factor n/(n-1)). Scratch guides: their
    whole map comes from the network, where a residual guide after one step is still mostly the
    heuristic and shows little of the lag."""
    cfg = TrainConfig(out=str(tmp_path / "run"), synthetic_pairs=4, synthetic_size=(48, 64), batch_size=4,
                      bn_batches=1, baseline=False, guide="scratch")
    tr = Trainer(cfg, progress=False)
    tr._build()
    tr.train_epoch(1)  # moves the weights (and runs the recalibration at its end)
    (idx, vis, ir), = list(tr.loader.epoch(1))
    x = guidance_input(vis, ir)
    tr.model.eval()
    with torch.no_grad():
        mu_eval, _ = tr.model(x)
        tr.model.train()
        mu_train, _ = tr.model(x)
    assert (mu_eval - mu_train).abs().mean() < 0.003 and (mu_eval - mu_train).abs().max() < 0.05
    assert mu_train.std() > 1e-3  # not a trivial constant map
    # without recalibration the lagging running averages give a visibly different map
    cfg2 = TrainConfig(out=str(tmp_path / "run2"), synthetic_pairs=4, synthetic_size=(48, 64), batch_size=4,
                       bn_batches=0, baseline=False, guide="scratch")
    tr2 = Trainer(cfg2, progress=False)
    tr2._build()
    tr2.train_epoch(1)
    tr2.model.eval()
    with torch.no_grad():
        lag, _ = tr2.model(x)
        tr2.model.train()
        fresh, _ = tr2.model(x)
    assert (lag - fresh).abs().mean() > 0.01


def test_gradient_accumulation_steps(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), synthetic_pairs=5, synthetic_size=(32, 40), batch_size=2,
                      accum=2, bn_batches=0, baseline=False)
    tr = Trainer(cfg, progress=False)
    tr._build()
    rec = tr.train_epoch(1)
    # 3 batches (2 + 2 + 1 images) -> optimizer steps after batches 2 and 3
    assert rec["batches"] == 3 and rec["optimizer_steps"] == 2 and rec["images"] == 5
    steps = {float(st["step"]) for st in tr.optimizer.state_dict()["state"].values()}
    assert steps == {2.0}


def test_default_arguments():
    args = build_parser().parse_args(["train"])
    cfg, resume, overwrite = config_from_args(args)
    assert cfg.data == [] and cfg.preset == "tiny" and cfg.out == "runs/default"
    assert cfg.weight_decay == 1e-4 and cfg.clip == 1.0 and cfg.kl_weight == 1e-5
    assert (cfg.lr, cfg.epochs) == (None, None)
    assert (cfg.resolve().lr, cfg.epochs) == (1e-3, 4)  # the demo on generated scenes
    data_cfg = TrainConfig(data=["x"]).resolve()
    assert (data_cfg.lr, data_cfg.epochs) == (DATA_LR["residual"], 2)
    assert TrainConfig(data=["x"], guide="scratch").resolve().lr == 1e-4  # the paper's recipe
    assert cfg.guide == "residual" and cfg.eval_max_size is None and cfg.time_budget is None
    # a run saved before guide kinds existed trained the paper's network
    assert TrainConfig.from_json({"preset": "tiny"}).guide == "scratch"
    args = build_parser().parse_args(["train", "--guide", "scratch", "--eval-max-size", "64", "--time-budget", "30"])
    cfg, _, _ = config_from_args(args)
    assert (cfg.guide, cfg.eval_max_size, cfg.time_budget) == ("scratch", 64, 30.0)
    for bad in ({"guide": "hybrid"}, {"time_budget": 0}, {"time_budget": float("nan")}, {"eval_max_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad).validate()
    assert not resume and overwrite  # the default run folder is replaced by a new default run
    args = build_parser().parse_args(["train", "--out", "x", "--synthetic-size", "32x48", "--cache", "no"])
    cfg, _, overwrite = config_from_args(args)
    assert cfg.synthetic_size == (32, 48) and cfg.cache is False and not overwrite


def test_loss_weights_and_lr_options(tmp_path):
    """Every FusionLoss weight is a train option; the weights reach the loss, config.json and the
    checkpoint record, and a resumed run keeps them."""
    args = build_parser().parse_args(["train", "--grad-w", "64", "--ssim-w", "10", "--ssim-ir-w", "10",
                                      "--max-w", "4", "--lr", "3e-3"])
    cfg, _, _ = config_from_args(args)
    assert cfg.loss_weights == {"max_w": 4.0, "grad_w": 64.0, "ssim_w": 10.0, "ssim_ir_w": 10.0}
    assert cfg.loss_kwargs() == {**LOSS_WEIGHTS, "max_w": 4.0, "grad_w": 64.0, "ssim_w": 10.0, "ssim_ir_w": 10.0}
    assert cfg.lr == 3e-3
    for key in LOSS_WEIGHTS:  # one option per weight
        assert build_parser().parse_args(["train", f"--{key.replace('_', '-')}", "1.5"])
    with pytest.raises(ValueError, match="unknown weight 'nope'"):
        TrainConfig(loss_weights={"nope": 1.0}).validate()
    with pytest.raises(ValueError, match="grad_w"):
        TrainConfig(loss_weights={"grad_w": -1.0}).validate()
    assert main(["train", "--color-w", "-2", "--out", str(tmp_path / "bad")]) == 2

    run = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--out", str(run), "--consist-w", "12", "--grad-w", "2"]) == 0
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["loss_weights"] == {"consist_w": 12.0, "grad_w": 2.0}
    extra = ckpt.load_checkpoint(run)["extra"]
    assert extra["loss_weights"]["consist_w"] == 12.0 and extra["loss_weights"]["max_w"] == 10.0
    assert extra["lr"] == 1e-3
    cfg, resume, _ = config_from_args(build_parser().parse_args(["train", "--out", str(run), "--resume",
                                                                 "--epochs", "2"]))
    assert resume and cfg.loss_weights == {"consist_w": 12.0, "grad_w": 2.0}
    tr = Trainer(TrainConfig(out=str(tmp_path / "w"), loss_weights={"grad_w": 90.0}))
    tr.cfg.resolve()
    tr._build()
    assert tr.loss_fn.weights["grad_w"] == 90.0 and tr.loss_fn.weights["max_w"] == 10.0


def test_native_resolution_evaluation_with_max_size(tmp_path):
    """--max-size shrinks the training images only: the test pairs keep their size, the baseline
    is the heuristic scored at native size, and a fresh residual guide scores exactly that."""
    from hfkernels.core.fusion import fuse_color, heuristic_guidance
    from hfkernels.io import read_image
    from hfkernels.metrics import evaluate
    from hfkernels.training.synthetic import write_pairs

    write_pairs(tmp_path / "train", 4, (40, 60), seed=1)
    write_pairs(tmp_path / "test", 2, (45, 66), seed=2)
    names = ["EN", "Qabf", "SSIM"]
    cfg = TrainConfig(data=[str(tmp_path / "train")], test=[str(tmp_path / "test")], max_size=24, metrics=names,
                      out=str(tmp_path / "run"), batch_size=2, bn_batches=0, sheet_pairs=0)
    tr = Trainer(cfg, progress=False)
    tr._build()
    assert max(max(s) for s in tr.train_set.sizes) == 24
    (_, ds), = tr.test_sets
    assert [tuple(ds[i][0].shape[-2:]) for i in range(len(ds))] == [(45, 66)] * 2
    # by hand, at native size, from the files
    want = {n: 0.0 for n in names}
    for f in sorted((tmp_path / "test" / "vi").iterdir()):
        vis = read_image(f, "rgb")[None]
        ir = read_image(tmp_path / "test" / "ir" / f.name, "gray")[None]
        vals = evaluate(vis, ir, fuse_color(vis, ir, heuristic_guidance(vis, ir)), names=names)
        for n in names:
            want[n] += float(vals[n]) / 2
    base = tr.evaluate(heuristic_guidance)["test"]
    assert base == pytest.approx(want, rel=1e-6, abs=1e-9)
    step0 = tr.evaluate()["test"]  # the residual guide before any step
    assert step0 == pytest.approx(base, rel=1e-4, abs=1e-6)

    # the same through the CLI: baseline.json holds the native-size scores
    run = tmp_path / "cli"
    assert main(["train", "--data", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--max-size", "24",
                 "--epochs", "1", "--batch-size", "2", "--metrics", ",".join(names), "--sheet-pairs", "0",
                 "--no-progress", "--no-report", "--out", str(run)]) == 0
    saved = json.loads((run / "baseline.json").read_text())["heuristic"]["test"]
    assert saved == pytest.approx(want, rel=1e-6, abs=1e-9)
    # --eval-max-size shrinks the test pairs too, if asked for
    cfg2 = TrainConfig(data=[str(tmp_path / "train")], test=[str(tmp_path / "test")], max_size=24, eval_max_size=33,
                       out=str(tmp_path / "run2"))
    tr2 = Trainer(cfg2, progress=False)
    tr2._build()
    from hfkernels.io.datasets import fit_size

    assert tuple(tr2.test_sets[0][1][0][0].shape[-2:]) == fit_size(45, 66, 33) != (45, 66)


def test_time_budget_stops_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    # a budget any step exceeds: one optimizer step (2 batches accumulated), then evaluation + checkpoint
    args = ["train", *FAST, "--accum", "2", "--time-budget", "1e-9", "--out", str(run)]
    assert main(args) == 0
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 1 and hist[0]["stopped_by_budget"] is True
    assert hist[0]["batches"] == 2 and hist[0]["optimizer_steps"] == 1 and hist[0]["images"] == 8
    assert "eval" in hist[0] and ckpt.load_checkpoint(run)["epoch"] == 1
    assert json.loads((run / "config.json").read_text())["train"]["time_budget"] == 1e-9
    # the budget counts over resumes: nothing left to do
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(json.loads((run / "history.json").read_text())) == 1


def test_ctrl_c_says_what_is_kept(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--no-report", "--out", str(run)]) == 0
    capsys.readouterr()

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.delenv("HFK_DEBUG", raising=False)
    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert main(["train", *FAST, "--epochs", "3", "--out", str(run), "--resume"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("\nhfkernels train: interrupted; ") and err.count("\n") == 2
    assert "checkpoint of epoch 1" in err and f"hfkernels train --out {run} --resume" in err


def test_budget_cut_epoch_recalibrates_on_its_own_batches(tmp_path, monkeypatch):
    """A budget-cut epoch re-estimates BatchNorm on no more batches than it trained (not 16),
    so the re-estimation does not run far past the budget."""
    seen = []
    real = Trainer.recalibrate_batchnorm
    monkeypatch.setattr(Trainer, "recalibrate_batchnorm", lambda self, e, b=None: seen.append(b) or real(self, e, b))
    run = tmp_path / "run"
    assert main(["train", *FAST, "--time-budget", "1e-9", "--bn-batches", "16", "--out", str(run)]) == 0
    hist = json.loads((run / "history.json").read_text())
    assert hist[0]["batches"] == 1 and seen == [1] and hist[0]["batchnorm_seconds"] >= 0


def test_epoch_eval_subset_final_eval_and_page_reuse(tmp_path, capsys, monkeypatch):
    """Each epoch scores a fixed, recorded subset; the full test set is scored once at the end
    (its expected time printed first) and the results page reuses those scores."""
    import hfkernels.evaluation.report as report
    from hfkernels.training.synthetic import write_pairs

    write_pairs(tmp_path / "train", 6, (40, 60), seed=1)
    write_pairs(tmp_path / "test", 5, (44, 64), seed=2)
    calls = []
    real = report.score_pairs
    monkeypatch.setattr(report, "score_pairs", lambda pairs, *a, **k: calls.append(len(pairs)) or real(pairs, *a, **k))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--epochs", "2",
                 "--batch-size", "4", "--crop", "32", "--eval-pairs", "2", "--metrics", "EN,Qabf",
                 "--sheet-pairs", "0", "--report-limit", "1", "--no-progress", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    hist = json.loads((run / "history.json").read_text())
    # the same two pairs, spread over the set and named, every epoch; the baseline on them too
    assert [r["eval_pairs"] for r in hist] == [{"test": ["test/0000.png", "test/0002.png"]}] * 2
    assert json.loads((run / "baseline.json").read_text())["pairs"] == hist[0]["eval_pairs"]
    # real batches: 6 images of one size per crop -> batches of 4 and 2, 32x32
    assert hist[0]["batch_sizes"] == {"4": 1, "2": 1} and hist[0]["crop_sizes"] == {"32x32": 2}
    assert "1 batch of 4, 1 of 2 (32x32 x2)" in out and "img/s" in out and "random crops of up to 32x32" in out
    # the full set once, after the last epoch, announced with its expected time
    assert "final_eval" in hist[-1] and "final_eval" not in hist[0]
    assert hist[-1]["final_eval"]["pairs"] == {"test": 5}
    assert "final evaluation: 5 test pairs x 2 fusions" in out and "about" in out
    # ... and the page took those scores instead of scoring again
    assert calls == [5] and (run / "report" / "index.html").is_file()
    assert "(epoch 2)" in out and "epoch 1) ->" in out

    # without the final evaluation the page shows the per-epoch pairs only
    calls.clear()
    assert main(["train", "--data", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--epochs", "1",
                 "--batch-size", "4", "--eval-pairs", "2", "--metrics", "EN", "--sheet-pairs", "0",
                 "--no-final-eval", "--no-progress", "--out", str(tmp_path / "run2")]) == 0
    assert calls == [2]
    assert "final_eval" not in json.loads((tmp_path / "run2" / "history.json").read_text())[-1]
    assert "train loss" in capsys.readouterr().out


def test_guide_kind_in_run_files(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--guide", "scratch", "--epochs", "1", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["guide"] == "scratch"
    assert json.loads((run / "checkpoint.json").read_text())["guide"] == "scratch"
    # a run of one kind cannot be resumed as the other
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--guide", "residual",
                 "--no-progress"]) == 2


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    """An uninterrupted 3-epoch run on generated scenes (the reference for the resume tests)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *FAST, "--epochs", "3", "--out", str(run)]) == 0
    return run


def test_cli_train_resume_and_refusals(tmp_path, capsys, ref_run):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 0
    hist = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1]
    for key in ("train_loss", "seconds", "images_per_second", "eval"):
        assert key in hist[0]
    assert set(hist[0]["eval"]["synthetic-test"]) == {"EN", "SSIM", "Qabf"}
    assert (run / "sheets" / "epoch_0001.png").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["preset"] == "tiny" and cfg["train"]["epochs"] == 1

    # an existing run is not overwritten by accident
    assert main(["train", *FAST, "--epochs", "1", "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume with the saved settings, to 3 epochs in all: the same weights as never stopping
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    hist = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert ckpt.load_checkpoint(run)["epoch"] == 3
    assert _same(_weights(ref_run), _weights(run))
    ref_hist = json.loads((ref_run / "history.json").read_text())
    assert [r["train_loss"] for r in ref_hist] == [r["train_loss"] for r in hist]
    # nothing left to do
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # a different network cannot resume this run
    assert main(["train", "--out", str(run), "--resume", "--epochs", "4", "--preset", "small"]) == 2


def test_kill_and_resume(tmp_path, ref_run):
    """A training process killed at a random moment resumes from its last complete epoch and
    ends with exactly the weights of a run that was never interrupted."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "hfkernels", "train", *FAST, "--epochs", "3", "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ckpt.has_checkpoint(run) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # somewhere inside the next epoch (or its checkpoint)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ckpt.load_checkpoint(run)["epoch"]
    assert 1 <= done <= 3
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert ckpt.load_checkpoint(run)["epoch"] == 3
    assert _same(_weights(ref_run), _weights(run))
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3]


def test_bad_data_stops_the_run(tmp_path, capsys):
    from PIL import Image

    d = tmp_path / "d"
    for sub, names in (("vi", ["a.png", "only_vis.png"]), ("ir", ["a.png", "only_ir.png"])):
        (d / sub).mkdir(parents=True)
        for n in names:
            Image.new("L", (40, 30)).save(d / sub / n)
    assert main(["train", "--data", str(d), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "only_vis.png" in err and "only_ir.png" in err
    assert not ckpt.has_checkpoint(tmp_path / "r")
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fuse_with_checkpoint(tmp_path, ref_run):
    from hfkernels.core.fusion import fuse_color
    from hfkernels.guidance import load_guidance
    from hfkernels.io import read_image
    from hfkernels.training.synthetic import write_pairs

    run = ref_run
    write_pairs(tmp_path / "pairs", 2, (40, 52), seed=11)
    out = tmp_path / "fused"
    assert main(["fuse", "--checkpoint", str(run), "--vis", str(tmp_path / "pairs" / "vi"),
                 "--ir", str(tmp_path / "pairs" / "ir"), "--out", str(out), "--save-mu", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "mu"]
    assert sorted(p.name for p in (out / "mu").iterdir()) == ["0000.png", "0001.png"]
    vis = read_image(tmp_path / "pairs" / "vi" / "0000.png", "keep")[None]
    ir = read_image(tmp_path / "pairs" / "ir" / "0000.png", "gray")[None]
    mu = load_guidance(run)(vis, ir)
    want = fuse_color(vis, ir, mu)
    got = read_image(out / "0000.png", "rgb")[None]
    assert (got - want).abs().max() <= 0.5 / 255 + 1e-6  # the written file is the rounded fusion
    got_mu = read_image(out / "mu" / "0000.png", "gray")[None]
    assert (got_mu - mu).abs().max() <= 0.5 / 255 + 1e-6


# ----------------------------------------------------------------------------- real pairs
@pytest.mark.data
def test_end_to_end_real_pairs(data_dir, tmp_path):
    """Train 2 epochs (1 + resume) on the MSRS training pairs at 64 px, fuse the MSRS test pairs
    with the checkpoint, and evaluate them with the metrics suite."""
    from hfkernels.io import read_image
    from hfkernels.metrics import evaluate

    run = tmp_path / "run"
    common = ["--data", str(data_dir / "MSRS"), "--test", str(data_dir / "MSRS"), "--max-size", "64",
              "--preset", "tiny", "--batch-size", "4", "--eval-limit", "3", "--metrics", "EN,MI,VIF,Qabf,SSIM",
              "--sheet-pairs", "2", "--no-progress", "--out", str(run)]
    assert main(["train", *common, "--epochs", "1"]) == 0
    assert main(["train", *common, "--epochs", "2", "--resume"]) == 0
    hist = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2] and all(r["images"] == 11 for r in hist)
    ev = hist[-1]["eval"]["MSRS-test"]
    assert set(ev) == {"EN", "MI", "VIF", "Qabf", "SSIM"} and all(v == v for v in ev.values())
    base = json.loads((run / "baseline.json").read_text())["heuristic"]["MSRS-test"]
    assert set(base) == set(ev)

    vis_dir, ir_dir = data_dir / "MSRS" / "test" / "vi", data_dir / "MSRS" / "test" / "ir"
    names = sorted(p.name for p in vis_dir.iterdir())[:2]
    sub_v, sub_i = tmp_path / "v", tmp_path / "i"
    sub_v.mkdir()
    sub_i.mkdir()
    for n in names:  # two test pairs at full resolution
        (sub_v / n).symlink_to(vis_dir / n)
        (sub_i / n).symlink_to(ir_dir / n)
    out = tmp_path / "fused"
    assert main(["fuse", "--checkpoint", str(run), "--vis", str(sub_v), "--ir", str(sub_i),
                 "--out", str(out), "--device", "cpu"]) == 0
    vis = torch.stack([read_image(sub_v / n, "rgb") for n in names])
    ir = torch.stack([read_image(sub_i / n, "gray") for n in names])
    fused = torch.stack([read_image(out / Path(n).with_suffix(".png").name, "rgb") for n in names])
    assert fused.shape == vis.shape == (2, 3, 480, 640)
    vals = evaluate(vis, ir, fused, names=["EN", "VIF", "Qabf"])
    assert all(torch.isfinite(v).all() and v.shape == (2,) for v in vals.values())
    assert (vals["VIF"] > 0.2).all() and (vals["Qabf"] > 0.2).all()
    # the guidance network sees the whole image (no tiling): one forward at 480x640
    assert guidance_input(vis, ir).shape == (2, 2, 480, 640)


def _script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "python" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_python_scripts(tmp_path, ref_run):
    from hfkernels.training.synthetic import write_pairs

    write_pairs(tmp_path / "set", 2, (40, 52), seed=3)
    table8 = _script("table8")
    out = tmp_path / "t8.json"
    assert table8.main(["--data", str(tmp_path / "set"), "--checkpoint", str(ref_run), "--metrics", "EN,Qabf",
                        "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["set"]
    assert list(res) == ["visible", "infrared", "laplacian", "heuristic", "trained"]
    assert all(set(v) == {"EN", "Qabf"} for v in res.values())
    # a "fusion" that returns the visible image scores Qabf(A, A) + ... > the infrared one on its own terms
    assert res["visible"]["Qabf"] != res["infrared"]["Qabf"]

    fuse_folder = _script("fuse_folder")
    jobs = fuse_folder.expand(["--data", str(tmp_path / "set"), "--checkpoint", str(ref_run), "--out", str(tmp_path / "f")])
    assert len(jobs) == 1 and jobs[0][-1] == str(tmp_path / "f")
    assert main(["fuse", *jobs[0], "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["0000.png", "0001.png"]
    assert _script("fetch_datasets").main(["--list"]) == 0


def test_direct_guide_trains_fuses_and_evaluates(tmp_path, capsys):
    """--guide direct: the U-Net's output is the fused luma (no pyramid); checkpoint, fuse and
    eval use it as such (the visible chroma put back around it)."""
    import hfkernels as hk
    from hfkernels.evaluation import colour_fusion as colour
    from hfkernels.guidance import load_guidance
    from hfkernels.io import read_image

    run = tmp_path / "run"
    assert main(["train", *FAST, "--guide", "direct", "--epochs", "1", "--out", str(run)]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["guide"] == "direct"
    assert ckpt.load_checkpoint(run)["extra"]["lr"] == 1e-3
    fn = load_guidance(run)
    assert fn.fuses and fn.guide == "direct"
    torch.manual_seed(0)
    vis, ir = torch.rand(1, 3, 48, 64), torch.rand(1, 1, 48, 64)
    y = fn(vis, ir)
    fused = colour(fn)(vis, ir)
    assert torch.allclose(fused, hk.with_luma(vis, y))
    # not the pyramid fusion with y taken as a guidance
    assert not torch.allclose(fused, hk.fuse_color(vis, ir, y), atol=1e-3)
    # the chroma is the visible image's
    from hfkernels.core.reference import rgb_to_ycbcr

    inside = (fused > 0.02).all() and (fused < 0.98).all()
    if inside:
        assert torch.allclose(rgb_to_ycbcr(fused)[:, 1:], rgb_to_ycbcr(vis)[:, 1:], atol=1e-4)
    # the CLI fuses and evaluates with it
    from hfkernels.io import write_image

    write_image(tmp_path / "v.png", vis[0])
    write_image(tmp_path / "i.png", ir[0])
    assert main(["fuse", "--vis", str(tmp_path / "v.png"), "--ir", str(tmp_path / "i.png"),
                 "--checkpoint", str(run), "--out", str(tmp_path / "f.png")]) == 0
    got = read_image(tmp_path / "f.png", "rgb")[None]
    want = colour(fn)(read_image(tmp_path / "v.png", "rgb")[None], read_image(tmp_path / "i.png", "gray")[None])
    assert (got - want).abs().max() <= 1 / 255 + 1e-6
    capsys.readouterr()


def test_with_luma_checks():
    import hfkernels as hk

    vis = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="y must be"):
        hk.with_luma(vis, torch.rand(2, 3, 8, 8))
    from hfkernels.core.reference import luma

    assert torch.allclose(hk.with_luma(vis, luma(vis)), vis, atol=1e-5)
    assert torch.equal(hk.with_luma(vis[:, :1], vis[:, 1:2]), vis[:, 1:2])


def test_table8_training_comparison(tmp_path):
    """python/table8.py --train: the direct U-Net and the hybrid arms trained at the same budget,
    each with its training seconds and peak memory, beside the untrained paradigms."""
    from hfkernels.training.synthetic import write_pairs

    write_pairs(tmp_path / "train", 6, (48, 64), seed=1)
    write_pairs(tmp_path / "test", 2, (48, 64), seed=2)
    table8 = _script("table8")
    out, runs = tmp_path / "t8.json", tmp_path / "runs"
    args = ["--train", str(tmp_path / "train"), "--data", str(tmp_path / "test"), "--runs", str(runs),
            "--preset", "tiny", "--epochs", "1", "--train-max-size", "64", "--metrics", "VIF,Qabf,SSIM",
            "--device", "cpu", "--json", str(out)]
    assert table8.main(args) == 0
    res = json.loads(out.read_text())
    rows = res["sets"]["test"]
    assert list(rows) == ["Laplacian, mu = 0.5", "heuristic weight map", "direct U-Net",
                          "hybrid, residual guide", "hybrid, scratch guide"]
    assert all(set(v) == {"VIF", "Qabf", "SSIM"} for v in rows.values())
    for arm in res["arms"].values():
        assert arm["epochs"] == 1 and arm["train_seconds"] > 0 and arm["peak_rss_mb"] > 50
    assert {json.loads((runs / g / "checkpoint.json").read_text())["guide"] for g in ("direct", "residual", "scratch")} \
        == {"direct", "residual", "scratch"}
    # a second call reuses the trained arms
    stamp = (runs / "direct" / "arm.json").stat().st_mtime
    assert table8.main([*args, "--overwrite"]) == 0
    assert (runs / "direct" / "arm.json").stat().st_mtime == stamp
