"""What a training run shows of itself: the line after each epoch, the contact sheet of each
epoch (``RUN/sheets/epoch_NNNN.png``) and the summary table at the end of the run."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..evaluation import fused_and_mu, pairs_from_dataset
from ..guidance import checkpoint as ckpt
from ..io import read_json, write_image

#: the metrics of the summary table (when the evaluation has them)
SUMMARY_METRICS = ("EN", "MI", "VIF", "Qabf", "SSIM", "SD", "SF", "AG")


@torch.no_grad()
def contact_sheet(path, ds, fusion, n_pairs: int, device, row_height: int = 128) -> Path | None:
    """Write a PNG with one row per pair: visible | infrared | guidance map | fused.

    Args:
        ds: a dataset of ``(vis uint8 (3,H,W), ir uint8 (1,H,W))`` items with ``names``.
        fusion: a guided fusion (see :mod:`hfkernels.evaluation`); its ``mu`` is the third tile.
        n_pairs: the first this many pairs of ``ds``, each scaled to ``row_height`` pixels high.
    Returns:
        ``path``, or None when there is nothing to show.
    """
    pairs = pairs_from_dataset(ds, max(0, n_pairs))
    if not pairs:
        return None
    rows = []
    for p in pairs:
        vis, ir, _ = p.load()
        vis, ir = vis.to(device), ir.to(device)
        fused, mu = fused_and_mu(fusion, vis, ir)
        tiles = [vis, ir.expand(-1, 3, -1, -1), mu.expand(-1, 3, -1, -1), fused]
        h, w = vis.shape[-2:]
        size = (row_height, max(1, round(w * row_height / h)))
        tiles = [F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False) for t in tiles]
        sep = torch.ones(1, 3, row_height, 2, device=vis.device)
        rows.append(torch.cat([tiles[0], sep, tiles[1], sep, tiles[2], sep, tiles[3]], dim=3))
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, [0, width - r.shape[-1], 0, 2], value=1.0) for r in rows]
    write_image(path, torch.cat(rows, dim=2)[0].clamp(0, 1).cpu())
    return Path(path)


def batches_text(r: dict) -> str:
    """The batches an epoch record says it ran: "34 batches of 8, 1 of 3 (crops 256x256 x33, ...)"."""
    sizes = r.get("batch_sizes")
    if not sizes:
        return f"{r.get('batches', '?')} batches"
    parts = [f"{n} {'batches' if n != 1 else 'batch'} of {b}" if k == 0 else f"{n} of {b}"
             for k, (b, n) in enumerate(sizes.items())]
    crops = list((r.get("crop_sizes") or {}).items())
    shape = ", ".join(f"{hw} x{n}" for hw, n in crops[:2]) + (f" and {len(crops) - 2} more" if len(crops) > 2 else "")
    return ", ".join(parts) + (f" ({shape})" if shape else "")


def epoch_line(r: dict) -> str:
    """The line logged after an epoch, from its history record."""
    ev = "; ".join(
        f"{name}: " + " ".join(f"{k} {v:.3f}" for k, v in list(vals.items())[:5]) for name, vals in r.get("eval", {}).items()
    )
    n_eval = sum(len(v) for v in r.get("eval_pairs", {}).values())
    head = f"eval on {n_eval} pairs in {r.get('eval_seconds', 0):.0f} s, " if n_eval else ""
    return (f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, {r['images']} images in {batches_text(r)}, "
            f"{r['seconds']:.1f} s ({r['images_per_second']:.1f} img/s){'; ' + head + ev if ev else ''}")


def summary(run_dir: Path, history: list[dict]) -> str:
    """The table printed at the end of a run: per test set, the heuristic baseline and every
    epoch's scores, then the loss, throughput and where the run's files are."""
    run_dir = Path(run_dir)
    lines = [f"done: {len(history)} epoch(s) in {run_dir}"]
    base = {}
    bp = run_dir / "baseline.json"
    if bp.is_file():
        base = read_json(bp).get("heuristic", {})
    last = history[-1] if history else None
    final = (last or {}).get("final_eval") or {}
    for set_name in (last.get("eval", {}) if last else {}):
        names = list(last["eval"][set_name])
        show = [n for n in names if n in SUMMARY_METRICS] or names[:6]
        n_sub = len(last.get("eval_pairs", {}).get(set_name, []))
        lines.append(f"  {set_name}{f' ({n_sub} pairs each epoch)' if n_sub else ''}:  "
                     + "".join(f"{n:>9}" for n in show))
        if set_name in base:
            lines.append(f"    {'heuristic':>10} " + "".join(f"{base[set_name].get(n, float('nan')):9.3f}" for n in show))
        for r in history:
            ev = r.get("eval", {}).get(set_name, {})
            lines.append(f"    {'epoch ' + str(r['epoch']):>10} " + "".join(f"{ev.get(n, float('nan')):9.3f}" for n in show))
    for part in final.get("pairs", {}):
        tr, he = final.get("trained", {}).get(part, {}), final.get("heuristic", {}).get(part, {})
        show = [n for n in tr if n in SUMMARY_METRICS] or list(tr)[:6]
        lines.append(f"  {part} (all {final['pairs'][part]} pairs, final):  " + "".join(f"{n:>9}" for n in show))
        lines.append(f"    {'heuristic':>10} " + "".join(f"{he.get(n, float('nan')):9.3f}" for n in show))
        lines.append(f"    {'trained':>10} " + "".join(f"{tr.get(n, float('nan')):9.3f}" for n in show))
    if last:
        first = history[0]
        loss = (f"train loss {last['train_loss']:.4f} (epoch {last['epoch']})" if len(history) == 1 else
                f"train loss {first['train_loss']:.4f} (epoch {first['epoch']}) -> "
                f"{last['train_loss']:.4f} (epoch {last['epoch']})")
        lines.append(f"  {loss}; {last['images_per_second']:.1f} images/s, {batches_text(last)}")
        lines.append(f"  checkpoint  {run_dir / ckpt.CHECKPOINT_JSON} (+ model-e{last['epoch']:04d}.safetensors)")
        lines.append(f"  history     {run_dir / 'history.json'}")
        if last.get("sheet"):
            lines.append(f"  sheet       {run_dir / last['sheet']}  (visible | infrared | mu | fused)")
        lines.append(f"  next: hfkernels fuse --checkpoint {run_dir} --vis VIS_DIR --ir IR_DIR --out fused/")
    return "\n".join(lines)


__all__ = ["contact_sheet", "batches_text", "epoch_line", "summary"]
