"""The code under test, run through torch: reverse mode, forward mode, double backward.

All functions work in the real coordinates of :mod:`derivcheck.check.torch_call` and in the
user's own dtype and device. Results come back as float64 numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from derivcheck.check.noise import observed
from derivcheck.check.torch_call import OutputSpec, TorchCall, from_real, to_real


class Graph:
    """One forward pass of the user's function with fresh leaves, kept for backward passes.

    `spec` (the output structure) is taken from this call unless given.
    """

    def __init__(self, call: TorchCall, spec: OutputSpec | None = None):
        self.call = call
        self.leaves = call.leaves()
        self.raw = call.call(self.leaves)
        self.spec = spec or OutputSpec.of(self.raw, differentiable_only=True)
        self.outs = self.spec.tensors(self.raw)
        self.live = [o.requires_grad for o in self.outs]

    def raw_grads(self, w: np.ndarray, *, create_graph: bool = False) -> list[Any]:
        """``torch.autograd.grad`` of the outputs with real cotangent `w`: one entry per
        slot (``None`` where a slot does not reach any output)."""
        import torch

        cotangents = self.spec.cotangents(w, self.outs)
        pairs = [(o, c) for o, c, live in zip(self.outs, cotangents, self.live) if live]
        if not pairs:
            return [None] * len(self.leaves)
        grads = torch.autograd.grad([o for o, _ in pairs], self.leaves, [c for _, c in pairs], retain_graph=True, create_graph=create_graph, allow_unused=True)
        return list(grads)

    def vjp(self, w: np.ndarray) -> np.ndarray:
        """``J^T w`` in real coordinates, shape ``(n,)``."""
        return flat_grads(self.raw_grads(w), self.call)

    def vjp_observed(self, w: np.ndarray) -> tuple[np.ndarray, float]:
        """``J^T w`` and the largest operand magnitude of its backward pass
        (:func:`~derivcheck.check.noise.observed`)."""
        return observed(lambda: self.vjp(w))

    def jacobian(self, observe: bool = False) -> Any:
        """The full Jacobian ``(m, n)`` by one backward pass per real output coordinate;
        with `observe`, also each row's largest operand magnitude ``(m,)``."""
        m = self.spec.size
        rows = np.zeros((m, self.call.size))
        magnitudes = np.zeros(m)
        for i in range(m):
            e = np.zeros(m)
            e[i] = 1.0
            if observe:
                rows[i], magnitudes[i] = self.vjp_observed(e)
            else:
                rows[i] = self.vjp(e)
        return (rows, magnitudes) if observe else rows


