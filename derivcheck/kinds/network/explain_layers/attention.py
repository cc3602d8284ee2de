"""Attention (``sdpa``, ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``) and the
embedding lookup, as a lecture derives them.

Shapes per sample follow PyTorch with ``batch_first=True``: a sequence ``X`` ``(T, D)``;
``H`` heads of width ``d = D / H``; per head ``Q, K, V`` ``(T, d)``, scores and weights
``S, P`` ``(T, T)`` (row ``i`` = query ``i``, column ``j`` = key ``j``). Arrays of all
heads are ``(N, H, T, d)`` / ``(N, H, T, T)``. ``S = Q K^T / sqrt(d)`` (the causal mask
sets ``S[i, j] = -inf`` for ``j > i``), ``P = softmax(S)`` row-wise, ``O = P V``; the heads
are joined side by side and projected, ``W_o O + b_o``. The encoder block is post-norm
(PyTorch's default ``norm_first=False``): ``h = LN1(x + attn(x))``,
``y = LN2(h + W2 act(W1 h + b1) + b2)``.

Head 0 of sample 0 is the representative slice that is printed; every check covers all
heads and samples. Torch references of the inner tensors (``Q``, ``S``, ``P``, ``O``, the
LayerNorm inputs, ...) come from a torch recomputation from the layer's parameters with
``retain_grad()``, checked to reproduce the module's output and backpropagating
``(y * dL/dy).sum()`` with torch's ``dL/dy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from derivcheck.explain_steps import Step, _compare
from derivcheck.kinds.network.explain_layers.norm import Normalization, normalization_steps, vector_text
from derivcheck.kinds.network.explain_layers.trace import LayerTrace

# rows / columns of a matrix printed in full
SHOWN = 6


@dataclass
class Block:
    """The geometry of one attention layer: `t` positions, model width `width`, `heads`
    of width `d`, `causal`, the parameter `prefix` (``"self_attn."`` in the encoder)."""

    kind: str
    t: int
    width: int
    heads: int
    d: int
    causal: bool
    prefix: str
    title: str

    @property
    def mask(self) -> np.ndarray:
        full = np.ones((self.t, self.t), dtype=bool)
        return np.tril(full) if self.causal else full


def block_of(trace: LayerTrace) -> Block:
    layer = trace.layer
    title = f"Layer {trace.index} ({layer.kind})"
    if layer.kind == "sdpa":
        return Block(layer.kind, layer.in_shape[0], layer.d, 1, layer.d, bool(layer.options["causal"]), "", title)
    t, width = layer.in_shape
    heads = int(layer.options["num_heads"])
    prefix = "self_attn." if layer.kind == "transformer_encoder" else ""
    return Block(layer.kind, t, width, heads, width // heads, bool(layer.options["causal"]), prefix, title)


def matrix_text(values: np.ndarray) -> str:
    rows = [" ".join(f"{v:8.3g}" for v in row[:SHOWN]) + (" ..." if len(row) > SHOWN else "") for row in np.asarray(values)[:SHOWN]]
    return "[" + " ; ".join(rows) + (" ; ..." if len(values) > SHOWN else "") + "]"


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """``(N, T, D) -> (N, H, T, d)``: head ``h`` takes columns ``h d .. (h+1) d - 1``."""
    n, t, width = x.shape
    return x.reshape(n, t, heads, width // heads).transpose(0, 2, 1, 3)


def join_heads(x: np.ndarray) -> np.ndarray:
    """``(N, H, T, d) -> (N, T, H d)``: the heads side by side."""
    n, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, t, h * d)


def softmax_rows(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    masked = np.where(mask, scores, -np.inf)
    shifted = np.exp(masked - masked.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# -- the torch recomputation -----------------------------------------------------------
def torch_reference(trace: LayerTrace, block: Block) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Values and ``.grad`` of the layer's inner tensors, recomputed with torch ops from the
    layer's parameters (see the module docstring)."""
    import torch

    n = trace.x.shape[0]
    p = {name: torch.tensor(value, dtype=torch.float64) for name, value in trace.params.items()}
    kept: dict[str, Any] = {}

    def keep(name: str, tensor: Any) -> Any:
        tensor.retain_grad()
        kept[name] = tensor
        return tensor

    x = torch.tensor(trace.x.reshape(n, block.t, -1), dtype=torch.float64, requires_grad=True)
    kept["x"] = x
    if block.kind == "transformer_encoder":
        y = _torch_encoder(trace, block, x, p, keep)
    else:
        y = _torch_attention(block, x, p, keep)
    keep("y", y)
    (y.reshape(n, -1) * torch.tensor(trace.grad_y)).sum().backward()
    values = {name: t.detach().numpy().copy() for name, t in kept.items()}
    grads = {name: t.grad.detach().numpy().copy() for name, t in kept.items() if t.grad is not None}
    return values, grads


