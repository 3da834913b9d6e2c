"""Reliability, second sweep (issue 21): data loss, silently wrong results, untrusted files,
bounded memory. Each test failed before its fix; the item number is in the test's name."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hfkernels as hk
from hfkernels.cli import main

from .test_reliability_cli import _fail, _png, pair  # noqa: F401  (pair: a fixture)


@pytest.fixture
def folders(tmp_path):
    d = tmp_path / "D"
    for i, n in enumerate(("a.png", "b.png")):
        _png(d / "vi" / n, h=48, w=48, seed=i)
        _png(d / "ir" / n, h=48, w=48, channels=1, seed=10 + i)
    return d


# --------------------------------------------------------------------------------------------
# data loss


def test_item1_report_keeps_an_existing_index_files_folder(folders, tmp_path, capsys):
    rep = tmp_path / "R"
    (rep / "index_files").mkdir(parents=True)
    (rep / "index_files" / "mine.txt").write_text("precious")
    _fail(capsys, ["eval", "--data", str(folders), "--method", "0.5", "--metrics", "EN", "--report", str(rep)],
          "index_files", "--overwrite")
    assert (rep / "index_files" / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_item10_report_index_files_not_a_folder_is_refused_up_front(folders, tmp_path, capsys, kind):
    rep = tmp_path / "R"
    rep.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    if kind == "symlink":
        (rep / "index_files").symlink_to(outside)
    else:
        (rep / "index_files").write_text("x")
    for extra in ([], ["--overwrite"]):
        rc = main(["eval", "--data", str(folders), "--method", "0.5", "--metrics", "EN", "--report", str(rep), *extra])
        err = capsys.readouterr().err
        if not extra:
            assert rc == 2 and "index_files" in err and "Traceback" not in err
    # with --overwrite the link itself is replaced, never what it points at
    assert (outside / "keep.txt").read_text() == "x"
    assert (rep / "index.html").is_file() and (rep / "index_files").is_dir()
    assert not (rep / "index_files").is_symlink()


def test_item2_fuse_overwrite_replaces_a_symlink_not_its_target(pair, tmp_path):
    vis, ir = pair
    precious = tmp_path / "precious.png"
    _png(precious, seed=7)
    before = precious.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "f.png").symlink_to(precious)
    assert main(["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(out / "f.png"), "--mu", "0.5",
                 "--overwrite"]) == 0
    assert precious.read_bytes() == before
    assert not (out / "f.png").is_symlink() and (out / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_item3_train_on_images_smaller_than_vif_window_completes(tmp_path, capsys):
    out = tmp_path / "R"
    rc = main(["train", "--synthetic-pairs", "8", "--synthetic-size", "32x48", "--epochs", "1", "--batch-size", "4",
               "--preset", "tiny", "--out", str(out), "--no-progress", "--no-report", "--no-baseline"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "checkpoint.json").is_file()
    hist = json.loads((out / "history.json").read_text())
    ev = next(iter(hist[-1]["eval"].values()))
    assert ev["VIF"] is None or ev["VIF"] != ev["VIF"]  # not available
    assert ev["EN"] > 0


def test_item3_checkpoint_written_before_evaluation(tmp_path, monkeypatch):
    from hfkernels.training import loop as T
    from hfkernels.training.config import TrainConfig

    def boom(self, guidance=None):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(T.Trainer, "evaluate", boom)
    cfg = TrainConfig(out=str(tmp_path / "R"), preset="tiny", epochs=1, batch_size=4, synthetic_pairs=4,
                      synthetic_size=(48, 48), report=False, baseline=False)
    with pytest.raises(RuntimeError):
        T.train(cfg, progress=False)
    assert (tmp_path / "R" / "checkpoint.json").is_file()


@pytest.mark.parametrize("size", ["0x0", "0x16", "16x-3"])
def test_item3_synthetic_size_zero_refused_at_parse_time(tmp_path, capsys, size):
    _fail(capsys, ["train", "--synthetic-size", size, "--out", str(tmp_path / "R")], "--synthetic-size")
    assert not (tmp_path / "R").exists()


# --------------------------------------------------------------------------------------------
# wrong results


def _i16(path, arr):
    Image.fromarray(arr.astype(np.uint16)).save(path)  # a 16-bit grayscale PNG (mode I;16)
    return path


def test_item4_read_image_16bit_gray_as_rgb(tmp_path):
    from hfkernels.io import read_image

    arr = (np.arange(20 * 30).reshape(20, 30) * 97 % 65536)
    p = _i16(tmp_path / "g16.png", arr)
    want = torch.from_numpy(arr.astype(np.float32) / 65535)
    for mode, c in (("rgb", 3), ("gray", 1), ("keep", 1)):
        t = read_image(p, mode)
        assert t.shape == (c, 20, 30), mode
        for k in range(c):
            torch.testing.assert_close(t[k], want, atol=1e-6, rtol=0, msg=mode)


def test_item4_eval_and_training_data_see_16bit_images(tmp_path):
    from hfkernels.io import PairDataset
    from hfkernels.evaluation import pairs_from_files

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (48, 48))
    d = tmp_path / "D"
    (d / "vi").mkdir(parents=True)
    _i16(d / "vi" / "a.png", arr)
    _png(d / "ir" / "a.png", 48, 48, channels=1)
    vis, _, _ = pairs_from_files([("a", d / "vi" / "a.png", d / "ir" / "a.png", None)])[0].load()
    assert float(vis.std()) > 0.1
    v8, _ = PairDataset(d)[0]
    assert v8.float().std() > 20


def test_item7_entropy_of_a_constant_image_is_zero_not_negative():
    x = torch.full((1, 1, 16, 16), 0.5)
    for protocol in ("paper", "standard"):
        en = hk.metrics.en(x, x, x, protocol=protocol) if hasattr(hk, "metrics") else None
        from hfkernels.metrics import en as EN

        v = float(EN(x, x, x, protocol=protocol)[0])
        assert v >= 0.0, (protocol, v)


# --------------------------------------------------------------------------------------------
# checks before any work


def test_item12_train_metrics_checked_at_parse_time(tmp_path, capsys):
    _fail(capsys, ["train", "--metrics", "FOO", "--out", str(tmp_path / "R")], "--metrics", "FOO")
    assert not (tmp_path / "R").exists()


def test_item13_save_mu_blocked_by_a_file_writes_nothing(pair, tmp_path, capsys):
    vis, ir = pair
    out = tmp_path / "out"
    out.mkdir()
    (out / "mu").write_text("a file")
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(out / "f.png"), "--mu", "0.5",
                   "--save-mu"], "mu")
    assert sorted(p.name for p in out.iterdir()) == ["mu"]


def test_item13_folder_fuse_checks_every_pair_first(tmp_path, capsys):
    d = tmp_path / "D"
    _png(d / "vi" / "a.png", seed=1)
    _png(d / "ir" / "a.png", channels=1, seed=2)
    _png(d / "vi" / "b.png", h=30, seed=3)
    _png(d / "ir" / "b.png", h=31, channels=1, seed=4)
    out = tmp_path / "out"
    _fail(capsys, ["fuse", "--vis", str(d / "vi"), "--ir", str(d / "ir"), "--out", str(out), "--mu", "0.5"],
          "b.png")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("umask", [0o077, 0o022])
def test_item14_report_folders_honour_the_umask(folders, tmp_path, umask):
    rep = tmp_path / "R"
    old = os.umask(umask)
    try:
        assert main(["eval", "--data", str(folders), "--method", "0.5", "--metrics", "EN", "--report", str(rep)]) == 0
    finally:
        os.umask(old)
    for p in [rep / "index_files", *(q for q in (rep / "index_files").rglob("*") if q.is_dir())]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask, p


# --------------------------------------------------------------------------------------------
# loaded files are untrusted


def _run(tmp_path, name="run", optimizer=True):
    from hfkernels.guidance import checkpoint as ckpt
    from hfkernels.guidance.models import GuidanceUNet

    torch.manual_seed(0)
    model = GuidanceUNet(preset="tiny", guide="residual")
    opt = torch.optim.AdamW(model.parameters())
    if optimizer:
        model(torch.rand(1, 2, 32, 32))[0].mean().backward()
        opt.step()
    run = tmp_path / name
    ckpt.save_checkpoint(run, model, opt if optimizer else None, epoch=1)
    return run


def _record(run):
    return json.loads((run / "checkpoint.json").read_text())


def _weights(run):
    return run / _record(run)["model"]


def _retensor(path, fn):
    """Rewrite a safetensors file through ``fn(dict) -> dict``, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load, save

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    path.write_bytes(save(fn(load(path.read_bytes())), metadata=meta))


