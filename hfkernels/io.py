"""Image files: reading, writing, pairing two folders by file name, finding the shared data.

Every error names the file (or files) at fault; nothing is dropped silently.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class PairingError(ValueError):
    """Two folders whose images do not pair up one to one by file name."""


def is_image(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def read_image(path, mode: str = "keep") -> torch.Tensor:
    """Read an 8/16-bit image as a float32 (C, H, W) tensor in [0, 1].

    mode: ``"rgb"`` (3 channels), ``"gray"`` (1 channel, ITU-R 601 luma as PIL computes it) or
    ``"keep"`` (1 channel for grayscale files, 3 for colour; alpha dropped).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "keep":
                im = im.convert("L") if im.mode in ("L", "LA", "1", "P") and _is_gray(im) else (
                    im if im.mode in ("I;16", "I", "F") else im.convert("RGB")
                )
            elif mode == "rgb":
                im = im.convert("RGB")
            elif mode == "gray":
                im = im if im.mode in ("I;16", "I", "F", "L") else im.convert("L")
            else:
                raise ValueError(f"mode must be 'rgb', 'gray' or 'keep', got {mode!r}")
            arr = np.array(im)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    scale = 65535.0 if arr.dtype == np.uint16 or arr.dtype == np.int32 else 255.0
    if arr.dtype in (np.float32, np.float64):
        scale = 1.0
    t = torch.from_numpy(arr.astype(np.float32) / scale)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _is_gray(im) -> bool:
    if im.mode == "P":
        pal = im.convert("RGB")
        a = np.asarray(pal)
        return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
    return True


def write_image(path, x: torch.Tensor) -> None:
    """Write a (C, H, W) or (1, C, H, W) tensor in [0, 1] (clamped) as an 8-bit image."""
    x = x.detach()
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"write_image takes one image, got batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"image to write must be (1|3, H, W), got {tuple(x.shape)}")
    arr = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def list_images(folder) -> list[Path]:
    """Image files directly in ``folder``, sorted by name. Raises if it is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
    if not files:
        raise PairingError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


@dataclass
class Pairs:
    pairs: list[tuple[Path, Path]]
    only_a: list[Path]
    only_b: list[Path]


def match_pairs(folder_a, folder_b, strict: bool = True) -> Pairs:
    """Pair the images of two folders by file name (exact name, else same stem).

    With ``strict`` (default) any unmatched file raises :class:`PairingError` listing them all.
    """
    a, b = list_images(folder_a), list_images(folder_b)
    by_name = {p.name: p for p in b}
    by_stem: dict[str, list[Path]] = {}
    for p in b:
        by_stem.setdefault(p.stem, []).append(p)
    pairs, only_a, used = [], [], set()
    for p in a:
        q = by_name.get(p.name)
        if q is None and len(by_stem.get(p.stem, [])) == 1:
            q = by_stem[p.stem][0]
        if q is None or q in used:
            only_a.append(p)
        else:
            used.add(q)
            pairs.append((p, q))
    only_b = [p for p in b if p not in used]
    res = Pairs(pairs, only_a, only_b)
    if strict and (only_a or only_b):
        raise PairingError(describe_unmatched(folder_a, folder_b, res))
    return res


def describe_unmatched(folder_a, folder_b, res: Pairs) -> str:
    lines = [f"{len(res.only_a) + len(res.only_b)} image(s) have no partner:"]
    lines += [f"  only in {folder_a}: {p.name}" for p in res.only_a]
    lines += [f"  only in {folder_b}: {p.name}" for p in res.only_b]
    return "\n".join(lines)


def data_root() -> Path | None:
    """The shared real-image folder: ``$HFK_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("HFK_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None
