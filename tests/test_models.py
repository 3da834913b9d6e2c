"""The guidance U-Net: sizes of the presets, any input size, guide kinds, load_guidance."""
import pytest
import torch

from hfkernels.core.fusion import heuristic_guidance
from hfkernels.core.reference import luma
from hfkernels.guidance import load_guidance
from hfkernels.guidance.checkpoint import save_checkpoint
from hfkernels.guidance.models import (
    EPS,
    PRESETS,
    GuidanceUNet,
    build_model,
    count_parameters,
    guidance_input,
    heuristic_from_input,
    kl_term,
    residual_mu,
)


@pytest.mark.parametrize("preset,expected", [("paper", 17_262_466), ("small", 608_426), ("tiny", 68_026)])
def test_parameter_counts(preset, expected):
    m = GuidanceUNet(in_channels=2, out_channels=2, preset=preset)
    assert count_parameters(m) == expected
    assert m.base == PRESETS[preset]


def test_paper_count_by_formula():
    # hand count for base width b: 3x3 convs without bias, BN (2 per channel), 1x1 head with bias
    b, cin, cout = 64, 2, 2

    def dc(i, o, mid=None):
        mid = mid or o
        return 9 * i * mid + 2 * mid + 9 * mid * o + 2 * o

    n = dc(cin, b) + dc(b, 2 * b) + dc(2 * b, 4 * b) + dc(4 * b, 8 * b) + dc(8 * b, 8 * b)
    n += dc(16 * b, 4 * b, 8 * b) + dc(8 * b, 2 * b, 4 * b) + dc(4 * b, b, 2 * b) + dc(2 * b, b, b)
    n += b * cout + cout
    assert n == 17_262_466 == count_parameters(GuidanceUNet(preset="paper"))


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (33, 17), (16, 16), (2, 61)])
@pytest.mark.parametrize("train", [True, False])
def test_any_size(size, train):
    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny").train(train)
    x = torch.randn(1, 2, *size)
    mu, logvar, logit = m(x, return_logit=True)
    for t in (mu, logvar, logit):
        assert t.shape == (1, 1, *size)
        assert torch.isfinite(t).all()
    assert ((mu >= 0) & (mu <= 1)).all()
    torch.testing.assert_close(mu, torch.sigmoid(logit))
    if train:
        (mu.sum() + logvar.sum()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_padding_is_cropped_back_consistently():
    # a 32x32 input needs no padding; the same image inside a padded call gives the same result
    # in eval mode only where the padding does not reach, so compare an exact-size case instead:
    m = GuidanceUNet(preset="tiny").eval()
    x = torch.randn(2, 2, 48, 64)
    mu_a, _ = m(x)
    mu_b, _ = m(x[:1])
    torch.testing.assert_close(mu_a[:1], mu_b)  # batch independence in eval mode


def test_channels_last_and_bf16():
    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny").eval()
    x = torch.randn(2, 2, 40, 24)
    ref, _ = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    out, _ = m_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16, lv16 = m_cl(x)
    assert torch.isfinite(out16.float()).all() and torch.isfinite(lv16.float()).all()
    assert (out16.float() - ref).abs().max() < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="preset"):
        GuidanceUNet(preset="huge")
    with pytest.raises(ValueError, match="base"):
        GuidanceUNet(base=0)
    m = GuidanceUNet(preset="tiny")
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="B, C, H, W"):
        m(torch.randn(2, 8, 8))


def test_config_round_trip():
    m = GuidanceUNet(preset="small")
    m2 = build_model(m.config())
    assert m2.config() == m.config() and count_parameters(m2) == count_parameters(m)
    assert build_model({"base": 3, "in_channels": 2, "out_channels": 2, "preset": None}).base == 3


