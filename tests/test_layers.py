"""Each layer's three independent definitions agree: SymPy forward, numpy forward/backward
and the torch module. (The engines are tested together in test_engines.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from derivcheck.errors import CaseError
from derivcheck.expr import make_symbol
from derivcheck.layers import LAYERS, LOSSES

from helpers import layer

ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "identity", "gelu", "silu", "softplus", "elu"]


def _all_layers():
    yield layer("linear", **{"in": 3, "out": 4})
    yield layer("linear", **{"in": 3, "out": 4, "bias": False})
    for kind in ACTIVATIONS:
        yield layer(kind)
    yield layer("elu", alpha=0.5)
    yield layer("softplus", beta=2.0, threshold=1.0)  # exercises torch's linear branch


@pytest.mark.parametrize("lay", list(_all_layers()), ids=lambda layer: layer.describe())
def test_forward_definitions_agree(lay):
    rng = np.random.default_rng(0)
    n_in = 3
    n_out = lay.output_size(n_in)
    params = lay.init_params(rng)
    x = rng.standard_normal((5, n_in))
    y_np, _ = lay.numpy_forward(x, params)
    # torch
    module = lay.torch_module().double()
    if params:
        module.load_state_dict({k: torch.tensor(v) for k, v in params.items()})
    y_torch = module(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y_np, y_torch, rtol=1e-13, atol=1e-14)
    # sympy
    a = [make_symbol(f"a{j}") for j in range(n_in)]
    syms = {name: np.array([make_symbol(f"{name}{i}") for i in range(v.size)], dtype=object).reshape(v.shape) for name, v in params.items()}
    outs = lay.sympy_forward(a, syms)
    assert len(outs) == n_out
    subs = {s: float(v) for name, v in params.items() for s, v in zip(syms[name].ravel(), v.ravel())}
    for n in range(x.shape[0]):
        point = {**subs, **{a[j]: x[n, j] for j in range(n_in)}}
        values = [float(sp.N(o.xreplace(point))) for o in outs]
        np.testing.assert_allclose(values, y_np[n], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lay", list(_all_layers()), ids=lambda layer: layer.describe())
def test_numpy_backward_matches_central_differences(lay):
    rng = np.random.default_rng(1)
    params = lay.init_params(rng)
    x = rng.standard_normal((4, 3)) + 0.05  # keep away from ReLU kinks
    x[np.abs(x) < 1e-2] = 0.3
    y, cache = lay.numpy_forward(x, params)
    grad_y = rng.standard_normal(y.shape)
    grad_x, grads = lay.numpy_backward(grad_y, cache, params)
    h = 1e-6

    def objective(xx, pp):
        return float((lay.numpy_forward(xx, pp)[0] * grad_y).sum())

    for index in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[index] += h
        xm[index] -= h
        assert grad_x[index] == pytest.approx((objective(xp, params) - objective(xm, params)) / (2 * h), rel=1e-6, abs=1e-8)
    for name, value in params.items():
        for index in np.ndindex(*value.shape):
            pp = {k: v.copy() for k, v in params.items()}
            pm = {k: v.copy() for k, v in params.items()}
            pp[name][index] += h
            pm[name][index] -= h
            assert grads[name][index] == pytest.approx((objective(x, pp) - objective(x, pm)) / (2 * h), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_loss_definitions_agree(kind):
    loss = LOSSES[kind]()
    rng = np.random.default_rng(2)
    k = 3
    y = rng.standard_normal((6, k))
    if kind == "bce":
        y = 1 / (1 + np.exp(-y))
    t = loss.random_targets(rng, 6, k)
    per_sample, cache = loss.numpy_forward(y, t)
    torch_value = loss.torch_loss(torch.tensor(y), torch.tensor(t)).item()
    assert per_sample.mean() == pytest.approx(torch_value, rel=1e-13)
    ys = [make_symbol(f"y{i}") for i in range(k)]
    ts = [make_symbol(f"t{i}") for i in range(t.shape[1])]
    expr = loss.sympy_per_sample(ys, ts)
    for n in range(6):
        value = float(expr.xreplace({**dict(zip(ys, y[n])), **dict(zip(ts, t[n]))}))
        assert value == pytest.approx(per_sample[n], rel=1e-12)
    # hand-written backward vs autograd
    yt = torch.tensor(y, requires_grad=True)
    loss.torch_loss(yt, torch.tensor(t)).backward()
    np.testing.assert_allclose(loss.numpy_backward(cache) / 6, yt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_targets_are_validated():
    ce = LOSSES["cross_entropy"]()
    np.testing.assert_array_equal(ce.encode_targets(np.array([0, 2]), 3), [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="class index 3 is outside 0..2"):
        ce.encode_targets(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="integer class indices"):
        ce.encode_targets(np.array([0.5]), 3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        LOSSES["bce"]().encode_targets(np.array([2.0]), 1)


def test_layer_options_are_validated():
    with pytest.raises(CaseError, match="unknown option 'width' for linear"):
        layer("linear", width=3)
    with pytest.raises(CaseError, match="needs option 'out'"):
        layer("linear", **{"in": 3})
    with pytest.raises(CaseError, match="wrong type.*got '3'.*allowed: integer"):
        layer("linear", **{"in": "3", "out": 2})
    with pytest.raises(CaseError, match="out of range.*got 0"):
        layer("linear", **{"in": 0, "out": 2})
    with pytest.raises(CaseError, match="allowed: a finite number >= 0"):
        layer("leaky_relu", slope=-1.0)
    assert layer("leaky_relu", slope=1).options["slope"] == 1.0
    with pytest.raises(CaseError, match="wrong type"):
        layer("linear", **{"in": True, "out": 2})


def test_catalog_names():
    assert {"linear", *ACTIVATIONS} <= set(LAYERS)
    assert set(LOSSES) == {"cross_entropy", "mse", "bce", "bce_with_logits"}
