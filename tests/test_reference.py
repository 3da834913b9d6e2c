"""Properties of the reference ("torch") backend, checked independently of any kernel."""
import pytest
import torch
import torch.nn.functional as F

import hfkernels as hk
from hfkernels.core import reference as ref
from hfkernels.core.fusion import max_levels

SIZES = [(1, 1), (2, 3), (5, 2), (7, 9), (16, 16), (33, 20)]


def rand(*s, dtype=torch.float64):
    return torch.rand(*s, dtype=dtype)


def test_pyramid_kernel_matches_design():
    # the 5-tap Gaussian of sigma 1, normalised (docs/design.md, section 4.1), to 6 digits
    t = torch.tensor([0.054489, 0.244201, 0.402620, 0.244201, 0.054489], dtype=torch.float64)
    k = ref.pyramid_kernel()
    assert torch.allclose(k, torch.outer(t, t), atol=2e-7, rtol=0)
    assert abs(float(k.sum()) - 1) < 1e-15
    assert k.shape == (5, 5)


@pytest.mark.parametrize("h,w", SIZES)
def test_down_up_sizes(h, w):
    x = rand(1, 2, h, w)
    d = ref.down(x)
    assert d.shape[-2:] == ((h + 1) // 2, (w + 1) // 2)
    assert ref.up(d, (h, w)).shape[-2:] == (h, w)


def test_down_is_strided_blur():
    x = rand(1, 1, 9, 8)
    k = ref.pyramid_kernel()
    xp = F.pad(x, (2, 2, 2, 2))
    manual = torch.zeros(1, 1, 5, 4, dtype=torch.float64)
    for i in range(5):
        for j in range(4):
            manual[0, 0, i, j] = (xp[0, 0, 2 * i:2 * i + 5, 2 * j:2 * j + 5] * k).sum()
    assert torch.allclose(ref.down(x), manual, atol=1e-14)


def test_up_even_is_transposed_conv_scatter():
    # up(x) on even sizes: each input pixel scatters 4K centred at (2i, 2j), cropped by padding 2.
    x = rand(1, 1, 3, 4)
    k = 4 * ref.pyramid_kernel()
    big = torch.zeros(6 + 4 + 1, 8 + 4 + 1, dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            big[2 * i:2 * i + 5, 2 * j:2 * j + 5] += x[0, 0, i, j] * k
    assert torch.allclose(ref.up(x, (6, 8))[0, 0], big[2:8, 2:10], atol=1e-14)


@pytest.mark.parametrize("levels", [1, 2, 4, 6])
@pytest.mark.parametrize("h,w", SIZES)
def test_collapse_inverts_pyramid(h, w, levels):
    x = rand(2, 3, h, w)
    if levels > max_levels(h, w):  # only 1x1 levels would be added: refused (test_reliability_api)
        levels = max_levels(h, w)
    pyr = hk.laplacian_pyramid(x, levels)
    assert len(pyr) == levels + 1 and pyr[-1].shape[-2:] == (-(-h // 2**levels), -(-w // 2**levels))
    assert torch.allclose(hk.reconstruct(pyr), x, atol=1e-12)


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("c,cir", [(1, 1), (3, 1), (3, 3)])
def test_mu_extremes_and_constant(h, w, c, cir):
    vis, ir = rand(2, c, h, w), rand(2, cir, h, w)
    zero = torch.zeros(2, 1, h, w, dtype=torch.float64)
    assert torch.allclose(hk.fuse(vis, ir, zero), vis, atol=1e-12)
    assert torch.allclose(hk.fuse(vis, ir, zero + 1), ir.expand_as(vis), atol=1e-12)
    got = hk.fuse(vis, ir, zero + 0.3)
    assert torch.allclose(got, 0.7 * vis + 0.3 * ir, atol=1e-12)


def test_fuse_is_linear_in_sources():
    vis1, vis2, ir1, ir2 = (rand(1, 3, 11, 13) for _ in range(4))
    mu = rand(1, 1, 11, 13)
    lhs = hk.fuse(2 * vis1 - vis2, 2 * ir1 - ir2, mu)
    rhs = 2 * hk.fuse(vis1, ir1, mu) - hk.fuse(vis2, ir2, mu)
    assert torch.allclose(lhs, rhs, atol=1e-12)


def test_fuse_matches_hand_written_levels():
    vis, ir, mu = rand(1, 1, 12, 10), rand(1, 1, 12, 10), rand(1, 1, 12, 10)
    a, b = ref.laplacian_pyramid(vis, 2), ref.laplacian_pyramid(ir, 2)
    m1 = F.interpolate(mu, size=(6, 5), mode="bilinear", align_corners=False)
    m2 = F.interpolate(mu, size=(3, 3), mode="bilinear", align_corners=False)
    f = [(1 - mu) * a[0] + mu * b[0], (1 - m1) * a[1] + m1 * b[1], (1 - m2) * a[2] + m2 * b[2]]
    want = ref.up(ref.up(f[2], (6, 5)) + f[1], (12, 10)) + f[0]
    assert torch.allclose(hk.fuse(vis, ir, mu, 2), want, atol=1e-13)


def test_mu_changes_output_locally():
    # a mu that selects ir only in the top-left quadrant pulls that quadrant towards ir
    vis, ir = torch.zeros(1, 1, 32, 32, dtype=torch.float64), torch.ones(1, 1, 32, 32, dtype=torch.float64)
    mu = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    mu[..., :16, :16] = 1
    out = hk.fuse(vis, ir, mu)
    assert out[..., :8, :8].mean() > 0.7 and out[..., 24:, 24:].mean() < 0.3


def test_colour_round_trip_and_gray():
    x = rand(2, 3, 5, 6)
    assert torch.allclose(ref.ycbcr_to_rgb(ref.rgb_to_ycbcr(x)), x, atol=1e-5)
    g = torch.full((1, 3, 2, 2), 0.4, dtype=torch.float64)
    assert torch.allclose(ref.rgb_to_ycbcr(g), torch.tensor([0.4, 0.5, 0.5], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 2), atol=1e-6)


def test_bt601_luma_and_chroma_have_one_definition():
    from hfkernels.core import loss_reference

    # the released loss and the fusion see the same BT.601 numbers (ITU-R BT.601 coefficients)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    torch.testing.assert_close(ref.luma(x), 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-15, rtol=0)
    cb, cr = ref.chroma(x)
    torch.testing.assert_close(cb, -0.168736 * r - 0.331264 * g + 0.5 * b, atol=1e-15, rtol=0)
    torch.testing.assert_close(cr, 0.5 * r - 0.418688 * g - 0.081312 * b, atol=1e-15, rtol=0)
    torch.testing.assert_close(ref.rgb_to_ycbcr(x), torch.cat([ref.luma(x), cb + 0.5, cr + 0.5], 1), atol=0, rtol=0)
    assert torch.equal(ref.luma(x[:, :1]), x[:, :1])  # one channel: already luma
    torch.testing.assert_close(loss_reference.luma(x), ref.luma(x), atol=0, rtol=0)
    torch.testing.assert_close(torch.stack(loss_reference.chroma(x)), torch.stack(ref.chroma(x)), atol=0, rtol=0)


def test_fuse_color_keeps_chroma_and_clamps():
    vis, ir = rand(2, 3, 9, 7), rand(2, 1, 9, 7)
    zero = torch.zeros(2, 1, 9, 7, dtype=torch.float64)
    assert torch.allclose(hk.fuse_color(vis, ir, zero), vis, atol=1e-5)
    out = hk.fuse_color(vis, ir, zero + 1)
    assert out.min() >= 0 and out.max() <= 1
    # chroma of the visible image survives wherever the result is not clamped
    ycc_in, ycc_out = ref.rgb_to_ycbcr(vis), ref.rgb_to_ycbcr(out)
    # (1e-5: the BT.601 inverse coefficients are rounded, so the YCbCr round trip is exact only to ~1e-6)
    inside = ((ref.ycbcr_to_rgb(torch.cat([ir, ycc_in[:, 1:]], 1)) - out).abs() < 1e-5).all(1, keepdim=True)
    assert inside.any()
    assert torch.allclose((ycc_out[:, 1:] - ycc_in[:, 1:]) * inside, torch.zeros_like(ycc_in[:, 1:]), atol=1e-6)


def test_heuristic_guidance_properties():
    vis, ir = rand(2, 3, 20, 17), rand(2, 1, 20, 17)
    w = hk.heuristic_guidance(vis, ir)
    assert w.shape == (2, 1, 20, 17) and w.min() >= 0 and w.max() <= 1
    # a brighter infrared image raises the weight given to it
    w_hot = hk.heuristic_guidance(vis, (ir + 0.5).clamp(0, 1))
    assert w_hot.mean() > w.mean()
    # [0,1] inputs and the same images given in [-1,1] agree
    w2 = hk.heuristic_guidance(vis * 2 - 1, ir * 2 - 1, value_range=(-1, 1))
    assert torch.allclose(w, w2, atol=1e-12)


def test_heuristic_guidance_by_hand_on_flat_images():
    # flat images: no gradients inside; w = sigmoid(3 (b - a)) before blur and zero-padded borders
    vis = torch.full((1, 1, 40, 40), 0.25, dtype=torch.float64)
    ir = torch.full((1, 1, 40, 40), 0.75, dtype=torch.float64)
    w = hk.heuristic_guidance(vis, ir)
    assert abs(float(w[0, 0, 20, 20]) - float(torch.sigmoid(torch.tensor(3.0, dtype=torch.float64)))) < 1e-12


def test_heuristic_blend_is_convex():
    vis, ir = rand(1, 3, 15, 15), rand(1, 1, 15, 15)
    out = hk.heuristic_blend(vis, ir)
    lo = torch.minimum(vis, ir.expand_as(vis))
    hi = torch.maximum(vis, ir.expand_as(vis))
    assert ((out >= lo - 1e-12) & (out <= hi + 1e-12)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_close_to_float64(dtype):
    vis, ir, mu = rand(1, 3, 17, 12), rand(1, 1, 17, 12), rand(1, 1, 17, 12)
    want = hk.fuse(vis, ir, mu)
    got = hk.fuse(vis.to(dtype), ir.to(dtype), mu.to(dtype), backend="torch")
    assert got.dtype == dtype
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert torch.allclose(got.double(), want, atol=tol)