@pytest.fixture
def guides(tmp_path, monkeypatch):
    """A private copy of the packaged guides folder that a test may damage."""
    import shutil

    from hfkernels.guidance import sources as G

    src = Path(G.__file__).parent / "guides"
    dst = tmp_path / "guides"
    shutil.copytree(src, dst)
    monkeypatch.setattr(G, "_guides_folder", lambda: dst)
    caches = [G._installed_guides, G._card, G._load_packaged, G._say_no_guide]
    for c in caches:
        c.cache_clear()
    yield dst
    for c in caches:
        c.cache_clear()


def _tamper(kind):
    def fn(sd):
        k = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 4)
        sd = dict(sd)
        if kind == "nan":
            sd[k] = sd[k].clone()
            sd[k].view(-1)[0] = float("nan")
        elif kind == "huge":
            sd = {n: (v.float() * 1e30 if v.is_floating_point() else v) for n, v in sd.items()}
        elif kind == "int8":
            sd[k] = sd[k].to(torch.int8)
        elif kind == "bool":
            sd[k] = sd[k] != 0
        return sd
    return fn


@pytest.mark.parametrize("kind", ["nan", "huge", "int8", "bool"])
def test_item5_tampered_checkpoint_weights_are_refused(tmp_path, pair, capsys, kind):
    run = _run(tmp_path)
    _retensor(_weights(run), _tamper(kind))
    vis, ir = pair
    out = tmp_path / "o.png"
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(out), "--checkpoint", str(run)],
          str(run))
    assert not out.exists()


