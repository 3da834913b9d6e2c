"""Image files of the results page: full-size copies, thumbnails, and the zoomed crop where the
fusions differ most."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ...core.reference import luma

#: display height of thumbnails in CSS pixels; they are stored at this height, downscaled once
THUMB_HEIGHT = 96
#: JPEG quality of full-size copies and thumbnails (4:4:4, so colour edges stay sharp)
FULL_QUALITY = 92
THUMB_QUALITY = 85


def to_pil(x: torch.Tensor) -> Image.Image:
    """(1, C, H, W) or (C, H, W) tensor in [0, 1] (clamped), C in {1, 3} -> 8-bit PIL image."""
    x = x.detach()
    if x.dim() == 4:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"image must be (1|3, H, W), got {tuple(x.shape)}")
    arr = (x.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr)


def save_full_and_thumb(x: torch.Tensor, full: Path, thumb: Path, height: int = THUMB_HEIGHT) -> tuple[int, int]:
    """Write ``x`` (1, C, H, W) in [0, 1] as a full-size JPEG and a thumbnail of ``height`` rows.

    Returns the thumbnail's (width, height), for the page's ``<img>`` size attributes (they keep
    the layout from jumping while lazily loaded images arrive)."""
    im = to_pil(x)
    full.parent.mkdir(parents=True, exist_ok=True)
    thumb.parent.mkdir(parents=True, exist_ok=True)
    im.save(full, quality=FULL_QUALITY, subsampling=0)
    w, h = im.size
    th = min(height, h)
    tw = max(1, round(w * th / h))
    small = im.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=2.0) if (tw, th) != (w, h) else im
    small.save(thumb, quality=THUMB_QUALITY)
    return tw, th


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (1, 1, H, W) luma (ITU-R 601 weights), float32."""
    x = x.float()
    return x if x.shape[1] == 1 else luma(x[:, :3])


def crop_geometry(h: int, w: int) -> tuple[int, int]:
    """(side, zoom) of the square crop for an H x W image: about an eighth of the shorter side
    (16 to 48 pixels), magnified by nearest-neighbour ``zoom`` (>= 2) to about a thumbnail's height."""
    side = max(1, min(h, w, max(16, min(48, min(h, w) // 8))))
    zoom = max(2, THUMB_HEIGHT // side)
    return side, zoom


#: luma beyond which a pixel counts as blown out (or crushed) in a fusion
SATURATED = (0.03, 0.92)


#: added to the local mean in the contrast ratio, so that near-black areas do not dominate
WEBER_FLOOR = 0.1


def _detail(y: torch.Tensor) -> torch.Tensor:
    """(K, 1, H, W) local contrast: luma minus its 5x5 mean, over that mean (plus
    :data:`WEBER_FLOOR`): the structure, without the brightness, as the eye weighs it (the same
    step reads larger in shadow than beside a lamp)."""
    pad = min(2, y.shape[-2] - 1, y.shape[-1] - 1)
    if pad < 1:
        mean = y.mean(dim=(-2, -1), keepdim=True)
    else:
        mean = F.avg_pool2d(F.pad(y, (pad,) * 4, mode="replicate"), 2 * pad + 1, stride=1)
    return (y - mean) / (mean + WEBER_FLOOR)


def differ_most(images: list[torch.Tensor], side: int) -> tuple[int, int]:
    """Top-left (y, x) of the ``side`` x ``side`` window where ``images`` differ most in structure.

    Args:
        images: two or more (1, C, H, W) tensors of one size (C may differ: luma is compared).
    The disagreement of a pixel is the standard deviation across the images of their local
    contrast (:func:`_detail`), so a window where one fusion is only brighter (a blown-out lamp,
    a flat sky) does not win; pixels saturated in any image (luma outside
    :data:`SATURATED`) count as no disagreement, and a window's score is its mean disagreement
    times the squared share of unsaturated pixels in it. The best window wins (the first one on
    ties, scanning rows then columns).
    """
    if len(images) < 2:
        raise ValueError(f"differ_most needs at least 2 images, got {len(images)}")
    stack = torch.cat([_luma(t).cpu() for t in images], dim=0)  # (K, 1, H, W)
    spread = _detail(stack).std(dim=0, keepdim=True)  # (1, 1, H, W)
    h, w = spread.shape[-2:]
    side = min(side, h, w)
    lo, hi = SATURATED
    sat = ((stack < lo) | (stack > hi)).any(dim=0, keepdim=True)
    # saturated pixels count as no disagreement, and a window is discounted by the share of
    # them it holds: a lamp and its halo differ between fusions in brightness, not in structure
    spread = spread.masked_fill(sat, 0)
    stride = max(1, side // 4)
    clear = (1 - F.avg_pool2d(sat.float(), side, stride=stride)) ** 2
    score = F.avg_pool2d(spread, side, stride=stride) * clear  # (1, 1, h', w')
    k = int(torch.argmax(score.flatten()))
    wx = score.shape[-1]
    return (k // wx) * stride, (k % wx) * stride


def save_crop(x: torch.Tensor, y: int, x0: int, side: int, zoom: int, path: Path) -> None:
    """Write the ``side`` x ``side`` window of ``x`` (1, C, H, W) at (y, x0), magnified ``zoom``
    times with nearest-neighbour (pixels stay visible as pixels), as a lossless PNG."""
    im = to_pil(x[..., y:y + side, x0:x0 + side])
    im = im.resize((im.size[0] * zoom, im.size[1] * zoom), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, optimize=False, compress_level=3)


__all__ = ["THUMB_HEIGHT", "to_pil", "save_full_and_thumb", "crop_geometry", "differ_most", "save_crop"]

