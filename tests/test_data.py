"""Data: layout detection, checks that list every bad file, bucketing, caching, generated scenes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hfkernels.io import read_image
from hfkernels.io.datasets import DataError, PairDataset, find_sets, fit_size
from hfkernels.training.batches import BatchLoader, epoch_batches
from hfkernels.training.synthetic import SyntheticPairs, make_pair, write_pairs


def _img(path: Path, h: int, w: int, c: int = 1, value: int | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = rng.integers(0, 256, size=(h, w, c) if c > 1 else (h, w), dtype=np.uint8)
    if value is not None:
        arr[:] = value
    Image.fromarray(arr).save(path)


def _pairs(folder: Path, names, h=12, w=16, vis="vi", ir="ir"):
    for n in names:
        _img(folder / vis / n, h, w, 3)
        _img(folder / ir / n, h, w, 1)


# ----------------------------------------------------------------------------- layouts
def test_layouts(tmp_path):
    _pairs(tmp_path / "Road", ["a.png", "b.png"])
    _pairs(tmp_path / "MSRS" / "train", ["1.png"])
    _pairs(tmp_path / "MSRS" / "test", ["2.png", "3.png"])
    _pairs(tmp_path / "Harv" / "CT-MRI", ["x.png"], vis="CT", ir="MRI")
    _pairs(tmp_path / "Harv" / "PET-MRI", ["y.png"], vis="PET", ir="MRI")
    _pairs(tmp_path / "Caps", ["c.png"], vis="Visible", ir="Infrared")

    (s,) = find_sets(tmp_path / "Road")
    assert (s.vis_dir.name, s.ir_dir.name, s.name) == ("vi", "ir", "Road")
    (s,) = find_sets(tmp_path / "MSRS", split="train")
    assert s.vis_dir == tmp_path / "MSRS" / "train" / "vi" and s.name == "MSRS-train"
    (s,) = find_sets(tmp_path / "MSRS", split="test")
    assert s.vis_dir == tmp_path / "MSRS" / "test" / "vi" and s.name == "MSRS-test"
    (s,) = find_sets(tmp_path / "Harv" / "PET-MRI")
    assert (s.vis_dir.name, s.ir_dir.name) == ("PET", "MRI")  # functional image first
    sets = find_sets(tmp_path / "Harv")
    assert [(x.name, x.vis_dir.name) for x in sets] == [("Harv/CT-MRI", "CT"), ("Harv/PET-MRI", "PET")]
    (s,) = find_sets(tmp_path / "Caps")
    assert (s.vis_dir.name, s.ir_dir.name) == ("Visible", "Infrared")
    (s,) = find_sets(f"{tmp_path / 'Road' / 'vi'},{tmp_path / 'Road' / 'ir'}")
    assert s.ir_dir == tmp_path / "Road" / "ir"
    # MSRS with only a test split still works for training (falls back)
    _pairs(tmp_path / "OnlyTest" / "test", ["9.png"])
    (s,) = find_sets(tmp_path / "OnlyTest", split="train")
    assert s.name == "OnlyTest-test"


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_sets(tmp_path / "missing")
    (tmp_path / "empty" / "foo").mkdir(parents=True)
    with pytest.raises(DataError, match="no image pairs found.*foo"):
        find_sets(tmp_path / "empty")
    with pytest.raises(DataError, match="VIS_DIR,IR_DIR"):
        find_sets("a,b,c")


# ----------------------------------------------------------------------------- checks
def test_every_bad_file_is_listed(tmp_path):
    root = tmp_path / "set"
    _pairs(root, ["ok.png", "ok2.png"])
    _img(root / "vi" / "lonely_vis.png", 12, 16, 3)
    _img(root / "ir" / "lonely_ir.png", 12, 16)
    (root / "vi" / "broken.png").write_bytes(b"not a png at all")
    _img(root / "ir" / "broken.png", 12, 16)
    _img(root / "vi" / "big.png", 20, 16, 3)
    _img(root / "ir" / "big.png", 12, 16)
    with pytest.raises(DataError) as e:
        PairDataset(root)
    msg = str(e.value)
    for name in ("lonely_vis.png", "lonely_ir.png", "broken.png", "big.png"):
        assert name in msg
    assert "ok.png" not in msg


def test_empty_folder(tmp_path):
    (tmp_path / "s" / "vi").mkdir(parents=True)
    (tmp_path / "s" / "ir").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        PairDataset(tmp_path / "s")


def test_items_sizes_and_max_size(tmp_path):
    _pairs(tmp_path / "s", ["a.png"], h=30, w=50)
    _img(tmp_path / "s" / "vi" / "g.png", 20, 10, 1)  # gray first source
    _img(tmp_path / "s" / "ir" / "g.png", 20, 10, 1)
    ds = PairDataset(tmp_path / "s")
    assert ds.sizes == [(30, 50), (20, 10)] and ds.names == ["a.png", "g.png"]
    vis, ir = ds[0]
    assert vis.dtype == torch.uint8 and vis.shape == (3, 30, 50) and ir.shape == (1, 30, 50)
    assert torch.equal(vis, (read_image(tmp_path / "s" / "vi" / "a.png", "rgb") * 255).round().to(torch.uint8))
    gv, _ = ds[1]
    assert gv.shape == (3, 20, 10) and torch.equal(gv[0], gv[1]) and torch.equal(gv[1], gv[2])
    small = PairDataset(tmp_path / "s", max_size=25)
    assert small.sizes == [(15, 25), (20, 10)]  # aspect kept; small images untouched
    assert small[0][0].shape == (3, 15, 25) and small[0][1].shape == (1, 15, 25)
    assert fit_size(480, 640, 100) == (75, 100) and fit_size(3, 1000, 10) == (1, 10)
    with pytest.raises(ValueError, match="max_size"):
        PairDataset(tmp_path / "s", max_size=0)


# ----------------------------------------------------------------------------- batches
def test_bucketing():
    sizes = [(4, 4)] * 5 + [(8, 6)] * 3 + [(2, 2)]
    b = epoch_batches(sizes, 2, seed=1, epoch=1)
    assert sorted(i for batch in b for i in batch) == list(range(9))
    for batch in b:
        assert len({sizes[i] for i in batch}) == 1 and 1 <= len(batch) <= 2
    assert len(b) == 3 + 2 + 1
    assert b == epoch_batches(sizes, 2, seed=1, epoch=1)  # reproducible
    others = [epoch_batches(sizes, 2, seed=1, epoch=e) for e in range(2, 6)]
    assert any(o != b for o in others)  # reshuffled between epochs
    assert epoch_batches(sizes, 3, shuffle=False) == [[8], [0, 1, 2], [3, 4], [5, 6, 7]]


def test_bucketing_distributed():
    sizes = [(4, 4)] * 7
    r0 = epoch_batches(sizes, 2, seed=0, epoch=3, rank=0, world=2)
    r1 = epoch_batches(sizes, 2, seed=0, epoch=3, rank=1, world=2)
    assert len(r0) == len(r1) == 2  # 4 batches dealt out
    assert {i for b in r0 + r1 for i in b} == set(range(7))
    r = [epoch_batches(sizes, 4, rank=k, world=3) for k in range(3)]
    assert [len(x) for x in r] == [1, 1, 1]  # 2 batches padded to 3 by wrapping round


@pytest.mark.parametrize("cache", [True, False])
def test_loader(cache):
    ds = SyntheticPairs(5, (24, 20), seed=3)
    loader = BatchLoader(ds, 2, "cpu", cache=cache, seed=0)
    assert loader.cached is cache
    seen = []
    for idx, vis, ir in loader.epoch(1):
        assert vis.dtype == torch.float32 and vis.shape == (len(idx), 3, 24, 20) and ir.shape == (len(idx), 1, 24, 20)
        for k, i in enumerate(idx):
            v, r = ds[i]
            assert torch.equal(vis[k], v.float() / 255) and torch.equal(ir[k], r.float() / 255)
        seen += idx
    assert sorted(seen) == list(range(5))
    assert len(loader) == 3


class _MixedSizes(torch.utils.data.Dataset):
    """Items of many sizes (as RoadScene has), each pixel tagged with its item and position."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        v = (torch.arange(h * w).reshape(1, h, w) * 7 + i) % 251
        return v.expand(3, h, w).to(torch.uint8).clone(), v.to(torch.uint8)