@pytest.mark.parametrize("kind", ["nan", "int8", "bytes"])
def test_item5_tampered_packaged_guide_is_refused(guides, kind):
    w = guides / "default.safetensors"
    if kind == "bytes":
        blob = bytearray(w.read_bytes())
        blob[-10] ^= 0xFF  # still a valid file: only the hash can tell
        w.write_bytes(bytes(blob))
    else:
        _retensor(w, _tamper(kind))
    with pytest.raises(ValueError, match="default.safetensors"):
        hk.fuse_color(torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32))


def test_item6_missing_guide_is_said_once(guides, folders, capsys):
    from hfkernels import evaluation as E

    (guides / "default.safetensors").unlink()
    vis, ir = torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
    hk.fuse_color(vis, ir)
    hk.fuse_color(vis, ir)
    err = capsys.readouterr().err
    assert err.count("not installed") == 1 and "heuristic" in err, err
    assert "packaged trained guide" not in E.label("guide")
    assert main(["eval", "--data", str(folders), "--method", "guide", "--metrics", "EN"]) == 0
    out = capsys.readouterr().out
    assert "packaged trained guide" not in out


def _damage_file(path, how):
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif how == "pickle":
        import pickle

        path.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    elif how == "png":
        import io

        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("how", ["empty", "truncated", "random", "pickle", "png"])
def test_item8_corrupt_weights_are_one_error_line(tmp_path, pair, capsys, how):
    run = _run(tmp_path)
    w = _weights(run)
    _damage_file(w, how)
    vis, ir = pair
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                   "--checkpoint", str(run)], w.name)
    # a PNG (or anything) given as the weights file itself
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                   "--checkpoint", str(w)], w.name)


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_item8_weights_that_do_not_fit_the_model(tmp_path, pair, capsys, change):
    run = _run(tmp_path)

    def fn(sd):
        sd = dict(sd)
        k = sorted(sd)[0]
        if change == "drop":
            del sd[k]
        elif change == "extra":
            sd["bogus.weight"] = torch.zeros(2)
        else:
            sd[k] = torch.zeros(3, 3)
        return sd

    _retensor(_weights(run), fn)
    vis, ir = pair
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                   "--checkpoint", str(run)], _weights(run).name)


@pytest.mark.parametrize("field", ["epoch", "model"])
def test_item8_checkpoint_json_missing_fields(tmp_path, pair, capsys, field):
    run = _run(tmp_path)
    rec = _record(run)
    del rec[field]
    (run / "checkpoint.json").write_text(json.dumps(rec))
    vis, ir = pair
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                   "--checkpoint", str(run)], "checkpoint.json", repr(field))


def test_item8_info_with_an_empty_guide_record(guides, capsys):
    (guides / "default.json").write_text("")
    _fail(capsys, ["info"], "default.json")


@pytest.mark.parametrize("name", ["../../x.safetensors", "/etc/passwd", "sub/../../run/model.safetensors",
                                  "link.safetensors"])
