"""The Triton loss kernels address tensors past 2^31 elements correctly (64-bit offsets).

No 2^31-element tensor is allocated. Each kernel runs one tile in Triton's interpreter with size
arguments that describe a huge problem, while every load and store is intercepted: recorded,
never performed (loads read zeros). The sizes put the largest true offset of each case in
[2^31, 2^32) elements: an offset computed in 32 bits is congruent to the true one mod 2^32, so
there it comes out negative and the access lands below the tensor's base address. Each case
targets one kind of product: row * width, or a statistic's index * the statistic's size.
"""
import numpy as np
import pytest
import torch

from hfkernels.core.backends import triton_interpreting

lt = pytest.importorskip("hfkernels.ops.loss_triton")
if lt.triton is None:
    pytest.skip("triton is not importable", allow_module_level=True)
if not triton_interpreting():
    pytest.skip("the accesses are intercepted in Triton's interpreter (TRITON_INTERPRET=1)",
                allow_module_level=True)

from triton.runtime import interpreter as ti  # noqa: E402

BIG = 2 ** 31
ROW = 2 ** 28        # a width: row 8..15 of a tile starts at [2^31, 2^32)
SLOT = 2 ** 25 + 5   # a width: with 16 rows, statistic 4 of 5 starts at 2^31 + 320 (5 * 16 * SLOT < 2^32)
T = dict(BH=16, BW=16)


@pytest.fixture
def accesses(monkeypatch):
    """Replace the interpreter's memory accesses: returns the list of byte addresses (int64)
    every load and store touched (masked-off lanes excluded); loads yield zeros."""
    seen = []

    def load(self, ptrs, mask, other, *args, **kwargs):
        seen.append(ptrs.data[mask.data].astype(np.int64))
        elt = ptrs.get_element_ty()
        return ti.TensorHandle(np.zeros(ptrs.data.shape, dtype=ti._get_np_dtype(elt)), elt)

    def store(self, ptrs, value, mask, *args, **kwargs):
        seen.append(ptrs.data[mask.data].astype(np.int64))

    if not all(hasattr(ti.InterpreterBuilder, n) for n in ("create_masked_load", "create_masked_store")):
        pytest.skip("this Triton's interpreter has no create_masked_load/store to intercept")
    monkeypatch.setattr(ti.InterpreterBuilder, "create_masked_load", load)
    monkeypatch.setattr(ti.InterpreterBuilder, "create_masked_store", store)
    return seen


def _bufs(n, dtype=torch.float32):
    """n one-element stand-ins for the kernel's tensors (only their addresses and dtypes matter)."""
    return [torch.zeros(1, dtype=dtype) for _ in range(n)]


def _check(seen, tensors, elsize=4):
    base = min(t.data_ptr() for t in tensors)
    addr = np.concatenate(seen) - base
    assert addr.size, "nothing was accessed"
    assert addr.min() >= 0, f"an access {-int(addr.min())} bytes below the tensors: a 32-bit offset wrapped"
    assert addr.max() >= BIG * elsize, "the case never reaches 2^31 elements (it tests nothing)"


_x, _y, _t, _h = _bufs(4)
_a, _b, _f, _p, _g = _bufs(5)
(_c,) = _bufs(1)  # SSIM's [C1, C2]
CASES = {
    # kernel, pointer args, ints, constexprs
    "ssim_h rows": (lt._ssim_h_kernel, (_x, _y, _t, _h), (16, ROW, 16, 0, 2), {}),
    "ssim_h stats": (lt._ssim_h_kernel, (_x, _y, _t, _h), (16, SLOT, SLOT, 0, 2), {}),
    "ssim_v stats": (lt._ssim_v_kernel, (_h, _t, _c, _p, _g), (1, 16, 16, SLOT, 0, 2), dict(BACKWARD=True)),
    "ssim_v rows": (lt._ssim_v_kernel, (_h, _t, _c, _p, _g), (16, 2 ** 10, 1, 2 ** 18, 0, 2),
                    dict(BACKWARD=False)),
    "rows_filter rows": (lt._rows_filter_kernel, (_h, _t, _g), (16, 1, 1, ROW, 0, 1), {}),
    "ssim_hT rows": (lt._ssim_hT_kernel, (_h, _x, _y, _t, _a, _b), (16, ROW, 16, 0, 2), {}),
    "ssim_hT stats": (lt._ssim_hT_kernel, (_h, _x, _y, _t, _a, _b), (16, 16, SLOT, 0, 2), {}),
    "gmax_fwd rows": (lt._gmax_fwd_kernel, (_a, _b, _f, _p), (1, 16, ROW), {}),
    "gmax_fwd planes": (lt._gmax_fwd_kernel, (_a, _b, _f, _p), (16, 1, ROW), {}),
    "gmax_coef rows": (lt._gmax_coef_kernel, (_a, _b, _f, _p, _g), (1, 16, ROW), {}),
    "gmax_coef stats": (lt._gmax_coef_kernel, (_a, _b, _f, _p, _g), (1, 16, SLOT), {}),
    "gmax_adjoint rows": (lt._gmax_adjoint_kernel, (_g, _a, _b, _f), (1, 16, ROW), {}),
    "gmax_adjoint stats": (lt._gmax_adjoint_kernel, (_g, _a, _b, _f), (1, 16, SLOT), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_offsets_past_2_31_elements(accesses, case):
    kernel, ptrs, ints, consts = CASES[case]
    kernel[(1, 1)](*ptrs, *ints, ACC64=False, **consts, **T)
    _check(accesses, ptrs)


def test_a_32_bit_offset_is_caught(accesses):
    # the check itself: a kernel whose offset is a 32-bit row * width fails it
    import triton
    import triton.language as tl

    @triton.jit
    def rows32(x, W, BH: tl.constexpr):
        g = tl.arange(0, BH)
        tl.store(x + g * W, g.to(tl.float32))

    x = torch.zeros(1)
    rows32[(1,)](x, ROW, BH=16)
    with pytest.raises(AssertionError, match="32-bit offset wrapped"):
        _check(accesses, [x])
