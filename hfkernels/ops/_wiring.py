"""The autograd and fake-tensor wiring that every op module shares.

Each backend exposes an op as a ``torch.library`` custom op (``custom_op``, ``triton_op`` or a
C++ ``TORCH_LIBRARY`` op) whose backward is a second, first-order-only op. :func:`wire` gives
the forward op its autograd formula and both ops their fake (meta) implementations, so that
``gradcheck``, ``gradgradcheck`` and ``torch.compile(fullgraph=True)`` work the same on every
backend. An op module only states what differs: which tensors the backward reads and which
kernel computes it.

The conventions :func:`wire` assumes of a forward op ``op(t_1..t_n, *args)``:

- its first ``n`` inputs are the tensors that may require grad; the rest are plain arguments
  (ints, floats, strings, bools), kept on ``ctx`` as they are;
- it returns its value, optionally followed by auxiliary tensors that its backward reads
  (intermediates saved so the backward need not recompute them); those are marked
  non-differentiable;
- its backward op returns one gradient per differentiable input, shaped like that input.

The backward: ``None`` for every input that does not need a gradient (``ctx.needs_input_grad``;
nothing runs when none does). Under ``create_graph=True`` (grad mode on inside the backward) it
differentiates the plain-PyTorch formulation with :func:`differentiable_vjp` instead, so the
gradient is differentiable again and ``gradgradcheck`` passes on every backend; a plain
``backward()`` keeps the fast kernel.
"""
from __future__ import annotations

from typing import Callable

import torch


def differentiable_vjp(fn, grad, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``vjp(fn, inputs)(grad)`` recorded by autograd, so that it can be differentiated again.

    For a backward run under ``create_graph=True``: ``fn`` is a plain-PyTorch (reference)
    formulation of the op, ``inputs`` the saved inputs (connected to the outer graph where they
    require grad) and ``grad`` the incoming cotangent. Returns one gradient per input (zeros
    where ``fn`` does not use it).
    """
    with torch.enable_grad():
        xs = [t if t.requires_grad else t.detach().requires_grad_() for t in inputs]
        out = fn(*xs)
        gs = torch.autograd.grad(out, xs, grad, create_graph=True, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(gs, xs))


def like_grads(n: int) -> Callable:
    """Fake implementation of a backward op ``(grad, t_1..t_n, ...) -> (g_1..g_n)``: empty
    tensors shaped like ``t_1..t_n``."""

    def fake(grad, *rest):
        return tuple(t.new_empty(t.shape) for t in rest[:n])

    return fake


def wire(
    op,
    *,
    tensors: int,
    kernel: Callable,
    reference: Callable,
    fake: Callable | None = None,
    backward_op=None,
) -> None:
    """Register the autograd formula of the forward ``op`` (and fakes of it and its backward).

    Args:
        op: the forward op (a ``CustomOpDef`` or an ``"ns::name"`` string).
        tensors: ``n``, how many leading inputs are differentiable tensors.
        kernel: ``kernel(grad, t_1..t_n, *aux, *args) -> (g_1..g_n)``, the first-order backward
            (``aux``: the op's auxiliary outputs, ``args``: its non-tensor inputs).
        reference: ``reference(grad, t_1..t_n, *args) -> (g_1..g_n)``, differentiable gradients
            for double backward (normally a :func:`differentiable_vjp` of the reference).
        fake: the forward op's fake implementation, if it needs one registered.
        backward_op: the backward op, whose fake :func:`like_grads` registers, if given.
    """
    if fake is not None:
        torch.library.register_fake(op)(fake)
    if backward_op is not None:
        torch.library.register_fake(backward_op)(like_grads(tensors))

    def setup_context(ctx, inputs, output):
        aux = tuple(output[1:]) if isinstance(output, (tuple, list)) else ()
        if aux:
            ctx.mark_non_differentiable(*aux)
        ctx.save_for_backward(*inputs[:tensors], *aux)
        ctx.args = tuple(inputs[tensors:])

    def backward(ctx, grad, *_aux_grads):
        need = ctx.needs_input_grad
        skip = (None,) * (len(need) - tensors)
        if not any(need[:tensors]):
            return (None,) * tensors + skip
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the kernels are first-order only
            grads = reference(grad, *saved[:tensors], *ctx.args)
        else:
            grads = kernel(grad, *saved, *ctx.args)
        return (*(g if n else None for g, n in zip(grads, need)), *skip)

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def wants_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an op called now on ``tensors`` (so its forward should write
    what the backward reads)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
