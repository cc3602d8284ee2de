"""explain for attention and the embedding: the Transformer block's steps check out and
are golden; attention without 1/sqrt(d) is ✗ at the scores step; a LayerNorm backward
without its mean term is ✗ at the LayerNorms' three-term steps only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from derivcheck import load_case
from derivcheck.explain_steps import explain
from derivcheck.layers import attention as attention_layers
from derivcheck.layers import norm as norm_layers
from helpers import CASES, assert_golden, make_problem, normalize_explanation

BLOCK = "Layer 1 (transformer_encoder)"
SCORES = f"{BLOCK}, head 0 of 2: scores S = Q K^T / sqrt(d) with the causal mask"
SOFTMAX = f"{BLOCK}, head 0 of 2: P = softmax(S) row by row; its Jacobian diag(p) - p p^T"
TERMS = [f"{BLOCK}, LayerNorm {k}: dL/dx = direct term + mean term + variance term" for k in (1, 2)]
LOSS = "Loss (cross_entropy) and its derivative"


@pytest.fixture(scope="module")
def block():
    return explain(load_case(CASES / "transformer-block.toml"))


def test_the_transformer_block_checks_out_with_every_family_step(block):
    assert block.ok, block.failing_steps()
    titles = [step.title for step in block.steps]
    for title in [
        "Layer 0 (embedding): a row lookup; dL/dE is a scatter-add",
        f"{BLOCK}: Q, K, V projections and the split into 2 heads",
        SCORES,
        SOFTMAX,
        f"{BLOCK}, head 0 of 2: O = P V; dL/dV = P^T dL/dO, dL/dP = dL/dO V^T",
        f"{BLOCK}: the 2 heads joined and the output projection",
        f"{BLOCK}: residual 1, s1 = h1 + attn(h1)",
        f"{BLOCK}: feed-forward FF(h) = W2 gelu(W1 h + b1) + b2 at every position",
        f"{BLOCK}: residual 2, s2 = h + FF(h)",
        *TERMS,
    ]:
        assert title in titles
    text = block.to_text()
    assert "-inf" in text and "J = diag(p) - p p^T = [" in text and "rows [1, 5] are never looked up" in text


def test_golden_markdown(block):
    assert_golden(normalize_explanation(block.to_markdown()), "explain/transformer-block.md")


def _unscaled_backward(grad_out, cache):
    q, k, v, weights, _scale = cache
    grad_v = np.swapaxes(weights, -1, -2) @ grad_out
    grad_weights = grad_out @ np.swapaxes(v, -1, -2)
    grad_scores = weights * (grad_weights - (grad_weights * weights).sum(axis=-1, keepdims=True))  # no 1/sqrt(d)
    return grad_scores @ k, np.swapaxes(grad_scores, -1, -2) @ q, grad_v


def test_attention_backward_without_the_scale_fails_at_the_scores_step(monkeypatch):
    monkeypatch.setattr(attention_layers, "attention_backward", _unscaled_backward)
    failing = explain(load_case(CASES / "transformer-block.toml")).failing_steps()
    assert SCORES in failing
    for ok in (SOFTMAX, LOSS, "Forward pass, layer by layer", *TERMS):
        assert ok not in failing


def test_attention_forward_without_the_scale_fails_at_the_scores_step(monkeypatch):
    original = attention_layers.attention_forward

    def unscaled(q, k, v, causal):
        out, cache = original(q * math.sqrt(q.shape[-1]), k, v, causal)  # scores q k^T, no 1/sqrt(d)
        return out, (q, k, v, cache[3], 1.0)

    monkeypatch.setattr(attention_layers, "attention_forward", unscaled)
    failing = explain(load_case(CASES / "transformer-block.toml")).failing_steps()
    assert SCORES in failing
    assert f"{BLOCK}: Q, K, V projections and the split into 2 heads" not in failing


def test_layer_norm_backward_without_the_mean_term_fails_at_the_mean_term_steps(monkeypatch):
    def no_mean(d_hat, x_hat, inv, axes):
        return inv * (d_hat - x_hat * (d_hat * x_hat).mean(axis=axes, keepdims=True))

    monkeypatch.setattr(attention_layers, "normalize_backward", no_mean)
    monkeypatch.setattr(norm_layers, "normalize_backward", no_mean)
    result = explain(load_case(CASES / "transformer-block.toml"))
    failing = result.failing_steps()
    for title in TERMS:
        assert title in failing
    for ok in ("Forward pass, layer by layer", SCORES, SOFTMAX, LOSS, f"{BLOCK}, LayerNorm 1: forward x_hat = (x - mu) / sqrt(var + eps), y = gamma x_hat + beta"):
        assert ok not in failing
    assert "[✗] dL/ds1: lecture formula (sum of the three) vs torch retain_grad vs numpy rule" in result.to_text()


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_and_multihead_attention_check_out(causal):
    from derivcheck.kinds.network.explain_layers.layered import explain_layered

    for specs, in_shape in [
        ([("sdpa", {"causal": causal}), ("flatten", {}), ("linear", {"in": 6, "out": 2})], (3, 6)),
        ([("multihead_attention", {"embed_dim": 6, "num_heads": 3, "causal": causal}), ("flatten", {}), ("linear", {"in": 18, "out": 2})], (3, 6)),
    ]:
        problem = make_problem(specs, batch=3, in_shape=in_shape, seed=2)
        result = explain_layered(type("Case", (), {"name": "attention", "problem": problem})())
        assert result.ok, result.failing_steps()
        assert any("head 0" in step.title and "scores S = Q K^T / sqrt(d)" in step.title for step in result.steps)
