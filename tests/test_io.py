"""Image reading/writing and pairing of folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from hfkernels.io import PairingError, match_pairs, read_image, write_image


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def test_read_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = _png(tmp_path / "a.png", rgb)
    t = read_image(p)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert np.array_equal((t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), rgb)
    assert read_image(p, "gray").shape == (1, 5, 7)
    g = _png(tmp_path / "g.png", rgb[..., 0])
    assert read_image(g).shape == (1, 5, 7)
    assert read_image(g, "rgb").shape == (3, 5, 7)


def test_read_16bit(tmp_path):
    arr = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    p = tmp_path / "d.png"
    Image.fromarray(arr).save(p)
    t = read_image(p, "gray")
    assert t.shape == (1, 2, 2) and float(t.max()) == 1.0


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(bad)


def test_write_round_trip(tmp_path):
    x = torch.rand(3, 4, 6)
    write_image(tmp_path / "sub" / "x.png", x)
    y = read_image(tmp_path / "sub" / "x.png")
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="one image"):
        write_image(tmp_path / "y.png", torch.rand(2, 3, 4, 4))


def test_match_pairs(tmp_path):
    a, b = tmp_path / "vi", tmp_path / "ir"
    a.mkdir()
    b.mkdir()
    px = np.zeros((2, 2), np.uint8)
    for n in ("1.png", "2.png", "3.jpg", "only_a.png"):
        _png(a / n, px)
    for n in ("1.png", "2.png", "3.png", "only_b.png"):
        _png(b / n, px)
    (a / "notes.txt").write_text("not an image")
    res = match_pairs(a, b, strict=False)
    assert [(p.name, q.name) for p, q in res.pairs] == [("1.png", "1.png"), ("2.png", "2.png"), ("3.jpg", "3.png")]
    assert [p.name for p in res.only_a] == ["only_a.png"]
    assert [p.name for p in res.only_b] == ["only_b.png"]
    with pytest.raises(PairingError, match="only_a.png") as e:
        match_pairs(a, b)
    assert "only_b.png" in str(e.value)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        match_pairs(tmp_path / "x", tmp_path)
    (tmp_path / "e").mkdir()
    with pytest.raises(PairingError, match="no images"):
        match_pairs(tmp_path / "e", tmp_path / "e")
