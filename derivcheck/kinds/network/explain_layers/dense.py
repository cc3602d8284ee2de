"""Dense layers and elementwise activations of any width, shown as one representative
unit and checked in bulk.

- ``linear``: ``y = W x + b`` with ``W`` ``(out, in)``; unit 0 written out for sample 0;
  ``dL/dW = G^T X`` (summed over the batch: ``G`` ``(N, out)`` is ``dL/dy``, ``X``
  ``(N, in)``), ``dL/db = sum_n G``, ``dL/dx = G W``.
- activations ``y = f(z)`` entry by entry: ``f'`` derived by SymPy from the layer's own
  symbolic form, ``dL/dz = f'(z) * dL/dy``. Inputs exactly at a kink (``relu`` at 0) are
  counted and take PyTorch's convention there.
"""

from __future__ import annotations

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.explain_steps import Step, _compare
from derivcheck.expr import NUMPY_MODULES
from derivcheck.kinds.network.explain_layers.trace import LayerTrace

# a unit with more inputs than this is printed with its first terms only
SHOWN_TERMS = 6


def explain_linear(trace: LayerTrace) -> list[Step]:
    weight = trace.params["weight"]
    has_bias = "bias" in trace.params
    name_in, name_out = trace.name_in, trace.name_out
    out, inp = weight.shape
    rule_x, rule_params = trace.numpy_rule()
    g, x = trace.grad_y, trace.x
    step = Step(f"Layer {trace.index} (linear): unit 0 of {out}, then every unit at once")
    terms = [f"W[0, {j}] {name_in}[{j}]" for j in range(min(inp, SHOWN_TERMS))]
    more = f" + ... ({inp} terms)" if inp > SHOWN_TERMS else ""
    value = float(weight[0] @ x[0] + (trace.params["bias"][0] if has_bias else 0.0))
    step.text.append(f"{name_out}[0] = {' + '.join(terms)}{more}{' + b[0]' if has_bias else ''} = {value:.6g} at sample 0")
    step.text.append(
        f"d{name_out}[0]/dW[0, j] = {name_in}[j],  d{name_out}[0]/d{name_in}[j] = W[0, j]  -- so for all units and the batch: dL/dW = G^T X ({out}x{inp}), dL/db = sum over samples of G, dL/d{name_in} = G W"
    )
    summed = np.abs(g).sum(axis=0)
    if np.any(np.abs(g.sum(axis=0)) < 1e-6 * np.max(summed, initial=0.0)):
        step.text.append("some of these sums over the batch cancel to ~0 (as for a layer before a batch norm): the checks are relative to the size of the summed terms")
    step.latex.append(r"\frac{\partial L}{\partial W} = G^\top X, \qquad \frac{\partial L}{\partial b} = \mathbf{1}^\top G, \qquad \frac{\partial L}{\partial X} = G\, W")
    step.checks.append(
        _compare(
            f"dL/dW {tuple(weight.shape)}",
            {"lecture formula": g.T @ x, "torch .grad": trace.param_grads["weight"], "numpy rule": rule_params["weight"]},
            scale=float(np.max(np.abs(g).T @ np.abs(x), initial=0.0)),
        )
    )
    if has_bias:
        step.checks.append(
            _compare("dL/db", {"lecture formula": g.sum(axis=0), "torch .grad": trace.param_grads["bias"], "numpy rule": rule_params["bias"]}, scale=float(np.max(np.abs(g).sum(axis=0), initial=0.0)))
        )
    step.checks.append(_compare(f"dL/d{name_in}", {"lecture formula": g @ weight, "torch retain_grad": trace.grad_x, "numpy rule": rule_x}))
    return [step]


def explain_activation(trace: LayerTrace) -> list[Step]:
    layer = trace.layer
    name_in, name_out = trace.name_in, trace.name_out
    z = sp.Symbol("z", real=True)
    f = layer.sympy_forward([z], {})[0]
    first = sp.diff(f, z)
    derivative = sp.lambdify([z], first, modules=NUMPY_MODULES)
    with np.errstate(all="ignore"):
        local = np.broadcast_to(np.asarray(derivative(trace.x), dtype=float), trace.x.shape)
    lecture = local * trace.grad_y
    rule_x, _ = trace.numpy_rule()
    step = Step(f"Layer {trace.index} ({layer.kind}): elementwise, so its Jacobian is diagonal")
    step.text.append(f"{name_out} = f({name_in}) entry by entry with f(z) = {f};  SymPy: f'(z) = {first}")
    step.text.append(f"dL/d{name_in} = f'({name_in}) * dL/d{name_out}   (the diagonal Jacobian diag(f'({name_in})) applied to dL/d{name_out})")
    step.latex.append(rf"f(z) = {sp.latex(f)}, \qquad f'(z) = {sp.latex(first)}, \qquad \frac{{\partial L}}{{\partial z}} = f'(z) \odot \frac{{\partial L}}{{\partial y}}")
    kinks = layer.kink_inputs(trace.cache)
    if kinks is not None:
        at_kink = np.asarray(kinks) == 0
        if at_kink.any():
            lecture = np.where(at_kink, trace.grad_x, lecture)
            step.text.append(f"{int(at_kink.sum())} input(s) exactly at the kink z = 0: f is not differentiable there; PyTorch's one-sided value is used (a kink, not an error)")
        else:
            step.text.append("no input is exactly at the kink z = 0, so f is differentiable at every entry")
    step.checks.append(_compare(f"dL/d{name_in}", {"lecture formula": lecture, "torch retain_grad": trace.grad_x, "numpy rule": rule_x}))
    return [step]
