"""Normalisation (``nn.LayerNorm``, ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``) as a lecture
derives it.

Arrays are viewed grouped: LayerNorm as ``(N, G, K)`` -- each of the ``G`` groups of a
sample (one per sequence position) holds the ``K`` entries of ``normalized_shape`` and the
statistics run over axis 2; BatchNorm as ``(N, C, S)`` -- channel ``c`` of every sample
and every length / spatial position ``S`` -- with the statistics over axes ``(0, 2)``.

Forward: ``x_hat = (x - mu) / sqrt(var + eps)`` with the *biased* variance, then
``y = gamma x_hat + beta``. Backward, with ``g = dL/dx_hat = gamma dL/dy``:
``dL/dx = (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps)``: the direct term, the
mean term (the path through ``mu``, the one people forget) and the variance term (through
``var``), each checked against torch autograd with ``mu`` / ``var`` detached. BatchNorm in
eval mode uses fixed running statistics, so only the direct term is there.

:func:`normalization_steps` is shared with the Transformer encoder's LayerNorms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derivcheck.explain_steps import Check, Step, _compare
from derivcheck.kinds.network.explain_layers.trace import LayerTrace

Axes = tuple[int, ...]

FORWARD_LATEX = (
    r"\mu = \operatorname{mean}(x), \quad \sigma^2 = \operatorname{mean}\big((x - \mu)^2\big), \quad"
    r" \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad y = \gamma \odot \hat x + \beta"
)
BACKWARD_LATEX = (
    r"\frac{\partial L}{\partial x} = \frac{1}{\sqrt{\sigma^2 + \epsilon}} \Big( \underbrace{g}_{\text{direct}}"
    r" \; \underbrace{- \operatorname{mean}(g)}_{\text{mean term}} \; \underbrace{- \hat x \operatorname{mean}(g \odot \hat x)}_{\text{variance term}} \Big),"
    r" \qquad g = \frac{\partial L}{\partial \hat x} = \gamma \odot \frac{\partial L}{\partial y}"
)


@dataclass
class Normalization:
    """One normalisation in the grouped view of the module docstring.

    - `title`: the step titles' prefix; `name_in`, `name_out`: names of x and y;
    - `x` (torch's input values), `gamma`, `beta` (broadcastable to `x`), `grad_y` (torch's dL/dy);
    - `axes`: the statistics' axes; `over`: those axes in words; `eps`;
    - `running`: ``(mean, var)`` broadcastable to `x` for BatchNorm in eval mode, else None;
    - `torch_y`, `grad_x`: torch's output and dL/dx; `grad_gamma`, `grad_beta`: torch's .grad (None: no affine);
    - `numpy_x_hat`: the numpy forward's x_hat; `rule_x`, `rule_gamma`, `rule_beta`: the numpy rule fed torch's dL/dy;
    - `param_axes`: the axes dL/dgamma sums over; `param_names`: the parameters' names.
    """

    title: str
    name_in: str
    name_out: str
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    grad_y: np.ndarray
    axes: Axes
    over: str
    eps: float
    running: tuple[np.ndarray, np.ndarray] | None
    torch_y: np.ndarray
    grad_x: np.ndarray
    grad_gamma: np.ndarray | None
    grad_beta: np.ndarray | None
    numpy_x_hat: np.ndarray
    rule_x: np.ndarray
    rule_gamma: np.ndarray | None
    rule_beta: np.ndarray | None
    param_axes: Axes
    param_names: tuple[str, str]


def vector_text(values: np.ndarray, limit: int = 8) -> str:
    flat = np.asarray(values, dtype=float).ravel()
    shown = ", ".join(f"{v:.4g}" for v in flat[:limit])
    return "[" + shown + (f", ... ({flat.size} values)" if flat.size > limit else "") + "]"


def torch_normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, grad_y: np.ndarray, axes: Axes, eps: float, detach: str = "") -> dict[str, np.ndarray]:
    """Torch autograd through the normalisation with ``mu`` and/or ``var`` detached
    (`detach` contains ``"mean"`` / ``"var"``), backpropagating ``(y * grad_y).sum()``:
    ``x_hat``, ``y``, ``dL/dx_hat`` and ``dL/dx`` by that path."""
    import torch

    t_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    mu = t_x.mean(dim=axes, keepdim=True)
    if "mean" in detach:
        mu = mu.detach()
    var = ((t_x - mu) ** 2).mean(dim=axes, keepdim=True)
    if "var" in detach:
        var = var.detach()
    x_hat = (t_x - mu) / torch.sqrt(var + eps)
    x_hat.retain_grad()
    y = x_hat * torch.tensor(gamma) + torch.tensor(beta)
    (y * torch.tensor(grad_y)).sum().backward()
    assert t_x.grad is not None and x_hat.grad is not None
    return {"x_hat": x_hat.detach().numpy(), "y": y.detach().numpy(), "grad_x_hat": x_hat.grad.numpy(), "grad_x": t_x.grad.numpy()}


def torch_normalize_fixed(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, grad_y: np.ndarray, running: tuple[np.ndarray, np.ndarray], eps: float) -> dict[str, np.ndarray]:
    """As :func:`torch_normalize` with fixed (running) statistics."""
    import torch

    t_x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    x_hat = (t_x - torch.tensor(running[0])) / torch.sqrt(torch.tensor(running[1]) + eps)
    x_hat.retain_grad()
    y = x_hat * torch.tensor(gamma) + torch.tensor(beta)
    (y * torch.tensor(grad_y)).sum().backward()
    assert t_x.grad is not None and x_hat.grad is not None
    return {"x_hat": x_hat.detach().numpy(), "y": y.detach().numpy(), "grad_x_hat": x_hat.grad.numpy(), "grad_x": t_x.grad.numpy()}


def normalization_steps(norm: Normalization) -> list[Step]:
    """Forward, the parameters' gradients and dL/dx (three terms, or one in eval mode)."""
    if norm.running is None:
        ref = torch_normalize(norm.x, norm.gamma, norm.beta, norm.grad_y, norm.axes, norm.eps)
        mu = norm.x.mean(axis=norm.axes, keepdims=True)
        var = ((norm.x - mu) ** 2).mean(axis=norm.axes, keepdims=True)
    else:
        ref = torch_normalize_fixed(norm.x, norm.gamma, norm.beta, norm.grad_y, norm.running, norm.eps)
        mu, var = norm.running
    inv = 1.0 / np.sqrt(var + norm.eps)
    x_hat = (norm.x - mu) * inv
    steps = [_forward_step(norm, ref, mu, var, x_hat), _parameter_step(norm, ref, x_hat)]
    steps.append(_terms_step(norm, ref, x_hat, inv) if norm.running is None else _eval_step(norm, inv))
    return steps


