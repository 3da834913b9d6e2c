"""Video fusion: PyAV / frame-folder I/O, the streaming fuser, temporal guidance, flicker, bad input."""
import os
import subprocess
import sys

import pytest
import torch

import hfkernels as hk
from hfkernels.metrics import FlickerMeter, flicker

av = pytest.importorskip("av")

from hfkernels.video import (  # noqa: E402
    FrameWriter, TemporalGuidance, VideoFuser, evaluate_video, fuse_video, open_frames,
)


def clip(n=6, h=48, w=64, seed=0, c=3):
    """A moving pattern: (n, c, h, w) in [0, 1], smooth enough to survive H.264."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, c, h // 8, w // 8, generator=g)
    base = torch.nn.functional.interpolate(base, size=(h, w + n * 2), mode="bilinear", align_corners=False)
    return torch.cat([base[..., 2 * t: 2 * t + w] for t in range(n)]).clamp(0, 1)


def write(path, frames, rate=25, codec=None):
    with FrameWriter(path, rate, codec) as w:
        w.write(frames)
    return path


def read_all(path, mode="rgb"):
    return torch.stack(list(open_frames(path, mode)))


# ------------------------------------------------------------------------------------------------
# I/O


def test_ffv1_round_trip_is_lossless(tmp_path):
    x = (clip() * 255).round() / 255
    p = write(tmp_path / "a.mkv", x, rate=30, codec="ffv1")
    seq = open_frames(p)
    assert seq.size == (48, 64) and seq.rate == 30 and seq.length in (None, 6)
    torch.testing.assert_close(read_all(p), x, rtol=0, atol=1e-6)


def test_h264_round_trip_and_gray(tmp_path):
    x = clip()
    p = write(tmp_path / "a.mp4", x)
    got = read_all(p)
    assert got.shape == x.shape
    assert (got - x).abs().mean() < 8 / 255  # 4:2:0 chroma of 8-pixel colour blobs, CRF 18
    gray = read_all(p, "gray")
    assert gray.shape == (6, 1, 48, 64)
    luma = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]
    assert (gray - luma).abs().mean() < 3 / 255


def test_frame_folder_round_trip_in_number_order(tmp_path):
    x = (clip(n=12) * 255).round() / 255
    out = tmp_path / "frames"
    with FrameWriter(out, names=[f"{i}.png" for i in range(12)]) as w:
        w.write(x)
    assert sorted(os.listdir(out)) != [f"{i}.png" for i in range(12)]  # 10.png sorts before 2.png as text
    torch.testing.assert_close(read_all(out), x, rtol=0, atol=1e-6)


def test_writer_refuses_existing_and_leaves_nothing_on_failure(tmp_path):
    p = tmp_path / "a.mp4"
    p.write_bytes(b"keep")
    with pytest.raises(ValueError, match="already exists"):
        FrameWriter(p)
    q = tmp_path / "b.mp4"
    with pytest.raises(RuntimeError):
        with FrameWriter(q) as w:
            w.write(clip(n=2))
            raise RuntimeError("stop")
    assert sorted(os.listdir(tmp_path)) == ["a.mp4"] and p.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="ffv1"):
        FrameWriter(tmp_path / "c.mp4", codec="ffv1")


# ------------------------------------------------------------------------------------------------
# fuser


def test_fuser_equals_per_frame_fuse_color_without_temporal_tricks():
    vis, ir = clip(n=7), clip(n=7, seed=1, c=1)
    got = torch.stack(list(fuse_video(vis, ir, mu="heuristic", scale=1.0, every=1, smooth=False, batch=3)))
    want = torch.cat([hk.fuse_color(vis[i:i + 1], ir[i:i + 1], hk.heuristic_guidance(vis[i:i + 1], ir[i:i + 1]))
                      for i in range(7)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_fuser_streams_in_bounded_memory():
    taken = []

    def frames(seed, c):
        for i, f in enumerate(clip(n=40, seed=seed, c=c)):
            taken.append(i)
            yield f

    it = fuse_video(frames(0, 3), frames(1, 1), mu=0.5, batch=4)
    next(it)
    assert max(taken) < 3 * 4  # the batch fused, one queued and one being read: not the clip
    assert sum(1 for _ in it) == 39


def test_guidance_every_k_frames_and_reduced_resolution():
    calls = []

    def mu_fn(v, i):
        calls.append(tuple(v.shape))
        return hk.heuristic_guidance(v, i)

    g = TemporalGuidance(mu_fn, scale=0.5, every=3)
    vis, ir = clip(n=10), clip(n=10, seed=1, c=1)
    mu = torch.cat([g(vis[:4], ir[:4]), g(vis[4:], ir[4:])])
    assert mu.shape == (10, 1, 48, 64)
    assert g.computed == 4 and sum(c[0] for c in calls) == 4  # frames 0, 3, 6, 9
    assert all(c[-2:] == (24, 32) for c in calls)
    torch.testing.assert_close(mu[1], mu[0]) and torch.testing.assert_close(mu[5], mu[3])


def test_smoothing_reduces_flicker_of_a_noisy_guide_and_resets_at_cuts():
    torch.manual_seed(0)
    noisy = lambda v, i: (0.5 + 0.3 * (torch.rand(v.shape[0], 1, 1, 1) - 0.5)).expand(-1, 1, *v.shape[-2:])  # noqa: E731
    a, b = clip(n=8, seed=2), clip(n=8, seed=3)
    a = a[:1].expand(8, -1, -1, -1)  # a still scene: the noise is all the guide's
    vis = torch.cat([a, 1 - b])  # frame 8 starts a new scene
    ir = torch.cat([a[:, :1], b[:, :1]])
    fl = {}
    for s in (False, True):
        torch.manual_seed(0)  # the same noise for both
        f = VideoFuser(noisy, scale=1.0, every=1, smooth=s, batch=5)
        m = FlickerMeter()
        for batch in f.batches(a, a[:, :1]):
            m.update(batch.vis, batch.ir, batch.fused)
        fl[s] = m.mean
    assert fl[True] < 0.7 * fl[False]

    g = TemporalGuidance(lambda v, i: v[:, :1], alpha=0.9)
    mu = g(vis, ir)
    assert g.cuts == [8]
    torch.testing.assert_close(mu[8], vis[8, :1])  # the old scene does not leak in
    assert not torch.allclose(mu[9], vis[9, :1])


def test_motion_gate_follows_what_moves_and_averages_what_stays():
    still = torch.full((2, 1, 16, 16), 0.5)
    vis = still.expand(-1, 3, -1, -1).clone()
    vis[1, :, :, 8:] = 0.9  # the right half changes (something moved in)
    maps = iter([torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)])
    g = TemporalGuidance(lambda v, i: next(maps), alpha=0.5, motion=0.03)
    mu = torch.cat([g(vis[:1], still[:1]), g(vis[1:], still[1:])])
    assert torch.allclose(mu[1, :, :, :8], torch.tensor(0.5))  # still: averaged
    assert (mu[1, :, :, 8:] > 0.99).all()  # moved: the new map


def test_flicker_is_zero_for_constant_weights_and_sees_weight_changes():
    a, b = clip(n=2), clip(n=2, seed=1)
    w = 0.3
    f = (1 - w) * a + w * b
    assert float(flicker((a[:1], b[:1], f[:1]), (a[1:], b[1:], f[1:]))) < 1e-4
    f2 = torch.cat([f[:1], 0.2 * a[1:] + 0.8 * b[1:]])
    assert float(flicker((a[:1], b[:1], f2[:1]), (a[1:], b[1:], f2[1:]))) > 1.0
    m = FlickerMeter()
    m.update(a[:1], b[:1], f2[:1])
    m.update(a[1:], b[1:], f2[1:])
    assert m.mean == pytest.approx(float(flicker((a[:1], b[:1], f2[:1]), (a[1:], b[1:], f2[1:]))))
    with pytest.raises(TypeError, match="prev"):
        flicker(a, (a, b, f))


def test_evaluate_video_on_a_written_clip(tmp_path):
    vis, ir = clip(n=5), clip(n=5, seed=1, c=1)
    vp, ip = write(tmp_path / "v.mkv", vis, codec="ffv1"), write(tmp_path / "i.mkv", ir, codec="ffv1")
    stats = fuse_video(vp, ip, tmp_path / "f.mkv", mu="heuristic", codec="ffv1")
    assert stats["frames"] == 5
    res = evaluate_video(vp, ip, tmp_path / "f.mkv", names="VIF,Qabf", every=2)
    assert sorted(res["frames"]) == list(range(5)) and "VIF" in res["frames"][2] and "VIF" not in res["frames"][1]
    assert res["frames"][0]["flicker"] != res["frames"][0]["flicker"]  # NaN: no predecessor
    assert res["mean"]["flicker"] >= 0 and 0 < res["mean"]["VIF"]


# ------------------------------------------------------------------------------------------------
# bad input


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="bad.mp4"):
        open_frames(bad)
    good = write(tmp_path / "good.mp4", clip(n=10))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.mp4"):
        list(open_frames(cut))
    with pytest.raises(ValueError, match="nothing.mp4 does not exist"):
        open_frames(tmp_path / "nothing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        open_frames(tmp_path / "empty")


def test_mismatched_clips_are_refused_and_leave_no_output(tmp_path):
    v = write(tmp_path / "v.mp4", clip(n=6))
    small = write(tmp_path / "small.mp4", clip(n=6, h=32))
    short = write(tmp_path / "short.mp4", clip(n=4, seed=1))
    fast = write(tmp_path / "fast.mp4", clip(n=6, seed=1), rate=50)
    out = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="small.mp4 is 64x32"):
        fuse_video(v, small, out, mu=0.5)
    with pytest.raises(ValueError, match="short.mp4 4"):
        fuse_video(v, short, out, mu=0.5)
    with pytest.raises(ValueError, match="frame rates differ"):
        fuse_video(v, fast, out, mu=0.5)
    # a length only found out while decoding (an iterable): the error names the frame
    with pytest.raises(ValueError, match="ir ends at frame 3"):
        fuse_video(v, iter(clip(n=3, c=1)), out, mu=0.5, batch=2)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    assert fuse_video(v, short, out, mu=0.5, shortest=True)["frames"] == 4
    with pytest.raises(ValueError, match="refusing to write over an input"):
        fuse_video(v, short, v, mu=0.5, overwrite=True)


def test_import_hfkernels_does_not_load_av():
    code = "import sys, hfkernels; hfkernels.fuse_video; print('av' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------
# real clips


@pytest.mark.data
def test_real_clip_fast_guidance_stays_within_001_of_per_frame(data_dir, tmp_path):
    from hfkernels.metrics import evaluate

    root = data_dir / "M3SVD"
    if not root.is_dir():
        pytest.skip("M3SVD clips not in the data folder")
    seq = sorted(os.listdir(root / "vi"))[0]
    frames = {s: torch.stack(list(open_frames(root / s / seq, "rgb" if s == "vi" else "gray"))[:6]) for s in ("vi", "ir")}
    vp, ip = write(tmp_path / "v.mp4", frames["vi"]), write(tmp_path / "i.mp4", frames["ir"])
    vis, ir = read_all(vp), read_all(ip, "gray")
    fast = torch.cat([b.fused for b in VideoFuser("heuristic").batches(vp, ip)])
    full = hk.fuse_color(vis, ir, hk.heuristic_guidance(vis, ir))
    a, b = evaluate(vis, ir, fast, "VIF,Qabf"), evaluate(vis, ir, full, "VIF,Qabf")
    for m in ("VIF", "Qabf"):
        assert float((b[m] - a[m]).max()) <= 0.01, m


def test_residual_guide_at_reduced_resolution_corrects_the_full_resolution_heuristic():
    from hfkernels.guidance import model_guidance
    from hfkernels.guidance.models import GuidanceUNet

    model = GuidanceUNet(preset="tiny", guide="residual")  # its correction starts at exactly 0
    mu_fn = model_guidance(model)
    mu_fn.guide = "residual"
    vis, ir = clip(n=3), clip(n=3, seed=1, c=1)
    g = TemporalGuidance(mu_fn, scale=0.5)
    torch.testing.assert_close(g(vis, ir), hk.heuristic_guidance(vis, ir), rtol=0, atol=1e-6)
    assert g.residual is model and TemporalGuidance(mu_fn, scale=1.0).residual is None
