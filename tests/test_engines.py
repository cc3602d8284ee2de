"""Differential tests: the four engines agree, engine against engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from derivcheck import find_kinks, load_case, run_any, run_problem
from derivcheck.engines import NETWORK_ENGINES, FiniteDifferences, NumpyBackprop, SymbolicEngine, TorchAutograd, make_engines
from derivcheck.errors import InvalidArgument
from derivcheck.quantities import expand_quantities
from derivcheck.values import EngineValue, Skipped

from helpers import CASES, make_problem

SHIPPED = sorted(CASES.glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_case_agrees(path):
    result = run_any(load_case(path))[0]
    assert result.verdict == "agree", [q.message for q in result.quantities if q.verdict != "agree"]
    for q in result.quantities:
        # above 4,096 parameters finite differences check dL/dparams·v instead of every parameter
        directional = q.name.startswith("dL/d") and q.name != "dL/dx" and "finite_diff" in q.skipped and "dparams·v" in q.skipped["finite_diff"]
        assert set(q.engines) >= set(NETWORK_ENGINES) or directional or q.name in ("sgd_step", "clip_grad") or path.stem == "gan-step"
        # exact float64 engines agree to ~1e-12 relative
        assert q.max_rel_error_exact is not None and q.max_rel_error_exact < 1e-12, (q.name, q.max_rel_error_exact)
        if q.max_rel_error_approx is not None:
            # deep-sigmoid-10's input gradient has vanished to ~1e-10: finite differences
            # resolve it only to ~1e-4 relative (still within their own error estimate)
            bound = 1e-3 if path.stem == "deep-sigmoid-10" else 1e-7
            assert q.max_rel_error_approx < bound, (q.name, q.max_rel_error_approx)


def test_engines_return_every_quantity():
    problem = make_problem([("linear", {"in": 3, "out": 4}), ("tanh", {}), ("linear", {"in": 4, "out": 2})], sgd_lr=0.1)
    qs = expand_quantities(["L", "dL/dparams", "dL/dx", "dy/dx", "sgd_step"], problem)
    for engine in make_engines(list(NETWORK_ENGINES)):
        result = engine.compute(problem, qs)
        assert set(result) == {q.name for q in qs}
        for q in qs:
            value = result[q.name]
            if q.kind == "sgd_step" and engine.name != "torch":
                assert isinstance(value, Skipped) and value.reason
            else:
                assert isinstance(value, EngineValue) and value.values.shape == q.shape, (engine.name, q.name)


ACTIVATION_CHOICES = ["tanh", "sigmoid", "relu", "leaky_relu", "identity", "softmax", "log_softmax", "gelu", "silu", "softplus", "elu"]


@st.composite
def networks(draw):
    depth = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    specs = []
    for i in range(depth):
        specs.append(("linear", {"in": widths[i], "out": widths[i + 1], "bias": draw(st.booleans())}))
        if i < depth - 1 or draw(st.booleans()):
            specs.append((draw(st.sampled_from(ACTIVATION_CHOICES)), {}))
    return specs


@given(
    specs=networks(),
    loss=st.sampled_from(["mse", "cross_entropy", "bce_with_logits"]),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_random_networks_agree(specs, loss, batch, seed):
    out = specs[-1][1]["out"] if specs[-1][0] == "linear" else [s for s in specs if s[0] == "linear"][-1][1]["out"]
    if loss == "cross_entropy" and out < 2:
        loss = "mse"
    problem = make_problem(specs, loss=loss, batch=batch, seed=seed)
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["L", "dL/dparams", "dL/dx", "dy/dx"])
    # An exact 0 pre-activation has probability zero from continuous inputs, except
    # downstream of a dead ReLU through a bias-free linear layer: then it is a real kink.
    expected = "kink" if find_kinks(problem) else "agree"
    assert result.verdict == expected, [(q.name, q.message) for q in result.quantities if q.verdict != "agree"]


def test_float32_engines_are_judged_with_float32_tolerance():
    problem = make_problem([("linear", {"in": 4, "out": 6}), ("tanh", {}), ("linear", {"in": 6, "out": 3})], loss="cross_entropy", dtype="float32")
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["L", "dL/dparams", "dL/dx", "dy/dx"])
    assert result.verdict == "agree"
    grads = [q for q in result.quantities if q.name == "dL/d0.weight"][0]
    rtols = {(p.a, p.b): p.rtol for p in grads.pairs}
    assert rtols[("symbolic", "numpy")] > 1e-5  # float32 pair
    # the symbolic-vs-FD pair is float64 vs float64
    assert rtols[("symbolic", "finite_diff")] < 1e-11
    # float32 rounding is visible but within tolerance
    assert 1e-9 < grads.max_rel_error_exact < 1e-3


def test_finite_difference_methods_and_error_estimates():
    problem = make_problem([("linear", {"in": 2, "out": 3}), ("sigmoid", {}), ("linear", {"in": 3, "out": 1})])
    qs = expand_quantities(["dL/dparams"], problem)
    exact = SymbolicEngine().compute(problem, qs)
    for method, expected in [("richardson", 1e-9), ("central", 1e-7)]:
        fd = FiniteDifferences(method=method).compute(problem, qs)
        for q in qs:
            error = np.abs(fd[q.name].values - exact[q.name].values)
            assert error.max() < expected
            # the engine's own error estimate bounds the real error (with the compare module's safety factor)
            assert np.all(error <= 10 * fd[q.name].error_estimate + 1e-15)
    # a far too large step is caught by its own estimate rather than passing silently
    coarse = FiniteDifferences(method="central", step=0.3).compute(problem, qs)
    name = qs[0].name
    assert np.abs(coarse[name].values - exact[name].values).max() > 1e-6
    assert coarse[name].error_estimate.max() > 1e-6


def test_engine_arguments_are_validated():
    with pytest.raises(InvalidArgument, match="method must be one of richardson, central"):
        FiniteDifferences(method="forward")
    with pytest.raises(InvalidArgument, match="step"):
        FiniteDifferences(step=2.0)
    with pytest.raises(InvalidArgument, match="device must be one of"):
        TorchAutograd(device="tpu")


def test_sgd_step_matches_torch_optimizer():
    problem = make_problem([("linear", {"in": 5, "out": 4}), ("relu", {}), ("linear", {"in": 4, "out": 3})], loss="cross_entropy", sgd_lr=0.05)
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["sgd_step"])
    (q,) = result.quantities
    assert q.verdict == "agree"
    assert "torch.optim.SGD" in q.engines and "numpy (w - lr*grad)" in q.engines


def test_numpy_engine_alone_differs_from_torch_only_by_rounding():
    problem = make_problem([("linear", {"in": 3, "out": 3}), ("softmax", {})], loss="mse", batch=4)
    qs = expand_quantities(["dL/dparams", "dy/dx"], problem)
    a = NumpyBackprop().compute(problem, qs)
    b = TorchAutograd().compute(problem, qs)
    for q in qs:
        np.testing.assert_allclose(a[q.name].values, b[q.name].values, rtol=1e-12, atol=1e-15)


def test_symbolic_small_batches_on_floats_match_the_array_evaluation(monkeypatch):
    """Batches up to SCALAR_BATCH samples run sample by sample on Python floats: the same
    bits as numpy's array arithmetic on a network with whole-layer and local-rule layers."""
    from derivcheck.engines.symbolic import layers as symbolic

    problem = make_problem([("linear", {"in": 5, "out": 7}), ("tanh", {}), ("linear", {"in": 7, "out": 3})], sgd_lr=0.1)
    assert problem.batch <= symbolic.SCALAR_BATCH
    qs = expand_quantities(["L", "dL/dparams", "dL/dx", "dy/dx"], problem)
    on_floats = SymbolicEngine().compute(problem, qs)
    monkeypatch.setattr(symbolic, "SCALAR_BATCH", 0)
    on_arrays = SymbolicEngine().compute(problem, qs)
    for name, value in on_floats.items():
        np.testing.assert_array_equal(value.values, on_arrays[name].values, err_msg=name)


def test_symbolic_float_evaluation_falls_back_to_numpy_semantics():
    """Where Python's float arithmetic raises (1/0) or turns complex ((-1)**0.5), the batch
    is evaluated on arrays: inf and nan, as the derived formula has them, never an exception."""
    from derivcheck.engines.symbolic.layers import _batched, _compile
    from derivcheck.expr import make_symbol

    x, w = make_symbol("x"), make_symbol("w")
    fn = _compile([[x], [w]], [w / x, x**w, x * w])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = _batched(fn, 3, np.array([[0.0, -1.0, 2.0]]), [0.5])
    np.testing.assert_array_equal(out[0], [np.inf, -0.5, 0.25])
    assert np.isnan(out[1, 1]) and out[1, 0] == 0.0 and out[1, 2] == 2.0**0.5
    np.testing.assert_array_equal(out[2], [0.0, -0.5, 1.0])