def _forward_step(norm: Normalization, ref: dict[str, np.ndarray], mu: np.ndarray, var: np.ndarray, x_hat: np.ndarray) -> Step:
    step = Step(f"{norm.title}: forward x_hat = (x - mu) / sqrt(var + eps), y = gamma x_hat + beta")
    if norm.running is None:
        step.text.append(f"mu and var (biased: divided by the count, not count - 1) over {norm.over}")
    else:
        step.text.append(f"eval mode: mu and var are the running statistics, constants (not functions of the batch), {norm.over}")
    step.text.append(f"first group (channel 0 / position 0 of sample 0): mu = {float(np.ravel(mu)[0]):.6g}, var = {float(np.ravel(var)[0]):.6g}, eps = {norm.eps:g}")
    group = "position 0 of sample 0" if norm.axes == (2,) else "sample 0"
    shown_x, shown_hat = (norm.x[0, 0], x_hat[0, 0]) if norm.axes == (2,) else (norm.x[0], x_hat[0])
    step.text.append(f"{norm.name_in} at {group} = {vector_text(shown_x)} -> x_hat = {vector_text(shown_hat)}")
    step.latex.append(FORWARD_LATEX)
    step.checks.append(_compare("x_hat", {"lecture formula": x_hat, "torch (recomputed)": ref["x_hat"], "numpy forward": norm.numpy_x_hat}))
    y = norm.gamma * x_hat + norm.beta
    step.checks.append(_compare(f"{norm.name_out}", {"lecture formula": y, "torch module": norm.torch_y, "torch (recomputed)": ref["y"]}))
    return step


