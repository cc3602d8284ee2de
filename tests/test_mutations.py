"""Mutation tests: seed a known bug into one engine's rules and assert derivcheck names it.

A checker that never fails is worthless: each mutant below must make the quantities it
touches ``disagree`` with ``numpy`` named as the odd engine out, and the CLI must exit 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from derivcheck import cli, run_problem
from derivcheck.engines import NETWORK_ENGINES, make_engines
from derivcheck.layers.activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from derivcheck.layers.linear import Linear
from derivcheck.layers.losses import CrossEntropy, MSE

from helpers import CASES, make_problem


def linear_dropped_transpose(self, grad_y, cache, params):
    x = cache
    grads = {"weight": (grad_y.T @ x).T}  # the bug: W's gradient transposed
    if "bias" in params:
        grads["bias"] = grad_y.sum(axis=0)
    return grad_y @ params["weight"], grads


def linear_input_grad_transposed(self, grad_y, cache, params):
    grads = {"weight": grad_y.T @ cache}
    if "bias" in params:
        grads["bias"] = grad_y.sum(axis=0)
    return grad_y @ params["weight"].T, grads  # the bug: W^T instead of W


def relu_wrong_mask(self, grad_y, cache, params):
    return grad_y * (cache >= -0.1), {}  # the bug: passes gradient for slightly negative inputs


def sigmoid_wrong_derivative(self, grad_y, cache, params):
    return grad_y * cache, {}  # the bug: s instead of s(1-s)


def tanh_wrong_derivative(self, grad_y, cache, params):
    return grad_y * (1 - cache), {}  # the bug: 1 - t instead of 1 - t^2


def softmax_missing_subtraction(self, grad_y, cache, params):
    return cache * grad_y, {}  # the bug: forgot - sum(grad_y * p)


def leaky_wrong_slope(self, grad_y, cache, params):
    return grad_y * np.where(cache > 0, 1.0, 0.0), {}  # the bug: plain ReLU derivative


def gelu_missing_pdf_term(self, grad_y, cache, params):
    x, cdf = cache
    return grad_y * cdf, {}  # the bug: d/dx x Phi(x) = Phi(x) + x phi(x), second term dropped


def ce_missing_softmax(self, cache):
    log_p, targets = cache
    return log_p - targets  # the bug: log-probabilities instead of probabilities


def mse_missing_factor_two(self, cache):
    return cache / cache.shape[1]  # the bug: d/dy (y-t)^2 = (y-t)


SQUARE = [("linear", {"in": 4, "out": 4}), ("tanh", {}), ("linear", {"in": 4, "out": 4})]

MUTANTS = [
    (Linear, "numpy_backward", linear_dropped_transpose, SQUARE, "mse", "dL/d0.weight"),
    (Linear, "numpy_backward", linear_input_grad_transposed, SQUARE, "mse", "dL/dx"),
    (ReLU, "numpy_backward", relu_wrong_mask, [("linear", {"in": 3, "out": 8}), ("relu", {}), ("linear", {"in": 8, "out": 2})], "mse", "dL/d0.weight"),
    (Sigmoid, "numpy_backward", sigmoid_wrong_derivative, [("linear", {"in": 3, "out": 4}), ("sigmoid", {}), ("linear", {"in": 4, "out": 2})], "mse", "dL/d0.weight"),
    (Tanh, "numpy_backward", tanh_wrong_derivative, SQUARE, "mse", "dy/dx"),
    (Softmax, "numpy_backward", softmax_missing_subtraction, [("linear", {"in": 3, "out": 4}), ("softmax", {})], "mse", "dL/d0.weight"),
    (LeakyReLU, "numpy_backward", leaky_wrong_slope, [("linear", {"in": 3, "out": 6}), ("leaky_relu", {}), ("linear", {"in": 6, "out": 2})], "mse", "dL/dx"),
    (GELU, "numpy_backward", gelu_missing_pdf_term, [("linear", {"in": 3, "out": 5}), ("gelu", {}), ("linear", {"in": 5, "out": 2})], "mse", "dL/d0.weight"),
    (CrossEntropy, "numpy_backward", ce_missing_softmax, [("linear", {"in": 3, "out": 3})], "cross_entropy", "dL/d0.bias"),
    (MSE, "numpy_backward", mse_missing_factor_two, [("linear", {"in": 3, "out": 2})], "mse", "dL/d0.weight"),
]


@pytest.mark.parametrize(("cls", "attr", "mutant", "specs", "loss", "quantity"), MUTANTS, ids=[m[2].__name__ for m in MUTANTS])
def test_seeded_bug_is_named(monkeypatch, cls, attr, mutant, specs, loss, quantity):
    problem = make_problem(specs, loss=loss, batch=6, seed=3)
    engines = make_engines(list(NETWORK_ENGINES))
    clean = run_problem(problem, engines, ["dL/dparams", "dL/dx", "dy/dx"])
    assert clean.verdict == "agree"
    monkeypatch.setattr(cls, attr, mutant)
    result = run_problem(problem, engines, ["dL/dparams", "dL/dx", "dy/dx"])
    assert result.verdict == "disagree"
    by_name = {q.name: q for q in result.quantities}
    q = by_name[quantity]
    assert q.verdict == "disagree"
    assert q.odd_engine == "numpy", q.message
    assert "numpy disagrees with symbolic, finite_diff, torch" in q.message
    assert q.worst is not None and q.worst.error > q.worst.tolerance


def test_cli_exits_1_on_seeded_bug(monkeypatch, capsys):
    monkeypatch.setattr(Softmax, "numpy_backward", softmax_missing_subtraction)
    code = cli.main(["run", str(CASES / "leaky-logsoftmax-mse.toml")])
    out = capsys.readouterr().out
    assert code == 1
    assert "disagree" in out and "numpy disagrees with" in out


def test_tiny_bug_is_still_caught(monkeypatch):
    """A 1e-6 relative error in one backward rule is far above float64 rounding."""
    original = Tanh.numpy_backward

    def slightly_off(self, grad_y, cache, params):
        gx, g = original(self, grad_y, cache, params)
        return gx * (1 + 1e-6), g

    problem = make_problem(SQUARE, batch=4)
    monkeypatch.setattr(Tanh, "numpy_backward", slightly_off)
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["dL/dparams"])
    q = {q.name: q for q in result.quantities}["dL/d0.weight"]
    assert q.verdict == "disagree" and q.odd_engine == "numpy"