def test_item9_checkpoint_json_may_not_name_files_outside_the_run(tmp_path, pair, capsys, name):
    run = _run(tmp_path)
    outside = tmp_path / "x.safetensors"
    outside.write_bytes(_weights(run).read_bytes())
    (run / "link.safetensors").symlink_to(outside)
    rec = _record(run)
    rec["model"] = name
    (run / "checkpoint.json").write_text(json.dumps(rec))
    vis, ir = pair
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                   "--checkpoint", str(run)], "not a file inside the run folder")


@pytest.mark.parametrize("cfg, field", [({"base": 3000}, "base"), ({"in_channels": "2"}, "in_channels"),
                                        ({"base": True}, "base"), ({"guide": "evil"}, "guide"),
                                        ({"extra_field": 1}, "extra_field")])
def test_item9_item10_model_config_is_bounded_and_named(tmp_path, pair, capsys, cfg, field):
    from safetensors import safe_open

    run = _run(tmp_path)
    w = _weights(run)
    with safe_open(str(w), framework="pt") as f:
        meta = dict(f.metadata())
    config = {**json.loads(meta["config"]), **cfg}
    from safetensors.torch import load, save

    w.write_bytes(save(load(w.read_bytes()), metadata={**meta, "config": json.dumps(config)}))
    vis, ir = pair
    err = _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                         "--checkpoint", str(run)], w.name, field)
    assert "got 2\n" not in err


@pytest.mark.parametrize("text, fragment", [('{"epoch": 1, "model": ', "not valid JSON"),
                                            ("[1, 2]", "JSON object"), ("\xff\xfe", "checkpoint.json")])
