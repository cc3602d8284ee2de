"""Properties every torch derivative must have, checked the way ``gradcheck`` does (and a
few it leaves out), each as a :class:`~derivcheck.check.result.Finding`.

- :func:`zero_output_gradient` -- a zero output gradient gives zero input gradients ("the
  backward is multiplied by grad_output");
- :func:`undefined_output_gradients` -- with several outputs, a backward that gets no
  gradient (``None``) for all but one output must work and give what zeros would;
- :func:`gradient_attributes` -- each gradient has its input's dtype, device, shape and
  layout;
- :func:`batched_gradients` -- the backward under ``vmap`` (a batch of output gradients,
  ``is_grads_batched=True``) and the whole function under ``torch.func.vmap`` (a custom
  Function's ``vmap`` staticmethod or ``generate_vmap_rule``) give what a loop gives.

A property that cannot be exercised (an old-style custom Function under ``torch.func``)
is ``skipped`` with the reason unless the caller asked for it explicitly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from derivcheck.compare import Tolerance
from derivcheck.check.noise import magnitude_floor
from derivcheck.check.result import Finding
from derivcheck.check.torch_autograd import Graph, flat_grads
from derivcheck.check.torch_call import TorchCall, to_real


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:240]}"


def zero_output_gradient(graph: Graph, nonfinite_slots: set[int]) -> Finding:
    """Zero cotangents must give zero (or absent) gradients."""
    name = "zero output gradient"
    try:
        grads = graph.raw_grads(np.zeros(graph.spec.size))
    except Exception as exc:  # noqa: BLE001 - the user's backward raised
        return Finding(name, "backward raised", False, f"the backward raised when every output gradient is zero: {_short(exc)}")
    for k, (g, slot) in enumerate(zip(grads, graph.call.slots)):
        if g is None:
            continue
        values = to_real(g)
        finite = np.isfinite(values)
        if np.any(values[finite] != 0):
            worst = float(np.max(np.abs(values[finite])))
            return Finding(
                name,
                "not multiplied by grad_output",
                False,
                f"with every output gradient zero, the gradient of {slot.name} is not zero (max |grad| = {worst:.3g}): the backward is not multiplied by grad_output",
                measured=worst,
                bound=0.0,
            )
        if not finite.all() and k not in nonfinite_slots:
            return Finding(name, "not multiplied by grad_output", False, f"with every output gradient zero, the gradient of {slot.name} holds NaN/Inf where the Jacobian is finite")
    return Finding(name, "zero", True, "zero output gradients give zero input gradients")


def undefined_output_gradients(graph: Graph, tolerance: Tolerance, dtype: str, rng: np.random.Generator) -> Finding | None:
    """With two or more outputs: the gradient of each output alone (the others undefined)
    equals the gradient with explicit zeros for the others."""
    import torch

    spec = graph.spec
    live = [k for k, alive in enumerate(graph.live) if alive]
    if len(live) < 2:
        return None
    name = "undefined output gradients"
    offsets = np.cumsum([0] + spec.sizes)
    worst_ratio, worst_text = 0.0, ""
    for k in live:
        w = np.zeros(spec.size)
        w[offsets[k] : offsets[k + 1]] = rng.standard_normal(spec.sizes[k])
        cotangent = spec.cotangents(w, graph.outs)[k]
        try:
            alone = torch.autograd.grad([graph.outs[k]], graph.leaves, [cotangent], retain_graph=True, allow_unused=True)
        except Exception as exc:  # noqa: BLE001 - the user's backward raised
            return Finding(name, "backward raised", False, f"the backward raised when only {spec.names[k]} has a gradient (the other outputs' gradients undefined, None): {_short(exc)}")
        a = flat_grads(alone, graph.call)
        b, magnitude = graph.vjp_observed(w)
        scale = float(np.max(np.abs(b), initial=0.0))
        bound = tolerance.rtol_for(dtype, dtype) * (np.maximum(np.abs(a), np.abs(b)) + scale) + tolerance.fd_safety * magnitude_floor(dtype, magnitude) + 1e-300
        ratio = float(np.max(np.abs(a - b) / bound, initial=0.0))
        if ratio > worst_ratio:
            j = int(np.argmax(np.abs(a - b) / bound))
            worst_ratio = ratio
            worst_text = f"gradient from {spec.names[k]} alone vs with zeros for the other outputs: {graph.call.slots[_slot_of(graph.call, j)].label(j - graph.call.slots[_slot_of(graph.call, j)].offset)}: {a[j]:.10g} vs {b[j]:.10g} (bound {bound[j]:.3g})"
    if worst_ratio > 1:
        return Finding(name, "differs", False, f"undefined (None) output gradients are not treated as zeros: {worst_text}", measured=worst_ratio, bound=1.0)
    return Finding(name, "handled", True, f"each of the {len(live)} outputs alone gives the gradient zeros for the others would")


def _slot_of(call: TorchCall, j: int) -> int:
    for k, slot in enumerate(call.slots):
        if slot.offset <= j < slot.offset + slot.size:
            return k
    return len(call.slots) - 1


def gradient_attributes(graph: Graph, grads: list[Any]) -> Finding:
    """Each gradient's dtype, device, shape and layout equal its input's (`grads`: one
    backward pass's result, one entry per slot)."""
    name = "gradient dtype/device/shape/layout"
    problems = []
    for g, leaf, slot in zip(grads, graph.leaves, graph.call.slots):
        if g is None:
            continue
        for attribute in ("dtype", "device", "shape", "layout"):
            got, want = getattr(g, attribute), getattr(leaf, attribute)
            if got != want:
                problems.append(f"the gradient of {slot.name} has {attribute} {got}, its input {want}")
    if problems:
        return Finding(name, "mismatch", False, "; ".join(problems))
    return Finding(name, "match", True, "every gradient has its input's dtype, device, shape and layout")


def batched_gradients(call: TorchCall, graph: Graph, tolerance: Tolerance, dtype: str, rng: np.random.Generator, required: bool) -> list[Finding]:
    """The backward under vmap over output gradients, and the function under
    ``torch.func.vmap`` over inputs, against loops (torch's warnings about slow fallbacks
    for operators without a batching rule are not the user's business here)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return [_batched_cotangents(graph, tolerance, dtype, rng, required), _vmapped_function(call, graph, tolerance, dtype, rng, required)]


def _agreement(name: str, batched: list[np.ndarray], looped: list[np.ndarray], tolerance: Tolerance, dtype: str, what: str, magnitude: float) -> Finding:
    """Batched vs looped values, within the dtype's tolerance and the rounding floor of
    the operands the loop saw (two kernels for one quantity round differently)."""
    a, b = np.concatenate([x.ravel() for x in batched]), np.concatenate([x.ravel() for x in looped])
    finite = np.isfinite(b)
    scale = float(np.max(np.abs(b[finite]), initial=0.0)) if not finite.all() else float(np.max(np.abs(b), initial=0.0))
    rtol = tolerance.rtol_for(dtype, dtype)
    floor = rtol * scale + tolerance.fd_safety * magnitude_floor(dtype, magnitude) + 1e-300
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
        bound = rtol * np.abs(b)
        bound += floor
        bad = ~(diff <= bound)
        if bad.any():  # equal infinities (a mask's -inf) and NaN in both agree
            bad &= ~((a == b) | (np.isnan(a) & np.isnan(b)))
    if bad.any():
        j = int(np.argmax(np.where(bad, np.nan_to_num(diff / bound, nan=np.inf), -1.0)))
        return Finding(name, "differs", False, f"{what} differs from the loop: entry {j}: vmap {a[j]:.10g} vs loop {b[j]:.10g} (bound {bound[j]:.3g})", measured=float(diff[j]), bound=float(bound[j]))
    return Finding(name, "agree", True, f"{what} equals the loop")


def _skipped(name: str, exc: BaseException, required: bool, hint: str) -> Finding:
    if required:
        return Finding(name, "failed", False, f"{hint}: {_short(exc)}")
    return Finding(name, "skipped", True, f"not checked ({hint}: {_short(exc)}); pass batched=True to require it")


def _batched_cotangents(graph: Graph, tolerance: Tolerance, dtype: str, rng: np.random.Generator, required: bool) -> Finding:
    import torch

    name = "batched backward (vmap over output gradients)"
    spec = graph.spec
    ws = [rng.standard_normal(spec.size) for _ in range(2)]
    observed_loop = [graph.vjp_observed(w) for w in ws]
    looped = [g for g, _ in observed_loop]
    magnitude = max(mag for _, mag in observed_loop)
    live = [k for k, alive in enumerate(graph.live) if alive]
    if not live:
        return Finding(name, "skipped", True, "no output depends on the inputs through autograd")
    per_w = [spec.cotangents(w, graph.outs) for w in ws]
    stacked = [torch.stack([c[k] for c in per_w]) for k in live]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a performance drop")
            grads = torch.autograd.grad([graph.outs[k] for k in live], graph.leaves, stacked, retain_graph=True, allow_unused=True, is_grads_batched=True)
    except Exception as exc:  # noqa: BLE001 - the backward does not run under vmap
        return _skipped(name, exc, required, "the backward does not run under vmap")
    batched = [flat_grads([None if g is None else g[b] for g in grads], graph.call) for b in range(2)]
    return _agreement(name, batched, looped, tolerance, dtype, "the backward under vmap over 2 output gradients", magnitude)


def _vmapped_function(call: TorchCall, graph: Graph, tolerance: Tolerance, dtype: str, rng: np.random.Generator, required: bool) -> Finding:
    """``fn`` under ``torch.func.vmap`` over two input samples, against a loop: the outputs,
    per-sample gradients (``vmap`` of ``vjp``) and the gradient of the batched function
    (``vjp`` of ``vmap``, which is where a custom Function's ``vmap`` rule supplies the
    backward)."""
    import torch

    name = "vmap over inputs (torch.func)"
    spec = graph.spec
    inputs = [k for k, s in enumerate(call.slots) if s.param is None]
    if not inputs:
        return Finding(name, "skipped", True, "no input tensor to batch over (parameters only)")
    w = rng.standard_normal(spec.size)
    samples = []
    for b in range(2):
        tensors = []
        for k, slot in enumerate(call.slots):
            t = slot.tensor
            if b and k in inputs:
                factor = torch.as_tensor(1 + 0.05 * rng.standard_normal(tuple(t.shape)), dtype=t.real.dtype if t.is_complex() else t.dtype, device=t.device)
                t = t * factor
            tensors.append(t)
        samples.append(tensors)
    in_dims = tuple(0 if k in inputs else None for k in range(len(call.slots)))

    def outputs(*tensors: Any) -> tuple[Any, ...]:
        return tuple(spec.tensors(call.call(list(tensors))))

    def per_sample(*tensors: Any) -> Any:
        outs, pullback = torch.func.vjp(outputs, *tensors)[:2]
        grads = pullback(tuple(spec.cotangents(w, list(outs))))
        return outs, tuple(g for k, g in enumerate(grads) if k in inputs)

    try:
        looped = [per_sample(*s) for s in samples]
        stacked = [torch.stack([samples[0][k], samples[1][k]]) if k in inputs else samples[0][k] for k in range(len(call.slots))]
        vmapped_outs, vmapped_grads = torch.func.vmap(per_sample, in_dims=in_dims)(*stacked)
        batched_fn = torch.func.vmap(outputs, in_dims=in_dims)
        outs, pullback = torch.func.vjp(lambda *ts: batched_fn(*[t if k in inputs else samples[0][k] for k, t in enumerate(ts)]), *stacked)[:2]
        cotangents = tuple(torch.stack([c, c]) for c in spec.cotangents(w, [o[0] for o in outs]))
        grads_of_batched = [g for k, g in enumerate(pullback(cotangents)) if k in inputs]
    except Exception as exc:  # noqa: BLE001 - fn does not run under torch.func transforms
        return _skipped(name, exc, required, "fn does not run under torch.func.vmap/vjp")
    # torch.func transforms do not run under a dispatch mode: the operands' size comes from
    # the ordinary backward at the same output gradient
    magnitude = graph.vjp_observed(w)[1]
    flat_batched, flat_looped = [], []
    for b in range(2):
        for x, y in zip(vmapped_outs, looped[b][0]):
            flat_batched.append(to_real(x[b]))
            flat_looped.append(to_real(y))
        for x, z, y in zip(vmapped_grads, grads_of_batched, looped[b][1]):
            flat_batched += [to_real(x[b]), to_real(z[b])]
            flat_looped += [to_real(y), to_real(y)]
    return _agreement(
        name,
        flat_batched,
        flat_looped,
        tolerance,
        dtype,
        "the function, its per-sample vjp (vmap of vjp) and the vjp of the batched function (vjp of vmap) under torch.func.vmap over 2 input samples",
        magnitude,
    )