def _parameter_step(norm: Normalization, ref: dict[str, np.ndarray], x_hat: np.ndarray) -> Step:
    gamma, beta = norm.param_names
    step = Step(f"{norm.title}: dL/d{gamma}, dL/d{beta} and dL/dx_hat")
    step.text.append(f"y = gamma x_hat + beta entry by entry; gamma and beta are shared over {norm.over.split(';')[0]}, so their gradients sum there")
    step.text.append(f"dL/dgamma = sum of dL/d{norm.name_out} * x_hat, dL/dbeta = sum of dL/d{norm.name_out}, dL/dx_hat = gamma * dL/d{norm.name_out}")
    step.latex.append(
        r"\frac{\partial L}{\partial \gamma} = \sum \frac{\partial L}{\partial y} \odot \hat x, \quad \frac{\partial L}{\partial \beta} = \sum \frac{\partial L}{\partial y}, \quad g = \gamma \odot \frac{\partial L}{\partial y}"
    )
    if norm.grad_gamma is not None and norm.grad_beta is not None:
        shape = norm.grad_gamma.shape
        lecture_gamma = (norm.grad_y * x_hat).sum(axis=norm.param_axes).reshape(shape)
        lecture_beta = norm.grad_y.sum(axis=norm.param_axes).reshape(shape)
        gamma_values = {"lecture formula": lecture_gamma, "torch .grad": norm.grad_gamma}
        beta_values = {"lecture formula": lecture_beta, "torch .grad": norm.grad_beta}
        if norm.rule_gamma is not None and norm.rule_beta is not None:
            gamma_values["numpy rule"] = norm.rule_gamma.reshape(shape)
            beta_values["numpy rule"] = norm.rule_beta.reshape(shape)
        step.checks.append(_compare(f"dL/d{gamma}", gamma_values))
        step.checks.append(_compare(f"dL/d{beta}", beta_values))
    else:
        step.text.append("no affine parameters (elementwise_affine = false): gamma = 1, beta = 0")
    step.checks.append(_compare("dL/dx_hat", {"lecture formula": norm.gamma * norm.grad_y, "torch retain_grad": ref["grad_x_hat"]}))
    return step


def _terms_step(norm: Normalization, ref: dict[str, np.ndarray], x_hat: np.ndarray, inv: np.ndarray) -> Step:
    g = ref["grad_x_hat"]
    direct = inv * g
    mean_term = np.broadcast_to(-inv * g.mean(axis=norm.axes, keepdims=True), g.shape)
    var_term = -inv * x_hat * (g * x_hat).mean(axis=norm.axes, keepdims=True)
    no_stats = torch_normalize(norm.x, norm.gamma, norm.beta, norm.grad_y, norm.axes, norm.eps, detach="mean var")["grad_x"]
    no_var = torch_normalize(norm.x, norm.gamma, norm.beta, norm.grad_y, norm.axes, norm.eps, detach="var")["grad_x"]
    step = Step(f"{norm.title}: dL/dx = direct term + mean term + variance term")
    step.text.append(f"x_hat depends on {norm.name_in} directly and through mu and var, which every entry of the group moves: three paths, three terms")
    step.text.append("direct term = g / sqrt(var + eps): mu and var held fixed (torch: both detached)")
    step.text.append("mean term = -mean(g) / sqrt(var + eps): the path through mu (torch: var detached, minus the direct term)")
    step.text.append("variance term = -x_hat mean(g x_hat) / sqrt(var + eps): the path through var (torch: the full gradient minus the two above)")
    scale = float(np.max(np.abs(norm.grad_x), initial=0.0)) or 1.0
    step.text.append(
        f"dropping the mean term (the term people forget) would be off by max |mean term| = {float(np.max(np.abs(mean_term))):.3g} "
        f"({float(np.max(np.abs(mean_term))) / scale:.1%} of max |dL/d{norm.name_in}|); dropping the variance term by {float(np.max(np.abs(var_term))):.3g}"
    )
    step.latex.append(BACKWARD_LATEX)
    size = float(np.max(np.abs(np.stack([direct, mean_term, var_term]))))
    step.checks.append(_compare("direct term", {"lecture formula": direct, "torch, mu and var detached": no_stats}))
    step.checks.append(_compare("mean term", {"lecture formula": mean_term, "torch, var detached, minus direct": no_var - no_stats}, scale=size))
    step.checks.append(_compare("variance term", {"lecture formula": var_term, "torch full minus the above": ref["grad_x"] - no_var}, scale=size))
    total = {"lecture formula (sum of the three)": direct + mean_term + var_term, "torch retain_grad": norm.grad_x, "numpy rule": norm.rule_x}
    step.checks.append(_compare(f"dL/d{norm.name_in}", total))
    return step


def _eval_step(norm: Normalization, inv: np.ndarray) -> Step:
    step = Step(f"{norm.title}: dL/dx = gamma dL/dy / sqrt(running_var + eps) (eval mode)")
    step.text.append("the running statistics are constants, so x_hat is an affine function of x: no mean term, no variance term")
    lecture = norm.gamma * inv * norm.grad_y
    train_like = normalize_like_train(norm)
    step.text.append(f"the training-mode formula (batch statistics) would give a different dL/dx here: off by max {float(np.max(np.abs(train_like - lecture))):.3g}")
    step.latex.append(r"\frac{\partial L}{\partial x} = \frac{\gamma}{\sqrt{\sigma^2_{\mathrm{running}} + \epsilon}} \odot \frac{\partial L}{\partial y}")
    step.checks.append(_compare(f"dL/d{norm.name_in}", {"lecture formula": lecture, "torch retain_grad": norm.grad_x, "numpy rule": norm.rule_x}))
    return step


