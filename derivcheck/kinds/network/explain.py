"""``derivcheck explain``: a derivation a student can follow, every step checked numerically.

For a network case (small enough to print), at the case's first sample:

1. the forward pass as named intermediates (``z1 = W1 x + b1``, ``a1 = relu(z1)``, ...,
   ``L``) with shapes, each value checked: symbolic engine vs numpy vs torch;
2. each local derivative in matrix form (``da1/dz1 = diag(relu'(z1))``, ``dz2/da1 = W2``,
   ``dL/dz = softmax(z) - y``) and as SymPy's element expression for one entry, the
   SymPy-derived Jacobian checked against the hand-written numpy rule;
3. the vector chain rule, ``delta_{k-1} = J_k^T delta_k`` and ``dL/dW_k = delta_k a_{k-1}^T``,
   each ``delta`` checked against torch's ``retain_grad()`` on the non-leaf tensors and
   against the numpy backward;
4. the total derivative written out (``dL/dW1 = [J ... ]^T ... x^T``) and checked against
   every engine's gradient: the chain rule and the total derivative are the same thing.

An :class:`Explanation` renders as plain text (readable without colour), Markdown with LaTeX
math, or LaTeX; in Jupyter it displays as rendered math.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.values import computed

from derivcheck.kinds.network.explain_layers import LOSS_RULES
from derivcheck.explain_steps import CHECK_RTOL, MAX_PARAMS, MAX_WIDTH, Check, Explanation, ExplainTooLarge, Step, _compare, _grad, explain, schedule_check  # noqa: F401 - also the API here


def explain_network(case: Any) -> Explanation:
    """The derivation of a network case, step by step: small MLPs fully expanded (see the
    module docstring); any other network -- convolutions, pooling, recurrent layers,
    attention, normalisation, or too many parameters to print every entry -- layer family
    by layer family with representative slices
    (:mod:`derivcheck.kinds.network.explain_layers.layered`)."""
    network = case.problem.network
    count = sum(int(np.prod(ref.shape)) for ref in network.params())
    expandable = all(layer.kind in _LOCAL for layer in network.layers) and count <= MAX_PARAMS and max(network.sizes) <= MAX_WIDTH
    if not expandable:
        from derivcheck.kinds.network.explain_layers.layered import explain_layered

        return explain_layered(case)
    return _explain_network(case)


# -- networks ------------------------------------------------------------------------------

_LOCAL = {
    "linear": ("d{out}/d{inp} = {W}  (and d{out}_i/d{W}_ij = {inp}_j)", r"\frac{{\partial {out}}}{{\partial {inp}}} = {W}"),
    "relu": ("d{out}/d{inp} = diag(relu'({inp})) = diag({inp} > 0)", r"\frac{{\partial {out}}}{{\partial {inp}}} = \operatorname{{diag}}(\mathbb{{1}}[{inp} > 0])"),
    "leaky_relu": ("d{out}/d{inp} = diag(1 if {inp} > 0 else slope)", r"\frac{{\partial {out}}}{{\partial {inp}}} = \operatorname{{diag}}(\mathbb{{1}}[{inp} > 0] + s\,\mathbb{{1}}[{inp} \le 0])"),
    "sigmoid": ("d{out}/d{inp} = diag(sigma({inp}) (1 - sigma({inp})))", r"\frac{{\partial {out}}}{{\partial {inp}}} = \operatorname{{diag}}(\sigma({inp})\odot(1-\sigma({inp})))"),
    "tanh": ("d{out}/d{inp} = diag(1 - tanh({inp})^2)", r"\frac{{\partial {out}}}{{\partial {inp}}} = \operatorname{{diag}}(1-\tanh^2({inp}))"),
    "softmax": ("d{out}/d{inp} = diag(p) - p p^T with p = softmax({inp})", r"\frac{{\partial {out}}}{{\partial {inp}}} = \operatorname{{diag}}(p) - p p^\top"),
    "log_softmax": ("d{out}/d{inp} = I - 1 p^T with p = softmax({inp})", r"\frac{{\partial {out}}}{{\partial {inp}}} = I - \mathbf{{1}} p^\top"),
    "identity": ("d{out}/d{inp} = I", r"\frac{{\partial {out}}}{{\partial {inp}}} = I"),
    "silu": (
        "d{out}/d{inp} = diag(sigma({inp}) (1 + {inp} (1 - sigma({inp}))))",
        r"\frac{{\partial {out}}}{{\partial {inp}}} = \operatorname{{diag}}(\sigma({inp})\odot(1 + {inp}\odot(1-\sigma({inp}))))",
    ),
    "ddpm_noise": (
        "d{out}/d{inp} = [sqrt(abar_t) I ; 0]  (eps and t are constants of the sample: d{out}[:d]/d{inp} = sqrt(abar_t) I, dt/d{inp} = 0)",
        r"\frac{{\partial {out}}}{{\partial {inp}}} = \begin{{bmatrix}} \sqrt{{\bar\alpha_t}}\, I \\ 0 \end{{bmatrix}}",
    ),
    "time_embedding": (
        "d{out}/d{inp} = [I 0 ; 0 w cos(t w) ; 0 -w sin(t w)]  (the features pass through; only t is embedded)",
        r"\frac{{\partial {out}}}{{\partial {inp}}} = \begin{{bmatrix}} I & 0 \\ 0 & \omega \odot \cos(t\omega) \\ 0 & -\omega \odot \sin(t\omega) \end{{bmatrix}}",
    ),
}

_FIXED_NAMES = {"ddpm_noise": "xt", "time_embedding": "u"}
_CONSTANTS = {"ddpm_noise": "eps_0.., t, abar_t"}

_LOSS = LOSS_RULES


def _names(layers: list[Any]) -> tuple[list[str], list[str]]:
    """Output names per layer (z1, a1, z2, ...) and weight names (W1, W2) per linear."""
    names, weights, k = [], [], 0
    for layer in layers:
        if layer.kind in _FIXED_NAMES:
            names.append(_FIXED_NAMES[layer.kind])
            weights.append("")
        elif layer.kind == "linear":
            k += 1
            names.append(f"z{k}")
            weights.append(f"W{k}")
        else:
            names.append(f"a{k}" if k else f"h{len(names) + 1}")
            weights.append("")
    return names, weights


def _explain_network(case: Any) -> Explanation:
    import torch

    from derivcheck.engines.symbolic.layers import compile_layer, compile_loss
    from derivcheck.problem import Problem

    problem = case.problem
    network = problem.network
    if problem.loss is None:
        raise ExplainTooLarge(f"case {case.name!r} has no loss: explain follows dL/dW through a loss")
    assert problem.targets is not None and problem.loss is not None
    sample = Problem(network, problem.params, problem.x[:1], problem.loss, problem.targets[:1], sgd_lr=None)
    assert sample.targets is not None
    layers = network.layers
    names, weights = _names(layers)
    inputs = ["x"] + names[:-1]
    x = sample.x
    # the target: the noise eps in a DDPM training step (t is its timestep there)
    target, target_tex = ("eps", r"\epsilon") if layers[0].kind == "ddpm_noise" else ("t", "t")
    steps: list[Step] = []
    intro = f"Network {network.describe()} with loss {problem.loss.kind}, at the case's first sample (x = {np.round(x[0], 4).tolist()}). Shapes follow PyTorch: W is (out, in)."

    # numpy forward / backward (hand-written rules)
    np_values, caches = [], []
    h = x
    for index, layer in enumerate(layers):
        h, cache = layer.numpy_forward(h, network.layer_params(sample.params, index))
        np_values.append(h)
        caches.append(cache)
    per_sample, loss_cache = problem.loss.numpy_forward(h, sample.targets)
    np_grad: list[Any] = [None] * len(layers)
    g = problem.loss.numpy_backward(loss_cache)
    np_param_grads: dict[str, np.ndarray] = {}
    for index in range(len(layers) - 1, -1, -1):
        np_grad[index] = g
        g, local = layers[index].numpy_backward(g, caches[index], network.layer_params(sample.params, index))
        for k, v in local.items():
            np_param_grads[f"{index}.{k}"] = v

    # torch forward / backward with retain_grad on the non-leaf tensors
    model = network.torch_model(sample.params)
    t_x = torch.tensor(x, requires_grad=True)
    t_values = []
    t_h = t_x
    for module in model:
        t_h = module(t_h)
        t_h.retain_grad()
        t_values.append(t_h)
    t_loss = problem.loss.torch_loss(t_h, torch.tensor(sample.targets))
    t_loss.backward()
    t_named = dict(model.named_parameters())

    # symbolic: compiled, SymPy-derived forward and local Jacobians
    compiled = [compile_layer(layer, size, whole=True) for layer, size in zip(layers, network.sizes)]
    flat = [network.layer_param_vector(sample.params, i) for i in range(len(layers))]
    sym_values = []
    a = x.T.copy()
    constants = []  # per-sample constants (the ddpm noise, t and abar_t), (C, 1) or None
    for layer, comp, params in zip(layers, compiled, flat):
        consts = layer.sample_constants(a.T)
        constants.append(None if consts is None else consts.T)
        a = comp.forward(a, params, constants[-1])
        sym_values.append(a.T.copy())

    # 1. forward
    forward = Step("Forward pass")
    for index, layer in enumerate(layers):
        out, inp, shape = names[index], inputs[index], (network.sizes[index + 1],)
        if layer.kind == "linear":
            bias = f" + b{weights[index][1:]}" if layer.options.get("bias", True) else ""
            forward.text.append(f"{out} = {weights[index]} {inp}{bias}    shape {shape} = ({network.sizes[index + 1]}, {network.sizes[index]}) @ ({network.sizes[index]},)")
            forward.latex.append(f"{out[0]}_{{{out[1:]}}} = W_{{{weights[index][1:]}}} {_tex(inp)}" + (f" + b_{{{weights[index][1:]}}}" if bias else ""))
        elif layer.kind in _FIXED_NAMES:
            _diffusion_forward(forward, layer, out, inp, shape)
        else:
            forward.text.append(f"{out} = {layer.kind}({inp})    shape {shape}")
            forward.latex.append(f"{_tex(out)} = \\operatorname{{{layer.kind.replace('_', ' ')}}}({_tex(inp)})")
        forward.checks.append(_compare(f"{out} = {np.round(np_values[index][0], 4).tolist()}", {"symbolic": sym_values[index], "numpy": np_values[index], "torch": t_values[index].detach().numpy()}))
    forward.text.append(f"L = {problem.loss.kind}({names[-1]}, {target}) = {float(per_sample[0]):.6g}" + (" : the noise-prediction loss ||eps - eps_theta(x_t, t)||^2 / d" if target == "eps" else ""))
    forward.latex.append(f"L = \\operatorname{{{problem.loss.kind.replace('_', ' ')}}}({_tex(names[-1])}, {target_tex})")
    loss_sym = compile_loss(problem.loss, network.out_size, sample.targets.shape[1])
    sym_loss, sym_dl = loss_sym.value_and_grad(sym_values[-1].T, sample.targets.T)
    forward.checks.append(_compare("L", {"symbolic": sym_loss, "numpy": per_sample, "torch": np.array([t_loss.item()])}))
    steps.append(forward)

    # 2. local derivatives
    sym_jacobians = []
    a = x.T.copy()
    for index, (layer, comp) in enumerate(zip(layers, compiled)):
        local = Step(f"Local derivative of layer {index} ({layer.kind})")
        out, inp = names[index], inputs[index]
        text, tex = _LOCAL.get(layer.kind, ("d{out}/d{inp}", r"\partial {out}/\partial {inp}"))
        local.text.append(text.format(out=out, inp=inp, W=weights[index] or "W"))
        local.latex.append(tex.format(out=_tex(out), inp=_tex(inp), W=f"W_{{{weights[index][1:]}}}" if weights[index] else "W"))
        entry = cast(Any, comp).jacobian_exprs[0]  # explain compiles whole layers (CompiledLayer)
        constants_note = f", k_j = the sample's constants ({_CONSTANTS.get(layer.kind, 'not differentiated')})" if layer.n_sample_constants else ""
        local.text.append(f"SymPy, one entry: d{out}[0]/d{inp}[0] = {entry}   (SymPy's local symbols: a_j = {inp}[j], weight_i_j = {weights[index] or 'W'}[i, j]{constants_note})")
        symbol_names = _latex_symbol_names(entry, inp, weights[index] or "W")
        local.latex.append(f"\\frac{{\\partial {_tex(out)}[0]}}{{\\partial {_tex(inp)}[0]}} = {sp.latex(entry, symbol_names=symbol_names)}")
        jac = comp.jacobian(a, flat[index], constants[index])[0]
        sym_jacobians.append(jac)
        hand = np.stack([layer.numpy_backward(np.eye(network.sizes[index + 1])[k : k + 1], caches[index], network.layer_params(sample.params, index))[0][0] for k in range(network.sizes[index + 1])])
        local.checks.append(_compare(f"d{out}/d{inp} ({jac.shape[0]}x{jac.shape[1]})", {"symbolic": jac, "numpy (hand-written rule)": hand}))
        a = comp.forward(a, flat[index], constants[index])
        steps.append(local)
    loss_step = Step(f"Local derivative of the loss ({problem.loss.kind})")
    text, tex = _LOSS[problem.loss.kind]
    loss_step.text.append(text.format(y=names[-1], t=target))
    loss_step.latex.append(tex.format(y=_tex(names[-1]), t=target_tex))
    loss_step.text.append(f"SymPy: dL/d{names[-1]}[0] = {_first_loss_entry(loss_sym)}")
    loss_step.checks.append(_compare(f"dL/d{names[-1]}", {"symbolic": sym_dl.T, "numpy (hand-written rule)": problem.loss.numpy_backward(loss_cache)}))
    steps.append(loss_step)

    # 3. vector chain rule
    chain = Step("Vector chain rule (backward)")
    delta = sym_dl[:, 0]
    sym_deltas: list[np.ndarray] = [None] * len(layers)  # type: ignore[list-item]
    for index in range(len(layers) - 1, -1, -1):
        sym_deltas[index] = delta
        delta = sym_jacobians[index].T @ delta
    chain.text.append(f"delta_{names[-1]} = dL/d{names[-1]};   delta_in = J^T delta_out for each layer, from the last to the first")
    chain.latex.append(r"\delta_{k-1} = J_k^\top \delta_k, \qquad \frac{\partial L}{\partial W_k} = \delta_{z_k}\, a_{k-1}^\top")
    for index in range(len(layers) - 1, -1, -1):
        chain.checks.append(
            _compare(
                f"delta_{names[index]} = dL/d{names[index]}",
                {"symbolic chain": sym_deltas[index], "torch retain_grad": _grad(t_values[index])[0], "numpy backward": np_grad[index][0]},
            )
        )
    chain.checks.append(_compare("dL/dx", {"symbolic chain": delta, "torch x.grad": _grad(t_x)[0], "numpy backward": g[0]}))
    if layers[0].kind == "ddpm_noise":
        root = float(np.asarray(caches[0]).ravel()[0])  # the numpy forward caches sqrt(abar_t)
        chain.text.append(f"through the forward process: dL/dx0 = sqrt(abar_t) * dL/dxt[:{x.shape[1]}] = {root:.6g} * dL/dxt[:{x.shape[1]}] (eps and t do not depend on x0)")
        chain.checks.append(_compare("dL/dx0 = sqrt(abar_t) dL/dxt", {"sqrt(abar_t) * delta_xt": root * sym_deltas[0][: x.shape[1]], "torch x.grad": _grad(t_x)[0]}))
    steps.append(chain)

    # 4. total derivative of every weight
    from derivcheck.engines import SymbolicEngine
    from derivcheck.quantities import expand_quantities

    qs = expand_quantities(["dL/dparams"], sample)
    totals = SymbolicEngine().compute(sample, qs)
    total = Step("Total derivative")
    for index, layer in enumerate(layers):
        if layer.kind != "linear":
            continue
        path = " ".join(f"J_{names[j]}^T" for j in range(len(layers) - 1, index, -1))
        total.text.append(f"dL/d{weights[index]} = [{path} dL/d{names[-1]}] {inputs[index]}^T  = delta_{names[index]} {inputs[index]}^T".replace("[ ", "["))
        name = f"{index}.weight"
        chain_value = np.outer(sym_deltas[index], (x[0] if index == 0 else sym_values[index - 1][0]))
        total.checks.append(
            _compare(
                f"dL/d{weights[index]} {tuple(sample.params[name].shape)}",
                {"chain rule": chain_value, "symbolic total": computed(totals[f"dL/d{name}"]).values, "torch .grad": _grad(t_named[name]), "numpy": np_param_grads[name]},
            )
        )
    total.latex.append(r"\frac{\partial L}{\partial W_1} = \Big(J_L^\top \cdots J_2^\top \frac{\partial L}{\partial z_L}\Big)\, x^\top")
    steps.append(total)
    return Explanation(case.name, intro, steps)


def _diffusion_forward(forward: Step, layer: Any, out: str, inp: str, shape: tuple[int, ...]) -> None:
    """Forward-pass lines of the diffusion layers (the sample's t, noise and schedule)."""
    if layer.kind == "ddpm_noise":
        from derivcheck.schedules import numpy_schedule

        eps, t = layer.draws(1)
        step = int(t[0])
        abar = float(numpy_schedule(layer.schedule)[1][step])
        forward.text.append(f"{out} = [sqrt(abar_t) {inp} + sqrt(1 - abar_t) eps, t]    shape {shape}: the forward process q(x_t | x_0)")
        forward.text.append(f"   t = {step}, eps = {np.round(eps[0], 4).tolist()}, abar_t = prod_(s<=t) (1 - beta_s) = {abar:.6g} ({layer.schedule.describe()})")
        forward.latex.append(f"x_t = \\sqrt{{\\bar\\alpha_t}}\\, {_tex(inp)} + \\sqrt{{1-\\bar\\alpha_t}}\\,\\epsilon, \\quad \\bar\\alpha_t = \\prod_{{s \\le t}} (1-\\beta_s)")
        forward.checks.append(schedule_check(layer.schedule, step))
    else:
        half = layer.half
        forward.text.append(f"{out} = [{inp}[:-1], sin(t w), cos(t w)] with w_j = {layer.options['max_period']:g}^(-j/{half}), j < {half}    shape {shape}: sinusoidal time embedding")
        forward.latex.append(f"{_tex(out)} = [\\,{_tex(inp)}_{{:-1}},\\ \\sin(t\\omega),\\ \\cos(t\\omega)\\,], \\quad \\omega_j = P^{{-j/{half}}}")


def _first_loss_entry(loss: Any) -> str:
    outputs = sorted((s for s in loss.expr.free_symbols if str(s).startswith("y")), key=lambda s: int(str(s)[1:]))
    return str(sp.diff(loss.expr, outputs[0]))


def _latex_symbol_names(expr: Any, inp: str, weight: str) -> dict[Any, str]:
    """LaTeX for SymPy's local symbols: ``weight_0_1`` -> ``W_{1}[0, 1]`` (the layer's
    matrix), ``bias_2`` -> ``b_{1}[2]``, ``a_3`` -> ``x[3]`` (the layer's input), instead of
    SymPy's ``weight_{0 1}``."""
    import re

    names: dict[Any, str] = {}
    w_tex = _tex(weight)
    b_tex = "b" + w_tex[1:] if w_tex.startswith("W") else "b"
    for symbol in getattr(expr, "free_symbols", ()):
        match = re.fullmatch(r"(weight|bias|a)((?:_\d+)+)", symbol.name)
        if match:
            index = ", ".join(match.group(2)[1:].split("_"))
            base = {"weight": w_tex, "bias": b_tex, "a": _tex(inp)}[match.group(1)]
            names[symbol] = f"{base}[{index}]"
    return names


def _tex(name: str) -> str:
    return f"{name[0]}_{{{name[1:]}}}" if len(name) > 1 and name[1:].isdigit() else name