def _torch_attention(block: Block, x: Any, p: dict[str, Any], keep: Any) -> Any:
    import torch

    n, d, width = x.shape[0], block.d, block.width
    if block.kind == "sdpa":
        q, k, v = (x[..., i * d : (i + 1) * d].unsqueeze(1) for i in range(3))
    else:
        qkv = x @ p[block.prefix + "in_proj_weight"].T + p[block.prefix + "in_proj_bias"]
        q, k, v = (qkv[..., i * width : (i + 1) * width].reshape(n, block.t, block.heads, d).transpose(1, 2) for i in range(3))
    q, k, v = keep("Q", q), keep("K", k), keep("V", v)
    scores = keep("S", q @ k.transpose(-1, -2) / math.sqrt(d))
    masked = scores.masked_fill(~torch.tensor(block.mask), float("-inf"))
    weights = keep("P", torch.softmax(masked, dim=-1))
    out = keep("O", weights @ v)
    if block.kind == "sdpa":
        return out.squeeze(1)
    merged = keep("merged", out.transpose(1, 2).reshape(n, block.t, width))
    return merged @ p[block.prefix + "out_proj.weight"].T + p[block.prefix + "out_proj.bias"]


def _torch_layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    import torch

    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _torch_encoder(trace: LayerTrace, block: Block, x: Any, p: dict[str, Any], keep: Any) -> Any:
    import torch

    eps = float(trace.layer.options["eps"])
    attn = keep("attn", _torch_attention(block, keep("x_attn", x.clone()), p, keep))
    s1 = keep("s1", keep("x_skip", x.clone()) + attn)
    h = keep("h", _torch_layer_norm(s1, p["norm1.weight"], p["norm1.bias"], eps))
    pre = keep("pre", keep("h_ff", h.clone()) @ p["linear1.weight"].T + p["linear1.bias"])
    act = keep("act", torch.nn.functional.gelu(pre) if trace.layer.options["activation"] == "gelu" else torch.relu(pre))
    ff = keep("ff", act @ p["linear2.weight"].T + p["linear2.bias"])
    s2 = keep("s2", keep("h_skip", h.clone()) + ff)
    return _torch_layer_norm(s2, p["norm2.weight"], p["norm2.bias"], eps)


# -- the explainer ---------------------------------------------------------------------
def explain_attention(trace: LayerTrace) -> list[Step]:
    from derivcheck.layers import attention as rules

    block = block_of(trace)
    values, grads = torch_reference(trace, block)
    n = trace.x.shape[0]
    cache = trace.cache
    mha_cache = cache[0] if block.kind == "transformer_encoder" else cache
    core = mha_cache if block.kind == "sdpa" else mha_cache[1]
    grad_o = grads["O"]
    rule_q, rule_k, rule_v = rules.attention_backward(grad_o, core)
    probe = (core[0], np.broadcast_to(np.eye(block.t), core[3].shape), core[2], core[3], 1.0)
    rule_scores = rules.attention_backward(grad_o, probe)[0]  # K = I, scale 1: the rule's dL/dS
    head = f"{block.title}, head 0" + (" (the only head)" if block.heads == 1 else f" of {block.heads}")
    steps = [_input_step(trace, block, values, grads, core)]
    steps.append(_scores_step(block, head, values, grads, core, rule_q, rule_k))
    steps.append(_softmax_step(block, head, values, grads, core, rule_scores))
    steps.append(_weighted_sum_step(trace, block, head, values, grads, mha_cache, rule_v))
    if block.kind != "sdpa":
        steps.append(_join_step(trace, block, values, grads, mha_cache))
    if block.kind == "transformer_encoder":
        steps.extend(_encoder_steps(trace, block, values, grads, n))
    steps[0].checks.append(_compare(f"{trace.name_out}: the torch recomputation of this explanation", {"torch module": trace.torch_y, "torch recomputed": values["y"].reshape(n, -1)}))
    return steps


