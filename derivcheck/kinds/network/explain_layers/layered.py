"""The explanation of any network case: the forward pass layer by layer, each layer's
family derivation (:mod:`derivcheck.kinds.network.explain_layers`), the loss, the backward
pass checked in bulk with one line per layer, and the total derivative of every parameter.

Used for networks the fully expanded MLP derivation does not print: layers other than
dense ones and activations, or more parameters than fit on a page. Every family shows a
representative slice (one unit, one channel, one time step, one head -- named as such)
and the rest of the layer is checked in bulk.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from derivcheck.explain_steps import Explanation, ExplainTooLarge, Step, _compare
from derivcheck.kinds.network.explain_layers import LOSS_RULES, family_explainer
from derivcheck.kinds.network.explain_layers.trace import NetworkTrace, trace_network


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def explain_layered(case: Any) -> Explanation:
    """See the module docstring; raises :class:`ExplainTooLarge` for a case without a loss."""
    problem = case.problem
    if problem.loss is None:
        raise ExplainTooLarge(f"case {case.name!r} has no loss: explain follows dL/dW through a loss")
    network = problem.network
    trace = trace_network(problem)
    count = sum(int(np.prod(ref.shape)) for ref in network.params())
    intro = (
        f"Network {network.describe()} ({count:,} parameters) with loss {problem.loss.kind}, on the case's batch of "
        f"{problem.batch} sample(s); values are shown for sample 0. Shapes follow PyTorch (per sample; W is (out, in)). "
        "Each layer's steps evaluate the lecture's formula from the layer's input and torch's dL/d(output), and check it "
        "against torch (retain_grad() on every intermediate tensor) and the layer's hand-written numpy rule."
    )
    steps = [_forward_step(trace, network)]
    for layer_trace in trace.layers:
        explainer = family_explainer(layer_trace.layer.kind)
        if explainer is not None:
            steps.extend(explainer(layer_trace))
    steps.append(_loss_step(trace, problem))
    steps.append(_backward_step(trace))
    steps.append(_total_step(trace, problem))
    return Explanation(case.name, intro, steps)


def _forward_step(trace: NetworkTrace, network: Any) -> Step:
    step = Step("Forward pass, layer by layer")
    step.latex.append(r"h_0 = x, \qquad h_k = f_k(h_{k-1};\ \theta_k), \qquad L = \ell(h_K, t)")
    for layer_trace in trace.layers:
        layer = layer_trace.layer
        step.text.append(f"{layer_trace.name_out} = {layer.describe()}({layer_trace.name_in})    shape {shape_text(layer.in_shape)} -> {shape_text(layer.out_shape)}")
        step.checks.append(_compare(f"{layer_trace.name_out}", {"numpy": layer_trace.y, "torch": layer_trace.torch_y}))
    return step


def _loss_step(trace: NetworkTrace, problem: Any) -> Step:
    last = trace.layers[-1].name_out
    step = Step(f"Loss ({problem.loss.kind}) and its derivative")
    text, tex = LOSS_RULES[problem.loss.kind]
    step.text.append(f"L = mean over the batch of {problem.loss.kind}({last}, t) = {trace.loss:.6g}")
    step.text.append(text.format(y=last, t="t") + "   (and 1/N for the batch mean)")
    step.latex.append(tex.format(y=last, t="t"))
    step.checks.append(_compare("L", {"numpy": np.array([trace.per_sample_loss.mean()]), "torch": np.array([trace.loss])}))
    rule = problem.loss.numpy_backward(trace.loss_cache) / problem.batch
    step.checks.append(_compare(f"dL/d{last}", {"numpy rule": rule, "torch retain_grad": trace.grad_out}))
    return step


def _backward_step(trace: NetworkTrace) -> Step:
    """One line per layer: its hand-written rule fed torch's dL/dy, against torch."""
    step = Step("Backward pass, every layer in bulk")
    step.text.append("each layer's hand-written rule, fed torch's dL/d(output), against torch's dL/d(input) and parameter .grad")
    floor = gradient_floor(trace)
    step.latex.append(
        r"\frac{\partial L}{\partial h_{k-1}} = J_k^\top \frac{\partial L}{\partial h_k}, \qquad \frac{\partial L}{\partial \theta_k} = \Big(\frac{\partial h_k}{\partial \theta_k}\Big)^{\!\top} \frac{\partial L}{\partial h_k}"
    )
    for layer_trace in reversed(trace.layers):
        grad_x, grads = layer_trace.numpy_rule()
        if layer_trace.layer.kind != "embedding":
            step.checks.append(_compare(f"{layer_trace.title}: dL/d{layer_trace.name_in}", {"numpy rule": grad_x, "torch retain_grad": layer_trace.grad_x}))
        for name, value in grads.items():
            step.checks.append(_compare(f"{layer_trace.title}: dL/d{name} {shape_text(value.shape)}", {"numpy rule": value, "torch .grad": layer_trace.param_grads[name]}, scale=floor))
    return step


