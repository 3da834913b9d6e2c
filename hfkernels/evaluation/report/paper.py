"""The method paper's published metric means, for the datasets it reports, to print beside ours.

Source: "Hybrid Fusion: one-minute efficient training for zero-shot cross-domain image fusion",
Tables 1 and 6 (the 17.26 M-parameter U-Net trained on MSRS only; MSRS and RoadScene test sets)
and the zero-shot medical results after 2 epochs on MSRS. All under the published evaluation
protocol (``protocol="paper"``: MI, VIF and SSIM are sums over the two sources). The paper's MSRS
test split has 361 pairs; a local copy may hold fewer.
"""
from __future__ import annotations

from pathlib import Path

_EMIV = ("EN", "MI", "VIF", "Qabf")
_MED = ("SSIM", "EN", "MI", "VIF", "Qabf")


def _rows(names, table):
    return [(label, dict(zip(names, values))) for label, values in table]


#: dataset key -> [(row label, {metric: value})]
PAPER_ROWS: dict[str, list[tuple[str, dict[str, float]]]] = {
    "MSRS": _rows(_EMIV, [
        ("paper: 2 epochs on MSRS", (6.644, 3.495, 0.996, 0.678)),
        ("paper: 10 epochs on MSRS", (6.695, 3.752, 1.017, 0.691)),
        ("paper: 100 epochs on MSRS", (6.766, 4.890, 1.079, 0.721)),
    ]),
    "RoadScene": _rows(_EMIV, [
        ("paper: 2 epochs on MSRS, zero-shot", (7.173, 3.449, 0.830, 0.513)),
        ("paper: 10 epochs on MSRS, zero-shot", (7.439, 4.410, 0.891, 0.649)),
        ("paper: 100 epochs on MSRS, zero-shot", (7.458, 3.845, 0.822, 0.646)),
    ]),
    "PET-MRI": _rows(_MED, [("paper: 2 epochs on MSRS, zero-shot", (1.118, 5.482, 3.621, 1.025, 0.772))]),
    "CT-MRI": _rows(_MED, [("paper: 2 epochs on MSRS, zero-shot", (0.969, 4.973, 2.974, 0.807, 0.561))]),
    "SPECT-MRI": _rows(_MED, [("paper: 2 epochs on MSRS, zero-shot", (1.241, 4.608, 3.568, 0.840, 0.732))]),
}


def paper_dataset(*paths) -> str | None:
    """The :data:`PAPER_ROWS` key of the dataset that ``paths`` (folders or files of one pair set,
    or set names such as ``"MSRS-test"``) belong to, recognised by folder names; None if unknown.

    The MSRS figures are for its test split, so a path through a ``train`` folder does not match.
    """
    parts: list[str] = []
    for p in paths:
        if p is None:
            continue
        for part in Path(str(p)).parts:
            parts += [q.lower() for q in part.replace("+", "/").split("/") if q]
    for key in ("PET-MRI", "CT-MRI", "SPECT-MRI"):
        if any(q == key.lower() for q in parts):
            return key
    if any(q.startswith("msrs") for q in parts):
        return None if any(q in ("train", "msrs-train") for q in parts) else "MSRS"
    if any(q.startswith("roadscene") for q in parts):
        return "RoadScene"
    return None


__all__ = ["PAPER_ROWS", "paper_dataset"]
