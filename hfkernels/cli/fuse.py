"""``hfkernels fuse``: fuse one pair of images, or two folders of pairs matched by file name, or
two videos (video files, or frame folders with ``--video``; see :mod:`hfkernels.video.cli`).

Guidance maps (``--save-mu``) go into a ``mu/`` folder beside the fused images, under the fused
image's name, so a folder of fused images holds nothing else for ``hfkernels eval --fused``.
No output may be an input or lie inside an input folder, and existing files are replaced only
with ``--overwrite``; both are checked before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import guidance
from . import CLIError, parse_device, source_paths


def register(sub):
    p = sub.add_parser(
        "fuse", help="fuse an image pair or two folders of pairs",
        description="Fuse a visible and an infrared image (or two folders of pairs, matched by file name) with "
                    "the pyramid fusion: the luma is fused, the visible colour kept. The guidance is the trained "
                    "guide shipped with hfkernels unless --mu or --checkpoint says otherwise.")
    p.add_argument("--vis", required=True, help="visible image (first source) or folder")
    p.add_argument("--ir", required=True, help="infrared image (second source) or folder")
    p.add_argument("--out", required=True, help="output image (single pair) or folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mu", default=None,
                   help="'heuristic' or a constant in [0,1] (default: the trained guide shipped with "
                        "hfkernels; `hfkernels info` names it)")
    g.add_argument("--checkpoint", default=None, help="a training run folder whose model predicts mu")
    p.add_argument("--levels", type=int, default=4,
                   help="Laplacian pyramid levels of the fusion (default: %(default)s; capped by the image size)")
    p.add_argument("--backend", default=None, help="triton | cuda | cpu | torch (default: best)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--save-mu", action="store_true",
                   help="also write each guidance map, as mu/<name>.png beside the fused image")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    from ..video.cli import add_fuse_options

    add_fuse_options(p)
    p.set_defaults(func=run)


def guidance_of(args, device):
    """The guidance ``mu_fn(vis, ir) -> mu`` that ``--mu`` / ``--checkpoint`` ask for."""
    try:
        mu = None if args.mu is None else guidance.parse(args.mu, "--mu")
    except ValueError as e:
        raise CLIError(str(e)) from None
    return guidance.resolve(mu, getattr(args, "checkpoint", None), device)


def fuse_pair(vis_path, ir_path, fusion, device):
    """``(fused (1,C,H,W), mu (1,1,H,W))`` of one pair of files under a guided fusion."""
    from ..evaluation import fused_and_mu
    from ..io import read_image

    vis = read_image(vis_path, "keep")[None].to(device)
    ir = read_image(ir_path, "gray")[None].to(device)
    if vis.shape[-2:] != ir.shape[-2:]:
        raise CLIError(
            f"size mismatch: {vis_path} is {tuple(vis.shape[-2:])}, {ir_path} is {tuple(ir.shape[-2:])}"
        )
    with torch.no_grad():
        return fused_and_mu(fusion, vis, ir)


#: sub-folder of the output folder that holds the guidance maps of --save-mu
MU_DIR = "mu"


def mu_path(fused_path: Path) -> Path:
    """Where ``--save-mu`` writes the guidance map of ``fused_path``."""
    return fused_path.parent / MU_DIR / fused_path.name


def checkpoint_files(run) -> list[Path]:
    """The files a checkpoint (a run folder or a weights file) is read from: outputs may not
    replace them (writing beside them is fine)."""
    p = Path(run)
    return [*p.glob("*.json"), *p.glob("*.safetensors")] if p.is_dir() else [p]


def plan(args) -> list[tuple[Path, Path, Path]]:
    """``[(vis file, ir file, fused file)]`` for the arguments, after checking every output
    against the inputs and the files already there (nothing is written before this passes)."""
    from ..io import (
        check_outputs,
        check_pair_sizes,
        describe_unmatched,
        is_image,
        match_pairs,
    )

    (vis, ir), out = source_paths(args.vis, args.ir), Path(args.out)
    if vis.is_file():
        if out.suffix == "" or out.is_dir():
            out = out / vis.with_suffix(".png").name
        elif not is_image(out):
            raise CLIError(f"--out {out}: not an image file name (use .png, or a folder)")
        jobs = [(vis, ir, out)]
    else:
        res = match_pairs(vis, ir, strict=False)
        if res.only_a or res.only_b:
            raise CLIError(describe_unmatched(vis, ir, res))
        if out.exists() and not out.is_dir():
            raise CLIError(f"--out {out} must be a folder when --vis and --ir are folders")
        jobs = [(a, b, out / a.with_suffix(".png").name) for a, b in res.pairs]
    outputs = [("--out", dst) for _, _, dst in jobs]
    if args.save_mu:
        outputs += [("--save-mu", mu_path(dst)) for _, _, dst in jobs]
    inputs = [vis, ir, *(p for a, b, _ in jobs for p in (a, b))]
    if getattr(args, "checkpoint", None):
        inputs += checkpoint_files(args.checkpoint)
    check_outputs(outputs, inputs, overwrite=args.overwrite)
    try:  # every pair, before the first is written (a rerun would need --overwrite)
        check_pair_sizes([(a, b) for a, b, _ in jobs])
    except ValueError as e:
        raise CLIError(str(e)) from None
    return jobs


def swap_hint(vis_path, ir_path) -> str | None:
    """A hint when a pair looks swapped: a gray ``--vis`` beside an ``--ir`` in colour gives a
    gray result (the colour kept is that of ``--vis``). None when the pair looks right."""
    from PIL import Image, ImageChops

    try:
        with Image.open(vis_path) as a, Image.open(ir_path) as b:
            if a.mode not in ("1", "L", "LA", "I", "I;16", "F") or b.mode not in ("RGB", "RGBA", "P"):
                return None
            r, g, bl = b.convert("RGB").split()
    except OSError:
        return None  # an unreadable file gets its own error when it is read
    if ImageChops.difference(r, g).getbbox() is None and ImageChops.difference(g, bl).getbbox() is None:
        return None  # a gray image stored as RGB
    return (f"note: --vis {vis_path} is gray and --ir {ir_path} is in colour, so the fused image is gray "
            "(the colour of --vis is kept); were --vis and --ir swapped?")


#: peak memory of ``fuse`` per pixel of a pair on the CPU, float32 (measured, see the README):
#: the colour fusion, and the packaged guide's network on top (bounded by one tile past
#: ``hfkernels.guidance.TILE ** 2`` pixels)
FUSE_BYTES_PER_PIXEL, GUIDE_BYTES_PER_PIXEL = 100, 285


def needed_bytes(h: int, w: int, network: bool) -> int:
    """About how much memory fusing one h x w pair takes (the figures above)."""
    from ..guidance import MARGIN, TILE

    guide = GUIDE_BYTES_PER_PIXEL * min(h * w, (TILE + 2 * MARGIN) ** 2) if network else 0
    return FUSE_BYTES_PER_PIXEL * h * w + guide


def run(args) -> int:
    import sys

    from tqdm import tqdm

    from ..evaluation import colour_fusion, out_of_memory
    from ..io import header_size, write_image

    device = parse_device(args.device)
    if _video(args, device) is not None:
        return 0
    jobs = plan(args)
    hint = swap_hint(*jobs[0][:2]) if jobs else None
    if hint:
        print(hint, file=sys.stderr)
    fusion = colour_fusion(guidance_of(args, device), args.levels, args.backend)
    for a, b, dst in tqdm(jobs, desc="fuse", unit="pair", disable=len(jobs) < 2):
        try:
            fused, mu = fuse_pair(a, b, fusion, device)
        except (RuntimeError, MemoryError) as e:
            if not out_of_memory(e):
                raise
            h, w = header_size(a)
            need = needed_bytes(h, w, args.mu is None or args.checkpoint is not None)
            raise CLIError(f"not enough memory to fuse {a} ({w}x{h}): it needs about {need / 2**30:.1f} GiB "
                           f"on {device}") from None
        write_image(dst, fused)
        if args.save_mu:
            write_image(mu_path(dst), mu)
    where = jobs[0][2].parent if len(jobs) > 1 else jobs[0][2]
    print(f"wrote {len(jobs)} fused image(s) to {where}"
          + (f" and their guidance maps to {mu_path(jobs[0][2]).parent}" if args.save_mu else ""))
    return 0


def _video(args, device):
    """Video files, or frame folders with --video: fused as sequences (:mod:`hfkernels.video.cli`)."""
    from ..video import cli as video_cli

    if not video_cli.wanted(args):
        return None
    ckpt = checkpoint_files(args.checkpoint) if getattr(args, "checkpoint", None) else []
    return video_cli.run_fuse(args, guidance_of(args, device), device, ckpt)