def _total_step(trace: NetworkTrace, problem: Any) -> Step:
    """Every parameter's gradient: the numpy rules chained from the loss, torch, and the
    symbolic engine where the network fits its limits."""
    from derivcheck.engines import SymbolicEngine
    from derivcheck.quantities import expand_quantities
    from derivcheck.values import EngineValue

    network = problem.network
    floor = gradient_floor(trace)
    step = Step("Total derivative of every parameter")
    step.text.append("the numpy rules chained from dL/dh_K back to the input (no torch value used) against torch's .grad" + " and the symbolic engine's SymPy-derived rules")
    g = problem.loss.numpy_backward(trace.loss_cache) / problem.batch
    chained: dict[str, np.ndarray] = {}
    for layer_trace in reversed(trace.layers):
        g, grads = layer_trace.layer.numpy_backward(g, layer_trace.cache, layer_trace.params)
        for name, value in grads.items():
            chained[f"{layer_trace.index}.{name}"] = value
    symbolic = SymbolicEngine().compute(problem, expand_quantities(["dL/dparams"], problem))
    at_kinks = _inputs_at_kinks(trace)
    if at_kinks:
        symbolic = {}
        step.text.append(
            f"{at_kinks} input(s) sit exactly at a kink (see the layers' steps): there the derivative does not exist and each "
            "implementation picks a one-sided value (PyTorch 0 for relu'(0), SymPy's Heaviside 1/2), so the symbolic engine is "
            "left out of this step -- a kink, not an error"
        )
    for ref in network.params():
        values = {"numpy chain": chained[ref.qualified], "torch .grad": trace.torch_param_grads[ref.qualified]}
        computed = symbolic.get(f"dL/d{ref.qualified}")
        if isinstance(computed, EngineValue):
            values["symbolic"] = computed.values
        step.checks.append(_compare(f"dL/d{ref.qualified} {shape_text(ref.shape)}", values, scale=floor))
    if symbolic and not any(isinstance(v, EngineValue) for v in symbolic.values()):
        reason = next(iter(symbolic.values()), None)
        step.text.append(f"the symbolic engine does not cover this network: {getattr(reason, 'reason', reason)}")
    if layer_kinds_without_family(network):
        step.text.append("layers without a derivation of their own above are checked here and in the bulk step: " + ", ".join(layer_kinds_without_family(network)))
    return step


def gradient_floor(trace: NetworkTrace) -> float:
    """The largest parameter gradient of the network: parameter gradients are compared
    relative to at least this, so a gradient that is ~0 by the maths (a bias before a batch
    norm: 1e-17) is not judged by its own rounding noise."""
    return max((float(np.max(np.abs(g), initial=0.0)) for g in trace.torch_param_grads.values()), default=0.0)


def _inputs_at_kinks(trace: NetworkTrace) -> int:
    """How many layer inputs sit exactly on a kink (a zero of :meth:`Layer.kink_inputs`)."""
    total = 0
    for layer_trace in trace.layers:
        kinks = layer_trace.layer.kink_inputs(layer_trace.cache)
        if kinks is not None:
            total += int(np.sum(np.asarray(kinks) == 0))
    return total


def layer_kinds_without_family(network: Any) -> list[str]:
    from derivcheck.kinds.network.explain_layers import FAMILIES

    return sorted({layer.kind for layer in network.layers if layer.kind not in FAMILIES and layer.kind not in _SILENT})


# layers whose derivative is a reshape or an elementwise function shown in the bulk step
_SILENT = {"flatten", "identity", "dropout"}