def _input_step(trace: LayerTrace, block: Block, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], core: Any) -> Step:
    x = values["x"]
    d, width, name_in = block.d, block.width, trace.name_in
    if block.kind == "sdpa":
        step = Step(f"{block.title}: the input holds [Q | K | V] per position")
        step.text.append(f"{name_in} is ({block.t}, {3 * d}) per sample: Q = columns 0..{d - 1}, K = columns {d}..{2 * d - 1}, V = columns {2 * d}..{3 * d - 1}; one head, d = {d}")
        lecture = [x[..., i * d : (i + 1) * d][:, None] for i in range(3)]
        dx = np.concatenate([grads["Q"][:, 0], grads["K"][:, 0], grads["V"][:, 0]], axis=-1)
        step.text.append(f"backward: dL/d{name_in} = [dL/dQ | dL/dK | dL/dV] side by side (each derived below)")
        grad_checks = [_compare(f"dL/d{name_in}", {"lecture formula (torch's dL/dQ, dL/dK, dL/dV joined)": dx.reshape(x.shape[0], -1), "torch retain_grad": trace.grad_x})]
    else:
        w = trace.params[block.prefix + "in_proj_weight"]
        b = trace.params[block.prefix + "in_proj_bias"]
        step = Step(f"{block.title}: Q, K, V projections and the split into {block.heads} heads")
        step.text.append(
            f"Q = X W_q^T + b_q, K = X W_k^T + b_k, V = X W_v^T + b_v at every position: W_q, W_k, W_v are rows 0..{width - 1}, {width}..{2 * width - 1}, {2 * width}..{3 * width - 1} of in_proj_weight {w.shape}"
        )
        step.text.append(f"split into heads: head h takes columns h*d .. (h+1)*d - 1 of Q, K, V (d = D / H = {width} / {block.heads} = {d}), a reshape (T, D) -> (H, T, d)")
        step.text.append(f"head 0, sample 0: Q_0 = {matrix_text(values['Q'][0, 0])}")
        qkv = x @ w.T + b
        lecture = [split_heads(qkv[..., i * width : (i + 1) * width], block.heads) for i in range(3)]
        d_qkv = np.concatenate([join_heads(grads[name]) for name in "QKV"], axis=-1)
        step.text.append(
            f"backward: dL/d(QKV) = the heads' dL/dQ_h, dL/dK_h, dL/dV_h joined back (torch's, derived below); dL/dW_in = sum over n, t of dL/d(QKV)^T x, "
            f"dL/db_in = sum of dL/d(QKV), dL/d{name_in} (attention path) = dL/d(QKV) W_in"
        )
        x_grad = grads["x_attn"] if block.kind == "transformer_encoder" else grads["x"]
        grad_checks = [
            _compare(f"dL/d{block.prefix}in_proj_weight {w.shape}", {"lecture formula": np.einsum("nto,nti->oi", d_qkv, x), "torch .grad": trace.param_grads[block.prefix + "in_proj_weight"]}),
            _compare(f"dL/d{block.prefix}in_proj_bias", {"lecture formula": d_qkv.sum(axis=(0, 1)), "torch .grad": trace.param_grads[block.prefix + "in_proj_bias"]}),
            _compare(f"dL/d{name_in} through the attention", {"lecture formula": d_qkv @ w, "torch retain_grad": x_grad}),
        ]
        step.text.append("(the hand-written rule's in-projection gradients are checked in the bulk step: they also depend on its attention backward, derived below)")
    step.latex.append(r"Q = X W_q^\top + b_q,\quad K = X W_k^\top + b_k,\quad V = X W_v^\top + b_v,\quad Q_h = Q_{:,\, h d : (h+1) d}")
    for name, lec, num in zip("QKV", lecture, core[:3]):
        step.checks.append(_compare(f"{name} (all heads)", {"lecture formula": lec, "torch": values[name], "numpy forward": num}))
    step.checks.extend(grad_checks)
    return step


