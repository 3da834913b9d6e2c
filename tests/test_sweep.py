"""hfkernels sweep: Optuna search over training settings on generated scenes (a CI-sized search),
resumption after a kill, two workers on one storage, and the validation split of real data."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from hfkernels.cli import main  # noqa: E402
from hfkernels.training.config import TrainConfig  # noqa: E402
from hfkernels.training.sweep import PAPER_GRID, apply, check_space, load_space  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = ["--preset", "tiny", "--synthetic-pairs", "6", "--synthetic-size", "48x64", "--batch-size", "3",
        "--epochs", "2", "--no-progress"]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1")
    return [sys.executable, "-m", "hfkernels", "sweep", *args], env


def _study(out, storage=None, name="sweep"):
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{out / 'study.db'}")


def test_paper_grid_and_axes():
    assert sum(1 for _ in PAPER_GRID) == 4
    n = 1
    for v in PAPER_GRID.values():
        n *= len(v)
    assert n == 240
    cfg = apply(TrainConfig(), {"ssim": 10, "grad_w": 64, "lr": 3e-3, "max_size": 256})
    assert cfg.loss_weights == {"ssim_w": 10.0, "ssim_ir_w": 10.0, "grad_w": 64.0}
    assert (cfg.lr, cfg.max_size) == (3e-3, 256)
    with pytest.raises(ValueError, match="unknown axis 'nope'"):
        check_space({"nope": [1, 2]})
    with pytest.raises(ValueError, match="'lr'.*low > high"):
        check_space({"lr": {"low": 1e-2, "high": 1e-3}})


def test_tiny_sweep_yaml_space(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-4, high: 1.0e-2, log: true}\ngrad_w: [2, 40]\nmax_w: 10\n")
    assert set(load_space(space)) == {"lr", "grad_w", "max_w"}
    out = tmp_path / "sw"
    assert main(["sweep", "--out", str(out), "--space", str(space), "--trials", "3", "--pruner", "none",
                 "--heatmap", "lr,grad_w", *TINY]) == 0
    text = capsys.readouterr().out
    assert "done 3" in text and "best:" in text and "hfkernels train" in text
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows)
    assert {"param_lr", "param_grad_w", "score", "train_seconds"} <= set(rows[0])
    record = json.loads((out / "trials.json").read_text())
    assert record["counts"]["complete"] == 3
    assert record["search"]["validation"].startswith("synthetic")
    best = json.loads((out / "best.json").read_text())
    assert best["score"] == max(float(r["score"]) for r in rows)
    assert best["config"]["loss_weights"]["max_w"] == 10.0
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # each trial trained the requested epochs and reported each to the study
    for t in _study(out).trials:
        assert len(t.user_attrs["epoch_scores"]) == 2 and sorted(t.intermediate_values) == [1, 2]
    # the study already holds 3: a second call has nothing to do
    assert main(["sweep", "--out", str(out), "--space", str(space), "--trials", "3", *TINY]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # a study started with other settings is refused
    assert main(["sweep", "--out", str(out), "--grid", "paper", "--trials", "1", *TINY]) == 2


def test_sweep_user_errors(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "a"), "--grid", "paper", "--test", str(tmp_path), *TINY]) == 2
    assert "never sees test sets" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": [1]}')
    assert main(["sweep", "--out", str(tmp_path / "b"), "--space", str(bad), "--trials", "1", *TINY]) == 2
    assert "unknown axis 'learning_rate'" in capsys.readouterr().err
    rng = tmp_path / "rng.json"
    rng.write_text('{"lr": {"low": 1e-4, "high": 1e-2}}')
    assert main(["sweep", "--out", str(tmp_path / "c"), "--space", str(rng), *TINY]) == 2
    assert "--trials" in capsys.readouterr().err


def test_pruner_records_pruned_trials(tmp_path):
    space = tmp_path / "space.json"
    # lr 1e-9 cannot move the guide, so its validation score trails the others from epoch 1
    space.write_text(json.dumps({"lr": [3e-3, 1e-9], "grad_w": [2, 40, 90]}))
    out = tmp_path / "sw"
    assert main(["sweep", "--out", str(out), "--space", str(space), "--sampler", "grid", *TINY,
                 "--epochs", "3"]) == 0
    states = [t.state.name for t in _study(out).trials]
    assert len(states) == 6 and set(states) <= {"COMPLETE", "PRUNED"}
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == [s.lower() for s in states]


def test_resume_after_kill(tmp_path):
    out = tmp_path / "sw"
    cmd, env = _cli("--out", str(out), "--grid", "paper", "--sampler", "random", "--trials", "3",
                    "--heartbeat", "1", *TINY, "--epochs", "3")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # kill it in the middle of its second trial
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "trials").is_dir() and len(list((out / "trials").iterdir())) >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the sweep never started its second trial")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _study(out).trials
    assert any(t.state.name == "RUNNING" for t in before)
    time.sleep(2.5)  # past the heartbeat's grace period
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    after = _study(out).trials
    assert sum(t.state.name == "COMPLETE" for t in after) == 3
    assert not any(t.state.name == "RUNNING" for t in after)
    # the trial the kill interrupted was failed and its point tried again
    failed = [t for t in after if t.state.name == "FAIL"]
    assert len(failed) == 1
    assert any(t.params == failed[0].params and t.state.name == "COMPLETE" for t in after)
    # the trial finished before the kill was kept, not trained again
    first = [t for t in before if t.state.name == "COMPLETE"]
    assert all(any(a.number == t.number and a.value == t.value for a in after) for t in first)


def test_two_workers_share_one_storage(tmp_path):
    journal = tmp_path / "study.journal"
    procs = []
    for w in range(2):
        cmd, env = _cli("--out", str(tmp_path / f"worker{w}"), "--grid", "paper", "--trials", "4",
                        "--storage", f"journal:{journal}", "--study", "shared", *TINY, "--epochs", "1")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    study = optuna.load_study(study_name="shared", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) >= 4
    # each worker ran trials of its own (its own folder) and no grid point was trained twice
    ran = [{int(p.name) for p in (tmp_path / f"worker{w}" / "trials").iterdir()} for w in range(2)]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
    points = [tuple(sorted(t.params.items())) for t in done]
    assert len(points) == len(set(points))


def test_validation_split_of_real_data(data_dir, tmp_path):
    from hfkernels.io import PairDataset
    from hfkernels.training.split import validation_split

    data = [str(data_dir / "TNO"), str(data_dir / "MSRS")]
    rec = validation_split(data, tmp_path / "a")
    again = validation_split(data, tmp_path / "b")
    assert rec["sets"] == again["sets"]  # seeded: the same split anywhere
    tno = rec["sets"]["TNO"]
    assert len(tno["val"]) == 4 and not set(tno["val"]) & set(tno["train"])
    assert rec["sets"]["MSRS-train"]["val"] == []  # 11 pairs: too few to give any up
    assert len(PairDataset(rec["val"])) == 4
    assert validation_split(data, tmp_path / "b")["sets"] == rec["sets"]  # reused as recorded
    with pytest.raises(ValueError, match="split made with"):
        validation_split(data, tmp_path / "a", seed=1)
    other = validation_split(data, tmp_path / "c", seed=1)
    assert other["sets"]["TNO"]["val"] != tno["val"]