def test_item10_checkpoint_json_messages_name_the_file(tmp_path, pair, capsys, text, fragment):
    run = _run(tmp_path)
    (run / "checkpoint.json").write_bytes(text.encode("latin-1"))
    vis, ir = pair
    _fail(capsys, ["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                   "--checkpoint", str(run)], "checkpoint.json", fragment)


@pytest.mark.parametrize("history", ['{"a": 1}', '["x"]', "nonsense"])
def test_item10_bad_history_is_named_before_the_evaluation(tmp_path, folders, capsys, history, monkeypatch):
    from hfkernels import evaluation as E

    run = _run(tmp_path)
    (run / "history.json").write_text(history)
    monkeypatch.setattr(E, "score", lambda *a, **k: pytest.fail("evaluated before checking history.json"))
    _fail(capsys, ["eval", "--data", str(folders), "--checkpoint", str(run), "--metrics", "EN",
                   "--report", str(tmp_path / "R")], "history.json")


def test_item10_a_folder_in_place_of_the_guide(guides, capsys):
    (guides / "default.safetensors").unlink()
    (guides / "default.safetensors").mkdir()
    hk.fuse_color(torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32))
    err = capsys.readouterr().err
    assert "train one" not in err and "not installed" in err


def test_item11_fuse_and_eval_need_only_the_model(tmp_path, pair, folders, capsys):
    run = _run(tmp_path)
    (run / _record(run)["optimizer"]).unlink()
    vis, ir = pair
    assert main(["fuse", "--vis", str(vis), "--ir", str(ir), "--out", str(tmp_path / "o.png"),
                 "--checkpoint", str(run)]) == 0
    assert main(["eval", "--data", str(folders), "--checkpoint", str(run), "--metrics", "EN"]) == 0


# --------------------------------------------------------------------------------------------
# item 7b: a released training script swaps in hfkernels by its import line


def test_item7b_fuse_color_clamps_y_like_the_released_colour_path():
    from hfkernels.core import reference as ref

    g = torch.Generator().manual_seed(0)
    vis = (torch.rand(1, 3, 64, 64, generator=g) > 0.5).float()  # hard edges overshoot
    ir = (torch.rand(1, 1, 64, 64, generator=g) > 0.5).float()
    mu = torch.rand(1, 1, 64, 64, generator=g)
    ycc = ref.rgb_to_ycbcr(vis)
    y = hk.fuse(ycc[:, :1], ref.luma(ir), mu)
    assert (y < 0).any() or (y > 1).any()  # the case at stake
    want = ref.ycbcr_to_rgb(torch.cat([y.clamp(0, 1), ycc[:, 1:]], 1)).clamp(0, 1)
    torch.testing.assert_close(hk.fuse_color(vis, ir, mu), want, atol=1e-6, rtol=0)


def test_item7b_released_loss_keyword_names():
    vis, ir = torch.rand(1, 3, 48, 48) * 2 - 1, torch.rand(1, 1, 48, 48) * 2 - 1
    fused = (vis + ir) / 2
    ours = hk.FusionLoss(max_w=3.0, consist_w=4.0, grad_w=5.0, ssim_w=6.0, ssim_ir_w=0.5, color_w=7.0,
                         window_size=11)
    released = hk.FusionLoss(max_ratio=3.0, consist_ratio=4.0, grad_ratio=5.0, ssim_ir_ratio=0.5, ssim_ratio=6.0,
                             ir_compose=2.0, color_ratio=7.0, max_mode="l1", consist_mode="l1", ssim_window_size=11)
    assert float(ours(vis, ir, fused)) == float(released(vis, ir, fused))
    # positionally the released order (ssim_ir before ssim) would swap them: refused, not swapped
    with pytest.raises(TypeError):
        hk.FusionLoss(10.0, 2.0, 40.0, 0.5, 6.0)
    with pytest.raises(ValueError, match="max_mode"):
        hk.FusionLoss(max_mode="l2")
    with pytest.raises(TypeError, match="bogus"):
        hk.FusionLoss(bogus=1)


def test_item7b_fuse_broadcasts_a_batch1_mu_and_takes_bf16_mu_under_autocast():
    vis, ir = torch.rand(3, 3, 20, 24, requires_grad=True), torch.rand(3, 1, 20, 24)
    mu1 = torch.rand(1, 1, 20, 24, requires_grad=True)
    out = hk.fuse(vis, ir, mu1)
    torch.testing.assert_close(out, hk.fuse(vis, ir, mu1.expand(3, -1, -1, -1).contiguous()))
    out.sum().backward()
    assert mu1.grad.shape == mu1.shape
    mu_bf16 = torch.rand(3, 1, 20, 24).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hk.fuse(vis, ir, mu_bf16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, hk.fuse(vis, ir, mu_bf16.float()))
    with pytest.raises(TypeError):  # outside autocast a dtype mismatch stays an error
        hk.fuse(vis, ir, mu_bf16)
    with pytest.raises(ValueError):  # a guide at another resolution stays an error
        hk.fuse(vis, ir, torch.rand(3, 1, 10, 12))


def test_item7b_fusion_as_a_module():
    m = hk.LaplacianPyramidFusion(num_levels=4).to("cpu")
    vis, ir, mu = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(m(vis, ir, mu), hk.fuse(vis, ir, mu, 4))
    assert list(m.parameters()) == [] and "num_levels=4" in repr(m)
    with pytest.raises(ValueError):
        hk.LaplacianPyramidFusion(num_levels=0)


# --------------------------------------------------------------------------------------------
# item 15: memory is bounded


def test_item15_guide_in_tiles_matches_the_full_image():
    from hfkernels.guidance import sources as G
    from hfkernels.guidance.models import forward_pair

    model = G.packaged_guidance().model
    g = torch.Generator().manual_seed(0)
    vis, ir = torch.rand(1, 3, 150, 230, generator=g), torch.rand(1, 1, 150, 230, generator=g)
    vis = torch.nn.functional.avg_pool2d(vis, 5, 1, 2)  # some structure for the network to see
    with torch.no_grad():
        full = forward_pair(model, vis, ir, fast=False)[0]
        tiled = G.tiled_forward(model, vis, ir, tile=64, margin=128)
    assert tiled.shape == full.shape
    # only the zero padding 128 pixels beyond each 64-pixel tile differs (measured: 5.2e-3 at most)
    assert float((tiled - full).abs().max()) < 1e-2 and float((tiled - full).abs().mean()) < 1e-3


def test_item15_memory_estimate_of_a_large_pair():
    from hfkernels.cli.fuse import needed_bytes

    # 8000x8000: the fusion's 100 B/px plus one guide tile (1344^2 px at 285 B), not 64 MP of guide
    assert 6.0 < needed_bytes(8000, 8000, True) / 2**30 < 7.0
    assert needed_bytes(8000, 8000, False) < needed_bytes(8000, 8000, True)


def test_item15_decompression_bomb_is_a_named_error(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from hfkernels.io import read_image

    p = _png(tmp_path / "big.png", 64, 64)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is then a "bomb" (> 2x the limit)
    with pytest.raises(ValueError, match="big.png"):
        read_image(p)


def test_item15_eval_lists_an_image_it_cannot_decode_among_the_pairs(folders, monkeypatch, capsys):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    _fail(capsys, ["eval", "--data", str(folders), "--method", "0.5", "--metrics", "EN"], "a.png", "b.png")


_LIMITED = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(float(sys.argv[1]) * 2**30),) * 2)
import hfkernels.guidance.sources as G
G.TILE = int(sys.argv[2])
from hfkernels.cli import main
sys.exit(main(["fuse", "--vis", sys.argv[3], "--ir", sys.argv[4], "--out", sys.argv[5]]))
"""


def test_item15_fuse_under_a_memory_limit(tmp_path):
    """Default guide on a 2000x2000 pair under RLIMIT_AS 2.0 GB: the full-image network needs
    about 2.3 GB of address space (VmPeak 1.66 GB measured at 1500x1500, +0.38 GB a megapixel),
    so it ends in one error line naming the image and the memory it needs; in 256-pixel tiles
    the same fuse needs about 1.7 GB (1.55 GB at 1500x1500, +0.1 GB a megapixel) and succeeds."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    vis, ir = tmp_path / "vis.png", tmp_path / "ir.png"
    Image.fromarray(rng.integers(0, 256, (2000, 2000, 3), dtype=np.uint8)).save(vis)
    Image.fromarray(rng.integers(0, 256, (2000, 2000), dtype=np.uint8)).save(ir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def fuse(limit_gb, tile, out):
        return subprocess.run([sys.executable, "-c", _LIMITED, str(limit_gb), str(tile), str(vis), str(ir),
                               str(tmp_path / out)], env=env, capture_output=True, text=True, timeout=900)

    naive = fuse(2.0, 10**6, "naive.png")
    assert naive.returncode == 2 and "not enough memory" in naive.stderr and "Traceback" not in naive.stderr, naive.stderr
    assert "vis.png" in naive.stderr and "GiB" in naive.stderr, naive.stderr
    tiled = fuse(2.0, 256, "tiled.png")
    assert tiled.returncode == 0, tiled.stderr
    assert (tmp_path / "tiled.png").is_file() and not (tmp_path / "naive.png").exists()


# --------------------------------------------------------------------------------------------
# item 16: FusionLoss's elementwise terms as one single-threaded op on the cpu backend


@pytest.mark.parametrize("ir_c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_item16_fused_terms_match_the_plain_composition(ir_c, dtype):
    from hfkernels.core import loss_reference as lref
    from hfkernels.core.backends import available_backends

    if "cpu" not in available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    g = torch.Generator().manual_seed(ir_c)
    vis = (torch.rand(2, 3, 40, 52, generator=g, dtype=dtype) * 2 - 1).requires_grad_()
    ir = (torch.rand(2, ir_c, 40, 52, generator=g, dtype=dtype) * 2 - 1).requires_grad_()
    fused = (torch.rand(2, 3, 40, 52, generator=g, dtype=dtype) * 2 - 1).requires_grad_()
    ir.data[0] = vis.data[0].mean(0, keepdim=True) if ir_c == 1 else vis.data[0]  # ties of the max choice
    fused.data[1, :, :5] = vis.data[1, :, :5]  # kinks of |.|
    loss = hk.FusionLoss(backend="cpu", window_size=11)
    total, terms = loss(vis, ir, fused, return_terms=True)
    want, want_terms = lref.fusion_loss(vis, ir, fused, window_size=11)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for k in terms:
        torch.testing.assert_close(terms[k], want_terms[k].to(dtype), atol=tol, rtol=tol, msg=k)
    got = torch.autograd.grad(total, (vis, ir, fused))
    ref_g = torch.autograd.grad(want, (vis, ir, fused))
    for name, a, b in zip(("vis", "ir", "fused"), got, ref_g):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=name)
    assert torch.get_num_threads() >= 1
    with torch.no_grad():
        torch.testing.assert_close(loss(vis, ir, fused), total.detach())


def test_item16_cpu_loss_uses_the_fused_terms():
    from hfkernels.core.backends import available_backends, get_backend

    if "cpu" not in available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    from hfkernels.ops.lossterms_ext import lossterms_cpu

    assert get_backend("cpu").ops["lossterms"] is lossterms_cpu
    n = torch.get_num_threads()
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_()
    hk.FusionLoss(backend="cpu", window_size=5)(x, x[:, :1], x).backward()
    assert torch.get_num_threads() == n  # the single-threaded region is undone
