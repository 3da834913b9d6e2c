"""The published protocol's values on the 42 TNO pairs (``reference/`` in the data root): every image,
every fusion the file describes, every metric it holds, within 1e-3 (relative above 1)."""
import json

import pytest
import torch

import hfkernels
from hfkernels.io import read_image
from hfkernels.metrics import evaluate

TOL = 1e-3
#: Values where the reference file disagrees with its own definition or with this protocol
#: implementation by more than TOL (measured; reasons below). Checked at KNOWN_TOL
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


@pytest.fixture(scope="module")
def computed(reference, data_dir):
    """{fusion label: {metric: [value of each file of the reference, in its order]}}, computed
    here with :func:`hfkernels.metrics.evaluate` for every fusion and metric the file holds."""
    names = sorted({m for f in reference["fusions"].values() for m in f["per_image"]})
    out = {label: {m: [] for m in names} for label in reference["fusions"]}
    for fn in reference["files"]:
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
        for label, per_metric in out.items():
            for m, values in per_metric.items():
                values.append(got[label][m])
    return out


def test_tno_reference(reference, computed):
    bad = []
    for i, fn in enumerate(reference["files"]):
        for label, ref in reference["fusions"].items():
            for m, values in ref["per_image"].items():
                want, have = float(values[i]), computed[label][m][i]
                err = abs(have - want) / max(1.0, abs(want))
                tol = KNOWN_TOL if (fn, label, m) in KNOWN else TIGHT.get((label, m), TOL)
                if not err <= tol:
                    bad.append(f"{fn} {label} {m}: got {have:.6f}, reference {want:.6f} (error {err:.2e})")
    assert not bad, f"{len(bad)} value(s) off by more than {TOL}:\n" + "\n".join(bad)


def test_tno_means(reference, computed):
    """The means over the 42 pairs that hfkernels computes are the file's means (``mean``), within
    TOL relative above 1 (the three KNOWN values move their means by under 1e-3)."""
    bad = []
    for label, ref in reference["fusions"].items():
        assert set(ref["mean"]) == set(ref["per_image"]), label
        for m, want in ref["mean"].items():
            # the file is consistent with itself, so a difference below is the code's
            values = ref["per_image"][m]
            assert want == pytest.approx(sum(values) / len(values), abs=1e-5), (label, m)
            have = sum(computed[label][m]) / len(computed[label][m])
            err = abs(have - want) / max(1.0, abs(want))
            if not err <= TIGHT.get((label, m), TOL):
                bad.append(f"{label} {m}: mean {have:.6f}, reference {want:.6f} (error {err:.2e})")
    assert not bad, "means off:\n" + "\n".join(bad)
