"""explain for LayerNorm and BatchNorm (train and eval): the three terms of the backward
check out one by one, and a backward without the mean term is ✗ at that step only."""

from __future__ import annotations

import pytest

from derivcheck import load_case
from derivcheck.explain_steps import explain
from derivcheck.layers import norm as norm_layers
from helpers import CASES, assert_golden, make_problem, normalize_explanation


def _no_mean(d_hat, x_hat, inv, axes):
    return inv * (d_hat - x_hat * (d_hat * x_hat).mean(axis=axes, keepdims=True))


@pytest.mark.parametrize("stem, kind", [("layernorm-mlp", "layer_norm"), ("batchnorm-mlp", "batch_norm1d")])
def test_the_norm_cases_check_out_with_their_three_term_steps(stem, kind):
    result = explain(load_case(CASES / f"{stem}.toml"))
    assert result.ok, result.failing_steps()
    titles = [step.title for step in result.steps]
    assert f"Layer 1 ({kind}): forward x_hat = (x - mu) / sqrt(var + eps), y = gamma x_hat + beta" in titles
    assert f"Layer 1 ({kind}): dL/dx = direct term + mean term + variance term" in titles
    text = result.to_text()
    assert "[✓] mean term: lecture formula vs torch, var detached, minus direct" in text
    assert "dropping the mean term (the term people forget) would be off by" in text
    if kind == "batch_norm1d":
        assert "[✓] running_mean, running_var after the forward pass" in text


def test_golden_markdown():
    assert_golden(normalize_explanation(explain(load_case(CASES / "layernorm-mlp.toml")).to_markdown()), "explain/layernorm-mlp.md")


@pytest.mark.parametrize("stem, kind", [("layernorm-mlp", "layer_norm"), ("batchnorm-mlp", "batch_norm1d")])
def test_a_backward_without_the_mean_term_fails_at_the_three_term_step_only(monkeypatch, stem, kind):
    monkeypatch.setattr(norm_layers, "normalize_backward", _no_mean)
    result = explain(load_case(CASES / f"{stem}.toml"))
    failing = result.failing_steps()
    assert failing[0] == f"Layer 1 ({kind}): dL/dx = direct term + mean term + variance term"
    for ok in ("Forward pass, layer by layer", f"Layer 1 ({kind}): forward x_hat = (x - mu) / sqrt(var + eps), y = gamma x_hat + beta", "Layer 2 (tanh): elementwise, so its Jacobian is diagonal"):
        assert ok not in failing
    assert f"Layer 1 ({kind}): dL/dgamma (weight), dL/dbeta (bias) and dL/dx_hat" not in failing


@pytest.mark.parametrize("kind, in_shape", [("batch_norm1d", (4,)), ("batch_norm2d", (4, 2, 3))])
def test_batch_norm_in_eval_mode_has_only_the_direct_term(monkeypatch, kind, in_shape):
    from derivcheck.kinds.network.explain_layers.layered import explain_layered

    size = 4 * (6 if kind == "batch_norm2d" else 1)
    specs = [(kind, {"num_features": 4, "mode": "eval"}), ("flatten", {}), ("tanh", {}), ("linear", {"in": size, "out": 2})]
    problem = make_problem(specs, batch=3, in_shape=in_shape, seed=5)
    case = type("Case", (), {"name": "bn-eval", "problem": problem})()
    result = explain_layered(case)
    assert result.ok, result.failing_steps()
    title = f"Layer 0 ({kind}): dL/dx = gamma dL/dy / sqrt(running_var + eps) (eval mode)"
    assert title in [step.title for step in result.steps]
    assert "the training-mode formula (batch statistics) would give a different dL/dx here" in result.to_text()
    original = norm_layers._BatchNorm.numpy_backward

    def train_rule_in_eval(self, grad_y, cache, params):
        x_hat, inv = cache
        gy = self._view(grad_y)
        dx = norm_layers.normalize_backward(gy * params["weight"].reshape(1, -1, 1), x_hat, inv, (0, 2))
        return dx.reshape(grad_y.shape[0], -1), original(self, grad_y, cache, params)[1]

    monkeypatch.setattr(norm_layers._BatchNorm, "numpy_backward", train_rule_in_eval)
    assert title in explain_layered(case).failing_steps()