def _scores_step(block: Block, head: str, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], core: Any, rule_q: np.ndarray, rule_k: np.ndarray) -> Step:
    d = block.d
    q, k = values["Q"], values["K"]
    root = math.sqrt(d)
    step = Step(f"{head}: scores S = Q K^T / sqrt(d)" + (" with the causal mask" if block.causal else ""))
    step.text.append(f"S[i, j] = q_i . k_j / sqrt(d): query i against key j, d = {d}, so 1/sqrt(d) = {1 / root:.6g}")
    step.text.append("why 1/sqrt(d): a dot product of d unit-variance terms has variance d; dividing by sqrt(d) keeps the scores O(1), so the softmax does not saturate")
    if block.causal:
        step.text.append("causal mask: query i may see keys j <= i only; entries above the diagonal are set to -inf, so softmax gives them weight 0 (and no gradient)")
    s_shown = np.where(block.mask, values["S"][0, 0], -np.inf)
    step.text.append(f"sample 0, head 0: S (masked) = {matrix_text(s_shown)}")
    step.text.append("backward (dL/dS from torch; the softmax step derives it): dL/dQ = dL/dS K / sqrt(d), dL/dK = dL/dS^T Q / sqrt(d)")
    step.latex.append(
        r"S = \frac{Q K^\top}{\sqrt{d}} + M,\quad M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases},\qquad \frac{\partial L}{\partial Q} = \frac{1}{\sqrt{d}} \frac{\partial L}{\partial S} K,\quad \frac{\partial L}{\partial K} = \frac{1}{\sqrt{d}} \Big(\frac{\partial L}{\partial S}\Big)^{\!\top} Q"
    )
    numpy_scores = core[0] @ np.swapaxes(core[1], -1, -2) * core[4]
    step.checks.append(_compare("S before the mask (all heads)", {"lecture formula": q @ np.swapaxes(k, -1, -2) / root, "torch": values["S"], "numpy forward (q k^T times its scale)": numpy_scores}))
    g_s = grads["S"]
    step.checks.append(_compare("dL/dQ", {"lecture formula": g_s @ k / root, "torch retain_grad": grads["Q"], "numpy rule": rule_q}))
    step.checks.append(_compare("dL/dK", {"lecture formula": np.swapaxes(g_s, -1, -2) @ q / root, "torch retain_grad": grads["K"], "numpy rule": rule_k}))
    return step


def _softmax_step(block: Block, head: str, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], core: Any, rule_scores: np.ndarray) -> Step:
    weights, g_p = values["P"], grads["P"]
    step = Step(f"{head}: P = softmax(S) row by row; its Jacobian diag(p) - p p^T")
    step.text.append("P[i, j] = exp(S[i, j]) / sum over visible j' of exp(S[i, j']): each row is a distribution over the keys query i sees")
    step.text.append(f"sample 0, head 0: P = {matrix_text(weights[0, 0])}")
    row = block.t - 1
    p = weights[0, 0, row]
    jacobian = np.diag(p) - np.outer(p, p)
    step.text.append(f"row i = {row} (it sees every key): p = {vector_text(p)}; dp_j/ds_k = p_j (delta_jk - p_k), so J = diag(p) - p p^T = {matrix_text(jacobian)}")
    step.text.append("J is symmetric, so dL/ds = J dL/dp = p * (dL/dp - (dL/dp . p)): for every row at once dL/dS = P * (dL/dP - rowsum(dL/dP * P))")
    step.latex.append(
        r"P_{i\cdot} = \operatorname{softmax}(S_{i\cdot}),\quad J_i = \operatorname{diag}(p_i) - p_i p_i^\top,\quad \frac{\partial L}{\partial S} = P \odot \Big(\frac{\partial L}{\partial P} - \operatorname{rowsum}\big(\frac{\partial L}{\partial P} \odot P\big)\Big)"
    )
    step.checks.append(_compare("P (all heads)", {"lecture formula": softmax_rows(values["S"], block.mask), "torch": weights, "numpy forward": core[3]}))
    step.checks.append(_compare(f"row {row} of head 0, sample 0: J dL/dp with J written out", {"lecture formula": jacobian @ g_p[0, 0, row], "torch retain_grad": grads["S"][0, 0, row]}))
    lecture = weights * (g_p - (g_p * weights).sum(axis=-1, keepdims=True))
    step.checks.append(_compare("dL/dS (all heads)", {"lecture formula": lecture, "torch retain_grad": grads["S"], "numpy rule (attention_backward with K = I, scale 1)": rule_scores}))
    return step


