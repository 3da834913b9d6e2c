"""``benchmarks/gpu_run.sh`` and its helpers, without a GPU: the dry run end to end, the argument
checks, the summary writer on a made-up run, and the data packer on made-up files."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
GPU_STEPS = ("build", "tests", "bench-kernels", "bench-losses", "bench-tables", "train", "eval", "resources", "video")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="gpu_run.sh needs bash and coreutils' timeout")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


summary_mod = _load("gpu_summary")
data_mod = _load("gpu_data")


def _run(*args, env=None, timeout=120):
    e = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    e.pop("HFK_DATA", None)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# the dry run


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu-run")
    out, bundle = base / "out", base / "bundle"
    p = _run(out, "--dry-run", "--data", base / "no-such-data", "--bundle", bundle)
    return p, out, bundle


def test_dry_run_succeeds_and_writes_the_summary(dry):
    p, out, _ = dry
    assert p.returncode == 0, p.stdout + p.stderr
    md = (out / "SUMMARY.md").read_text()
    assert md.startswith("# hfkernels GPU run: ")
    assert "dry run" in md.splitlines()[2]
    s = json.loads((out / "summary.json").read_text())
    assert s["run"]["dry_run"] is True


def test_dry_run_skips_and_names_every_gpu_step(dry):
    _, out, _ = dry
    md = (out / "SUMMARY.md").read_text()
    steps = {r["step"]: r for r in json.loads((out / "summary.json").read_text())["steps"]}
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped", name
        assert "needs a CUDA GPU: dry run" in steps[name]["reason"], name
        assert f"- `{name}`: needs a CUDA GPU: dry run" in md, name


def test_dry_run_runs_what_needs_no_gpu(dry):
    _, out, _ = dry
    steps = {r["step"]: r for r in json.loads((out / "summary.json").read_text())["steps"]}
    assert steps["env"]["status"] == "ok"
    env = json.loads((out / "env.json").read_text())
    assert "has_gpu" in env and "python" in env
    # the data root given does not exist: said, not failed
    assert steps["data"]["status"] == "skipped" and "no data root" in steps["data"]["reason"]


def test_dry_run_bundle_holds_three_files(dry):
    _, out, bundle = dry
    assert sorted(p.name for p in bundle.iterdir()) == ["SUMMARY.md", "gpu-run.tar.gz", "summary.json"]
    with tarfile.open(bundle / "gpu-run.tar.gz") as tar:
        names = tar.getnames()
    assert "./SUMMARY.md" in names and "./steps.jsonl" in names and "./logs/env.log" in names


@pytest.mark.parametrize("args,message", [
    ((), "OUTDIR is required"),
    (("a", "b"), "one OUTDIR only"),
    (("OUT", "--only", "build,nope"), "unknown step 'nope'"),
    (("OUT", "--budget", "10"), "--budget must be"),
    (("OUT", "--frobnicate"), "unknown option '--frobnicate'"),
])
def test_bad_arguments_are_usage_errors(tmp_path, args, message):
    args = [str(tmp_path / a) if a in ("OUT", "a", "b") else a for a in args]
    p = _run(*args)
    assert p.returncode == 2
    assert message in p.stderr
    assert "usage: benchmarks/gpu_run.sh OUTDIR" in p.stderr


def test_bundle_inside_outdir_is_refused(tmp_path):
    p = _run(tmp_path / "out", "--dry-run", "--bundle", tmp_path / "out" / "b")
    assert p.returncode == 2 and "--bundle must be outside OUTDIR" in p.stderr


# ---------------------------------------------------------------------------------------------
# the summary writer


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


@pytest.fixture
def fake_run(tmp_path):
    out = tmp_path / "run"
    (out / "logs").mkdir(parents=True)
    steps = [
        {"step": "build", "status": "failed", "seconds": 3.0, "rc": 1, "reason": "exit status 1", "log": "logs/build.log"},
        {"step": "tests", "status": "timeout", "seconds": 150.0, "rc": 124, "reason": "stopped", "log": "logs/tests.log"},
        {"step": "build", "status": "ok", "seconds": 80.0, "rc": 0, "reason": "", "log": "logs/build.log"},
        {"step": "resources", "status": "skipped", "seconds": 0, "rc": 0, "reason": "not here", "log": ""},
    ]
    _write(out / "steps.jsonl", "".join(json.dumps(s) + "\n" for s in steps))
    _write(out / "logs" / "tests.log", "\n".join(f"line {i}" for i in range(40)))
    _write(out / "env.json", {"gpu": {"name": "NVIDIA H200", "dram_gbps": 4800.0, "dram_gbps_from": "datasheet",
                                      "copy_gbps": 4000.0}, "torch": "2.11.0", "has_gpu": True})
    _write(out / "run.json", {"dry_run": False, "budget_s": 460, "steps": ["env", "build", "tests", "resources"]})
    bench = {"benchmarks": [
        {"name": "test_fuse[cuda-triton]", "group": "fuse forward", "stats": {"median": 0.001},
         "extra_info": {"op": "fuse", "mode": "forward", "shape": "16x1x480x640", "dtype": "bfloat16",
                        "backend": "triton", "median_ms": 1.0, "ratio": 12.5, "bandwidth_GBps": 2400.0}},
        {"name": "test_fuse[cuda-torch]", "group": "fuse forward", "stats": {"median": 0.02},
         "extra_info": {"op": "fuse", "mode": "fwd+bwd", "backend": "torch", "median_ms": 20.0}},
    ]}
    _write(out / "bench" / "kernels.json", bench)
    _write(out / "tests" / "junit.xml",
           '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
           '<testcase classname="tests.test_x" name="test_a"/>'
           '<testcase classname="tests.test_x" name="test_b[cuda]"><failure message="no"/></testcase>'
           '<testcase classname="tests.test_x" name="test_c"><skipped/></testcase>'
           "</testsuite></testsuites>")
    _write(out / "train" / "history.json", [{"epoch": 1, "train_loss": 0.5, "images": 274, "seconds": 10.0,
                                              "images_per_second": 27.4}])
    _write(out / "eval" / "MSRS-test.json", {"per_image": {"a.png": {}, "b.png": {}},
                                             "mean": {"EN": 6.5, "VIF": 0.8, "Qabf": 0.6}})
    return out


def test_summary_reports_every_part(fake_run):
    s = summary_mod.write_summary(fake_run)
    md = (fake_run / "SUMMARY.md").read_text()
    assert md.splitlines()[0] == "# hfkernels GPU run: NVIDIA H200"
    # the last record of a step wins (a rerun replaces a failed build); steps in the run's order
    assert [r["step"] for r in s["steps"]] == ["build", "tests", "resources"]
    assert s["steps"][0]["status"] == "ok"
    assert s["status_counts"] == {"ok": 1, "failed": 0, "timeout": 1, "skipped": 1}
    # bandwidth as a fraction of the datasheet peak and of the measured copy; rows without one left out
    assert len(s["bandwidth"]) == 1
    assert s["bandwidth"][0]["of_peak"] == 0.5 and s["bandwidth"][0]["of_copy"] == 0.6
    assert "| 2400 | 50.0 % | 60.0 % |" in md
    assert s["tests"]["passed"] == 1 and s["tests"]["failed_ids"] == ["tests.test_x::test_b[cuda]"]
    assert "- `tests.test_x::test_b[cuda]`" in md
    # a step that ran out of time shows the end of its log
    assert "line 39" in md and "line 10" not in md
    assert "- `resources`: not here" in md
    assert "| MSRS-test | 2 | 6.5 | " in md
    assert "| 1 | 0.5 | 274 | 10 | 27.4 |" in md


def test_summary_of_an_empty_folder_says_what_is_missing(tmp_path):
    s = summary_mod.write_summary(tmp_path)
    md = (tmp_path / "SUMMARY.md").read_text()
    assert s["card"] is None and md.startswith("# hfkernels GPU run: no GPU")
    for missing in ("No test results", "No bandwidth figures", "No benchmark results", "No training history",
                    "No evaluation results"):
        assert missing in md


@pytest.mark.parametrize("name,gbps", [("NVIDIA H200", 4800.0), ("NVIDIA H100 PCIe", 2000.0),
                                       ("NVIDIA H100 80GB HBM3", 3350.0), ("NVIDIA GeForce RTX 4090", 1008.0),
                                       ("Tesla T4", 320.0), ("Some New Card", None), (None, None)])
def test_datasheet_bandwidth(name, gbps):
    assert summary_mod.datasheet_gbps(name) == gbps


# ---------------------------------------------------------------------------------------------
# the data packer


def _fake_data(root: Path, sizes: dict[str, tuple[int, int]]):
    """Sets (by gpu_data name) of ``n`` pairs of ``nbytes`` per file; contents are never decoded."""
    for name, _, a, b in data_mod.SETS:
        if name not in sizes:
            continue
        n, nbytes = sizes[name]
        for folder in (a, b):
            (root / folder).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / folder / f"{i:03d}.png").write_bytes(b"x" * nbytes)


def test_pack_takes_the_first_sets_whole_and_spreads_the_rest(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    _fake_data(src, {"MSRS-train": (4, 1000), "RoadScene": (10, 1000), "MSRS-test": (6, 1000),
                     "Harvard-CT-MRI": (20, 1000), "Harvard-PET-MRI": (20, 1000)})
    # 20 pairs whole (40 kB) + room for 20 of the 40 Harvard pairs (2 kB each)
    m = data_mod.pack(src, dest, budget_mib=80_000 / 2**20)
    got = {k: (v["pairs"], v["total"]) for k, v in m["sets"].items()}
    assert got == {"MSRS-train": (4, 4), "RoadScene": (10, 10), "MSRS-test": (6, 6),
                   "Harvard-CT-MRI": (10, 20), "Harvard-PET-MRI": (10, 20)}
    assert m["bytes"] <= 80_000
    kept = sorted(p.name for p in (dest / "Harvard" / "CT-MRI" / "CT").iterdir())
    assert kept == [f"{i:03d}.png" for i in range(0, 20, 2)]  # evenly spaced, first included
    assert sorted(p.name for p in (dest / "Harvard" / "CT-MRI" / "MRI").iterdir()) == kept
    # the packed folder is read back as a subset of its source
    chk = {s["name"]: s for s in data_mod.check(dest)["sets"]}
    assert chk["Harvard-CT-MRI"]["note"] == "carried subset: 10 of 20 pairs"
    assert chk["TNO"]["pairs"] == 0 and chk["TNO"]["note"].startswith("missing")


def test_pack_refuses_a_folder_git_would_commit(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/ignored/\n")
    src = tmp_path / "src"
    _fake_data(src, {"RoadScene": (2, 10)})
    with pytest.raises(ValueError, match="not ignored by git"):
        data_mod.pack(src, repo / "data", budget_mib=1)
    m = data_mod.pack(src, repo / "ignored" / "data", budget_mib=1)
    assert m["sets"]["RoadScene"]["pairs"] == 2


def test_pack_refuses_to_replace_an_unrelated_folder(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    _fake_data(src, {"RoadScene": (2, 10)})
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        data_mod.pack(src, dest, budget_mib=1)
    assert (dest / "precious.txt").is_file()
    with pytest.raises(ValueError, match="budget_mib"):
        data_mod.pack(src, tmp_path / "d2", budget_mib=0)


def test_args_lists_the_sets_present_per_role(tmp_path, capsys):
    _fake_data(tmp_path, {"MSRS-train": (1, 1), "TNO": (1, 1), "Harvard-SPECT-MRI": (1, 1)})
    data_mod.main(["args", str(tmp_path), "train"])
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path}/MSRS/train/vi,{tmp_path}/MSRS/train/ir", f"{tmp_path}/TNO/vi,{tmp_path}/TNO/ir"]
    data_mod.main(["args", str(tmp_path), "eval"])
    assert capsys.readouterr().out.splitlines() == [
        f"Harvard-SPECT-MRI\t{tmp_path}/Harvard/SPECT-MRI/SPECT\t{tmp_path}/Harvard/SPECT-MRI/MRI"]
