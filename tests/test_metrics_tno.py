"""The published protocol's values on the 42 TNO pairs (../shared/data/reference): every image,
every fusion the file describes, every metric it holds, within 1e-3 (relative above 1)."""
import json

import pytest
import torch

import hfkernels
from hfkernels.io import read_image
from hfkernels.metrics import evaluate

TOL = 1e-3
#: Values where the reference file disagrees with its own definition or with this protocol
#: implementation by more than TOL (measured; see the issue-5 report). Checked at KNOWN_TOL
#: so that a regression still fails.
#: - laplacian_half EN: fuse(vis, ir, 0.5) is exactly (vis + ir) / 2 per channel (our fusion
#:   matches that to 6e-5 of a level with every backend, float32 or float64, and all give the
#:   same EN); the reference's fused pixels evidently left the 1e-4 snap band in float
#:   rounding (e.g. TF32 convolutions), so truncation moved them a level.
KNOWN = {
    ("34.png", "laplacian_half", "EN"), ("37.png", "laplacian_half", "EN"),
    ("41.png", "laplacian_half", "EN"),
}
KNOWN_TOL = 1e-2
#: Qabf reproduces the released code to ~5e-7 where the fusion is exact arithmetic ('vis', 'ir',
#: 'laplacian_half'); checked tightly there because its Sobel sign convention is easy to lose
#: (a flipped gx moves Qabf by a few 1e-4, inside TOL).
TIGHT = {("vis", "Qabf"): 1e-5, ("ir", "Qabf"): 1e-5, ("laplacian_half", "Qabf"): 1e-5}


def fusions(vis, ir):
    """The five fusions of the reference file's description, computed in [0,1] and clamped."""
    w = hfkernels.heuristic_guidance(vis, ir)
    three = {
        "vis": vis,
        "laplacian_heuristic": hfkernels.fuse(vis, ir, w).clamp(0, 1),
        "blend_heuristic": hfkernels.heuristic_blend(vis, ir).clamp(0, 1),
        "laplacian_half": hfkernels.fuse(vis, ir, torch.full_like(ir, 0.5)).clamp(0, 1),
    }
    return three, {"ir": ir}


@pytest.fixture(scope="module")
def reference(data_dir):
    path = data_dir / "reference" / "tno_paper_protocol.json"
    if not path.is_file() or not (data_dir / "TNO" / "vi").is_dir():
        pytest.skip(f"TNO reference values not found under {data_dir}")
    return json.loads(path.read_text())


def test_tno_reference(reference, data_dir):
    names = sorted({m for f in reference["fusions"].values() for m in f["per_image"]})
    bad = []
    for i, fn in enumerate(reference["files"]):
        vis = read_image(data_dir / "TNO" / "vi" / fn, "rgb")[None]
        ir = read_image(data_dir / "TNO" / "ir" / fn, "gray")[None]
        with torch.no_grad():
            three, one = fusions(vis, ir)
        got = {}
        # one batched call for the 3-channel fusions, one for the infrared image (1 channel)
        labels = list(three)
        r3 = evaluate(vis.expand(len(labels), -1, -1, -1), ir.expand(len(labels), -1, -1, -1),
                      torch.cat(list(three.values())), names)
        for j, label in enumerate(labels):
            got[label] = {m: float(r3[m][j]) for m in names}
        got["ir"] = {m: float(v[0]) for m, v in evaluate(vis, ir, one["ir"], names).items()}
        for label, ref in reference["fusions"].items():
            for m, values in ref["per_image"].items():
                want, have = float(values[i]), got[label][m]
                err = abs(have - want) / max(1.0, abs(want))
                tol = KNOWN_TOL if (fn, label, m) in KNOWN else TIGHT.get((label, m), TOL)
                if not err <= tol:
                    bad.append(f"{fn} {label} {m}: got {have:.6f}, reference {want:.6f} (error {err:.2e})")
    assert not bad, f"{len(bad)} value(s) off by more than {TOL}:\n" + "\n".join(bad)


def test_tno_means(reference):
    """The file's means are the means of its per-image values (a check of the file itself)."""
    for label, ref in reference["fusions"].items():
        for m, values in ref["per_image"].items():
            if "mean" in ref and m in ref["mean"]:
                assert ref["mean"][m] == pytest.approx(sum(values) / len(values), abs=1e-5), (label, m)