def _weighted_sum_step(trace: LayerTrace, block: Block, head: str, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], mha_cache: Any, rule_v: np.ndarray) -> Step:
    weights, v, g_o = values["P"], values["V"], grads["O"]
    n = weights.shape[0]
    step = Step(f"{head}: O = P V; dL/dV = P^T dL/dO, dL/dP = dL/dO V^T")
    step.text.append("each output row is the softmax-weighted average of the value rows: O[i] = sum over j of P[i, j] v_j")
    step.text.append(f"sample 0, head 0: O_0 = {matrix_text(values['O'][0, 0])}")
    step.text.append("backward (dL/dO from torch): a matrix product, so dL/dP = dL/dO V^T and dL/dV = P^T dL/dO (key j collects from every query that attends to it)")
    step.latex.append(r"O = P V,\qquad \frac{\partial L}{\partial P} = \frac{\partial L}{\partial O} V^\top,\qquad \frac{\partial L}{\partial V} = P^\top \frac{\partial L}{\partial O}")
    numpy_o = trace.y.reshape(n, 1, block.t, block.d) if block.kind == "sdpa" else split_heads(mha_cache[2], block.heads)
    step.checks.append(_compare("O (all heads)", {"lecture formula": weights @ v, "torch": values["O"], "numpy forward": numpy_o}))
    step.checks.append(_compare("dL/dP", {"lecture formula": g_o @ np.swapaxes(v, -1, -2), "torch retain_grad": grads["P"]}))
    step.checks.append(_compare("dL/dV", {"lecture formula": np.swapaxes(weights, -1, -2) @ g_o, "torch retain_grad": grads["V"], "numpy rule": rule_v}))
    return step


def _join_step(trace: LayerTrace, block: Block, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], mha_cache: Any) -> Step:
    from derivcheck.layers import attention as rules

    prefix = block.prefix
    w, b = trace.params[prefix + "out_proj.weight"], trace.params[prefix + "out_proj.bias"]
    merged = values["merged"]
    out_name = "attn" if block.kind == "transformer_encoder" else "y"
    g_out = grads[out_name]
    step = Step(f"{block.title}: the {block.heads} heads joined and the output projection")
    step.text.append(f"join: the heads' outputs O_h (T, d) side by side -> (T, D) = ({block.t}, {block.width}), head h in columns h*d .. (h+1)*d - 1; then attn = joined W_o^T + b_o")
    step.text.append("backward: dL/dW_o = sum over n, t of dL/dattn^T joined, dL/db_o = sum of dL/dattn, dL/djoined = dL/dattn W_o, split back into heads: dL/dO_h")
    step.latex.append(r"A = [O_1 \,|\, \cdots \,|\, O_H]\, W_o^\top + b_o,\qquad \frac{\partial L}{\partial O_h} = \Big(\frac{\partial L}{\partial A} W_o\Big)_{:,\, h d : (h+1) d}")
    local = {name: trace.params[prefix + name] for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}
    _, rule = rules.mha_backward(g_out, mha_cache, local, block.heads)
    step.checks.append(_compare("joined heads", {"lecture formula": join_heads(values["O"]), "torch": merged, "numpy forward": mha_cache[2]}))
    step.checks.append(
        _compare(
            f"{prefix}out_proj.weight {w.shape}: dL/dW_o",
            {"lecture formula": np.einsum("nto,nti->oi", g_out, merged), "torch .grad": trace.param_grads[prefix + "out_proj.weight"], "numpy rule": rule["out_proj.weight"]},
        )
    )
    step.checks.append(
        _compare(f"{prefix}out_proj.bias: dL/db_o", {"lecture formula": g_out.sum(axis=(0, 1)), "torch .grad": trace.param_grads[prefix + "out_proj.bias"], "numpy rule": rule["out_proj.bias"]})
    )
    step.checks.append(_compare("dL/dO (all heads)", {"lecture formula": split_heads(g_out @ w, block.heads), "torch retain_grad": grads["O"]}))
    lecture = merged @ w.T + b
    step.checks.append(_compare("attention output", {"lecture formula": lecture, "torch": values[out_name]}))
    return step


