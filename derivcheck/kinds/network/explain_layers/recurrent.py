"""Recurrent nets (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``) unrolled over time, as a lecture
derives them: the gates in PyTorch's order and layout, the state path, backpropagation
through time (BPTT) step by step, and the gradient norms per time step.

Conventions: a sample is ``(T, F)``; time runs t = 1..T with ``x_t`` its row t-1 and
``h_0`` (``c_0``) the initial state (learned or zeros). Gate rows are stacked in
``weight_ih_l0`` ``(G H, F)`` and ``weight_hh_l0`` ``(G H, H)`` in PyTorch's order:
LSTM ``i, f, g, o``, GRU ``r, z, n``, RNN one block. The torch reference is the layer
unrolled with ``nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` carrying the module's weights,
``retain_grad()`` on every ``h_t`` and ``c_t`` and ``(output * dL/dy).sum()``
backpropagated, so each ``.grad`` is the real ``dL/dh_t``. Each step's lecture formula
takes torch's values of the step before (forward) or after (backward), so a wrong rule
fails at its own step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from derivcheck.explain_steps import Step, _compare
from derivcheck.kinds.network.explain_layers.trace import LayerTrace

GATE_NAMES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ("a",)}
# sequences longer than this show their first and last SHOWN_STEPS steps in full
FULL_STEPS = 8
SHOWN_STEPS = 2
BAR = 24


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _unrolled_torch(trace: LayerTrace) -> dict[str, Any]:
    """h_t, c_t (t = 0..T) and their total gradients from the unrolled torch cell."""
    import torch

    layer = trace.layer
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in trace.params.items()}
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[layer.kind]
    cell = cls(layer.features, layer.hidden, bias="bias_ih_l0" in p).to(torch.float64)
    with torch.no_grad():
        cell.weight_ih.copy_(p["weight_ih_l0"])
        cell.weight_hh.copy_(p["weight_hh_l0"])
        if "bias_ih_l0" in p:
            cell.bias_ih.copy_(p["bias_ih_l0"])
            cell.bias_hh.copy_(p["bias_hh_l0"])
    n, steps, hidden = trace.x.shape[0], layer.steps, layer.hidden
    xs = torch.tensor(trace.x.reshape(n, steps, layer.features), requires_grad=True)
    zeros = torch.zeros(hidden, dtype=torch.float64)
    h = p.get("h0", zeros).expand(n, hidden).clone().requires_grad_(True)
    c = p.get("c0", zeros).expand(n, hidden).clone().requires_grad_(True)
    hs, cs = [h], [c]
    for t in range(steps):
        if layer.kind == "lstm":
            h, c = cell(xs[:, t], (h, c))
            c.retain_grad()
            cs.append(c)
        else:
            h = cell(xs[:, t], h)
        h.retain_grad()
        hs.append(h)
    out = hs[-1] if layer.options["output"] == "last" else torch.stack(hs[1:], dim=1).reshape(n, -1)
    (out * torch.tensor(trace.grad_y)).sum().backward()

    def grad(t: Any) -> np.ndarray:
        return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy().copy()

    return {
        "out": out.detach().numpy(),
        "h": [v.detach().numpy() for v in hs],
        "c": [v.detach().numpy() for v in cs],
        "dh": [grad(v) for v in hs],
        "dc": [grad(v) for v in cs],
        "dx": grad(xs),
        "weights": {"weight_ih_l0": grad(cell.weight_ih), "weight_hh_l0": grad(cell.weight_hh)},
    }


def _gate_pre(trace: LayerTrace, x_t: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = trace.params
    gi, gh = x_t @ p["weight_ih_l0"].T, h_prev @ p["weight_hh_l0"].T
    if "bias_ih_l0" in p:
        gi, gh = gi + p["bias_ih_l0"], gh + p["bias_hh_l0"]
    return gi, gh


def lecture_gates(kind: str, gi: np.ndarray, gh: np.ndarray, hidden: int) -> tuple[np.ndarray, ...]:
    """The gates of one step from the input and hidden pre-activations ``(N, G H)``."""
    blocks = [slice(k * hidden, (k + 1) * hidden) for k in range(len(GATE_NAMES[kind]))]
    if kind == "lstm":
        z = gi + gh
        return (_sigmoid(z[:, blocks[0]]), _sigmoid(z[:, blocks[1]]), np.tanh(z[:, blocks[2]]), _sigmoid(z[:, blocks[3]]))
    if kind == "gru":
        r = _sigmoid(gi[:, blocks[0]] + gh[:, blocks[0]])
        z = _sigmoid(gi[:, blocks[1]] + gh[:, blocks[1]])
        return (r, z, np.tanh(gi[:, blocks[2]] + r * gh[:, blocks[2]]))
    return (np.tanh(gi + gh),)


def _numpy_gates(trace: LayerTrace) -> list[tuple[np.ndarray, ...]] | None:
    """The gates the hand-written forward cached, per step (``None`` for an RNN)."""
    if trace.layer.kind == "lstm":
        return [tuple(g) for g in trace.cache[3]]
    if trace.layer.kind == "gru":
        return [tuple(c[:3]) for c in trace.cache[2]]
    return None


def _shown(steps: int) -> list[int]:
    """Time steps (1-based) printed and checked one by one; the rest are checked in bulk."""
    if steps <= FULL_STEPS:
        return list(range(1, steps + 1))
    return list(range(1, SHOWN_STEPS + 1)) + list(range(steps - SHOWN_STEPS + 1, steps + 1))


def _per_step_checks(step: Step, label: str, values: dict[str, list[np.ndarray]], steps: int) -> None:
    """One check per shown time step and one for the rest together."""
    shown = _shown(steps)
    for t in shown:
        step.checks.append(_compare(f"{label} at t = {t}", {name: v[t - 1] for name, v in values.items()}))
    rest = [t for t in range(1, steps + 1) if t not in shown]
    if rest:
        step.checks.append(_compare(f"{label} at t = {rest[0]}..{rest[-1]} (in bulk)", {name: np.stack([v[t - 1] for t in rest]) for name, v in values.items()}))


def explain_recurrent(trace: LayerTrace) -> list[Step]:
    layer = trace.layer
    kind, hidden, steps, n = layer.kind, layer.hidden, layer.steps, trace.x.shape[0]
    head = f"Layer {trace.index} ({kind})"
    ref = _unrolled_torch(trace)
    xs = trace.x.reshape(n, steps, layer.features)
    names = GATE_NAMES[kind]

    gates_step = Step(f"{head}: " + ("the pre-activation in PyTorch's layout (no gates)" if kind == "rnn" else "gates in PyTorch's order and layout"))
    if kind == "rnn":
        gates_step.text.append("an Elman RNN has no gates: a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, h_t = tanh(a_t)")
    else:
        slices = ", ".join(f"W_i{g} = weight_ih_l0[{k * hidden}:{(k + 1) * hidden}]" for k, g in enumerate(names))
        gates_step.text.append(
            f"weight_ih_l0 {trace.params['weight_ih_l0'].shape} and weight_hh_l0 {trace.params['weight_hh_l0'].shape} stack the gates in the order {', '.join(names)}: {slices} (the same rows of weight_hh_l0 and the biases)"
        )
        if kind == "lstm":
            gates_step.text.append("i (input), f (forget), o (output) = sigmoid(W_i* x_t + b_i* + W_h* h_{t-1} + b_h*); g (candidate) = tanh(...)")
            gates_step.latex.append(
                r"\begin{pmatrix} i_t \\ f_t \\ g_t \\ o_t \end{pmatrix} = \begin{pmatrix} \sigma \\ \sigma \\ \tanh \\ \sigma \end{pmatrix}\!\big(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}\big)"
            )
        else:
            gates_step.text.append("r (reset), z (update) = sigmoid(W_i* x_t + b_i* + W_h* h_{t-1} + b_h*); n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn)) -- r multiplies the hidden part only")
            gates_step.latex.append(
                r"r_t, z_t = \sigma(W_{i\cdot} x_t + b_{i\cdot} + W_{h\cdot} h_{t-1} + b_{h\cdot}), \quad n_t = \tanh\big(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})\big)"
            )
    lecture = [lecture_gates(kind, *_gate_pre(trace, xs[:, t - 1], ref["h"][t - 1]), hidden) for t in range(1, steps + 1)]
    first = ", ".join(f"{g} = {np.round(v[0], 4).tolist()}" for g, v in zip(names, lecture[0]))
    gates_step.text.append(f"at t = 1, sample 0: {first}")
    numpy_gates = _numpy_gates(trace)
    if numpy_gates is not None:
        _per_step_checks(
            gates_step, "gates " + ", ".join(names), {"lecture formula (torch's h_{t-1})": [np.stack(g) for g in lecture], "numpy rule's cache": [np.stack(g) for g in numpy_gates]}, steps
        )
    gates_step.checks.append(_compare(f"the unrolled {kind} cell reproduces the module", {"unrolled torch cell": ref["out"], f"nn.{layer.TORCH_CLASS}": trace.torch_y}))

    path = Step(f"{head}: the state path through time")
    if kind == "lstm":
        path.text.append("c_t = f_t * c_{t-1} + i_t * g_t (the cell state: forget some, write some), h_t = o_t * tanh(c_t)")
        path.latex.append(r"c_t = f_t \odot c_{t-1} + i_t \odot g_t, \qquad h_t = o_t \odot \tanh(c_t)")
        c_lecture = [lecture[t - 1][1] * ref["c"][t - 1] + lecture[t - 1][0] * lecture[t - 1][2] for t in range(1, steps + 1)]
        h_lecture = [lecture[t - 1][3] * np.tanh(c_lecture[t - 1]) for t in range(1, steps + 1)]
        _per_step_checks(path, "c_t", {"lecture formula": c_lecture, "torch cell": ref["c"][1:], "numpy rule": trace.cache[2][1:]}, steps)
    elif kind == "gru":
        path.text.append("h_t = (1 - z_t) * n_t + z_t * h_{t-1}: z interpolates between the old state and the candidate")
        path.latex.append(r"h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}")
        h_lecture = [(1 - lecture[t - 1][1]) * lecture[t - 1][2] + lecture[t - 1][1] * ref["h"][t - 1] for t in range(1, steps + 1)]
    else:
        path.latex.append(r"h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})")
        h_lecture = [lecture[t - 1][0] for t in range(1, steps + 1)]
    path.text.append(f"output: {'h_T only' if layer.options['output'] == 'last' else 'every h_t, t = 1..T'}")
    _per_step_checks(path, "h_t", {"lecture formula": h_lecture, "torch cell": ref["h"][1:], "numpy rule": trace.cache[1][1:]}, steps)

    bptt = _bptt_step(trace, ref, head, xs)
    norms = _norms_step(ref, head, steps)
    if "h0" in trace.param_grads:
        _, rule_params = trace.numpy_rule()
        norms.checks.append(
            _compare(
                "dL/dh_0 reaches the learned initial state (summed over the batch)",
                {"torch cell": ref["dh"][0].sum(axis=0), "torch module .grad": trace.param_grads["h0"], "numpy rule": rule_params["h0"]},
            )
        )
    return [gates_step, path, bptt, norms]


def _direct(trace: LayerTrace) -> list[np.ndarray]:
    """dL/dh_t from outside the layer for t = 1..T (zeros except at T for output "last")."""
    n, steps, hidden = trace.x.shape[0], trace.layer.steps, trace.layer.hidden
    if trace.layer.options["output"] == "last":
        return [np.zeros((n, hidden))] * (steps - 1) + [trace.grad_y]
    seq = trace.grad_y.reshape(n, steps, hidden)
    return [seq[:, t] for t in range(steps)]


def _bptt_step(trace: LayerTrace, ref: dict[str, Any], head: str, xs: np.ndarray) -> Step:
    layer = trace.layer
    kind, hidden, steps = layer.kind, layer.hidden, layer.steps
    w_hh = trace.params["weight_hh_l0"]
    direct = _direct(trace)
    step = Step(f"{head}: backpropagation through time")
    step.text.append("walking t = T..1: dL/dh_t = (dL/dy at t) + (what h_{t+1} sends back); each step's lecture value uses torch's dL/dh_t (and dL/dc_{t+1})")
    lecture_dh, lecture_dc = [], []
    for t in range(1, steps + 1):
        gates = lecture_gates(kind, *_gate_pre(trace, xs[:, t - 1], ref["h"][t - 1]), hidden)
        dh = ref["dh"][t]
        if kind == "lstm":
            i, f, g, o = gates
            later = ref["dc"][t + 1] * lecture_gates(kind, *_gate_pre(trace, xs[:, t], ref["h"][t]), hidden)[1] if t < steps else 0.0
            tanh_c = np.tanh(ref["c"][t])
            dc = dh * o * (1 - tanh_c**2) + later
            lecture_dc.append(dc)
            dz = np.concatenate([dc * g * i * (1 - i), dc * ref["c"][t - 1] * f * (1 - f), dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)], axis=1)
            back = dz @ w_hh
        elif kind == "gru":
            r, z, n_gate = gates
            hn = _gate_pre(trace, xs[:, t - 1], ref["h"][t - 1])[1][:, 2 * hidden :]
            dan = dh * (1 - z) * (1 - n_gate**2)
            da_r, da_z = dan * hn * r * (1 - r), dh * (ref["h"][t - 1] - n_gate) * z * (1 - z)
            back = dh * z + np.concatenate([da_r, da_z, dan * r], axis=1) @ w_hh
        else:
            back = (dh * (1 - gates[0] ** 2)) @ w_hh
        lecture_dh.append(back + (direct[t - 2] if t >= 2 else 0.0))
    if kind == "lstm":
        step.text.append("dL/dc_t = dL/dh_t * o_t * (1 - tanh^2 c_t) + dL/dc_{t+1} * f_{t+1}: the cell state's additive path carries the gradient back, scaled only by the forget gates")
        step.latex.append(r"\frac{\partial L}{\partial c_t} = \frac{\partial L}{\partial h_t} \odot o_t \odot (1 - \tanh^2 c_t) + \frac{\partial L}{\partial c_{t+1}} \odot f_{t+1}")
        _per_step_checks(step, "dL/dc_t", {"lecture formula": lecture_dc, "torch retain_grad": ref["dc"][1:]}, steps)
    step.text.append("dL/dh_{t-1} = W_hh^T (dL/d pre-activations at t) (+ the GRU's z_t * dL/dh_t) + dL/dy at t-1")
    step.latex.append(r"\frac{\partial L}{\partial h_{t-1}} = W_{hh}^\top \frac{\partial L}{\partial a_t} + \frac{\partial L}{\partial y_{t-1}}")
    _per_step_checks(step, "dL/dh_{t-1}", {"lecture formula": lecture_dh, "torch retain_grad": ref["dh"][:-1]}, steps)
    rule_x, rule_params = trace.numpy_rule()
    rule_dx = rule_x.reshape(xs.shape)
    _per_step_checks(step, "dL/dx_t", {"numpy rule (BPTT)": [rule_dx[:, t] for t in range(steps)], "torch cell": [ref["dx"][:, t] for t in range(steps)]}, steps)
    for name in ("weight_ih_l0", "weight_hh_l0"):
        step.checks.append(_compare(f"dL/d{name}, summed over t", {"numpy rule (BPTT)": rule_params[name], "torch cell": ref["weights"][name], "torch module .grad": trace.param_grads[name]}))
    return step


def _norms_step(ref: dict[str, Any], head: str, steps: int) -> Step:
    norms = [float(np.linalg.norm(g)) for g in ref["dh"]]
    top = max(norms) or 1.0
    step = Step(f"{head}: gradient norms over time")
    step.text.append("||dL/dh_t|| over the batch, t = 0..T (torch):")
    for t, value in enumerate(norms):
        filled = int(round(BAR * value / top))
        step.text.append(f"t={t:<3d} |{'#' * filled}{'.' * (BAR - filled)}| {value:.2e}")
    ratio = norms[0] / norms[-1] if norms[-1] else float("inf")
    trend = "vanishes" if ratio < 0.1 else "explodes" if ratio > 10 else "neither vanishes nor explodes"
    step.text.append(
        f"||dL/dh_0|| / ||dL/dh_T|| = {ratio:.3g}: over these {steps} steps the gradient {trend}. Reaching h_0 it passes through the product of the step "
        "Jacobians dh_t/dh_{t-1}; their norms below 1 shrink it geometrically (vanishing), above 1 grow it (exploding) -- the LSTM's cell path and the "
        "GRU's z * h_{t-1} term are additive routes around that product."
    )
    step.latex.append(r"\frac{\partial L}{\partial h_0} = \Big(\prod_{t=1}^{T} \frac{\partial h_t}{\partial h_{t-1}}\Big)^{\!\top} \frac{\partial L}{\partial h_T} + \dots")
    return step
