"""Finite differences run many forward passes stacked along the sample axis; the stacked
passes must give the numbers the one-at-a-time passes give (bit for bit, or within a
small fraction of the error estimate where BLAS rounds a longer batch differently), mark
the same kink crossings, and never stack through a layer that couples samples or draws
per-sample constants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derivcheck import load_case
from derivcheck.engines import FiniteDifferences
from derivcheck.engines.finite_diff import fields as fd_fields
from derivcheck.engines.finite_diff import network as fd_network
from derivcheck.fields import field_quantities
from derivcheck.quantities import expand_quantities
from derivcheck.values import EngineValue

from helpers import CASES, make_problem

NETWORKS = {
    "tanh-mlp": [("linear", {"in": 3, "out": 5}), ("tanh", {}), ("linear", {"in": 5, "out": 2})],
    "relu-mlp": [("linear", {"in": 4, "out": 6}), ("relu", {}), ("linear", {"in": 6, "out": 6}), ("relu", {}), ("linear", {"in": 6, "out": 3})],
    "softmax-head": [("linear", {"in": 3, "out": 4}), ("sigmoid", {}), ("linear", {"in": 4, "out": 3}), ("log_softmax", {})],
    "dropout": [("linear", {"in": 3, "out": 5}), ("dropout", {"p": 0.3, "seed": 4}), ("tanh", {}), ("linear", {"in": 5, "out": 2})],
}


def _fd(problem, names=("dL/dparams", "dL/dx", "dy/dx")):
    quantities = expand_quantities(list(names), problem)
    return FiniteDifferences().compute(problem, quantities)


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name, mine in a.items():
        theirs = b[name]
        assert type(mine) is type(theirs), name
        if not isinstance(mine, EngineValue):
            continue
        assert mine.values.shape == theirs.values.shape, name
        # stacking changes nothing but where a row sits in a longer matrix product
        assert np.all(np.abs(mine.values - theirs.values) <= 0.05 * theirs.error_estimate + 1e-300), name
        np.testing.assert_allclose(mine.error_estimate, theirs.error_estimate, rtol=0.5, atol=1e-13, err_msg=name)
        assert (mine.excluded is None) == (theirs.excluded is None), name
        if mine.excluded is not None:
            assert np.array_equal(mine.excluded, theirs.excluded), name


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_stacked_passes_match_one_at_a_time(name, monkeypatch):
    problem = make_problem(NETWORKS[name], loss="mse", batch=6, seed=3)
    stacked = _fd(problem)
    monkeypatch.setattr(fd_network, "_stackable", lambda problem, start: False)
    _assert_same(stacked, _fd(problem))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    depth=st.integers(1, 3),
    width=st.integers(1, 6),
    activation=st.sampled_from(["tanh", "relu", "leaky_relu", "sigmoid", "softplus", "gelu", "log_softmax"]),
    loss=st.sampled_from(["mse", "cross_entropy"]),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_random_networks_stacked_match_one_at_a_time(depth, width, activation, loss, batch, seed):
    specs = []
    for i in range(depth):
        specs += [("linear", {"in": 3 if i == 0 else width, "out": width}), (activation, {})]
    specs.append(("linear", {"in": width, "out": 2}))
    problem = make_problem(specs, loss=loss, batch=batch, seed=seed)
    stacked = _fd(problem)
    original = fd_network._stackable
    try:
        fd_network._stackable = lambda problem, start: False
        alone = _fd(problem)
    finally:
        fd_network._stackable = original
    _assert_same(stacked, alone)


def test_small_chunks_match_one_chunk(monkeypatch):
    """Chunk boundaries fall inside a parameter's entries and inside a feature's steps."""
    problem = make_problem(NETWORKS["relu-mlp"], loss="mse", batch=5, seed=1)
    whole = _fd(problem)
    monkeypatch.setattr(fd_network, "STACK_VALUES", 7 * 5 * 6)  # 7 passes of the widest layer
    _assert_same(whole, _fd(problem))


def test_kink_crossings_are_found_in_stacked_passes(monkeypatch):
    """A ReLU pre-activation exactly at 0: the stacked passes flag the same entries."""
    problem = make_problem([("linear", {"in": 2, "out": 3}), ("relu", {}), ("linear", {"in": 3, "out": 1})], loss="mse", batch=4, seed=2)
    weight, bias = problem.params["0.weight"], problem.params["0.bias"]
    bias[1] = -float(problem.x[2] @ weight[1])  # sample 2 sits on unit 1's kink
    stacked = _fd(problem)
    assert any(isinstance(v, EngineValue) and v.excluded is not None and v.excluded.any() for v in stacked.values())
    monkeypatch.setattr(fd_network, "_stackable", lambda problem, start: False)
    _assert_same(stacked, _fd(problem))


def test_layers_that_couple_samples_or_draw_constants_are_not_stacked():
    dropout = make_problem(NETWORKS["dropout"], loss="mse", batch=4)
    assert not fd_network._stackable(dropout, 0) and not fd_network._stackable(dropout, 1)
    assert fd_network._stackable(dropout, 2)  # after the dropout layer nothing is drawn
    batchnorm = make_problem([("linear", {"in": 3, "out": 4}), ("batch_norm1d", {"num_features": 4}), ("linear", {"in": 4, "out": 2})], loss="mse", batch=6)
    assert not fd_network._stackable(batchnorm, 0) and fd_network._stackable(batchnorm, 2)
    assert fd_network._stackable(make_problem(NETWORKS["tanh-mlp"]), 0)


def test_chunk_size_follows_the_widest_layer():
    problem = make_problem([("linear", {"in": 3, "out": 64}), ("tanh", {}), ("linear", {"in": 64, "out": 2})], batch=8)
    assert fd_network._chunk_size(problem, 0) == fd_network.STACK_VALUES // (8 * 64)
    assert fd_network._chunk_size(problem, 2) == fd_network.STACK_VALUES // (8 * 64)


def _pinn_problem():
    case = load_case(CASES / "pde" / "klein-gordon.toml")
    problem = next(p for p in case.problems if p.kind == "network")
    return problem, [q for q in field_quantities(problem, case.quantities) if q.kind in ("pinn_grad", "lambda_hat")]


def test_pinn_gradients_stacked_match_one_at_a_time(monkeypatch):
    problem, quantities = _pinn_problem()
    assert quantities
    stacked = fd_fields._pinn(problem, quantities)
    monkeypatch.setattr(fd_fields.PinnLossesNumpy, "stackable", lambda self: False)
    _assert_same(stacked, fd_fields._pinn(problem, quantities))


def test_pinn_losses_of_moved_layer_match_the_whole_pass():
    problem, _ = _pinn_problem()
    losses = fd_fields.PinnLossesNumpy(problem)
    ref = list(problem.network.params())[2]
    inputs = losses.inputs_of(problem.params, ref.layer)
    local = problem.network.layer_params(problem.params, ref.layer)
    variants, expected = [], []
    for k in range(3):
        moved = local[ref.local].copy()
        moved.flat[k] += 1e-3 * (k + 1)
        variants.append({**local, ref.local: moved})
        expected.append(losses({**problem.params, ref.qualified: moved}))
    loss_r, loss_b = losses.moved(problem.params, ref.layer, inputs, variants)
    np.testing.assert_allclose(np.column_stack([loss_r, loss_b]), np.array(expected), rtol=1e-13)
