"""``hfkernels bench``: the summary of a (small, synthetic) pytest-benchmark JSON."""
from __future__ import annotations

import builtins
import json

import pytest

from hfkernels.cli import bench, main


def _bench(name, group, median_s, **extra):
    return {
        "group": group,
        "name": name,
        "fullname": f"benchmarks/test_x.py::{name}",
        "params": None,
        "param": None,
        "extra_info": extra,
        "options": {},
        "stats": {"min": median_s * 0.9, "max": median_s * 1.2, "mean": median_s, "median": median_s,
                  "stddev": 0.0, "rounds": 5, "iterations": 1, "ops": 1 / median_s},
    }


@pytest.fixture
def result(tmp_path):
    data = {
        "machine_info": {"node": "box", "cpu": {"brand_raw": "Test CPU"}},
        "commit_info": {},
        "datetime": "2026-01-01T00:00:00",
        "version": "5.2.3",
        "benchmarks": [
            _bench("test_fuse[torch]", "fuse forward cpu 1x1x480x640 float32", 0.016,
                   backend="torch", ratio=1.0, ratio_reference="torch", peak_extra_mb=10.5,
                   device_name="Test CPU, 2 threads"),
            _bench("test_train[paper]", "table9 train", 2.0, backend="cpu", preset="paper",
                   images_per_s=8.0, epoch_s=135.4, peak_extra_mb=900.0,
                   paper={"throughput": "22.1 img/s", "VRAM": "~19 GB"}),
            _bench("test_fuse[cpu]", "fuse forward cpu 1x1x480x640 float32", 0.004,
                   backend="cpu", ratio=4.0, ratio_reference="torch", peak_extra_mb=2.25,
                   targets=[{"label": "fuse cpu forward float32", "ratio": 4.0, "min": 4.0,
                             "against": "torch", "met": True},
                            {"label": "fuse cpu forward vs OpenCV", "ratio": 0.8, "min": 1.0,
                             "against": "opencv", "met": False}]),
        ],
    }
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    return path


def test_summary_table(result, capsys):
    assert main(["bench", str(result)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # groups kept together in order of first appearance, even though the JSON interleaves them
    g_fuse = lines.index("fuse forward cpu 1x1x480x640 float32")
    g_train = lines.index("table9 train")
    assert g_fuse < g_train
    fuse_rows = [l.split() for l in lines[g_fuse + 3 : g_fuse + 5]]
    assert fuse_rows[0][:6] == ["torch", "16.0", "1.00x", "vs", "torch", "10.5"]
    assert fuse_rows[1][:6] == ["cpu", "4.00", "4.00x", "vs", "torch", "2.25"]
    assert ">=4x ok (paired 4.00x vs torch)" in lines[g_fuse + 4] and ">=1x MISSED" in lines[g_fuse + 4]
    assert "ratio = the reference's median / this row's median" in out
    train = lines[g_train + 3]
    assert "cpu paper" in train and "8.00 img/s" in train and "135 s/epoch" in train
    assert "throughput 22.1 img/s; VRAM ~19 GB" in train
    assert "3 benchmarks; 1/2 targets met" in out
    assert "MISSED: fuse cpu forward vs OpenCV: 0.8x vs opencv, target >= 1x" in out
    assert "Test CPU" in lines[0]


def test_ratio_agrees_with_the_medians(tmp_path, capsys):
    """The suite's paired ratio (4.90x) is not what the medians say (1003 / 1184 ms): the column
    shows the medians' ratio; a reference without a row of its own uses the suite's median of it."""
    data = {"benchmarks": [
        _bench("a[plain]", "loss", 1.003, backend="plain", ratio=1.0, ratio_reference="plain"),
        _bench("a[torch]", "loss", 1.184, backend="torch", ratio=4.90, ratio_reference="plain"),
        _bench("a[cpu]", "loss", 0.0214, backend="cpu", ratio=2.48, ratio_reference="plain"),
        _bench("b[cpu]", "other", 0.010, backend="cpu", ratio=9.0, ratio_reference="opencv", ratio_reference_ms=30.0),
    ]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    rs = {r["key"] + r["group"]: r for r in bench.rows(bench.load(path))}
    assert rs["torchloss"]["ratio"] == pytest.approx(1003 / 1184)
    assert rs["cpuloss"]["ratio"] == pytest.approx(1003 / 21.4)
    assert rs["cpuother"]["ratio"] == pytest.approx(3.0)
    assert main(["bench", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.847x vs plain" in out and "46.9x vs plain" in out and "3.00x vs opencv" in out


def test_markdown_and_group_filter(result, capsys):
    assert main(["bench", str(result), "--format", "markdown", "--group", "table9"]) == 0
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith("| ") and not l.startswith("| ---")]
    assert rows[0].startswith("| group | name | median ms | ratio |")
    assert len(rows) == 2 and rows[1].startswith("| table9 train | cpu paper | 2000 |")


def test_plot_writes_png(result, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.png"
    assert main(["bench", str(result), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"chart written to {out}" in capsys.readouterr().out


def test_plot_without_matplotlib_is_a_clear_error(result, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["bench", str(result), "--plot", str(tmp_path / "c.png")]) == 2
    out, err = capsys.readouterr()
    assert "--plot needs matplotlib" in err and out == ""  # checked before the table is printed
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "is not valid JSON"),
        ('{"results": []}', "is not a pytest-benchmark result"),
        ('{"benchmarks": [{"name": "x"}]}', "benchmark #0"),
    ],
)
def test_bad_files(tmp_path, capsys, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert main(["bench", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_empty_group_filter(result, capsys):
    assert main(["bench", str(result), "--group", "nothing-like-this"]) == 2
    assert "no benchmarks in a group containing 'nothing-like-this'" in capsys.readouterr().err


def test_number_format():
    assert [bench._num(v) for v in (1234.5, 16.04, 4.0, 0.8, 0.0123, 0.0001234)] == [
        "1234", "16.0", "4.00", "0.8", "0.0123", "1.23e-04"]
