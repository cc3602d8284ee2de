"""Attention: scaled dot-product attention, multi-head self-attention and a one-block
Transformer encoder layer (post-norm, PyTorch's default ``norm_first=False``).

Samples are sequences ``(T, D)`` (``batch_first=True``).

- ``sdpa``: parameter-free ``softmax(q k^T / sqrt(d) [+ causal mask]) v`` on an input
  ``(T, 3d)`` holding ``[q | k | v]`` per position; output ``(T, d)``
  (``torch.nn.functional.scaled_dot_product_attention``).
- ``multihead_attention``: ``nn.MultiheadAttention(D, heads)`` as self-attention,
  parameters ``in_proj_weight (3D, D)``, ``in_proj_bias``, ``out_proj.weight``,
  ``out_proj.bias``.
- ``transformer_encoder``: ``nn.TransformerEncoderLayer(D, heads, dim_feedforward,
  dropout=0)``: ``h = LN1(x + MHA(x))``, ``y = LN2(h + W2 act(W1 h + b1) + b2)``.

Option ``causal = true`` lets position t attend to positions ``<= t`` only.

The symbolic engine's local rule: per-position linear maps (one dot-product cell), one
attention cell per head and query (``softmax`` of ``q . k_s / sqrt(d)`` over the visible
keys, times ``v``), mean/variance/normalise cells for the LayerNorms, a residual-add cell.
The numpy engine is the hand-written backward of each piece
(``dS = P * (dP - rowsum(dP * P))`` for the softmax, ...).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.base import Layer, Option, positive_int
from derivcheck.layers.norm import _add_normalization, normalize, normalize_backward
from derivcheck.layers.rules import LocalRule, RuleBuilder, dot_cell, param_offsets


# -- numpy pieces ----------------------------------------------------------------------
def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> tuple[np.ndarray, Any]:
    """``q, k, v`` ``(N, H, T, d)`` -> output ``(N, H, T, d)`` and a cache."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        t = q.shape[-2]
        scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v, (q, k, v, weights, scale)


