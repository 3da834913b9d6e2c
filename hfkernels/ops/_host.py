"""Host-side helpers of the kernel modules: Triton launch tiles, filter geometry.

Used by both Triton modules (``fuse_triton``, ``loss_triton``) and, for the filter geometry, by
``loss_torch``. Imports without triton: nothing here launches a kernel by itself; the op modules
pass in ``wrap_triton(kernel)``.
"""
from __future__ import annotations

from ..core.backends import triton_interpreting


def pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1)."""
    return 1 << max(int(x) - 1, 0).bit_length()


class Tiling:
    """How an op module cuts a ``rows x cols`` output into ``BH x BW`` tiles, one per program.

    On a GPU: ``elements``-element tiles with 16 to 64 contiguous columns (coalesced accesses).
    Triton's interpreter pays per operation rather than per element, so there one big tile
    (up to ``interpreter_elements``, at most 128 columns) covers as much as possible.

    A plain class, not a frozen one: tests replace ``shape`` on an instance to force small tiles.
    """

    def __init__(self, elements: int, interpreter_elements: int):
        self.elements = elements
        self.interpreter_elements = interpreter_elements

    def shape(self, rows: int, cols: int) -> tuple[int, int]:
        """(BH, BW) for a rows x cols launch."""
        if triton_interpreting():
            bw = min(pow2(cols), 128)
            return min(pow2(rows), max(self.interpreter_elements // bw, 1)), bw
        bw = min(max(pow2(cols), 16), 64)
        return self.elements // bw, bw

    def grid(self, rows: int, cols: int) -> tuple[tuple[int, int], int, int]:
        """((programs over rows, programs over cols), BH, BW)."""
        bh, bw = self.shape(rows, cols)
        return (-(-rows // bh), -(-cols // bw)), bh, bw

    def launch(self, runner, rows: int, cols: int, *args, **meta) -> tuple[int, int]:
        """``runner[grid](*args, BH=.., BW=.., num_warps=4, **meta)`` over a rows x cols output;
        ``runner`` is ``wrap_triton(kernel)``. Returns the grid."""
        grid, bh, bw = self.grid(rows, cols)
        runner[grid](*args, BH=bh, BW=bw, num_warps=4, **meta)
        return grid


def geometry(n: int, window_size: int, lo: int, padding: str) -> tuple[int, int]:
    """(offset of the first kept tap, output length) of a window filter along an axis of length
    ``n``: ``out[p] = sum_j taps[j] * x[p + offset + j]`` for p in 0..length-1, where the kept
    taps start at index ``lo`` of the full window; ``padding`` is "valid" or "same"."""
    if padding == "valid":
        return lo, n - window_size + 1
    return lo - window_size // 2, n