# -- the encoder block -----------------------------------------------------------------
def _encoder_steps(trace: LayerTrace, block: Block, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], n: int) -> list[Step]:
    from derivcheck.layers import attention as rules

    mha_cache, ln1, _h, pre, (activation, act_cache), act, ln2 = trace.cache
    name_in = trace.name_in
    steps = [
        _residual_step(
            f"{block.title}: residual 1, s1 = {name_in} + attn({name_in})", "s1", name_in, values["x"] + values["attn"], values, grads["s1"] + grads["x_attn"], trace.grad_x.reshape(values["x"].shape)
        )
    ]
    steps[0].text.insert(0, "post-norm, PyTorch's default (norm_first = False), dropout 0: s1 = x + attn(x), h = LayerNorm1(s1), s2 = h + FF(h), y = LayerNorm2(s2)")
    steps.extend(_encoder_norm(trace, block, 1, "s1", "h", values, grads, grads["h"], ln1, rules))
    steps.append(_feed_forward_step(trace, block, values, grads, pre, act, activation, act_cache))
    steps.append(_residual_step(f"{block.title}: residual 2, s2 = h + FF(h)", "s2", "h", values["h"] + values["ff"], values, grads["s2"] + grads["h_ff"], grads["h"]))
    steps.extend(_encoder_norm(trace, block, 2, "s2", trace.name_out, values, grads, trace.grad_y.reshape(values["s2"].shape), ln2, rules))
    return steps


def _residual_step(title: str, name: str, skip: str, lecture: np.ndarray, values: dict[str, np.ndarray], lecture_grad: np.ndarray, torch_grad: np.ndarray) -> Step:
    step = Step(title)
    step.text.append(
        f"{name} = {skip} + branch({skip}): the sum hands dL/d{name} unchanged to both paths, so dL/d{skip} = dL/d{name} (the skip path, the identity) + the branch's own backward of dL/d{name}"
    )
    step.latex.append(r"s = x + F(x),\qquad \frac{\partial L}{\partial x} = \frac{\partial L}{\partial s} + J_F^\top \frac{\partial L}{\partial s}")
    step.checks.append(_compare(name, {"lecture formula": lecture, "torch": values[name]}))
    step.checks.append(_compare(f"dL/d{skip}", {"lecture formula (skip + branch, torch's)": lecture_grad, "torch retain_grad": torch_grad}))
    return step


def _encoder_norm(
    trace: LayerTrace, block: Block, k: int, name_in: str, name_out: str, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], grad_y: np.ndarray, cache: Any, rules: Any
) -> list[Step]:
    weight, bias = trace.params[f"norm{k}.weight"], trace.params[f"norm{k}.bias"]
    rule_x, rule_w, rule_b = rules._layer_norm_backward(grad_y, cache, weight)
    out_values = values["h"] if k == 1 else values["y"]
    norm = Normalization(
        title=f"{block.title}, LayerNorm {k}",
        name_in=name_in,
        name_out=name_out,
        x=values[name_in],
        gamma=weight,
        beta=bias,
        grad_y=grad_y,
        axes=(2,),
        over=f"the {block.width} features of each position of each sample",
        eps=float(trace.layer.options["eps"]),
        running=None,
        torch_y=out_values,
        grad_x=grads[name_in],
        grad_gamma=trace.param_grads[f"norm{k}.weight"],
        grad_beta=trace.param_grads[f"norm{k}.bias"],
        numpy_x_hat=cache[0],
        rule_x=rule_x,
        rule_gamma=rule_w,
        rule_beta=rule_b,
        param_axes=(0, 1),
        param_names=(f"norm{k}.weight", f"norm{k}.bias"),
    )
    return normalization_steps(norm)


def _activation_derivative(kind: str, z: np.ndarray) -> tuple[np.ndarray, str]:
    if kind == "gelu":
        cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
        return cdf + z * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi), "gelu(z) = z Phi(z), gelu'(z) = Phi(z) + z phi(z)"
    return (z > 0).astype(float), "relu'(z) = 1 for z > 0, else 0"