def flat_grads(grads: Sequence[Any], call: TorchCall) -> np.ndarray:
    """Concatenate per-slot gradients (``None``: zeros) into one real vector."""
    parts = []
    for g, slot in zip(grads, call.slots):
        parts.append(np.zeros(slot.size) if g is None else to_real(g).reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def jvp(call: TorchCall, spec: OutputSpec, tangent: np.ndarray, missing: list[int] | None = None) -> np.ndarray:
    """``J v`` by forward-mode AD (``torch.autograd.forward_ad`` dual tensors, so a custom
    Function's ``jvp`` is what runs); only slots with a non-zero tangent become duals. An
    output without a tangent counts as zero; its index is appended to `missing`."""
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        args = []
        for slot in call.slots:
            part = tangent[slot.cols]
            value = slot.tensor.clone()
            if np.any(part):
                args.append(fwAD.make_dual(value, from_real(part, slot.shape, value.dtype, value.device)))
            else:
                args.append(value)
        raw = call.call(args)
        outs = spec.tensors(raw)
        parts: list[np.ndarray] = []
        for o, size in zip(outs, spec.sizes):
            t = fwAD.unpack_dual(o).tangent
            if t is None and missing is not None:
                missing.append(len(parts))
            parts.append(np.zeros(size) if t is None else to_real(t))
    return np.concatenate(parts)


def forward_jacobian(call: TorchCall, spec: OutputSpec) -> np.ndarray:
    """The full Jacobian ``(m, n)`` by one forward-mode pass per real input coordinate --
    all at once under ``vmap(torch.func.jvp)`` where its ``J v`` for a random ``v`` is what
    one pass along ``v`` gives (:func:`_batched_forward_jacobian`), else one by one."""
    batched = _batched_forward_jacobian(call, spec)
    if batched is not None and batched.shape == (spec.size, call.size):
        # every column at once: J v for a random v, one pass at a time, against the columns
        v = np.random.default_rng(0).standard_normal(call.size)
        with np.errstate(invalid="ignore", over="ignore"):
            want, got = jvp(call, spec, v), batched @ v
            scale = float(np.max(np.abs(batched[np.isfinite(batched)]), initial=0.0)) * float(np.abs(v).sum())
            same = (got == want) | (np.isnan(got) & np.isnan(want)) | (np.abs(got - want) <= 1e-12 * scale + 1e-300)
        if bool(np.all(same)):
            return batched
    cols = np.zeros((spec.size, call.size))
    for j in range(call.size):
        e = np.zeros(call.size)
        e[j] = 1.0
        cols[:, j] = jvp(call, spec, e)
    return cols


BATCHED_COLUMNS = 256
"""Forward-mode columns computed per ``vmap`` call."""


def _batched_forward_jacobian(call: TorchCall, spec: OutputSpec) -> np.ndarray | None:
    """The forward-mode Jacobian by ``vmap`` over basis tangents of ``torch.func.jvp``, or
    ``None`` where the function does not run under those transforms (an old-style custom
    Function, a random forward, data-dependent control flow)."""
    import torch

    primals = tuple(s.tensor for s in call.slots)
    dtypes = [s.tensor.dtype for s in call.slots]

    def one(*tensors: Any) -> tuple[Any, ...]:
        return tuple(spec.tensors(call.call(list(tensors))))

    def tangents_of(*tangents: Any) -> tuple[Any, ...]:
        return tuple(torch.func.jvp(one, primals, tangents)[1])

    blocks = []
    try:
        for start in range(0, call.size, BATCHED_COLUMNS):
            basis = np.eye(call.size)[start : start + BATCHED_COLUMNS]
            outs = torch.func.vmap(tangents_of, randomness="error")(*call.split_batched(basis, dtypes))
            parts = [(torch.view_as_real(o.resolve_conj()) if o.is_complex() else o).detach().reshape(len(basis), -1) for o in outs]
            blocks.append(torch.cat(parts, dim=1).to(torch.float64).numpy(force=True))
    except Exception:  # noqa: BLE001 - not under torch.func: one column at a time
        return None
    return np.concatenate(blocks).T


UNSUPPORTED_FORWARD = (
    "You must implement the jvp function",
    "does not support it",
    "not implemented for forward",
    "Trying to use forward AD",
    "forward AD is not supported",
    "is not implemented for forward-mode",
)
"""Fragments of torch's messages for a function with no forward-mode derivative at all."""


def forward_mode_support(call: TorchCall, spec: OutputSpec, graph: Graph | None = None) -> tuple[str | None, bool]:
    """``(None, False)`` when forward-mode AD runs on `fn`; else ``(the error, shortened,
    broken)`` where `broken` says the error is not torch's "no forward-mode formula" but
    a failure inside one (a custom Function's ``jvp`` that raises).

    With `graph`, an output that comes back *without* a tangent although reverse mode
    finds it depends on the inputs is unsupported too: PyTorch returns no tangent (and
    raises nothing) for some operators without a forward-mode formula
    (``scatter_reduce(..., "prod")``)."""
    missing: list[int] = []
    try:
        jvp(call, spec, np.ones(call.size), missing)
    except Exception as exc:  # noqa: BLE001 - any failure means: not supported, or broken
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {text[:200]}", not any(fragment in str(exc) for fragment in UNSUPPORTED_FORWARD)
    dependent = [k for k in missing if graph is not None and _depends_on_inputs(graph, k)]
    if dependent:
        names = ", ".join(spec.names[k] for k in dependent)
        return (f"PyTorch returned no forward-mode tangent for {names}, which depends on the inputs in reverse mode (an operator inside has no forward-mode formula and does not say so)"), False
    return None, False


def _depends_on_inputs(graph: Graph, k: int) -> bool:
    """Whether output `k` of `graph` has a non-zero reverse-mode gradient with respect to
    some slot (a random output gradient)."""
    import torch

    out = graph.outs[k]
    if not graph.live[k]:
        return False
    cotangent = torch.ones_like(out)
    grads = torch.autograd.grad([out], graph.leaves, [cotangent], retain_graph=True, allow_unused=True)
    return any(g is not None and bool(torch.any(g != 0)) for g in grads)