def attention_backward(grad_out: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hand-written backward of :func:`attention_forward`: ``(dq, dk, dv)``."""
    q, k, v, weights, scale = cache
    grad_v = np.swapaxes(weights, -1, -2) @ grad_out
    grad_weights = grad_out @ np.swapaxes(v, -1, -2)
    grad_scores = weights * (grad_weights - (grad_weights * weights).sum(axis=-1, keepdims=True)) * scale
    return grad_scores @ k, np.swapaxes(grad_scores, -1, -2) @ q, grad_v


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    n, t, d = x.shape
    return x.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    n, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, t, h * d)


def mha_forward(x: np.ndarray, p: dict[str, np.ndarray], heads: int, causal: bool) -> tuple[np.ndarray, Any]:
    """Self-attention ``(N, T, D) -> (N, T, D)`` with PyTorch's parameter layout."""
    d = x.shape[-1]
    qkv = x @ p["in_proj_weight"].T + p["in_proj_bias"]
    q, k, v = (_split_heads(qkv[..., i * d : (i + 1) * d], heads) for i in range(3))
    out, core = attention_forward(q, k, v, causal)
    merged = _merge_heads(out)
    return merged @ p["out_proj.weight"].T + p["out_proj.bias"], (x, core, merged)


def mha_backward(grad_y: np.ndarray, cache: Any, p: dict[str, np.ndarray], heads: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x, core, merged = cache
    grads = {
        "out_proj.weight": np.einsum("nto,nti->oi", grad_y, merged),
        "out_proj.bias": grad_y.sum(axis=(0, 1)),
    }
    grad_merged = grad_y @ p["out_proj.weight"]
    dq, dk, dv = attention_backward(_split_heads(grad_merged, heads), core)
    grad_qkv = np.concatenate([_merge_heads(dq), _merge_heads(dk), _merge_heads(dv)], axis=-1)
    grads["in_proj_weight"] = np.einsum("nto,nti->oi", grad_qkv, x)
    grads["in_proj_bias"] = grad_qkv.sum(axis=(0, 1))
    return grad_qkv @ p["in_proj_weight"], grads


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> tuple[np.ndarray, Any]:
    x_hat, inv = normalize(x, eps, -1)
    return x_hat * weight + bias, (x_hat, inv)


def _layer_norm_backward(grad_y: np.ndarray, cache: Any, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x_hat, inv = cache
    dx = normalize_backward(grad_y * weight, x_hat, inv, -1)
    return dx, (grad_y * x_hat).sum(axis=(0, 1)), grad_y.sum(axis=(0, 1))


# -- symbolic pieces -------------------------------------------------------------------
def _attention_cell(d: int, visible: int) -> Any:
    """Inputs ``q (d), k_1..k_S (S*d), v_1..v_S (S*d)`` -> ``d`` outputs."""

    def fn(ins: list[sp.Expr], _params: list[sp.Expr]) -> list[sp.Expr]:
        q = ins[:d]
        keys = [ins[d + s * d : d + (s + 1) * d] for s in range(visible)]
        values = [ins[d + visible * d + s * d : d + visible * d + (s + 1) * d] for s in range(visible)]
        exps = [sp.exp(sp.Add(*[a * b for a, b in zip(q, key)]) / sp.sqrt(d)) for key in keys]
        total = sp.Add(*exps)
        return [sp.Add(*[e * value[j] for e, value in zip(exps, values)]) / total for j in range(d)]

    return fn


def linear_stage(builder: RuleBuilder, inputs: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``y_t = W x_t + b`` at every position: `inputs` ``(T, Din)`` value indices, `weight`
    ``(Dout, Din)`` and `bias` ``(Dout,)`` parameter indices; returns ``(T, Dout)``."""
    d_in = inputs.shape[1]
    fn, n_params = dot_cell(d_in, bias is not None)
    cell = builder.cell(fn, d_in, n_params, ("dot", d_in, bias is not None))
    rows, params = [], []
    for t in range(inputs.shape[0]):
        for o in range(weight.shape[0]):
            rows.append(inputs[t])
            params.append(list(weight[o]) + ([int(bias[o])] if bias is not None else []))
    return builder.stage(cell, rows, params, 1)[:, 0].reshape(inputs.shape[0], weight.shape[0])


def attention_stage(builder: RuleBuilder, q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, causal: bool) -> np.ndarray:
    """Scaled dot-product attention per head and query; `q, k, v` ``(T, D)`` value
    indices; returns the merged heads ``(T, D)``."""
    t_len, d_model = q.shape
    d = d_model // heads
    out = np.empty((t_len, d_model), dtype=np.int64)
    for t in range(t_len):
        visible = t + 1 if causal else t_len
        cell = builder.cell(_attention_cell(d, visible), d + 2 * visible * d, 0, ("attention", d, visible))
        rows = []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            rows.append(np.concatenate([q[t, cols], k[:visible, cols].ravel(), v[:visible, cols].ravel()]))
        written = builder.stage(cell, rows, np.zeros((heads, 0)), d)
        out[t] = written.ravel()
    return out


def add_stage(builder: RuleBuilder, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cell = builder.cell(lambda ins, _p: [ins[0] + ins[1]], 2, 0, ("add",))
    return builder.stage(cell, np.stack([a.ravel(), b.ravel()], axis=1), np.zeros((a.size, 0)), 1)[:, 0].reshape(a.shape)


def layer_norm_stage(builder: RuleBuilder, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    groups = list(x)
    out = _add_normalization(builder, groups, [list(weight)] * len(groups), [list(bias)] * len(groups), eps, True)
    return out.reshape(x.shape)


def _check_heads(d_model: int, heads: int) -> None:
    if d_model % heads:
        raise ValueError(f"embed_dim {d_model} must be divisible by num_heads {heads}")


def _causal_mask(t: int) -> Any:
    import torch

    return torch.nn.Transformer.generate_square_subsequent_mask(t, dtype=torch.float64)


class ScaledDotProductAttention(Layer):
    """See the module docstring (``sdpa``)."""

    kind = "sdpa"
    OPTIONS = (Option("causal", bool, default=False),)

    def output_shape(self, in_shape):
        if len(in_shape) != 2 or in_shape[1] % 3:
            raise ValueError(f"sdpa expects samples (T, 3d) holding [q | k | v], got {in_shape}")
        return (in_shape[0], in_shape[1] // 3)

    @property
    def d(self) -> int:
        return self.in_shape[1] // 3

    def work_per_sample(self) -> float:
        t_len = float(self.in_shape[0])
        return 2 * t_len * t_len * self.d + super().work_per_sample()

    def held_values_per_sample(self) -> float:
        t_len = float(self.in_shape[0])
        return 4 * t_len * t_len  # scores, probabilities and their backward

    def _qkv_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = np.arange(self.in_size, dtype=np.int64).reshape(self.in_shape)
        return index[:, : self.d], index[:, self.d : 2 * self.d], index[:, 2 * self.d :]

    def sympy_forward(self, inputs, params):
        q, k, v = self._qkv_index()
        t_len = q.shape[0]
        outputs = []
        for t in range(t_len):
            visible = t + 1 if self.options["causal"] else t_len
            ins = [inputs[i] for i in np.concatenate([q[t], k[:visible].ravel(), v[:visible].ravel()])]
            outputs += _attention_cell(self.d, visible)(ins, [])
        return outputs

    def local_rule(self) -> LocalRule:
        builder = RuleBuilder(self.in_size)
        out = attention_stage(builder, *self._qkv_index(), 1, bool(self.options["causal"]))
        return builder.build(out)

    def numpy_forward(self, x, params):
        xs = x.reshape((x.shape[0], 1) + self.in_shape)
        d = self.d
        out, cache = attention_forward(xs[..., :d], xs[..., d : 2 * d], xs[..., 2 * d :], bool(self.options["causal"]))
        return out.reshape(x.shape[0], -1), cache

    def numpy_backward(self, grad_y, cache, params):
        dq, dk, dv = attention_backward(grad_y.reshape((grad_y.shape[0], 1) + self.out_shape), cache)
        return np.concatenate([dq, dk, dv], axis=-1).reshape(grad_y.shape[0], -1), {}

    def torch_module(self):
        import torch

        causal, d = bool(self.options["causal"]), self.d

        class SDPA(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return torch.nn.functional.scaled_dot_product_attention(x[..., :d], x[..., d : 2 * d], x[..., 2 * d :], is_causal=causal)

        return SDPA()


class _SelfAttentionBase(Layer):
    def _model_dims(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        d_model, heads = self.options["embed_dim"], self.options["num_heads"]
        if len(in_shape) != 2 or in_shape[1] != d_model:
            raise ValueError(f"{self.kind} expects sequences of shape (T, {d_model}), got {in_shape}")
        _check_heads(d_model, heads)
        return in_shape

    def output_shape(self, in_shape):
        return self._model_dims(in_shape)

    def held_values_per_sample(self) -> float:
        t_len, d_model = (float(v) for v in self.in_shape)
        return 4 * t_len * t_len * float(self.options["num_heads"]) + 8 * t_len * d_model

    def work_per_sample(self) -> float:
        t_len, d_model = (float(v) for v in self.in_shape)
        return float(self.param_count()) * t_len + 2 * t_len * t_len * d_model + super().work_per_sample()

    @property
    def heads(self) -> int:
        return int(self.options["num_heads"])

    @property
    def causal(self) -> bool:
        return bool(self.options["causal"])

    def _seq(self, x: np.ndarray) -> np.ndarray:
        return x.reshape((x.shape[0],) + self.in_shape)

    def _mha_params(self, params: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
        return {name: params[prefix + name] for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}

    def _mha_stages(self, builder: RuleBuilder, x: np.ndarray, offsets: dict[str, np.ndarray], prefix: str) -> np.ndarray:
        d = self.options["embed_dim"]
        w_in, b_in = offsets[prefix + "in_proj_weight"], offsets[prefix + "in_proj_bias"]
        q, k, v = (linear_stage(builder, x, w_in[i * d : (i + 1) * d], b_in[i * d : (i + 1) * d]) for i in range(3))
        merged = attention_stage(builder, q, k, v, self.heads, self.causal)
        return linear_stage(builder, merged, offsets[prefix + "out_proj.weight"], offsets[prefix + "out_proj.bias"])

    def _mha_shapes(self, prefix: str) -> dict[str, tuple[int, ...]]:
        d = self.options["embed_dim"]
        return {prefix + "in_proj_weight": (3 * d, d), prefix + "in_proj_bias": (3 * d,), prefix + "out_proj.weight": (d, d), prefix + "out_proj.bias": (d,)}

    def init_params(self, rng):
        params = {}
        for name, shape in self.param_shapes().items():
            fan_in = shape[-1] if len(shape) == 2 else shape[0]
            bound = 1.0 / math.sqrt(fan_in)
            if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                params[name] = 1.0 + rng.uniform(-0.3, 0.3, size=shape)
            else:
                params[name] = rng.uniform(-bound, bound, size=shape)
        return params

    def sympy_forward(self, inputs, params):
        raise NotImplementedError(f"{self.kind} is derived through its local rule only")


class MultiheadAttention(_SelfAttentionBase):
    """See the module docstring (``multihead_attention``)."""

    kind = "multihead_attention"
    OPTIONS = (
        Option("embed_dim", int, check=positive_int),
        Option("num_heads", int, check=positive_int),
        Option("causal", bool, default=False),
    )

    def param_shapes(self):
        return self._mha_shapes("")

    def local_rule(self) -> LocalRule:
        builder = RuleBuilder(self.in_size)
        x = np.arange(self.in_size, dtype=np.int64).reshape(self.in_shape)
        return builder.build(self._mha_stages(builder, x, param_offsets(self.param_shapes()), ""))

    def numpy_forward(self, x, params):
        y, cache = mha_forward(self._seq(x), self._mha_params(params, ""), self.heads, self.causal)
        return y.reshape(x.shape[0], -1), cache

    def numpy_backward(self, grad_y, cache, params):
        dx, grads = mha_backward(self._seq(grad_y), cache, self._mha_params(params, ""), self.heads)
        return dx.reshape(grad_y.shape[0], -1), grads

    def torch_module(self):
        import torch

        layer = self
        base = torch.nn.MultiheadAttention

        class SelfAttention(base):  # the real module, called as self-attention
            def forward(self, x: Any) -> Any:
                mask = _causal_mask(x.shape[1]).to(x) if layer.causal else None
                return super().forward(x, x, x, attn_mask=mask, need_weights=False)[0]

        return SelfAttention(self.options["embed_dim"], self.heads, batch_first=True, dtype=torch.float64)


class TransformerEncoder(_SelfAttentionBase):
    """See the module docstring (``transformer_encoder``)."""

    kind = "transformer_encoder"
    OPTIONS = (
        Option("embed_dim", int, check=positive_int, help="d_model"),
        Option("num_heads", int, check=positive_int),
        Option("dim_feedforward", int, check=positive_int),
        Option("activation", str, default="relu", check=lambda v: None if v in ("relu", "gelu") else "'relu' or 'gelu'"),
        Option("causal", bool, default=False),
        Option("eps", float, default=1e-5, check=lambda v: None if v > 0 else "a number > 0"),
    )

    def param_shapes(self):
        d, f = self.options["embed_dim"], self.options["dim_feedforward"]
        return {
            **self._mha_shapes("self_attn."),
            "linear1.weight": (f, d), "linear1.bias": (f,), "linear2.weight": (d, f), "linear2.bias": (d,),
            "norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
        }  # fmt: skip

    def _activation(self, value: sp.Expr) -> sp.Expr:
        if self.options["activation"] == "relu":
            return sp.Max(0, value)
        return value * (1 + sp.erf(value / sp.sqrt(2))) / 2

    def local_rule(self) -> LocalRule:
        builder = RuleBuilder(self.in_size)
        offsets = param_offsets(self.param_shapes())
        eps = self.options["eps"]
        x = np.arange(self.in_size, dtype=np.int64).reshape(self.in_shape)
        attended = self._mha_stages(builder, x, offsets, "self_attn.")
        h = layer_norm_stage(builder, add_stage(builder, x, attended), offsets["norm1.weight"], offsets["norm1.bias"], eps)
        hidden = linear_stage(builder, h, offsets["linear1.weight"], offsets["linear1.bias"])
        act = builder.cell(lambda ins, _p: [self._activation(ins[0])], 1, 0, ("activation", self.options["activation"]))
        activated = builder.stage(act, hidden.reshape(-1, 1), np.zeros((hidden.size, 0)), 1)[:, 0].reshape(hidden.shape)
        ff = linear_stage(builder, activated, offsets["linear2.weight"], offsets["linear2.bias"])
        out = layer_norm_stage(builder, add_stage(builder, h, ff), offsets["norm2.weight"], offsets["norm2.bias"], eps)
        return builder.build(out)

    def numpy_forward(self, x, params):
        from derivcheck.layers.activations import GELU, ReLU

        eps = self.options["eps"]
        xs = self._seq(x)
        attended, mha_cache = mha_forward(xs, self._mha_params(params, "self_attn."), self.heads, self.causal)
        h, ln1 = _layer_norm(xs + attended, params["norm1.weight"], params["norm1.bias"], eps)
        pre = h @ params["linear1.weight"].T + params["linear1.bias"]
        activation = ReLU() if self.options["activation"] == "relu" else GELU()
        act, act_cache = activation.numpy_forward(pre.reshape(-1, pre.shape[-1]), {})
        act = act.reshape(pre.shape)
        ff = act @ params["linear2.weight"].T + params["linear2.bias"]
        y, ln2 = _layer_norm(h + ff, params["norm2.weight"], params["norm2.bias"], eps)
        return y.reshape(x.shape[0], -1), (mha_cache, ln1, h, pre, (activation, act_cache), act, ln2)

    def numpy_backward(self, grad_y, cache, params):
        mha_cache, ln1, h, pre, (activation, act_cache), act, ln2 = cache
        grads: dict[str, np.ndarray] = {}
        gy = self._seq(grad_y)
        d_sum2, grads["norm2.weight"], grads["norm2.bias"] = _layer_norm_backward(gy, ln2, params["norm2.weight"])
        grads["linear2.weight"] = np.einsum("nto,nti->oi", d_sum2, act)
        grads["linear2.bias"] = d_sum2.sum(axis=(0, 1))
        d_act = d_sum2 @ params["linear2.weight"]
        d_pre = activation.numpy_backward(d_act.reshape(-1, d_act.shape[-1]), act_cache, {})[0].reshape(pre.shape)
        grads["linear1.weight"] = np.einsum("nto,nti->oi", d_pre, h)
        grads["linear1.bias"] = d_pre.sum(axis=(0, 1))
        d_h = d_sum2 + d_pre @ params["linear1.weight"]
        d_sum1, grads["norm1.weight"], grads["norm1.bias"] = _layer_norm_backward(d_h, ln1, params["norm1.weight"])
        d_x_attn, mha_grads = mha_backward(d_sum1, mha_cache, self._mha_params(params, "self_attn."), self.heads)
        grads.update({"self_attn." + k: v for k, v in mha_grads.items()})
        return (d_sum1 + d_x_attn).reshape(grad_y.shape[0], -1), grads

    def kink_inputs(self, cache):
        if self.options["activation"] != "relu":
            return None
        pre = cache[3]
        return pre.reshape(pre.shape[0], -1)

    def torch_module(self):
        import torch

        layer = self
        base = torch.nn.TransformerEncoderLayer

        class EncoderLayer(base):  # the real module; the causal mask is passed on
            def forward(self, x: Any) -> Any:
                mask = _causal_mask(x.shape[1]).to(x) if layer.causal else None
                return super().forward(x, src_mask=mask, is_causal=layer.causal)

        return EncoderLayer(
            self.options["embed_dim"], self.heads, self.options["dim_feedforward"], dropout=0.0,
            activation=self.options["activation"], layer_norm_eps=self.options["eps"], batch_first=True, dtype=torch.float64,
        )  # fmt: skip
