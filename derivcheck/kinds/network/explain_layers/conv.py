"""Convolution (``nn.Conv1d`` / ``nn.Conv2d``) as a lecture derives it.

PyTorch's convolution is a cross-correlation: with input ``x`` ``(C, *S)`` zero-padded by
``p``, weight ``W`` ``(O, C/groups, *k)``, stride ``s`` and dilation ``d``,
``y[o, i] = b[o] + sum_{c,u} W[o, c, u] x_pad[c, i*s + u*d]`` (``i``, ``u`` run over the
one or two spatial axes). Backward: ``dL/dW`` is the correlation of the input with the
output gradient, and ``dL/dx`` is a *full* convolution of the output gradient (spread on
the stride grid, padded by ``d (k-1)``) with the kernel flipped in space and its channel
axes swapped. Each formula is evaluated from the layer's input and torch's ``dL/dy`` and
checked against torch and the layer's hand-written numpy rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.explain_steps import Step, _compare
from derivcheck.kinds.network.explain_layers.trace import LayerTrace
from derivcheck.kinds.network.explain_layers.windows import crop, pad, place, spatial_letters, window_view

# a cell longer than this many terms is printed with its first terms only
SHOWN_TERMS = 8
# beyond this many multiply-adds per sample the layer's SymPy form is not built for display
SYMPY_WORK = 200_000


def geometry(layer: Any) -> dict[str, Any]:
    return {
        "kernel": layer.kernel,
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": int(layer.options["groups"]),
    }


def correlate(x: np.ndarray, weight: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> np.ndarray:
    """The forward cross-correlation without bias: `x` ``(N, C, *S)`` -> ``(N, O, *out)``."""
    n, c = x.shape[:2]
    dims = len(kernel)
    win = window_view(pad(x, padding), kernel, stride, dilation)
    out = win.shape[2 : 2 + dims]
    o = weight.shape[0]
    win = win.reshape((n, groups, c // groups) + out + kernel)
    w = weight.reshape((groups, o // groups, c // groups) + kernel)
    pos, off = spatial_letters(dims)
    y = np.einsum(f"ngc{pos}{off},goc{off}->ngo{pos}", win, w)
    return y.reshape((n, o) + out)


def weight_gradient(x: np.ndarray, grad_y: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> np.ndarray:
    """``dL/dW[o, c, u] = sum_{n, i} dL/dy[n, o, i] x_pad[n, c, i*s + u*d]``: the input
    correlated with the output gradient, ``(O, C/groups, *k)``."""
    n, c = x.shape[:2]
    o = grad_y.shape[1]
    dims = len(kernel)
    win = window_view(pad(x, padding), kernel, stride, dilation)
    out = win.shape[2 : 2 + dims]
    win = win.reshape((n, groups, c // groups) + out + kernel)
    g = grad_y.reshape((n, groups, o // groups) + out)
    pos, off = spatial_letters(dims)
    return np.einsum(f"ngo{pos},ngc{pos}{off}->goc{off}", g, win).reshape((o, c // groups) + kernel)


def input_gradient(
    grad_y: np.ndarray,
    weight: np.ndarray,
    in_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    flip: bool = True,
) -> np.ndarray:
    """``dL/dx`` ``(N, C, *S)`` as a full convolution: spread ``dL/dy`` on the stride grid
    (``s - 1`` zeros between entries), pad it by ``d (k - 1)``, correlate it (dilation
    ``d``) with the kernel flipped in space and with input/output channels swapped, then
    crop the padding. ``flip=False`` is the classic mistake (kept for demonstrations)."""
    n, o = grad_y.shape[:2]
    c = in_shape[0]
    dims = len(kernel)
    out = grad_y.shape[2:]
    spread = np.zeros((n, o) + tuple((q - 1) * s + 1 for q, s in zip(out, stride)))
    spread[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)] = grad_y
    padded = pad(spread, tuple(d * (k - 1) for k, d in zip(kernel, dilation)))
    w = weight.reshape((groups, o // groups, c // groups) + kernel)
    if flip:
        w = w[(slice(None),) * 3 + (slice(None, None, -1),) * dims]
    win = window_view(padded, kernel, (1,) * dims, dilation)
    reach = win.shape[2 : 2 + dims]
    win = win.reshape((n, groups, o // groups) + reach + kernel)
    pos, off = spatial_letters(dims)
    grad_padded = np.einsum(f"ngo{pos}{off},goc{off}->ngc{pos}", win, w).reshape((n, c) + reach)
    full = place(grad_padded, (n, c) + tuple(size + 2 * p for size, p in zip(in_shape[1:], padding)))
    return crop(full, padding, in_shape[1:])


def explain_conv(trace: LayerTrace) -> list[Step]:
    layer = trace.layer
    n = trace.x.shape[0]
    geo = geometry(layer)
    x = trace.x.reshape((n,) + layer.in_shape)
    gy = trace.grad_y.reshape((n,) + layer.out_shape)
    weight = trace.params["weight"]
    has_bias = "bias" in trace.params
    dims = len(geo["kernel"])
    axes = "i, j" if dims == 2 else "i"
    offsets = "u, v" if dims == 2 else "u"
    index = ", ".join(f"{a}*s+{b}*d" for a, b in zip(axes.split(", "), offsets.split(", ")))
    name_in, name_out = trace.name_in, trace.name_out
    rule_x, rule_params = trace.numpy_rule()

    forward = Step(f"Layer {trace.index} ({layer.kind}): the forward pass is a cross-correlation")
    forward.text.append(
        f"{name_out}[o, {axes}] = {'b[o] + ' if has_bias else ''}sum over c, {offsets} of W[o, c, {offsets}] * {name_in}_pad[c, {index}]"
        f"   with W {tuple(weight.shape)} (out, in/groups, kernel), stride s = {geo['stride']}, padding p = {geo['padding']} (zeros), "
        f"dilation d = {geo['dilation']}, groups = {geo['groups']}"
    )
    forward.text.append(f"output size per axis: floor((size + 2p - d (k - 1) - 1) / s) + 1: {layer.in_shape[1:]} -> {layer.out_shape[1:]}")
    forward.latex.append(_forward_latex(dims, has_bias))
    forward.text.extend(_sympy_cell(trace))
    lecture_y = correlate(x, weight, **geo) + (trace.params["bias"].reshape((1, -1) + (1,) * dims) if has_bias else 0.0)
    forward.checks.append(_compare(f"{name_out} at every position {(n,) + layer.out_shape}", {"lecture formula": lecture_y.reshape(n, -1), "torch": trace.torch_y, "numpy rule": trace.y}))
    steps = [forward]

    grad_w = Step(f"Layer {trace.index} ({layer.kind}): dL/dW is the input correlated with the output gradient")
    grad_w.text.append(f"dL/dW[o, c, {offsets}] = sum over samples n and positions {axes} of dL/d{name_out}[n, o, {axes}] * {name_in}_pad[n, c, {index}]")
    if has_bias:
        grad_w.text.append(f"dL/db[o] = sum over n, {axes} of dL/d{name_out}[n, o, {axes}]   (each bias is added at every position)")
    grad_w.latex.append(r"\frac{\partial L}{\partial W_{o c u}} = \sum_{n,i} \frac{\partial L}{\partial y_{n o i}}\; x^{\mathrm{pad}}_{n,c,\, i s + u d}")
    lecture_w = weight_gradient(x, gy, **geo)
    grad_w.checks.append(_compare(f"dL/dW {tuple(weight.shape)}", {"lecture formula": lecture_w, "torch .grad": trace.param_grads["weight"], "numpy rule": rule_params["weight"]}))
    if has_bias:
        lecture_b = gy.sum(axis=tuple(i for i in range(gy.ndim) if i != 1))
        grad_w.checks.append(_compare("dL/db", {"lecture formula": lecture_b, "torch .grad": trace.param_grads["bias"], "numpy rule": rule_params["bias"]}))
    steps.append(grad_w)

    grad_x = Step(f"Layer {trace.index} ({layer.kind}): dL/dx is a full convolution with the flipped kernel")
    grad_x.text.append(
        f"dL/d{name_in} = crop_p( dL/d{name_out} spread on the stride grid and padded by d (k - 1), correlated with W flipped in space (W[o, c, k-1-u]) and with in/out channels swapped )"
    )
    grad_x.text.append("why the flip: x_pad[c, a] meets W[o, c, u] at output i with i*s + u*d = a, so dL/dx_pad[c, a] = sum_u W[o, c, u] dL/dy[o, (a - u*d)/s]: the kernel runs backwards")
    grad_x.latex.append(
        r"\frac{\partial L}{\partial x} = \operatorname{crop}_p\!\Big(\operatorname{pad}_{d(k-1)}\big(\operatorname{spread}_s \tfrac{\partial L}{\partial y}\big) \star \operatorname{flip}(W)^{\top}\Big)"
    )
    lecture_x = input_gradient(gy, weight, layer.in_shape, **geo)
    grad_x.checks.append(_compare(f"dL/d{name_in} {(n,) + layer.in_shape}", {"lecture formula": lecture_x.reshape(n, -1), "torch retain_grad": trace.grad_x, "numpy rule": rule_x}))
    steps.append(grad_x)
    return steps


def _forward_latex(dims: int, has_bias: bool) -> str:
    bias = "b_o + " if has_bias else ""
    if dims == 2:
        return f"y_{{o,i,j}} = {bias}" + r"\sum_{c,u,v} W_{o,c,u,v}\; x^{\mathrm{pad}}_{c,\, i s + u d,\, j s + v d}"
    return f"y_{{o,i}} = {bias}" + r"\sum_{c,u} W_{o,c,u}\; x^{\mathrm{pad}}_{c,\, i s + u d}"


def _sympy_cell(trace: LayerTrace) -> list[str]:
    """One output position of output channel 0, as SymPy builds it from the layer's
    symbolic form, evaluated at sample 0, and its derivative by one weight and one input."""
    layer = trace.layer
    if layer.work_per_sample() > SYMPY_WORK:
        return [f"(the SymPy form of one position is not printed: {layer.work_per_sample():,.0f} multiply-adds per sample)"]
    in_names = [f"{trace.name_in}[{', '.join(str(i) for i in idx)}]" for idx in np.ndindex(*layer.in_shape)]
    inputs = [sp.Symbol(name, real=True) for name in in_names]
    params: dict[str, Any] = {}
    for pname, shape in layer.param_shapes().items():
        letter = "W" if pname == "weight" else "b"
        params[pname] = np.array([sp.Symbol(f"{letter}[{', '.join(str(i) for i in idx)}]", real=True) for idx in np.ndindex(*shape)], dtype=object).reshape(shape)
    cell = layer.sympy_forward(inputs, params)[0]
    terms = sp.Add.make_args(sp.expand(cell))
    shown = " + ".join(str(t) for t in terms[:SHOWN_TERMS]) + (f" + ... ({len(terms)} terms)" if len(terms) > SHOWN_TERMS else "")
    origin = ", ".join("0" for _ in layer.out_shape)
    lines = [f"output channel 0, position 0 (the representative cell), as SymPy builds it: {trace.name_out}[{origin}] = {shown}"]
    weights = sorted((s for s in cell.free_symbols if s.name.startswith("W[")), key=lambda s: s.name)
    xs = sorted((s for s in cell.free_symbols if s in set(inputs)), key=lambda s: in_names.index(s.name))
    if weights and xs:
        w, v = weights[-1], xs[0]
        lines.append(f"SymPy: d{trace.name_out}[{origin}]/d{w} = {sp.diff(cell, w)},  d{trace.name_out}[{origin}]/d{v} = {sp.diff(cell, v)}   (padding entries are zeros and drop out)")
    values = {s: float(trace.x[0, i]) for i, s in enumerate(inputs)}
    for pname, symbols in params.items():
        values.update({s: float(v) for s, v in zip(symbols.ravel(), trace.params[pname].ravel())})
    lines.append(f"at sample 0 the cell is {float(cell.subs(values)):.6g} (torch: {float(trace.torch_y[0, 0]):.6g})")
    return lines