def test_guidance_input():
    vis = torch.rand(2, 3, 5, 6)
    ir = torch.rand(2, 1, 5, 6)
    x = guidance_input(vis, ir)
    assert x.shape == (2, 2, 5, 6)
    torch.testing.assert_close(x[:, :1], luma(vis) * 2 - 1)
    torch.testing.assert_close(x[:, 1:], ir * 2 - 1)
    # 3-channel ir uses its luma; gray vis is used as is
    x3 = guidance_input(vis[:, :1], ir.expand(-1, 3, -1, -1))
    torch.testing.assert_close(x3[:, 1:], ir * 2 - 1)
    torch.testing.assert_close(x3[:, :1], vis[:, :1] * 2 - 1)
    with pytest.raises(ValueError, match="ir"):
        guidance_input(vis, torch.rand(2, 1, 5, 7))


def test_kl_term_hand_values():
    z = torch.zeros(1, 1, 2, 2)
    assert float(kl_term(z, z)) == 0.0
    # m = 1, logvar = 0: -0.5 * (1 + 0 - 1 - 1) = 0.5
    assert float(kl_term(torch.ones(1, 1, 2, 2), z)) == pytest.approx(0.5)
    # m = 0, logvar = 1: -0.5 * (1 + 1 - 0 - e)
    assert float(kl_term(z, torch.ones(1, 1, 2, 2))) == pytest.approx(-0.5 * (2 - torch.e))


def test_load_guidance_matches_model(tmp_path):
    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny")
    # make BatchNorm running statistics non-trivial
    m.train()
    for _ in range(3):
        m(torch.randn(2, 2, 24, 20))
    save_checkpoint(tmp_path, m, None, epoch=1)
    mu_fn = load_guidance(tmp_path, device="cpu")
    vis, ir = torch.rand(2, 3, 21, 30), torch.rand(2, 1, 21, 30)
    got = mu_fn(vis, ir)
    m.eval()
    with torch.no_grad():
        want, _ = m(guidance_input(vis, ir))
    assert got.shape == (2, 1, 21, 30) and got.dtype == torch.float32
    assert torch.equal(got, want)
    assert not got.requires_grad
    # 3-channel ir and gray vis are accepted
    assert mu_fn(vis[:, :1], ir.expand(-1, 3, -1, -1)).shape == (2, 1, 21, 30)
    # a weights file works too
    (f,) = tmp_path.glob("model-e*.safetensors")
    assert torch.equal(load_guidance(f)(vis, ir), want)