def normalize_like_train(norm: Normalization) -> np.ndarray:
    """dL/dx if the batch's own statistics were used (what eval mode must not do)."""
    mu = norm.x.mean(axis=norm.axes, keepdims=True)
    inv = 1.0 / np.sqrt(((norm.x - mu) ** 2).mean(axis=norm.axes, keepdims=True) + norm.eps)
    x_hat = (norm.x - mu) * inv
    g = norm.gamma * norm.grad_y
    return inv * (g - g.mean(axis=norm.axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=norm.axes, keepdims=True))


def explain_norm(trace: LayerTrace) -> list[Step]:
    layer = trace.layer
    n = trace.x.shape[0]
    rule_x, rule_params = trace.numpy_rule()
    affine = "weight" in trace.params
    if layer.kind == "layer_norm":
        k = layer.group_size
        view: tuple[int, ...] = (n, -1, k)
        bshape: tuple[int, ...] = (1, 1, k)
        axes: Axes = (2,)
        param_axes: Axes = (0, 1)
        positions = trace.x.shape[1] // k
        over = f"the {k} entries of normalized_shape {list(layer.normalized)} of each sample" + (f" and each of its {positions} positions" if positions > 1 else "")
        running = None
    else:
        c = layer.channels
        view, bshape, param_axes = (n, c, layer.spatial), (1, c, 1), (0, 2)
        axes = (0, 2)
        spatial = f" and the {layer.spatial} positions of each channel" if layer.spatial > 1 else ""
        over = f"the batch ({n} samples){spatial}, per channel ({c} channels)"
        running = None
        if layer.options["mode"] == "eval":
            rm, rv = layer.running_stats()
            running = (rm.reshape(bshape), rv.reshape(bshape))
            over = f"per channel ({c} channels), the same for every sample"
    gamma = trace.params["weight"].reshape(bshape) if affine else np.ones(bshape)
    beta = trace.params["bias"].reshape(bshape) if affine else np.zeros(bshape)
    norm = Normalization(
        title=f"Layer {trace.index} ({layer.kind})",
        name_in=trace.name_in,
        name_out=trace.name_out,
        x=trace.x.reshape(view),
        gamma=gamma,
        beta=beta,
        grad_y=trace.grad_y.reshape(view),
        axes=axes,
        over=over,
        eps=float(layer.options["eps"]),
        running=running,
        torch_y=trace.torch_y.reshape(view),
        grad_x=trace.grad_x.reshape(view),
        grad_gamma=trace.param_grads.get("weight"),
        grad_beta=trace.param_grads.get("bias"),
        numpy_x_hat=np.asarray(trace.cache[0]).reshape(view),
        rule_x=rule_x.reshape(view),
        rule_gamma=rule_params.get("weight"),
        rule_beta=rule_params.get("bias"),
        param_axes=param_axes,
        param_names=("gamma (weight)", "beta (bias)"),
    )
    steps = normalization_steps(norm)
    if layer.kind != "layer_norm" and running is None:
        steps[0].text.append(_running_update(trace, norm))
        steps[0].checks.append(_running_check(trace, norm))
    return steps


MOMENTUM = 0.1  # PyTorch's default


def _running_update_values(trace: LayerTrace, norm: Normalization) -> tuple[np.ndarray, np.ndarray]:
    rm, rv = trace.layer.running_stats()
    count = int(np.prod([norm.x.shape[a] for a in norm.axes]))
    mu = norm.x.mean(axis=norm.axes).ravel()
    unbiased = ((norm.x - norm.x.mean(axis=norm.axes, keepdims=True)) ** 2).sum(axis=norm.axes).ravel() / max(count - 1, 1)
    return (1 - MOMENTUM) * rm + MOMENTUM * mu, (1 - MOMENTUM) * rv + MOMENTUM * unbiased


def _running_update(trace: LayerTrace, norm: Normalization) -> str:
    return (
        f"training mode also updates the running statistics (momentum {MOMENTUM}): running_mean <- 0.9 running_mean + 0.1 mu, "
        "running_var <- 0.9 running_var + 0.1 var * n/(n - 1) (the unbiased variance); eval mode later normalises with them"
    )


def _running_check(trace: LayerTrace, norm: Normalization) -> Check:
    mean, var = _running_update_values(trace, norm)
    module = trace.module
    values = np.concatenate([mean, var])
    torch_values = np.concatenate([module.running_mean.detach().numpy(), module.running_var.detach().numpy()])
    return _compare("running_mean, running_var after the forward pass", {"lecture formula": values, "torch buffers": torch_values})
