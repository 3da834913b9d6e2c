"""Metrics on hand-computable cases, against direct (slow, obvious) re-implementations, batch =
loop of singles, float32/float64 agreement, and bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from hfkernels import metrics as M
from hfkernels.core import filters as _filters
from hfkernels.metrics import _prep

torch.manual_seed(0)


def levels_image(vals, h=16, w=16):
    """(1,1,h,w) image in [0,1] holding the 8-bit levels ``vals`` in equal horizontal bands."""
    x = torch.zeros(h, w)
    n = len(vals)
    for i, v in enumerate(vals):
        x[i * h // n : (i + 1) * h // n] = v / 255.0
    return x[None, None]


def rand_img(b=1, c=1, h=44, w=50, dtype=torch.float32, quant=True):
    x = torch.rand(b, c, h, w, dtype=dtype)
    # smooth + noise so every metric sees texture and flat-ish regions
    x = F.avg_pool2d(x, 5, 1, 2) * 0.7 + 0.3 * x
    return (x * 255).round() / 255 if quant else x


# ---------------------------------------------------------------------------- hand-computable


def test_en_one_hot_and_two_levels():
    const = levels_image([77])
    assert M.en(const, const, const, protocol="standard").item() == 0.0
    # paper: -1 * log2(1 + 1e-7) < 0, floored at 0 (entropy is never negative)
    assert M.en(const, const, const).item() == 0.0
    two = levels_image([10, 200])
    assert M.en(two, two, two, protocol="standard").item() == pytest.approx(1.0, abs=1e-12)
    four = levels_image([0, 1, 2, 255])
    assert M.en(four, four, four, protocol="standard").item() == pytest.approx(2.0, abs=1e-12)
    # paper counts all channels of F: a 3-channel image with channel levels 0, 85, 170 -> log2(3)
    rgb = torch.cat([levels_image([0]), levels_image([85]), levels_image([170])], 1)
    assert M.en(rgb, rgb, rgb).item() == pytest.approx(math.log2(3), abs=1e-5)


def test_mi_hand_values():
    a = levels_image([0, 50, 100, 150])  # 2 bits
    b = levels_image([30])  # constant: MI 0
    assert M.mi(a, b, a).item() == pytest.approx(2.0, abs=1e-12)
    # F a bijective relabelling of A: still H(A)
    f = levels_image([255, 3, 9, 40])
    assert M.mi(a, b, f).item() == pytest.approx(2.0, abs=1e-12)
    # F independent of A (checkerboard halves): MI 0
    a2 = levels_image([0, 255])  # top/bottom halves
    f2 = torch.zeros_like(a2)
    f2[..., :, 8:] = 1.0  # left/right halves: independent of a2
    assert M.mi(a2, b, f2).item() == pytest.approx(0.0, abs=1e-12)


def test_identical_images():
    x = rand_img()
    r = M.evaluate(x, x, x)
    assert r["SSIM"].item() == pytest.approx(2.0, abs=1e-9)
    assert r["CC"].item() == pytest.approx(1.0, abs=1e-9)
    assert r["MSE"].item() == 0.0 and math.isinf(r["PSNR"].item())
    assert r["VIF"].item() == pytest.approx(2.0, abs=1e-6)
    assert r["Nabf"].item() == 0.0
    assert r["MI"].item() == pytest.approx(2 * M.en(x, x, x, protocol="standard").item(), abs=1e-9)
    s = M.evaluate(x, x, x, protocol="standard")
    assert s["SSIM"].item() == pytest.approx(2.0, abs=1e-9)


def test_sd_sf_ag_mse_psnr_by_hand():
    z = torch.zeros(1, 1, 8, 8)
    half = z.clone()
    half[..., :, 4:] = 1.0  # left 0, right 255
    r = M.evaluate(z, z, half, names="SD,SF,AG,MSE,PSNR")
    assert r["SD"].item() == pytest.approx(127.5)
    # one vertical edge: horizontal neighbour pairs 8*7, one in 7 differs by 255
    assert r["SF"].item() == pytest.approx(math.sqrt(255**2 * 8 / 56))
    # AG over 7x7 pixels: column 3 has dx = 255, dy = 0 -> sqrt(255^2/2)
    assert r["AG"].item() == pytest.approx(255 / math.sqrt(2) * 7 / 49)
    assert r["MSE"].item() == pytest.approx(255**2 / 2)
    assert r["PSNR"].item() == pytest.approx(10 * math.log10(2))


def test_cc_scd_by_hand():
    a = rand_img()
    b = rand_img()
    f = (a + b) / 2

    def r(x, y):
        x, y = x.double().flatten() * 255, y.double().flatten() * 255
        x, y = x - x.mean(), y - y.mean()
        return float((x * y).sum() / (x.norm() * y.norm()))

    out = M.evaluate(a, b, f, names="CC,SCD")
    assert out["CC"].item() == pytest.approx((r(a, f) + r(b, f)) / 2, abs=1e-6)
    assert out["SCD"].item() == pytest.approx(r(f - b, a) + r(f - a, b), abs=1e-6)


def test_paper_gray_quirk_and_snap():
    # R = G = B = v -> floor(0.9999 v) = v - 1 for v >= 1 (the released rgb2gray truncation)
    v = torch.tensor([0.0, 1, 2, 128, 255]).view(1, 1, 1, 5).expand(1, 3, 1, 5) / 255
    x = _prep.Prepared(v, v[:, :1], v)
    assert x.ga.flatten().tolist() == [0, 0, 1, 127, 254]
    s = _prep.Prepared(v, v[:, :1], v, "standard")
    assert torch.allclose(s.ga.flatten().double(), torch.tensor([0.0, 1, 2, 128, 255], dtype=torch.float64) * 0.99999999, atol=1e-3)
    t = torch.tensor([3.99995, 3.9998, 4.00008, 4.2, -0.00005])
    assert _prep.truncate(t).tolist() == [4, 3, 4, 4, 0]


def test_qabf_against_loops():
    """Qabf and Nabf from a literal per-pixel transcription of the definition."""
    a, b, f = rand_img(h=12, w=13), rand_img(h=12, w=13), rand_img(h=12, w=13)
    f[..., :4, :4] = a[..., :4, :4]  # some gA == gF pixels

    def grads(x):
        x = F.pad((x[0, 0] * 255).double(), (1, 1, 1, 1))  # scaled in float32, as the protocol
        h, w = x.shape[0] - 2, x.shape[1] - 2
        g, ang = torch.zeros(h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
        for i in range(h):
            for j in range(w):
                p = x[i : i + 3, j : j + 3]
                # the released code's signs: gx = left - right, gy = below - above (they
                # matter through the pi/2 assigned where gx == 0)
                gx = (p[:, 0] - p[:, 2]) @ torch.tensor([1.0, 2, 1], dtype=torch.float64)
                gy = (p[2] - p[0]) @ torch.tensor([1.0, 2, 1], dtype=torch.float64)
                g[i, j] = math.sqrt(gx**2 + gy**2)
                ang[i, j] = math.pi / 2 if gx == 0 else math.atan(gy / gx)
        return g, ang

    def q(gs, as_, gf, af, quirk):
        out = torch.zeros_like(gs)
        for i in range(gs.shape[0]):
            for j in range(gs.shape[1]):
                s, t = float(gs[i, j]), float(gf[i, j])
                G = t / s if s > t else (s / t if s < t else (t if quirk else 1.0))
                A = 1 - abs(float(as_[i, j] - af[i, j])) / (math.pi / 2)
                out[i, j] = 0.9994 / (1 + math.exp(-15 * (G - 0.5))) * 0.9879 / (1 + math.exp(-22 * (A - 0.8)))
        return out

    (ga, aa), (gb, ab), (gf, af) = grads(a), grads(b), grads(f)
    for protocol in ("paper", "standard"):
        qa, qb = q(ga, aa, gf, af, protocol == "paper"), q(gb, ab, gf, af, protocol == "paper")
        want = float((qa * ga + qb * gb).sum() / (ga + gb).sum())
        am = ((gf > ga) & (gf > gb)).double()
        nabf = float((am * ((1 - qa) * ga + (1 - qb) * gb)).sum() / (ga + gb).sum())
        got = M.evaluate(a, b, f, names=["Qabf", "Nabf"], protocol=protocol)
        assert got["Qabf"].item() == pytest.approx(want, abs=1e-5)
        assert got["Nabf"].item() == pytest.approx(nabf, abs=1e-5)


def _fspecial(n, sigma):
    d = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    k = torch.exp(-(d[:, None] ** 2 + d[None] ** 2) / (2 * sigma**2))
    return k / k.sum()


def _vif_direct(ref, dist):
    """vifp_mscale with full 2-D windows, float64, one image pair (H, W)."""
    ref, dist = ref[None, None].double(), dist[None, None].double()
    num = den = 0.0
    for s in range(1, 5):
        n = 2 ** (5 - s) + 1
        w = _fspecial(n, n / 5)[None, None]
        if s > 1:
            ref, dist = F.conv2d(ref, w)[..., ::2, ::2], F.conv2d(dist, w)[..., ::2, ::2]
        mu1, mu2 = F.conv2d(ref, w), F.conv2d(dist, w)
        s1 = (F.conv2d(ref * ref, w) - mu1**2).clamp_min(0)
        s2 = (F.conv2d(dist * dist, w) - mu2**2).clamp_min(0)
        s12 = F.conv2d(ref * dist, w) - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        m = s1 < 1e-10
        g[m], sv[m], s1[m] = 0, s2[m], 0
        m = s2 < 1e-10
        g[m], sv[m] = 0, 0
        m = g < 0
        sv[m], g[m] = s2[m], 0
        sv[sv <= 1e-10] = 1e-10
        num += float(torch.log10(1 + g * g * s1 / (sv + 2)).sum())
        den += float(torch.log10(1 + s1 / 2).sum())
    return num / den


def _ssim_direct(x, y, c1, c2):
    x, y = x[None, None].double(), y[None, None].double()
    w = _fspecial(11, 1.5)[None, None]
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sx, sy = F.conv2d(x * x, w) - mx**2, F.conv2d(y * y, w) - my**2
    sxy = F.conv2d(x * y, w) - mx * my
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sx + sy + c2))).mean())


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_vif_ssim_against_direct(protocol):
    a = rand_img(c=3, h=45, w=52)
    b = rand_img(h=45, w=52)
    f = rand_img(c=3, h=45, w=52, quant=False)
    f[..., :10, :10] = 0.5  # a flat patch: the thresholds matter
    x = _prep.Prepared(a, b, f, protocol)
    ga, gb, gf = (t[0, 0] for t in (x.ga, x.gb, x.gf))
    got = M.evaluate(a, b, f, names="VIF,SSIM", protocol=protocol)
    assert got["VIF"].item() == pytest.approx(_vif_direct(ga, gf) + _vif_direct(gb, gf), rel=1e-9)
    if protocol == "paper":  # the released code: values x 255 again, constants for 0..255
        want = _ssim_direct(ga * 255, gf * 255, 6.5025, 58.5225) + _ssim_direct(gb * 255, gf * 255, 6.5025, 58.5225)
    else:
        want = _ssim_direct(ga, gf, 6.5025, 58.5225) + _ssim_direct(gb, gf, 6.5025, 58.5225)
    assert got["SSIM"].item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("n", [3, 5, 11, 17])
@pytest.mark.parametrize("shape", [(3, 2, 17, 17), (1, 1, 60, 131), (2, 3, 100, 49), (2, 8, 160, 90)])
def test_filter_valid_matches_conv2d(n, shape):
    x = torch.rand(*shape, dtype=torch.float64) * 255
    t = _filters.matlab_gaussian(n, n / 5)
    want = F.conv2d(x.flatten(0, 1)[:, None], torch.outer(t, t)[None, None]).reshape(*shape[:2], shape[2] - n + 1, -1)
    assert torch.allclose(_filters.filter_valid(x, t), want, rtol=1e-12, atol=1e-9)
    # subsampled outputs, also from a transposed (non-contiguous) view of the same data
    xt = x.mT.contiguous().mT
    for src in (x, xt):
        got = _filters.filter_valid(src, t, stride=2)
        assert got.shape == want[..., ::2, ::2].shape
        assert torch.allclose(got, want[..., ::2, ::2], rtol=1e-12, atol=1e-9)
    # the blocked layout for sums: same values, (..., nb, Wo, P) with element (j, c, i) = (jP + i, c)
    # (or the plain (..., 1, Ho, Wo) where no block size divides the height)
    blk = _filters.filter_valid_sums(x, t)
    blocked = blk.shape[-2:] != want.shape[-2:]
    assert blocked or shape[2] != 160 or n not in (11, 17)  # 160 rows: blocks of 10 / 16 fit
    back = blk.transpose(-1, -2).flatten(-3, -2) if blocked else blk[..., 0, :, :]
    assert torch.allclose(back, want, rtol=1e-12, atol=1e-9)


# ---------------------------------------------------------------------------- batch, dtype, device


def test_batch_equals_loop_of_singles():
    a, b, f = rand_img(3, 3), rand_img(3, 1), rand_img(3, 3, quant=False)
    for protocol in ("paper", "standard"):
        batch = M.evaluate(a, b, f, protocol=protocol)
        for i in range(3):
            one = M.evaluate(a[i], b[i], f[i], protocol=protocol)  # (C,H,W) accepted
            for k in M.METRICS:
                assert batch[k].shape == (3,)
                assert batch[k][i].item() == pytest.approx(one[k].item(), rel=1e-9, abs=1e-12), k


@pytest.mark.parametrize("quant", [True, False])
def test_float64_inputs_agree(quant):
    a, b, f = rand_img(2, 3), rand_img(2, 1), rand_img(2, 3, quant=quant)
    r32 = M.evaluate(a, b, f)
    r64 = M.evaluate(a.double(), b.double(), f.double())
    # with a non-8-bit F, float32 and float64 may put a value next to a level boundary on
    # different sides; the histogram metrics then differ by a few pixels' worth
    hist = not quant
    for k in M.METRICS:
        assert r64[k].dtype == torch.float64
        tol = 1e-3 if hist and k in ("EN", "MI") else 2e-5
        assert torch.allclose(r32[k], r64[k], rtol=tol, atol=tol), (k, r32[k], r64[k])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    a, b, f = rand_img(2, 3, 64, 80), rand_img(2, 1, 64, 80), rand_img(2, 3, 64, 80, quant=False)
    rc = M.evaluate(a, b, f)
    rg = M.evaluate(a.cuda(), b.cuda(), f.cuda())
    for k in M.METRICS:
        assert rg[k].device.type == "cuda"
        assert torch.allclose(rc[k], rg[k].cpu(), rtol=1e-5, atol=1e-5), k


def test_individual_functions_match_evaluate():
    a, b, f = rand_img(2, 3), rand_img(2, 1), rand_img(2, 1)
    r = M.evaluate(a, b, f)
    for name in M.METRICS:
        fn = getattr(M, name.lower())
        assert torch.equal(fn(a, b, f), r[name])
    assert list(M.evaluate(a, b, f, names="ssim, EN")) == ["SSIM", "EN"]


# ---------------------------------------------------------------------------- bad inputs


def test_bad_inputs():
    a = rand_img()
    with pytest.raises(ValueError, match="names"):
        M.evaluate(a, a, a, names=["EN", "BOGUS"])
    with pytest.raises(ValueError, match="protocol"):
        M.evaluate(a, a, a, protocol="matlab")
    with pytest.raises(ValueError, match="fused"):
        M.evaluate(a, a, a[..., :-1])
    with pytest.raises(ValueError, match="ir"):
        M.evaluate(a, torch.cat([a, a]), a)
    with pytest.raises(ValueError, match="vis.*channels"):
        M.evaluate(torch.rand(1, 2, 44, 50), a, a)
    with pytest.raises(ValueError, match=r"fused must hold values in \[0, 1\]"):
        M.evaluate(a, a, a * 2)
    with pytest.raises(ValueError, match="fused"):
        M.evaluate(a, a, torch.full_like(a, float("nan")))
    with pytest.raises(TypeError, match="vis"):
        M.evaluate(a.numpy(), a, a)
    with pytest.raises(TypeError, match="ir"):
        M.evaluate(a, (a * 255).to(torch.uint8), a)
    with pytest.raises(ValueError, match="ir"):
        M.evaluate(a, a[0, 0], a)
    with pytest.raises(ValueError, match="VIF needs images of at least 41x41"):
        M.vif(a[..., :40, :], a[..., :40, :], a[..., :40, :])
    # small images are fine for the metrics without windows
    tiny = a[..., :5, :6]
    assert M.evaluate(tiny, tiny, tiny, names="EN,MI,Qabf,SD,SF,AG,CC,MSE,Nabf")["MSE"].item() == 0


# ---------------------------------------------------------------------------- degenerate inputs

#: the metrics that accept any size (VIF needs 41x41, SSIM 11x11)
ANY_SIZE = "EN,MI,Qabf,SD,SF,AG,SCD,CC,PSNR,MSE,Nabf"


def _q(g, a):
    """Q_SF for a strength ratio g and an angle agreement a (module gradient's sigmoids)."""
    return 0.9994 / (1 + math.exp(-15 * (g - 0.5))) * 0.9879 / (1 + math.exp(-22 * (a - 0.8)))


@pytest.mark.parametrize("protocol", ["paper", "standard"])
@pytest.mark.parametrize(
    "case",
    ["zeros", "constant", "constant rgb", "vis constant", "F = vis", "F = ir", "1x1", "1xN", "Nx1", "2x2"],
)
def test_degenerate_inputs_have_no_nan(case, protocol):
    t = rand_img(c=1, h=48, w=48)
    u = rand_img(c=1, h=48, w=48)
    z = torch.zeros_like(t)
    c = torch.full_like(t, 0.3)
    vis, ir, fused = {
        "zeros": (z, z, z),
        "constant": (c, c, c),
        "constant rgb": (c.expand(1, 3, -1, -1), c, c),
        "vis constant": (c, t, u),
        "F = vis": (t, u, t),
        "F = ir": (t, u, u),
        "1x1": (t[..., :1, :1], u[..., :1, :1], t[..., :1, :1]),
        "1xN": (t[..., :1, :], u[..., :1, :], (t + u)[..., :1, :] / 2),
        "Nx1": (t[..., :1], u[..., :1], (t + u)[..., :1] / 2),
        "2x2": (t[..., :2, :2], u[..., :2, :2], z[..., :2, :2]),
    }[case]
    names = None if min(vis.shape[-2:]) >= 41 else ANY_SIZE
    r = M.evaluate(vis, ir, fused, names, protocol=protocol)
    for name, v in r.items():
        if name == "PSNR" and float(r["MSE"]) == 0:
            assert math.isinf(float(v)) and float(v) > 0  # the documented limit
        else:
            assert torch.isfinite(v).all(), (name, v)


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_degenerate_conventions(protocol):
    t, z = rand_img(h=48, w=48), torch.zeros(1, 1, 48, 48)
    c = torch.full_like(t, 0.3)
    # VIF: a source without texture contributes 1 (VIF(S, S)); the other pair is unchanged
    assert M.vif(z, z, z, protocol).item() == 2.0
    assert M.vif(c, t, t, protocol).item() == pytest.approx(1 + M.vif(t, t, t, protocol).item() / 2, abs=1e-12)
    # CC and SCD: a correlation with a constant is 0
    assert M.cc(c, t, t, protocol).item() == pytest.approx(0.5, abs=1e-12)  # (r(c, t) + r(t, t)) / 2
    assert M.scd(c, t, t, protocol).item() == pytest.approx(1.0, abs=1e-12)  # r(0, c) + r(t - c, t)
    assert M.cc(z, z, z, protocol).item() == 0.0 and M.scd(z, z, z, protocol).item() == 0.0
    # Qabf without source edges: the plain mean of Q_SF; gS = gF = 0 compares as equal strengths,
    # whose ratio is gF = 0 (paper) or 1 (standard), with equal angles (pi/2 where gx = 0)
    want = _q(0.0 if protocol == "paper" else 1.0, 1.0)
    assert M.qabf(z, z, z, protocol).item() == pytest.approx(want, abs=1e-6)  # float32 maps
    # Nabf without source edges: the share of pixels where F adds an edge, times 1 - Q_SF there
    assert M.nabf(z, z, z, protocol).item() == 0.0
    f = torch.zeros(1, 1, 48, 48)
    f[..., 24:, :] = 1.0  # an edge across the middle (and the zero-padded border around the bright half)
    gx = F.conv2d(F.pad(f, (1, 1, 1, 1)), torch.tensor([[[[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]]]))
    gy = F.conv2d(F.pad(f, (1, 1, 1, 1)), torch.tensor([[[[-1.0, -2, -1], [0, 0, 0], [1, 2, 1]]]]))
    share = float(((gx != 0) | (gy != 0)).double().mean())
    assert 0.05 < share < 0.2
    # where F has an edge and the sources none, G_SF = 0 and Q_SF < 0.001
    assert 0.999 * share < M.nabf(z, z, f, protocol).item() <= share + 1e-12
    # PSNR of identical images: +inf
    assert M.psnr(t, t, t, protocol).item() == math.inf


def test_one_pixel_high_or_wide_sf_ag_by_hand():
    row = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 1, 4)
    for x in (row, row.transpose(-1, -2)):
        r = M.evaluate(x, x, x, names="SF,AG")
        assert r["SF"].item() == pytest.approx(255.0)  # sqrt(mean(255^2) + 0)
        assert r["AG"].item() == pytest.approx(255.0 / math.sqrt(2))  # sqrt((255^2 + 0) / 2)
    one = torch.full((1, 1, 1, 1), 0.5)
    assert M.evaluate(one, one, one, names="SF,AG")["SF"].item() == 0.0


def test_degenerate_image_in_a_batch_leaves_the_others_alone():
    t, u = rand_img(h=48, w=48), rand_img(h=48, w=48)
    z = torch.zeros_like(t)
    alone = M.evaluate(t, u, (t + u) / 2)
    batch = M.evaluate(torch.cat([z, t]), torch.cat([z, u]), torch.cat([z, (t + u) / 2]))
    for name in M.METRICS:
        assert torch.isfinite(batch[name][0]) or name == "PSNR", name
        torch.testing.assert_close(batch[name][1], alone[name][0], atol=1e-9, rtol=1e-9)