def _feed_forward_step(trace: LayerTrace, block: Block, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], pre: np.ndarray, act: np.ndarray, activation: Any, act_cache: Any) -> Step:
    p = trace.params
    kind = str(trace.layer.options["activation"])
    h, g_ff = values["h"], grads["ff"]
    step = Step(f"{block.title}: feed-forward FF(h) = W2 {kind}(W1 h + b1) + b2 at every position")
    derivative, formula = _activation_derivative(kind, values["pre"])
    step.text.append(f"z = W1 h + b1 ({p['linear1.weight'].shape[0]} hidden units), a = {kind}(z), FF = W2 a + b2; {formula}")
    step.text.append("backward: dL/dW2 = sum dL/dFF^T a, dL/da = dL/dFF W2, dL/dz = act'(z) * dL/da, dL/dW1 = sum dL/dz^T h, dL/dh (FF path) = dL/dz W1")
    step.latex.append(
        r"\frac{\partial L}{\partial W_2} = \sum_{n,t} \delta_{F}^\top a,\quad \delta_z = \operatorname{act}'(z) \odot \delta_F W_2,\quad \frac{\partial L}{\partial W_1} = \sum_{n,t} \delta_z^\top h,\quad \frac{\partial L}{\partial h} = \delta_z W_1"
    )
    lecture_pre = h @ p["linear1.weight"].T + p["linear1.bias"]
    step.checks.append(_compare("z = W1 h + b1", {"lecture formula": lecture_pre, "torch": values["pre"], "numpy forward": pre}))
    step.checks.append(_compare("FF(h)", {"lecture formula": values["act"] @ p["linear2.weight"].T + p["linear2.bias"], "torch": values["ff"]}))
    step.checks.append(_compare("dL/dW2 (linear2.weight)", {"lecture formula": np.einsum("nto,nti->oi", g_ff, values["act"]), "torch .grad": trace.param_grads["linear2.weight"]}))
    step.checks.append(_compare("dL/db2 (linear2.bias)", {"lecture formula": g_ff.sum(axis=(0, 1)), "torch .grad": trace.param_grads["linear2.bias"]}))
    g_act = grads["act"]
    rule_pre = activation.numpy_backward(g_act.reshape(-1, g_act.shape[-1]), act_cache, {})[0].reshape(pre.shape)
    step.checks.append(_compare("dL/da", {"lecture formula": g_ff @ p["linear2.weight"], "torch retain_grad": g_act}))
    step.checks.append(_compare("dL/dz", {"lecture formula": derivative * g_act, "torch retain_grad": grads["pre"], "numpy rule": rule_pre}))
    g_pre = grads["pre"]
    step.checks.append(_compare("dL/dW1 (linear1.weight)", {"lecture formula": np.einsum("nto,nti->oi", g_pre, h), "torch .grad": trace.param_grads["linear1.weight"]}))
    step.checks.append(_compare("dL/db1 (linear1.bias)", {"lecture formula": g_pre.sum(axis=(0, 1)), "torch .grad": trace.param_grads["linear1.bias"]}))
    step.checks.append(_compare("dL/dh through the feed-forward", {"lecture formula": g_pre @ p["linear1.weight"], "torch retain_grad": grads["h_ff"]}))
    return step


# -- embedding -------------------------------------------------------------------------
def explain_embedding(trace: LayerTrace) -> list[Step]:
    layer = trace.layer
    weight = trace.params["weight"]
    vocab, dim = weight.shape
    ids = np.rint(trace.x).astype(np.int64)
    n, t = ids.shape
    g = trace.grad_y.reshape(n, t, dim)
    _, rule = trace.numpy_rule()
    step = Step(f"Layer {trace.index} ({layer.kind}): a row lookup; dL/dE is a scatter-add")
    step.text.append(f"{trace.name_out}[t] = E[id_t]: row id_t of the table E ({vocab}, {dim}); sample 0 ids = {ids[0].tolist()}")
    step.text.append(f"sample 0: {trace.name_out}[0] = E[{ids[0, 0]}] = {vector_text(weight[ids[0, 0]])}")
    step.text.append(f"backward: dL/dE[v] = sum over every (sample, position) with id v of dL/d{trace.name_out} there (rows add up when a token repeats); the ids are not differentiable")
    used = np.bincount(ids.ravel(), minlength=vocab)
    unused = [v for v in range(vocab) if used[v] == 0]
    step.text.append(f"token counts in the batch {used.tolist()}" + (f"; rows {unused} are never looked up: their gradient is 0" if unused else ""))
    step.latex.append(
        r"y_t = E_{\mathrm{id}_t},\qquad \frac{\partial L}{\partial E} = \operatorname{onehot}(\mathrm{id})^\top \frac{\partial L}{\partial y} \;\;(\text{summed over samples and positions})"
    )
    lecture_y = weight[ids].reshape(n, -1)
    step.checks.append(_compare(trace.name_out, {"lecture formula": lecture_y, "torch": trace.torch_y, "numpy forward": trace.y}))
    one_hot = np.eye(vocab)[ids.ravel()]
    lecture = one_hot.T @ g.reshape(-1, dim)
    step.checks.append(_compare(f"dL/dE {weight.shape}", {"lecture formula (one-hot^T G)": lecture, "torch .grad": trace.param_grads["weight"], "numpy rule": rule["weight"]}))
    return [step]