@pytest.mark.parametrize("cache", [True, False])
def test_crops_make_full_batches_of_mixed_sizes(cache):
    sizes = [(30 + 3 * i, 40 + 5 * (i % 4)) for i in range(11)]  # 11 items, 11 sizes
    ds = _MixedSizes(sizes)
    # without crops, batches follow the sizes: one image each
    assert [len(b) for b in epoch_batches(sizes, 4)] == [1] * 11
    loader = BatchLoader(ds, 4, "cpu", cache=cache, seed=0, crop=32)
    seen, shapes = [], []
    for idx, vis, ir in loader.epoch(1):
        shapes.append(tuple(vis.shape))
        assert vis.shape[-2:] == (min(32, *(sizes[i][0] for i in idx)), min(32, *(sizes[i][1] for i in idx)))
        for k, i in enumerate(idx):
            full, _ = ds[i]
            # each crop is a window of its own image
            h, w = vis.shape[-2:]
            win = (vis[k, 0] * 255).round().to(torch.uint8)
            hits = [(y, x) for y in range(sizes[i][0] - h + 1) for x in range(sizes[i][1] - w + 1)
                    if torch.equal(full[0, y:y + h, x:x + w], win)]
            assert hits
        seen += idx
    assert [s[0] for s in shapes] == [4, 4, 3] and sorted(seen) == list(range(11))
    # the same windows again for the same (seed, epoch): a resumed run sees the same crops
    again = [vis for _, vis, _ in BatchLoader(ds, 4, "cpu", cache=cache, seed=0, crop=32).epoch(1)]
    first = [vis for _, vis, _ in loader.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


# ----------------------------------------------------------------------------- generated scenes
def test_synthetic_pairs(tmp_path):
    v1, i1 = make_pair(40, 56, seed=7)
    v2, i2 = make_pair(40, 56, seed=7)
    assert torch.equal(v1, v2) and torch.equal(i1, i2)
    assert v1.shape == (3, 40, 56) and i1.shape == (1, 40, 56)
    assert v1.min() >= 0 and v1.max() <= 1 and i1.min() >= 0 and i1.max() <= 1
    assert not torch.equal(make_pair(40, 56, seed=8)[0], v1)
    # the two sources differ: that is what fusion is for
    assert (v1.mean(0) - i1[0]).abs().mean() > 0.05
    assert make_pair(1, 1, 0)[0].shape == (3, 1, 1)
    ds = SyntheticPairs(3, (40, 56), seed=2)
    write_pairs(tmp_path / "syn", 3, (40, 56), seed=2)
    back = PairDataset(tmp_path / "syn")
    for i in range(3):
        assert torch.equal(back[i][0], ds[i][0]) and torch.equal(back[i][1], ds[i][1])


# ----------------------------------------------------------------------------- the shared real data
@pytest.mark.data
def test_real_layouts(data_dir):
    names = {s.name for s in find_sets(data_dir / "MSRS", split="test")}
    assert names == {"MSRS-test"}
    harvard = find_sets(data_dir / "Harvard")
    assert {s.vis_dir.name for s in harvard} == {"CT", "PET", "SPECT"}
    assert all(s.ir_dir.name == "MRI" for s in harvard)
    ds = PairDataset(data_dir / "RoadScene", max_size=64)
    assert len(ds) == 221 and max(max(s) for s in ds.sizes) <= 64
    assert len(set(ds.sizes)) > 1  # sizes vary: bucketing, not resizing to one size