def test_load_guidance_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_guidance(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_guidance(tmp_path / "nope")


# ----------------------------------------------------------------------------- guide kinds


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("size", [(37, 53), (1, 29), (23, 1), (1, 1), (64, 48)])
def test_residual_starts_as_the_heuristic(preset, size):
    torch.manual_seed(1)
    m = GuidanceUNet(preset=preset, guide="residual")
    vis, ir = torch.rand(2, 3, *size), torch.rand(2, 1, *size)
    x = guidance_input(vis, ir)
    want = heuristic_guidance(vis, ir)
    for train in (True, False):
        m.train(train)
        with torch.no_grad():
            mu, logvar, delta = m(x, return_logit=True)
        assert mu.shape == logvar.shape == delta.shape == (2, 1, *size) and mu.dtype == torch.float32
        assert torch.equal(delta, torch.zeros_like(delta))
        # bit for bit the heuristic of the network's input ...
        assert torch.equal(mu, heuristic_from_input(x))
        # ... which is the heuristic of the images up to the rounding of the luma mapping
        torch.testing.assert_close(mu, want, atol=1e-6, rtol=0)
    # under bf16 autocast the heuristic is still computed in float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mu16, _ = m.eval()(x)
    assert mu16.dtype == torch.float32 and torch.equal(mu16, heuristic_from_input(x))


def test_residual_mu_formula():
    h = torch.tensor([0.0, 1e-6, EPS, 0.2, 0.5, 0.9, 1 - EPS, 1.0]).view(1, 1, 1, -1)
    zero = torch.zeros_like(h)
    assert torch.equal(residual_mu(h, zero), h)  # exact, also where h is 0 or 1
    mid = (h >= EPS) & (h <= 1 - EPS)
    for d in (-3.0, -0.5, 0.7, 4.0):
        got = residual_mu(h, zero + d)
        want = torch.sigmoid(torch.logit(h) + d)
        torch.testing.assert_close(got[mid], want[mid], atol=1e-6, rtol=0)
        # outside the clamp the offset is at most EPS (under half an 8-bit step)
        assert ((got - torch.sigmoid(torch.logit(h.clamp(EPS, 1 - EPS)) + d)).abs() <= EPS + 1e-7).all()
        assert ((got >= 0) & (got <= 1)).all()
    # monotone in delta: a positive correction moves towards the infrared image
    assert (residual_mu(h, zero + 1)[mid] > h[mid]).all() and (residual_mu(h, zero - 1)[mid] < h[mid]).all()


def test_residual_learns_a_correction():
    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny", guide="residual").train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    vis, ir = torch.rand(2, 3, 32, 40), torch.rand(2, 1, 32, 40)
    x = guidance_input(vis, ir)
    h = heuristic_from_input(x)
    for _ in range(3):
        mu, _ = m(x)
        (mu - 0.9).square().mean().backward()  # a target the heuristic does not meet
        assert m.outc.weight.grad[0].abs().sum() > 0
        opt.step()
        opt.zero_grad()
    mu, _ = m(x)
    assert (mu - h).abs().mean() > 1e-3
    assert (mu - 0.9).square().mean() < (h - 0.9).square().mean()


def test_guide_argument_checks():
    with pytest.raises(ValueError, match="guide"):
        GuidanceUNet(preset="tiny", guide="hybrid")
    with pytest.raises(ValueError, match="in_channels"):
        GuidanceUNet(preset="tiny", in_channels=3, guide="residual")
    assert GuidanceUNet(preset="tiny").guide == "scratch"
    m = GuidanceUNet(preset="tiny", guide="residual")
    assert m.config()["guide"] == "residual" and build_model(m.config()).guide == "residual"
    # a configuration written before guide kinds existed builds the paper's network
    old = {k: v for k, v in m.config().items() if k != "guide"}
    assert build_model(old).guide == "scratch"


@pytest.mark.parametrize("guide", ["scratch", "residual"])
def test_checkpoint_round_trip_of_guide_kinds(tmp_path, guide):
    import json

    from hfkernels.guidance.checkpoint import load_checkpoint, load_model

    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny", guide=guide)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x = torch.rand(2, 2, 24, 20) * 2 - 1
    mu, _ = m(x)
    mu.mean().backward()
    opt.step()  # move the delta head off zero so the kind matters
    save_checkpoint(tmp_path, m, opt, epoch=1)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["guide"] == guide
    assert load_checkpoint(tmp_path)["guide"] == guide
    assert load_model(tmp_path).guide == guide
    mu_fn = load_guidance(tmp_path)
    assert mu_fn.guide == guide
    vis, ir = torch.rand(1, 3, 19, 23), torch.rand(1, 1, 19, 23)
    m.eval()
    with torch.no_grad():
        want, _ = m(guidance_input(vis, ir))
    assert torch.equal(mu_fn(vis, ir), want)
    other = GuidanceUNet(preset="tiny", guide="residual" if guide == "scratch" else "scratch").eval()
    other.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert not torch.equal(other(guidance_input(vis, ir))[0], want)  # the kind changes the output


def test_old_checkpoint_without_guide_loads_as_scratch(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    m = GuidanceUNet(preset="tiny").eval()
    save_checkpoint(tmp_path, m, None, epoch=1)
    # rewrite the files as an older version wrote them: no guide anywhere
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    del record["guide"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    f = tmp_path / record["model"]
    cfg = {k: v for k, v in m.config().items() if k != "guide"}
    save_file(load_file(f), f, metadata={"format": "hfkernels-checkpoint-1", "epoch": "1", "config": json.dumps(cfg)})
    mu_fn = load_guidance(tmp_path)
    assert mu_fn.guide == "scratch"
    vis, ir = torch.rand(1, 3, 21, 17), torch.rand(1, 1, 21, 17)
    with torch.no_grad():
        assert torch.equal(mu_fn(vis, ir), m(guidance_input(vis, ir))[0])
