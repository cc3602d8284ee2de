"""Dense layers from one derived product term, activations from one derived unit: the
symbolic engine at any width, matrix products, second-order jets for network fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from derivcheck import compile_cache
from derivcheck.engines import make_engines
from derivcheck.engines.symbolic import layers as symbolic
from derivcheck.engines.symbolic.products import CompiledProduct, CompiledUnit
from derivcheck.layers.linear import Linear
from derivcheck.layers.rules import ProductCell
from derivcheck.runner import run_problem
from helpers import layer, make_problem


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setitem(compile_cache._settings, "directory", tmp_path / "cache")
    monkeypatch.setitem(compile_cache._settings, "enabled", True)
    monkeypatch.setattr(symbolic, "_COMPILED", {})
    return tmp_path / "cache"


MLP = [("linear", {"in": 5, "out": 7}), ("tanh", {}), ("linear", {"in": 7, "out": 6}), ("sigmoid", {}), ("linear", {"in": 6, "out": 3})]


def test_a_seeded_wrong_product_term_is_caught(cache, monkeypatch):
    """The symbolic engine evaluates the term it derived: w*a + a^2/100 instead of w*a
    makes it the odd engine out (the correct term agrees)."""
    problem = make_problem(MLP, batch=4)
    engines = ["symbolic", "finite_diff", "numpy", "torch"]
    assert run_problem(problem, make_engines(engines), ["L", "dL/dparams", "dL/dx", "dy/dx"]).verdict == "agree"

    def wrong(a, w):
        return w * a + a**2 / 100

    monkeypatch.setattr(Linear, "product_cell", lambda self: ProductCell(wrong, bool(self.options.get("bias", True))))
    monkeypatch.setattr(symbolic, "_COMPILED", {})
    result = run_problem(problem, make_engines(engines), ["L", "dL/dparams", "dL/dx", "dy/dx"])
    assert result.verdict == "disagree"
    assert {q.odd_engine for q in result.quantities if q.verdict == "disagree"} == {"symbolic"}


def _fd(fn, x, h=1e-6):
    """Central differences of fn (array -> array) w.r.t. every entry of x."""
    flat = x.ravel()
    cols = []
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += h
        down[i] -= h
        cols.append((fn(up.reshape(x.shape)) - fn(down.reshape(x.shape))) / (2 * h))
    return np.stack(cols, axis=-1)


def test_a_term_that_is_not_bilinear_takes_the_general_path_and_stays_consistent():
    """t(a, w) = w a + w^2 a^2 / 3: no matrix shortcut applies; forward, Jacobian, VJP and
    jet still agree with finite differences of the forward."""
    cell = ProductCell(lambda a, w: w * a + w**2 * a**2 / 3, True)
    out, inp, n = 3, 4, 2
    compiled = CompiledProduct(cell, inp, out, {"weight": (out, inp), "bias": (out,)})
    assert compiled.flags == {"linear_in_a": False, "homogeneous": False, "linear_in_w": False, "affine_in_a": False}
    rng = np.random.default_rng(0)
    a, params, g = rng.standard_normal((inp, n)), rng.standard_normal(out * inp + out), rng.standard_normal((out, n))
    jac = compiled.jacobian(a, params)
    for s in range(n):
        numeric = _fd(lambda col: compiled.forward(col[:, None], params)[:, 0], a[:, s])
        np.testing.assert_allclose(jac[s], numeric, rtol=1e-7, atol=1e-8)
    cot_in, grad = compiled.vjp_sum(a, params, g)
    np.testing.assert_allclose(cot_in, np.einsum("no i,on->in".replace(" ", ""), jac, g), rtol=1e-12)
    numeric_grad = _fd(lambda p: np.sum(g * compiled.forward(a, p)), params)
    np.testing.assert_allclose(grad, numeric_grad, rtol=1e-7, atol=1e-8)
    _, per_sample = compiled.vjp(a, params, g)
    np.testing.assert_allclose(per_sample.sum(axis=1), grad, rtol=1e-12)
    # jet along two variables: a = M x, so J = M and H = 0 at the input
    m = rng.standard_normal((inp, 2))
    x0 = rng.standard_normal(2)
    h, j, hh = compiled.jet((m @ x0)[None], m[None], np.zeros((1, inp, 2, 2)), params)

    def through(x):
        return compiled.forward((m @ x)[:, None], params)[:, 0]

    np.testing.assert_allclose(h[0], through(x0), rtol=1e-12)
    np.testing.assert_allclose(j[0], _fd(through, x0), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(hh[0], _fd(lambda x: _fd(through, x, 1e-4), x0, 1e-4), rtol=1e-4, atol=1e-5)


def test_one_entry_serves_every_width_and_a_tampered_one_is_rejected(cache):
    for width in (3, 64, 256):
        lin = layer("linear", **{"in": width, "out": 2})
        compiled = symbolic.compile_layer(lin, width)
        assert isinstance(compiled, CompiledProduct) and compiled.in_size == width
    unit = symbolic.compile_layer(layer("tanh"), 5)
    assert isinstance(unit, CompiledUnit)
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 2  # one product term, one tanh unit
    product_entry = next(e for e in entries if "d_aa" in json.loads(e.read_text())["payload"])
    wrapper = json.loads(product_entry.read_text())
    wrapper["payload"] = wrapper["payload"].replace("return", "return 2*", 1)
    product_entry.write_text(json.dumps(wrapper))
    symbolic._COMPILED.clear()
    rejected = compile_cache.stats()["rejected"]
    lin = layer("linear", **{"in": 4, "out": 2})
    compiled = symbolic.compile_layer(lin, 4)
    assert compile_cache.stats()["rejected"] == rejected + 1
    w = np.arange(8.0)
    np.testing.assert_array_equal(compiled.forward(np.eye(4), list(w) + [0.0, 0.0]), w.reshape(2, 4))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wide_mlp_agrees_across_engines(dtype):
    """A 64-wide MLP, once beyond the whole-layer limit in spirit (64x64 derived whole took
    seconds): every engine agrees in float64 and float32 (no false alarm)."""
    specs = [("linear", {"in": 8, "out": 64}), ("tanh", {}), ("linear", {"in": 64, "out": 64}), ("gelu", {}), ("linear", {"in": 64, "out": 3})]
    problem = make_problem(specs, loss="cross_entropy", batch=6, dtype=dtype)
    result = run_problem(problem, make_engines(["symbolic", "numpy", "torch", "finite_diff"]), ["L", "dL/dparams", "dL/dx", "dy/dx"])
    assert result.verdict == "agree", [(q.name, q.message) for q in result.quantities if q.verdict != "agree"]
    if dtype == "float64":
        exact = [q.max_rel_error_exact for q in result.quantities if q.max_rel_error_exact is not None]
        assert max(exact) < 1e-12


def _whole_layer_jets(problem):
    """Jets through whole-layer local Jacobians and Hessians (the derivation before
    product terms and units)."""
    network, params = problem.network, problem.params
    p, d = problem.points.shape
    a = problem.points.T.copy()
    jac = np.broadcast_to(np.eye(d), (p, d, d)).copy()
    hess = np.zeros((p, d, d, d))
    for index, (lay, size) in enumerate(zip(network.layers, network.sizes)):
        compiled = symbolic.compile_layer(lay, size, whole=True)
        flat = network.layer_param_vector(params, index)
        j_loc = compiled.jacobian(a, flat)
        new_hess = np.einsum("poi,pide->pode", j_loc, hess)
        for (k, i, j), values in compiled.hessian_entries(a, flat):
            new_hess[:, k] += values[:, None, None] * jac[:, i, :, None] * jac[:, j, None, :]
        jac, hess, a = np.matmul(j_loc, jac), new_hess, compiled.forward(a, flat)
    return a.T, jac, hess


def test_network_field_jets_from_products_equal_the_whole_layer_derivation():
    """The PINN path: jets through derived product terms and units equal jets through
    whole-layer local Jacobians and Hessians and the hand-written numpy jets, to rounding."""
    import derivcheck as dc
    from derivcheck.engines.symbolic.fields import symbolic_jets
    from derivcheck.jets import network_jets
    from helpers import CASES

    case = dc.load_case(CASES / "pde" / "helmholtz-mms.toml")
    problem = next(p for p in case.problems if p.kind == "network")
    mine = symbolic_jets(problem)
    for theirs in (_whole_layer_jets(problem), network_jets(problem.network, problem.params, problem.points)):
        for ours, other in zip(mine, theirs):
            assert np.abs(ours - other).max() <= 1e-12 * np.abs(other).max()


@pytest.mark.parametrize("layers", [MLP, [("linear", {"in": 3, "out": 6}), ("tanh", {}), ("linear", {"in": 6, "out": 8}), ("softplus", {})]])
def test_dy_dx_is_the_same_product_associated_from_either_side(layers):
    """dy/dx chains the layer Jacobians from the output side when the network has fewer
    outputs than inputs (reverse mode, as jacrev) and from the input side otherwise; both
    associations give the same matrix, and it matches finite differences of the forward."""
    from derivcheck.engines.symbolic.engine import _chain_jacobians

    problem = make_problem(layers, batch=3)
    network = problem.network
    compiled = [symbolic.compile_layer(lay, size) for lay, size in zip(network.layers, network.sizes)]
    params = [network.layer_param_array(problem.params, i) for i in range(len(network.layers))]
    activations = [problem.x.T.copy()]
    for lay, p in zip(compiled, params):
        activations.append(lay.forward(activations[-1], p))
    consts = [None] * len(compiled)
    forward = _chain_jacobians(compiled, activations, params, consts, reverse=False)
    backward = _chain_jacobians(compiled, activations, params, consts, reverse=True)
    assert forward.shape == (3, network.out_size, network.in_size)
    np.testing.assert_allclose(backward, forward, rtol=1e-12, atol=1e-14)

    def outputs(x):
        a = x.T
        for lay, p in zip(compiled, params):
            a = lay.forward(a, p)
        return a.T

    numeric = np.stack([_fd(lambda row: outputs(row[None, :])[0], problem.x[n]) for n in range(3)])
    np.testing.assert_allclose(forward, numeric, rtol=1e-6, atol=1e-8)
