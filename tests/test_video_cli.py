"""`hfkernels fuse` and `hfkernels eval` on video files and frame folders."""
import json
import os

import pytest
import torch

from hfkernels.cli import main

pytest.importorskip("av")

from hfkernels.video import open_frames  # noqa: E402

from .test_video import clip, write  # noqa: E402


@pytest.fixture
def clips(tmp_path):
    return write(tmp_path / "v.mp4", clip(n=5)), write(tmp_path / "i.mp4", clip(n=5, seed=1, c=1))


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err
    for n in needles:
        assert n in err[0], err[0]


def test_fuse_two_mp4_files_into_one(clips, tmp_path, capsys):
    v, i = clips
    out = tmp_path / "fused.mp4"
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(out), "--mu", "heuristic"]) == 0
    seq = open_frames(out)
    assert seq.size == (48, 64) and seq.rate == 25 and sum(1 for _ in seq) == 5
    assert "wrote 5 fused frame(s)" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(out), "--mu", "heuristic"]) == 2
    one_error_line(capsys, "already exists")
    assert out.read_bytes() == before
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(v), "--mu", "0.5", "--overwrite"]) == 2
    one_error_line(capsys, "input")


def test_fuse_frame_folders_with_video_flag(clips, tmp_path):
    v, i = clips
    folders = {}
    for name, src in (("vi", v), ("ir", i)):
        folders[name] = tmp_path / name
        assert main(["fuse", "--vis", str(src), "--ir", str(src), "--out", str(folders[name]), "--mu", "0"]) == 0
    out = tmp_path / "fused"
    assert main(["fuse", "--vis", str(folders["vi"]), "--ir", str(folders["ir"]), "--out", str(out), "--video",
                 "--mu", "heuristic", "--no-smooth", "--guide-scale", "1"]) == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(folders["vi"])) and len(os.listdir(out)) == 5


@pytest.mark.parametrize("case", ["size", "corrupt", "length", "not-video"])
def test_fuse_bad_input_is_one_error_line_and_no_output(clips, tmp_path, capsys, case):
    v, i = clips
    if case == "size":
        other, needle = write(tmp_path / "small.mp4", clip(n=5, h=32, c=1)), "small.mp4 is 64x32"
    elif case == "corrupt":
        other, needle = tmp_path / "bad.mp4", "bad.mp4"
        other.write_bytes(b"\0not a video" * 100)
    elif case == "length":
        other, needle = write(tmp_path / "short.mp4", clip(n=3, c=1)), "short.mp4 3"
    else:
        other, needle = tmp_path / "x.txt", "x.txt"
        other.write_text("hello")
    out = tmp_path / "fused.mp4"
    assert main(["fuse", "--vis", str(v), "--ir", str(other), "--out", str(out), "--mu", "0.5"]) == 2
    one_error_line(capsys, needle)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_eval_clip_per_frame_and_flicker(clips, tmp_path, capsys):
    v, i = clips
    fused = tmp_path / "f.mkv"
    assert main(["fuse", "--vis", str(v), "--ir", str(i), "--out", str(fused), "--mu", "heuristic",
                 "--codec", "ffv1"]) == 0
    js = tmp_path / "m.json"
    assert main(["eval", "--vis", str(v), "--ir", str(i), "--fused", str(fused), "--metrics", "VIF,Qabf",
                 "--frame-step", "2", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "flicker" in out and "frame 000004" in out
    rec = json.loads(js.read_text())
    assert rec["metrics"] == ["VIF", "Qabf", "flicker"] and len(rec["per_image"]) == 5
    assert rec["per_image"]["frame 000001"]["VIF"] is None and rec["per_image"]["frame 000002"]["VIF"] > 0
    assert rec["mean"]["flicker"] >= 0
    # on the fly: the same fuser as `fuse`, unrounded
    assert main(["eval", "--vis", str(v), "--ir", str(i), "--method", "heuristic", "--metrics", "VIF",
                 "--quiet"]) == 0
    assert "mean" in capsys.readouterr().out
    assert main(["eval", "--vis", str(v), "--ir", str(i), "--method", "laplacian"]) == 2
    one_error_line(capsys, "heuristic, guide or a constant")
    assert torch.isfinite(torch.tensor(rec["mean"]["VIF"]))


def test_eval_clip_report_page(clips, tmp_path, capsys):
    # a clip's page: means, every frame's row, pictures of --report-limit frames spread over the
    # clip, and each metric over time (flicker from frame 1 on)
    from hfkernels.evaluation.report import shown_indices

    v, i = clips
    rep = tmp_path / "rep"
    assert main(["eval", "--vis", str(v), "--ir", str(i), "--method", "heuristic", "--metrics", "VIF,Qabf",
                 "--report", str(rep), "--report-limit", "3", "--quiet"]) == 0
    assert f"report: {rep / 'index.html'}" in capsys.readouterr().out
    html = (rep / "index.html").read_text()
    assert 'id="over-time"' in html and html.count('class="plot"') >= 3  # VIF, Qabf, flicker
    assert ">frame</text>" in html and "frame 4:" in html  # the curves run over frames
    # lower flicker is better; frame 0 has none, and the mean leaves it out rather than being NaN
    means = html[html.index("Mean over"):html.index("Distribution")]
    assert "flicker ↓" in means and "nan" not in means.lower()
    for k in range(5):
        assert f"frame {k:06d}" in html
    shown = sorted(d.name for d in next((rep / "index_files").iterdir()).iterdir())
    assert shown == [f"{k:05d}" for k in shown_indices(5, 3)] and len(shown) == 3
    assert (rep / "index_files").exists() and not [p for p in rep.iterdir() if p.name.startswith(".")]
    # the page is not replaced without --overwrite, before any frame is fused
    before = html
    assert main(["eval", "--vis", str(v), "--ir", str(i), "--method", "heuristic", "--report", str(rep)]) == 2
    one_error_line(capsys, "index.html already exists")
    assert (rep / "index.html").read_text() == before
